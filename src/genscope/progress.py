"""Progress inside long work, without threading a callback through every layer.

Loops that take a while (a workload's denoising or decode steps: :func:`genscope.workloads.phases.loop_steps`)
call :func:`advance`; whoever shows progress - the ``characterize`` command's bar - installs a sink with
:func:`reporting`. No sink installed: a context-variable read, nothing else. Importable from every layer (it
imports nothing of genscope).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

Sink = Callable[[int, int, str], None]  # (done, total, what)
_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("genscope_progress", default=None)


def advance(done: int, total: int, what: str) -> None:
    """``done`` of ``total`` units of ``what`` (e.g. 3 of 8 ``denoise`` steps) are finished."""
    sink = _SINK.get()
    if sink is not None:
        sink(done, total, what)


@contextlib.contextmanager
def reporting(sink: Sink) -> Iterator[None]:
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)
