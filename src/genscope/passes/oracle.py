"""The numerical oracle every pass must meet (DESIGN.md, "Optimizations are opt-in passes").

For an optimized module (or function) and the module it replaces, on the same inputs:

* ``reference``: the *unoptimized* module evaluated in float64 (weights and inputs cast up exactly from the
  precision under test, so only the arithmetic differs);
* ``baseline_error``: relative error of the unoptimized module in the precision under test;
* ``error``: relative error of the optimized module in that precision.

The pass is accepted when ``error <= 2 * baseline_error`` (:data:`FACTOR`); otherwise it is refused with
both measured errors. Relative error = ||out - ref||_2 / ||ref||_2 over the whole output.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genscope.errors import UserError

FACTOR = 2.0
# When the unoptimized module is exact (error 0: e.g. a pure copy), allow float64 round-off only.
ABS_FLOOR = 1e-12


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (inf if out has non-finite values and ref does not)."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(out64).all() and torch.isfinite(ref64).all():
        return float("inf")
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def max_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (the ablation's column)."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    return float((out64 - ref64).abs().max() / ref64.abs().max().clamp_min(1e-300))


@dataclass(frozen=True)
class OracleResult:
    pass_name: str
    what: str  # the module class / variant checked, e.g. "FusedGroupNormSiLU" or "winograd F(4x4,3x3)"
    dtype: str
    error: float  # optimized vs float64 reference
    baseline_error: float  # unoptimized (same precision) vs float64 reference
    factor: float = FACTOR

    @property
    def limit(self) -> float:
        return self.factor * self.baseline_error + ABS_FLOOR

    @property
    def ok(self) -> bool:
        return self.error <= self.limit

    def message(self) -> str:
        verdict = "meets" if self.ok else "fails"
        return (f"{self.pass_name}: {self.what} in {self.dtype} {verdict} the oracle: relative error "
                f"{self.error:.2e} vs {self.baseline_error:.2e} for the unoptimized module (limit "
                f"{self.factor:g}x = {self.limit:.2e})")

    def as_row(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "what": self.what, "dtype": self.dtype, "error": self.error,
                "baseline_error": self.baseline_error, "limit": self.limit, "ok": self.ok}


class PassRefused(UserError):
    """A pass / precision combination that fails its oracle (carries the measured result)."""

    def __init__(self, result: OracleResult):
        super().__init__(result.message() + "; refused")
        self.result = result


def _dtype_of(module: nn.Module, inputs: Sequence[Any]) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.dtype
    return torch.float32


def _up(x: Any) -> Any:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def check_functions(pass_name: str, what: str, optimized: Callable[..., torch.Tensor],
                    unoptimized: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                    inputs: Sequence[Any], dtype: torch.dtype) -> OracleResult:
    """Oracle on plain functions: ``reference`` gets the inputs cast to float64."""
    with torch.no_grad():
        ref = reference(*[_up(x) for x in inputs])
        base = unoptimized(*inputs)
        out = optimized(*inputs)
    return OracleResult(pass_name, what, str(dtype).removeprefix("torch."), relative_error(out, ref),
                        relative_error(base, ref))


def check_module(pass_name: str, original: nn.Module, optimized: nn.Module | Callable[..., torch.Tensor],
                 inputs: Sequence[Any], what: str | None = None) -> OracleResult:
    """Oracle for a module swap: ``original`` (unoptimized) and ``optimized`` on ``inputs`` (same precision)."""
    dtype = _dtype_of(original, inputs)
    reference = copy.deepcopy(original).to(torch.float64)
    return check_functions(pass_name, what or type(optimized).__name__, optimized, original, reference, inputs,
                           dtype)


def cached_check(cache, pass_name: str, device: torch.device, dtype: torch.dtype, fields: dict[str, Any],
                 check: Callable[[], OracleResult]) -> OracleResult:
    """``check()``, or its errors as measured before on this device for the same ``fields``.

    ``cache``: a :class:`~genscope.passes.decisions.DecisionCache`; ``fields`` must name everything the
    verdict depends on besides the device and dtype (the module's structure, its kernels' version, and the
    SHA-1 of its weights where the check runs on them). A cached verdict is shown as such (``what`` ends
    in "(cached)").
    """
    from genscope.passes.decisions import decision_key

    key = decision_key(f"{pass_name}-oracle", device, dtype, fields)
    cached = cache.get(key) or {}
    try:  # the file is data: an entry that is not two numbers and a name is checked again
        errors = float(cached["error"]), float(cached["baseline_error"])
        return OracleResult(pass_name, f"{str(cached['what'])} (cached)", str(dtype).removeprefix("torch."), *errors)
    except (KeyError, TypeError, ValueError):
        pass
    result = check()
    cache.put(key, {"what": result.what, "error": result.error, "baseline_error": result.baseline_error})
    return result


def tensors_sha1(*tensors: torch.Tensor | None) -> str:
    """SHA-1 of the tensors' shapes, dtypes and bytes (None: skipped in place)."""
    digest = hashlib.sha1()
    for t in tensors:
        if t is None:
            digest.update(b"none")
            continue
        t = t.detach().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).cpu().numpy()))
    return digest.hexdigest()
