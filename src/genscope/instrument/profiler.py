"""Where the time goes: operator-class breakdown per phase, in two modes.

``trace`` mode (the paper's method): ``torch.profiler`` records every op (and on CUDA every kernel); forward
hooks open a ``record_function`` range per module (``module::<path>::<Class>``), the workload opens a range per
phase (``phase::denoise#3``) and the attention entry point a range per call
(``genscope::attention::<kind>::<path>``). The events are read once into a table
(:mod:`genscope.instrument.traces`) and attributed by the one attribution (:mod:`genscope.instrument.attribution`):
on CPU each op's self time, on CUDA each kernel's busy time linked to the op that launched it, charged to a
phase and an operator class (Attention inside attention calls - the Q/K/V/out projections are outside the call
and count as Linear, as the paper's Figure 7 does: stated in every table). On CUDA, GPU idle time (the GPU
waiting on the host) is its own class, ``Idle``; classes + Idle = the traced span. What lands in Other is
listed by name.

``fast`` mode: no profiler. Timers (:mod:`genscope.instrument.fast_timers`) around the leaf modules whose class
fixes the operator class and around every attention call; the rest of each phase's wall time is Other. On CUDA
they record CUDA events on the stream, read once at the end. Near-zero overhead, for sweeps.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.instrument.attribution import (
    CLASS_RANGES,
    FRAMEWORK,
    IDLE,
    NO_PHASE,
    RUN_RANGE,
    Attribution,
    attribute,
)
from genscope.instrument.fast_timers import FastTimers
from genscope.instrument.opclasses import ATTENTION_RANGE, OP_CLASSES
from genscope.instrument.traces import events_from_profiler
from genscope.models.layers.attention import AttentionCall, register_wrapper
from genscope.models.runtime import synchronize
from genscope.workloads.phases import PhaseTimes, record_phases

MODES = ("trace", "fast")
__all__ = ["ATTENTION_NOTE", "CLASS_RANGES", "FRAMEWORK", "IDLE", "MODES", "NO_PHASE", "RUN_RANGE", "Profile",
           "export_trace", "module_ranges", "profile_callable", "profile_pipeline"]
ATTENTION_NOTE = ("Attention = time inside attention entry-point calls (QK^T, softmax, @V or the fused "
                  "kernel); the Q/K/V/output projections are counted as Linear.")


@dataclass
class Profile:
    """One profiled workload: class times per phase (averaged over the timed repetitions)."""

    mode: str
    device: str
    class_time: pd.DataFrame  # phase, op_class, time_ms
    phase_time: pd.DataFrame  # phase, calls, time_ms
    other_ops: pd.DataFrame  # op, time_ms (what fell in Other)
    total_ms: float  # measured total per repetition (mean)
    repeat_totals_ms: list[float] = field(default_factory=list)  # wall time of each timed repetition
    note: str = ATTENTION_NOTE
    # trace mode: the last repetition's full attribution (GPU: kernel busy time + Idle; CPU self time apart)
    attribution: Attribution | None = None

    @property
    def attention_ms(self) -> float:
        return float(self.class_time.loc[self.class_time.op_class == "Attention", "time_ms"].sum())

    def by_class(self) -> pd.DataFrame:
        """Total per operator class: op_class, time_ms, share_pct (all classes, zeros included)."""
        totals = self.class_time.groupby("op_class")["time_ms"].sum()
        classes = list(OP_CLASSES) + ([IDLE] if IDLE in totals.index else [])
        df = pd.DataFrame({"op_class": classes})
        df["time_ms"] = [float(totals.get(c, 0.0)) for c in classes]
        whole = df["time_ms"].sum()
        df["share_pct"] = 100.0 * df["time_ms"] / whole if whole > 0 else 0.0
        return df

    @property
    def spread_pct(self) -> float:
        """(max - min) / median of the repetitions' wall times, in percent."""
        if len(self.repeat_totals_ms) < 2:
            return 0.0
        med = statistics.median(self.repeat_totals_ms)
        return 100.0 * (max(self.repeat_totals_ms) - min(self.repeat_totals_ms)) / med if med else 0.0


