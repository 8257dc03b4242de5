"""Frame-strided temporal attention: temporal attention without the layout copies (opt-in pass).

The standard temporal path (diffusers ``TransformerTemporalModel``, as in the ModelScope / Make-A-Video UNet3D)
moves frames into the sequence position with copies::

    x: [B*F, C, H, W] -> view [B, F, C, H, W] -> permute -> GroupNorm (copies the permuted input to contiguous)
      -> permute(0, 3, 4, 2, 1).reshape -> [B*H*W, F, C]            (copy: every element moves)
      -> proj_in -> blocks (attention over F) -> proj_out
      -> reshape(B, H, W, F, C).permute(0, 3, 4, 1, 2).contiguous()  (copy back) -> + residual

and every temporal attention call then runs B*H*W*heads tiny [F, d] x [d, F] problems. This module computes the
same function with frames kept in the batch (the spatial layers' layout):

* **Attention over frames on strided views** (:func:`frame_strided_attention`): one GEMM with the concatenated
  Q/K/V weights gives ``qkv: [B*F, H*W, 3*inner]``; per video b,
  ``q = qkv[b].view(F, H*W, 3, heads, d)[:, :, 0].permute(1, 2, 0, 3)`` is a ``[H*W, heads, F, d]`` *view*
  (strides (3*inner, d, H*W*3*inner, 1)) that goes to the attention entry point as it is - all heads and
  positions of the video in one call (the fused SDPA kernel takes strided inputs; the ``baseline`` backend copies
  them, as it does in the standard path). The one copy left writes the output back with frames in the batch
  (``[F, H*W, inner]``), merging the heads. Its input may be any strided view: the UNet's ``[B*F, C, H*W]``
  read as ``[B*F, H*W, C]`` (a transpose view) needs no layout copy at all, and the output's way back to
  channel-first is the residual add (which reads the transposed view and writes ``[B*F, C, H, W]``).
* **The pass** (:func:`apply`) patches diffusers ``TransformerTemporalModel``: GroupNorm as before (torch's
  kernel on the permuted view), then one copy to ``[B*F, H*W, C]`` (frames into the batch instead of into the
  sequence), ``proj_in``, the blocks (their LayerNorms and feed-forwards are per-token, so they run on this
  layout unchanged; their attention uses :class:`FrameStridedAttnProcessor`), ``proj_out``, and the copy back
  fused into the residual add.

Copies of the activation per temporal transformer (flash backend): standard: GroupNorm's input copy, the copy
in, the copy out (3); pass: GroupNorm's input copy, the copy in, one per attention call (2 calls: 4). Inside a
whole temporal transformer the pass therefore saves no traffic - it pays off where the layout changes around
every attention call (the single layer of ``genscope temporal``'s sweep: no copies but the head merge) and
where the strided SDPA call is faster than the standard one; both are measured, not assumed.

Why hand-written: neither diffusers nor torch has an attention processor that takes the frame axis from a
strided view; ``scaled_dot_product_attention`` and ``bmm`` accept the strides, the rest is bookkeeping.
The pass routes every attention call through ``genscope.models.layers.attention.attention`` (same site and
kind ``temporal``), so backends, tracers and the profiler see it as before.

Numerical oracle: the pass changes the order of floating-point operations only (the fused Q/K/V GEMM, the
residual add); :func:`check_equivalence` gives its relative error against the unmodified module.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn

from genscope.models.layers.attention import AttentionSite, GenscopeAttnProcessor, attention

PASS_NAME = "temporal-strided"


@dataclass(frozen=True)
class Swap:
    """One change the pass made: which module, what it was, what it is now."""

    path: str
    module_class: str
    before: str
    after: str


# ----------------------------------------------------------------------------------------------------
# Attention over frames on strided views
# ----------------------------------------------------------------------------------------------------
def _fused_qkv_weight(attn, cache: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[3*inner, C]`` weight (and bias) of to_q/to_k/to_v, concatenated once and cached per weight version."""
    parts = (attn.to_q, attn.to_k, attn.to_v)
    key = tuple((p.weight.data_ptr(), p.weight._version, p.weight.dtype, p.weight.device) for p in parts)
    if cache.get("key") != key:
        weight = torch.cat([p.weight for p in parts], dim=0)
        biases = [p.bias for p in parts]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else torch.zeros(p.weight.shape[0], dtype=p.weight.dtype,
                                                                    device=p.weight.device)
                              for b, p in zip(biases, parts, strict=True)])
        cache.update(key=key, weight=weight, bias=bias)
    return cache["weight"], cache["bias"]


