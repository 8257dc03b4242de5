"""Pass ``channels_last``: convolutions in NHWC memory format.

Beyond the paper, for CPUs: oneDNN's convolutions work in a channels-innermost layout; with NCHW tensors
PyTorch reorders the input (and the output back) at every convolution. This pass swaps each ``Conv2d`` for
:class:`ChannelsLastConv2d` (weight stored channels-last - same values; input made channels-last if it is
not already), marks Winograd layers to take channels-last inputs (their gather and scatter become
contiguous), and makes diffusers attention processors that ``view`` 4-D inputs (the VAE's mid-block
attention) call ``contiguous()`` first. Elementwise ops, GroupNorm and upsampling keep the format, so
after the first convolution activations stay NHWC - except where diffusers itself calls ``.contiguous()``
(Transformer2DModel's output), which converts back once per transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.oracle import check_module
from genscope.passes.partial_softmax import BackendAttnProcessor, base_processor


class ChannelsLastConv2d(nn.Conv2d):
    """``Conv2d`` with a channels-last weight that makes its input channels-last (output: channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups) \
            if self.padding_mode == "zeros" else super().forward(x)


def channels_last_copy(conv: nn.Conv2d, cls: type[nn.Conv2d]) -> nn.Conv2d:
    new = shallow_clone(conv, cls)
    new._parameters["weight"] = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last),
                                             requires_grad=False)
    return new


class ChannelsLastPass(Pass):
    name = "channels_last"
    title = "channels-last"

    def run(self, ctx: PassContext) -> None:
        from genscope.passes.winograd import WinogradConv2d

        convs = list(ctx.modules(lambda p, m: type(m) in (nn.Conv2d, WinogradConv2d)))
        if not convs:
            ctx.note("no Conv2d in this model; nothing changed")
            return
        checked = False
        for path, conv in convs:
            if isinstance(conv, WinogradConv2d):
                new = shallow_clone(conv, WinogradConv2d)
                new.prefer_channels_last = True
                ctx.swap(path, new, "Winograd with channels-last input (contiguous tile gather and scatter)")
                continue
            new = channels_last_copy(conv, ChannelsLastConv2d)
            if not checked and conv.weight.dim() == 4:
                checked = True
                gen = torch.Generator("cpu").manual_seed(0)
                x = torch.randn(1, conv.in_channels, 8, 8, generator=gen).to(ctx.device, ctx.dtype)
                ctx.require(check_module(self.name, conv, new, (x,), what="ChannelsLastConv2d"))
            ctx.swap(path, new, "weight and input in channels-last (NHWC) memory format")
        contiguous_4d_attention(ctx)


def contiguous_4d_attention(ctx: PassContext) -> None:
    """Make diffusers attention processors that ``view`` 4-D inputs call ``contiguous()`` first (logged)."""
    from diffusers.models.attention_processor import Attention

    for path, attn in ctx.modules(lambda p, m: isinstance(m, Attention)):
        # only attention applied directly to conv features gets 4-D inputs (VAE / UNetMidBlock2D style)
        image_shaped = getattr(attn, "group_norm", None) is not None or getattr(attn, "residual_connection", False)
        if not image_shaped or base_processor(attn.processor) is None:
            continue
        if isinstance(attn.processor, BackendAttnProcessor) and attn.processor.contiguous_4d:
            continue  # done by an earlier pass
        ctx.swap(f"{path}.processor", BackendAttnProcessor(attn.processor, contiguous_4d=True),
                 "4-D inputs made contiguous before the processor's view", parent=attn, attr="processor")
