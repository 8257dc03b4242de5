"""``genscope analyze FILE``: break down a saved torch.profiler trace (see :mod:`genscope.studies.trace_analysis`)."""

from __future__ import annotations

import argparse

from genscope.cli import command
from genscope.commands.common import add_store_args, emit, open_store, store_tables
from genscope.studies import trace_analysis


@command("analyze")
def cmd_analyze(args: argparse.Namespace) -> int:
    settings = trace_analysis.Settings(path=args.trace, top=args.top)
    store = open_store(args)  # checked before the work: a bad --db fails first
    tables = trace_analysis.run(settings)
    s = tables["summary"].iloc[0]
    run_id = store_tables(store, study=trace_analysis.STUDY, workload=settings.workload, preset="-",
                          settings={"path": str(args.trace), "top": args.top}, device=str(s.device_kind),
                          dtype="-", tables=tables)
    if s.device_kind == "gpu":
        title = (f"{settings.workload}: {s.device_name or 'GPU'}, span {s.span_ms:.1f} ms, GPU busy {s.busy_ms:.1f} ms, "
                 f"GPU idle {s.idle_ms:.1f} ms ({s.idle_pct:.1f}% of the span: the GPU waits on the host); "
                 f"Other {s.other_pct_of_busy:.1f}% of busy time")
        shown = ["class_total", "class_time", "kernels", "other_ops", "cpu_class_time"]
    else:
        title = f"{settings.workload}: CPU trace, {s.busy_ms:.1f} ms of self time in a {s.span_ms:.1f} ms span"
        shown = ["class_total", "class_time", "modules", "other_ops"]
    if not s.has_genscope_ranges:
        title += "\n(no genscope ranges: classes from op and kernel names alone; no phases or attention calls)"
    if args.json:
        emit(args, tables, run_id=run_id)
        return 0
    shown_tables = {k: tables[k] for k in shown}
    for name, column in (("kernels", "kernel"), ("other_ops", "op")):
        if name in shown_tables and len(shown_tables[name]):  # C++ template names run to hundreds of characters
            shown_tables[name] = shown_tables[name].assign(**{column: shown_tables[name][column].str.slice(0, 90)})
    emit(args, shown_tables, title=title, run_id=run_id, floatfmt=",.2f")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("analyze", help="operator-class breakdown of a saved torch.profiler trace (.json/.json.gz)")
    p.add_argument("trace", help="Chrome trace from torch.profiler (export_chrome_trace), gzip or not")
    p.add_argument("--top", type=int, default=15, help="rows of the kernel/module tables (default 15)")
    add_store_args(p)
