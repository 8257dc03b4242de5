"""The one availability check for Triton kernels (genscope's CUDA implementations of the passes).

``triton`` is an optional dependency: importing genscope never imports it and never initializes CUDA.
:func:`triton_available` answers "can a Triton kernel launch here" (the package imports and a CUDA
device is present); :func:`require_triton` turns a request that cannot be served into one clear
:class:`~genscope.errors.UserError` (exit code 2 on the command line).

``TRITON_INTERPRET=1`` (Triton's own interpreter) runs ``@triton.jit`` kernels on CPU tensors, slowly:
:func:`triton_interpret` reports it so that tests can exercise the kernels without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from genscope.errors import UserError


@functools.cache
def triton_installed() -> bool:
    """The ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return triton_installed() and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device | str | None = None) -> bool:
    """A Triton kernel can run on ``device`` (a CUDA device with the package, or any device when interpreted)."""
    if not triton_installed():
        return False
    if triton_interpret():
        return True
    if device is not None and torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_available()


def require_triton(device: torch.device | str) -> None:
    """Raise a one-line ``UserError`` unless Triton kernels can run on ``device``."""
    device = torch.device(device)
    if not triton_installed():
        raise UserError("backend 'triton' needs the triton package, which is not installed here; "
                        "use backend 'torch' (or 'auto')")
    if triton_interpret():
        return
    if device.type != "cuda" or not torch.cuda.is_available():
        raise UserError(f"backend 'triton' needs a CUDA GPU; the model is on {device.type}: "
                        "use backend 'torch' (or 'auto')")
