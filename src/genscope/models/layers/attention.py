"""The one attention entry point of genscope.

Every attention call of every model in the suite goes through :func:`attention`: the diffusers blocks
reach it through :class:`GenscopeAttnProcessor` / :class:`GenscopeAddedKVAttnProcessor` (installed on each
``diffusers.models.attention_processor.Attention``), the transformers models through the attention
function registered under the name ``"genscope"`` in transformers' ``AttentionInterface``, and
genscope's own transformer blocks call it directly.

Here and only here:

* the call's **kind** is known (``self``, ``cross``, ``temporal``, ``causal``) from the site it was
  installed on (module path and kind are fixed when the model is built);
* the **backend** is selected:

  - ``baseline``: explicit ``QK^T -> softmax -> @V``; the whole similarity matrix
    ``[B*heads, Lq, Lk]`` is materialized, as attention was computed before Flash Attention;
  - ``flash``: ``torch.nn.functional.scaled_dot_product_attention`` restricted to fused backends
    (FLASH_ATTENTION on CPU; FLASH_ATTENTION, EFFICIENT_ATTENTION and CUDNN_ATTENTION on CUDA) - the
    similarity matrix is never materialized;

* hooks run: *call hooks* see an :class:`AttentionCall` (shapes, kind, path, backend) before the
  computation (the sequence-length tracer), *wrappers* are context managers around the computation
  (profiler annotations, timers).

Why hand-written: diffusers' processors and transformers' attention functions each call SDPA on their
own; neither library offers one switch for "materialize the matrix vs fused" across both, nor a hook that
sees every call with its kind. The processors below follow diffusers' ``AttnProcessor2_0`` and
``AttnAddedKVProcessor2_0`` line for line, except that the SDPA call is replaced by :func:`attention`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["baseline", "flash", "partial_softmax"]
# partial_softmax: Chen et al. 2023's partially fused softmax (row max/exp-sum reduction, normalization fused
# into the matmul with V); implemented in genscope.models.layers.partial_softmax
BACKENDS: tuple[str, ...] = ("baseline", "flash", "partial_softmax")
AttentionKind = Literal["self", "cross", "temporal", "causal"]
KINDS: tuple[str, ...] = ("self", "cross", "temporal", "causal")

TRANSFORMERS_ATTN_IMPLEMENTATION = "genscope"


@dataclass(frozen=True)
class AttentionSite:
    """Where an attention module sits in a model: fixed when the model is built."""

    path: str  # e.g. "denoiser.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    kind: str  # one of KINDS
    module_class: str = ""
    # Keys that come from the text encoder in a joint (added-KV) attention, as in DeepFloyd IF:
    # keys = [text tokens ; image tokens], so Lk = context_len + Lq.
    joint_context: bool = False


@dataclass
class AttentionCall:
    """One attention computation, as the hooks see it (before it runs)."""

    site: AttentionSite
    backend: str
    batch: int  # B (for temporal attention: B*H*W; for spatial attention in video: B*F)
    heads: int
    query_len: int  # Lq
    key_len: int  # Lk
    head_dim: int  # d
    value_dim: int
    dtype: torch.dtype
    device: torch.device
    has_mask: bool
    is_causal: bool
    context_len: int = 0  # text tokens inside the keys (joint attention), else 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.site.path

    @property
    def kind(self) -> str:
        return self.site.kind

    @property
    def similarity_elements(self) -> int:
        """Elements of the similarity matrix QK^T: B*heads*Lq*Lk."""
        return self.batch * self.heads * self.query_len * self.key_len

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the two matmuls (QK^T and PV)."""
        return self.batch * self.heads * self.query_len * self.key_len * (self.head_dim + self.value_dim)

    @property
    def flops(self) -> int:
        """FLOPs of the two matmuls = 2 x MACs = 4*B*H*Lq*Lk*d when d_v = d (softmax not included)."""
        return 2 * self.macs


