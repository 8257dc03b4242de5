"""The one attribution: events table -> time per phase, operator class and module, on CPU or GPU.

Input: the events table of :mod:`genscope.instrument.traces` (from a live profile or a saved trace file).

1. **Context** (one pass over each CPU thread's events in start order, a stack of open events): every CPU op,
   range and runtime call learns its innermost phase (``phase::<name>#i``), whether it runs inside an attention
   entry-point call (``genscope::attention::...``), the innermost class range a pass opened
   (``genscope::convolution::winograd``), the innermost module range (``module::<path>::<Class>``) and its
   *top-level op* (the outermost ``aten::`` op below the innermost range). Its self time is its duration minus
   its children's. This pass is the one loop over events (plain lists, linear time); everything after it is
   pandas joins and numpy interval arithmetic.
2. **Class** of a CPU event: Attention inside an attention call; else the class range; else the class of the
   innermost module when it is a leaf class with a fixed meaning (:data:`MODULE_CLASSES`: an RMSNorm written as
   pow/mean/rsqrt ops is LayerNorm); else the class of the top-level op. A range's own time (Python between ops)
   is Other as ``python/framework``, unless it is an attention call or a class range.
3. **GPU**: each kernel, memcpy and memset is linked to the CPU op that launched it by its External id (the
   launching op's id, as Holistic Trace Analysis and the profiler's own tables link them; the CUDA correlation id
   through the runtime call is the fallback) and takes that op's phase, module and class; a kernel whose op
   gives no class (none, or Other: cuBLAS/cuDNN internals) is classed by its name (:data:`KERNEL_PATTERNS`).
   GPU time is *busy time*: where kernels of several streams overlap, each elementary interval is shared
   equally among the kernels running in it, so the classes sum to the union of kernel intervals, and
   ``Idle`` (the span minus busy time: the GPU waiting on the host) is its own class, split by the CPU phase
   the host was in. Classes + Idle = the traced span.
The span: the ``genscope::run`` range(s) when present, else first to last event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genscope.instrument.intervals import busy_share_us, overlap_us, union
from genscope.instrument.opclasses import (
    ATTENTION_RANGE,
    MODULE_CLASSES,
    OP_CLASSES,
    kernel_class,
    op_class,
)

NO_PHASE = "(outside phases)"
FRAMEWORK = "python/framework"
RUN_RANGE = "genscope::run"
IDLE = "Idle"  # GPU idle: span minus kernel busy time (host-bound)
CLASS_RANGES = {cls.lower(): cls for cls in OP_CLASSES if cls != "Attention"}


@dataclass
class Attribution:
    """Time of one traced run, attributed. ``class_time`` is GPU busy time (+ Idle rows) when the trace has GPU
    events, CPU self time otherwise; ``cpu_class_time`` is always CPU self time (never mixed with GPU time)."""

    device_kind: str  # "gpu" | "cpu"
    class_time: pd.DataFrame  # phase, op_class, time_ms
    cpu_class_time: pd.DataFrame  # phase, op_class, time_ms
    module_time: pd.DataFrame  # module, op_class, time_ms
    other_ops: pd.DataFrame  # op, time_ms (what landed in Other)
    kernels: pd.DataFrame  # kernel, op_class, calls, time_ms (GPU only; empty on CPU)
    attention_time: pd.DataFrame  # phase, attention_kind, time_ms (the Attention class split by call kind)
    span_ms: float
    busy_ms: float  # GPU busy (union of kernel intervals) or CPU self-time total
    idle_ms: float = 0.0
    counts: dict = field(default_factory=dict)

    def by_class(self) -> pd.DataFrame:
        """op_class, time_ms, share_pct (of the span on GPU, of the total on CPU): every class, zeros included."""
        classes = list(OP_CLASSES) + ([IDLE] if self.device_kind == "gpu" else [])
        totals = self.class_time.groupby("op_class")["time_ms"].sum()
        df = pd.DataFrame({"op_class": classes, "time_ms": [float(totals.get(c, 0.0)) for c in classes]})
        whole = df["time_ms"].sum()
        df["share_pct"] = 100.0 * df["time_ms"] / whole if whole > 0 else 0.0
        return df


def _phase_of(label: str) -> str:
    return label.split("::", 1)[1].split("#", 1)[0]


def cpu_context(cpu: pd.DataFrame) -> pd.DataFrame:
    """Add phase, attention, range_class, module, top_op, self_us to the CPU/runtime rows (sorted by thread,
    start, longest first - as :func:`genscope.instrument.traces.events_from_chrome` returns them)."""
    n = len(cpu)
    names = cpu["name"].tolist()
    cats = cpu["cat"].tolist()
    threads = cpu["thread"].tolist()
    starts = cpu["start_us"].to_numpy()
    ends = starts + cpu["dur_us"].to_numpy()
    self_us = cpu["dur_us"].to_numpy().copy()
    phase = [NO_PHASE] * n
    attention: list[str | None] = [None] * n  # the innermost attention call's kind (self, cross, temporal...)
    range_class: list[str | None] = [None] * n
    module: list[str | None] = [None] * n
    top_op: list[str | None] = [None] * n
    is_op = [c == "cpu_op" for c in cats]
    stack: list[int] = []
    thread = None
    for i in range(n):
        if threads[i] != thread:
            thread, stack = threads[i], []
        start = starts[i]
        while stack and ends[stack[-1]] <= start:
            stack.pop()
        name = names[i]
        if stack:
            p = stack[-1]
            self_us[p] -= ends[i] - start if ends[i] <= ends[p] else ends[p] - start
            phase[i], attention[i], range_class[i], module[i] = phase[p], attention[p], range_class[p], module[p]
            parent_top = top_op[p] if (is_op[p] or cats[p] in ("cuda_runtime", "cuda_driver")) else None
        else:
            parent_top = None
        if is_op[i]:
            top_op[i] = parent_top if parent_top is not None and is_op[stack[-1]] else name
        elif cats[i] in ("cuda_runtime", "cuda_driver"):
            top_op[i] = parent_top
        else:  # a range
            if name.startswith("phase::"):
                phase[i] = _phase_of(name)
            elif name.startswith(ATTENTION_RANGE):
                parts = name.split("::")
                attention[i] = parts[2] if len(parts) > 2 else "attention"
            elif name.startswith("module::"):
                module[i] = name[len("module::"):]
            elif name.startswith("genscope::"):
                cls = CLASS_RANGES.get(name.split("::")[1])
                if cls is not None:
                    range_class[i] = cls
        stack.append(i)
    out = cpu.copy()
    out["phase"], out["attention_kind"], out["range_class"] = phase, attention, range_class
    out["module"], out["top_op"], out["self_us"] = module, top_op, np.maximum(self_us, 0.0)
    return out


def _module_class(module: pd.Series) -> pd.Series:
    leaf = module.str.rsplit("::", n=1).str[-1]
    return leaf.map(MODULE_CLASSES)


def classify(ctx: pd.DataFrame) -> pd.DataFrame:
    """op_class and the name reported for Other (``other_name``) of every context row."""
    top_class = ctx["top_op"].map(lambda n: op_class(n) if isinstance(n, str) else None)
    own_class = ctx["name"].map(op_class)
    module_class = _module_class(ctx["module"].fillna(""))
    is_range = ctx["cat"] == "user_annotation"
    cls = np.where(ctx["attention_kind"].notna(), "Attention",
                   np.where(ctx["range_class"].notna(), ctx["range_class"],
                            np.where(is_range, "Other",
                                     np.where(module_class.notna(), module_class,
                                              np.where(top_class.notna(), top_class, own_class)))))
    out = ctx.copy()
    out["op_class"] = cls
    out["other_name"] = np.where(ctx["top_op"].notna(), ctx["top_op"], np.where(is_range, FRAMEWORK, ctx["name"]))
    return out


def _span(events: pd.DataFrame) -> tuple[float, float]:
    roots = events[(events["cat"] == "user_annotation") & (events["name"] == RUN_RANGE)]
    frame = roots if len(roots) else events
    return float(frame["start_us"].min()), float((frame["start_us"] + frame["dur_us"]).max())


def _sum_by(df: pd.DataFrame, keys: list[str], value: str = "time_ms") -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=[*keys, value])
    return df.groupby(keys, as_index=False, sort=False)[value].sum()


def _gpu_rows(events: pd.DataFrame, ctx: pd.DataFrame, window: tuple[float, float]) -> pd.DataFrame:
    gpu = events[events["kind"] == "gpu"].copy()
    lo, hi = window
    gpu["s"] = gpu["start_us"].clip(lo, hi)
    gpu["e"] = (gpu["start_us"] + gpu["dur_us"]).clip(lo, hi)
    gpu = gpu[gpu["e"] > gpu["s"]]
    gpu["busy_us"] = busy_share_us(gpu["s"].to_numpy(), gpu["e"].to_numpy())
    cols = ["phase", "module", "attention_kind", "op_class", "other_name"]
    by_ext = ctx[(ctx["cat"] == "cpu_op") | (ctx["cat"] == "user_annotation")].drop_duplicates("ext_id")
    by_ext = by_ext[by_ext["ext_id"] >= 0].set_index("ext_id")[cols]
    linked = gpu.join(by_ext, on="ext_id")
    # fallback: the runtime call with the same correlation id, and its context
    runtime = ctx[ctx["kind"] == "runtime"]
    runtime = runtime[runtime["correlation"] >= 0].drop_duplicates("correlation").set_index("correlation")[cols]
    missing = linked["op_class"].isna()
    if missing.any() and len(runtime):
        fill = gpu.loc[missing, ["correlation"]].join(runtime, on="correlation")
        linked.loc[missing, cols] = fill[cols].to_numpy()
    by_name = linked["name"].map(kernel_class)
    by_name = by_name.where(linked["cat"] == "kernel", "Memory")
    unresolved = linked["op_class"].isna() | (linked["op_class"] == "Other")
    linked["op_class"] = linked["op_class"].where(~unresolved, by_name)
    linked["phase"] = linked["phase"].fillna(NO_PHASE)
    linked["linked"] = ~missing | linked["module"].notna()
    return linked


def attribute(events: pd.DataFrame) -> Attribution:
    """Attribute a trace's events (see the module docstring)."""
    lo, hi = _span(events)
    host = events[events["kind"] != "gpu"]
    host = host[(host["start_us"] >= lo) & (host["start_us"] < hi)]
    ctx = classify(cpu_context(host))
    ctx["time_ms"] = ctx["self_us"] / 1e3
    cpu_class_time = _sum_by(ctx, ["phase", "op_class"])
    has_gpu = bool((events["kind"] == "gpu").any())
    counts = {"events": len(events), "cpu_events": len(host)}
    if not has_gpu:
        other = ctx[ctx["op_class"] == "Other"].rename(columns={"other_name": "op"})
        return Attribution("cpu", cpu_class_time, cpu_class_time,
                           _sum_by(ctx.assign(module=ctx["module"].fillna("(no module)")), ["module", "op_class"]),
                           _sorted(_sum_by(other, ["op"])), pd.DataFrame(columns=["kernel", "op_class", "calls", "time_ms"]),
                           _attention_time(ctx), span_ms=(hi - lo) / 1e3, busy_ms=float(ctx["time_ms"].sum()),
                           counts=counts)
    gpu = _gpu_rows(events, ctx, (lo, hi))
    gpu["time_ms"] = gpu["busy_us"] / 1e3
    busy_s, busy_e = union(gpu["s"].to_numpy(), gpu["e"].to_numpy())
    busy_ms = float((busy_e - busy_s).sum() / 1e3)
    span_ms = (hi - lo) / 1e3
    idle_rows = _idle_by_phase(ctx, busy_s, busy_e, span_ms - busy_ms)
    class_time = pd.concat([_sum_by(gpu, ["phase", "op_class"]), idle_rows], ignore_index=True)
    other = gpu[gpu["op_class"] == "Other"].rename(columns={"name": "op"})
    kernels = (gpu.groupby(["name", "op_class"], as_index=False)
               .agg(calls=("time_ms", "size"), time_ms=("time_ms", "sum"))
               .rename(columns={"name": "kernel"}))
    counts.update(gpu_events=len(gpu), gpu_linked=int(gpu["linked"].sum()))
    return Attribution("gpu", class_time, cpu_class_time,
                       _sum_by(gpu.assign(module=gpu["module"].fillna("(no module)")), ["module", "op_class"]),
                       _sorted(_sum_by(other, ["op"])), _sorted(kernels), _attention_time(gpu), span_ms=span_ms,
                       busy_ms=busy_ms, idle_ms=span_ms - busy_ms, counts=counts)


