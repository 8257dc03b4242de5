"""Winograd variants - an output tile m and the precision of its products - and the oracle that admits them.

A variant is a candidate for a model in a dtype only if it meets the oracle there (:func:`allowed_variants`:
the canonical 128-channel layer of :func:`winograd_oracle`, cached per process; the pass then checks each
layer it swaps on its own weights). Split from :mod:`genscope.passes.winograd` (the module and the pass),
which re-exports these names.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from genscope.passes.kernels import cpu as kcpu
from genscope.passes.oracle import OracleResult, check_functions

LOW_PRECISION = (torch.bfloat16, torch.float16)


class Variant(NamedTuple):
    m: int  # output tile; 0 = direct convolution
    product: str = "model"  # "model", "fp32-acc" (16-bit operands, float32 accumulation) or "float32"

    @property
    def name(self) -> str:
        if self.m == 0:
            return "direct"
        return f"F({self.m}x{self.m},3x3)" + PRODUCT_SUFFIX[self.product]

    def product_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """U's dtype (the product's operands)."""
        return torch.float32 if self.product == "float32" else dtype

    @property
    def accumulate_fp32(self) -> bool:
        return self.product == "fp32-acc"

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name == "direct":
            return DIRECT
        product = next((p for p, suffix in PRODUCT_SUFFIX.items() if suffix and name.endswith(suffix)), "model")
        return cls(int(name[2]), product)


PRODUCT_SUFFIX = {"model": "", "fp32-acc": " fp32-acc", "float32": " fp32-product"}


DIRECT = Variant(0)


def tile_name(m: int) -> str:
    return Variant(m).name


def winograd_oracle(m: int, dtype: torch.dtype, device: torch.device | str = "cpu", channels: int = 128,
                    size: int = 16, pass_name: str = "winograd", weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, variant: str = "accurate",
                    product: str = "model", u: torch.Tensor | None = None) -> OracleResult:
    """F(m x m) vs direct convolution in ``dtype``, both against direct convolution in float64.

    The layer: ``weight``/``bias`` if given (a real layer's, in ``dtype``), else a canonical SD-like one
    (``channels`` in and out, weights ~ N(0, 1/(9C))); the input: SiLU(2 N(0,1) + 0.5) (what a UNet
    convolution sees after GroupNorm + SiLU), [2, C, size, size]. ``variant``: the transforms' points
    (``accurate`` or ``lavin``); ``product``: ``model`` or ``float32``; ``u``: the layer's transformed weight
    as it will run (else computed from ``weight``).
    """
    gen = torch.Generator("cpu").manual_seed(0)
    if weight is None:
        weight = (torch.randn(channels, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5).to(device, dtype)
        bias = (torch.randn(channels, generator=gen) * 0.1).to(device, dtype)
    x = F.silu(torch.randn(2, weight.shape[1], size, size, generator=gen) * 2 + 0.5).to(device, dtype)
    pdtype = Variant(m, product).product_dtype(dtype)

    def direct(x, w, b):
        return F.conv2d(x, w, b, padding=1)

    def wino(x, w, b):
        return kcpu.winograd_conv2d(x, u if u is not None else kcpu.winograd_weight(w, m, dtype=pdtype, variant=variant), b, m,
                                    padding=(1, 1), variant=variant, accumulate_fp32=Variant(m, product).accumulate_fp32)

    what = f"winograd {Variant(m, product).name}" + (" (Lavin & Gray points)" if variant == "lavin" and m == 4
                                                      else "")
    return check_functions(pass_name, what, wino, direct, direct, (x, weight, bias), dtype)


@functools.cache
def _oracle_cached(v: Variant, dtype: torch.dtype, device_type: str) -> OracleResult:
    return winograd_oracle(v.m, dtype, torch.device(device_type), product=v.product)


def variants_for_tiles(tiles, dtype: torch.dtype) -> list[Variant]:
    out = []
    for m in tiles:
        out.append(Variant(m))
        if dtype in LOW_PRECISION:  # cheapest first: 16-bit operands with fp32 accumulation, then fp32 operands
            out.extend([Variant(m, "fp32-acc"), Variant(m, "float32")])
    return out


def allowed_variants(tiles, dtype: torch.dtype, device: torch.device) -> tuple[list[Variant], list[OracleResult]]:
    """The variants that meet the oracle in ``dtype``; for each tile the model-precision product is preferred
    (a float32 product is a candidate only where the model-precision one fails). Returns (allowed, results)."""
    allowed, results = [], []
    for m in tiles:
        for v in variants_for_tiles([m], dtype):
            r = _oracle_cached(v, dtype, device.type)
            results.append(r)
            if r.ok:
                allowed.append(v)
                break
    return allowed, results
