"""Pass ``partial_softmax``: every diffusers attention module computes with the partially fused softmax.

Chen et al. 2023, Section 3.2.1. The computation is the ``partial_softmax`` backend of the attention entry
point (:mod:`genscope.models.layers.partial_softmax`: CPU blocks in plain PyTorch, Triton on CUDA); this
pass pins it per attention module by swapping the module's processor for a :class:`BackendAttnProcessor`
that runs the genscope processor under ``use_backend("partial_softmax")``. Other modules, and attention
modules outside this model, keep the backend in force.

Needs the model's attention routed through the entry point (``install_attention``, which every genscope
workload does); transformers attention modules (text encoders) are not swapped: they follow the
backend in force.
"""

from __future__ import annotations

import torch
from torch import nn

from genscope.models.layers.attention import (
    GenscopeAddedKVAttnProcessor,
    GenscopeAttnProcessor,
    baseline_attention,
    flash_attention,
    use_backend,
)
from genscope.models.layers.partial_softmax import partial_softmax_attention
from genscope.passes.base import Pass, PassContext
from genscope.passes.oracle import OracleResult, check_functions

GENSCOPE_PROCESSORS = (GenscopeAttnProcessor, GenscopeAddedKVAttnProcessor)
BACKEND_FUNCTIONS = {"baseline": baseline_attention, "flash": flash_attention,
                     "partial_softmax": partial_softmax_attention}


class BackendAttnProcessor:
    """A genscope attention processor run under a fixed backend, or one chosen per call by ``chooser``.

    ``chooser(attn, hidden_states, encoder_hidden_states, attention_mask) -> backend``.
    ``contiguous_4d``: make 4-D (image-shaped) inputs contiguous first (the processors ``view`` them).
    """

    def __init__(self, inner, backend: str | None = None, chooser=None, contiguous_4d: bool = False):
        self.inner = inner
        self.backend = backend
        self.chooser = chooser
        self.contiguous_4d = contiguous_4d

    @property
    def site(self):
        return getattr(self.inner, "site", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if self.contiguous_4d and hidden_states.dim() == 4:
            hidden_states = hidden_states.contiguous()
        backend = self.backend
        if backend is None and self.chooser is not None:
            backend = self.chooser(attn, hidden_states, encoder_hidden_states, attention_mask)
        if backend is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        with use_backend(backend):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def base_processor(processor):
    """The genscope processor under any :class:`BackendAttnProcessor` wrappers (None if there is none)."""
    while isinstance(processor, BackendAttnProcessor):
        processor = processor.inner
    return processor if isinstance(processor, GENSCOPE_PROCESSORS) else None


def diffusers_attention_modules(ctx: PassContext) -> list[tuple[str, nn.Module]]:
    from diffusers.models.attention_processor import Attention

    return list(ctx.modules(lambda p, m: isinstance(m, Attention)))


def attention_oracle(pass_name: str, backend: str, batch: int, heads: int, query_len: int, key_len: int,
                     head_dim: int, dtype: torch.dtype, device: torch.device) -> OracleResult:
    """``backend`` vs the baseline (materialized softmax) in ``dtype``, against baseline in float64."""
    gen = torch.Generator("cpu").manual_seed(0)
    q = torch.randn(batch, heads, query_len, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(batch, heads, key_len, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(batch, heads, key_len, head_dim, generator=gen).to(device, dtype)
    return check_functions(pass_name, f"attention backend {backend} (d={head_dim})", BACKEND_FUNCTIONS[backend],
                           baseline_attention, baseline_attention, (q, k, v), dtype)


def attention_dims(attn: nn.Module) -> tuple[int, int]:
    heads = int(attn.heads)
    return heads, int(attn.inner_dim) // heads


class PartialSoftmaxPass(Pass):
    name = "partial_softmax"
    title = "partially fused softmax"

    def run(self, ctx: PassContext) -> None:
        modules = diffusers_attention_modules(ctx)
        checked: set[tuple] = set()
        unrouted = 0
        for path, attn in modules:
            base = base_processor(attn.processor)
            if base is None:
                unrouted += 1
                continue
            heads, head_dim = attention_dims(attn)
            if head_dim not in checked:
                checked.add(head_dim)
                ctx.require(attention_oracle(self.name, "partial_softmax", 1, heads, 77, 64, head_dim,
                                             ctx.dtype, ctx.device))
            ctx.swap(f"{path}.processor", BackendAttnProcessor(base, backend="partial_softmax"),
                     "attention with the partially fused softmax (row max/exp-sum, normalization after @V)",
                     parent=attn, attr="processor")
        if unrouted:
            ctx.note(f"{unrouted} attention module(s) not routed through genscope's entry point "
                     "(install_attention) left as they are")
        if not modules:
            ctx.note("no diffusers attention module in this model; nothing changed")
