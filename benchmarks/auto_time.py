"""How long ``--passes auto`` takes on Stable Diffusion's UNet (a script, not a test): choosing, then applying.

Builds the preset's UNet (float32, random weights) with genscope's attention entry point, then times
``PassConfig.auto`` (the precision and the optional passes, measured or read from the decisions file) and
``apply_auto`` (every pass applied: the per-shape passes measure each 3x3 convolution and attention shape in
one example forward, or read their cached decisions; every oracle checked). Run it twice with the same
``GENSCOPE_DECISIONS`` file: the first run is a new machine's, the second a cached one's. Issue 13's targets:
at most 60 s for a new machine's decisions, at most 5 s to apply with the cache.

    GENSCOPE_DECISIONS=/tmp/dec.json python benchmarks/auto_time.py --preset paper --image-size 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers.py beside this file

from peers import share_structure  # noqa: E402

from genscope.models.layers.attention import install_attention  # noqa: E402
from genscope.passes import PassConfig  # noqa: E402
from genscope.passes.auto import apply_auto, summary  # noqa: E402
from genscope.studies.optimization import preset_config, unet_inputs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--winograd-budget", type=float, default=None,
                        help="transformed-weight budget as a fraction of the weights (peers.py and `genscope optimize` "
                             "use 0.276, the paper's growth; default: none)")
    args = parser.parse_args(argv)
    config = preset_config("stable-diffusion", args.preset)
    inputs = unet_inputs(config, args.image_size, torch.device("cpu"))
    unet = share_structure(config.denoiser.build("cpu", torch.float32))
    install_attention(unet, "denoiser")
    example = ((inputs["sample"], inputs["timestep"]), {"encoder_hidden_states": inputs["encoder_hidden_states"]})
    start = time.perf_counter()
    pass_config = PassConfig.auto(unet, example[0], example[1], winograd_weight_budget=args.winograd_budget)
    chosen = time.perf_counter()
    log = apply_auto(unet, pass_config)
    applied = time.perf_counter()
    print(f"chosen in {chosen - start:.1f} s: {', '.join(pass_config.passes)} ({summary(pass_config.auto_decisions)})")
    print(f"applied in {applied - chosen:.1f} s: {log.summary()}")
    for note in log.notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
