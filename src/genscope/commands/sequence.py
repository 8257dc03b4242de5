"""CLI commands of the sequence-length studies: ``seqlen`` (Figures 8, 9), ``memory-model`` (Section V-A),
``scaling`` (Figure 10) and ``prefill-decode`` (Table III / Section IV-B)."""

from __future__ import annotations

import argparse
import json
import sys

from genscope.cli import command
from genscope.errors import UserError

DB_HELP = "results database (default ~/.genscope/results.db or $GENSCOPE_DB)"


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records", double_precision=15))


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


def _store(args: argparse.Namespace, study: str, workload: str, preset: str, settings: dict, device: str,
           dtype: str, tables: dict) -> int | None:
    """Save the run if the results store is in this checkout and --no-store was not given."""
    if args.no_store:
        return None
    try:
        from genscope.results.store import ResultsStore, RunRecord
    except ModuleNotFoundError:
        return None
    record = RunRecord(study=study, workload=workload, preset=preset, settings=settings, device=device, dtype=dtype,
                       tables=tables)
    return ResultsStore(args.db).save_run(record)


def _set_threads(args: argparse.Namespace) -> int:
    """Apply --threads (CPU intra-op threads) and return the count in force."""
    import torch

    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def _stored_note(run_id: int | None) -> str:
    return f" (stored as run {run_id})" if run_id is not None else ""


def _positive_ints(values, what: str) -> list[int] | None:
    if values is None:
        return None
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"{what} must be positive integers, got {bad}")
    return list(dict.fromkeys(values))


# ----------------------------------------------------------------------------------------------------
@command("seqlen")
def cmd_seqlen(args: argparse.Namespace) -> int:
    from genscope.studies.seqlen import STUDY, sequence_lengths

    sizes = _positive_ints(args.image_size, "image sizes")
    result = sequence_lengths(args.model, preset=args.preset, image_sizes=sizes, device=args.device,
                              dtype=args.dtype, steps=args.steps, decode_tokens=args.decode_tokens,
                              all_steps=args.all_steps, phase=args.phase)
    trace = result.traces[0]
    run_id = _store(args, STUDY, args.model, trace.preset,
                    {"image_sizes": [int(s) for s in result.summary["image_size"]], "steps": trace.request.steps,
                     "decode_tokens": trace.request.decode_tokens, "all_steps": args.all_steps},
                    str(trace.request.device), args.dtype, result.tables())
    if args.json:
        print(json.dumps({name: _records(df) for name, df in result.tables().items()}, indent=2))
        return 0
    _print(result.summary.drop(columns=["model", "preset"]), f"{args.model} @ {trace.preset}: sequence length "
           f"per attention call{_stored_note(run_id)}")
    for size, period in result.period.groupby("image_size", sort=False):
        lengths = period["seq_len"].tolist()
        shown = " ".join(str(x) for x in lengths[:64]) + (" ..." if len(lengths) > 64 else "")
        label = f"image {size}: " if size else ""
        print(f"== Figure 8 period ({label}{period['phase'].iloc[0]}, {len(lengths)} calls): {shown}")
    wide = result.distribution.pivot_table(index="seq_len", columns="image_size", values="calls",
                                           fill_value=0).astype("int64")
    wide.columns = [f"calls@{c}" if c else "calls" for c in wide.columns]
    _print(wide.reset_index(), "Figure 9: calls per sequence length over the whole inference")
    return 0


