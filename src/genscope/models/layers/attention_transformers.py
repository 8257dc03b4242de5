"""transformers adapter: one attention function registered in transformers' ``AttentionInterface``.

Models built with ``attn_implementation="genscope"`` (:func:`register_transformers_attention`) send every
attention call to :func:`genscope_transformers_attention`, which adapts transformers' calling convention
(GQA heads, T5's position bias, causal flags) to the entry point. Masks are built as for SDPA (boolean, or
``None`` where ``is_causal`` suffices), so causal calls reach the fused kernels without a materialized mask.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from genscope.models.layers.attention import (
    TRANSFORMERS_ATTN_IMPLEMENTATION,
    AttentionSite,
    _generic_site,
    attention,
)


# ----------------------------------------------------------------------------------------------------
def genscope_transformers_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                                    dropout: float = 0.0, scaling: float | None = None,
                                    is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                                    **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function (signature of ``sdpa_attention_forward``) through the entry point.

    query: [B, heads, Lq, d]; key/value: [B, kv_heads, Lk, d] -> returns ([B, Lq, heads, d], None)
    """
    kv_groups = getattr(module, "num_key_value_groups", 1) or 1
    if kv_groups > 1:  # grouped-query attention: repeat K/V heads (as transformers' repeat_kv)
        b, kvh, lk, d = key.shape
        key = key[:, :, None].expand(b, kvh, kv_groups, lk, d).reshape(b, kvh * kv_groups, lk, d)
        value = value[:, :, None].expand(b, kvh, kv_groups, lk, value.shape[-1]).reshape(
            b, kvh * kv_groups, lk, value.shape[-1])
    query_len, key_len = query.shape[2], key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    caller_causal = bool(is_causal)
    is_causal = bool(is_causal and query_len > 1 and attention_mask is None)
    if is_causal and key_len > query_len:
        # prefill into an empty static cache (transformers does the same): keys past Lq are masked anyway
        key, value = key[:, :, :query_len], value[:, :, :query_len]
        if position_bias is not None:
            position_bias = position_bias[..., :query_len]
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[2]]
    if position_bias is not None:
        neg = torch.finfo(query.dtype).min
        if attention_mask is None:
            mask = position_bias
            if is_causal:
                allowed = torch.ones(query_len, key.shape[2], dtype=torch.bool, device=query.device).tril()
                mask = position_bias.masked_fill(~allowed, neg)
                is_causal = False
        elif attention_mask.dtype == torch.bool:
            mask = position_bias.masked_fill(~attention_mask, neg)
        else:
            mask = position_bias + attention_mask
        attention_mask = mask
    site = getattr(module, "_genscope_site", None)
    if site is None:
        site = _generic_site("causal" if getattr(module, "is_causal", False) else "self")
    if caller_causal and site.kind == "self":
        # e.g. CLIP's text tower: its attention class is shared with the vision tower (is_causal=False) and
        # causality is passed per call - the call is causal even when the mask carries it
        site = _causal_site(site)
    out = attention(query, key, value, site=site, attn_mask=attention_mask, scale=scaling, is_causal=is_causal)
    return out.transpose(1, 2).contiguous(), None


_CAUSAL_SITES: dict[AttentionSite, AttentionSite] = {}


def _causal_site(site: AttentionSite) -> AttentionSite:
    if site not in _CAUSAL_SITES:
        _CAUSAL_SITES[site] = replace(site, kind="causal")
    return _CAUSAL_SITES[site]


def register_transformers_attention() -> None:
    """Register :func:`genscope_transformers_attention` as ``attn_implementation="genscope"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRANSFORMERS_ATTN_IMPLEMENTATION, genscope_transformers_attention)
    # masks are built as for SDPA (boolean, or None where is_causal suffices), so padding is never lost
    AttentionMaskInterface.register(TRANSFORMERS_ATTN_IMPLEMENTATION, sdpa_mask)
