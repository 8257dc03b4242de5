"""CLI commands of the sequence-length studies: ``seqlen`` (Figures 8, 9), ``memory-model`` (Section V-A),
``scaling`` (Figure 10) and ``prefill-decode`` (Table III / Section IV-B)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from types import SimpleNamespace

from genscope.cli import command
from genscope.commands.common import (
    add_store_args,
    open_store,
    print_json,
    records,
    store_tables,
    stored_note,
)
from genscope.errors import UserError


def _print(df, title: str | None = None, floatfmt: str = ",.6g") -> None:
    from tabulate import tabulate

    if title:
        print(f"== {title}")
    # row dicts, not the frame: tabulate reads a mixed-dtype frame through one float array
    print(tabulate(df.to_dict("records"), headers="keys", tablefmt="simple", floatfmt=floatfmt, intfmt=","))


def _progress(enabled: bool):
    if not enabled:
        return None
    return lambda message: print(f"  {message}", file=sys.stderr, flush=True)


def _set_threads(args: argparse.Namespace) -> int:
    """Apply --threads (CPU intra-op threads) and return the count in force."""
    import torch

    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def _note(run_id: int | None) -> str:
    return f" ({stored_note(run_id)})" if run_id is not None else ""


def _store(args: argparse.Namespace, study: str, workload: str, settings, tables: dict, **extra) -> int | None:
    """Store a study's run: its Settings (plus ``extra``) under the fields the plan uses too."""
    from genscope.studies import registry

    preset, device, dtype = registry.record_fields(study, settings)
    return store_tables(open_store(args), study=study, workload=workload, preset=preset,
                        settings={**asdict(settings), **extra}, device=device, dtype=dtype, tables=tables)


# ----------------------------------------------------------------------------------------------------
@command("seqlen")
def cmd_seqlen(args: argparse.Namespace) -> int:
    from genscope.studies import seqlen

    settings = seqlen.Settings(workload=args.model, preset=args.preset, image_sizes=tuple(args.image_size or ()),
                               device=args.device, dtype=args.dtype, steps=args.steps,
                               decode_tokens=args.decode_tokens, all_steps=args.all_steps, phase=args.phase)
    tables = seqlen.run(settings)
    run_id = _store(args, seqlen.STUDY, args.model, settings, tables)
    if args.json:
        print_json({name: records(df) for name, df in tables.items()})
        return 0
    summary = tables["summary"]
    preset = summary["preset"].iloc[0]
    _print(summary.drop(columns=["model", "preset"]), f"{args.model} @ {preset}: sequence length "
           f"per attention call{_note(run_id)}")
    period_df, distribution = tables["period"], tables["distribution"]
    for size, period in period_df.groupby("image_size", sort=False):
        lengths = period["seq_len"].tolist()
        shown = " ".join(str(x) for x in lengths[:64]) + (" ..." if len(lengths) > 64 else "")
        label = f"image {size}: " if size else ""
        print(f"== Figure 8 period ({label}{period['phase'].iloc[0]}, {len(lengths)} calls): {shown}")
    wide = distribution.pivot_table(index="seq_len", columns="image_size", values="calls",
                                           fill_value=0).astype("int64")
    wide.columns = [f"calls@{c}" if c else "calls" for c in wide.columns]
    _print(wide.reset_index(), "Figure 9: calls per sequence length over the whole inference")
    return 0


# ----------------------------------------------------------------------------------------------------
@command("memory-model")
def cmd_memory_model(args: argparse.Namespace) -> int:
    from genscope.studies import memory_model

    settings = memory_model.Settings(workload=args.model, preset=args.preset, image_sizes=tuple(args.image_size or ()),
                                     latent_sides=tuple(args.latent_sides or ()), steps=args.steps, device=args.device,
                                     dtype=args.dtype)
    tables = memory_model.run(settings)
    run_id = _store(args, memory_model.STUDY, args.model, settings, tables)
    if args.json:
        print_json({name: records(df) for name, df in tables.items()})
        return 0
    summary, fit = tables["check"], tables["fit"].iloc[0]
    exact = bool(summary["exact"].all())
    _print(summary.drop(columns=["dtype", "bytes_closed_form"]),
           f"model vs trace, one UNet forward per size ({'EXACT' if exact else 'MISMATCH'}){_note(run_id)}")
    _print(tables["levels"], "per-level sequence length: traced vs the paper's H_L W_L / d^2n (v2) and H_L W_L / d^n (v1)")
    _print(tables["scaling"], f"{fit['component']}: similarity-matrix bytes per UNet forward vs latent side "
           f"({args.dtype})")
    print(f"fitted exponent: {fit['exponent_fit']:.3f} over sides {fit['sides']}; "
          f"{fit['exponent_largest']:.3f} between the two largest (O(L^4))")
    return 0 if exact else 1