# ----------------------------------------------------------------------------------------------------
# State: the backend in force and the hooks. A ContextVar so that threads / nested contexts behave.
# ----------------------------------------------------------------------------------------------------
_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("genscope_attention_backend", default="flash")
_CALL_HOOKS: dict[int, Callable[[AttentionCall], None]] = {}
_WRAPPERS: dict[int, Callable[[AttentionCall], contextlib.AbstractContextManager]] = {}
_NEXT_HANDLE = [0]
_FALLBACK_WARNED: set[tuple] = set()


def get_backend() -> str:
    return _BACKEND.get()


def set_backend(backend: str) -> None:
    _BACKEND.set(_check_backend(backend))


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """``with use_backend("baseline"): model(...)`` - every attention call inside uses ``backend``."""
    token = _BACKEND.set(_check_backend(backend))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        from genscope.errors import choice_error

        raise choice_error("attention backend", backend, BACKENDS)
    return backend


class HookHandle:
    def __init__(self, table: dict, key: int):
        self._table, self._key = table, key

    def remove(self) -> None:
        self._table.pop(self._key, None)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _register(table: dict, fn: Callable) -> HookHandle:
    _NEXT_HANDLE[0] += 1
    table[_NEXT_HANDLE[0]] = fn
    return HookHandle(table, _NEXT_HANDLE[0])


def register_call_hook(fn: Callable[[AttentionCall], None]) -> HookHandle:
    """``fn(call)`` runs before every attention computation. Returns a handle (``.remove()``, or ``with``)."""
    return _register(_CALL_HOOKS, fn)


def register_wrapper(fn: Callable[[AttentionCall], contextlib.AbstractContextManager]) -> HookHandle:
    """``fn(call)`` returns a context manager entered around every attention computation."""
    return _register(_WRAPPERS, fn)


# ----------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------
_GENERIC_SITES: dict[str, AttentionSite] = {}


def _generic_site(kind: str) -> AttentionSite:
    if kind not in _GENERIC_SITES:
        _GENERIC_SITES[kind] = AttentionSite(path=f"<unattributed {kind}>", kind=kind)
    return _GENERIC_SITES[kind]


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    site: AttentionSite | None = None,
    kind: str = "self",
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    context_len: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention through genscope's single entry point.

    query: [B, heads, Lq, d]; key: [B, heads, Lk, d]; value: [B, heads, Lk, d_v]
    attn_mask: boolean (True = attend) or additive float, broadcastable to [B, heads, Lq, Lk]
    is_causal: top-left aligned causal mask (the semantics of ``scaled_dot_product_attention``)
    returns: [B, heads, Lq, d_v]
    """
    if site is None:
        site = _generic_site(kind)
    backend = _check_backend(backend) if backend is not None else _BACKEND.get()
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(f"attention expects 4-D [B, heads, L, d] tensors, got {tuple(query.shape)}")
    batch, heads, query_len, head_dim = query.shape
    key_len = key.shape[-2]
    if _CALL_HOOKS or _WRAPPERS:
        call = AttentionCall(
            site=site,
            backend=backend,
            batch=batch,
            heads=heads,
            query_len=query_len,
            key_len=key_len,
            head_dim=head_dim,
            value_dim=value.shape[-1],
            dtype=query.dtype,
            device=query.device,
            has_mask=attn_mask is not None,
            is_causal=is_causal,
            context_len=context_len,
        )
        for hook in list(_CALL_HOOKS.values()):
            hook(call)
        if _WRAPPERS:
            with contextlib.ExitStack() as stack:
                for wrapper in list(_WRAPPERS.values()):
                    stack.enter_context(wrapper(call))
                return _compute(backend, query, key, value, attn_mask, scale, is_causal)
    return _compute(backend, query, key, value, attn_mask, scale, is_causal)


def _compute(backend, query, key, value, attn_mask, scale, is_causal) -> torch.Tensor:
    if backend == "baseline":
        return baseline_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    if backend == "partial_softmax":
        from genscope.models.layers.partial_softmax import partial_softmax_attention

        return partial_softmax_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    return flash_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)


def _additive_mask(attn_mask: torch.Tensor | None, is_causal: bool, query_len: int, key_len: int,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Boolean / causal masks -> one additive mask (0 where attended, a large negative value elsewhere)."""
    neg = torch.finfo(dtype).min
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(~attn_mask, neg)
        else:
            mask = attn_mask.to(dtype)
    if is_causal:
        # top-left aligned, as scaled_dot_product_attention(is_causal=True)
        allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril()
        causal = torch.zeros(query_len, key_len, dtype=dtype, device=device).masked_fill(~allowed, neg)
        mask = causal if mask is None else mask + causal
    return mask


