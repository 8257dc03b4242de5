"""Device and dtype: parsed from user strings, checked before any model is built.

Never initializes CUDA unless the user asked for a CUDA device.
"""

from __future__ import annotations

import functools

import torch

from genscope.errors import UserError, choice_error

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_TYPES = ("cpu", "cuda", "meta")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise choice_error("dtype", name, DTYPE_NAMES) from None


def parse_device(name: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'meta' -> torch.device; a CUDA device that is not there is a UserError."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise choice_error("device", name, DEVICE_TYPES) from None
    if device.type not in DEVICE_TYPES:
        raise choice_error("device", name, DEVICE_TYPES)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but no CUDA GPU is available here; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


@functools.cache
def _dtype_runs(device_type: str, dtype: torch.dtype) -> str | None:
    """None if a conv + matmul + softmax run in ``dtype`` on the device, else the error."""
    if device_type == "meta":
        return None
    try:
        x = torch.randn(1, 4, 8, 8, device=device_type).to(dtype)
        w = torch.randn(4, 4, 3, 3, device=device_type).to(dtype)
        y = torch.nn.functional.conv2d(x, w, padding=1)
        z = (y.flatten(1) @ y.flatten(1).T).softmax(-1)
        torch.nn.functional.group_norm(y, 2)
        float(z.sum())
    except (RuntimeError, NotImplementedError) as exc:
        return str(exc).splitlines()[0]
    return None


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    problem = _dtype_runs(device.type, dtype)
    if problem is not None:
        raise UserError(f"dtype {dtype_name(dtype)} cannot run on {device.type} here ({problem})")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
