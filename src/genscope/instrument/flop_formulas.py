"""What one ATen op costs: the FLOP formulas torch's counter lacks, softmax FLOPs and bytes moved.

torch's :mod:`torch.utils.flop_counter` counts matmuls, convolutions and its own fused attention kernels; the
suite also runs

* ``aten.scaled_dot_product_attention`` (the op seen under ``inference_mode``, where every pipeline runs) and
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (the CPU kernel, counted 0 by torch 2.13): their
  formula, :func:`attention_flops`, is registered with torch's public ``register_flop_formula``;
* **softmax FLOPs**, reported apart from ``flops`` (DESIGN: attention FLOPs are the two matmuls,
  4*B*H*Lq*Lk*d; softmax apart): :data:`SOFTMAX_FLOPS_PER_ELEMENT` per element of the similarity matrix,
  whether it is materialized (``_softmax``) or not (a fused op);
* **bytes moved**, the traffic model of the roofline (:func:`op_bytes`): every executed op reads all its
  tensor inputs and writes all its tensor outputs (no reuse between ops, no fusion beyond the op's own);
  views and allocations move nothing; ``copy_`` reads its source and writes its destination; weights count
  at every read. This is eager, unfused execution's traffic (an upper bound of DRAM traffic, caches ignored).

FLOPs = 2 x MACs for every op torch counts (matmuls and convolutions).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

aten = torch.ops.aten

# softmax over a row of n elements: max-reduce, subtract, exp, sum-reduce, divide = 5 FLOPs per element
SOFTMAX_FLOPS_PER_ELEMENT = 5
ATTENTION_NOTE = ("Attention = ops inside attention entry-point calls (QK^T and @V: 4*B*H*Lq*Lk*d FLOPs whatever "
                  "the mask; softmax counted apart in softmax_flops); Q/K/V/output projections count as Linear.")
BYTES_NOTE = ("bytes = every executed ATen op reads its tensor inputs and writes its outputs (views and "
              "allocations move nothing; weights counted at every read): eager, unfused traffic.")


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of the two attention matmuls: q [..., H, Lq, d], k [..., Hkv, Lk, d], v [..., Hkv, Lk, dv].

    QK^T: 2*B*H*Lq*Lk*d, PV: 2*B*H*Lq*Lk*dv (= 4*B*H*Lq*Lk*d when dv = d). Leading dims are the batch;
    grouped-query attention (Hkv < H) costs what H heads cost. Masks and causality are ignored: the dense
    computation (what the baseline backend does and what torch's own SDPA formula counts).
    """
    *lead, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    bh = math.prod(lead) if lead else 1
    return 2 * bh * lq * lk * d + 2 * bh * lq * lk * dv


def attention_softmax_elements(query_shape, key_shape) -> int:
    """Elements of the similarity matrix B*H*Lq*Lk."""
    *lead, lq, _ = query_shape
    return (math.prod(lead) if lead else 1) * lq * key_shape[-2]


FUSED_ATTENTION_OPS = [aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu]
# fused attention ops (torch's own and ours): their similarity matrix is never materialized, but softmaxed
_SOFTMAX_IN_FUSED = {
    aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention, aten._flash_attention_forward, aten._efficient_attention_forward,
}
_SOFTMAX_OPS = {aten._softmax, aten._safe_softmax, aten._log_softmax, aten.softmax, aten.log_softmax}


def fused_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """:func:`attention_flops` in the signature of a torch flop formula (shapes in, ``out_shape`` keyword)."""
    return attention_flops(query_shape, key_shape, value_shape)


def register_attention_formulas() -> None:
    """Register :func:`attention_flops` for the fused attention ops torch's registry misses (idempotent)."""
    missing = [op for op in FUSED_ATTENTION_OPS if op not in flop_registry]
    if missing:
        register_flop_formula(missing)(fused_attention_flop)


register_attention_formulas()


# ----------------------------------------------------------------------------------------------------
# Bytes moved and softmax FLOPs of one op
# ----------------------------------------------------------------------------------------------------
_NO_TRAFFIC = {aten._unsafe_view, aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty,
               aten.new_empty_strided, aten.set_, aten.resize_, aten.lift_fresh, aten.detach, aten.alias}
_WRITE_ONLY_FIRST = {aten.copy_, aten.fill_, aten.zero_, aten.normal_, aten.uniform_, aten.random_,
                     aten.exponential_, aten.bernoulli_}
_VIEW_CACHE: dict[Any, bool] = {}


def _is_view(packet) -> bool:
    if packet not in _VIEW_CACHE:
        try:
            overloads = packet.overloads()
            _VIEW_CACHE[packet] = bool(overloads) and all(getattr(packet, o).is_view for o in overloads)
        except (AttributeError, RuntimeError):
            _VIEW_CACHE[packet] = False
    return _VIEW_CACHE[packet]


def _tensors(values: tuple | list) -> list[torch.Tensor]:
    """Tensors among an op's arguments (ATen arguments nest at most one level: Tensor[] lists)."""
    found = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            found.extend(t for t in v if isinstance(t, torch.Tensor))
    return found


def op_bytes(packet, args, kwargs, out) -> int:
    """Bytes one op moves under the eager traffic model (see the module docstring)."""
    if packet in _NO_TRAFFIC or _is_view(packet):
        return 0
    inputs = _tensors(args)
    if kwargs:
        inputs += _tensors(tuple(kwargs.values()))
    if packet in _WRITE_ONLY_FIRST and inputs:
        inputs = inputs[1:]  # the destination is written, not read
    outputs = [out] if isinstance(out, torch.Tensor) else _tensors(out) if isinstance(out, (tuple, list)) else []
    return sum(t.numel() * t.element_size() for t in inputs) + sum(t.numel() * t.element_size() for t in outputs)


def op_softmax_flops(packet, args) -> int:
    """Softmax FLOPs of one op: of its similarity matrix (fused attention) or of its input (softmax ops)."""
    if packet in _SOFTMAX_IN_FUSED and len(args) >= 2 and isinstance(args[0], torch.Tensor):
        return SOFTMAX_FLOPS_PER_ELEMENT * attention_softmax_elements(args[0].shape, args[1].shape)
    if packet in _SOFTMAX_OPS and args and isinstance(args[0], torch.Tensor):
        return SOFTMAX_FLOPS_PER_ELEMENT * args[0].numel()
    return 0


def op_name(packet) -> str:
    """``aten.convolution`` -> ``aten::convolution`` (the profiler's spelling, what ``op_class`` takes)."""
    name = str(packet)
    return name.replace(".", "::", 1) if name.startswith("aten.") else name