def flatten_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """[B, H, L, d] -> [B*H, L, d] for batched matmuls (K/V broadcast over heads are expanded first)."""
    batch, heads, query_len, head_dim = query.shape
    key_len, value_dim = key.shape[-2], value.shape[-1]
    q3 = query.reshape(batch * heads, query_len, head_dim)  # [B*H, Lq, d]
    k3 = key.expand(batch, heads, key_len, head_dim).reshape(batch * heads, key_len, head_dim)  # [B*H, Lk, d]
    v3 = value.expand(batch, heads, key_len, value_dim).reshape(batch * heads, key_len, value_dim)
    return q3, k3, v3


def baseline_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention as before Flash Attention: the similarity matrix is materialized in full.

    q: [B, H, Lq, d] -> scores = scale * q @ k^T (+ mask): [B*H, Lq, Lk] -> softmax -> @ v: [B, H, Lq, d_v]
    The batched ``baddbmm`` / ``bmm`` form is the one of diffusers' classic ``AttnProcessor``.
    """
    batch, heads, query_len, head_dim = query.shape
    key_len, value_dim = key.shape[-2], value.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    q3, k3, v3 = flatten_heads(query, key, value)
    mask = _additive_mask(attn_mask, is_causal, query_len, key_len, query.dtype, query.device)
    if mask is None:
        # scores: [B*H, Lq, Lk]
        scores = torch.baddbmm(
            torch.empty(batch * heads, query_len, key_len, dtype=query.dtype, device=query.device),
            q3, k3.transpose(1, 2), beta=0.0, alpha=scale,
        )
    else:
        mask = mask.expand(batch, heads, query_len, key_len).reshape(batch * heads, query_len, key_len)
        scores = torch.baddbmm(mask, q3, k3.transpose(1, 2), beta=1.0, alpha=scale)
    probs = scores.softmax(dim=-1)
    del scores
    out = torch.bmm(probs, v3)  # [B*H, Lq, d_v]
    return out.reshape(batch, heads, query_len, value_dim)


def fused_sdpa_backends(device: torch.device) -> list:
    from torch.nn.attention import SDPBackend

    if device.type == "cuda":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION]


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` restricted to fused (tiled) backends; the matrix is never stored.

    On the meta device there is no kernel to choose; the call goes to SDPA as is (shapes only).
    If no fused kernel takes the inputs (e.g. an unsupported mask/dtype on this device), it falls back to
    the default SDPA dispatch once per (device, dtype, reason) with a warning, so a run never dies on it.
    """
    if query.device.type == "meta":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    from torch.nn.attention import sdpa_kernel

    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    try:
        with sdpa_kernel(fused_sdpa_backends(query.device)):
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal
            )
    except RuntimeError as exc:
        reason = (query.device.type, query.dtype, attn_mask is not None, str(exc).splitlines()[0][:80])
        if reason not in _FALLBACK_WARNED:
            _FALLBACK_WARNED.add(reason)
            warnings.warn(f"genscope: no fused attention kernel for {reason[:3]}; using default SDPA ({exc})",
                          stacklevel=2)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)


# ----------------------------------------------------------------------------------------------------
# diffusers: attention processors that route through the entry point
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


# ----------------------------------------------------------------------------------------------------
# transformers: one attention function registered in AttentionInterface
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
        from dataclasses import replace

        _CAUSAL_SITES[site] = replace(site, kind="causal")
    return _CAUSAL_SITES[site]