# ----------------------------------------------------------------------------------------------------
# Ranges: module hooks and attention-call ranges
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def module_ranges(components: Iterable[tuple[str, nn.Module]]) -> Iterator[None]:
    """Open a ``record_function`` range ``module::<path>::<Class>`` around every module's forward."""
    handles = []
    stack: list = []

    def pre(name: str):
        def hook(module, args):
            stack.append(torch.ops.profiler._record_function_enter_new(name, None))
        return hook

    def post(module, args, output):
        if stack:
            torch.ops.profiler._record_function_exit._RecordFunction(stack.pop())

    for prefix, root in components:
        for name, module in root.named_modules():
            path = f"{prefix}.{name}" if name else prefix
            handles.append(module.register_forward_pre_hook(pre(f"module::{path}::{type(module).__name__}")))
            handles.append(module.register_forward_hook(post, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:  # an exception inside a forward: close what is open
            torch.ops.profiler._record_function_exit._RecordFunction(stack.pop())


def _attention_range(call: AttentionCall):
    return torch.profiler.record_function(f"{ATTENTION_RANGE}::{call.kind}::{call.path}")


# ----------------------------------------------------------------------------------------------------
# trace mode
# ----------------------------------------------------------------------------------------------------
def _trace_once(run: Callable[[], object], components, device: torch.device, trace_path: Path | None):
    from torch.profiler import ProfilerActivity, profile

    from genscope.instrument.native_stderr import profiler_started

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with module_ranges(components), register_wrapper(_attention_range), \
            profiler_started(profile(activities=activities)) as prof:  # without its USDT lines on stderr
        synchronize(device)
        start = time.perf_counter()
        # one root range: every self time lies inside it, so the classes sum to its duration exactly
        with torch.profiler.record_function(RUN_RANGE):
            run()
            synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    if trace_path is not None:
        export_trace(prof, trace_path)
    return attribute(events_from_profiler(prof)), wall_ms


def export_trace(prof, path: Path) -> None:
    """Chrome/Perfetto trace with single-rank metadata so Holistic Trace Analysis can load it."""
    prof.export_chrome_trace(str(path))
    # HTA reads the rank from top-level "distributedInfo"; the profiler only adds it in distributed runs
    trace = json.loads(Path(path).read_text())
    trace.setdefault("distributedInfo", {"backend": "none", "rank": 0, "world_size": 1})
    Path(path).write_text(json.dumps(trace))


def _fast_once(run: Callable[[], object], components, device: torch.device, times: PhaseTimes):
    timers = FastTimers(device)
    with timers.install(components):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    rows = timers.read_ms()
    # the rest of each phase's wall time: elementwise, memory and framework time outside the timed modules
    # each phase's wall time (recorded by this very run) sizes its Other
    phases = times.totals_ms() or {NO_PHASE: wall_ms}
    outside = wall_ms - sum(phases.values())
    if outside > 0:
        phases[NO_PHASE] = phases.get(NO_PHASE, 0.0) + outside
    for phase_name, phase_ms in phases.items():
        timed = sum(t for (p, _), t in rows.items() if p == phase_name)
        rows[(phase_name, "Other")] = rows.get((phase_name, "Other"), 0.0) + max(0.0, phase_ms - timed)
    class_time = pd.DataFrame([(p, c, t) for (p, c), t in rows.items()], columns=["phase", "op_class", "time_ms"])
    other = pd.DataFrame([("elementwise/memory/framework outside timed modules",
                           float(class_time.loc[class_time.op_class == "Other", "time_ms"].sum()))],
                         columns=["op", "time_ms"])
    return class_time, other, wall_ms


# ----------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------
def profile_callable(fn: Callable[[], object], *, components: Iterable[tuple[str, nn.Module]] = (),
                     device: torch.device | str = "cpu", mode: str = "trace", repeat: int = 1, warmup: int = 1,
                     trace_path: str | Path | None = None) -> Profile:
    """Profile ``fn()`` ``repeat`` times after ``warmup`` uninstrumented calls.

    ``components``: (name, module) pairs to open module ranges / fast timers on (module paths are
    prefixed with the name). ``fn`` may open ``phase(...)`` ranges; time outside phases is reported under
    ``(outside phases)``.
    """
    if mode not in MODES:
        raise choice_error("profiling mode", mode, MODES)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"--repeat must be an integer of at least 1, got {repeat!r}")
    if warmup < 0:
        raise UserError(f"warm-up count must be >= 0, got {warmup}")
    device = torch.device(device)
    trace_path = Path(trace_path) if trace_path is not None else None
    if trace_path is not None:
        if mode != "trace":
            raise UserError("--trace needs --mode trace")
        if not trace_path.parent.is_dir():
            raise UserError(f"trace folder {str(trace_path.parent)!r} does not exist")
    components = list(components)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        frames, others, walls, phase_frames = [], [], [], []
        attribution = None
        for i in range(repeat):
            with record_phases(device) as times:
                if mode == "trace":
                    attribution, wall = _trace_once(fn, components, device, trace_path if i == repeat - 1 else None)
                    class_time, other = attribution.class_time, attribution.other_ops
                else:
                    class_time, other, wall = _fast_once(fn, components, device, times)
            frames.append(class_time)
            others.append(other)
            walls.append(wall)
            phase_frames.append(pd.DataFrame(
                [(k, times.counts()[k], v) for k, v in times.totals_ms().items()],
                columns=["phase", "calls", "time_ms"]))
    class_time = (pd.concat(frames).groupby(["phase", "op_class"], as_index=False)["time_ms"].sum())
    class_time["time_ms"] /= repeat
    other_ops = pd.concat(others).groupby("op", as_index=False)["time_ms"].sum()
    other_ops["time_ms"] /= repeat
    other_ops = other_ops.sort_values("time_ms", ascending=False, ignore_index=True)
    phase_time = pd.concat(phase_frames).groupby("phase", as_index=False, sort=False).agg(
        calls=("calls", "first"), time_ms=("time_ms", "mean"))
    total = float(class_time["time_ms"].sum())
    return Profile(mode=mode, device=str(device), class_time=class_time, phase_time=phase_time,
                   other_ops=other_ops, total_ms=total, repeat_totals_ms=walls, attribution=attribution)


def profile_pipeline(pipeline, request, *, mode: str = "trace", repeat: int = 1, warmup: int = 1,
                     trace_path: str | Path | None = None) -> Profile:
    """Profile a built genscope workload pipeline running ``request``."""
    from genscope.models.layers.attention import use_backend

    def run():
        with use_backend(request.attention):
            pipeline.generate(request)

    components = [(c.name, c.module) for c in pipeline.components]
    return profile_callable(run, components=components, device=pipeline.device, mode=mode, repeat=repeat,
                            warmup=warmup, trace_path=trace_path)
