"""CLI over the results store: ``runs list|show|compare`` and ``report``."""

from __future__ import annotations

import argparse
import json

from genscope.cli import command
from genscope.commands.common import DB_HELP, open_store, records, tabulate_frame


def _print_frame(df, floatfmt: str = ",.4g") -> None:
    print(tabulate_frame(df, floatfmt=floatfmt))


def _runs_list(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    runs = store.list_runs(study=args.study, workload=args.workload)
    if args.json:
        print(json.dumps(records(runs), indent=2))
        return 0
    if runs.empty:
        what = f" of study {args.study!r}" if args.study else ""
        print(f"no runs{what} stored in {store.path}")
        return 0
    shown = runs.assign(git_commit=runs["git_commit"].str.slice(0, 10), key=runs["key"].str.slice(0, 12),
                        validity=runs["stable"].map(lambda s: "UNSTABLE" if s is False else ""))
    _print_frame(shown[["id", "study", "workload", "preset", "device", "dtype", "created_at", "git_commit",
                        "status", "tables", "validity"]])
    return 0


def _runs_show(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    record = store.load_run(args.id)
    header = {"id": record.id, "study": record.study, "workload": record.workload, "preset": record.preset,
              "device": record.device, "dtype": record.dtype, "created_at": record.created_at,
              "git_commit": record.git_commit, "key": record.key, "status": record.status,
              "settings": record.settings, "environment": record.environment}
    if args.json:
        print(json.dumps({**header, "tables": {name: records(df) for name, df in record.tables.items()}},
                         indent=2))
        return 0
    for name, value in header.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{name:>12}: {value}")
    for name, df in record.tables.items():
        print(f"\n== {name} ({len(df)} rows)")
        _print_frame(df)
    return 0


def _runs_compare(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    id_a, id_b = args.ids
    tables = store.compare(id_a, id_b)
    if args.json:
        print(json.dumps({"a": id_a, "b": id_b, "tables": {n: records(df) for n, df in tables.items()}},
                         indent=2))
        return 0
    if not tables:
        print(f"runs {id_a} and {id_b} share no table with numeric columns")
        return 0
    for name, df in tables.items():
        print(f"\n== {name}: run {id_a} (a) vs run {id_b} (b), ratio = b / a")
        _print_frame(df)
    return 0


_RUNS = {"list": _runs_list, "show": _runs_show, "compare": _runs_compare}


@command("runs")
def cmd_runs(args: argparse.Namespace) -> int:
    return _RUNS[args.runs_command](args)


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from genscope.report.html import build_report

    path = build_report(open_store(args, readonly=True), args.out)
    print(path)
    return 0


def _db_arg(p) -> None:
    p.add_argument("--db", metavar="PATH",
                   help=DB_HELP)


def add_parsers(sub) -> None:
    p = sub.add_parser("runs", help="stored runs: list, show, compare")
    runs = p.add_subparsers(dest="runs_command", required=True, metavar="{list,show,compare}")

    q = runs.add_parser("list", help="one line per stored run")
    q.add_argument("--study")
    q.add_argument("--workload")
    _db_arg(q)
    q.add_argument("--json", action="store_true")

    q = runs.add_parser("show", help="one run: settings, environment and its tables")
    q.add_argument("id", type=int)
    _db_arg(q)
    q.add_argument("--json", action="store_true")

    q = runs.add_parser("compare", help="two runs' common tables side by side, with ratio b / a")
    q.add_argument("ids", type=int, nargs=2, metavar="ID")
    _db_arg(q)
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="write one self-contained HTML page from the stored runs")
    p.add_argument("--out", default="genscope-report", help="output folder (default genscope-report)")
    _db_arg(p)
