"""Attention backends: a registry that the entry point (:mod:`genscope.models.layers.attention`) dispatches to.

A leaf module (imports only torch): backends register themselves here, as diffusers' attention dispatch
(``diffusers.models.attention_dispatch._AttentionBackendRegistry``) does, so that the entry point needs no
if/elif and no lazy import, and a backend module (``partial_softmax``) can import the shared mask helpers
from here without importing the entry point (which imports it: the former import circle).

Each backend is ``compute(q, k, v, *, attn_mask, scale, is_causal) -> out`` plus ``kernel(q, k, v, attn_mask,
is_causal) -> str``: the kernel that will actually run, recorded on every call so that tables and the report
can say which implementation ran (e.g. ``flash`` may run SDPA's ``flash``, ``efficient`` or ``math`` kernel).

Built in:

* ``baseline``: explicit ``QK^T -> softmax -> @V``; the whole similarity matrix ``[B*heads, Lq, Lk]`` is
  materialized, as attention was computed before Flash Attention (kernel ``materialized``);
* ``flash``: ``torch.nn.functional.scaled_dot_product_attention`` forced onto one fused kernel, chosen as
  torch's own dispatcher would among the fused ones (on CUDA with torch's public ``can_use_*`` checks:
  ``flash`` when the call has no mask, else the memory-efficient kernel, which takes masks; on CPU the
  fused CPU ``flash`` kernel). Masks are handed over with a unit last-dimension stride (fused kernels
  refuse others: T5's position bias ``[1, heads, Lq, Lk]`` is a permuted view with stride ``heads``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ComputeFn = Callable[..., torch.Tensor]
KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool], str]


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    compute: ComputeFn  # (q, k, v, *, attn_mask, scale, is_causal) -> [B, heads, Lq, d_v]
    kernel: KernelFn  # (q, k, v, attn_mask, is_causal) -> kernel name
    description: str = ""


_REGISTRY: dict[str, AttentionBackend] = {}


def register_backend(name: str, compute: ComputeFn, kernel: KernelFn | None = None,
                     description: str = "") -> AttentionBackend:
    """Register (or replace) a backend under ``name``; the registration order is the listing order."""
    backend = AttentionBackend(name, compute, kernel or (lambda q, k, v, m, c: name), description)
    _REGISTRY[name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def lookup(name: str) -> AttentionBackend:
    """The registered backend ``name`` (KeyError if none: the entry point validates names first)."""
    return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def additive_mask(attn_mask: torch.Tensor | None, is_causal: bool, query_len: int, key_len: int,
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


# ----------------------------------------------------------------------------------------------------
# baseline: the similarity matrix materialized
# ----------------------------------------------------------------------------------------------------
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
    mask = additive_mask(attn_mask, is_causal, query_len, key_len, query.dtype, query.device)
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


# ----------------------------------------------------------------------------------------------------
# flash: SDPA on one fused kernel
# ----------------------------------------------------------------------------------------------------
_FALLBACK_WARNED: set[tuple] = set()
CPU_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def fused_sdpa_backends(device: torch.device) -> list:
    from torch.nn.attention import SDPBackend

    if device.type == "cuda":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION]


def fused_mask(attn_mask: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """The mask as fused kernels take it: query's dtype (or bool) and a unit last-dimension stride.

    Broadcast dimensions (stride 0) other than the last are kept as they are: no copy of a [B, 1, 1, Lk]
    padding mask to [B, heads, Lq, Lk].
    """
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    if attn_mask.dim() > 0 and attn_mask.shape[-1] > 1 and attn_mask.stride(-1) != 1:
        attn_mask = attn_mask.contiguous()  # e.g. T5's permuted position bias: last-dim stride = heads
    return attn_mask


def _sdpa_kernel_names() -> dict:
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def fused_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                 is_causal: bool) -> str:
    """The SDPA kernel the ``flash`` backend runs for these inputs (mask as :func:`fused_mask` returns it).

    CUDA: torch's public checks (``torch.backends.cuda.can_use_*``) in torch's own priority order;
    the flash kernel takes no mask, so a masked call lands on the memory-efficient kernel.
    CPU: torch has one fused kernel (flash, masks allowed) whose conditions are 4-D inputs, equal q/k head
    dims, unit last-dim strides and a float dtype (``sdp_utils_cpp.cpp``: ``use_flash_attention_cpp``).
    meta: no kernel runs (``meta``).
    """
    device = query.device
    if device.type == "meta":
        return "meta"
    if device.type == "cuda":
        from torch.backends import cuda as backends_cuda

        params = backends_cuda.SDPAParams(query, key, value, attn_mask, 0.0, is_causal, False)
        for name, check in (("flash", backends_cuda.can_use_flash_attention),
                            ("efficient", backends_cuda.can_use_efficient_attention),
                            ("cudnn", backends_cuda.can_use_cudnn_attention)):
            if check(params):
                return name
        return "math"
    tensors = [query, key, value] + ([attn_mask] if attn_mask is not None else [])
    if (query.dim() == 4 and query.dtype in CPU_FUSED_DTYPES and query.shape[-1] == key.shape[-1]
            and all(t.shape[-1] <= 1 or t.stride(-1) == 1 for t in tensors)):
        return "flash"
    return "math"


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    kernel: str | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` on one fused kernel; the similarity matrix is never stored.

    ``kernel``: the SDPA kernel to force (default: :func:`fused_kernel`'s choice). On the meta device there
    is no kernel to choose; the call goes to SDPA as is (shapes only). If the kernel refuses the inputs,
    the call falls back to SDPA's default dispatch, with one warning per (device, dtype, reason).
    """
    attn_mask = fused_mask(attn_mask, query)
    if query.device.type == "meta":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    from torch.nn.attention import sdpa_kernel

    kernel = kernel or fused_kernel(query, key, value, attn_mask, is_causal)
    chosen = [_sdpa_kernel_names()[kernel]] if kernel in _sdpa_kernel_names() and kernel != "math" else \
        fused_sdpa_backends(query.device)
    try:
        with sdpa_kernel(chosen):
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


def _flash_kernel(query, key, value, attn_mask, is_causal) -> str:
    return fused_kernel(query, key, value, fused_mask(attn_mask, query), is_causal)


register_backend("baseline", baseline_attention, lambda q, k, v, m, c: "materialized",
                 "explicit QK^T -> softmax -> @V; the similarity matrix is materialized")
register_backend("flash", flash_attention, _flash_kernel,
                 "scaled_dot_product_attention on a fused kernel; the matrix is never stored")
