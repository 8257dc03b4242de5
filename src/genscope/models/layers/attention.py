"""The one attention entry point of genscope.

Every attention call of every model in the suite goes through :func:`attention`: the diffusers blocks
reach it through genscope's attention processors (:mod:`.attention_diffusers` for the UNet-era
``Attention`` processors, :mod:`.attention_dit` for the diffusion transformers' joint text+image and full
3-D attention), the transformers models through the attention function registered under the name
``"genscope"`` in transformers' ``AttentionInterface`` (:mod:`.attention_transformers`), and genscope's own
transformer blocks call it directly. :func:`install_attention` (:mod:`.attention_install`) routes a built
model's attention modules here.

Here and only here:

* the call's **kind** is known (:data:`KINDS`: ``self``, ``cross``, ``temporal``, ``causal``, ``joint`` -
  text and image tokens attend to each other in one sequence, as in MMDiT - and ``spatiotemporal`` - full
  3-D attention over every token of every frame) from the site it was installed on;
* the **backend** is looked up in the registry (:mod:`.attention_backends`: ``baseline`` materializes the
  similarity matrix, ``flash`` is fused SDPA, ``partial_softmax`` is Chen et al.'s), and the **kernel**
  it will run is recorded on the call;
* hooks run: *call hooks* see an :class:`AttentionCall` (shapes, kind, path, backend, kernel) before the
  computation (the sequence-length tracer), *wrappers* are context managers around the computation
  (profiler annotations, timers, the FLOP counter).

Why hand-written: diffusers' processors and transformers' attention functions each call SDPA on their
own; neither library offers one switch for "materialize the matrix vs fused" across both, nor a hook that
sees every call with its kind.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

# importing the backend modules registers them (partial_softmax registers itself in the leaf registry)
from genscope.models.layers import partial_softmax as _partial_softmax  # noqa: F401
from genscope.models.layers.attention_backends import (  # noqa: F401  (re-exported: the public names)
    additive_mask,
    backend_names,
    baseline_attention,
    flash_attention,
    flatten_heads,
    fused_kernel,
    fused_mask,
    fused_sdpa_backends,
    lookup,
    register_backend,
)

_additive_mask = additive_mask  # former private name, kept for importers

Backend = Literal["baseline", "flash", "partial_softmax"]
BACKENDS: tuple[str, ...] = backend_names()  # ("baseline", "flash", "partial_softmax")
AttentionKind = Literal["self", "cross", "temporal", "causal", "joint", "spatiotemporal"]
KINDS: tuple[str, ...] = ("self", "cross", "temporal", "causal", "joint", "spatiotemporal")

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
    context_len: int = 0  # text tokens inside the keys (joint and cross attention), else 0
    query_context_len: int = 0  # text tokens inside the queries (MMDiT joint attention), else 0
    kernel: str = ""  # the kernel the backend runs (e.g. flash, efficient, math, materialized, meta)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.site.path

    @property
    def kind(self) -> str:
        return self.site.kind

    @property
    def media_len(self) -> int:
        """Image/video tokens among the queries (the queries that are not text)."""
        return self.query_len - self.query_context_len

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
    query_context_len: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention through genscope's single entry point.

    query: [B, heads, Lq, d]; key: [B, heads, Lk, d]; value: [B, heads, Lk, d_v]
    attn_mask: boolean (True = attend) or additive float, broadcastable to [B, heads, Lq, Lk]
    is_causal: top-left aligned causal mask (the semantics of ``scaled_dot_product_attention``)
    context_len / query_context_len: text tokens among the keys / the queries (joint attention)
    returns: [B, heads, Lq, d_v]
    """
    if site is None:
        site = _generic_site(kind)
    backend = _check_backend(backend) if backend is not None else _BACKEND.get()
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(f"attention expects 4-D [B, heads, L, d] tensors, got {tuple(query.shape)}")
    impl = lookup(backend)
    if _CALL_HOOKS or _WRAPPERS:
        batch, heads, query_len, head_dim = query.shape
        call = AttentionCall(
            site=site,
            backend=backend,
            batch=batch,
            heads=heads,
            query_len=query_len,
            key_len=key.shape[-2],
            head_dim=head_dim,
            value_dim=value.shape[-1],
            dtype=query.dtype,
            device=query.device,
            has_mask=attn_mask is not None,
            is_causal=is_causal,
            context_len=context_len,
            query_context_len=query_context_len,
            kernel=impl.kernel(query, key, value, attn_mask, is_causal),
        )
        for hook in list(_CALL_HOOKS.values()):
            hook(call)
        if _WRAPPERS:
            with contextlib.ExitStack() as stack:
                for wrapper in list(_WRAPPERS.values()):
                    stack.enter_context(wrapper(call))
                return impl.compute(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    return impl.compute(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)


def similarity_matrix_bytes(batch: int, heads: int, query_len: int, key_len: int, dtype: torch.dtype) -> int:
    """Bytes of one materialized similarity matrix [B, heads, Lq, Lk] in ``dtype``."""
    return batch * heads * query_len * key_len * torch.empty((), dtype=dtype).element_size()


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


# ----------------------------------------------------------------------------------------------------
# The adapters and the installer live in their own modules (they import this one); their public names
# stay importable from here, resolved on first use (PEP 562) so that no import circle forms.
# ----------------------------------------------------------------------------------------------------
_ADAPTER_NAMES: dict[str, str] = {
    "GenscopeAttnProcessor": "attention_diffusers",
    "GenscopeAddedKVAttnProcessor": "attention_diffusers",
    "genscope_transformers_attention": "attention_transformers",
    "register_transformers_attention": "attention_transformers",
    "install_attention": "attention_install",
    "default_kind": "attention_install",
    "TEMPORAL_PATH_MARKERS": "attention_install",
}


def __getattr__(name: str) -> Any:
    module_name = _ADAPTER_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"genscope.models.layers.{module_name}"), name)
