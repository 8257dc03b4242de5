"""Peers benchmark (a script, not a test): one Stable Diffusion UNet step with classifier-free guidance.

On this machine, in one run, interleaved (every repetition runs every contestant in turn):

* ``diffusers-fp32``: diffusers' ``UNet2DConditionModel`` as users run it - float32 weights, its default
  attention processor (``AttnProcessor2_0``: ``scaled_dot_product_attention``);
* ``diffusers-bf16``: the same with weights stored in bfloat16 (``.to(torch.bfloat16)``);
* ``compile-bf16`` (``--compile``): ``torch.compile`` (inductor, ``freezing=True``) of the bf16 model; the
  compile time (first call) is reported separately - minutes at paper scale;
* ``genscope``: genscope's optimized UNet (the passes of ``--passes``; per-shape decisions measured and
  cached in ``~/.genscope``).

Prints the median step time of each (with the min-max spread), the ratios, the achieved FLOP/s (FLOPs of the
step counted on the meta device) against the machine's measured matmul ceilings
(:func:`genscope.hardware.measure.measure_ceilings`), and the max relative error of each output against
diffusers' float32 output. ``--json FILE`` writes everything.

    python benchmarks/peers.py --preset paper --image-size 512 --repeat 3 [--compile] [--threads 2]

The paper-scale UNet is 3.4 GB in float32 and 1.7 GB in bfloat16; the contestants share what they can (the
genscope model shares the float32 weights of diffusers' model and adds its transformed Winograd weights).
Timings on a shared machine are noisy: compare the ratios of one run, and re-measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genscope.models.layers.attention import install_attention, use_backend  # noqa: E402
from genscope.passes import PassConfig, apply  # noqa: E402
from genscope.passes.oracle import max_relative_error  # noqa: E402
from genscope.studies.optimization import (  # noqa: E402
    PAPER_WINOGRAD_WEIGHT_GROWTH,
    cfg_step,
    preset_config,
    step_flops,
    unet_inputs,
    weight_bytes,
)

# genscope's optimized configuration on CPUs without bf16 matrix units (measured on this checkout's AMD EPYC, AVX2
# only: a bf16 3x3 convolution ran 150x slower than float32, so bf16_weights is left out; channels_last measured
# 5 % slower than without at paper scale). On CPUs with AMX, add bf16_weights.
DEFAULT_PASSES = "fused_groupnorm,fused_geglu,selective_flash,winograd"


def share_structure(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer tensor with ``model``."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def bf16_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of ``model`` whose floating parameters and buffers are in ``dtype`` (only those are new memory)."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b.to(dtype) if b.is_floating_point() else b
    return copy.deepcopy(model, memo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--compile", action="store_true", help="add torch.compile (inductor, freezing) in bf16")
    parser.add_argument("--compile-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--passes", default=DEFAULT_PASSES, help=f"genscope passes (default {DEFAULT_PASSES})")
    parser.add_argument("--winograd-budget", default=str(round(PAPER_WINOGRAD_WEIGHT_GROWTH, 3)),
                        help="Winograd weight budget(s), fractions of the weights, comma-separated: one genscope "
                             "contestant per value (default: the paper's 0.276; 'none': no limit)")
    parser.add_argument("--skip", default="", help="contestants to leave out, comma-separated")
    parser.add_argument("--refresh-ceilings", action="store_true", help="re-measure the matmul ceilings first")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    say = lambda text: print(f"[peers] {text}", file=sys.stderr, flush=True)  # noqa: E731

    config = preset_config("stable-diffusion", args.preset)
    inputs = unet_inputs(config, args.image_size, torch.device("cpu"))
    flops = step_flops(config, args.image_size)
    try:
        from genscope.hardware.measure import measure_ceilings

        ceilings = measure_ceilings("cpu", refresh=args.refresh_ceilings)
        peaks = dict(ceilings.peak_flops_per_s)
    except Exception as exc:  # noqa: BLE001 - the ceiling is context, not the benchmark
        say(f"no ceilings ({exc})")
        peaks = {}
    say(f"{args.preset} UNet, {args.image_size}x{args.image_size}, batch 2 (CFG), {flops / 1e9:,.1f} GFLOP per step, "
        f"{torch.get_num_threads()} threads; matmul ceilings "
        + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items()))

    say("building diffusers' UNet (float32)")
    base = config.denoiser.build("cpu", torch.float32)
    contestants: dict[str, tuple[nn.Module, torch.dtype]] = {}
    if "diffusers-fp32" not in skip:
        contestants["diffusers-fp32"] = (base, torch.float32)
    bf16 = None
    if "diffusers-bf16" not in skip or args.compile:
        bf16 = bf16_copy(base)
        if "diffusers-bf16" not in skip:
            contestants["diffusers-bf16"] = (bf16, torch.bfloat16)
    compile_s = None
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compile_model = bf16 if args.compile_dtype == "bfloat16" else base
        compiled = torch.compile(compile_model)
        cdtype = torch.bfloat16 if args.compile_dtype == "bfloat16" else torch.float32
        say(f"compiling ({args.compile_dtype}, inductor, freezing=True) - minutes at paper scale")
        start = time.perf_counter()
        with torch.inference_mode():
            cfg_step(compiled, inputs)
        compile_s = time.perf_counter() - start
        say(f"compile + first call: {compile_s:.1f} s")
        contestants[f"compile-{args.compile_dtype}"] = (compiled, cdtype)
    logs = {}
    budgets = [None if b.strip().lower() == "none" else float(b) for b in args.winograd_budget.split(",") if b.strip()]
    if "genscope" not in skip:
        passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
        example = ((inputs["sample"], inputs["timestep"]), {"encoder_hidden_states": inputs["encoder_hidden_states"]})
        for budget in budgets:
            name = "genscope" if len(budgets) == 1 else f"genscope(b={budget})"
            say(f"{name}: applying {args.passes}")
            ours = share_structure(base)
            install_attention(ours, "denoiser")
            start = time.perf_counter()
            logs[name] = apply(ours, PassConfig(passes=passes, example_inputs=example[0], example_kwargs=example[1],
                                                winograd_weight_budget=budget))
            say(f"{name}: passes applied in {time.perf_counter() - start:.1f} s: {logs[name].summary()}")
            contestants[name] = (ours, torch.bfloat16 if "bf16_weights" in passes else torch.float32)

    outputs, times = {}, {name: [] for name in contestants}
    with torch.inference_mode(), use_backend("flash"):
        for name, (model, _) in contestants.items():  # warm-up + outputs for the error column
            say(f"warm-up {name}")
            outputs[name] = cfg_step(model, inputs)
        for rep in range(args.repeat):
            for name, (model, _) in contestants.items():
                start = time.perf_counter()
                cfg_step(model, inputs)
                times[name].append((time.perf_counter() - start) * 1e3)
            say(f"repetition {rep + 1}/{args.repeat}: " + ", ".join(f"{n} {t[-1]:,.0f} ms" for n, t in times.items()))
    reference = outputs.get("diffusers-fp32")
    rows = []
    for name, (model, dtype) in contestants.items():
        med = statistics.median(times[name])
        rows.append({"contestant": name, "dtype": str(dtype).removeprefix("torch."), "time_ms": med,
                     "min_ms": min(times[name]), "max_ms": max(times[name]),
                     "gflops_per_s": flops / med / 1e6,
                     "pct_of_bf16_ceiling": 100 * flops / (med / 1e3) / peaks["bfloat16"] if "bfloat16" in peaks else None,
                     "pct_of_fp32_ceiling": 100 * flops / (med / 1e3) / peaks["float32"] if "float32" in peaks else None,
                     "weight_mb": weight_bytes(model) / 2**20 if isinstance(model, nn.Module) and name != f"compile-{args.compile_dtype}" else None,
                     "max_rel_error": max_relative_error(outputs[name], reference) if reference is not None else None})
    by = {r["contestant"]: r["time_ms"] for r in rows}
    print(f"SD UNet step with CFG, {args.preset}, {args.image_size}x{args.image_size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeat} interleaved repetitions ({flops / 1e9:,.1f} GFLOP)")
    for r in rows:
        print(f"  {r['contestant']:>16}: {r['time_ms']:>10,.0f} ms  [{r['min_ms']:,.0f}-{r['max_ms']:,.0f}]  "
              f"{r['gflops_per_s']:7.1f} GFLOP/s"
              + (f"  {r['pct_of_bf16_ceiling']:5.1f}% of bf16 / {r['pct_of_fp32_ceiling']:5.1f}% of fp32 matmul ceiling"
                 if r["pct_of_bf16_ceiling"] is not None else "")
              + (f"  max rel err {r['max_rel_error']:.2e}" if r["max_rel_error"] is not None else ""))
    ratios = {}
    for ours in [n for n in by if n.startswith("genscope")]:
        for other in [n for n in by if not n.startswith("genscope")]:
            ratios[f"{ours} vs {other}"] = by[other] / by[ours]
            print(f"  {ours} is {by[other] / by[ours]:.2f}x faster than {other}")
    if compile_s is not None:
        print(f"  torch.compile: {compile_s:,.1f} s to compile (first call included)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratios": ratios, "compile_s": compile_s, "flops": flops,
                                               "ceilings_flops_per_s": peaks, "threads": torch.get_num_threads(),
                                               "swaps": {n: lg.table().to_dict(orient="records") for n, lg in logs.items()},
                                               "notes": {n: lg.notes for n, lg in logs.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
