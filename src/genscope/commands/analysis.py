"""CLI of the analytical characterization: ``genscope flops``, ``genscope taxonomy``, ``genscope roofline``.

Each command builds its study's ``Settings``, calls the study (:mod:`genscope.studies.flops`, ``taxonomy``,
``roofline``), stores the tables (``--db``; ``--no-store`` to skip) and prints them (``--json``: as JSON).
Table I and the roofline reuse stored FLOP counts (``--recount``: count again); counts they make are stored.
"""

from __future__ import annotations

import argparse
import sys

from genscope.cli import command
from genscope.commands.common import (
    add_store_args,
    fmt_bytes,
    fmt_flops,
    open_store,
    print_json,
    records,
    store_tables,
    tabulate_frame,
    workload_names,
)


def flops_settings_from_args(args: argparse.Namespace):
    from genscope.studies.flops import Settings

    return Settings(workload=args.model, preset=args.preset, steps=args.steps, image_size=args.image_size,
                    frames=args.frames, decode_tokens=args.decode_tokens, batch_size=args.batch_size,
                    device=args.device, dtype=args.dtype, attention=args.attention, depth=args.depth,
                    exact=args.exact, allow_large=args.allow_large)


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
        f"counted in {s['count_s']:.1f} s ({s['memoized_calls']} steps replicated, "
        f"{s['predicted_calls']} extrapolated, {s.get('replayed_blocks', 0)} block calls replayed, "
        f"{s['meta_value_reads']} meta value reads)",
        "",
    ]
    phases = result.tables["phases"].copy()
    phases = phases[["phase", "entries", "flops", "flops_per_entry", "flops_per_image", "share"]]
    for col in ("flops", "flops_per_entry", "flops_per_image"):
        phases[col] = phases[col].map(fmt_flops)
    lines += [tabulate_frame(phases), ""]
    classes = result.tables["classes"][["op_class", "flops", "softmax_flops", "bytes", "share"]].copy()
    classes["flops"] = classes["flops"].map(fmt_flops)
    classes["softmax_flops"] = classes["softmax_flops"].map(fmt_flops)
    classes["bytes"] = classes["bytes"].map(fmt_bytes)
    lines += [tabulate_frame(classes), ""]
    modules = result.tables["modules"].head(top)[["module", "flops", "share"]].copy()
    modules["flops"] = modules["flops"].map(fmt_flops)
    lines += [f"top {len(modules)} modules (depth {s.get('depth', '')}):", tabulate_frame(modules), ""]
    from genscope.studies.flops import NOTES

    lines += NOTES
    return "\n".join(lines)


