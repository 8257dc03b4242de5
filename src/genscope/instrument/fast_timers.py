"""Fast-mode timers: leaf modules and attention calls timed without a profiler.

Timed regions do not nest: a region opened inside a timed one (an attention call inside a timed leaf) is not
timed again. On the CPU a region is two ``time.perf_counter()`` reads. On CUDA a region is two CUDA events
recorded on the current stream (``torch.cuda.Event(enable_timing=True)``): nothing waits for the GPU while the
model runs, and all pairs are read once, after one synchronize, at the end (:meth:`FastTimers.read_ms`). A
``torch.cuda.synchronize`` around every module, as this mode once did, serializes host and GPU and measures
launch latency instead of kernel time.

The leaf modules' ``forward`` is wrapped on the instance (restored on exit) rather than hooked: a module with
hooks takes ``nn.Module``'s slow call path, which alone costs more than the timing. Measured on the 2-core
development VM (Linear(4, 4) chain, median of 15, 1 thread): forward hooks added 19-31 us per call, the wrapper
adds 6.4 us (``benchmarks/fast_timer_overhead.py``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from time import perf_counter

import torch

from genscope.instrument.attribution import NO_PHASE
from genscope.instrument.opclasses import MODULE_CLASSES
from genscope.instrument.patching import wrap_forward
from genscope.models.layers.attention import register_wrapper
from genscope.workloads.phases import current_phase


class FastTimers:
    """Per-(phase, class) time of the timed regions of one run."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.times: dict[tuple[str, str], float] = defaultdict(float)
        self.pending: list[tuple[tuple[str, str], object, object]] = []  # CUDA: ((phase, class), start, end)
        self.depth = 0  # timed regions open; only the outermost is timed
        self.start: object = 0.0
        self.cls = ""

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return perf_counter()

    def enter(self, cls: str) -> None:
        self.depth += 1
        if self.depth == 1:
            self.cls = cls
            self.start = self._now()

    def exit(self) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth:
            return
        end = self._now()
        info = current_phase()
        key = (info.name if info is not None else NO_PHASE, self.cls)
        if self.cuda:
            self.pending.append((key, self.start, end))
        else:
            self.times[key] += (end - self.start) * 1e3

    def read_ms(self) -> dict[tuple[str, str], float]:
        """(phase, class) -> milliseconds; on CUDA one synchronize, then every event pair is read."""
        if self.pending:
            torch.cuda.synchronize(self.device)
            for key, start, end in self.pending:
                self.times[key] += start.elapsed_time(end)
            self.pending.clear()
        return dict(self.times)

    def _timed_cpu(self, cls: str):
        """The CPU wrapper, inlined (no method calls on the hot path): the outermost region reads the clock."""
        timers = self

        def make(original):
            def forward(*args, **kwargs):
                if timers.depth:
                    timers.depth += 1
                    try:
                        return original(*args, **kwargs)
                    finally:
                        timers.depth -= 1
                timers.depth = 1
                start = perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    elapsed = perf_counter() - start
                    timers.depth = 0
                    info = current_phase()
                    timers.times[(info.name if info is not None else NO_PHASE, cls)] += elapsed * 1e3
            return forward
        return make

    def _timed_cuda(self, cls: str):
        timers = self

        def make(original):
            def forward(*args, **kwargs):
                timers.enter(cls)
                try:
                    return original(*args, **kwargs)
                finally:
                    timers.exit()
            return forward
        return make

    @contextlib.contextmanager
    def install(self, components) -> Iterator[None]:
        """Time every leaf module of a class in :data:`MODULE_CLASSES` and every attention call."""
        timers = self
        undo: list[Callable[[], None]] = []
        timed = self._timed_cuda if self.cuda else self._timed_cpu

        class _AttentionRegion:
            def __enter__(self):
                timers.enter("Attention")

            def __exit__(self, *exc):
                timers.exit()

        region = _AttentionRegion()
        seen: set[int] = set()
        for _, root in components:
            for module in root.modules():
                cls = MODULE_CLASSES.get(type(module).__name__)
                if cls is not None and id(module) not in seen:
                    seen.add(id(module))
                    undo.append(wrap_forward(module, timed(cls)))
        handle = register_wrapper(lambda call: region)
        try:
            yield
        finally:
            handle.remove()
            for restore in reversed(undo):
                restore()
