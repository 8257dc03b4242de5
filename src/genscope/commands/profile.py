"""CLI: ``genscope profile`` - the operator breakdown of one workload (baseline vs flash attention)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

import pandas as pd

from genscope.cli import command
from genscope.commands.common import add_store_args, open_store, store_tables
from genscope.errors import UserError


def _settings(args: argparse.Namespace, model: str):
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    settings = RunSettings(preset=args.preset, steps=args.steps, image_size=getattr(args, "image_size", None),
                           frames=getattr(args, "frames", None), decode_tokens=getattr(args, "decode_tokens", None),
                           dtype=args.dtype, device=args.device, seed=getattr(args, "seed", 0))
    registry.get(model).check_options_apply(settings)  # e.g. --decode-tokens for a diffusion model: refused
    return settings


def validity_note(row) -> str:
    """' UNSTABLE (...)' when the speedup (the median of per-round ratios) is not known to within its bound."""
    if row.get("stable", True):
        return ""
    ci, low, high = (row.get(k, float("nan")) for k in ("ci_pct", "e2e_speedup_low", "e2e_speedup_high"))
    ci = (f"95% interval of the speedup {low:.2f}-{high:.2f}x, +-{ci:.1f}%" if math.isfinite(ci)
          else "under 6 repetitions: no 95% interval of the median")
    return f"  UNSTABLE ({ci}{'; the machine was busy' if row.get('busy', False) else ''})"


def format_breakdown(tables: dict[str, pd.DataFrame]) -> str:
    from tabulate import tabulate

    from genscope.instrument.profiler import ATTENTION_NOTE

    total = tables["class_total"]
    wide = total.pivot_table(index="op_class", columns="attention", values=["time_ms", "share_pct"], sort=False)
    rows = []
    for cls in total["op_class"].unique():
        row = [cls]
        for backend in ("baseline", "flash"):
            if ("time_ms", backend) in wide.columns:
                row += [wide.loc[cls, ("time_ms", backend)], wide.loc[cls, ("share_pct", backend)]]
        rows.append(row)
    headers = ["op_class"]
    for backend in ("baseline", "flash"):
        if ("time_ms", backend) in wide.columns:
            headers += [f"{backend}_ms", f"{backend}_%"]
    s = tables["speedup"].iloc[0]
    lines = [tabulate(rows, headers=headers, floatfmt=".1f"), "",
             f"end-to-end: baseline {s.baseline_ms:.1f} ms, flash {s.flash_ms:.1f} ms -> speedup "
             f"{s.e2e_speedup:.3f}x (median of {int(s.repeats)}; spread {s.baseline_spread_pct:.1f}% / "
             f"{s.flash_spread_pct:.1f}%)" + validity_note(s),
             f"attention module: {s.attention_baseline_ms:.1f} -> {s.attention_flash_ms:.1f} ms "
             f"({s.attention_speedup:.2f}x), {100 * s.attention_share_baseline:.1f}% of baseline time; "
             f"Amdahl predicts {s.amdahl_predicted_speedup:.3f}x vs {s.e2e_speedup:.3f}x measured",
             ATTENTION_NOTE]
    other = tables["other_ops"]
    if len(other):
        top = other.groupby("op")["time_ms"].mean().sort_values(ascending=False).head(5)
        lines.append("Other: " + ", ".join(f"{op} {ms:.1f} ms" for op, ms in top.items()))
    return "\n".join(lines)


@command("profile")
def cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genscope.instrument.profiler import MODES
    from genscope.models.runtime import dtype_name
    from genscope.studies.breakdown import breakdown_tables, profile_backends
    from genscope.validate import check_count
    from genscope.workloads import registry

    if args.mode not in MODES:
        raise UserError(f"unknown mode {args.mode!r}; accepted: {', '.join(MODES)}")
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    check_count("--warmup", args.warmup, minimum=0)
    if args.attention not in ("baseline", "flash", "both"):
        raise UserError(f"unknown attention {args.attention!r}; accepted: baseline, flash, both")
    if args.trace and not Path(args.trace).expanduser().parent.is_dir():
        raise UserError(f"--trace folder {str(Path(args.trace).parent)!r} does not exist")
    if args.trace and args.mode != "trace":
        raise UserError("--trace needs --mode trace")
    workload = registry.get(args.model)
    settings = _settings(args, args.model)
    request = workload.request(settings)
    store = open_store(args)
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    if args.attention == "both":
        profiles = profile_backends(pipeline, request, mode=args.mode, repeat=args.repeat, warmup=args.warmup,
                                    trace_path=args.trace)
        tables = breakdown_tables(args.model, profiles)
        study = "breakdown"
    else:
        profiles = profile_backends(pipeline, request, mode=args.mode, repeat=args.repeat, warmup=args.warmup,
                                    trace_path=args.trace, backends=(args.attention,))
        prof = profiles[args.attention]
        by = prof.by_class()
        by.insert(0, "attention", args.attention)
        tables = {"class_total": by, "phase_time": prof.phase_time, "other_ops": prof.other_ops}
        study = "profile"
    run_id = store_tables(store, study=study, workload=args.model, preset=request.preset,
                          settings={**asdict(settings), "mode": args.mode, "repeat": args.repeat,
                                    "attention": args.attention},
                          device=str(request.device), dtype=dtype_name(request.dtype), tables=tables)
    if args.json:
        print(json.dumps({"run_id": run_id, "tables": {k: v.to_dict(orient="records") for k, v in tables.items()}},
                         indent=2, default=str))
        return 0
    print(f"{args.model} @ {request.preset} on {request.device} ({args.dtype}), mode={args.mode}, "
          f"repeat={args.repeat}" + (f", stored as run {run_id}" if run_id is not None else ""))
    if study == "breakdown":
        print(format_breakdown(tables))
    else:
        from tabulate import tabulate

        print(tabulate(tables["class_total"].drop(columns="attention"), headers="keys", showindex=False,
                       floatfmt=".1f"))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("profile", help="operator-class breakdown of one workload (baseline vs flash attention)")
    p.add_argument("model")
    p.add_argument("--preset", default="small")
    p.add_argument("--attention", default="both", help="baseline | flash | both")
    p.add_argument("--mode", default="trace", help="trace (torch.profiler) | fast (hook timers)")
    p.add_argument("--steps", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--decode-tokens", type=int)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trace", help="write Chrome/Perfetto traces (FILE.baseline.json, FILE.flash.json)")
    add_store_args(p)
