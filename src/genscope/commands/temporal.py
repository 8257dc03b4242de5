"""CLI: ``genscope temporal`` - spatial vs temporal attention (paper Section VI, Figures 11-14).

Without ``--model``: the frames sweep of one spatial and one temporal attention layer (ModelScope UNet3D first
level: 320 channels, 5 heads of 64) - default grid frames 2,4,8,16,32,64,128 x image sizes 32,64,128 (latents
4x4, 8x8, 16x16), baseline and flash attention, and the frame-strided temporal attention; it runs in about
3 minutes on 2 loaded CPU cores. With ``--model make-a-video`` (or ``phenaki``): also the in-model split of
that workload (``--no-sweep``: only the split). Both are stored (study ``temporal``) unless ``--no-store``.
"""

from __future__ import annotations

import argparse
import json

from genscope.cli import command
from genscope.errors import UserError


def _frames_arg(text: str):
    from genscope.studies.temporal import MAX_FRAMES, parse_int_list

    return parse_int_list(text, "--frames", 1, MAX_FRAMES)


def _sizes_arg(text: str):
    from genscope.studies.temporal import MAX_IMAGE_SIZE, check_image_size, parse_int_list

    sizes = parse_int_list(text, "--image-size", 1, MAX_IMAGE_SIZE)
    for size in sizes:
        check_image_size(size)
    return sizes


def _backends_arg(text: str) -> tuple[str, ...]:
    from genscope.errors import choice_error
    from genscope.models.layers.attention import BACKENDS

    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise UserError("--backends: give a comma-separated list, e.g. baseline,flash")
    for name in names:
        if name not in BACKENDS:
            raise choice_error("attention backend", name, BACKENDS)
    return names


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records", double_precision=15))


def _print(df, floatfmt: str = ".4g") -> None:
    from tabulate import tabulate

    print(tabulate(df, headers="keys", tablefmt="simple", showindex=False, floatfmt=floatfmt))


def format_sweep(tables: dict) -> None:
    """Human-readable summary of a frames sweep."""
    points = tables["points"]
    std = points[points["variant"] == "standard"]
    print("Matmul FLOPs (QK^T + PV) and measured core time per call, spatial vs temporal (standard layers):")
    for backend in std["backend"].unique():
        sub = std[std["backend"] == backend]
        wide = sub.pivot_table(index=["image_size", "frames"], columns="layer",
                               values=["core_flops", "core_ms", "core_ai", "core_gflops_per_s"], sort=False)
        wide.columns = [f"{a}_{b}" for a, b in wide.columns]
        wide = wide.reset_index()
        wide["flops_t/s"] = wide["core_flops_temporal"] / wide["core_flops_spatial"]
        wide["time_t/s"] = wide["core_ms_temporal"] / wide["core_ms_spatial"]
        print(f"\n[{backend}]")
        _print(wide[["image_size", "frames", "core_flops_spatial", "core_flops_temporal", "flops_t/s",
                     "core_ms_spatial", "core_ms_temporal", "time_t/s", "core_ai_spatial", "core_ai_temporal",
                     "core_gflops_per_s_spatial", "core_gflops_per_s_temporal"]])
    fits = tables["fits"]
    if not fits.empty:
        print("\nFitted exponents in F (y = A * F^k, least squares in log-log):")
        f = fits[fits["variant"] == "standard"].pivot_table(index=["image_size", "layer", "backend"],
                                                             columns="quantity", values="exponent", sort=False)
        _print(f.reset_index(), ".3f")
    print("\nCrossover (temporal >= spatial): predicted by the FLOP model at F = H*W; measured on the grid:")
    cross = tables["crossover"]
    _print(cross, ".3g")
    sp = tables["speedup"]
    if not sp.empty:
        print("\nFrame-strided temporal attention vs standard (layer time, same weights; rel. error of outputs):")
        _print(sp[["image_size", "frames", "backend", "standard_layer_ms", "strided_layer_ms", "layer_speedup",
                   "standard_layout_ms", "rel_error"]], ".3g")
    counters = tables["counters"]
    if not counters.empty:
        print("\nHardware counters:")
        _print(counters, ".4g")
    for note in tables["notes"]["note"]:
        print(f"note: {note}")


def format_split(tables: dict) -> None:
    from genscope.studies.temporal import SPLIT_NOTE

    s = tables["summary"]
    cols = ["attention", "variant", "spatial_ms", "temporal_ms", "time_ratio_temporal_to_spatial",
            "spatial_core_ms", "temporal_core_ms", "spatial_layout_ms", "temporal_layout_ms",
            "spatial_with_projections_ms", "temporal_with_projections_ms", "temporal_share_of_attention",
            "attention_share_of_component"]
    for extra in ("spatial_core_flops", "temporal_core_flops", "flops_ratio_spatial_to_temporal"):
        if extra in s.columns:
            cols.append(extra)
    print("Spatial vs temporal attention in the model (ms per run, mean of repetitions):")
    _print(s[[c for c in cols if c in s.columns]].T.reset_index(), ".4g")
    print(SPLIT_NOTE)


