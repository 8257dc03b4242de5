"""What a run record holds, apart from the database: the record itself, its resume key, the environment it
ran in, the validity of its timed comparisons, and the lossless DataFrame <-> JSON encoding of its tables.

Why by hand: the standard library's ``json`` is the format; the encoding keeps dtypes, NaN and the index,
which ``DataFrame.to_json`` does not round-trip for every column type studies produce.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

STATUS_COMPLETE = "complete"


@dataclass
class RunRecord:
    """One run: what was asked (study, workload, preset, settings, device, dtype) and its result tables.

    ``key`` is the resume key (empty: derived from the other fields by :func:`run_key`); ``environment``
    and ``git_commit`` are filled in from this process when left ``None``; ``id`` and ``created_at`` are
    set by :meth:`ResultsStore.save_run`.
    """

    study: str
    workload: str
    preset: str
    settings: dict[str, Any]
    device: str
    dtype: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    key: str = ""
    environment: dict[str, Any] | None = None
    git_commit: str | None = None
    id: int | None = None
    created_at: str | None = None
    status: str = STATUS_COMPLETE


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars, timestamps, paths, dtypes, tuples."""
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_jsonable, sort_keys=True)


def run_key(study: str, workload: str, preset: str, settings: Mapping[str, Any], device: str, dtype: str) -> str:
    """Stable resume key: SHA-256 of the canonical JSON of what defines a run (not of when or where)."""
    canonical = _dumps({"study": study, "workload": workload, "preset": preset, "settings": dict(settings),
                        "device": str(device), "dtype": str(dtype)})
    return hashlib.sha256(canonical.encode()).hexdigest()


def environment() -> dict[str, str]:
    """Versions and machine of this process (package metadata only: nothing heavy is imported)."""

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    import genscope

    return {"genscope": genscope.__version__, "torch": version("torch"), "diffusers": version("diffusers"),
            "transformers": version("transformers"), "pandas": version("pandas"),
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "hostname": platform.node()}


@functools.cache
def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository genscope is imported from, else ``"unknown"``."""
    package_dir = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) >= 7 else "unknown"


# ---------------------------------------------------------------------------------------------------------
# DataFrame <-> JSON (lossless for the column types studies produce: numbers, strings, bools, None/NaN)


def frame_to_json(df: pd.DataFrame) -> str:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"a stored table must be a pandas DataFrame, got {type(df).__name__}")
    if isinstance(df.columns, pd.MultiIndex) or isinstance(df.index, pd.MultiIndex):
        raise TypeError("stored tables need flat columns and a flat index (call reset_index() first)")
    split = df.to_dict(orient="split")
    default_index = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1 \
        and df.index.name is None
    payload = {
        "columns": split["columns"],
        "dtypes": [str(t) for t in df.dtypes],
        "index": None if default_index else split["index"],
        "index_dtype": None if default_index else str(df.index.dtype),
        "index_name": df.index.name,
        "data": split["data"],
    }
    return json.dumps(payload, default=_jsonable, allow_nan=True)


def _restore_dtype(series: pd.Series, dtype: str) -> pd.Series:
    if str(series.dtype) == dtype:
        return series
    try:
        return series.astype(dtype)
    except (TypeError, ValueError):
        return series


def frame_from_json(text: str) -> pd.DataFrame:
    payload = json.loads(text)
    columns = payload["columns"]
    if columns:
        df = pd.DataFrame(payload["data"], columns=columns)
    else:
        df = pd.DataFrame(index=range(len(payload["data"])))
    for i, dtype in enumerate(payload["dtypes"]):
        df.isetitem(i, _restore_dtype(df.iloc[:, i], dtype))
    if payload["index"] is not None:
        index = pd.Index(payload["index"], name=payload["index_name"])
        if payload.get("index_dtype"):
            with contextlib.suppress(TypeError, ValueError):
                index = index.astype(payload["index_dtype"])
        df.index = index
    return df


def measurement_validity(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any] | None:
    """What a run's timed comparisons say about themselves, stored in its environment as ``measurement``:
    ``stable`` (every row of every table with a ``stable`` column is stable), ``busy`` (any ``busy`` flag) and
    ``load_avg_1m`` (the highest); None when no table carries a ``stable`` column. Old runs lack the key."""
    stable, busy, load = [], [], []
    for df in tables.values():
        if not isinstance(df, pd.DataFrame):
            continue
        if "stable" in df.columns:
            stable += [bool(v) for v in df["stable"] if not pd.isna(v)]
        if "busy" in df.columns:
            busy += [bool(v) for v in df["busy"] if not pd.isna(v)]
        if "load_avg_1m" in df.columns:
            load += [float(v) for v in df["load_avg_1m"] if not pd.isna(v)]
    if not stable:
        return None
    return {"stable": all(stable), "busy": any(busy), "load_avg_1m": max(load) if load else None}
