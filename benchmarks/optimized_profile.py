"""Where one UNet step's time goes before and after ``--passes auto`` (a script, not a test): operator classes.

Builds Stable Diffusion's UNet at the preset (float32, random seeded weights, genscope's attention entry point),
profiles one step as built, applies ``PassConfig.auto`` (decisions measured or read from
``$GENSCOPE_DECISIONS``), profiles again, and prints each operator class's time and share side by side, with
the class that dominates after the passes. Trace mode (``genscope.profile``, ``attention="as-is"``: the
model's own attention, as the passes left it), one warm-up and ``--repeat`` timed calls.

    GENSCOPE_DECISIONS=/tmp/dec.json python benchmarks/optimized_profile.py --preset paper --image-size 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers.py beside this file

from peers import share_structure  # noqa: E402

import genscope  # noqa: E402
from genscope.models.layers.attention import install_attention  # noqa: E402
from genscope.passes import PassConfig  # noqa: E402
from genscope.passes.auto import apply_auto  # noqa: E402
from genscope.studies.optimization import preset_config, unet_inputs  # noqa: E402


def class_times(unet, args, kwargs, repeat: int) -> pd.Series:
    tables = genscope.profile(unet, inputs=args, call_kwargs=kwargs, attention="as-is", mode="trace", repeat=repeat,
                              warmup=1)
    return tables["class_total"].set_index("op_class")["time_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per profile (after one warm-up)")
    args = parser.parse_args(argv)
    config = preset_config("stable-diffusion", args.preset)
    inputs = unet_inputs(config, args.image_size, torch.device("cpu"))
    call = ((inputs["sample"], inputs["timestep"]), {"encoder_hidden_states": inputs["encoder_hidden_states"]})
    columns = {}
    for label in ("as built", "auto"):
        unet = share_structure(config.denoiser.build("cpu", torch.float32))
        install_attention(unet, "denoiser")
        if label == "auto":
            pass_config = PassConfig.auto(unet, *call)
            log = apply_auto(unet, pass_config)
            print(f"auto: {', '.join(pass_config.passes)}; {log.summary()}")
        columns[f"{label} ms"] = class_times(unet, *call, repeat=args.repeat)
    table = pd.DataFrame(columns)
    for label in ("as built", "auto"):
        table[f"{label} %"] = 100 * table[f"{label} ms"] / table[f"{label} ms"].sum()
    table = table[table[["as built ms", "auto ms"]].sum(axis=1) > 0]
    print(table.round(1).to_string())
    totals = table[["as built ms", "auto ms"]].sum()
    print(f"total: {totals['as built ms']:,.0f} ms as built, {totals['auto ms']:,.0f} ms with auto "
          f"({totals['as built ms'] / totals['auto ms']:.2f}x); dominant after the passes: "
          f"{table['auto ms'].idxmax()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
