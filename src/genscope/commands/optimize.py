"""CLI: ``genscope optimize stable-diffusion --ablation`` (Table 1) and ``--winograd-table`` (Table 2) of
Chen et al. 2023, "Speed Is All You Need", for the SD UNet; results are stored (study ``optimization``)."""

from __future__ import annotations

import argparse
import json
import sys

from genscope.cli import command
from genscope.commands.common import add_store_args, open_store, store_tables
from genscope.errors import UserError

ABLATION_COLUMNS = ["row", "time_ms", "spread_pct", "speedup", "peak_tensor_mb", "weight_mb", "max_rel_error",
                    "gflops_per_s", "dominant_op_class"]
WINOGRAD_COLUMNS = ["tile", "flops_saving", "tensor_multiplier", "measured_peak_tensor_multiplier",
                    "weight_multiplier", "measured_weight_multiplier", "speedup_vs_direct"]


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda text: print(f"[optimize] {text}", file=sys.stderr, flush=True)


def _print(tables: dict, run_id: int | None) -> None:
    from tabulate import tabulate

    if "ablation" in tables:
        df = tables["ablation"]
        s = tables["settings"].iloc[0]
        print(f"Table 1 (ablation): one UNet step with CFG, {s['workload']} @ {s['preset']}, "
              f"{s['image_size']}x{s['image_size']}, {s['dtype']} on {s['device']} ({s['threads']} threads), "
              f"median of {s['repeats']} interleaved repetitions")
        print(tabulate(df[[c for c in ABLATION_COLUMNS if c in df.columns]], headers="keys", showindex=False,
                       floatfmt=".3g"))
        notes = tables.get("notes")
        if notes is not None and len(notes):
            print("notes:")
            for n in notes["note"]:
                print(f"  - {n}")
    if "winograd" in tables:
        df = tables["winograd"]
        print(f"\nTable 2 (Winograd F(m x m, 3x3) vs direct 3x3 convolution; measured on {df['layer'].iloc[0]})")
        print(tabulate(df[[c for c in WINOGRAD_COLUMNS if c in df.columns]], headers="keys", showindex=False,
                       floatfmt=".3g"))
        err = tables["winograd_error"]
        if len(err):
            print(tabulate(err[["variant", "dtype", "points", "rel_error", "direct_rel_error", "error_ratio",
                                "oracle_ok"]], headers="keys", showindex=False, floatfmt=".3g"))
    if run_id is not None:
        print(f"stored as run {run_id} (study optimization)")


@command("optimize")
def cmd_optimize(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from genscope.models.runtime import parse_device
    from genscope.studies import optimization as study

    if args.threads is not None:
        import torch

        if not 1 <= args.threads <= 1024:
            raise UserError(f"--threads {args.threads} is out of range: accepted 1 to 1024")
        torch.set_num_threads(args.threads)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else ()
    settings = study.Settings(workload=args.model, preset=args.preset, image_size=args.image_size, dtype=args.dtype,
                              device=args.device, ablation=args.ablation, winograd_table=args.winograd_table,
                              rows=rows, repeat=args.repeat, backend=args.backend, profile=not args.no_profile,
                              memory=not args.no_memory, measure=not args.no_measure,
                              winograd_budget=_budget(args.winograd_budget))
    if args.backend == "triton":
        from genscope.models.layers.triton_support import require_triton

        require_triton(parse_device(args.device))
    tables = study.run(settings, progress=_progress(args.json))
    run_id = store_tables(open_store(args), study=study.STUDY, workload=args.model, preset=args.preset,
                          settings={**asdict(settings), "threads": args.threads}, device=args.device,
                          dtype=args.dtype, tables=tables)
    if args.json:
        print(json.dumps({"run_id": run_id, "tables": {k: v.to_dict(orient="records") for k, v in tables.items()}},
                         indent=2, default=str))
        return 0
    _print(tables, run_id)
    return 0


def _budget(text: str) -> float | None:
    if text.lower() in ("none", "inf", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--winograd-budget {text!r} is not a number; accepted: a fraction >= 0, or none") from None
    if not value >= 0 or value == float("inf"):
        raise UserError(f"--winograd-budget {text!r} is out of range; accepted: a fraction >= 0, or none")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("optimize", help="GPU-aware diffusion optimizations (Chen et al. 2023): ablation and "
                                        "Winograd tables for the stable-diffusion UNet")
    p.add_argument("model", help="stable-diffusion")
    p.add_argument("--preset", default="small")
    p.add_argument("--image-size", type=int, help="pixels (default: the preset's)")
    p.add_argument("--dtype", default="float32",
                   help="float32 | bfloat16 | float16 | auto (the rows' precision; auto: the one that measures "
                        "fastest on this device, cached per device)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    p.add_argument("--ablation", action="store_true", help="Table 1: one UNet step under cumulative passes")
    p.add_argument("--winograd-table", action="store_true", help="Table 2: Winograd tile sizes")
    p.add_argument("--rows", help="ablation rows to run besides the baseline, comma-separated: "
                                  "softmax, fused, flash, winograd, bf16, channels-last, qkv, prepacked "
                                  "(default: all)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved timed repetitions (default 3)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                   help="kernel implementations: torch (CPU), triton (CUDA), auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); decisions are cached per count")
    p.add_argument("--no-measure", action="store_true",
                   help="the paper's rules (flash for head dim 40, Winograd F(4x4) everywhere - the largest "
                        "smaller tile where F(4x4) fails the oracle) instead of measuring")
    p.add_argument("--winograd-budget", default="0.276",
                   help="transformed weights Winograd may add, as a fraction of the model's weights (default 0.276: "
                        "the paper's Table 1 growth, 1640 -> 2093 MB); 'none' for no limit")
    p.add_argument("--no-profile", action="store_true", help="skip the per-row operator-class profile")
    p.add_argument("--no-memory", action="store_true", help="skip the per-row peak tensor memory")
    add_store_args(p)