@command("flops")
def cmd_flops(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from genscope.studies import flops

    settings = flops_settings_from_args(args)  # validates: unknown model, bad values -> UserError
    result = flops.result_from_tables(flops.run(settings))
    store = open_store(args)
    run_id = store_tables(store, study=flops.STUDY, workload=result.workload, preset=result.preset,
                          settings=asdict(settings), device=result.device, dtype=result.dtype, tables=result.tables)
    if args.json:
        print_json({"run_id": run_id, "summary": result.summary,
                    **{k: records(v) for k, v in result.tables.items() if k != "summary"}})
        return 0
    print(format_flops(result))
    if run_id is not None:
        print(f"stored as run {run_id}")
    return 0


def count_missing(store, names: list[str], preset: str, dtype: str, counts: dict, progress: bool) -> dict:
    """Count (and store) the workloads ``counts`` lacks, at ``preset`` on the meta device in ``dtype``."""
    from dataclasses import asdict

    from genscope.studies import flops

    for name in names:
        if name in counts:
            how = "stored count reused"
        else:
            settings = flops.Settings(workload=name, preset=preset, dtype=dtype)
            counts[name] = flops.result_from_tables(flops.run(settings))
            store_tables(store, study=flops.STUDY, workload=name, preset=preset, settings=asdict(settings),
                         device=counts[name].device, dtype=counts[name].dtype, tables=counts[name].tables)
            how = f"counted in {counts[name].summary['count_s']:.1f} s"
        if progress:
            print(f"  {name}: {fmt_flops(counts[name].summary['flops_per_image'])} per image ({how})", file=sys.stderr)
    return counts


# ----------------------------------------------------------------------------------------------------
# genscope taxonomy
# ----------------------------------------------------------------------------------------------------
TAXONOMY_COLUMNS = ["workload", "architecture", "params", "layers", "model_dim", "attn_downsample_factors",
                    "attn_resolutions", "channel_mult", "res_blocks", "heads", "head_channels", "text_embed_dim",
                    "flops_per_image", "param_bytes_fp16", "compute_class", "memory_class", "latency_class"]


@command("taxonomy")
def cmd_taxonomy(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from genscope.studies import taxonomy

    settings = taxonomy.Settings(workloads=tuple(workload_names(args.models)), preset=args.preset)
    store = open_store(args)
    inputs = taxonomy.stored_inputs(settings, store) if store is not None else {"counts": {}, "latency_s": {}}
    if args.recount:
        inputs["counts"] = {}
    count_missing(store, list(settings.workloads), args.preset, taxonomy.COUNT_DTYPE, inputs["counts"],
                  progress=not args.json)
    tables = taxonomy.run(settings, **inputs)
    run_id = store_tables(store, study=taxonomy.STUDY, workload="suite", preset=args.preset,
                          settings=asdict(settings), device="meta", dtype=taxonomy.COUNT_DTYPE, tables=tables)
    if args.json:
        print_json({"run_id": run_id, **{k: records(v) for k, v in tables.items()}})
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
        print(tabulate_frame(tables["paper"]))
    if run_id is not None:
        print(f"stored as run {run_id}")
    return 0


# ----------------------------------------------------------------------------------------------------
# genscope roofline
# ----------------------------------------------------------------------------------------------------
@command("roofline")
def cmd_roofline(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from genscope.models.runtime import dtype_name, parse_dtype
    from genscope.studies import roofline

    dtype = dtype_name(parse_dtype(args.dtype))
    settings = roofline.Settings(workloads=tuple(workload_names(args.models)), preset=args.preset,
                                 device_spec=args.device_spec, dtype=dtype, measured=not args.no_measure)
    store = open_store(args)
    counts = {} if args.recount or store is None else roofline.stored_inputs(settings, store)["counts"]
    count_missing(store, list(settings.workloads), args.preset, dtype, counts, progress=not args.json)
    tables = roofline.run(settings, counts=counts)
    run_id = store_tables(store, study=roofline.STUDY, workload="suite", preset=args.preset,
                          settings=asdict(settings), device="meta", dtype=dtype, tables=tables)
    if args.json:
        print_json({"run_id": run_id, **{k: records(v) for k, v in tables.items()}})
        return 0
    print(f"roofline, {args.preset} preset, {dtype}")
    devices = tables["devices"].copy()
    for _, d in devices.iterrows():
        print(f"  {d['device']}: peak {fmt_flops(d['peak_flops_per_s'])}/s, bandwidth "
              f"{d['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s, ridge {d['ridge_flops_per_byte']:,.1f} FLOP/byte "
              f"[{d['source']}]")
    points = tables["points"]
    totals = points[points["scope"] == "total"].copy()
    wide = totals.pivot_table(index=["workload", "definition", "intensity_flops_per_byte"], columns="device",
                              values="attainable_flops_per_s", sort=False).reset_index()
    for col in wide.columns[3:]:
        wide[col] = wide[col].map(lambda x: f"{fmt_flops(x)}/s")
    print()
    print(tabulate_frame(wide, floatfmt=",.1f"))
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
    add_store_args(p)

    p = sub.add_parser("taxonomy", help="the paper's Table I for the suite (from configs, at paper scale)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--models", nargs="+", help="workloads (default: the whole suite)")
    p.add_argument("--recount", action="store_true", help="count FLOPs again instead of reusing stored counts")
    add_store_args(p)

    p = sub.add_parser("roofline", help="the suite on a device roofline (the paper's Figure 5) and this machine's")
    p.add_argument("--device-spec", default="A100-80GB", help="A100-80GB | H100 | H200")
    p.add_argument("--preset", default="paper")
    p.add_argument("--dtype", default="float16", help="float16 (default) | bfloat16 | float32")
    p.add_argument("--models", nargs="+", help="workloads (default: the whole suite)")
    p.add_argument("--no-measure", action="store_true", help="leave out this machine's measured ceilings")
    p.add_argument("--recount", action="store_true", help="count FLOPs again instead of reusing stored counts")
    add_store_args(p)