# ----------------------------------------------------------------------------------------------------
@command("scaling")
def cmd_scaling(args: argparse.Namespace) -> int:
    from genscope.studies import image_scaling

    threads = _set_threads(args)
    settings = image_scaling.Settings(preset=args.preset,
                                      image_sizes=tuple(args.image_size or image_scaling.DEFAULT_SIZES),
                                      steps=args.steps, repeat=args.repeat, device=args.device, dtype=args.dtype,
                                      phases=tuple(args.phase or ()), memory_fraction=args.memory_fraction)
    tables = image_scaling.run(settings, progress=_progress(not args.json))
    run_id = _store(args, image_scaling.STUDY, image_scaling.MODEL, settings, tables, threads=threads)
    if args.json:
        print_json({name: records(df) for name, df in tables.items()})
        return 0
    result = SimpleNamespace(**tables)
    MODEL = image_scaling.MODEL
    wide = result.times.pivot_table(index="image_size", columns=["backend", "op_class"], values="time_ms")
    wide.columns = [f"{b}:{c}_ms" for b, c in wide.columns]
    _print(wide.reset_index(), f"{MODEL} @ {args.preset}: time per class (median of {args.repeat}, "
           f"{args.steps} steps, {threads} threads){_note(run_id)}")
    _print(result.slopes, "log-log slopes (time ~ size^slope)")
    if not result.crossovers.empty:
        _print(result.crossovers, "crossovers")
    if not result.skipped.empty:
        _print(result.skipped, "skipped")
    return 0


# ----------------------------------------------------------------------------------------------------
@command("prefill-decode")
def cmd_prefill_decode(args: argparse.Namespace) -> int:
    from genscope.studies import prefill_decode

    threads = _set_threads(args)
    settings = prefill_decode.Settings(workloads=tuple(args.models or ()), preset=args.preset, key_len=args.key_len,
                                       query_lens=tuple(args.query_lens or ()), heads=args.heads,
                                       head_dim=args.head_dim, repeat=args.repeat, device=args.device,
                                       dtype=args.dtype, trace_device=args.trace_device, max_shapes=args.max_shapes,
                                       sweep=not args.no_sweep, sweep_only=args.sweep_only)
    tables = prefill_decode.run(settings, progress=_progress(not args.json))
    run_id = _store(args, prefill_decode.STUDY, ",".join(args.models) if args.models else "suite", settings, tables,
                    threads=threads)
    if args.json:
        print_json({name: records(df) for name, df in tables.items()})
        return 0
    result = SimpleNamespace(**tables)
    if not result.sweep.empty:
        _print(result.sweep[["regime", "query_len", "key_len", "heads", "head_dim", "baseline_ms", "flash_ms",
                             "speedup"]],
               f"flash vs baseline at key length {args.key_len} (median of {args.repeat}, {threads} threads)"
               f"{_note(run_id)}")
    if not result.workloads.empty:
        _print(result.workloads, f"attention of each workload @ {args.preset} (call-weighted)")
        cols = ["workload", "regime", "kind", "batch", "heads", "query_len", "key_len", "head_dim", "calls",
                "baseline_ms", "flash_ms", "speedup"]
        _print(result.shapes.loc[result.shapes["timed"], cols], "timed shapes")
    if not result.skipped.empty:
        _print(result.skipped, "trace notes")
    return 0


# ----------------------------------------------------------------------------------------------------
def _threads(p) -> None:
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's; 1 is steadier on a "
                   "shared machine)")


def _common(p, device_default: str, dtype_default: str) -> None:
    p.add_argument("--device", default=device_default, help="cpu | cuda[:N]" + (" | meta" if device_default == "meta"
                                                                                else ""))
    p.add_argument("--dtype", default=dtype_default, help="float32 | bfloat16 | float16")
    add_store_args(p)


def add_parsers(sub) -> None:
    p = sub.add_parser("seqlen", help="sequence length of every attention call (Figures 8 and 9)")
    p.add_argument("model")
    p.add_argument("--preset", default="paper")
    p.add_argument("--image-size", type=int, nargs="+", help="one or more output sizes (Figure 9: 64 128 256 512 "
                   "1024)")
    p.add_argument("--steps", type=int)
    p.add_argument("--decode-tokens", type=int)
    p.add_argument("--phase", help="the looped phase whose period to show (default: the first)")
    p.add_argument("--all-steps", action="store_true", help="on meta, run every denoising step instead of "
                   "replicating the second")
    _common(p, "meta", "float32")

    p = sub.add_parser("memory-model", help="similarity-matrix memory model vs traced calls (Section V-A)")
    p.add_argument("model", help="stable-diffusion | imagen")
    p.add_argument("--preset", default="paper")
    p.add_argument("--image-size", type=int, nargs="+")
    p.add_argument("--latent-sides", type=int, nargs="+", help="latent sides for the O(L^4) fit")
    p.add_argument("--steps", type=int, help="denoising steps per loop (only the first is compared)")
    _common(p, "meta", "float16")

    p = sub.add_parser("scaling", help="convolution vs attention time over image sizes (Figure 10)")
    p.add_argument("--preset", default="small")
    p.add_argument("--image-size", type=int, nargs="+", help="default 64 128 256 512")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--phase", nargs="+", help="only these phases (e.g. denoise); default the whole inference")
    p.add_argument("--memory-fraction", type=float, default=0.5,
                   help="share of the available memory baseline attention may take (sizes beyond are skipped)")
    _threads(p)
    _common(p, "cpu", "float32")

    p = sub.add_parser("prefill-decode", help="flash speedup vs query length; the workloads' shapes (Table III)")
    p.add_argument("--models", nargs="+", help="workloads whose shapes to time (default: all)")
    p.add_argument("--preset", default="small")
    p.add_argument("--key-len", type=int, default=2048)
    p.add_argument("--query-lens", type=int, nargs="+", help="default 1, 2, 4, ... key length")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-shapes", type=int, default=16, help="distinct shapes timed per workload")
    p.add_argument("--trace-device", default="meta", help="device of the shape traces (meta: no memory)")
    p.add_argument("--sweep-only", action="store_true", help="only the query-length sweep")
    p.add_argument("--no-sweep", action="store_true", help="only the workloads' shapes")
    _threads(p)
    _common(p, "cpu", "float32")
