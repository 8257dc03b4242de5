"""Pass ``selective_flash``: flash attention where it is faster, the partially fused softmax elsewhere.

Chen et al. 2023, Section 3.2.2: flash attention's kernel is register-hungry, so the paper used it only for
head dimension d = 40 on Adreno and Apple GPUs and the partially fused softmax otherwise. Here the choice is
made per attention *shape* (batch, heads, Lq, Lk, d, dtype, mask) by measuring both backends on this device
(:func:`genscope.passes.decisions.measure_interleaved`; flash is taken only if at least 3 % faster), and
cached per device and shape (:class:`genscope.passes.decisions.DecisionCache`, ``~/.genscope``). With
``PassConfig(measure=False)`` the paper's rule is used: flash for d in ``flash_head_dims``.

With example inputs in the config, one forward sees every attention shape (``register_call_hook``) and
all decisions are measured at apply time; a shape first seen later is measured at its first call.
Swap: each attention module's processor -> :class:`BackendAttnProcessor` with the per-shape chooser.
"""

from __future__ import annotations

import torch

from genscope.models.layers.attention import AttentionCall, flash_attention
from genscope.models.layers.partial_softmax import partial_softmax_attention
from genscope.passes.base import Pass, PassContext
from genscope.passes.decisions import DecisionCache, decision_key, fastest, measure_interleaved
from genscope.passes.partial_softmax import (
    BackendAttnProcessor,
    attention_dims,
    attention_oracle,
    base_processor,
    diffusers_attention_modules,
)

CHOICES = ("flash", "partial_softmax")


def shape_of_call(call: AttentionCall) -> dict:
    return {"batch": call.batch, "heads": call.heads, "lq": call.query_len, "lk": call.key_len, "d": call.head_dim,
            "mask": int(call.has_mask)}


class FlashChooser:
    """Per-shape backend choice, measured once per (device, dtype, shape) and cached."""

    def __init__(self, device: torch.device, measure: bool, flash_head_dims: tuple[int, ...], repeats: int,
                 cache: DecisionCache, on_decision=None):
        self.device = device
        self.measure = measure
        self.flash_head_dims = tuple(flash_head_dims)
        self.repeats = repeats
        self.cache = cache
        self.memo: dict[tuple, str] = {}
        self.on_decision = on_decision

    def decide(self, shape: dict, dtype: torch.dtype) -> str:
        memo_key = (tuple(sorted(shape.items())), dtype)
        if memo_key in self.memo:
            return self.memo[memo_key]
        if not self.measure:
            choice = "flash" if shape["d"] in self.flash_head_dims else "partial_softmax"
            row = {"shape": shape, "dtype": str(dtype), "choice": choice, "rule": "head dim"}
        else:
            key = decision_key("selective_flash", self.device, dtype, shape)
            cached = self.cache.get(key)
            if cached is not None and cached.get("choice") in CHOICES:
                choice = cached["choice"]
                row = {"shape": shape, "dtype": str(dtype), **cached, "rule": "measured (cached)"}
            else:
                medians = self._measure(shape, dtype)
                choice, medians = fastest({k: [v] for k, v in medians.items()}, default="partial_softmax")
                value = {"choice": choice, **{f"{k}_ms": round(v, 4) for k, v in medians.items()}}
                self.cache.put(key, value)
                row = {"shape": shape, "dtype": str(dtype), **value, "rule": "measured"}
        self.memo[memo_key] = choice
        if self.on_decision is not None:
            self.on_decision(row)
        return choice

    def _measure(self, shape: dict, dtype: torch.dtype) -> dict[str, float]:
        gen = torch.Generator("cpu").manual_seed(0)
        q = torch.randn(shape["batch"], shape["heads"], shape["lq"], shape["d"], generator=gen).to(self.device, dtype)
        k = torch.randn(shape["batch"], shape["heads"], shape["lk"], shape["d"], generator=gen).to(self.device, dtype)
        v = torch.randn(shape["batch"], shape["heads"], shape["lk"], shape["d"], generator=gen).to(self.device, dtype)
        mask = None
        if shape.get("mask"):
            mask = torch.ones(shape["lq"], shape["lk"], dtype=torch.bool, device=self.device)
        times = measure_interleaved({
            "flash": lambda: flash_attention(q, k, v, attn_mask=mask),
            "partial_softmax": lambda: partial_softmax_attention(q, k, v, attn_mask=mask),
        }, repeats=self.repeats, warmup=1, device=self.device)
        import statistics

        return {name: statistics.median(ts) for name, ts in times.items()}

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask) -> str:
        batch = hidden_states.shape[0]
        query_len = hidden_states.shape[2] * hidden_states.shape[3] if hidden_states.dim() == 4 else hidden_states.shape[1]
        if getattr(attn, "added_kv_proj_dim", None) is not None:
            context = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
            key_len = context + (0 if attn.only_cross_attention else query_len)
        else:
            key_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else query_len
        heads, head_dim = attention_dims(attn)
        shape = {"batch": batch, "heads": heads, "lq": query_len, "lk": key_len, "d": head_dim,
                 "mask": int(attention_mask is not None)}
        return self.decide(shape, attn.to_q.weight.dtype)


class SelectiveFlashPass(Pass):
    name = "selective_flash"
    title = "selective flash attention"
    shares_example = True

    def run(self, ctx: PassContext) -> None:
        modules = diffusers_attention_modules(ctx)
        if not modules:
            ctx.note("no diffusers attention module in this model; nothing changed")
            return
        chooser = FlashChooser(ctx.device, ctx.config.measure, ctx.config.flash_head_dims, ctx.config.repeats,
                               ctx.cache, on_decision=lambda row: ctx.decision(**row))
        checked: set[int] = set()
        unrouted = 0
        for path, attn in modules:
            base = base_processor(attn.processor)
            if base is None:
                unrouted += 1
                continue
            heads, head_dim = attention_dims(attn)
            if head_dim not in checked:
                checked.add(head_dim)
                for backend in CHOICES:
                    ctx.require(attention_oracle(self.name, backend, 1, heads, 77, 64, head_dim, ctx.dtype,
                                                 ctx.device))
            rule = ("flash if measured faster per shape, else partially fused softmax" if ctx.config.measure
                    else f"flash for head dim in {list(ctx.config.flash_head_dims)}, else partially fused softmax")
            ctx.swap(f"{path}.processor", BackendAttnProcessor(base, chooser=chooser), rule, parent=attn,
                     attr="processor")
        if unrouted:
            ctx.note(f"{unrouted} attention module(s) not routed through genscope's entry point left as they are")
        if ctx.has_example() and any(s.pass_name == self.name for s in ctx.log):
            ctx.after_example(lambda: None)  # the chooser sees (and decides) every attention shape of that forward
