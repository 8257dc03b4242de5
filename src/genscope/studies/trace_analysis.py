"""``genscope analyze FILE``: the operator-class breakdown of a saved trace - genscope's own or anyone's.

Reads a Chrome/Perfetto trace written by ``torch.profiler`` (``export_chrome_trace``; ``.json`` or
``.json.gz``) and attributes it with the one attribution the profiler uses
(:func:`genscope.instrument.attribution.attribute`). A trace with GPU kernels is broken down by GPU busy time
per class, with GPU idle (span minus busy: the GPU waiting on the host) as its own row, and CPU self time in a
separate table; a CPU-only trace by CPU self time. A user's own trace without genscope's ranges (no phases, no
modules, no attention calls) is classed by op and kernel name alone: attention then means the fused attention
ops/kernels (SDPA), since there is no attention-call range to charge QK^T/softmax/@V to.

Tables: ``summary`` (one row: device kind and name, span, busy, idle, Other's share, event counts),
``class_total`` (op_class, time_ms, share_pct of the span), ``class_time`` (per phase), ``cpu_class_time``,
``kernels`` and ``modules`` (the ``top`` largest), ``other_ops``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genscope.errors import UserError
from genscope.instrument.attribution import IDLE, attribute
from genscope.instrument.traces import events_from_chrome, read_trace_file

STUDY = "analyze"


@dataclass(frozen=True)
class Settings:
    path: str
    top: int = 15  # rows of the kernels / modules tables

    def __post_init__(self) -> None:
        if not isinstance(self.top, int) or isinstance(self.top, bool) or self.top < 1:
            raise UserError(f"--top must be a positive integer, got {self.top!r}")
        if not str(self.path).strip():
            raise UserError("no trace file given")

    @property
    def workload(self) -> str:
        """The name a run is stored under: the file name without .json / .json.gz."""
        name = Path(self.path).name
        for suffix in (".gz", ".json"):
            name = name.removesuffix(suffix)
        return name or "trace"


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    trace = read_trace_file(settings.path)
    events = events_from_chrome(trace)
    if events.empty:
        raise UserError(f"trace {settings.path!r} holds no CPU op, kernel or range events")
    result = attribute(events)
    totals = result.by_class()
    busy = float(totals.loc[totals["op_class"] != IDLE, "time_ms"].sum())
    other = float(totals.loc[totals["op_class"] == "Other", "time_ms"].sum())
    devices = trace.get("deviceProperties") if isinstance(trace, dict) else None
    device_name = (devices[0].get("name", "") if isinstance(devices, list) and devices and isinstance(devices[0], dict)
                   else "")
    summary = pd.DataFrame([{
        "device_kind": result.device_kind,
        "device_name": str(device_name) if result.device_kind == "gpu" else "cpu",
        "span_ms": result.span_ms,
        "busy_ms": result.busy_ms,
        "idle_ms": result.idle_ms,
        "idle_pct": 100.0 * result.idle_ms / result.span_ms if result.span_ms else 0.0,
        "other_pct_of_busy": 100.0 * other / busy if busy else 0.0,
        "has_genscope_ranges": bool(events["name"].str.startswith(("phase::", "module::")).any()),
        **{k: int(v) for k, v in result.counts.items()},
    }])
    return {
        "summary": summary,
        "class_total": totals,
        "class_time": result.class_time,
        "cpu_class_time": result.cpu_class_time,
        "kernels": result.kernels.head(settings.top),
        "modules": (result.module_time.groupby("module", as_index=False)["time_ms"].sum()
                    .sort_values("time_ms", ascending=False, ignore_index=True).head(settings.top)),
        "other_ops": result.other_ops.head(settings.top),
    }
