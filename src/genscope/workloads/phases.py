"""Named phases of an inference loop: ``text_encoder``, ``denoise`` step i, ``decoder``, ``prefill``, ``decode`` i.

``with phase("denoise", step=i):`` does three things:
* opens a ``torch.profiler.record_function`` range ``phase::denoise#i`` (costs nothing without a profiler),
* makes the phase visible to hooks below (``current_phase()``: the sequence-length tracer tags each
  attention call with it),
* records the phase's wall time (device-synchronized on CUDA) into the active :class:`PhaseTimes`.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from genscope.models.runtime import synchronize


@dataclass(frozen=True)
class PhaseInfo:
    name: str
    step: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.step is None else f"{self.name}#{self.step}"


@dataclass
class PhaseTimes:
    """Wall time of every phase entered while this recorder is active."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    records: list[tuple[str, int | None, float]] = field(default_factory=list)  # (name, step, time_ms)

    def totals_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, _, ms in self.records:
            out[name] = out.get(name, 0.0) + ms
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, _, _ in self.records:
            out[name] = out.get(name, 0) + 1
        return out


_PHASE: contextvars.ContextVar[PhaseInfo | None] = contextvars.ContextVar("genscope_phase", default=None)
_TIMES: contextvars.ContextVar[PhaseTimes | None] = contextvars.ContextVar("genscope_phase_times", default=None)


def current_phase() -> PhaseInfo | None:
    return _PHASE.get()


@contextlib.contextmanager
def record_phases(device: torch.device | str = "cpu") -> Iterator[PhaseTimes]:
    times = PhaseTimes(device=torch.device(device))
    token = _TIMES.set(times)
    try:
        yield times
    finally:
        _TIMES.reset(token)


@contextlib.contextmanager
def phase(name: str, step: int | None = None) -> Iterator[PhaseInfo]:
    info = PhaseInfo(name, step)
    token = _PHASE.set(info)
    times = _TIMES.get()
    try:
        with torch.profiler.record_function(f"phase::{info.label}"):
            if times is not None:
                synchronize(times.device)
            start = time.perf_counter()
            yield info
            if times is not None:
                synchronize(times.device)
                times.records.append((name, step, (time.perf_counter() - start) * 1e3))
    finally:
        _PHASE.reset(token)
