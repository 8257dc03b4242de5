"""End-to-end text-to-image latency per phase, baseline vs optimized (a script, not a test).

Runs genscope's ``stable-diffusion`` workload twice on this machine, with the same seed and settings:

* ``baseline``: attention backend ``baseline`` (materialized softmax), no passes - the paper's Table 1 row 1;
* ``optimized``: the passes of ``--passes`` applied to the UNet (``denoiser``) and to the VAE decoder
  (``decoder.decoder`` + ``post_quant_conv``; the encoder half is unused), attention ``flash`` elsewhere.

Per phase (text_encoder, denoise - summed over the steps -, decoder) it prints the median wall time of
``--repeat`` interleaved runs, the speedup, and the relative error of the final image (L2 and max).

    python benchmarks/e2e.py --preset small --steps 4 --repeat 2 [--threads 2]
    python benchmarks/e2e.py --preset paper --image-size 512 --steps 2 --repeat 1   # heavy: 3.4 GB UNet

Timings on a shared machine are noisy: compare the ratios of one run, and re-measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genscope.passes import PassConfig, apply  # noqa: E402
from genscope.passes.oracle import max_relative_error, relative_error  # noqa: E402
from genscope.studies.optimization import PAPER_WINOGRAD_WEIGHT_GROWTH  # noqa: E402
from genscope.workloads import registry  # noqa: E402
from genscope.workloads.base import RunSettings  # noqa: E402
from genscope.workloads.phases import record_phases  # noqa: E402

DEFAULT_PASSES = "auto"  # precision and passes chosen by measurement here (genscope.passes.auto)


def cast_io(module: torch.nn.Module) -> None:
    """Hooks: floating inputs cast to ``module``'s weight dtype at each call, outputs back to float32 (a no-op
    while the weights are float32, e.g. after the passes are undone for the baseline)."""
    from genscope.passes.base import model_dtype

    def cast(x, to):
        return x.to(to) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def pre(mod, args, kwargs):
        dtype = model_dtype(mod)
        return tuple(cast(a, dtype) for a in args), {k: cast(v, dtype) for k, v in kwargs.items()}

    def post(mod, args, kwargs, out):
        if hasattr(out, "sample"):
            out.sample = cast(out.sample, torch.float32)
            return out
        return cast(out, torch.float32)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)


def apply_passes(module, passes, args, kwargs, budget):
    """The log of ``passes`` (or of the measured choice, ``("auto",)``) applied to ``module``."""
    if passes == ("auto",):
        from genscope.passes.auto import apply_auto
        from genscope.passes.base import model_dtype

        log = apply_auto(module, PassConfig.auto(module, args, kwargs, winograd_weight_budget=budget))
        if model_dtype(module) != torch.float32:
            cast_io(module)
        return log
    return apply(module, PassConfig(passes=passes, example_inputs=args, example_kwargs=kwargs,
                                    winograd_weight_budget=budget))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--passes", default=DEFAULT_PASSES)
    parser.add_argument("--winograd-budget", type=float, default=PAPER_WINOGRAD_WEIGHT_GROWTH)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    say = lambda text: print(f"[e2e] {text}", file=sys.stderr, flush=True)  # noqa: E731
    workload = registry.get("stable-diffusion")
    requests = {name: workload.request(RunSettings(preset=args.preset, steps=args.steps, image_size=args.image_size,
                                                   attention=attention))
                for name, attention in (("baseline", "baseline"), ("optimized", "flash"))}
    config = workload.config(args.preset)
    say(f"building the {args.preset} pipeline")
    pipeline = workload.build(config, "cpu", torch.float32)
    unet = pipeline.component("denoiser")
    vae = pipeline.component("decoder")
    request = requests["optimized"]
    latent = request.image_size // 8
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, latent, latent, generator=gen)
    text = torch.randn(2, config.text_len, unet.config.cross_attention_dim, generator=gen)
    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    say(f"applying {', '.join(passes)} to the UNet and the VAE decoder")
    start = time.perf_counter()
    logs = [apply_passes(unet, passes, (sample, torch.tensor(500)), {"encoder_hidden_states": text},
                         args.winograd_budget)]
    z = torch.randn(1, vae.config.latent_channels, latent, latent, generator=gen)
    with torch.inference_mode():
        decoder_input = vae.post_quant_conv(z)
    logs.append(apply_passes(vae.decoder, passes, (decoder_input,), {}, args.winograd_budget))
    say(f"passes applied in {time.perf_counter() - start:.1f} s: " + " | ".join(log.summary() for log in logs))

    def switch(optimized: bool) -> None:
        for log in logs:
            (log.redo if optimized else log.undo)()

    phase_ms: dict[str, dict[str, list[float]]] = {"baseline": {}, "optimized": {}}
    totals: dict[str, list[float]] = {"baseline": [], "optimized": []}
    images = {}
    current = True
    for rep in range(args.repeat):
        for name in ("baseline", "optimized"):
            want = name == "optimized"
            if want != current:
                switch(want)
                current = want
            with record_phases() as times:
                start = time.perf_counter()
                generation = pipeline(requests[name])
                totals[name].append((time.perf_counter() - start) * 1e3)
            images[name] = generation.raw
            for phase, ms in times.totals_ms().items():
                phase_ms[name].setdefault(phase, []).append(ms)
            say(f"repetition {rep + 1}/{args.repeat} {name}: {totals[name][-1] / 1e3:,.1f} s")
    rows = []
    for phase in phase_ms["baseline"]:
        b, o = statistics.median(phase_ms["baseline"][phase]), statistics.median(phase_ms["optimized"][phase])
        rows.append({"phase": phase, "baseline_ms": b, "optimized_ms": o, "speedup": b / o})
    b, o = statistics.median(totals["baseline"]), statistics.median(totals["optimized"])
    rows.append({"phase": "total", "baseline_ms": b, "optimized_ms": o, "speedup": b / o})
    err = relative_error(images["optimized"], images["baseline"])
    max_err = max_relative_error(images["optimized"], images["baseline"])
    print(f"stable-diffusion @ {args.preset}, {request.image_size}x{request.image_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, median of {args.repeat} interleaved runs")
    for r in rows:
        print(f"  {r['phase']:>14}: baseline {r['baseline_ms']:>10,.0f} ms   optimized {r['optimized_ms']:>10,.0f} ms"
              f"   {r['speedup']:.2f}x")
    print(f"  image: relative error {err:.2e} (L2), {max_err:.2e} (max) optimized vs baseline")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rel_error": err, "max_rel_error": max_err,
                                               "threads": torch.get_num_threads(), "passes": passes,
                                               "notes": [n for log in logs for n in log.notes]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
