"""diffusers adapter (UNet era): attention processors that route through the entry point.

The processors follow diffusers' ``AttnProcessor2_0`` and ``AttnAddedKVProcessor2_0`` line for line, except
that the SDPA call is replaced by :func:`genscope.models.layers.attention.attention`. The diffusion
transformers' processors (joint text+image, full 3-D attention) are in :mod:`.attention_dit`.
"""

from __future__ import annotations

import torch

from genscope.models.layers.attention import AttentionSite, attention


# ----------------------------------------------------------------------------------------------------
class GenscopeAttnProcessor:
    """diffusers ``AttnProcessor2_0`` with the SDPA call replaced by :func:`attention`."""

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        # q: [B, heads, Lq, d]; k, v: [B, heads, Lk, d]  (for temporal attention B = batch*H*W, L = frames)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = attention(query, key, value, site=self.site, attn_mask=attention_mask, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class GenscopeAddedKVAttnProcessor:
    """diffusers ``AttnAddedKVProcessor2_0`` (DeepFloyd IF's joint text+image attention) through the entry point.

    keys/values = [text tokens projected by add_k/add_v ; image tokens], so Lk = text_len + H*W.
    """

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        hidden_states = hidden_states.view(hidden_states.shape[0], hidden_states.shape[1], -1).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size, out_dim=4)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states), out_dim=4)  # [B, heads, H*W, d]
        context_key = attn.head_to_batch_dim(attn.add_k_proj(encoder_hidden_states), out_dim=4)
        context_value = attn.head_to_batch_dim(attn.add_v_proj(encoder_hidden_states), out_dim=4)
        context_len = context_key.shape[2]
        if not attn.only_cross_attention:
            key = attn.head_to_batch_dim(attn.to_k(hidden_states), out_dim=4)
            value = attn.head_to_batch_dim(attn.to_v(hidden_states), out_dim=4)
            key = torch.cat([context_key, key], dim=2)  # [B, heads, T + H*W, d]
            value = torch.cat([context_value, value], dim=2)
        else:
            key, value = context_key, context_value
        # diffusers' AttnAddedKVProcessor2_0 uses SDPA's default scale (1/sqrt(d)), not attn.scale
        hidden_states = attention(query, key, value, site=self.site, attn_mask=attention_mask,
                                  context_len=context_len)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, residual.shape[1])
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        hidden_states = hidden_states.transpose(-1, -2).reshape(residual.shape)
        return hidden_states + residual
