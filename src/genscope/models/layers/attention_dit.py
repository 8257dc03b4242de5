"""diffusers adapter (diffusion transformers): processors for joint text+image and full 3-D attention.

Each processor below follows the diffusers processor named in its docstring line for line (projections,
QK-norm, RoPE, output projections), except that the attention itself goes to the entry point
(:func:`genscope.models.layers.attention.attention`) with the call's kind and its text tokens:

===================  ===========================  ============================================  =============
model                diffusers processor          sequence attended (text tokens T)             kind
===================  ===========================  ============================================  =============
Flux (dual, single)  ``FluxAttnProcessor``        ``[text; image]``                             joint
SD3 / SD3.5          ``JointAttnProcessor2_0``    ``[image; text]``                             joint
Wan 2.1              ``WanAttnProcessor``         attn1: video tokens; attn2: text keys         spatiotemporal / cross
CogVideoX            ``CogVideoXAttnProcessor2_0``  ``[text; video]``                           spatiotemporal
HunyuanVideo         ``HunyuanVideoAttnProcessor2_0``  ``[video; text]``                        spatiotemporal
Wan-VAE              ``WanAttentionBlock.forward``  one frame's pixels, one head                self
===================  ===========================  ============================================  =============

``context_len`` / ``query_context_len`` of each call are the text tokens among its keys / queries, so the
sequence-length tracer counts text and image/video tokens separately. Flux's single-stream blocks hand
their attention the already concatenated sequence; a forward pre-hook on each block records the text length
for its processor (:func:`track_text_length`).

Why hand-written: diffusers' processors call ``dispatch_attention_fn`` or SDPA themselves; there is no hook
in diffusers that reports a call's kind and text/image split, and its dispatcher has a fixed set of backends.
Image-to-video branches (Wan I2V's added image keys, IP adapters) are not supported and refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from genscope.models.layers.attention import AttentionSite, attention


def _bhld(x: torch.Tensor) -> torch.Tensor:
    """[B, L, heads, d] -> [B, heads, L, d] (diffusers' dispatch layout -> the entry point's)."""
    return x.transpose(1, 2)


class _DiTProcessor:
    kind = "joint"

    def __init__(self, site: AttentionSite):
        self.site = site
        self.text_len = 0  # set per call by track_text_length where the processor cannot see it


class GenscopeFluxAttnProcessor(_DiTProcessor):
    """diffusers ``FluxAttnProcessor`` (dual-stream: text and image projected apart; single-stream: one)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # [B, L, heads, d]
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        text_len = self.text_len
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            text_len = encoder_query.shape[1]
            query = torch.cat([encoder_query, query], dim=1)  # [B, T + H*W, heads, d]
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        hidden_states = attention(_bhld(query), _bhld(key), _bhld(value), site=self.site, attn_mask=attention_mask,
                                  context_len=text_len, query_context_len=text_len)
        hidden_states = _bhld(hidden_states).flatten(2, 3).to(query.dtype)  # [B, L, heads*d]
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


