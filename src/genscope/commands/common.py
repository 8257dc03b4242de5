"""The one helper module of the commands: store options, storing a study's tables, printing them.

Every command is thin - parse its arguments, build the study's ``Settings``, call the study's ``run``, store
the tables, print them - and the three shared steps live here, once:

* :func:`add_store_args` / :func:`open_store`: ``--db PATH`` (default ``$GENSCOPE_DB``, else
  ``~/.genscope/results.db``; see :mod:`genscope.results.store`), ``--no-store`` and ``--json``;
* :func:`store_tables`: one run record, written in one transaction;
* :func:`emit`: the tables as text (tabulate) or, with ``--json``, one JSON object on stdout.

Plus the small formatting and validation helpers more than one command uses (``fmt_flops``, ``fmt_bytes``,
``check_positive``, ``workload_names``, ``run_settings``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from genscope.errors import UserError

if TYPE_CHECKING:  # the store module is imported when a store is opened
    from genscope.results.store import ResultsStore

DB_HELP = "results database (default $GENSCOPE_DB, else ~/.genscope/results.db)"


# ---------------------------------------------------------------------------------------------------------
# storing
# ---------------------------------------------------------------------------------------------------------
def add_store_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--db PATH``, ``--no-store`` and (unless ``json_flag=False``) ``--json``."""
    parser.add_argument("--db", help=DB_HELP)
    parser.add_argument("--no-store", action="store_true", help="do not store the run")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the tables as one JSON object")


def open_store(args: argparse.Namespace, *, readonly: bool = False) -> ResultsStore | None:
    """The results store named by ``--db`` (else ``$GENSCOPE_DB``, else the default), or None with --no-store.
    ``readonly``: for commands that only read (the file must exist; nothing is created)."""
    if getattr(args, "no_store", False):
        return None
    from genscope.results.store import ResultsStore

    return ResultsStore(getattr(args, "db", None), readonly=readonly)


def preflight(args: argparse.Namespace) -> None:
    """Before any command computes: an existing ``--db`` must be a genscope database (checked read-only), a new
    one must be creatable, and ``--out`` must be a writable folder or creatable - not minutes later."""
    from genscope.results.store import ResultsStore, resolve_path
    from genscope.validate import check_output_dir, check_output_file

    if "db" in vars(args) and not getattr(args, "no_store", False):
        path = resolve_path(args.db)
        if path.exists():
            ResultsStore(path, readonly=True)
        else:
            check_output_file("--db", path)
    if isinstance(getattr(args, "out", None), str):
        check_output_dir("--out", args.out)


def store_tables(store: ResultsStore | None, *, study: str, workload: str, preset: str, settings: Mapping[str, Any],
                 device: str, dtype: str, tables: Mapping[str, pd.DataFrame], key: str = "") -> int | None:
    """Store one run (all its tables, one transaction); its id, or None when ``store`` is None."""
    if store is None:
        return None
    from genscope.results.store import RunRecord

    return store.save_run(RunRecord(study=study, workload=workload, preset=preset, settings=dict(settings),
                                    device=str(device), dtype=str(dtype), tables=dict(tables), key=key))


# ---------------------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def records(df: pd.DataFrame) -> list[dict]:
    """A table as JSON-ready rows: NaN and infinities -> None (valid JSON), numpy scalars -> numbers."""
    return json.loads(df.to_json(orient="records", double_precision=15))


def print_json(payload: Mapping[str, Any]) -> None:
    print(json.dumps(payload, indent=2, default=_json_default))


def tabulate_frame(df: pd.DataFrame, floatfmt: str = ",.3f") -> str:
    from tabulate import tabulate

    return tabulate(df, headers="keys", showindex=False, floatfmt=floatfmt, intfmt=",")


def emit(args: argparse.Namespace, tables: Mapping[str, pd.DataFrame], *, title: str = "", run_id: int | None = None,
         extra: Mapping[str, Any] | None = None, floatfmt: str = ",.3f") -> None:
    """Print ``tables``: with ``--json`` one object ``{"run_id", **extra, name: rows}``; else ``title``, each
    table under its name, and the run id it was stored as."""
    if getattr(args, "json", False):
        print_json({"run_id": run_id, **(extra or {}), **{name: records(df) for name, df in tables.items()}})
        return
    if title:
        print(title)
    from genscope.instrument.measure import unstable_marks

    for name, df in tables.items():
        print(f"\n{name}:")
        marks = unstable_marks(df)  # rows whose median is not known to within its bound: UNSTABLE
        print(tabulate_frame(df if marks is None or not marks.any() else df.assign(validity=marks),
                             floatfmt=floatfmt))
    if run_id is not None:
        print(f"\nstored as run {run_id}")


def stored_note(run_id: int | None) -> str:
    return f"stored as run {run_id}" if run_id is not None else ""


def fmt_flops(x: float | None) -> str:
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


# ---------------------------------------------------------------------------------------------------------
# validation shared by several commands
# ---------------------------------------------------------------------------------------------------------
def check_positive(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise UserError(f"{what} must be a positive integer, got {value}")


def workload_names(names: list[str] | None) -> list[str]:
    """The named workloads (checked, duplicates dropped) or, when none are named, the whole suite."""
    from genscope.workloads import registry

    if not names:
        return registry.available()
    for name in names:
        registry.get(name)  # unknown name -> UserError listing the known ones
    return list(dict.fromkeys(names))


def int_list(text: str, what: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8] (positive integers), else a UserError naming ``what``."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{what} must be positive integers, got {text!r}")
    return values
