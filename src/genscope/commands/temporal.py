"""CLI: ``genscope temporal`` - spatial vs temporal attention (paper Section VI, Figures 11-14).

Without ``--model``: the frames sweep of one spatial and one temporal attention layer (ModelScope UNet3D first
level: 320 channels, 5 heads of 64) - default grid frames 2,4,8,16,32,64,128 x image sizes 32,64,128 (latents
4x4, 8x8, 16x16), baseline and flash attention, and the frame-strided temporal attention; it runs in about
3 minutes on 2 loaded CPU cores. With ``--model make-a-video`` (or ``phenaki``): also the in-model split of
that workload (``--no-sweep``: only the split). Both are stored (study ``temporal``) unless ``--no-store``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict

from genscope.cli import command
from genscope.commands.common import add_store_args, open_store, print_json, records, store_tables
from genscope.errors import UserError


def parse_int_list(text: str | Sequence[int], what: str, minimum: int, maximum: int) -> tuple[int, ...]:
    """``"2,4,8"`` -> (2, 4, 8), each within [minimum, maximum]; one clear UserError otherwise."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise UserError(f"{what}: give a comma-separated list of integers, got {text!r}")
        values = []
        for p in parts:
            try:
                values.append(int(p))
            except ValueError:
                raise UserError(f"{what}: {p!r} is not an integer (e.g. 2,4,8)") from None
    else:
        values = [int(v) for v in text]
        if not values:
            raise UserError(f"{what}: the list is empty")
    for v in values:
        if v < minimum or v > maximum:
            raise UserError(f"{what}: {v} is out of range; accepted {minimum} to {maximum}")
    return tuple(sorted(set(values)))


def _frames_arg(text: str):
    from genscope.studies.temporal import MAX_FRAMES

    return parse_int_list(text, "--frames", 1, MAX_FRAMES)


def _sizes_arg(text: str):
    from genscope.studies.temporal_model import MAX_IMAGE_SIZE

    return parse_int_list(text, "--image-size", 1, MAX_IMAGE_SIZE)


def _backends_arg(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))


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
    from genscope.studies.temporal_split import SPLIT_NOTE

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

    from genscope.models.runtime import dtype_name, parse_dtype
    from genscope.studies import registry, temporal

    if args.no_sweep and args.model is None:
        raise UserError("--no-sweep leaves nothing to do: give --model make-a-video (or phenaki) too")
    if args.counters and args.no_counters:
        raise UserError("--counters and --no-counters contradict each other")
    if args.counters and args.no_sweep:
        raise UserError("--counters applies to the frames sweep; drop --no-sweep")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
        torch.set_num_threads(args.threads)
    common = {"backends": _backends_arg(args.backends), "repeat": args.repeat, "warmup": args.warmup,
              "device": args.device, "dtype": args.dtype}
    parts = []  # validated before anything runs
    if args.model is not None:
        parts.append(temporal.Settings(part="split", workload=args.model, preset=args.preset, steps=args.steps,
                                       model_frames=args.model_frames, model_image_size=args.model_image_size,
                                       strided=not args.no_pass, **common))
    if not args.no_sweep:
        sweep = temporal.Settings(part="sweep", frames=_frames_arg(args.frames) if args.frames is not None
                                  else temporal.DEFAULT_FRAMES,
                                  image_sizes=_sizes_arg(args.image_size) if args.image_size is not None
                                  else temporal.DEFAULT_IMAGE_SIZES, channels=args.channels, heads=args.heads,
                                  batch=args.batch, counters="on" if args.counters else "off" if args.no_counters
                                  else "auto", **common)
        if args.counters:
            from genscope.instrument.counters import counters_available
            from genscope.models.runtime import parse_device

            ok, why = counters_available(parse_device(args.device))
            if not ok:
                raise UserError(f"--counters requested but no hardware counters are available here: {why}")
        parts.append(sweep)
    store = open_store(args)
    quiet = args.json
    out: dict = {}

    def progress(msg: str) -> None:
        if not quiet:
            print(f"  {msg}", flush=True)

    threads = torch.get_num_threads()
    for settings in parts:
        if not quiet and settings.part == "split":
            print(f"in-model split: {args.model} @ {args.preset} on {args.device} ({args.dtype}), {threads} threads")
        elif not quiet:
            print(f"frames sweep: frames {','.join(map(str, settings.frames))} x image sizes "
                  f"{','.join(map(str, settings.image_sizes))} (C={args.channels}, {args.heads} heads, "
                  f"B={args.batch}) on {args.device} ({args.dtype}), {threads} threads")
        tables = temporal.run(settings, progress=progress)
        preset, device, dtype = registry.record_fields(temporal.STUDY, settings)
        run_id = store_tables(store, study=temporal.STUDY, workload=settings.record_workload, preset=preset,
                              settings={**asdict(settings), "threads": threads}, device=device,
                              dtype=dtype_name(parse_dtype(dtype)), tables=tables)
        out[settings.part] = {"run_id": run_id, "tables": {k: records(v) for k, v in tables.items()}}
        if not quiet:
            (format_split if settings.part == "split" else format_sweep)(tables)
            if run_id is not None:
                print(f"stored as run {run_id}")
    if quiet:
        print_json(out)
    return 0


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
    add_store_args(p)
