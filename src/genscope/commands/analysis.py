"""CLI of the analytical characterization: ``genscope flops``, ``genscope taxonomy``, ``genscope roofline``.

Each command computes its study, stores it in the results database (``--db``; ``--no-store`` to skip) when
``genscope.results.store`` is present, and prints a table (``--json``: the tables as JSON).
"""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd

from genscope.cli import command
from genscope.errors import UserError

STUDY_FLOPS = "flops"
STUDY_TAXONOMY = "taxonomy"
STUDY_ROOFLINE = "roofline"
FLOPS_DEVICES = ("meta", "cpu", "cuda")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def open_store(db: str | None, no_store: bool):
    """The results store, or None when storing is off or the store module is not in this checkout."""
    if no_store:
        return None
    try:
        from genscope.results.store import ResultsStore
    except ModuleNotFoundError:
        return None
    return ResultsStore(db)


def save(store, study: str, workload: str, preset: str, settings: dict, device: str, dtype: str,
         tables: dict[str, pd.DataFrame]) -> int | None:
    if store is None:
        return None
    from genscope.results.store import RunRecord

    return store.save_run(RunRecord(study=study, workload=workload, preset=preset, settings=settings,
                                    device=device, dtype=dtype, tables=tables))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]


def print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=_json_default))


def fmt_flops(x: float) -> str:
    """1.61e12 -> '1.606 TFLOP'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:,.3f} {unit}"
    return f"{x:,.0f} FLOP"


def fmt_bytes(x: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f} B"


def _tabulate(df: pd.DataFrame, floatfmt: str = ",.3f") -> str:
    from tabulate import tabulate

    return tabulate(df, headers="keys", showindex=False, floatfmt=floatfmt, intfmt=",")


def check_positive(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise UserError(f"{what} must be a positive integer, got {value}")


def flops_settings(result) -> dict:
    return {**result.settings, "defaults": bool(result.tables["summary"].iloc[0].get("defaults", False))}


# ----------------------------------------------------------------------------------------------------
# genscope flops
# ----------------------------------------------------------------------------------------------------
def run_flops(args: argparse.Namespace):
    from genscope.studies.flops import count_workload

    if args.device.split(":")[0] not in FLOPS_DEVICES:
        raise UserError(f"unknown device {args.device!r}; accepted: {', '.join(FLOPS_DEVICES)}")
    for what in ("steps", "image_size", "frames", "decode_tokens", "depth", "batch_size"):
        check_positive(f"--{what.replace('_', '-')}", getattr(args, what))
    if args.device != "meta" and args.preset == "paper" and not args.allow_large:
        raise UserError("counting the paper preset on real tensors would build the full-size model; use "
                        "--device meta (the default), a smaller preset, or --allow-large")
    return count_workload(args.model, args.preset, steps=args.steps, image_size=args.image_size, frames=args.frames,
                          decode_tokens=args.decode_tokens, batch_size=args.batch_size, device=args.device,
                          dtype=args.dtype, attention=args.attention, depth=args.depth, memoize=not args.exact)


def format_flops(result, top: int = 12) -> str:
    s = result.summary
    lines = [
        f"{result.workload} @ {result.preset} on {result.device} ({result.dtype}, attention={s['attention']}): "
        f"steps={s['steps']}, image_size={s['image_size']}, frames={s['frames']}, decode_tokens={s['decode_tokens']}, "
        f"guidance={s['guidance_scale']}, batch={s['batch_size']}",
        f"total {fmt_flops(s['flops'])} ({s['flops']:,} FLOPs = 2 x {s['macs']:,} MACs); "
        f"per image {fmt_flops(s['flops_per_image'])}; attention {fmt_flops(s['attention_flops'])}; "
        f"softmax (apart) {fmt_flops(s['softmax_flops'])}",
        f"parameters {s['params']:,} ({fmt_bytes(s['param_bytes'])} in {result.dtype}); bytes moved "
        f"{fmt_bytes(s['bytes'])}; arithmetic intensity {s['ai_flops_per_param_byte']:,.1f} FLOP/param-byte, "
        f"{s['ai_flops_per_byte_moved']:,.1f} FLOP/byte moved",
        f"counted in {s['count_s']:.1f} s ({s['memoized_calls']} component calls replayed, "
        f"{s['predicted_calls']} predicted, {s['meta_value_reads']} meta value reads)",
        "",
    ]
    phases = result.tables["phases"].copy()
    phases = phases[["phase", "entries", "flops", "flops_per_entry", "flops_per_image", "share"]]
    for col in ("flops", "flops_per_entry", "flops_per_image"):
        phases[col] = phases[col].map(fmt_flops)
    lines += [_tabulate(phases), ""]
    classes = result.tables["classes"][["op_class", "flops", "softmax_flops", "bytes", "share"]].copy()
    classes["flops"] = classes["flops"].map(fmt_flops)
    classes["softmax_flops"] = classes["softmax_flops"].map(fmt_flops)
    classes["bytes"] = classes["bytes"].map(fmt_bytes)
    lines += [_tabulate(classes), ""]
    modules = result.tables["modules"].head(top)[["module", "flops", "share"]].copy()
    modules["flops"] = modules["flops"].map(fmt_flops)
    lines += [f"top {len(modules)} modules (depth {s.get('depth', '')}):", _tabulate(modules), ""]
    from genscope.studies.flops import NOTES

    lines += NOTES
    return "\n".join(lines)


@command("flops")
def cmd_flops(args: argparse.Namespace) -> int:
    from genscope.workloads import registry

    registry.get(args.model)  # unknown model -> UserError before anything is built
    result = run_flops(args)
    store = open_store(args.db, args.no_store)
    run_id = save(store, STUDY_FLOPS, result.workload, result.preset, flops_settings(result), result.device,
                  result.dtype, result.tables)
    if args.json:
        print_json({"run_id": run_id, "summary": result.summary,
                    **{k: _records(v) for k, v in result.tables.items() if k != "summary"}})
        return 0
    print(format_flops(result))
    if run_id is not None:
        print(f"stored as run {run_id}")
    return 0


# ----------------------------------------------------------------------------------------------------
# stored-run reuse (taxonomy and roofline count every workload at paper scale: reuse a stored count)
# ----------------------------------------------------------------------------------------------------
def stored_flops(store, workload: str, preset: str, dtype: str | None = None):
    """The latest stored default-settings meta count of ``workload`` at ``preset`` as a FlopsResult, or None."""
    if store is None:
        return None
    from genscope.studies.flops import FlopsResult

    record = store.latest(STUDY_FLOPS, workload=workload, preset=preset, device="meta", dtype=dtype)
    if record is None or not record.settings.get("defaults") or "summary" not in record.tables:
        return None
    if not {"phases", "summary"} <= set(record.tables):
        return None
    return FlopsResult(workload=workload, preset=preset, device=record.device, dtype=record.dtype,
                       settings=record.settings, tables=record.tables)


def count_or_reuse(store, workloads: list[str], preset: str, dtype: str, reuse: bool, progress: bool = True,
                   any_dtype: bool = False) -> dict:
    """Counts at ``preset`` on the meta device in ``dtype`` (stored ones reused; ``any_dtype``: a stored count
    in any dtype will do - FLOPs do not depend on it)."""
    import sys

    from genscope.studies.flops import count_workload

    results = {}
    for name in workloads:
        result = stored_flops(store, name, preset, None if any_dtype else dtype) if reuse else None
        if result is None:
            result = count_workload(name, preset, dtype=dtype)
            save(store, STUDY_FLOPS, name, preset, flops_settings(result), result.device, result.dtype,
                 result.tables)
            how = f"counted in {result.summary['count_s']:.1f} s"
        else:
            how = "stored count reused"
        if progress:
            print(f"  {name}: {fmt_flops(result.summary['flops_per_image'])} per image ({how})", file=sys.stderr)
        results[name] = result
    return results


def measured_latency_s(store, workload: str, preset: str = "small") -> float | None:
    """End-to-end seconds of the newest stored measured run of ``workload`` at ``preset``, if any.

    Looks at ``breakdown`` runs (table ``speedup``: ``flash_ms``, the default backend) and ``profile`` runs
    (table ``phase_time``: the sum of the phases), newest first.
    """
    if store is None:
        return None
    candidates = []
    for study in ("breakdown", "profile"):
        record = store.latest(study, workload=workload, preset=preset)
        if record is not None:
            candidates.append(record)
    for record in sorted(candidates, key=lambda r: r.id or 0, reverse=True):
        speedup = record.tables.get("speedup")
        if speedup is not None and "flash_ms" in speedup.columns:
            rows = speedup[speedup["workload"] == workload] if "workload" in speedup.columns else speedup
            if len(rows):
                return float(rows["flash_ms"].iloc[-1]) / 1e3
        phase_time = record.tables.get("phase_time")
        if phase_time is not None and "time_ms" in phase_time.columns and len(phase_time):
            return float(phase_time["time_ms"].sum()) / 1e3
    return None


def _workloads(names: list[str] | None) -> list[str]:
    from genscope.workloads import registry

    if not names:
        return registry.available()
    for name in names:
        registry.get(name)
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------------
# genscope taxonomy
# ----------------------------------------------------------------------------------------------------
TAXONOMY_COLUMNS = ["workload", "architecture", "params", "layers", "model_dim", "attn_downsample_factors",
                    "attn_resolutions", "channel_mult", "res_blocks", "heads", "head_channels", "text_embed_dim",
                    "flops_per_image", "param_bytes_fp16", "compute_class", "memory_class", "latency_class"]


@command("taxonomy")
def cmd_taxonomy(args: argparse.Namespace) -> int:
    from genscope.studies.taxonomy import taxonomy_table

    names = _workloads(args.models)
    store = open_store(args.db, args.no_store)
    counts = count_or_reuse(store, names, args.preset, "float16", reuse=not args.recount, progress=not args.json,
                            any_dtype=True)
    flops = {n: float(r.summary["flops_per_image"]) for n, r in counts.items()}
    latency = {n: measured_latency_s(store, n) for n in names}
    tables = taxonomy_table(names, flops, latency, preset=args.preset)
    run_id = save(store, STUDY_TAXONOMY, "suite", args.preset, {"workloads": names}, "meta", "float16", tables)
    if args.json:
        print_json({"run_id": run_id, **{k: _records(v) for k, v in tables.items()}})
        return 0
    table = tables["taxonomy"]
    show = table[[c for c in TAXONOMY_COLUMNS if c in table.columns]].copy()
    show["params"] = show["params"].map(lambda p: f"{p / 1e9:.2f}B")
    show["flops_per_image"] = show["flops_per_image"].map(fmt_flops)
    show["param_bytes_fp16"] = show["param_bytes_fp16"].map(fmt_bytes)
    print(f"Table I for the suite ({args.preset} preset; architecture from the main network of each workload)")
    show = show.astype(object).where(show.notna(), "-")
    print(show.set_index("workload").T.to_string())
    print()
    print("thresholds:")
    for _, t in tables["thresholds"].iterrows():
        print(f"  {t['axis']}: {t['rule']} ({t['unit']}; {t['basis']})")
    if len(tables["paper"]):
        print("\nthe paper's Table I classes vs derived:")
        print(_tabulate(tables["paper"]))
    if run_id is not None:
        print(f"stored as run {run_id}")
    return 0


# ----------------------------------------------------------------------------------------------------
# genscope roofline
# ----------------------------------------------------------------------------------------------------
@command("roofline")
def cmd_roofline(args: argparse.Namespace) -> int:
    from genscope.hardware.specs import get_spec
    from genscope.models.runtime import dtype_name, parse_dtype
    from genscope.studies.roofline import run_roofline

    spec = get_spec(args.device_spec)  # unknown name -> UserError listing the known ones
    dtype = dtype_name(parse_dtype(args.dtype))
    spec.peak(dtype)
    names = _workloads(args.models)
    store = open_store(args.db, args.no_store)
    counts = count_or_reuse(store, names, args.preset, dtype, reuse=not args.recount, progress=not args.json)
    result = run_roofline(names, preset=args.preset, spec=spec.name, dtype=dtype, measured=not args.no_measure,
                          flops_results=counts)
    run_id = save(store, STUDY_ROOFLINE, "suite", args.preset, {"workloads": names, "device_spec": spec.name},
                  "meta", dtype, result.tables)
    if args.json:
        print_json({"run_id": run_id, **{k: _records(v) for k, v in result.tables.items()}})
        return 0
    print(f"roofline, {args.preset} preset, {dtype}")
    devices = result.tables["devices"].copy()
    for _, d in devices.iterrows():
        print(f"  {d['device']}: peak {fmt_flops(d['peak_flops_per_s'])}/s, bandwidth "
              f"{d['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s, ridge {d['ridge_flops_per_byte']:,.1f} FLOP/byte "
              f"[{d['source']}]")
    points = result.tables["points"]
    totals = points[points["scope"] == "total"].copy()
    wide = totals.pivot_table(index=["workload", "definition", "intensity_flops_per_byte"], columns="device",
                              values="attainable_flops_per_s", sort=False).reset_index()
    for col in wide.columns[3:]:
        wide[col] = wide[col].map(lambda x: f"{fmt_flops(x)}/s")
    print()
    print(_tabulate(wide, floatfmt=",.1f"))
    print("\nattainable = min(peak, intensity x bandwidth); params: FLOPs per image / parameter bytes (the "
          "paper's definition); moved: FLOPs / bytes moved by eager unfused execution")
    if run_id is not None:
        print(f"stored as run {run_id}")
    return 0


# ----------------------------------------------------------------------------------------------------
def add_parsers(sub) -> None:
    p = sub.add_parser("flops", help="FLOPs / MACs of a full run per phase, module and operator class")
    p.add_argument("model")
    p.add_argument("--preset", default="paper")
    p.add_argument("--image-size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--decode-tokens", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="meta", help="meta (default: shapes only, paper scale in seconds) | cpu | cuda")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (bytes and parameter bytes)")
    p.add_argument("--attention", default="flash", help="baseline | flash (same FLOPs; bytes differ)")
    p.add_argument("--depth", type=int, default=4, help="module path depth of the per-module table")
    p.add_argument("--exact", action="store_true", help="run every component call (no replay / prediction)")
    p.add_argument("--allow-large", action="store_true", help="allow the paper preset on real tensors")
    p.add_argument("--db", help="results database (default ~/.genscope/results.db or $GENSCOPE_DB)")
    p.add_argument("--no-store", action="store_true", help="do not store the run")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("taxonomy", help="the paper's Table I for the suite (from configs, at paper scale)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--models", nargs="+", help="workloads (default: the whole suite)")
    p.add_argument("--recount", action="store_true", help="count FLOPs again instead of reusing stored counts")
    p.add_argument("--db", help="results database (default ~/.genscope/results.db or $GENSCOPE_DB)")
    p.add_argument("--no-store", action="store_true", help="do not store the run")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("roofline", help="the suite on a device roofline (the paper's Figure 5) and this machine's")
    p.add_argument("--device-spec", default="A100-80GB", help="A100-80GB | H100 | H200")
    p.add_argument("--preset", default="paper")
    p.add_argument("--dtype", default="float16", help="float16 (default) | bfloat16 | float32")
    p.add_argument("--models", nargs="+", help="workloads (default: the whole suite)")
    p.add_argument("--no-measure", action="store_true", help="leave out this machine's measured ceilings")
    p.add_argument("--recount", action="store_true", help="count FLOPs again instead of reusing stored counts")
    p.add_argument("--db", help="results database (default ~/.genscope/results.db or $GENSCOPE_DB)")
    p.add_argument("--no-store", action="store_true", help="do not store the run")
    p.add_argument("--json", action="store_true")
