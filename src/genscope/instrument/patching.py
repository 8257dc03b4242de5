"""Wrapping a module's ``forward`` on the instance, and undoing it.

The instruments that must run on every call of a module (the profiler's fast-mode timers) wrap ``forward``
instead of registering forward hooks: a module with hooks takes ``nn.Module``'s slow call path, which costs
more than the instrument itself. ``nn.Module`` has no API for this, hence the few lines here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def wrap_forward(module: nn.Module, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Set ``module.forward = make(module.forward)`` on the instance; returns the function that undoes it
    (restoring an instance-level ``forward`` the module already had). Undo in reverse order of wrapping."""
    had = module.__dict__.get("forward")
    module.forward = make(module.forward)

    def undo() -> None:
        if had is None:
            del module.forward
        else:
            module.forward = had

    return undo
