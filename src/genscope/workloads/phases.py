"""Named phases of an inference loop: ``text_encoder``, ``denoise`` step i, ``decoder``, ``prefill``, ``decode`` i.

``with phase("denoise", step=i):`` does three things:
* opens a ``torch.profiler.record_function`` range ``phase::denoise#i`` (costs nothing without a profiler),
* makes the phase visible to hooks below (``current_phase()``: the sequence-length tracer tags each
  attention call with it),
* records the phase's wall time (device-synchronized on CUDA) into the active :class:`PhaseTimes`.

Loops of steps iterate :func:`loop_steps`: ``range(steps)``, cut short under a :class:`StepLimit` that a
shape-only instrument sets (the sequence-length tracer, the FLOP counter) to run a few steps and account for
the rest itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from genscope.models.runtime import synchronize
from genscope.progress import advance


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
    # steps a StepLimit cut from a loop: entered in the run being described, but neither run nor timed
    replicated: list[tuple[str, int]] = field(default_factory=list)  # (name, step)

    def totals_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, _, ms in self.records:
            out[name] = out.get(name, 0.0) + ms
        return out

    def counts(self) -> dict[str, int]:
        """Entries per phase, the steps a StepLimit cut included."""
        out: dict[str, int] = {}
        for name, *_ in self.records + self.replicated:
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


@dataclass
class StepLimit:
    """Shape-only runs (meta device): run at most ``max_steps`` steps of every loop of identical steps
    (denoising, parallel decoding) and at most ``max_growing_steps`` of every loop whose steps grow
    (autoregressive decoding over a KV cache; ``None``: all of them).

    The instrument that sets it accounts for the steps not run (the sequence-length tracer replicates the
    last step; the FLOP counter replicates or extrapolates, :mod:`genscope.instrument.flop_steps`): ``loops``
    lists (phase name, steps the loop has, leading steps run), and ``on_loop_end(phase_name, steps, run)`` is
    called as each loop ends. ``run_last``: a loop of identical steps cut short also runs its last step (a
    scheduler's final step differs: DDIM's final alpha, DDPM's step without noise), after the leading ones.
    ``extend(phase_name, run)``: asked once ``max_steps`` leading steps of a loop of identical steps ran
    whether to run one more (the instrument found the last two different: a scheduler's set-up step).
    """

    max_steps: int
    loops: list[tuple[str, int, int]] = field(default_factory=list)
    on_loop_end: Callable[[str, int, int], None] | None = None
    max_growing_steps: int | None = None
    run_last: bool = False
    extend: Callable[[str, int], bool] | None = None


_STEP_LIMIT: contextvars.ContextVar[StepLimit | None] = contextvars.ContextVar("genscope_step_limit", default=None)


@contextlib.contextmanager
def limit_steps(max_steps: int, on_loop_end: Callable[[str, int, int], None] | None = None,
                max_growing_steps: int | None = None, run_last: bool = False,
                extend: Callable[[str, int], bool] | None = None) -> Iterator[StepLimit]:
    """``with limit_steps(2):`` every loop of identical steps inside stops after 2 steps (see :class:`StepLimit`)."""
    limit = StepLimit(max_steps, on_loop_end=on_loop_end, max_growing_steps=max_growing_steps, run_last=run_last,
                      extend=extend)
    token = _STEP_LIMIT.set(limit)
    try:
        yield limit
    finally:
        _STEP_LIMIT.reset(token)


def loop_steps(phase_name: str, steps: int, growing: bool = False) -> Iterator[int]:
    """The step indices of a loop of ``steps`` phases ``phase_name#i``: ``range(steps)``, cut short under an
    active :class:`StepLimit` (``growing``: the steps grow, as autoregressive decoding over a KV cache). When a
    limit is active, the loop's end is reported to it and the steps cut are entered in the active
    :class:`PhaseTimes` as replicated (so that entry counts are those of the whole loop)."""
    limit = _STEP_LIMIT.get()
    if limit is None:
        for i in range(steps):
            yield i
            advance(i + 1, steps, phase_name)
        return
    cap = limit.max_growing_steps if growing else limit.max_steps
    extend = None if growing else limit.extend
    run = 0
    while run < steps and (cap is None or run < cap or (extend is not None and extend(phase_name, run))):
        yield run
        run += 1
    last = limit.run_last and not growing and run < steps
    if last:
        yield steps - 1
        if run == steps - 1:  # the one step cut was the last: every step ran
            run, last = steps, False
    times = _TIMES.get()
    if times is not None:
        times.replicated.extend((phase_name, step) for step in range(run, steps - 1 if last else steps))
    limit.loops.append((phase_name, steps, run))
    if limit.on_loop_end is not None:
        limit.on_loop_end(phase_name, steps, run)