def _attention_time(rows: pd.DataFrame) -> pd.DataFrame:
    inside = rows[rows["attention_kind"].notna()]
    return _sum_by(inside, ["phase", "attention_kind"])


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("time_ms", ascending=False, ignore_index=True) if len(df) else df


def _idle_by_phase(ctx: pd.DataFrame, busy_s: np.ndarray, busy_e: np.ndarray, idle_ms: float) -> pd.DataFrame:
    """GPU idle time split by the phase the host was in: phase ranges x (span minus busy)."""
    phases = ctx[(ctx["cat"] == "user_annotation") & ctx["name"].str.startswith("phase::")]
    s = phases["start_us"].to_numpy()
    e = s + phases["dur_us"].to_numpy()
    idle_in = (e - s) - overlap_us(s, e, busy_s, busy_e)
    rows = pd.DataFrame({"phase": phases["phase"].to_numpy(), "op_class": IDLE, "time_ms": idle_in / 1e3})
    rows = _sum_by(rows, ["phase", "op_class"])
    outside = idle_ms - float(rows["time_ms"].sum()) if len(rows) else idle_ms
    if outside > 1e-9 or rows.empty:
        rows = pd.concat([rows, pd.DataFrame([{"phase": NO_PHASE, "op_class": IDLE, "time_ms": max(outside, 0.0)}])],
                         ignore_index=True)
    return rows
