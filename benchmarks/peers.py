"""Peers benchmark (a script, not a test): one Stable Diffusion UNet step with classifier-free guidance.

On this machine, in one run, interleaved (every repetition runs every contestant in turn):

* ``diffusers-fp32``: diffusers' ``UNet2DConditionModel`` as users run it - float32 weights, its default
  attention processor (``AttnProcessor2_0``: ``scaled_dot_product_attention``);
* ``diffusers-bf16``: the same with weights stored in bfloat16 (``.to(torch.bfloat16)``); on CUDA
  (``--device cuda``) ``diffusers-fp16``, float16 weights, as GPU users run it;
* ``compile-<dtype>`` (``--compile``): ``torch.compile`` (inductor, ``freezing=True``) in the dtype that
  measures fastest here (``--compile-dtype auto``); the compile time (first call) is reported separately -
  minutes at paper scale;
* ``genscope``: genscope's optimized UNet (``--passes auto``: precision and passes chosen by measurement,
  :mod:`genscope.passes.auto`; per-shape decisions measured and cached in ``~/.genscope``).

Prints the median step time of each (with the min-max spread and its 95% interval, timed by
genscope.instrument.measure: interleaved rounds until every median is within 5% or ``--budget-s`` runs out;
UNSTABLE otherwise, with the machine's load), the ratios, the achieved FLOP/s (FLOPs of the
step counted on the meta device) against the machine's measured matmul ceilings
(:func:`genscope.hardware.measure.measure_ceilings`), and the max relative error of each output against
diffusers' float32 output. ``--json FILE`` writes everything.

    python benchmarks/peers.py --preset paper --image-size 512 --repeat 3 [--compile] [--threads 2]
    python benchmarks/peers.py --device cuda --preset paper --compile      # on a GPU: float16 peers, CUDA events

The paper-scale UNet is 3.4 GB in float32 and 1.7 GB in bfloat16; the contestants share what they can (the
genscope model shares the float32 weights of diffusers' model and adds its transformed Winograd weights).
Timings on a shared machine are noisy: compare the ratios of one run, and re-measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genscope.instrument.measure import measure  # noqa: E402
from genscope.models.layers.attention import install_attention, use_backend  # noqa: E402
from genscope.passes import PassConfig, apply  # noqa: E402
from genscope.passes.base import model_dtype  # noqa: E402
from genscope.passes.oracle import max_relative_error  # noqa: E402
from genscope.passes.winograd_flops import flops_saved  # noqa: E402
from genscope.studies.optimization import (  # noqa: E402
    PAPER_WINOGRAD_WEIGHT_GROWTH,
    cfg_step,
    preset_config,
    step_flops,
    unet_inputs,
    weight_bytes,
)

# "auto": the precision and the passes chosen by measurement on the machine this runs on (genscope.passes.auto,
# decisions cached per device key); a comma-separated list applies those passes as given, in float32.
DEFAULT_PASSES = "auto"


def share_structure(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer tensor with ``model``."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def low_precision_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeat", type=int, default=6, help="minimum interleaved rounds (6: a 95%% interval)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="time budget of the timed rounds")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile (inductor, freezing) in --compile-dtype")
    parser.add_argument("--compile-dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="auto (default): the dtype that measures fastest here (genscope.passes.auto's probe)")
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
    from genscope.errors import UserError
    from genscope.models.runtime import parse_device

    try:
        device = parse_device(args.device)
    except UserError as exc:
        parser.error(str(exc))
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: accepted cpu, cuda[:N]")
    # the 16-bit peer: bfloat16 weights on a CPU, float16 on a GPU (what users of each run)
    half, half_name = (torch.float16, "diffusers-fp16") if device.type == "cuda" else (torch.bfloat16, "diffusers-bf16")
    say = lambda text: print(f"[peers] {text}", file=sys.stderr, flush=True)  # noqa: E731

    config = preset_config("stable-diffusion", args.preset)
    inputs = unet_inputs(config, args.image_size, device)
    flops = step_flops(config, args.image_size)
    try:
        from genscope.hardware.measure import measure_ceilings

        ceilings = measure_ceilings(device, refresh=args.refresh_ceilings)
        peaks = dict(ceilings.peak_flops_per_s)
    except Exception as exc:  # noqa: BLE001 - the ceiling is context, not the benchmark
        say(f"no ceilings ({exc})")
        peaks = {}
    say(f"{args.preset} UNet, {args.image_size}x{args.image_size}, batch 2 (CFG), {flops / 1e9:,.1f} GFLOP per step, "
        f"{torch.get_num_threads()} threads; matmul ceilings "
        + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items()))

    say("building diffusers' UNet (float32)")
    base = config.denoiser.build(device, torch.float32)
    contestants: dict[str, tuple[nn.Module, torch.dtype]] = {}
    if "diffusers-fp32" not in skip:
        contestants["diffusers-fp32"] = (base, torch.float32)
    half_model = None
    if half_name not in skip or args.compile:
        half_model = low_precision_copy(base, half)
        if half_name not in skip:
            contestants[half_name] = (half_model, half)
    compile_s = None
    if args.compile and args.compile_dtype == "auto":
        from genscope.passes.auto import choose_precision
        from genscope.passes.decisions import DecisionCache

        args.compile_dtype, row = choose_precision(base, device, ("float32", str(half).removeprefix("torch.")),
                                                   cache=DecisionCache())
        say(f"compile dtype: {args.compile_dtype} (measured: {row})")
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        cdtype = getattr(torch, args.compile_dtype)
        compile_model = (base if cdtype == torch.float32 else half_model if cdtype == half
                         else low_precision_copy(base, cdtype))
        compiled = torch.compile(compile_model)
        say(f"compiling ({args.compile_dtype}, inductor, freezing=True) - minutes at paper scale")
        start = time.perf_counter()
        with torch.inference_mode():
            cfg_step(compiled, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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
            if passes == ("auto",):
                from genscope.passes.auto import apply_auto, summary

                pass_config = PassConfig.auto(ours, example[0], example[1], winograd_weight_budget=budget)
                say(f"{name}: chosen in {time.perf_counter() - start:.1f} s: {', '.join(pass_config.passes)} "
                    f"({summary(pass_config.auto_decisions)})")
                logs[name] = apply_auto(ours, pass_config)
            else:
                logs[name] = apply(ours, PassConfig(passes=passes, example_inputs=example[0],
                                                    example_kwargs=example[1], winograd_weight_budget=budget))
            say(f"{name}: passes applied in {time.perf_counter() - start:.1f} s: {logs[name].summary()}")
            contestants[name] = (ours, model_dtype(ours))

    outputs = {}
    with torch.inference_mode(), use_backend("flash"):
        for name, (model, _) in contestants.items():  # warm-up + outputs for the error column
            say(f"warm-up {name}")
            outputs[name] = cfg_step(model, inputs)
        # interleaved rounds until every median's 95% interval is within 5% (or the budget runs out)
        timing = measure({name: (lambda model=model: cfg_step(model, inputs)) for name, (model, _) in contestants.items()},
                         device=device, warmup=0, min_reps=args.repeat, max_reps=max(args.repeat, 50), budget_s=args.budget_s,
                         progress=lambda name, rnd: say(f"round {rnd + 1}: {name}"))
    load = timing.load
    say(f"load during the measurement: load average {load.load_avg_1m:.2f}, other processes "
        f"{100 * load.others_cpu_share:.0f}% of {load.cores} cores" + (f" - BUSY: {load.busy_reason}" if load.busy else ""))
    reference = outputs.get("diffusers-fp32")
    rows = []
    for name, (model, dtype) in contestants.items():
        t = timing.row(name)
        med = t["median_ms"]
        rows.append({"contestant": name, "dtype": str(dtype).removeprefix("torch."), "time_ms": med,
                     "min_ms": t["min_ms"], "max_ms": t["max_ms"], "ci_pct": t["ci_pct"], "stable": bool(t["stable"]),
                     "reps": int(t["reps"]),
                     "gflops_per_s": flops / med / 1e6,
                     "pct_of_bf16_ceiling": 100 * flops / (med / 1e3) / peaks["bfloat16"] if "bfloat16" in peaks else None,
                     "pct_of_fp32_ceiling": 100 * flops / (med / 1e3) / peaks["float32"] if "float32" in peaks else None,
                     "weight_mb": weight_bytes(model) / 2**20 if isinstance(model, nn.Module) and name != f"compile-{args.compile_dtype}" else None,
                     "max_rel_error": max_relative_error(outputs[name], reference) if reference is not None else None,
                     # FLOPs actually executed: the direct UNet's minus what Winograd saves (both counted per step)
                     "executed_gflop": (flops - flops_saved(model)) / 1e9 if name in logs else flops / 1e9})
    by = {r["contestant"]: r["time_ms"] for r in rows}
    for r in rows:
        if r["contestant"] in logs:
            say(f"{r['contestant']}: {r['executed_gflop']:,.1f} GFLOP executed per step ({flops / 1e9:,.1f} direct)")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"SD UNet step with CFG, {args.preset}, {args.image_size}x{args.image_size}, {where}, "
          f"median of {rows[0]['reps']} interleaved repetitions ({timing.stop_reason}; {flops / 1e9:,.1f} GFLOP)")
    for r in rows:
        print(f"  {r['contestant']:>16}: {r['time_ms']:>10,.0f} ms  [{r['min_ms']:,.0f}-{r['max_ms']:,.0f}]  "
              f"{r['gflops_per_s']:7.1f} GFLOP/s"
              + (f"  {r['pct_of_bf16_ceiling']:5.1f}% of bf16 / {r['pct_of_fp32_ceiling']:5.1f}% of fp32 matmul ceiling"
                 if r["pct_of_bf16_ceiling"] is not None else "")
              + (f"  max rel err {r['max_rel_error']:.2e}" if r["max_rel_error"] is not None else "")
              + ("" if r["stable"] else f"  UNSTABLE (95% CI +-{r['ci_pct']:.1f}%)"))
    ratios = {}
    for ours in [n for n in by if n.startswith("genscope")]:
        for other in [n for n in by if not n.startswith("genscope")]:
            ratio = timing.ratio(other, ours)
            ratios[f"{ours} vs {other}"] = ratio
            print(f"  {ours} is {ratio['ratio']:.2f}x faster than {other} [{ratio['ratio_low']:.2f}-"
                  f"{ratio['ratio_high']:.2f}]{'' if ratio['stable'] else '  UNSTABLE'}")
    if compile_s is not None:
        print(f"  torch.compile: {compile_s:,.1f} s to compile (first call included)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratios": ratios, "compile_s": compile_s, "flops": flops,
                                               "ceilings_flops_per_s": peaks, "threads": torch.get_num_threads(), "device": str(device),
                                               "load": load.table().to_dict(orient="records")[0],
                                               "swaps": {n: lg.table().to_dict(orient="records") for n, lg in logs.items()},
                                               "notes": {n: lg.notes for n, lg in logs.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
