"""Pass ``onednn_linear``: ``nn.Linear`` layers through oneDNN's matmul with the bias fused (CPU).

Beyond the paper, for CPUs. ``F.linear`` on a 3-D input runs ATen's ``addmm`` path; oneDNN's linear
(``torch.ops.mkldnn._linear_pointwise``, the op inductor's freezing emits for CPU linears) adds the bias as
a post-op and measured 1.2-2.1x faster on SD UNet shapes on this checkout's Intel Xeon, bit-identical on
contiguous inputs (:func:`genscope.passes.kernels.cpu.linear`, where the measurement is). Whether it pays on
another CPU is measured by ``PassConfig.auto`` (:mod:`genscope.passes.auto`), not assumed.

Swap: ``nn.Linear`` (exactly; not subclasses such as the fused-QKV slices, which call oneDNN themselves) ->
:class:`OneDNNLinear` (a subclass sharing weight and bias; same state_dict). Oracle per (in, out) shape.
"""

from __future__ import annotations

import torch
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.oracle import check_module


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` computed by :func:`genscope.passes.kernels.cpu.linear` (oneDNN on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kcpu.linear(x, self.weight, self.bias)


class OneDNNLinearPass(Pass):
    name = "onednn_linear"
    title = "oneDNN linear"

    def run(self, ctx: PassContext) -> None:
        if ctx.device.type != "cpu":
            ctx.note(f"a CPU path; nothing changed on {ctx.device.type}")
            return
        if not kcpu.onednn_linear_available():
            ctx.note("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise); nothing changed")
            return
        checked: set[tuple] = set()
        found = False
        for path, linear in ctx.modules(lambda p, m: type(m) is nn.Linear):
            found = True
            new = shallow_clone(linear, OneDNNLinear)
            signature = (linear.in_features, linear.out_features, linear.bias is not None)
            if signature not in checked:
                checked.add(signature)
                gen = torch.Generator("cpu").manual_seed(0)
                x = torch.randn(2, 16, linear.in_features, generator=gen).to(ctx.device, ctx.dtype)
                ctx.require(check_module(self.name, linear, new, (x,), what="OneDNNLinear"))
            ctx.swap(path, new, "oneDNN matmul with the bias as a post-op")
        if not found:
            ctx.note("no nn.Linear in this model; nothing changed")
