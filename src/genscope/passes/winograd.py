"""Pass ``winograd``: 3x3 stride-1 convolutions by Winograd F(m x m, 3 x 3), per layer where it is faster.

Chen et al. 2023, Section 3.3 and Table 2: Winograd trades multiplications for transforms, memory and
numerical error; they chose F(4x4, 3x3) and applied it "only where it would produce profitable results".
Transforms: :mod:`genscope.passes.kernels.winograd_math` (Lavin & Gray 2016; F(4x4) on more accurate
points). U = G g G^T is precomputed per layer (a non-persistent buffer: the state_dict is unchanged, the
weight memory grows by (m+2)^2/9 x for the layers swapped).

A *variant* is a tile m and the precision of the a^2 products (``model``: the model's dtype; ``float32``:
U and V kept in float32 in a 16-bit model - the output is still rounded to the model's dtype).

Decisions
* precision: a variant is a candidate only if it meets the oracle in the model's dtype (a canonical
  128-channel layer, then each chosen layer with its own weights). The verdict depends on the machine,
  because direct convolution's own error does: in float32 on an AMD EPYC (AVX2) F(2x2) and F(4x4) pass and
  F(6x6) fails (about 6.5x direct convolution's error); on an Intel Xeon with AVX-512, where oneDNN's direct
  convolution is more accurate (2.1e-7), F(2x2) passes (1.5x) and F(4x4) (4.2x) and F(6x6) (18x) fail
  (``winograd_oracle(m, torch.float32)``). bfloat16/float16 with 16-bit products: every tile fails (2.8x
  for F(2x2)), with float32 products every tile passes. A tile asked for explicitly
  (``PassConfig.winograd_tile``) with no passing variant is refused with the measured errors; the paper's
  rule (``measure=False``, no tile given) falls back to the largest smaller tile that passes, with a note;
* speed: with ``measure`` (default), each layer's input shape is timed with direct convolution and every
  candidate (interleaved repetitions); the fastest wins, direct unless a variant is >= 3 % faster. The
  choice is cached per device, dtype and shape (``~/.genscope``). With example inputs in the config this
  happens at apply time and layers where direct convolution wins are not swapped; otherwise at each new
  shape's first call. ``measure=False``: one fixed tile (default F(4x4), the paper's) everywhere.

Swap: ``Conv2d`` (3x3, stride 1, dilation 1, groups 1, zero padding) -> :class:`WinogradConv2d` (a
``Conv2d`` subclass sharing weight and bias). The per-layer decision (oracle, timing, cache) and the module it
decides for are kept in one place; the variants and their oracle (:mod:`genscope.passes.winograd_variants`),
the transforms, kernels and the executed-FLOP count are in their own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.decisions import DecisionCache, decision_key, fastest, measure_interleaved
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.kernels.winograd_math import TILES
from genscope.passes.oracle import cached_check, tensors_sha1
from genscope.passes.winograd_variants import (  # noqa: F401 - re-exported
    DIRECT,
    LOW_PRECISION,
    PRODUCT_SUFFIX,
    Variant,
    allowed_variants,
    tile_name,
    variants_for_tiles,
    winograd_oracle,
)

PAPER_TILE = 4  # Chen et al. 2023, Sec. 3.3: "we selected a 4x4 tile size"
# A Winograd convolution runs GEMMs (aten::mm / bmm), which an op-class table files under Linear; its ops run
# inside this record_function range so that a profiler can charge them to Convolution (free without a profiler).
CONV_RANGE = "genscope::convolution::winograd"
def is_winograd_candidate(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and not isinstance(module, WinogradConv2d)
            and tuple(module.kernel_size) == (3, 3) and tuple(module.stride) == (1, 1)
            and tuple(module.dilation) == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class WinogradConv2d(nn.Conv2d):
    """A 3x3 stride-1 ``Conv2d`` computed by Winograd for the input shapes chosen.

    ``variant_for[(shape, dtype, channels_last)]`` -> :class:`Variant` (``DIRECT``: direct convolution);
    shapes without an entry go to ``chooser.decide`` or, without a chooser, to ``fixed``. U of a variant
    is the buffer ``winograd_u{m}`` (model dtype) or ``winograd_u{m}_f32``, [a^2, K, C].
    """

    backend: str = "torch"
    prefer_channels_last: bool = False  # set by the channels_last pass

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, backend: str, fixed: Variant | None, chooser=None) -> WinogradConv2d:
        new = shallow_clone(conv, cls)
        new.backend = backend
        new.fixed = fixed
        new.chooser = chooser
        new.variant_for = {}
        new.allowed_tiles = None  # None: any tile; else the tiles (m) this layer may use (weight budget)
        new.measured = {}  # shape key -> {variant name: median ms} (decisions made by the chooser)
        # direct convolution: the swapped module's own forward where it is faster than F.conv2d (prepacked)
        new.__dict__["_direct"] = conv if hasattr(conv, "forward_add") else None
        return new

    @staticmethod
    def _buffer_name(v: Variant) -> str:
        return f"winograd_u{v.m}" + ("_f32" if v.product == "float32" else "")

    def transformed_weight(self, v: Variant) -> torch.Tensor:
        name = self._buffer_name(v)
        dtype = v.product_dtype(self.weight.dtype)
        u = self._buffers.get(name)
        if u is None or u.dtype != dtype or u.device != self.weight.device:
            u = kcpu.winograd_weight(self.weight, v.m, dtype=dtype)
            self.register_buffer(name, u, persistent=False)
        return u

    def variants_used(self) -> set[Variant]:
        return {v for v in self.variant_for.values() if v != DIRECT}

    def drop_transformed(self, keep: set[Variant] = frozenset()) -> None:
        names = {self._buffer_name(v) for v in keep}
        for name in [n for n in self._buffers if n.startswith("winograd_u") and n not in names]:
            del self._buffers[name]

    def _direct_module(self, x: torch.Tensor):
        direct = self.__dict__.get("_direct")
        if direct is None or x.is_meta:  # a shape probe runs F.conv2d on the meta weight
            return None
        return direct if direct.weight.dtype == x.dtype == self.weight.dtype else None

    def run_variant(self, x: torch.Tensor, v: Variant) -> torch.Tensor:
        if v == DIRECT:
            direct = self._direct_module(x)
            if direct is not None:
                return direct(x)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        u = self.transformed_weight(v)
        with torch.profiler.record_function(CONV_RANGE):
            if self.backend == "triton" and x.is_cuda and not _channels_last(x):
                from genscope.passes.kernels.triton_kernels import winograd_conv2d_triton

                return winograd_conv2d_triton(x, u, self.bias, v.m, padding=tuple(self.padding))
            return kcpu.winograd_conv2d(x, u, self.bias, v.m, padding=tuple(self.padding),
                                        accumulate_fp32=v.accumulate_fp32)

    def _variant(self, x: torch.Tensor) -> Variant:
        key = (tuple(x.shape), x.dtype, _channels_last(x))
        v = self.variant_for.get(key)
        if v is None and x.is_meta:  # a shape probe (PassContext.run_example): decided after it, on a real input
            if self.chooser is not None:
                self.chooser.defer(self, key)
            return DIRECT
        if v is None:
            v = self.chooser.decide(self, x) if self.chooser is not None else (self.fixed or DIRECT)
            self.variant_for[key] = v
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prefer_channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.run_variant(x, self._variant(x))

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """conv(x) + other; fused into the convolution where direct convolution runs prepacked."""
        if self.prefer_channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        v = self._variant(x)
        direct = self._direct_module(x) if v == DIRECT else None
        return direct.forward_add(x, other) if direct is not None else self.run_variant(x, v) + other

    def extra_repr(self) -> str:
        used = sorted(v.name for v in self.variants_used()) or ([self.fixed.name] if self.fixed else [])
        return super().extra_repr() + f", winograd={used}, backend={self.backend}"


KERNEL_VERSION = 2  # part of the cached decisions' key: bump when the kernels' speed changes


def decision_shape(module: nn.Conv2d, x: torch.Tensor, variants) -> dict:
    """What a cached Winograd decision is keyed by (besides pass, device and dtype)."""
    return {"n": x.shape[0], "c": x.shape[1], "h": x.shape[2], "w": x.shape[3], "k": module.out_channels,
            "pad": "x".join(str(p) for p in module.padding), "cl": int(_channels_last(x)),
            "variants": "+".join(v.name for v in variants),
            "impl": f"{getattr(module, 'backend', 'torch')}-v{KERNEL_VERSION}"}


class ConvChooser:
    """Per-shape choice between direct convolution and the allowed variants, measured once and cached."""

    def __init__(self, variants_by_dtype, device: torch.device, repeats: int, cache: DecisionCache,
                 on_decision=None, on_oracle=None):
        self.variants_by_dtype = variants_by_dtype  # dtype -> allowed variants
        self.device = device
        self.repeats = repeats
        self.cache = cache
        self.on_decision = on_decision
        self.on_oracle = on_oracle
        self._layer_checked: dict[tuple, bool] = {}
        self._deferred: list[tuple[WinogradConv2d, tuple]] = []

    def _layer_ok(self, module: WinogradConv2d, v: Variant, dtype: torch.dtype) -> bool:
        """The oracle on this layer's own weights (once per layer object, variant and dtype).

        Its verdict is cached per device with the SHA-1 of the weight's and bias's bytes: the same weights
        (a seeded build, a checkpoint loaded again) are not checked again (0.3-1 s per 1280-channel layer on
        a 2-core CPU, ~13 s for SD's UNet), other weights always are."""
        key = (id(module.weight), v, dtype)
        if key not in self._layer_checked:
            fields = {"layer": v.name, "k": module.out_channels, "c": module.in_channels, "impl": f"v{KERNEL_VERSION}",
                      "sha1": tensors_sha1(module.weight, module.bias)}
            result = cached_check(self.cache, "winograd", self.device, dtype, fields, lambda: winograd_oracle(
                v.m, dtype, self.device, weight=module.weight, bias=module.bias, product=v.product, size=12,
                u=module.transformed_weight(v)))
            if self.on_oracle is not None:
                self.on_oracle(result)
            self._layer_checked[key] = result.ok
        return self._layer_checked[key]

    def defer(self, module: WinogradConv2d, key: tuple) -> None:
        """Queue (layer, input shape key) met in a shape probe, for :meth:`decide_deferred`."""
        self._deferred.append((module, key))

    def decide_deferred(self) -> None:
        """Decide every queued (layer, shape): from the cache, or measured on a random input of that shape
        (a convolution's time does not depend on the values), in the shape's memory format."""
        deferred, self._deferred = self._deferred, []
        gen = torch.Generator("cpu").manual_seed(0)
        for module, key in deferred:
            if key in module.variant_for:
                continue
            shape, dtype, channels_last = key
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x = torch.empty(shape, dtype=dtype, device=self.device, memory_format=fmt)
            if self._lookup(module, x)[3] is None:  # to be measured: values to time on
                x.copy_(torch.randn(shape, generator=gen))
            module.variant_for[key] = self.decide(module, x)

    def _lookup(self, module: WinogradConv2d, x: torch.Tensor) -> tuple[list[Variant], dict, str, dict | None]:
        """(the layer's candidate variants, the decision's shape fields, its cache key, the cached decision or
        None) - from ``x``'s shape, dtype and memory format only."""
        variants = [v for v in self.variants_by_dtype(x.dtype)
                    if module.allowed_tiles is None or v.m in module.allowed_tiles]
        shape = decision_shape(module, x, variants)
        key = decision_key("winograd", self.device, x.dtype, shape)
        cached = self.cache.get(key)
        names = {v.name for v in variants} | {"direct"}
        return variants, shape, key, cached if cached is not None and cached.get("choice") in names else None

    def decide(self, module: WinogradConv2d, x: torch.Tensor) -> Variant:
        variants, shape, key, cached = self._lookup(module, x)
        if not variants:
            return DIRECT
        if cached is not None:
            v = Variant.parse(cached["choice"])
            medians = {k[: -len("_ms")]: t for k, t in cached.items() if k.endswith("_ms")}
            row = {**shape, "dtype": str(x.dtype), **cached, "rule": "measured (cached)"}
        else:
            fns = {v.name: (lambda v=v: module.run_variant(x, v)) for v in (DIRECT, *variants)}
            times = measure_interleaved(fns, repeats=self.repeats, warmup=1, device=self.device)
            best, medians = fastest(times, default="direct")
            v = Variant.parse(best)
            value = {"choice": v.name, **{f"{k}_ms": round(t, 3) for k, t in medians.items()}}
            self.cache.put(key, value)
            row = {**shape, "dtype": str(x.dtype), **value, "rule": "measured"}
        if v != DIRECT and not self._layer_ok(module, v, x.dtype):
            row = {**row, "choice": "direct", "rule": row["rule"] + "; the layer's own oracle failed"}
            medians = {k: t for k, t in medians.items() if k == "direct"}
            v = DIRECT
        module.measured[(tuple(x.shape), x.dtype, _channels_last(x))] = dict(medians)
        module.drop_transformed(keep=module.variants_used() | ({v} if v != DIRECT else set()))
        if self.on_decision is not None:
            self.on_decision(row)
        return v


class WinogradPass(Pass):
    name = "winograd"
    title = "Winograd"
    shares_example = True

    def run(self, ctx: PassContext) -> None:
        candidates = list(ctx.modules(lambda p, m: is_winograd_candidate(m)))
        if not candidates:
            ctx.note("no 3x3 stride-1 convolution in this model; nothing changed")
            return
        cfg = ctx.config
        dname = str(ctx.dtype).removeprefix("torch.")
        fixed_tile = cfg.winograd_tile if cfg.winograd_tile is not None else (None if cfg.measure else PAPER_TILE)
        tiles = [fixed_tile] if fixed_tile is not None else list(cfg.winograd_tiles)
        variants, results = allowed_variants(tiles, ctx.dtype, ctx.device)
        if cfg.winograd_tile is None and fixed_tile is not None and not variants:
            # the paper's rule (F(4x4) everywhere) where F(4x4) fails the oracle on this machine: the largest
            # smaller tile that meets it, everywhere - said in a note (an explicit tile is refused instead)
            for tile in sorted((t for t in TILES if t < fixed_tile), reverse=True):
                variants, more = allowed_variants([tile], ctx.dtype, ctx.device)
                results += more
                if variants:
                    ctx.note(f"F({fixed_tile}x{fixed_tile},3x3), the paper's tile, fails the oracle in {dname} "
                             f"on this machine; {variants[0].name} everywhere instead")
                    fixed_tile = tile
                    break
        for r in results:
            ctx.record(r)
            if not r.ok:
                ctx.note(f"{r.what} refused in {r.dtype}: relative error {r.error:.2e} vs {r.baseline_error:.2e} "
                         f"for direct convolution (limit 2x)")
        if fixed_tile is not None and not variants:
            ctx.require(next(r for r in reversed(results)))  # raises PassRefused with the measured errors
        if not variants:
            ctx.note(f"no Winograd tile meets the oracle in {dname}; nothing changed")
            return
        fixed = variants[0] if fixed_tile is not None else None
        chooser = None
        if fixed is None:
            memo: dict[torch.dtype, list[Variant]] = {ctx.dtype: variants}

            def variants_by_dtype(dtype: torch.dtype) -> list[Variant]:
                if dtype not in memo:
                    memo[dtype] = allowed_variants(cfg.winograd_tiles, dtype, ctx.device)[0]
                return memo[dtype]

            chooser = ConvChooser(variants_by_dtype, ctx.device, cfg.repeats, ctx.cache,
                                  on_decision=lambda row: ctx.decision(**row), on_oracle=ctx.record)
        how = (f"{fixed.name} everywhere" if fixed is not None
               else f"per input shape, the fastest of direct and {', '.join(v.name for v in variants)} (measured)")
        swaps = [ctx.swap(path, WinogradConv2d.from_conv(conv, ctx.backend, fixed, chooser), how)
                 for path, conv in candidates]
        if chooser is not None and ctx.has_example():
            # every layer measures (or reads its cached decision for) its input shape in the example forward
            ctx.after_example(lambda: self._keep_used(ctx, swaps, chooser))

    def _keep_used(self, ctx: PassContext, swaps, chooser: ConvChooser) -> None:
        """After the example forward: the shapes it queued decided, the budget, then every swap whose layer
        chose direct convolution undone."""
        chooser.decide_deferred()
        self._apply_budget(ctx, swaps)
        for swap in swaps:
            used = swap.new.variants_used()
            if used:
                swap.reason = f"{', '.join(sorted(v.name for v in used))}: measured faster than direct convolution"
                for v in used:
                    swap.new.transformed_weight(v)  # precomputed now, not in the model's first forward
                continue
            swap.undo()  # direct convolution won, the layer did not run, or it did not fit the budget
            ctx.log.remove(swap)
        kept = sum(1 for s in swaps if s in ctx.log)
        ctx.note(f"{kept} of {len(swaps)} 3x3 convolutions use Winograd (the others measured faster direct"
                 + (" or did not fit the weight budget)" if ctx.config.winograd_weight_budget is not None else ")"))

    @staticmethod
    def _apply_budget(ctx: PassContext, swaps) -> None:
        """Keep the transformed weights within ``winograd_weight_budget`` x the model's weight bytes.

        Options are (layer, variant) with the time they save (measured: direct minus the variant, summed over
        the layer's input shapes) and the bytes of their U; greedily by milliseconds saved per byte, a layer
        takes at most one variant while the budget lasts. Layers left without one are not swapped.
        """
        budget = ctx.config.winograd_weight_budget
        if budget is None:
            return
        weights = sum(p.numel() * p.element_size() for p in ctx.model.parameters())
        limit = budget * weights
        options = []
        for index, swap in enumerate(swaps):
            module: WinogradConv2d = swap.new
            saved: dict[Variant, float] = {}
            for medians in module.measured.values():
                direct = medians.get("direct")
                if direct is None:
                    continue
                for name, ms in medians.items():
                    if name != "direct":
                        v = Variant.parse(name)
                        saved[v] = saved.get(v, 0.0) + direct - ms
            for v, ms in saved.items():
                if ms > 0:
                    element = torch.empty((), dtype=v.product_dtype(module.weight.dtype)).element_size()
                    nbytes = (v.m + 2) ** 2 * module.in_channels * module.out_channels * element
                    options.append((ms / nbytes, index, v, nbytes))
        options.sort(key=lambda o: (-o[0], o[1]))
        chosen: dict[int, Variant] = {}
        used = 0
        for _, index, v, nbytes in options:
            if index in chosen or used + nbytes > limit:
                continue
            chosen[index] = v
            used += nbytes
        for index, swap in enumerate(swaps):
            module = swap.new
            v = chosen.get(index)
            module.allowed_tiles = {v.m} if v is not None else set()
            for key in list(module.variant_for):
                measured = module.measured.get(key, {})
                module.variant_for[key] = v if v is not None and v.name in measured else DIRECT
            module.drop_transformed(keep={v} if v is not None else set())
            if v is not None:
                module.transformed_weight(v)  # precomputed now (not at the first call)
        ctx.note(f"Winograd weight budget {budget:.0%} of the weights ({limit / 2**20:,.0f} MB): "
                 f"{used / 2**20:,.0f} MB of transformed weights for {len(chosen)} layers, chosen by time saved per byte")
