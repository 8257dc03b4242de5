"""Profiler events, parsed once into one table - from a live ``torch.profiler`` session or a saved trace file.

Every analysis of a trace (the profiler's breakdown, ``genscope analyze FILE``, the temporal split) starts
from the same :class:`pandas.DataFrame`, one row per complete event, with these columns:

======================  =====================================================================================
``kind``                ``cpu`` (ATen ops and ``record_function`` ranges), ``runtime`` (CUDA runtime/driver
                        calls), ``gpu`` (kernels, memcpy, memset)
``cat``                 the profiler's category: ``cpu_op``, ``user_annotation``, ``cuda_runtime``, ``kernel``...
``name``                op, range, runtime call or kernel name
``thread``              the CPU thread (``pid:tid``) or GPU stream (``gpu<device>:<stream>``) it ran on
``start_us``/``dur_us`` start relative to the first event, and duration, in microseconds
``ext_id``              the CPU op's "External id"; on a kernel, the id of the op that launched it
``correlation``         the CUDA correlation id linking a runtime call to the kernel it launched
``bytes``               bytes moved (memcpy/memset), else 0
======================  =====================================================================================

Why hand-written: ``torch.profiler`` hands back event objects whose derived properties (``self_device_time_total``)
recurse through the whole tree on every access - 6.6 s of a 5-step GPU profile's analysis was spent there - and
Holistic Trace Analysis reads only GPU kernels of saved files. Here both sources (the live session's kineto
events and a Chrome trace file, gzip or not) become the same table in one pass.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd

from genscope.errors import UserError

COLUMNS = ("kind", "cat", "name", "thread", "start_us", "dur_us", "ext_id", "correlation", "bytes")
CPU_CATS = frozenset({"cpu_op", "user_annotation"})
RUNTIME_CATS = frozenset({"cuda_runtime", "cuda_driver"})
GPU_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
# a trace of more events than this is refused rather than read into memory (about 20 GB of JSON)
MAX_EVENTS = 50_000_000


def _kind(cat: str) -> str | None:
    if cat in CPU_CATS:
        return "cpu"
    if cat in RUNTIME_CATS:
        return "runtime"
    if cat in GPU_CATS:
        return "gpu"
    return None


def _frame(rows: dict[str, list]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(df):
        df["start_us"] -= df["start_us"].min()
    df = df.astype({"start_us": "float64", "dur_us": "float64", "ext_id": "int64", "correlation": "int64",
                    "bytes": "int64"})
    return df.sort_values(["thread", "start_us", "dur_us"], ascending=[True, True, False], ignore_index=True,
                          kind="stable")


def _empty_rows() -> dict[str, list]:
    return {c: [] for c in COLUMNS}


def events_from_chrome(trace: dict[str, Any]) -> pd.DataFrame:
    """The events table of a Chrome trace (``torch.profiler``'s ``export_chrome_trace`` format)."""
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise UserError("not a Chrome trace: no 'traceEvents' list")
    if len(events) > MAX_EVENTS:
        raise UserError(f"trace has {len(events):,} events; at most {MAX_EVENTS:,} are read")
    rows = _empty_rows()
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = e.get("cat")
        kind = _kind(cat) if isinstance(cat, str) else None
        if kind is None:
            continue
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        try:
            start, dur = float(e["ts"]), float(e.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            continue
        if kind == "gpu":
            thread = f"gpu{args.get('device', 0)}:{args.get('stream', 0)}"
        else:
            thread = f"{e.get('pid')}:{e.get('tid')}"
        rows["kind"].append(kind)
        rows["cat"].append(cat)
        rows["name"].append(str(e.get("name", "")))
        rows["thread"].append(thread)
        rows["start_us"].append(start)
        rows["dur_us"].append(max(dur, 0.0))
        rows["ext_id"].append(_int(args.get("External id")))
        rows["correlation"].append(_int(args.get("correlation")))
        rows["bytes"].append(_int(args.get("bytes"), 0))
    return _frame(rows)


def _int(value: Any, missing: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return missing


def events_from_profiler(prof) -> pd.DataFrame:
    """The events table of a finished ``torch.profiler.profile`` session, read from its kineto events.

    Kineto's ids: a CPU op's ``correlation_id`` is its External id; a kernel's ``linked_correlation_id`` is the
    External id of the op that launched it and its ``correlation_id`` the CUDA correlation id (as in the Chrome
    export, where the same values appear as ``args["External id"]`` and ``args["correlation"]``)."""
    events = prof.profiler.kineto_results.events()
    if events and not hasattr(events[0], "activity_type"):  # torch < 2.12 binds no activity type: its export
        return _events_via_chrome_export(prof)
    rows = _empty_rows()
    for e in events:
        cat = e.activity_type()
        kind = _kind(cat)
        if kind is None:
            continue
        if kind == "gpu":
            thread, ext_id = f"gpu{e.device_index()}:{e.device_resource_id()}", e.linked_correlation_id()
            correlation = e.correlation_id()
        elif kind == "runtime":
            thread, ext_id, correlation = f"0:{e.start_thread_id()}", e.linked_correlation_id(), e.correlation_id()
        else:
            thread, ext_id, correlation = f"0:{e.start_thread_id()}", e.correlation_id(), -1
        rows["kind"].append(kind)
        rows["cat"].append(cat)
        rows["name"].append(e.name())
        rows["thread"].append(thread)
        rows["start_us"].append(e.start_ns() / 1e3)
        rows["dur_us"].append(max(e.duration_ns(), 0) / 1e3)
        rows["ext_id"].append(ext_id if ext_id > 0 else -1)
        rows["correlation"].append(correlation if correlation > 0 else -1)
        rows["bytes"].append(int(e.nbytes()) if kind == "gpu" and cat != "kernel" else 0)
    return _frame(rows)


def _events_via_chrome_export(prof) -> pd.DataFrame:
    """The same table through the profiler's Chrome export (slower: JSON written and read back)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genscope-trace-") as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return events_from_chrome(read_trace_file(path))


def read_trace_file(path: str | Path) -> dict[str, Any]:
    """Load a Chrome trace (``.json`` or ``.json.gz``); one clear error for anything that is not one."""
    path = Path(path).expanduser()
    try:
        if not path.is_file():
            raise UserError(f"trace file {str(path)!r} does not exist")
        with path.open("rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, EOFError, json.JSONDecodeError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read trace {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None


def load_events(path: str | Path) -> pd.DataFrame:
    return events_from_chrome(read_trace_file(path))
