"""Pass ``prepacked_conv``: convolutions on oneDNN-prepacked weights, channels-last, residual add fused.

Beyond the paper, for CPUs (item 4 of issue 13, "memory layout and weight packing"). ``F.conv2d`` on CPU
reorders the weight into oneDNN's blocked layout at *every* call and, for NCHW tensors, reorders the input and
the output too. This pass does what inductor's ``freezing`` does for a frozen graph, module by module and
without compiling anything:

* the weight is reordered once (``torch._C._nn.mkldnn_reorder_conv2d_weight`` on ``weight.to_mkldnn()``) and
  the convolution runs as ``torch.ops.mkldnn._convolution_pointwise`` (oneDNN, output channels-last: the
  activations stay NHWC from the first convolution on - GroupNorm, SiLU, upsampling and diffusers'
  ``Transformer2DModel`` keep or accept the format; the 4-D attention processors get ``contiguous()``, as in
  :mod:`genscope.passes.channels_last`);
* the ``ResnetBlock2D`` residual ``(shortcut + conv2(h)) / output_scale_factor`` is one oneDNN convolution
  with a binary ``add`` post-op (``_convolution_pointwise.binary``): the output is written once
  (:meth:`PrepackedConv2d.forward_add`, used by :class:`~genscope.passes.fused_groupnorm` 's block).

Why these private ops: they are the ones inductor itself emits for frozen CPU convolutions
(``torch/_inductor/fx_passes/mkldnn_fusion.py``); no public API prepacks a convolution weight. They are
checked to exist (``torch.backends.mkldnn.is_available()`` and the op) and the pass notes it and changes
nothing where they do not. Measured on this checkout's Intel Xeon (2 threads, [2, 320, 32, 32] fp32, 3x3):
F.conv2d + add 88-96 ms, prepacked conv with the add fused 50-70 ms (interleaved; the machine was shared).

The packed weight is an opaque oneDNN tensor kept outside the state_dict (the original ``weight`` stays,
same keys and values); it is rebuilt lazily when the weight's dtype changes (``bf16_weights`` after this
pass) and is not copied by ``copy.deepcopy`` (rebuilt at the next call). Memory: one more copy of every
swapped convolution's weight.

Swap: ``Conv2d`` (zero padding, on CPU) -> :class:`PrepackedConv2d` (a ``Conv2d`` subclass sharing weight and
bias). Oracle: the module and the fused residual add against ``F.conv2d`` in the model's dtype, on the
channels-last input it gets after this pass (the same oneDNN arithmetic: error ratio 1.00). On an NCHW input
``F.conv2d`` can take a more accurate oneDNN kernel (measured on an AVX-512 Xeon: the prepacked / channels-last
kernel has 4.1x its relative error at 320 channels, 1.9x at 64, still ~1e-6): that ratio is noted, not required
- the same holds for :mod:`genscope.passes.channels_last`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.kernels.cpu import CONV_RANGE
from genscope.passes.oracle import check_functions, check_module


def prepack_available() -> str | None:
    """None if oneDNN prepacked convolutions run here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise") or not hasattr(torch._C._nn,
                                                                              "mkldnn_reorder_conv2d_weight"):
        return "torch.ops.mkldnn._convolution_pointwise / mkldnn_reorder_conv2d_weight are missing in this torch"
    return None


PACKABLE = (torch.float32, torch.bfloat16, torch.float16)  # what oneDNN's dense_to_mkldnn accepts (floats)


class _PackedWeight:
    """Holder of the opaque packed weight; ``copy.deepcopy`` gives an empty holder (repacked on next use)."""

    def __init__(self):
        self.tensor: torch.Tensor | None = None
        self.source: tuple | None = None  # (dtype, data_ptr, version) of the weight it was packed from

    def __deepcopy__(self, memo):
        return _PackedWeight()