@command("temporal")
def cmd_temporal(args: argparse.Namespace) -> int:
    import torch

    from genscope.studies.temporal import (
        DEFAULT_FRAMES,
        DEFAULT_IMAGE_SIZES,
        STUDY,
        SWEEP_PRESET,
        SWEEP_WORKLOAD,
        SplitConfig,
        SweepConfig,
        check_layer_config,
        counters_available,
    )

    frames = _frames_arg(args.frames) if args.frames is not None else DEFAULT_FRAMES
    sizes = _sizes_arg(args.image_size) if args.image_size is not None else DEFAULT_IMAGE_SIZES
    backends = _backends_arg(args.backends)
    check_layer_config(args.channels, args.heads, args.batch)
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.no_sweep and args.model is None:
        raise UserError("--no-sweep leaves nothing to do: give --model make-a-video (or phenaki) too")
    if args.counters and args.no_counters:
        raise UserError("--counters and --no-counters contradict each other")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
        torch.set_num_threads(args.threads)
    from genscope.models.runtime import check_dtype_on_device, parse_device, parse_dtype

    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    check_dtype_on_device(dtype, device)
    if args.counters and not args.no_sweep:
        ok, why = counters_available(device)
        if not ok:
            raise UserError(f"--counters requested but no hardware counters are available here: {why}")
    elif args.counters:
        raise UserError("--counters applies to the frames sweep; drop --no-sweep")
    store = None
    if not args.no_store:
        from genscope.results.store import ResultsStore

        store = ResultsStore(args.db)
    quiet = args.json
    out: dict = {}

    def progress(msg: str) -> None:
        if not quiet:
            print(f"  {msg}", flush=True)

    threads = torch.get_num_threads()
    if args.model is not None:
        split_cfg = SplitConfig(workload=args.model, preset=args.preset, steps=args.steps, frames=args.model_frames,
                                image_size=args.model_image_size, repeat=args.repeat, warmup=args.warmup,
                                backends=backends, strided=not args.no_pass, device=args.device, dtype=args.dtype)
        from genscope.studies.temporal import run_split

        if not quiet:
            print(f"in-model split: {args.model} @ {args.preset} on {args.device} ({args.dtype}), {threads} threads")
        tables = run_split(split_cfg, progress=progress)
        run_id = _save(store, STUDY, args.model, args.preset, {**split_cfg.settings(), "part": "split",
                                                                "threads": threads}, args.device, args.dtype, tables)
        out["split"] = {"run_id": run_id, "tables": {k: _records(v) for k, v in tables.items()}}
        if not quiet:
            format_split(tables)
            if run_id is not None:
                print(f"stored as run {run_id}")
    if not args.no_sweep:
        sweep_cfg = SweepConfig(frames=frames, image_sizes=sizes, channels=args.channels, heads=args.heads,
                                batch=args.batch, backends=backends, repeat=args.repeat, warmup=args.warmup,
                                device=args.device, dtype=args.dtype,
                                counters="on" if args.counters else "off" if args.no_counters else "auto")
        from genscope.studies.temporal import run_sweep

        if not quiet:
            print(f"frames sweep: frames {','.join(map(str, frames))} x image sizes {','.join(map(str, sizes))} "
                  f"(C={args.channels}, {args.heads} heads, B={args.batch}) on {args.device} ({args.dtype}), "
                  f"{threads} threads")
        tables = run_sweep(sweep_cfg, progress=progress)
        run_id = _save(store, STUDY, SWEEP_WORKLOAD, SWEEP_PRESET, {**sweep_cfg.settings(), "part": "sweep",
                                                                     "threads": threads}, args.device, args.dtype,
                       tables)
        out["sweep"] = {"run_id": run_id, "tables": {k: _records(v) for k, v in tables.items()}}
        if not quiet:
            format_sweep(tables)
            if run_id is not None:
                print(f"stored as run {run_id}")
    if quiet:
        print(json.dumps(out, indent=2))
    return 0


def _save(store, study, workload, preset, settings, device, dtype, tables):
    if store is None:
        return None
    from genscope.models.runtime import dtype_name, parse_dtype
    from genscope.results.store import RunRecord

    return store.save_run(RunRecord(study=study, workload=workload, preset=preset, settings=settings,
                                    device=str(device), dtype=dtype_name(parse_dtype(dtype)), tables=tables))


def add_parsers(sub) -> None:
    p = sub.add_parser("temporal", help="spatial vs temporal attention: frames sweep and in-model split "
                                        "(paper Figures 11-14)")
    p.add_argument("--frames", help="frame counts of the sweep, comma-separated (default 2,4,8,16,32,64,128)")
    p.add_argument("--image-size", help="image sizes of the sweep, multiples of 8, comma-separated "
                                        "(default 32,64,128: latents 4x4, 8x8, 16x16)")
    p.add_argument("--channels", type=int, default=320, help="layer channels (ModelScope level 0: 320)")
    p.add_argument("--heads", type=int, default=5, help="attention heads (ModelScope level 0: 5 of 64 channels)")
    p.add_argument("--batch", type=int, default=1, help="videos per batch in the sweep")
    p.add_argument("--backends", default="baseline,flash", help="attention backends, comma-separated")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (median; cheap sweep points "
                                                          "get more)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--counters", action="store_true", help="require hardware counters (perf / ncu); exit 2 "
                                                           "if there are none")
    p.add_argument("--no-counters", action="store_true", help="do not try hardware counters")
    p.add_argument("--model", choices=None, help="also split a video workload: make-a-video or phenaki")
    p.add_argument("--preset", default="small", help="preset of --model (default small)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps of --model (default 2: every step "
                                                        "runs the same network)")
    p.add_argument("--model-frames", type=int, help="frames of --model (default: the preset's)")
    p.add_argument("--model-image-size", type=int, help="image size of --model (default: the preset's)")
    p.add_argument("--no-pass", action="store_true", help="do not profile the frame-strided pass in --model")
    p.add_argument("--no-sweep", action="store_true", help="only the in-model split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--db", help="results database (default ~/.genscope/results.db or $GENSCOPE_DB)")
    p.add_argument("--no-store", action="store_true")
    p.add_argument("--json", action="store_true")