# ----------------------------------------------------------------------------------------------------
@command("memory-model")
def cmd_memory_model(args: argparse.Namespace) -> int:
    import pandas as pd

    from genscope.studies.attention_memory import (
        MODELED_WORKLOADS,
        UNetAttentionLayout,
        check_against_trace,
        denoiser_geometry,
        level_lengths_vs_paper,
        memory_scaling,
        paper_formula_bytes,
    )
    from genscope.workloads import registry

    if args.model not in MODELED_WORKLOADS:
        raise UserError(f"the attention-memory model covers {', '.join(MODELED_WORKLOADS)}; got {args.model!r}")
    registry.get(args.model)
    sizes = _positive_ints(args.image_size, "image sizes") or [None]
    summary, calls, traces = check_against_trace(args.model, sizes, preset=args.preset, device=args.device,
                                                 dtype=args.dtype, steps=args.steps)
    # d^n vs d^2n: the traced per-level sequence lengths of every UNet at the largest size
    trace = max(traces, key=lambda t: t.request.image_size)
    geometries = denoiser_geometry(args.model, trace.config, trace.request)
    slip = pd.concat([level_lengths_vs_paper(trace.calls, g) for g in geometries], ignore_index=True)
    first = geometries[0]
    layout = UNetAttentionLayout.from_spec(first.spec)
    multiple = layout.d ** (layout.levels - 1)
    sides = _positive_ints(args.latent_sides, "latent sides") or [multiple * 2**k for k in range(6)]
    scaling, fit = memory_scaling(first.spec, sides, first.text_len, first.batch, args.dtype)
    depth = layout.levels - 1  # the paper's unetdepth: attention levels 0..depth-1, the mid block at depth
    paper = pd.DataFrame([{"latent_side": s, "paper_v2_bytes": paper_formula_bytes(s, s, first.text_len, depth),
                           "paper_v1_bytes": paper_formula_bytes(s, s, first.text_len, depth, variant="v1")}
                          for s in sides])
    fit_df = pd.DataFrame([{"component": first.component, **fit}])
    tables = {"check": summary, "calls": calls, "levels": slip, "scaling": scaling, "fit": fit_df, "paper": paper}
    run_id = _store(args, "memory-model", args.model, args.preset,
                    {"image_sizes": [int(s) for s in summary["image_size"].unique()], "latent_sides": sides},
                    args.device, args.dtype, tables)
    if args.json:
        print(json.dumps({name: _records(df) for name, df in tables.items()}, indent=2))
        return 0
    exact = bool(summary["exact"].all())
    _print(summary.drop(columns=["dtype", "bytes_closed_form"]),
           f"model vs trace, one UNet forward per size ({'EXACT' if exact else 'MISMATCH'}){_stored_note(run_id)}")
    _print(slip, "per-level sequence length: traced vs the paper's H_L W_L / d^2n (v2) and H_L W_L / d^n (v1)")
    _print(scaling, f"{first.component}: similarity-matrix bytes per UNet forward vs latent side ({args.dtype}, "
           f"batch {first.batch})")
    print(f"fitted exponent: {fit['exponent_fit']:.3f} over sides {fit['sides']}; "
          f"{fit['exponent_largest']:.3f} between the two largest (O(L^4))")
    return 0 if exact else 1


# ----------------------------------------------------------------------------------------------------
@command("scaling")
def cmd_scaling(args: argparse.Namespace) -> int:
    from genscope.studies.image_scaling import DEFAULT_SIZES, MODEL, STUDY, image_scaling

    sizes = _positive_ints(args.image_size, "image sizes") or list(DEFAULT_SIZES)
    phases = tuple(args.phase) if args.phase else None
    threads = _set_threads(args)
    result = image_scaling(preset=args.preset, image_sizes=sizes, steps=args.steps, repeat=args.repeat,
                           device=args.device, dtype=args.dtype, phases=phases,
                           memory_fraction=args.memory_fraction, progress=_progress(not args.json))
    run_id = _store(args, STUDY, MODEL, args.preset, {"image_sizes": sizes, "steps": args.steps,
                                                      "repeat": args.repeat, "phases": list(phases or []),
                                                      "threads": threads},
                    args.device, args.dtype, result.tables())
    if args.json:
        print(json.dumps({name: _records(df) for name, df in result.tables().items()}, indent=2))
        return 0
    wide = result.times.pivot_table(index="image_size", columns=["backend", "op_class"], values="time_ms")
    wide.columns = [f"{b}:{c}_ms" for b, c in wide.columns]
    _print(wide.reset_index(), f"{MODEL} @ {args.preset}: time per class (median of {args.repeat}, "
           f"{args.steps} steps, {threads} threads){_stored_note(run_id)}")
    _print(result.slopes, "log-log slopes (time ~ size^slope)")
    if not result.crossovers.empty:
        _print(result.crossovers, "crossovers")
    if not result.skipped.empty:
        _print(result.skipped, "skipped")
    return 0


# ----------------------------------------------------------------------------------------------------
@command("prefill-decode")
def cmd_prefill_decode(args: argparse.Namespace) -> int:
    from genscope.studies.prefill_decode import STUDY, prefill_decode

    query_lens = _positive_ints(args.query_lens, "query lengths")
    models = [] if args.sweep_only else (args.models or None)
    threads = _set_threads(args)
    result = prefill_decode(models, preset=args.preset, key_len=args.key_len, query_lens=query_lens,
                            heads=args.heads, head_dim=args.head_dim, repeat=args.repeat, device=args.device,
                            dtype=args.dtype, trace_device=args.trace_device, max_shapes=args.max_shapes,
                            sweep=not args.no_sweep, progress=_progress(not args.json))
    run_id = _store(args, STUDY, ",".join(args.models) if args.models else "suite", args.preset,
                    {"key_len": args.key_len, "heads": args.heads, "head_dim": args.head_dim, "repeat": args.repeat,
                     "query_lens": query_lens, "max_shapes": args.max_shapes, "threads": threads}, args.device,
                    args.dtype,
                    result.tables())
    if args.json:
        print(json.dumps({name: _records(df) for name, df in result.tables().items()}, indent=2))
        return 0
    if not result.sweep.empty:
        _print(result.sweep[["regime", "query_len", "key_len", "heads", "head_dim", "baseline_ms", "flash_ms",
                             "speedup"]],
               f"flash vs baseline at key length {args.key_len} (median of {args.repeat}, {threads} threads)"
               f"{_stored_note(run_id)}")
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
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--no-store", action="store_true", help="do not store the run")
    p.add_argument("--json", action="store_true")


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
