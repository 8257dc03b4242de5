"""Pass ``fused_qkv``: an attention's Q, K and V projections as one GEMM (K and V for cross-attention).

What diffusers' ``Attention.fuse_projections`` does (one [3D, D] weight), without changing the attention
processor (genscope's processor calls ``attn.to_q``, ``attn.to_k``, ``attn.to_v`` in turn, on the same
tensor for self-attention): the three ``Linear`` modules are swapped for :class:`ProjectionSlice` views of one
:class:`ProjectionGroup`. The first slice called runs the single GEMM ``x @ W_qkv^T`` (oneDNN on CPU,
:func:`genscope.passes.kernels.cpu.linear`) and keeps the result;
the others, called on the *same* tensor object, return their column block of it (a strided view, no copy).
A call on another tensor (cross-attention's K and V read the text, not the image) runs the group for that
tensor: K and V of a cross-attention are their own group, so they too are one GEMM.

The concatenated weight is the storage: ``to_q.weight`` etc. become views into it (same state_dict keys and
values; no extra weight memory). Why by hand: diffusers' fused processors (``FusedAttnProcessor2_0``) would
bypass genscope's attention entry point (DESIGN.md, "One attention entry point").

Swap: ``to_q``/``to_k``/``to_v`` (``nn.Linear``, same in_features) -> :class:`ProjectionSlice`. Oracle: the
attention module's output against the unfused one.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from genscope.passes.base import Pass, PassContext
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.oracle import check_module


class ProjectionGroup:
    """One weight [sum(out_i), D] (and bias) for several projections of the same input; the last result."""

    def __init__(self, linears: list[nn.Linear]):
        with torch.no_grad():
            self.weight = torch.cat([m.weight.detach() for m in linears])  # [sum(out_i), D]
            has_bias = [m.bias is not None for m in linears]
            self.bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in linears]) if any(has_bias) else None
        self.offsets = []
        start = 0
        for m in linears:
            self.offsets.append((start, start + m.out_features))
            start += m.out_features
        self._input: weakref.ref | None = None
        self._output: torch.Tensor | None = None
        self._served = 0

    def __deepcopy__(self, memo):
        return self  # shared by its slices (a copy converted to another dtype runs unfused: see ProjectionSlice)

    def project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # x: [B, L, D] -> the slice's block [B, L, out_i] of x @ W^T (computed once per input tensor)
        cached = self._input() if self._input is not None else None
        if cached is not x or self._output is None:
            self._output = kcpu.linear(x, self.weight.to(x.dtype),
                                       None if self.bias is None else self.bias.to(x.dtype))  # [B, L, sum(out_i)]
            self._input = weakref.ref(x)
            self._served = 0
        start, stop = self.offsets[index]
        out = self._output[..., start:stop]
        self._served += 1
        if self._served >= len(self.offsets):  # every slice served: release the result
            self._output, self._input = None, None
        return out


class ProjectionSlice(nn.Linear):
    """An ``nn.Linear`` whose weight is a row block of a :class:`ProjectionGroup`'s weight."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: ProjectionGroup, index: int) -> ProjectionSlice:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        start, stop = group.offsets[index]
        new.weight = nn.Parameter(group.weight[start:stop], requires_grad=False)
        new.bias = None if linear.bias is None else nn.Parameter(group.bias[start:stop], requires_grad=False)
        new.__dict__["group"] = group
        new.index = index
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != self.group.weight.dtype or self.weight.device != self.group.weight.device:
            return F.linear(x, self.weight, self.bias)  # the weights were converted after the pass: unfused
        return self.group.project(x, self.index)


def _linear(m) -> bool:
    return type(m) is nn.Linear


class FusedQKVPass(Pass):
    name = "fused_qkv"
    title = "fused QKV projection"

    def run(self, ctx: PassContext) -> None:
        from diffusers.models.attention_processor import Attention

        found = False
        checked: set[tuple] = set()
        for path, attn in ctx.modules(lambda p, m: isinstance(m, Attention)):
            q, k, v = (getattr(attn, n, None) for n in ("to_q", "to_k", "to_v"))
            if not all(_linear(m) for m in (q, k, v)):
                continue
            found = True
            if attn.is_cross_attention or q.in_features != k.in_features:
                groups = {"to_k": (ProjectionGroup([k, v]), 0), "to_v": None}
                groups["to_v"] = (groups["to_k"][0], 1)
                how = "K and V of the cross-attention as one GEMM on the text"
            else:
                group = ProjectionGroup([q, k, v])
                groups = {"to_q": (group, 0), "to_k": (group, 1), "to_v": (group, 2)}
                how = "Q, K and V as one GEMM on the concatenated [3D, D] weight"
            signature = (q.in_features, k.in_features, attn.heads, attn.is_cross_attention)
            if signature not in checked:
                checked.add(signature)
                self._oracle(ctx, attn, groups)
            for name, (group, index) in groups.items():
                ctx.swap(f"{path}.{name}", ProjectionSlice.from_linear(getattr(attn, name), group, index), how,
                         parent=attn, attr=name)
        if not found:
            ctx.note("no diffusers Attention with Linear Q/K/V projections; nothing changed")

    @staticmethod
    def _oracle(ctx: PassContext, attn: nn.Module, groups) -> None:
        import copy

        fused = copy.copy(attn)
        fused._modules = dict(attn._modules)
        for name, (group, index) in groups.items():
            fused._modules[name] = ProjectionSlice.from_linear(getattr(attn, name), group, index)
        gen = torch.Generator("cpu").manual_seed(0)
        x = torch.randn(2, 16, attn.to_q.in_features, generator=gen).to(ctx.device, ctx.dtype)
        kwargs = {}
        if attn.is_cross_attention:
            kwargs["encoder_hidden_states"] = torch.randn(2, 7, attn.to_k.in_features, generator=gen).to(
                ctx.device, ctx.dtype)
        result = check_module(ctx.pass_name, _Call(attn, kwargs), _Call(fused, kwargs), (x,),
                              what="attention with fused QKV projection")
        ctx.require(result)


class _Call(nn.Module):
    """``attn(x, **kwargs)`` as a one-argument module (for the oracle; kwargs cast with the module)."""

    def __init__(self, attn: nn.Module, kwargs: dict):
        super().__init__()
        self.attn = attn
        self.kwargs = kwargs

    def forward(self, x):
        kwargs = {k: v.to(x.dtype) for k, v in self.kwargs.items()}
        return self.attn(x, **kwargs)
