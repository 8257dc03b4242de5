"""Pass ``bf16_weights``: weights stored in bfloat16 (or float16), not autocast.

Beyond the paper, for CPUs with bf16 matrix units (FIELD-NOTES, "Compile and precision": AMX bf16 runs a
matmul about 4x faster than fp32 on Sapphire Rapids, and autocast re-casts every weight at every call,
spending about a quarter of the time in copies). Every module that holds floating-point parameters or
buffers is swapped for a copy of itself whose tensors are in ``PassConfig.weights_dtype`` (same class,
same state_dict keys; the values rounded once). The model then expects inputs in that dtype.

Winograd layers drop their transformed weights (recomputed from the rounded weights on first use); their
per-shape decisions are re-made in the new precision (among the variants that meet the oracle in it), and a
fixed tile takes the first variant that does (a float32 product if the 16-bit one fails), else direct
convolution (noted).

Oracle (per module class): the stored-in-bf16 module vs the same module under ``torch.autocast`` in the
same dtype (the unoptimized way to run in bf16; its output rounded to bf16, as the next layer consumes
it), both against the rounded module in float64: at most 2x autocast's error.

Whether it pays depends on the CPU: without bf16 matrix instructions (AVX2-only CPUs) oneDNN/MKL emulate
bf16 and it is slower than float32 - the ablation measures it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from genscope.models.runtime import parse_dtype
from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.oracle import check_functions


def _direct_float_tensors(module: nn.Module) -> bool:
    return any(t is not None and t.is_floating_point()
               for t in list(module._parameters.values()) + list(module._buffers.values()))


def converted_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A shallow copy of ``module`` whose own floating parameters / buffers are in ``dtype``."""
    new = shallow_clone(module, type(module))
    for name, p in module._parameters.items():
        if p is not None and p.is_floating_point():
            new._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
    for name, b in module._buffers.items():
        if b is not None and b.is_floating_point():
            new._buffers[name] = b.to(dtype)
    return new


def _oracle_input(module: nn.Module, device, dtype) -> torch.Tensor | None:
    gen = torch.Generator("cpu").manual_seed(0)
    if isinstance(module, nn.Linear):
        shape = (2, 8, module.in_features)
    elif isinstance(module, nn.Conv2d):
        shape = (1, module.in_channels, 8, 8)
    elif isinstance(module, nn.GroupNorm):
        shape = (2, module.num_channels, 8, 8)
    elif isinstance(module, nn.LayerNorm):
        shape = (2, 8, *module.normalized_shape)
    else:
        return None
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


class LowPrecisionWeightsPass(Pass):
    name = "bf16_weights"
    title = "bf16 weights"

    def run(self, ctx: PassContext) -> None:
        from genscope.passes.winograd import DIRECT, WinogradConv2d, allowed_variants

        dtype = parse_dtype(ctx.config.weights_dtype)
        dname = str(dtype).removeprefix("torch.")
        holders = list(ctx.modules(lambda p, m: _direct_float_tensors(m)))
        if not holders:
            ctx.note("no floating-point weights in this model; nothing changed")
            return
        if all(t.dtype == dtype for _, m in holders for t in list(m._parameters.values()) + list(m._buffers.values())
               if t is not None and t.is_floating_point()):
            ctx.note(f"weights already in {dname}; nothing changed")
            return
        if any(p.is_floating_point() for p in self_params(ctx.model)):
            ctx.note("the root module's own parameters are left as they are")
        checked: set[str] = set()
        for path, module in holders:
            new = converted_copy(module, dtype)
            if isinstance(new, WinogradConv2d):
                new.drop_transformed()  # recomputed from the rounded weights on first use
                if new.fixed is not None and new.fixed != DIRECT:
                    allowed, results = allowed_variants([new.fixed.m], dtype, ctx.device)
                    for r in results:
                        ctx.record(r)
                    if allowed:
                        new.fixed = allowed[0]
                    else:
                        r = results[-1]
                        ctx.note(f"{path}: {r.what} refused in {dname} (relative error {r.error:.2e} vs "
                                 f"{r.baseline_error:.2e} direct); direct convolution instead")
                        new.fixed = DIRECT
            kind = type(module).__name__
            if kind not in checked:
                x = _oracle_input(module, ctx.device, torch.float32)
                weight = getattr(module, "weight", None)
                if x is not None and weight is not None and weight.dtype == torch.float32:
                    checked.add(kind)
                    ctx.require(self._oracle(module, new, x, dtype, ctx.device))
            ctx.swap(path, new, f"parameters and buffers stored in {dname} (rounded once; no per-call casts)")

    def _oracle(self, module: nn.Module, new: nn.Module, x32: torch.Tensor, dtype: torch.dtype, device):
        import copy

        x_low = x32.to(dtype)
        reference = copy.deepcopy(new).to(torch.float64)  # the rounded weights, exact arithmetic

        def autocast_run(x):
            ctx = torch.autocast(device_type=device.type, dtype=dtype) if device.type in ("cpu", "cuda") else \
                contextlib.nullcontext()
            with ctx:
                return module(x).to(dtype)  # what the next layer consumes in this precision

        return check_functions(self.name, f"{type(module).__name__} with {str(dtype).removeprefix('torch.')} weights",
                               new, autocast_run, reference, (x_low,), dtype)


def self_params(model: nn.Module):
    return [p for p in model._parameters.values() if p is not None]