def frame_strided_attention(attn, hidden_states: torch.Tensor, num_frames: int, *, site: AttentionSite | None = None,
                            cache: dict | None = None) -> torch.Tensor:
    """Self-attention over frames of a diffusers ``Attention`` for tokens laid out with frames in the batch.

    hidden_states: [B*F, P, C] (P = H*W spatial positions; any strides, e.g. the transpose view of the UNet's
    [B*F, C, H*W]) -> returns [B*F, P, C_out] (contiguous), equal to the standard temporal attention on the
    [B*P, F, C] layout. Per video: q, k, v: [P, heads, F, d] strided views of one fused projection.
    """
    bf, positions, _ = hidden_states.shape
    if num_frames < 1 or bf % num_frames:
        raise ValueError(f"batch*frames {bf} is not a multiple of num_frames {num_frames}")
    batch = bf // num_frames
    heads = attn.heads
    weight, bias = _fused_qkv_weight(attn, cache if cache is not None else {})
    inner = weight.shape[0] // 3
    head_dim = inner // heads
    # qkv: [B*F, P, 3*inner] - one GEMM; a transposed-view input is read in place (no layout copy)
    qkv = torch.matmul(hidden_states, weight.t())
    if bias is not None:
        qkv += bias
    qkv = qkv.view(batch, num_frames, positions, 3, heads, head_dim)
    out = torch.empty(batch, num_frames, positions, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    for b in range(batch):
        # q, k, v: [P, heads, F, d] views, strides (3*inner, d, P*3*inner, 1)
        q = qkv[b, :, :, 0].permute(1, 2, 0, 3)
        k = qkv[b, :, :, 1].permute(1, 2, 0, 3)
        v = qkv[b, :, :, 2].permute(1, 2, 0, 3)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        o = attention(q, k, v, site=site, kind="temporal", scale=attn.scale)  # [P, heads, F, d]
        out[b].copy_(o.permute(2, 0, 1, 3))  # -> [F, P, heads, d]: frames back in the batch, heads merged
    hidden = attn.to_out[0](out.view(bf, positions, inner))  # [B*F, P, C_out]
    hidden = attn.to_out[1](hidden)
    return hidden / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else hidden


def supports(attn) -> bool:
    """The features of diffusers ``Attention`` this processor reproduces (plain self-attention)."""
    return (attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
            and not attn.is_cross_attention and getattr(attn, "added_kv_proj_dim", None) is None
            and not getattr(attn, "only_cross_attention", False) and attn.to_q.weight.shape == attn.to_k.weight.shape)


class FrameStridedAttnProcessor:
    """diffusers attention processor for temporal self-attention on the ``[B*F, H*W, C]`` layout.

    Called with ``num_frames`` (passed by the patched ``TransformerTemporalModel`` through
    ``cross_attention_kwargs``) it attends over frames with :func:`frame_strided_attention`; called without it
    (or with inputs it does not handle) it is the standard processor on the ``[B*H*W, F, C]`` layout.
    """

    def __init__(self, site: AttentionSite):
        self.site = site
        self.standard = GenscopeAttnProcessor(site)
        self._cache: dict = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int | None = None, *args, **kwargs):
        if (num_frames is None or encoder_hidden_states is not None or attention_mask is not None
                or hidden_states.ndim != 3):
            return self.standard(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return frame_strided_attention(attn, hidden_states, num_frames, site=self.site, cache=self._cache)


# ----------------------------------------------------------------------------------------------------
# TransformerTemporalModel on the UNet's layout
# ----------------------------------------------------------------------------------------------------
def temporal_model_forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, timestep=None,
                           class_labels=None, num_frames: int = 1, cross_attention_kwargs=None, return_dict=True):
    """Drop-in ``TransformerTemporalModel.forward`` that keeps frames in the batch (see the module docstring)."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    batch_frames, channels, height, width = hidden_states.shape
    batch = batch_frames // num_frames
    residual = hidden_states
    # GroupNorm over the video [B, C, F, H, W] (a permuted view, as diffusers does): torch's kernel is faster
    # than any layout-preserving reduction written with torch ops on CPU
    x = self.norm(hidden_states.view(batch, num_frames, channels, height, width).permute(0, 2, 1, 3, 4))
    # frames into the batch, channels last: [B, C, F, H, W] -> [B*F, H*W, C] (the one layout copy)
    x = x.permute(0, 2, 3, 4, 1).reshape(batch_frames, height * width, channels)
    x = self.proj_in(x)  # [B*F, H*W, inner]
    kwargs = dict(cross_attention_kwargs or {}, num_frames=num_frames)
    for block in self.transformer_blocks:
        x = block(x, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                  cross_attention_kwargs=kwargs, class_labels=class_labels)
    x = self.proj_out(x)  # [B*F, H*W, C]
    # the copy back to channel-first is the residual add itself: [B*F, C, H, W]
    output = torch.add(residual, x.transpose(1, 2).view(batch_frames, channels, height, width))
    if not return_dict:
        return (output,)
    return TransformerTemporalModelOutput(sample=output)


def _block_supported(block) -> bool:
    return (getattr(block, "norm_type", None) == "layer_norm" and getattr(block, "pos_embed", None) is None
            and not hasattr(block, "fuser") and all(supports(a) for a in (block.attn1, block.attn2) if a is not None))


def apply(model: nn.Module, filter_fn=None) -> list[Swap]:
    """Patch every diffusers ``TransformerTemporalModel`` in ``model`` (opt-in); returns the swaps made.

    ``filter_fn(path, module) -> bool`` limits the pass to some modules. Attention sites are kept (installed
    by ``install_attention`` first: the workload's ``build`` does it); a module whose blocks use features the
    pass does not reproduce (positional embeddings, ada norms, cross-attention) is left as it is.
    """
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    swaps: list[Swap] = []
    for path, module in model.named_modules():
        if not isinstance(module, TransformerTemporalModel) or getattr(module, "_genscope_strided", False):
            continue
        if filter_fn is not None and not filter_fn(path, module):
            continue
        if not all(_block_supported(b) for b in module.transformer_blocks):
            continue
        for name, sub in module.named_modules():
            if hasattr(sub, "set_processor") and hasattr(sub, "to_q"):
                site = getattr(sub, "_genscope_site", None) or AttentionSite(
                    path=f"{path}.{name}", kind="temporal", module_class=type(sub).__name__)
                before = type(sub.processor).__name__
                # a processor kept from an earlier apply/remove keeps its fused-weight cache
                kept = getattr(sub, "_genscope_strided_processor", None)
                sub.set_processor(kept if isinstance(kept, FrameStridedAttnProcessor) else
                                  FrameStridedAttnProcessor(site))
                swaps.append(Swap(f"{path}.{name}", type(sub).__name__, before, "FrameStridedAttnProcessor"))
        module.forward = types.MethodType(temporal_model_forward, module)
        module._genscope_strided = True
        swaps.append(Swap(path, type(module).__name__, "TransformerTemporalModel.forward",
                          "temporal_model_forward (frames kept in the batch)"))
    return swaps


def remove(model: nn.Module) -> int:
    """Undo :func:`apply` (the standard genscope processors come back); returns the modules restored."""
    restored = 0
    for module in model.modules():
        if getattr(module, "_genscope_strided", False):
            del module.forward
            module._genscope_strided = False
            for sub in module.modules():
                if isinstance(getattr(sub, "processor", None), FrameStridedAttnProcessor):
                    sub._genscope_strided_processor = sub.processor
                    sub.set_processor(sub.processor.standard)
            restored += 1
    return restored


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_equivalence(module: nn.Module, hidden_states: torch.Tensor, num_frames: int) -> float:
    """Relative error of a patched ``TransformerTemporalModel`` against its standard forward on one input."""
    with torch.inference_mode():
        ours = module(hidden_states, num_frames=num_frames, return_dict=False)[0]
        standard = type(module).forward(module, hidden_states, num_frames=num_frames, return_dict=False)[0]
    return relative_error(ours, standard)


__all__ = ["PASS_NAME", "FrameStridedAttnProcessor", "Swap", "apply", "check_equivalence",
           "frame_strided_attention", "remove", "temporal_model_forward"]
