"""Pass ``fused_geglu``: diffusers' ``GEGLU`` (the UNet FeedForward's activation) as one operator.

Chen et al. 2023, Section 3.1: GELU "and its accompanied split and multiplication ops" in one draw call.
``GEGLU.forward`` is ``h, gate = proj(x).chunk(2); h * gelu(gate)``: a [.., 2F] projection, a GELU output
and the product are three [.., F]-sized allocations besides the projection.

* CUDA (Triton): projection by cuBLAS, then one kernel reads the [.., 2F] projection and writes the
  [.., F] product (split, erf-GELU and multiply in registers).
* CPU: the projection is computed as two GEMMs on the two row-halves of the same weight (views, no copy),
  so the split is free and no [.., 2F] tensor exists; GELU and the multiply run in place on the gate.
  Not fused on CPU: GELU and the multiply are two sweeps (PyTorch has no GELU-multiply kernel).

Swap: ``GEGLU`` -> :class:`FusedGEGLU` (a subclass sharing ``proj``; same state_dict).
"""

from __future__ import annotations

import torch
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.oracle import check_module


def _geglu_class():
    from diffusers.models.activations import GEGLU

    return GEGLU


_FUSED = None


def fused_geglu_class():
    global _FUSED
    if _FUSED is None:
        GEGLU = _geglu_class()

        class FusedGEGLU(GEGLU):
            """diffusers ``GEGLU`` computed by one fused operator (same ``proj``)."""

            backend: str = "torch"

            def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
                weight, bias = self.proj.weight, self.proj.bias
                if self.backend == "triton" and hidden_states.is_cuda:
                    from genscope.passes.kernels.triton_kernels import geglu_triton

                    return geglu_triton(hidden_states, weight, bias)
                return kcpu.geglu(hidden_states, weight, bias)

        _FUSED = FusedGEGLU
    return _FUSED


class FusedGEGLUPass(Pass):
    name = "fused_geglu"
    title = "fused GEGLU"

    def run(self, ctx: PassContext) -> None:
        GEGLU = _geglu_class()
        cls = fused_geglu_class()
        checked: set[tuple] = set()
        how = ("projection + one Triton kernel for split/GELU/multiply" if ctx.backend == "triton"
               else "two half-GEMMs (free split) + in-place GELU and multiply")
        found = False
        for path, module in ctx.modules(lambda p, m: type(m) is GEGLU):
            found = True
            if not isinstance(module.proj, nn.Linear):
                ctx.note(f"{path}: proj is {type(module.proj).__name__}, not Linear; left as it is")
                continue
            new = shallow_clone(module, cls)
            new.backend = ctx.backend
            signature = (module.proj.in_features, module.proj.out_features)
            if signature not in checked:
                checked.add(signature)
                gen = torch.Generator("cpu").manual_seed(0)
                x = torch.randn(2, 16, module.proj.in_features, generator=gen).to(ctx.device, ctx.dtype)
                ctx.require(check_module(self.name, module, new, (x,), what="FusedGEGLU"))
            ctx.swap(path, new, f"split + GELU + multiply fused ({how})")
        if not found:
            ctx.note("no diffusers GEGLU in this model; nothing changed")