def register_transformers_attention() -> None:
    """Register :func:`genscope_transformers_attention` as ``attn_implementation="genscope"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRANSFORMERS_ATTN_IMPLEMENTATION, genscope_transformers_attention)
    # masks are built as for SDPA (boolean, or None where is_causal suffices), so padding is never lost
    AttentionMaskInterface.register(TRANSFORMERS_ATTN_IMPLEMENTATION, sdpa_mask)


# ----------------------------------------------------------------------------------------------------
# Installation on a built model
# ----------------------------------------------------------------------------------------------------
TEMPORAL_PATH_MARKERS = ("temp_attentions", "transformer_in", "temporal")


def default_kind(path: str, module: nn.Module) -> str:
    """Kind of an attention module from its place in the model.

    temporal: inside a temporal transformer (UNet3D ``temp_attentions`` / ``transformer_in``);
    cross: keys come from another sequence (diffusers ``is_cross_attention``, T5 ``EncDecAttention``);
    causal: a decoder self-attention (``is_causal``); self otherwise.
    """
    parts = path.split(".")
    if any(marker in part for part in parts for marker in TEMPORAL_PATH_MARKERS):
        return "temporal"
    if getattr(module, "is_cross_attention", False) or "EncDecAttention" in parts or "crossattention" in parts:
        return "cross"
    if getattr(module, "is_causal", False):
        return "causal"
    if type(module).__name__ == "CLIPAttention" and not any("vision" in part for part in parts):
        return "causal"  # CLIP's text tower masks causally; its attention class is shared with the vision tower
    return "self"


def _is_transformers_attention(module: nn.Module) -> bool:
    # transformers attention modules: CLIPAttention, T5Attention, LlamaAttention, ... (class name ends in
    # "Attention" and the module has a config with an attention implementation)
    return type(module).__name__.endswith("Attention") and hasattr(module, "config") and hasattr(
        module.config, "_attn_implementation")


def install_attention(model: nn.Module, prefix: str = "",
                      kind_fn: Callable[[str, nn.Module], str] | None = None) -> list[AttentionSite]:
    """Route every attention module of ``model`` through :func:`attention`; return the sites installed.

    ``prefix`` names the component (``denoiser``, ``text_encoder``, ...) so that paths are unique in a
    workload. For transformers models the model's config is switched to ``attn_implementation="genscope"``
    in place (as ``set_attn_implementation`` does): models sharing one config object are switched together. ``kind_fn(path, module)`` overrides :func:`default_kind` where a model needs it.
    """
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    kind_fn = kind_fn or default_kind
    sites: list[AttentionSite] = []
    uses_transformers = False
    for name, module in model.named_modules():
        path = f"{prefix}.{name}" if prefix and name else (prefix or name)
        if isinstance(module, DiffusersAttention):
            joint = getattr(module, "added_kv_proj_dim", None) is not None
            site = AttentionSite(path=path, kind=kind_fn(path, module), module_class=type(module).__name__,
                                 joint_context=joint)
            processor = GenscopeAddedKVAttnProcessor(site) if joint else GenscopeAttnProcessor(site)
            module.set_processor(processor)
            module._genscope_site = site
            sites.append(site)
        elif _is_transformers_attention(module):
            site = AttentionSite(path=path, kind=kind_fn(path, module), module_class=type(module).__name__)
            module._genscope_site = site
            sites.append(site)
            uses_transformers = True
        elif hasattr(module, "genscope_attention_site"):  # genscope's own blocks declare themselves
            site = AttentionSite(path=path, kind=kind_fn(path, module) if kind_fn is not default_kind
                                 else module.genscope_attention_site, module_class=type(module).__name__)
            module._genscope_site = site
            sites.append(site)
    if uses_transformers:
        register_transformers_attention()
        for module in model.modules():
            if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
                module.config._attn_implementation = TRANSFORMERS_ATTN_IMPLEMENTATION
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation") and not isinstance(
                    module, DiffusersAttention):
                with contextlib.suppress(Exception):
                    config._attn_implementation = TRANSFORMERS_ATTN_IMPLEMENTATION
    return sites


def similarity_matrix_bytes(batch: int, heads: int, query_len: int, key_len: int, dtype: torch.dtype) -> int:
    """Bytes of one materialized similarity matrix [B, heads, Lq, Lk] in ``dtype``."""
    return batch * heads * query_len * key_len * torch.empty((), dtype=dtype).element_size()


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