class GenscopeJointAttnProcessor(_DiTProcessor):
    """diffusers ``JointAttnProcessor2_0`` (SD3 / SD3.5 MMDiT): queries and keys ``[image; text]``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, H*W, d]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_len = 0
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            eq = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ek = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ev = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query = torch.cat([query, eq], dim=2)  # [B, heads, H*W + T, d]
            key = torch.cat([key, ek], dim=2)
            value = torch.cat([value, ev], dim=2)
        hidden_states = attention(query, key, value, site=self.site, context_len=text_len,
                                  query_context_len=text_len)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (hidden_states[:, : residual.shape[1]],
                                                    hidden_states[:, residual.shape[1]:])
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE, as inlined in diffusers' ``WanAttnProcessor``."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class GenscopeWanAttnProcessor(_DiTProcessor):
    """diffusers ``WanAttnProcessor`` (text-to-video): attn1 over every video token, attn2 to the text."""

    kind = "spatiotemporal"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            from genscope.errors import UserError

            raise UserError("Wan image-to-video attention (added image keys) is not supported by genscope")
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # [B, F*h*w, heads, d]
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)
        text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        hidden_states = attention(_bhld(query), _bhld(key), _bhld(value), site=self.site, attn_mask=attention_mask,
                                  context_len=text_len)
        hidden_states = _bhld(hidden_states).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


class GenscopeCogVideoXAttnProcessor(_DiTProcessor):
    """diffusers ``CogVideoXAttnProcessor2_0``: one sequence ``[text; video]``, RoPE on the video part."""

    kind = "spatiotemporal"

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [B, T + F*h*w, C]
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, L, d]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)
        hidden_states = attention(query, key, value, site=self.site, attn_mask=attention_mask, context_len=text_len,
                                  query_context_len=text_len)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states, hidden_states = hidden_states.split([text_len, hidden_states.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states


class GenscopeHunyuanVideoAttnProcessor(_DiTProcessor):
    """diffusers ``HunyuanVideoAttnProcessor2_0``: ``[video; text]`` (dual-stream: text projected apart)."""

    kind = "spatiotemporal"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))  # [B, L, heads, d]
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single_stream:  # RoPE on the video tokens only
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                   query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                 key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = (torch.cat([query, eq], dim=1), torch.cat([key, ek], dim=1),
                                 torch.cat([value, ev], dim=1))
        hidden_states = attention(_bhld(query), _bhld(key), _bhld(value), site=self.site, attn_mask=attention_mask,
                                  context_len=text_len, query_context_len=text_len)
        hidden_states = _bhld(hidden_states).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (hidden_states[:, :-text_len], hidden_states[:, -text_len:])
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


# diffusers processor class name -> genscope processor class
DIT_PROCESSORS: dict[str, type[_DiTProcessor]] = {
    "FluxAttnProcessor": GenscopeFluxAttnProcessor,
    "JointAttnProcessor2_0": GenscopeJointAttnProcessor,
    "WanAttnProcessor": GenscopeWanAttnProcessor,
    "CogVideoXAttnProcessor2_0": GenscopeCogVideoXAttnProcessor,
    "HunyuanVideoAttnProcessor2_0": GenscopeHunyuanVideoAttnProcessor,
}


def dit_kind(processor_class: type[_DiTProcessor], module: nn.Module) -> str:
    """The kind of a DiT attention: cross for Wan's attn2 (keys from the text), else the processor's kind."""
    return "cross" if getattr(module, "is_cross_attention", False) and processor_class is \
        GenscopeWanAttnProcessor else processor_class.kind


def track_text_length(block: nn.Module, processor: _DiTProcessor) -> None:
    """Flux single-stream block: record ``encoder_hidden_states``' length for the processor before each call."""

    def pre_hook(module, args, kwargs):
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        processor.text_len = text.shape[1] if text is not None else 0

    previous = getattr(block, "_genscope_text_hook", None)
    if previous is not None:  # installed again: one hook per block
        previous.remove()
    block._genscope_text_hook = block.register_forward_pre_hook(pre_hook, with_kwargs=True)


def wan_vae_attention_forward(site: AttentionSite) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """diffusers ``WanAttentionBlock.forward`` (Wan-VAE: one head over each frame's pixels) via the entry point."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        batch_size, channels, time, height, width = x.size()
        x = x.permute(0, 2, 1, 3, 4).reshape(batch_size * time, channels, height, width)
        x = self.norm(x)
        qkv = self.to_qkv(x).reshape(batch_size * time, 1, channels * 3, -1)
        qkv = qkv.permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # [B*F, 1, h*w, C]
        x = attention(q, k, v, site=site)
        x = x.squeeze(1).permute(0, 2, 1).reshape(batch_size * time, channels, height, width)
        x = self.proj(x)
        x = x.view(batch_size, time, channels, height, width).permute(0, 2, 1, 3, 4)
        return x + identity

    return forward
