"""Pass ``fused_groupnorm``: GroupNorm and the SiLU that follows it as one operator.

Chen et al. 2023, Section 3.1 ("Specialized kernels: Group Norm and GELU"): reshape, mean, variance and
normalize in one GPU command without intermediate tensors. In diffusers' ``ResnetBlock2D`` each GroupNorm
is followed by the block's SiLU (``norm1 -> nonlinearity``, ``norm2 -> nonlinearity``), and in
``UNet2DConditionModel`` / the VAE's ``Encoder`` / ``Decoder`` ``conv_norm_out`` is followed by ``conv_act``;
both pairs become one :class:`FusedGroupNormSiLU`.

Swaps (each logged):
* ``ResnetBlock2D`` -> :class:`FusedResnetBlock2D` (same children and tensors; its forward does not call
  the nonlinearity after the norms), with ``norm1`` / ``norm2`` -> :class:`FusedGroupNormSiLU`
  (blocks with ``time_embedding_norm`` "default" - the UNet's - or "group" - the VAE's, where diffusers'
  forward adds no time embedding - and a SiLU nonlinearity; with "scale_shift" an affine sits between norm2
  and the SiLU);
* ``conv_norm_out`` -> :class:`FusedGroupNormSiLU` and ``conv_act`` -> ``Identity`` in the three models
  whose forward applies ``conv_act`` only right after ``conv_norm_out`` (diffusers 0.42);
* other GroupNorms -> :class:`FusedGroupNorm` on the Triton backend only (one pass over the tensor); on
  CPU ATen's ``native_group_norm`` already is a single kernel, so they are left as they are (noted).

Implementations: CPU :func:`genscope.passes.kernels.cpu.group_norm_silu` (ATen GroupNorm, SiLU in place:
no intermediate tensor; the SiLU is still a separate sweep - an inductor-generated single kernel was measured
and rejected for its compile time, see :mod:`genscope.passes.kernels.cpu`), CUDA
:func:`genscope.passes.kernels.triton_kernels.group_norm_silu_triton` (one launch).
"""

from __future__ import annotations

import torch
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.oracle import check_module
from genscope.passes.prepacked_conv import conv_add

PAIR_PARENTS = ("UNet2DConditionModel", "Encoder", "Decoder")  # conv_norm_out -> conv_act only


class FusedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed by the fused kernel (same parameters, same state_dict)."""

    silu: bool = False
    backend: str = "torch"

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, backend: str) -> FusedGroupNorm:
        new = shallow_clone(norm, cls)
        new.backend = backend
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "triton" and x.is_cuda:
            from genscope.passes.kernels.triton_kernels import group_norm_silu_triton

            return group_norm_silu_triton(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu)
        return kcpu.group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", silu={self.silu}, backend={self.backend}"


class FusedGroupNormSiLU(FusedGroupNorm):
    """SiLU(GroupNorm(x)) as one operator."""

    silu = True


def _resnet_block_class():
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D


def _make_fused_block_class():
    ResnetBlock2D = _resnet_block_class()

    class FusedResnetBlock2D(ResnetBlock2D):
        """diffusers ``ResnetBlock2D`` (time_embedding_norm "default", or "group" as the VAE's) whose norms
        include the SiLU, and whose residual add is fused into ``conv2`` where that convolution can
        (:func:`genscope.passes.prepacked_conv.conv_add`: a oneDNN post-op after ``prepacked_conv``).

        The forward is diffusers 0.42's, minus the two ``self.nonlinearity`` calls that follow ``norm1`` and
        ``norm2`` (now inside :class:`FusedGroupNormSiLU`); the time-embedding SiLU is kept.
        """

        def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            hidden_states = self.norm1(input_tensor)  # GroupNorm + SiLU
            if self.upsample is not None:
                if hidden_states.shape[0] >= 64:
                    input_tensor = input_tensor.contiguous()
                    hidden_states = hidden_states.contiguous()
                input_tensor = self.upsample(input_tensor)
                hidden_states = self.upsample(hidden_states)
            elif self.downsample is not None:
                input_tensor = self.downsample(input_tensor)
                hidden_states = self.downsample(hidden_states)
            hidden_states = self.conv1(hidden_states)
            if self.time_emb_proj is not None:
                if not self.skip_time_act:
                    temb = self.nonlinearity(temb)
                temb = self.time_emb_proj(temb)[:, :, None, None]
            if self.time_embedding_norm == "default" and temb is not None:
                hidden_states = hidden_states + temb
            hidden_states = self.norm2(hidden_states)  # GroupNorm + SiLU
            hidden_states = self.dropout(hidden_states)
            if self.conv_shortcut is not None:
                input_tensor = self.conv_shortcut(input_tensor)
            if self.output_scale_factor == 1:
                # one oneDNN convolution with the residual as a post-op where conv2 is prepacked
                return conv_add(self.conv2, hidden_states, input_tensor)
            hidden_states = self.conv2(hidden_states)
            return (input_tensor + hidden_states) / self.output_scale_factor

    return FusedResnetBlock2D


_FUSED_BLOCK = None


def fused_resnet_block_class():
    global _FUSED_BLOCK
    if _FUSED_BLOCK is None:
        _FUSED_BLOCK = _make_fused_block_class()
    return _FUSED_BLOCK


def _is_plain_group_norm(module: nn.Module) -> bool:
    return type(module) is nn.GroupNorm


def _block_eligible(block: nn.Module) -> str | None:
    """None if the block can be fused, else why not."""
    norm = getattr(block, "time_embedding_norm", None)
    if norm == "scale_shift":
        return "time_embedding_norm='scale_shift' (an affine sits between norm2 and SiLU)"
    if norm not in ("default", "group"):
        return f"time_embedding_norm={norm!r}"
    if not isinstance(getattr(block, "nonlinearity", None), nn.SiLU):
        return f"nonlinearity is {type(getattr(block, 'nonlinearity', None)).__name__}, not SiLU"
    if not (_is_plain_group_norm(block.norm1) and _is_plain_group_norm(block.norm2)):
        return "norm1/norm2 are not plain GroupNorm"
    if block.training:
        return "the block is in training mode (dropout active)"
    return None


def _example_block_inputs(block: nn.Module, device, dtype, size: int = 8) -> tuple:
    gen = torch.Generator("cpu").manual_seed(0)
    channels = block.norm1.num_channels
    x = torch.randn(2, channels, size, size, generator=gen).to(device=device, dtype=dtype)
    temb = None
    if block.time_emb_proj is not None:
        temb = torch.randn(2, block.time_emb_proj.in_features, generator=gen).to(device=device, dtype=dtype)
    return (x, temb)


def _example_norm_input(norm: nn.GroupNorm, device, dtype, size: int = 8) -> torch.Tensor:
    gen = torch.Generator("cpu").manual_seed(0)
    return (torch.randn(2, norm.num_channels, size, size, generator=gen) * 3 + 1).to(device=device, dtype=dtype)


class FusedGroupNormPass(Pass):
    name = "fused_groupnorm"
    title = "fused GroupNorm+SiLU"

    def run(self, ctx: PassContext) -> None:
        ResnetBlock2D = _resnet_block_class()
        fused_block_cls = fused_resnet_block_class()
        checked: set[tuple] = set()
        where = "one Triton kernel" if ctx.backend == "triton" else "ATen GroupNorm + in-place SiLU, no intermediate"
        skipped_blocks = []
        fused_norm_ids: set[int] = set()
        for path, block in ctx.modules(lambda p, m: type(m) is ResnetBlock2D):
            why_not = _block_eligible(block)
            if why_not is not None:
                skipped_blocks.append(f"{path} ({why_not})")
                continue
            new_block = shallow_clone(block, fused_block_cls)
            norm1 = FusedGroupNormSiLU.from_group_norm(block.norm1, ctx.backend)
            norm2 = FusedGroupNormSiLU.from_group_norm(block.norm2, ctx.backend)
            new_block._modules["norm1"] = norm1
            new_block._modules["norm2"] = norm2
            signature = ("block", block.norm1.num_channels, block.norm2.num_channels,
                         block.conv1.out_channels, block.time_emb_proj is not None)
            if signature not in checked:
                checked.add(signature)
                ctx.require(ctx.cached_check(
                    {"what": "FusedResnetBlock2D", "signature": "-".join(map(str, signature)), "impl": ctx.backend},
                    lambda block=block, new_block=new_block: check_module(
                        self.name, block, new_block, _example_block_inputs(block, ctx.device, ctx.dtype),
                        what="FusedResnetBlock2D")))
            ctx.swap(path, new_block, f"norm1 and norm2 fused with the SiLU that follows each ({where})")
            # the norms, swapped inside the new block (logged so that every replaced module is listed)
            new_block._modules["norm1"] = block.norm1
            new_block._modules["norm2"] = block.norm2
            ctx.swap(f"{path}.norm1", norm1, "GroupNorm + SiLU (norm1 -> nonlinearity)", parent=new_block,
                     attr="norm1")
            ctx.swap(f"{path}.norm2", norm2, "GroupNorm + SiLU (norm2 -> nonlinearity)", parent=new_block,
                     attr="norm2")
            fused_norm_ids.update({id(block.norm1), id(block.norm2)})
        # conv_norm_out -> conv_act pairs
        parents = [("", ctx.model)] + list(ctx.modules())
        for path, parent in parents:
            if type(parent).__name__ not in PAIR_PARENTS:
                continue
            norm, act = getattr(parent, "conv_norm_out", None), getattr(parent, "conv_act", None)
            if not (_is_plain_group_norm(norm) and isinstance(act, nn.SiLU)):
                continue
            prefix = f"{path}." if path else ""
            if ctx.filter_fn is not None and not ctx.filter_fn(f"{prefix}conv_norm_out", norm):
                continue
            fused = FusedGroupNormSiLU.from_group_norm(norm, ctx.backend)
            ctx.require(ctx.cached_check(
                {"what": "FusedGroupNormSiLU", "channels": norm.num_channels, "groups": norm.num_groups,
                 "impl": ctx.backend},
                lambda norm=norm, act=act, fused=fused: check_module(
                    self.name, nn.Sequential(norm, act), fused, (_example_norm_input(norm, ctx.device, ctx.dtype),),
                    what="FusedGroupNormSiLU")))
            ctx.swap(f"{prefix}conv_norm_out", fused, f"conv_norm_out fused with conv_act ({where})")
            ctx.swap(f"{prefix}conv_act", nn.Identity(), "SiLU applied inside conv_norm_out")
            fused_norm_ids.add(id(norm))
        # standalone GroupNorms
        rest = [(p, m) for p, m in ctx.modules(lambda p, m: _is_plain_group_norm(m)) if id(m) not in fused_norm_ids]
        if ctx.backend == "triton":
            for path, norm in rest:
                fused = FusedGroupNorm.from_group_norm(norm, ctx.backend)
                ctx.require(check_module(self.name, norm, fused, (_example_norm_input(norm, ctx.device, ctx.dtype),),
                                         what="FusedGroupNorm"))
                ctx.swap(path, fused, "GroupNorm in one Triton kernel (one read for the statistics, one to normalize)")
        elif rest:
            ctx.note(f"{len(rest)} GroupNorm(s) without a following SiLU left as they are: on CPU ATen's "
                     "native_group_norm is already a single fused kernel")
        if skipped_blocks:
            ctx.note(f"{len(skipped_blocks)} ResnetBlock2D not fused: " + "; ".join(skipped_blocks[:3]))
        if not ctx.log or not any(s.pass_name == self.name for s in ctx.log):
            if not any(True for _ in ctx.modules(lambda p, m: isinstance(m, nn.GroupNorm))):
                ctx.note("no GroupNorm in this model; nothing changed")
