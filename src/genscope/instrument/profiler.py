"""Where the time goes: operator-class breakdown per phase, in two modes.

``trace`` mode (the paper's method): ``torch.profiler`` records every op; forward hooks open a
``record_function`` range per module (``module::<path>::<Class>``), the workload opens a range per phase
(``phase::denoise#3``) and the attention entry point a range per call (``genscope::attention::<kind>::<path>``).
Each op's *self* time (CPU op time on CPU; on CUDA the time of the GPU kernels it launched, linked by the
profiler's correlation ids) is charged to:

* a phase: the innermost ``phase::`` range around it;
* an operator class: ``Attention`` if it runs inside an attention entry-point call (QK^T, softmax, @V, the
  fused kernel - the Q/K/V/out projections are outside the call and are charged to Linear, as the paper's
  Figure 7 does: stated in every table); otherwise the class of its *top-level* ATen op (the outermost
  ``aten::`` op under the innermost non-op range), so that e.g. the ``empty``/``copy_`` inside a
  ``group_norm`` count as GroupNorm. Time in ranges outside any op (Python between ops, on CPU) is
  charged to Other as ``python/framework``.

Self times never overlap, so the classes sum to the measured total (the sum of self times = the duration
of the outermost ranges); what lands in Other is listed by op name.

``fast`` mode: no profiler. Timers wrapped around ``forward`` time the leaf modules whose class fixes the operator class
(Conv -> Convolution, Linear -> Linear, GroupNorm, LayerNorm/RMSNorm, activations) and a wrapper times every
attention entry-point call; the rest of each phase's wall time is reported as Other (elementwise, memory
and framework time not inside those modules). Device-synchronized on CUDA only; near-zero overhead, for
sweeps.

Why hand-written: torch.profiler gives events, HTA gives GPU-trace analysis; neither attributes CPU op
time to module classes and phases with the one class table genscope uses.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.instrument.opclasses import ATTENTION_RANGE, OP_CLASSES, op_class
from genscope.instrument.patching import wrap_forward
from genscope.models.layers.attention import AttentionCall, register_wrapper
from genscope.models.runtime import synchronize
from genscope.workloads.phases import PhaseTimes, current_phase, record_phases

MODES = ("trace", "fast")
NO_PHASE = "(outside phases)"
FRAMEWORK = "python/framework"
RUN_RANGE = "genscope::run"
# ranges a pass opens around an op it implements with other ops: "genscope::convolution::winograd" makes
# the batched matmuls of a Winograd convolution count as Convolution, not Linear
CLASS_RANGES = {cls.lower(): cls for cls in OP_CLASSES if cls != "Attention"}
ATTENTION_NOTE = ("Attention = time inside attention entry-point calls (QK^T, softmax, @V or the fused "
                  "kernel); the Q/K/V/output projections are counted as Linear.")

# fast mode: module class -> operator class (leaf modules only)
MODULE_CLASSES: dict[str, str] = {
    "Conv1d": "Convolution", "Conv2d": "Convolution", "Conv3d": "Convolution", "LoRACompatibleConv": "Convolution",
    "ConvTranspose2d": "Convolution", "Linear": "Linear", "LoRACompatibleLinear": "Linear",
    "GroupNorm": "GroupNorm", "LayerNorm": "LayerNorm", "RMSNorm": "LayerNorm", "T5LayerNorm": "LayerNorm",
    "LlamaRMSNorm": "LayerNorm", "SiLU": "Activation", "GELU": "Activation", "ReLU": "Activation",
    "Mish": "Activation", "Tanh": "Activation", "Sigmoid": "Activation", "QuickGELUActivation": "Activation",
    "GELUActivation": "Activation", "NewGELUActivation": "Activation", "SiLUActivation": "Activation",
    "GEGLU": "Activation", "FusedGroupNormSiLU": "GroupNorm", "FusedGroupNorm": "GroupNorm",
    "WinogradConv2d": "Convolution", "ChannelsLastConv2d": "Convolution", "FusedGEGLU": "Activation",
}


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

    @property
    def attention_ms(self) -> float:
        return float(self.class_time.loc[self.class_time.op_class == "Attention", "time_ms"].sum())

    def by_class(self) -> pd.DataFrame:
        """Total per operator class: op_class, time_ms, share_pct (all classes, zeros included)."""
        totals = self.class_time.groupby("op_class")["time_ms"].sum()
        df = pd.DataFrame({"op_class": list(OP_CLASSES)})
        df["time_ms"] = [float(totals.get(c, 0.0)) for c in OP_CLASSES]
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
def _phase_of(label: str) -> str:
    return label.split("::", 1)[1].split("#", 1)[0]


def attribute_events(events, device_type: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiler events -> (class_time rows [phase, op_class, time_ms], other ops [op, time_ms]).

    Each event's self time is charged once: to its phase and to the class of its top-level op (or
    Attention when inside an attention entry-point call).
    """
    use_device = device_type == "cuda"
    rows: dict[tuple[str, str], float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for evt in events:
        if getattr(evt, "device_type", None) is not None and str(evt.device_type).endswith("CUDA") and not use_device:
            continue
        self_us = evt.self_device_time_total if use_device else evt.self_cpu_time_total
        if self_us <= 0:
            continue
        # walk up: find phase, attention call, and the top-level aten op below the innermost non-op range
        phase_name = NO_PHASE
        in_attention = False
        range_class = None  # innermost "genscope::<class>::..." range (e.g. a Winograd convolution's matmuls)
        top_op = evt.name if evt.name.startswith("aten::") else None
        node = evt
        crossed_range = not evt.name.startswith("aten::")
        while node is not None:
            name = node.name
            if name.startswith("aten::"):
                if not crossed_range:
                    top_op = name
            else:
                crossed_range = True
                if name.startswith(ATTENTION_RANGE):
                    in_attention = True
                elif range_class is None and name.startswith("genscope::"):
                    range_class = CLASS_RANGES.get(name.split("::")[1])
                elif name.startswith("phase::"):
                    phase_name = _phase_of(name)
                    break
            node = node.cpu_parent
        if in_attention:
            cls = "Attention"
        elif range_class is not None:
            cls = range_class
        elif top_op is not None:
            cls = op_class(top_op)
        elif evt.name.startswith(("module::", "phase::", ATTENTION_RANGE)):
            cls = "Other"
            top_op = FRAMEWORK
        else:
            cls = op_class(evt.name)
            top_op = evt.name
        ms = self_us / 1e3
        rows[(phase_name, cls)] += ms
        if cls == "Other":
            other[top_op or evt.name] += ms
    class_time = pd.DataFrame([(p, c, t) for (p, c), t in rows.items()], columns=["phase", "op_class", "time_ms"])
    other_ops = pd.DataFrame(sorted(other.items(), key=lambda kv: -kv[1]), columns=["op", "time_ms"])
    return class_time, other_ops


def _trace_once(run: Callable[[], object], components, device: torch.device, trace_path: Path | None):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with module_ranges(components), register_wrapper(_attention_range), profile(activities=activities) as prof:
        synchronize(device)
        start = time.perf_counter()
        # one root range: every self time lies inside it, so the classes sum to its duration exactly
        with torch.profiler.record_function(RUN_RANGE):
            run()
            synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    if trace_path is not None:
        export_trace(prof, trace_path)
    class_time, other = attribute_events(prof.events(), device.type)
    return class_time, other, wall_ms


def export_trace(prof, path: Path) -> None:
    """Chrome/Perfetto trace with single-rank metadata so Holistic Trace Analysis can load it."""
    prof.export_chrome_trace(str(path))
    # HTA reads the rank from top-level "distributedInfo"; the profiler only adds it in distributed runs
    trace = json.loads(Path(path).read_text())
    trace.setdefault("distributedInfo", {"backend": "none", "rank": 0, "world_size": 1})
    Path(path).write_text(json.dumps(trace))


# ----------------------------------------------------------------------------------------------------
# fast mode
# ----------------------------------------------------------------------------------------------------
class _FastTimers:
    """Leaf-module and attention-call timers. Timed regions do not nest: a region opened inside a timed one
    (an attention call inside a timed leaf) is not timed again. Kept lean - plain functions, no context
    manager objects, no synchronization on the CPU - since they run twice per leaf module call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sync = device.type != "cpu"
        self.times: dict[tuple[str, str], float] = defaultdict(float)
        self.open: list[tuple[str, float] | None] = []  # (class, start) of the timed region; None: nested
        self.timing = False

    def enter(self, cls: str) -> None:
        if self.timing:
            self.open.append(None)
            return
        self.timing = True
        if self.sync:
            synchronize(self.device)
        self.open.append((cls, time.perf_counter()))

    def exit(self) -> None:
        if not self.open:
            return
        entry = self.open.pop()
        if entry is None:
            return
        if self.sync:
            synchronize(self.device)
        end = time.perf_counter()
        info = current_phase()
        self.times[(info.name if info is not None else NO_PHASE, entry[0])] += (end - entry[1]) * 1e3
        self.timing = False

    @contextlib.contextmanager
    def install(self, components) -> Iterator[None]:
        """Time every leaf module of a class in :data:`MODULE_CLASSES` and every attention call.

        The leaf modules' ``forward`` is wrapped on the instance (restored on exit) rather than hooked:
        a module with hooks takes ``nn.Module``'s slow call path, which alone costs more than the timing.
        Measured on the 2-core development VM (Linear(4, 4) chain, median of 15, 1 thread): forward hooks
        added 19-31 us per call, the wrapper adds 6.4 us (``benchmarks/fast_timer_overhead.py``)."""
        timers = self
        undo: list[Callable[[], None]] = []

        def timed(cls: str):
            def make(original):
                def forward(*args, **kwargs):
                    timers.enter(cls)
                    try:
                        return original(*args, **kwargs)
                    finally:
                        timers.exit()
                return forward
            return make

        class _AttentionRegion:
            def __enter__(self):
                timers.enter("Attention")

            def __exit__(self, *exc):
                timers.exit()

        seen: set[int] = set()
        for _, root in components:
            for module in root.modules():
                cls = MODULE_CLASSES.get(type(module).__name__)
                if cls is not None and id(module) not in seen:
                    seen.add(id(module))
                    undo.append(wrap_forward(module, timed(cls)))
        handle = register_wrapper(lambda call: _AttentionRegion())
        try:
            yield
        finally:
            handle.remove()
            for restore in reversed(undo):
                restore()


def _fast_once(run: Callable[[], object], components, device: torch.device, times: PhaseTimes):
    timers = _FastTimers(device)
    with timers.install(components):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    rows = dict(timers.times)
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
        for i in range(repeat):
            with record_phases(device) as times:
                if mode == "trace":
                    class_time, other, wall = _trace_once(fn, components, device,
                                                          trace_path if i == repeat - 1 else None)
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
                   other_ops=other_ops, total_ms=total, repeat_totals_ms=walls)


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