class PrepackedConv2d(nn.Conv2d):
    """``Conv2d`` run by oneDNN on a weight reordered once; output channels-last."""

    def packed_weight(self) -> torch.Tensor:
        holder = self.__dict__.setdefault("_packed", _PackedWeight())
        w = self.weight
        source = (w.dtype, w.data_ptr(), w._version)
        if holder.tensor is None or holder.source != source:
            # x: [N, C, H, W]; the shape hint only steers oneDNN's choice of blocking (any shape runs on it)
            holder.tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.detach().contiguous().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation),
                self.groups, [2, self.in_channels, 64, 64])
            holder.source = source
        return holder.tensor

    def _bias(self, x: torch.Tensor):
        return None if self.bias is None else self.bias.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or x.dim() != 4 or x.dtype not in PACKABLE:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        with torch.profiler.record_function(CONV_RANGE):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.packed_weight(), self._bias(x), list(self.padding), list(self.stride), list(self.dilation),
                self.groups, "none", [], None)

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """conv(x) + other as one oneDNN convolution (binary ``add`` post-op)."""
        if (x.device.type != "cpu" or x.dtype != self.weight.dtype or x.dim() != 4 or other.dtype != x.dtype
                or x.dtype not in PACKABLE):
            return self.forward(x) + other
        other = other.contiguous(memory_format=torch.channels_last)
        with torch.profiler.record_function(CONV_RANGE):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self.packed_weight(), self._bias(x), list(self.padding), list(self.stride),
                list(self.dilation), self.groups, "add", None, None, [], None)


def conv_add(conv: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """conv(x) + other, fused where ``conv`` can (a :class:`PrepackedConv2d`, or a Winograd layer whose direct
    convolution is one)."""
    forward_add = getattr(conv, "forward_add", None)  # PrepackedConv2d, WinogradConv2d over one
    return forward_add(x, other) if forward_add is not None else conv(x) + other


def is_prepack_candidate(module: nn.Module) -> bool:
    from genscope.passes.channels_last import ChannelsLastConv2d

    return (type(module) in (nn.Conv2d, ChannelsLastConv2d) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


class PrepackedConvPass(Pass):
    name = "prepacked_conv"
    title = "prepacked conv + fused residual"

    def run(self, ctx: PassContext) -> None:
        if ctx.device.type != "cpu":
            ctx.note(f"oneDNN prepacking is a CPU path; nothing changed on {ctx.device.type}")
            return
        why_not = prepack_available()
        if why_not is not None:
            ctx.note(f"{why_not}; nothing changed")
            return
        convs = list(ctx.modules(lambda p, m: is_prepack_candidate(m)))
        if not convs:
            ctx.note("no Conv2d to prepack in this model; nothing changed")
            return
        checked: set[tuple] = set()
        for path, conv in convs:
            new = shallow_clone(conv, PrepackedConv2d)
            signature = (tuple(conv.kernel_size), tuple(conv.stride), conv.groups)
            if signature not in checked:
                checked.add(signature)
                gen = torch.Generator("cpu").manual_seed(0)
                x = torch.randn(2, conv.in_channels, 9, 9, generator=gen).to(ctx.device, ctx.dtype)
                nchw = check_module(self.name, conv, new, (x,), what="PrepackedConv2d vs NCHW F.conv2d")
                x = x.contiguous(memory_format=torch.channels_last)  # what the convolution sees after this pass
                ctx.require(check_module(self.name, conv, new, (x,), what="PrepackedConv2d"))
                if not nchw.ok:
                    ctx.note(f"{path}: {nchw.error / nchw.baseline_error:.1f}x the relative error of F.conv2d on an "
                             f"NCHW input ({nchw.error:.1e} vs {nchw.baseline_error:.1e}): oneDNN's NCHW kernel "
                             "accumulates more accurately here; on channels-last input the two are the same")
                other = torch.randn_like(conv(x)).contiguous(memory_format=torch.channels_last)
                ctx.require(check_functions(self.name, "PrepackedConv2d + residual add", new.forward_add,
                                            lambda x, o, c=conv: c(x) + o, lambda x, o, c=conv: _conv64(c, x) + o,
                                            (x, other), ctx.dtype))
            ctx.swap(path, new, "weight reordered once for oneDNN; output channels-last")
        from genscope.passes.channels_last import contiguous_4d_attention

        contiguous_4d_attention(ctx)


def _conv64(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight.to(torch.float64), None if conv.bias is None else conv.bias.to(torch.float64),
                    conv.stride, conv.padding, conv.dilation, conv.groups)
