"""The temporal dimension (paper Section VI, Figures 11-14): spatial vs temporal attention in text-to-video.

Three parts, all returning tidy tables (no plotting):

**1. In-model split** (:func:`run_split`, Figures 11 and 12). A video workload (``make-a-video``: the UNet3D;
``phenaki``: the C-ViViT decoder) runs under ``torch.profiler`` with the profiler's ranges (a
``record_function`` range per module, ``module::<path>::<Class>``, and per attention entry-point call,
``genscope::attention::<kind>::<path>``), baseline and flash attention interleaved. Every op's self time is
charged to a *group* - ``temporal`` (attention sites of kind ``temporal``: ``temp_attentions``/``transformer_in``
in the UNet3D, the temporal blocks of C-ViViT) or ``spatial`` (kinds ``self`` and ``cross``: the attention of
the spatial transformers, whose calls use the ``[B*F, heads, H*W, d]`` layout) - and a *component*:

* ``core``: inside an attention entry-point call (QK^T, softmax, @V or the fused kernel);
* ``head_layout``: copies inside the attention module outside the call (head split/merge);
* ``projections``: the Q/K/V/output ``Linear`` layers of the attention module;
* ``attention_other``: anything else inside the attention module (elementwise);
* ``layout``: the rearrangements that put the attended axis into the sequence position - copies (ops of the
  Memory class, and copies inside a norm applied to a permuted view) issued directly by a module whose
  attention is all of one group (diffusers ``TransformerTemporalModel``: the reshape/permute before the blocks,
  the copy of the permuted input inside its GroupNorm, the ``permute(...).contiguous()`` after;
  ``Transformer2DModel``: ``[B*F, C, H, W] -> [B*F, H*W, C]`` and back). Copies issued by a module with
  attention of both groups (C-ViViT's decoder; the UNet3D root) are charged to the group of the next child
  module run after them when that child holds one group only (C-ViViT: the permute before the temporal
  blocks -> temporal, before the spatial blocks -> spatial), else to ``shared`` (the UNet3D's frame fold
  ``[B, C, F, H, W] <-> [B*F, C, H, W]`` serves every 2-D layer: shown, charged to neither).

The attention call hook (:func:`genscope.models.layers.attention.register_call_hook`) records every call's
layout and FLOPs (spatial ``[B*F, heads, H*W, d]``, temporal ``[B*H*W, heads, F, d]``); FLOPs and bytes per
component come from :class:`genscope.instrument.flops.FlopCounter` on the meta device (same request).

**2. Frames sweep** (:func:`run_sweep`, Figure 14). One spatial and one temporal attention layer of the ModelScope
UNet3D's first level (a diffusers ``Attention`` with the real projections - 320 channels, 5 heads of 64 - and the
layout changes of ``Transformer2DModel`` / ``TransformerTemporalModel``, plus their residual add) on latents of
``image_size / 8``: analytical FLOPs and bytes (:func:`layer_model`), time per backend (median of interleaved
repetitions), achieved FLOP/s and GB/s, fitted exponents in F (:func:`fit_exponents`), the crossover frame count
predicted by the FLOP model (temporal = spatial matmul FLOPs at F = H*W) and the one measured
(:func:`crossovers`).

**3. Why temporal attention is slow.** *Arithmetic intensity* under this memory-traffic model (s bytes per
element; A = T*C elements of one activation, T = B*F*H*W tokens; M = N*heads*L*L elements of one similarity
matrix, N*L = T):

* every op reads its operands and writes its results once (eager execution: nothing stays in cache between
  ops; weights are read once per GEMM);
* layout (standard path): one copy in and one out, 2A each (read + write); the frame-strided variant has none;
* projections: four GEMMs reading A + C^2 and writing A (fused Q/K/V: one GEMM reading A + 3C^2, writing 3A);
* core, fused (flash): read Q, K, V, write O = 4A - the similarity matrix never leaves the kernel, so
  AI = 4*T*C*L / (4*A*s) = **L / s** FLOP/byte: H*W/s for spatial, **F/s** for temporal. With F = 16 in fp32
  that is 4 FLOP/byte, below any CPU or GPU ridge point: temporal attention is memory-bound, spatial (H*W in
  the hundreds to thousands) compute-bound, for the same FLOPs per token per key;
* core, baseline: the entry point's Q/K/V reshape copies (6A: the processor hands it strided views), QK^T (read
  2A, write M), softmax (read M, write M), PV (read M + A, write A) = 10A + 4M;
* head merge: baseline 2A (the processor's transpose+reshape of the [N*heads, L, d] result; the fused kernel
  already writes [N, L, heads, d]); frame-strided variant 2A (frames back into the batch) for both backends;
* residual add: 3A.

Each of the N*heads = B*H*W*heads problems of temporal attention is an [F, d] x [d, F] GEMM - too small for
the blocked kernels that reach peak - so achieved FLOP/s drops with F as well. *Hardware counters*: on CPU,
``perf stat`` (L1/LLC load misses per thousand instructions) attached to this process around the layer's
repetitions, when the kernel exposes hardware events; on CUDA, Nsight Compute (``ncu``: L1/L2 hit rates, DRAM
bytes) in a child process, when ``ncu`` is installed. Missing counters are a note in the tables, not an error.

**Beyond the paper**: the ``strided`` variant of the temporal layer is
:func:`genscope.passes.temporal.frame_strided_attention` - attention over frames on strided views of one fused
Q/K/V projection of the UNet's own layout, no layout copies - timed next to the standard path with its output
compared (relative error). In the split, variant ``strided`` profiles ``make-a-video`` with the opt-in pass
:func:`genscope.passes.temporal.apply` on its UNet.

Why hand-written: torch.profiler records events and torch's FLOP counter counts ops; neither knows which
attention a copy serves, nor what a temporal layer is. Built on torch.profiler, ``FlopCounter``, diffusers
``Attention`` and numpy's least squares.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError
from genscope.instrument.opclasses import ATTENTION_RANGE, op_class
from genscope.models.layers.attention import (
    AttentionCall,
    install_attention,
    register_call_hook,
    register_wrapper,
    use_backend,
)
from genscope.models.runtime import synchronize
from genscope.passes.temporal import frame_strided_attention, relative_error

STUDY = "temporal"
SWEEP_WORKLOAD = "attention-layer"  # RunRecord.workload of a frames sweep
SWEEP_PRESET = "modelscope-level0"

# Workloads the in-model split applies to, and the component holding their spatial + temporal attention.
SPLIT_COMPONENTS: dict[str, str] = {"make-a-video": "denoiser", "phenaki": "decoder"}
GROUPS = ("spatial", "temporal")
COMPONENTS = ("core", "head_layout", "layout", "projections", "attention_other")
# What "attention time" means in the headline comparison (Figure 12a): the computation and the copies it needs.
HEADLINE_COMPONENTS = ("core", "head_layout", "layout")
SPLIT_NOTE = ("core = inside attention entry-point calls (QK^T, softmax, @V / fused kernel); layout = copies "
              "that move the attended axis into the sequence position; head_layout = head split/merge copies; "
              "projections = Q/K/V/out Linear layers. spatial = the spatial transformers' self- and "
              "cross-attention ([B*F, heads, H*W, d]); temporal = [B*H*W, heads, F, d].")

# ModelScope text-to-video UNet3D, first level (ali-vilab/text-to-video-ms-1.7b unet/config.json:
# block_out_channels[0] = 320, attention_head_dim = 64). diffusers' UNet3D passes attention_head_dim as the
# *number of heads* argument; its blocks build Transformer2DModel / TransformerTemporalModel with
# (in_channels // 64 = 5 heads, 64 channels per head) - checked on the built paper UNet (5 heads, to_q 320x320).
MODELSCOPE_CHANNELS = 320
MODELSCOPE_HEADS = 5
VAE_FACTOR = 8  # KL-f8 VAE of ModelScope / Stable Diffusion: latent side = image side / 8
LAYERS = ("spatial", "temporal")
VARIANTS = ("standard", "strided")

# Default sweep grid: on 2 CPU cores in well under 5 minutes (latent 4x4, 8x8 and 16x16, so that the predicted
# crossovers F = H*W = 16 and 64 lie inside the grid and 256 beyond it).
DEFAULT_FRAMES = (2, 4, 8, 16, 32, 64, 128)
DEFAULT_IMAGE_SIZES = (32, 64, 128)
DEFAULT_BATCH = 1
DEFAULT_BACKENDS = ("baseline", "flash")  # the paper's two; any of genscope's BACKENDS can be asked for
MAX_FRAMES = 4096
MAX_IMAGE_SIZE = 2048
MAX_SIMILARITY_BYTES = 1 << 30  # a baseline point whose similarity matrix would exceed 1 GiB is skipped
SOFTMAX_FLOPS_PER_ELEMENT = 5  # max, subtract, exp, sum, divide (as genscope.instrument.flops)

# user-space counts (":u"): allowed at perf_event_paranoid 2 for one's own process
COUNTER_EVENTS_CPU = ("instructions:u", "cache-references:u", "cache-misses:u", "L1-dcache-loads:u",
                      "L1-dcache-load-misses:u", "LLC-loads:u", "LLC-load-misses:u")
NCU_METRICS = ("l1tex__t_sector_hit_rate.pct", "lts__t_sector_hit_rate.pct", "dram__bytes_read.sum",
               "dram__bytes_write.sum")


# ====================================================================================================
# Analytical model of one layer
# ====================================================================================================
@dataclass(frozen=True)
class LayerShape:
    """One attention layer of a video UNet: ``kind`` spatial or temporal, on latents [B*F, C, H, W]."""

    kind: str
    batch: int  # B (videos)
    frames: int  # F
    height: int  # latent H
    width: int  # latent W
    channels: int  # C = heads * d
    heads: int

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def tokens(self) -> int:
        return self.batch * self.frames * self.height * self.width  # T

    @property
    def attn_batch(self) -> int:
        """N: spatial B*F, temporal B*H*W."""
        return self.batch * self.frames if self.kind == "spatial" else self.batch * self.height * self.width

    @property
    def seq_len(self) -> int:
        """L: spatial H*W, temporal F."""
        return self.height * self.width if self.kind == "spatial" else self.frames

    @property
    def layout(self) -> str:
        return "[B*F, heads, H*W, d]" if self.kind == "spatial" else "[B*H*W, heads, F, d]"

    @property
    def qkv_shape(self) -> tuple[int, int, int, int]:
        return (self.attn_batch, self.heads, self.seq_len, self.head_dim)


def layer_model(shape: LayerShape, backend: str = "flash", variant: str = "standard",
                dtype_bytes: int = 4) -> dict[str, float]:
    """FLOPs (2 x MACs of the matmuls, as torch's counter counts them; softmax apart) and bytes (the traffic
    model of the module docstring) of one layer call, with the arithmetic intensities."""
    n, h, seq, d = shape.qkv_shape
    c, t = shape.channels, shape.tokens
    a = t * c  # elements of one activation
    m = n * h * seq * seq  # elements of one similarity matrix
    core_flops = 4 * n * h * seq * seq * d
    projection_flops = 4 * 2 * t * c * c  # to_q, to_k, to_v, to_out: [T, C] x [C, C]
    strided = variant == "strided" and shape.kind == "temporal"
    layout_elems = 0 if strided else 4 * a
    projection_elems = (6 * a + 4 * c * c + c) if strided else (8 * a + 4 * c * c + c)
    if backend == "baseline":
        core_elems = 10 * a + 4 * m if h > 1 else 4 * a + 4 * m
        head_elems = 2 * a
    else:
        core_elems = 4 * a
        head_elems = 2 * a if strided else 0
    residual_elems = 3 * a
    total_elems = layout_elems + projection_elems + core_elems + head_elems + residual_elems
    s = dtype_bytes
    out = {
        "core_flops": core_flops, "core_macs": core_flops // 2,
        "softmax_flops": SOFTMAX_FLOPS_PER_ELEMENT * m,
        "projection_flops": projection_flops, "layer_flops": core_flops + projection_flops,
        "layer_macs": (core_flops + projection_flops) // 2,
        "layout_bytes": layout_elems * s, "projection_bytes": projection_elems * s, "core_bytes": core_elems * s,
        "head_bytes": head_elems * s, "residual_bytes": residual_elems * s, "layer_bytes": total_elems * s,
        "similarity_bytes": m * s,
    }
    out["core_ai"] = out["core_flops"] / out["core_bytes"]
    out["layer_ai"] = out["layer_flops"] / out["layer_bytes"]
    return out


def predicted_crossover(height: int, width: int) -> int:
    """Frames at which temporal attention's matmul FLOPs equal spatial's: 4*B*H*W*F^2*C = 4*B*F*(H*W)^2*C."""
    return height * width


# ====================================================================================================
# The benchmark layers (real modules)
# ====================================================================================================
class _Timer:
    """Named wall-clock sections (device-synchronized on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def section(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.ms[name] += (time.perf_counter() - start) * 1e3


@contextlib.contextmanager
def _null_section(name: str):
    yield


class VideoAttentionLayer(nn.Module):
    """One spatial or temporal attention layer of the ModelScope UNet3D, on the UNet's [B*F, C, H, W] layout.

    A diffusers ``Attention`` (to_q/to_k/to_v without bias, to_out with bias, as ``BasicTransformerBlock``
    builds it) between the layout changes of ``Transformer2DModel`` (spatial) or ``TransformerTemporalModel``
    (temporal), plus their residual add; the GroupNorm and proj_in/proj_out of those models are left out (the
    same for both kinds). ``variant="strided"`` (temporal only) runs
    :func:`genscope.passes.temporal.frame_strided_attention` on the same weights.
    """

    def __init__(self, kind: str, channels: int = MODELSCOPE_CHANNELS, heads: int = MODELSCOPE_HEADS):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        if kind not in LAYERS:
            raise UserError(f"unknown layer kind {kind!r}; accepted: {', '.join(LAYERS)}")
        self.kind = kind
        self.attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False,
                              out_bias=True)
        self.sites = install_attention(self.attn, prefix=f"layer.{kind}.attn",
                                       kind_fn=lambda path, m: "temporal" if kind == "temporal" else "self")
        self._cache: dict = {}

    def forward(self, x: torch.Tensor, frames: int, variant: str = "standard", timer: _Timer | None = None
                ) -> torch.Tensor:
        # x: [B*F, C, H, W]
        bf, c, h, w = x.shape
        b = bf // frames
        section = timer.section if timer is not None else _null_section
        if self.kind == "spatial":
            with section("layout"):
                tokens = x.permute(0, 2, 3, 1).reshape(bf, h * w, c)  # [B*F, H*W, C] (Transformer2DModel)
            y = self.attn(tokens)
            with section("layout"):
                y = y.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()  # [B*F, C, H, W]
            return y + x
        if variant == "strided":
            tokens = x.view(bf, c, h * w).transpose(1, 2)  # [B*F, H*W, C]: a view, no copy
            y = frame_strided_attention(self.attn, tokens, frames, site=self.sites[0], cache=self._cache)
            return torch.add(x, y.transpose(1, 2).view(bf, c, h, w))  # the add writes channel-first
        with section("layout"):
            # TransformerTemporalModel: [B*F, C, H, W] -> [B, F, C, H, W] -> [B, H, W, F, C] -> [B*H*W, F, C]
            tokens = x.reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
        y = self.attn(tokens)  # [B*H*W, F, C]
        with section("layout"):
            y = y.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).contiguous().reshape(bf, c, h, w)
        return y + x


# ====================================================================================================
# Input validation
# ====================================================================================================
def parse_int_list(text: str | Sequence[int], what: str, minimum: int, maximum: int) -> tuple[int, ...]:
    """``"2,4,8"`` -> (2, 4, 8), each within [minimum, maximum]; one clear UserError otherwise."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise UserError(f"{what}: give a comma-separated list of integers, got {text!r}")
        values = []
        for p in parts:
            try:
                values.append(int(p))
            except ValueError:
                raise UserError(f"{what}: {p!r} is not an integer (e.g. 2,4,8)") from None
    else:
        values = [int(v) for v in text]
        if not values:
            raise UserError(f"{what}: the list is empty")
    for v in values:
        if v < minimum or v > maximum:
            raise UserError(f"{what}: {v} is out of range; accepted {minimum} to {maximum}")
    return tuple(sorted(set(values)))


def check_image_size(size: int, *, factor: int = VAE_FACTOR) -> int:
    """Latent side of an image size the layer can take: a multiple of the VAE factor; returns the latent side."""
    if size < factor or size > MAX_IMAGE_SIZE or size % factor:
        raise UserError(f"image size {size} cannot be taken by the layer: accepted multiples of {factor} "
                        f"from {factor} to {MAX_IMAGE_SIZE} (latent side = image size / {factor})")
    return size // factor


def check_layer_config(channels: int, heads: int, batch: int) -> None:
    if channels < 1 or heads < 1 or channels % heads:
        raise UserError(f"channels ({channels}) must be a positive multiple of heads ({heads})")
    if not 1 <= batch <= 64:
        raise UserError(f"batch {batch} is out of range; accepted 1 to 64")


# ====================================================================================================
# Frames sweep
# ====================================================================================================
@dataclass(frozen=True)
class SweepConfig:
    frames: tuple[int, ...] = DEFAULT_FRAMES
    image_sizes: tuple[int, ...] = DEFAULT_IMAGE_SIZES
    channels: int = MODELSCOPE_CHANNELS
    heads: int = MODELSCOPE_HEADS
    batch: int = DEFAULT_BATCH
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    repeat: int = 3  # rounds at least
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    min_time_s: float = 0.5  # more rounds (up to max_repeat) while a point's measurements take less than this
    max_repeat: int = 25
    counters: str = "auto"  # auto: collect where available; on: required (UserError if missing); off

    def settings(self) -> dict:
        d = asdict(self)
        d["frames"] = list(self.frames)
        d["image_sizes"] = list(self.image_sizes)
        d["backends"] = list(self.backends)
        return d


def _layer_configs(backends: Sequence[str]) -> list[tuple[str, str, str]]:
    """(layer, variant, backend) in the interleaving order."""
    out = []
    for backend in backends:
        out += [("spatial", "standard", backend), ("temporal", "standard", backend), ("temporal", "strided", backend)]
    return out


class _CoreTimer:
    """Wall time of every attention entry-point call (a wrapper), summed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms = 0.0

    @contextlib.contextmanager
    def __call__(self, call: AttentionCall):
        timer = _Timer(self.device)
        try:
            with timer.section("core"):
                yield
        finally:
            self.ms += timer.ms["core"]


def run_sweep(config: SweepConfig = SweepConfig(), progress: Callable[[str], None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """The frames sweep: tables ``points``, ``fits``, ``crossover``, ``speedup``, ``counters``, ``notes``."""
    from genscope.models.runtime import parse_device, parse_dtype

    check_layer_config(config.channels, config.heads, config.batch)
    for size in config.image_sizes:
        check_image_size(size)
    for f in config.frames:
        if f < 1:
            raise UserError(f"frame count {f} must be at least 1")
    if config.repeat < 1 or config.warmup < 0:
        raise UserError(f"repeat must be >= 1 and warmup >= 0, got {config.repeat} / {config.warmup}")
    device, dtype = parse_device(config.device), parse_dtype(config.dtype)
    if device.type == "meta":
        raise UserError("the frames sweep times real tensors: use --device cpu or cuda")
    counter_status = counters_available(device)
    if config.counters == "on" and not counter_status[0]:
        raise UserError(f"--counters requested but no hardware counters here: {counter_status[1]}")
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    torch.manual_seed(config.seed)
    layers = {k: VideoAttentionLayer(k, config.channels, config.heads).to(device=device, dtype=dtype).eval()
              for k in LAYERS}
    configs = _layer_configs(config.backends)
    rows: list[dict] = []
    notes: list[str] = []
    with torch.inference_mode():
        for size in config.image_sizes:
            side = check_image_size(size)
            for frames in config.frames:
                gen = torch.Generator().manual_seed(config.seed + frames)
                # x: [B*F, C, H, W], the UNet's layout at the first level
                x = torch.randn(config.batch * frames, config.channels, side, side, generator=gen).to(device, dtype)
                runnable, skipped = [], []
                for layer, variant, backend in configs:
                    shape = LayerShape(layer, config.batch, frames, side, side, config.channels, config.heads)
                    model = layer_model(shape, backend, variant, dtype_bytes)
                    if backend == "baseline" and model["similarity_bytes"] > MAX_SIMILARITY_BYTES:
                        skipped.append((layer, variant, backend))
                    else:
                        runnable.append((layer, variant, backend))
                if skipped:
                    notes.append(f"image {size}, F={frames}: baseline skipped (similarity matrix over "
                                 f"{MAX_SIMILARITY_BYTES / 2**30:.0f} GiB)")
                outputs: dict[tuple, torch.Tensor] = {}
                times: dict[tuple, dict[str, list[float]]] = {c: defaultdict(list) for c in runnable}

                def once(cfg, record: bool, keep: bool = False, x=x, frames=frames, times=times, outputs=outputs):
                    layer, variant, backend = cfg
                    timer = _Timer(device)
                    core = _CoreTimer(device)
                    with use_backend(backend), register_wrapper(core):
                        synchronize(device)
                        start = time.perf_counter()
                        y = layers[layer](x, frames, variant, timer)
                        synchronize(device)
                        total = (time.perf_counter() - start) * 1e3
                    if keep:
                        outputs[cfg] = y
                    if record:
                        times[cfg]["layer_ms"].append(total)
                        times[cfg]["core_ms"].append(core.ms)
                        times[cfg]["layout_ms"].append(timer.ms.get("layout", 0.0))

                for cfg in runnable:  # warm-up (and the outputs compared below)
                    for i in range(max(config.warmup, 1)):
                        once(cfg, record=False, keep=(i == 0))
                # interleaved: every configuration once per round; cheap points get more rounds (up to
                # max_repeat) until min_time_s of measurements, so that their medians are not one burst of noise
                rounds, spent = 0, 0.0
                while rounds < config.repeat or (spent < config.min_time_s and rounds < config.max_repeat):
                    start = time.perf_counter()
                    for cfg in runnable:
                        once(cfg, record=True)
                    spent += time.perf_counter() - start
                    rounds += 1
                if progress is not None:
                    progress(f"image {size} (latent {side}x{side}), F={frames}: done")
                for layer, variant, backend in configs:
                    cfg = (layer, variant, backend)
                    shape = LayerShape(layer, config.batch, frames, side, side, config.channels, config.heads)
                    model = layer_model(shape, backend, variant, dtype_bytes)
                    measured = times.get(cfg)
                    row = {
                        "image_size": size, "latent": side, "frames": frames, "layer": layer, "variant": variant,
                        "backend": backend, "batch": config.batch, "channels": config.channels,
                        "heads": config.heads, "head_dim": shape.head_dim, "attn_batch": shape.attn_batch,
                        "seq_len": shape.seq_len, "layout": shape.layout, **model,
                        "skipped": cfg in skipped, "repeats": len(measured["layer_ms"]) if measured else 0,
                    }
                    for key in ("layer_ms", "core_ms", "layout_ms"):
                        row[key] = statistics.median(measured[key]) if measured else float("nan")
                    if measured and len(measured["layer_ms"]) > 1:
                        vals = measured["layer_ms"]
                        row["layer_spread_pct"] = 100 * (max(vals) - min(vals)) / statistics.median(vals)
                    else:
                        row["layer_spread_pct"] = float("nan")
                    row["layer_gflops_per_s"] = _rate(model["layer_flops"], row["layer_ms"])
                    row["core_gflops_per_s"] = _rate(model["core_flops"], row["core_ms"])
                    row["layer_gb_per_s"] = _rate(model["layer_bytes"], row["layer_ms"])
                    row["core_gb_per_s"] = _rate(model["core_bytes"], row["core_ms"])
                    ref = outputs.get(("temporal", "standard", backend))
                    mine = outputs.get(cfg)
                    row["rel_error_vs_standard"] = (relative_error(mine, ref) if variant == "strided"
                                                    and ref is not None and mine is not None else float("nan"))
                    rows.append(row)
                del outputs, x
    points = pd.DataFrame(rows)
    counters = collect_counters(layers, config, device, dtype, counter_status, notes)
    if not counter_status[0]:
        notes.append(f"hardware counters: not collected - {counter_status[1]}")
    return {"points": points, "fits": fit_exponents(points), "crossover": crossovers(points),
            "speedup": strided_speedup(points), "counters": counters,
            "notes": pd.DataFrame({"note": notes}, dtype=object)}


def _rate(amount: float, ms: float) -> float:
    """amount per millisecond -> G amount per second."""
    return amount / (ms * 1e-3) / 1e9 if ms and ms > 0 and math.isfinite(ms) else float("nan")


def fit_exponents(points: pd.DataFrame) -> pd.DataFrame:
    """Least-squares fit of log y = log A + k log F per (image size, layer, variant, backend) and quantity."""
    rows = []
    quantities = ("core_flops", "layer_flops", "core_ms", "layer_ms")
    for (size, layer, variant, backend), grp in points.groupby(["image_size", "layer", "variant", "backend"],
                                                                sort=False):
        for q in quantities:
            sub = grp[np.isfinite(grp[q].astype(float)) & (grp[q].astype(float) > 0)]
            if len(sub) < 2:
                continue
            lx, ly = np.log(sub["frames"].astype(float)), np.log(sub[q].astype(float))
            k, log_a = np.polyfit(lx, ly, 1)
            pred = log_a + k * lx
            ss_res = float(((ly - pred) ** 2).sum())
            ss_tot = float(((ly - ly.mean()) ** 2).sum())
            rows.append({"image_size": size, "layer": layer, "variant": variant, "backend": backend,
                         "quantity": q, "exponent": float(k), "prefactor": float(math.exp(log_a)),
                         "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "points": len(sub),
                         "frames_min": int(sub["frames"].min()), "frames_max": int(sub["frames"].max())})
    return pd.DataFrame(rows)


def _measured_crossover(frames: np.ndarray, ratio: np.ndarray) -> tuple[float, str]:
    """First F where ratio (temporal / spatial) reaches 1, interpolated in log-log; with a status word."""
    ok = np.isfinite(ratio) & (ratio > 0)
    frames, ratio = frames[ok], ratio[ok]
    if len(frames) == 0:
        return float("nan"), "not measured"
    if ratio[0] >= 1:
        return float(frames[0]), "at or below the grid"
    for i in range(1, len(frames)):
        if ratio[i] >= 1:
            lf0, lf1 = math.log(frames[i - 1]), math.log(frames[i])
            lr0, lr1 = math.log(ratio[i - 1]), math.log(ratio[i])
            lf = lf0 + (0 - lr0) * (lf1 - lf0) / (lr1 - lr0) if lr1 != lr0 else lf1
            return float(math.exp(lf)), "within the grid"
    return float("nan"), f"beyond the grid (> {int(frames[-1])} frames)"


def crossovers(points: pd.DataFrame) -> pd.DataFrame:
    """Per image size: predicted crossover (FLOP model, F = H*W) and measured ones (core and layer time,
    standard layers, per backend)."""
    rows = []
    std = points[points["variant"] == "standard"]
    for size, grp in std.groupby("image_size", sort=True):
        latent = int(grp["latent"].iloc[0])
        predicted = predicted_crossover(latent, latent)
        fmin, fmax = int(grp["frames"].min()), int(grp["frames"].max())
        # the FLOP-model crossover, found on the grid the same way the measured one is
        flops = grp[grp["backend"] == grp["backend"].iloc[0]]
        sp = flops[flops["layer"] == "spatial"].set_index("frames")["core_flops"].astype(float)
        tp = flops[flops["layer"] == "temporal"].set_index("frames")["core_flops"].astype(float)
        row = {"image_size": int(size), "latent": latent, "hw": latent * latent,
               "predicted_frames": predicted,
               "predicted_status": ("within the grid" if fmin <= predicted <= fmax else
                                    f"beyond the grid (> {fmax} frames)" if predicted > fmax else
                                    "below the grid"),
               "flops_grid_frames": _measured_crossover(sp.index.to_numpy(), (tp / sp).to_numpy())[0]}
        for backend, bgrp in grp.groupby("backend", sort=False):
            for q in ("core_ms", "layer_ms"):
                s = bgrp[bgrp["layer"] == "spatial"].set_index("frames")[q].astype(float)
                t = bgrp[bgrp["layer"] == "temporal"].set_index("frames")[q].astype(float)
                frames = s.index.intersection(t.index).sort_values()
                value, status = _measured_crossover(frames.to_numpy(), (t[frames] / s[frames]).to_numpy())
                row[f"measured_{q.removesuffix('_ms')}_{backend}_frames"] = value
                row[f"measured_{q.removesuffix('_ms')}_{backend}_status"] = status
        rows.append(row)
    return pd.DataFrame(rows)


def strided_speedup(points: pd.DataFrame) -> pd.DataFrame:
    """Standard vs frame-strided temporal layer per point and backend: times, speedups, relative error."""
    t = points[points["layer"] == "temporal"]
    keys = ["image_size", "frames", "backend"]
    std = t[t["variant"] == "standard"].set_index(keys)
    fast = t[t["variant"] == "strided"].set_index(keys)
    common = std.index.intersection(fast.index)
    out = pd.DataFrame(index=common)
    out["standard_layer_ms"] = std.loc[common, "layer_ms"]
    out["strided_layer_ms"] = fast.loc[common, "layer_ms"]
    out["layer_speedup"] = out["standard_layer_ms"] / out["strided_layer_ms"]
    out["standard_core_ms"] = std.loc[common, "core_ms"]
    out["strided_core_ms"] = fast.loc[common, "core_ms"]
    out["standard_layout_ms"] = std.loc[common, "layout_ms"]
    out["standard_bytes"] = std.loc[common, "layer_bytes"]
    out["strided_bytes"] = fast.loc[common, "layer_bytes"]
    out["rel_error"] = fast.loc[common, "rel_error_vs_standard"]
    return out.reset_index()


# ====================================================================================================
# Hardware counters (guarded)
# ====================================================================================================
def _perf_values(text: str) -> dict[str, float | None]:
    """``perf stat -x,`` output -> event -> count (None where '<not supported>' / '<not counted>')."""
    values: dict[str, float | None] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        raw, event = parts[0].strip(), parts[2].strip().removesuffix(":u")
        if not event:
            continue
        try:
            values[event] = float(raw)
        except ValueError:
            values[event] = None
    return values


def perf_status() -> tuple[bool, str]:
    """(available, reason): ``perf stat -e cache-misses true`` must run and count."""
    perf = shutil.which("perf")
    if perf is None:
        return False, "perf is not installed"
    try:
        proc = subprocess.run([perf, "stat", "-x,", "-e", "cache-misses:u,instructions:u", "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"perf did not run ({exc})"
    if proc.returncode != 0:
        return False, f"perf stat failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    values = _perf_values(proc.stderr)
    if not values or any(v is None for v in values.values()):
        return False, ("perf stat reports the hardware events as <not supported> (no CPU PMU exposed to this "
                       "machine, e.g. a VM)")
    return True, "perf stat"


def ncu_status(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "Nsight Compute needs a CUDA device"
    if shutil.which("ncu") is None:
        return False, "ncu (Nsight Compute) is not installed"
    return True, "ncu"


def counters_available(device: torch.device) -> tuple[bool, str]:
    return ncu_status(device) if device.type == "cuda" else perf_status()


@contextlib.contextmanager
def perf_attached(events: Sequence[str] = COUNTER_EVENTS_CPU):
    """``perf stat`` attached to this process for the duration of the block; yields a dict filled on exit."""
    result: dict[str, float | None] = {}
    proc = subprocess.Popen([shutil.which("perf") or "perf", "stat", "-x,", "-e", ",".join(events), "-p",
                             str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # let perf attach
    try:
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        result.update(_perf_values(err or ""))


def _counter_points(config: SweepConfig) -> list[tuple[int, int]]:
    """Where counters are read: the largest image size at the grid's frame count nearest 16 (the paper's)."""
    frames = min(config.frames, key=lambda f: (abs(f - 16), f))
    return [(max(config.image_sizes), frames)]


def collect_counters(layers: dict[str, VideoAttentionLayer], config: SweepConfig, device: torch.device,
                     dtype: torch.dtype, status: tuple[bool, str], notes: list[str]) -> pd.DataFrame:
    """Counter readings per (point, layer, variant, backend); an empty table when none are available."""
    columns = ["image_size", "frames", "layer", "variant", "backend", "tool", "metric", "value"]
    if config.counters == "off" or not status[0]:
        return pd.DataFrame(columns=columns)
    rows = []
    for size, frames in _counter_points(config):
        side = size // VAE_FACTOR
        x = torch.randn(config.batch * frames, config.channels, side, side).to(device, dtype)
        for layer, variant, backend in _layer_configs(config.backends):
            if device.type == "cuda":
                values = _ncu_probe(layer, variant, backend, size, frames, config)
                tool = "ncu"
            else:
                with torch.inference_mode(), use_backend(backend):
                    layers[layer](x, frames, variant)  # warm
                    with perf_attached() as values:
                        for _ in range(max(config.repeat, 3)):
                            layers[layer](x, frames, variant)
                tool = "perf"
                instructions = values.get("instructions")
                if instructions:
                    for event in ("L1-dcache-load-misses", "LLC-load-misses", "cache-misses"):
                        if values.get(event) is not None:
                            values[f"{event} MPKI"] = 1000.0 * values[event] / instructions
            for metric, value in values.items():
                rows.append({"image_size": size, "frames": frames, "layer": layer, "variant": variant,
                             "backend": backend, "tool": tool, "metric": metric,
                             "value": float("nan") if value is None else float(value)})
    if not rows:
        notes.append("hardware counters: the tool ran but returned no readings")
    return pd.DataFrame(rows, columns=columns)


def _ncu_probe(layer: str, variant: str, backend: str, size: int, frames: int, config: SweepConfig) -> dict:
    """Nsight Compute metrics of one layer call in a child process (CUDA only; untested without a GPU)."""
    cmd = ["ncu", "--csv", "--metrics", ",".join(NCU_METRICS), "--target-processes", "all", sys.executable, "-m",
           "genscope.studies.temporal", "probe", layer, variant, backend, str(size), str(frames),
           str(config.channels), str(config.heads), str(config.batch), config.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"ncu_failed": None}
    sums: dict[str, list[float]] = defaultdict(list)
    import csv
    import io

    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('"')]
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        name, value = rec.get("Metric Name"), rec.get("Metric Value", "").replace(",", "")
        with contextlib.suppress(TypeError, ValueError):
            sums[name].append(float(value))
    out: dict[str, float | None] = {}
    for name, vals in sums.items():
        # bytes add up over kernels; hit rates are averaged over kernels
        out[name] = sum(vals) if name.endswith(".sum") else statistics.fmean(vals)
    return out


def _probe_main(argv: list[str]) -> int:
    """``python -m genscope.studies.temporal probe LAYER VARIANT BACKEND SIZE FRAMES C HEADS B DTYPE``."""
    from genscope.models.runtime import parse_dtype

    layer, variant, backend, size, frames, channels, heads, batch, dtype = argv
    device = torch.device("cuda")
    dt = parse_dtype(dtype)
    side = int(size) // VAE_FACTOR
    torch.manual_seed(0)
    module = VideoAttentionLayer(layer, int(channels), int(heads)).to(device=device, dtype=dt).eval()
    x = torch.randn(int(batch) * int(frames), int(channels), side, side, device=device, dtype=dt)
    with torch.inference_mode(), use_backend(backend):
        module(x, int(frames), variant)
    torch.cuda.synchronize()
    return 0


# ====================================================================================================
# In-model split
# ====================================================================================================
def site_group(kind: str) -> str:
    return "temporal" if kind == "temporal" else "spatial"


def call_layout(call: AttentionCall) -> str:
    if call.kind == "temporal":
        return "[B*H*W, heads, F, d]"
    if call.kind == "cross":
        return "[B*F, heads, H*W, d] x keys [B*F, heads, T, d]"
    return "[B*F, heads, H*W, d]"


@dataclass
class _SplitModel:
    """Which module paths hold which attention group (within the split component)."""

    sites: dict[str, str]  # attention module path -> group
    kinds: dict[str, str]  # attention module path -> kind
    scopes: dict[str, str | None]  # ancestor path of attention -> its group, None when mixed
    component: str

    @classmethod
    def of(cls, sites, component: str) -> _SplitModel:
        inside = [s for s in sites if s.path == component or s.path.startswith(component + ".")]
        groups = {s.path: site_group(s.kind) for s in inside}
        scopes: dict[str, set[str]] = defaultdict(set)
        for path, group in groups.items():
            parts = path.split(".")
            for i in range(1, len(parts)):
                scopes[".".join(parts[:i])].add(group)
        return cls(groups, {s.path: s.kind for s in inside},
                   {p: (next(iter(g)) if len(g) == 1 else None) for p, g in scopes.items()}, component)

    def site_of(self, path: str) -> str | None:
        """The attention module that ``path`` is (or lies inside), if any."""
        while path:
            if path in self.sites:
                return path
            if "." not in path:
                return None
            path = path.rsplit(".", 1)[0]
        return None

    def group_of_subtree(self, path: str) -> str | None:
        if path in self.sites:
            return self.sites[path]
        return self.scopes.get(path)


_COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_reshape_copy"}


def _module_of(name: str) -> tuple[str, str]:
    """``module::<path>::<Class>`` -> (path, class)."""
    _, rest = name.split("::", 1)
    path, _, cls = rest.rpartition("::")
    return path, cls


def _next_child_group(model: _SplitModel, scope_event, after_us: float) -> str | None:
    """Group of the first child module range of ``scope_event`` that starts after ``after_us``."""
    best = None
    for child in scope_event.cpu_children:
        if child.name.startswith("module::") and child.time_range.start >= after_us and (
                best is None or child.time_range.start < best.time_range.start):
            best = child
    if best is None:
        return None
    return model.group_of_subtree(_module_of(best.name)[0])


def classify_event(evt, model: _SplitModel) -> tuple[str, str, str] | None:
    """(group, component, site path or scope path) of one profiler event's self time, or None if it is not
    attention work of the split component. group is spatial / temporal / shared."""
    top_op = evt.name if evt.name.startswith("aten::") else None
    crossed = not evt.name.startswith("aten::")
    copy_in_chain = evt.name in _COPY_OPS
    modules = []  # innermost first: (path, class, event)
    node = evt
    attention_path = None
    while node is not None:
        name = node.name
        if name.startswith("aten::"):
            if not crossed:
                top_op = name
                copy_in_chain = copy_in_chain or name in _COPY_OPS
        else:
            crossed = True
            if name.startswith(ATTENTION_RANGE + "::") and attention_path is None:
                attention_path = name.split("::", 3)[3] if name.count("::") >= 3 else ""
            elif name.startswith("module::"):
                path, cls = _module_of(name)
                modules.append((path, cls, node))
            elif name.startswith("phase::"):
                break
        node = node.cpu_parent
    if attention_path is not None:
        site = model.site_of(attention_path)
        return (model.sites[site], "core", site) if site is not None else None
    if not modules:
        return None
    inner_path = modules[0][0]
    site = model.site_of(inner_path)
    if site is not None:
        cls = op_class(top_op) if top_op else "Other"
        component = {"Linear": "projections", "Memory": "head_layout"}.get(cls, "attention_other")
        return model.sites[site], component, site
    if top_op is None:
        return None
    # the innermost module that has attention below it (a scope), and the module just inside it
    for i, (path, _, scope_event) in enumerate(modules):
        if path not in model.scopes:
            continue
        group = model.scopes[path]
        if i == 0:  # issued by the scope module itself
            if op_class(top_op) != "Memory":
                return None
            if group is None:
                group = _next_child_group(model, scope_event, evt.time_range.start) or "shared"
            return group, "layout", path
        if i == 1 and group is not None and copy_in_chain:
            # a copy inside a non-attention child (GroupNorm applied to a permuted view)
            return group, "layout", path
        return None
    return None


def _self_us(evt, use_device: bool) -> float:
    return evt.self_device_time_total if use_device else evt.self_cpu_time_total


def attribute_split(events, model: _SplitModel, device_type: str) -> tuple[dict, dict, float]:
    """Profiler events -> ({(group, component): ms}, {site path: [call ms, ...]}, component total ms)."""
    use_device = device_type == "cuda"
    split: dict[tuple[str, str], float] = defaultdict(float)
    calls: dict[str, list[float]] = defaultdict(list)
    component_ms = 0.0
    prefix = f"module::{model.component}::"
    for evt in events:
        if getattr(evt, "device_type", None) is not None and str(evt.device_type).endswith("CUDA") \
                and not use_device:
            continue
        if evt.name.startswith(ATTENTION_RANGE + "::"):
            path = evt.name.split("::", 3)[3] if evt.name.count("::") >= 3 else ""
            site = model.site_of(path)
            if site is not None:
                calls[site].append((evt.device_time_total if use_device else evt.cpu_time_total) / 1e3)
        if evt.name.startswith(prefix):
            component_ms += (evt.device_time_total if use_device else evt.cpu_time_total) / 1e3
        us = _self_us(evt, use_device)
        if us <= 0:
            continue
        where = classify_event(evt, model)
        if where is not None:
            split[(where[0], where[1])] += us / 1e3
    return split, calls, component_ms


@contextlib.contextmanager
def _attention_ranges():
    def wrap(call: AttentionCall):
        return torch.profiler.record_function(f"{ATTENTION_RANGE}::{call.kind}::{call.path}")

    with register_wrapper(wrap):
        yield


def _trace_events(run: Callable[[], object], components, device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    from genscope.instrument.profiler import module_ranges

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with module_ranges(components), _attention_ranges(), profile(activities=activities) as prof:
        synchronize(device)
        run()
        synchronize(device)
    return prof.events()


def record_calls(run: Callable[[], object]) -> list[dict]:
    """Every attention call of one run, as the call hook sees it (path, kind, shapes, FLOPs, phase)."""
    from genscope.workloads.phases import current_phase

    calls: list[dict] = []

    def hook(call: AttentionCall) -> None:
        info = current_phase()
        calls.append({"phase": info.name if info is not None else "(outside phases)",
                      "step": info.step if info is not None and info.step is not None else -1,
                      "path": call.path, "kind": call.kind, "group": site_group(call.kind),
                      "layout": call_layout(call), "batch": call.batch, "heads": call.heads,
                      "query_len": call.query_len, "key_len": call.key_len, "head_dim": call.head_dim,
                      "shape": f"[{call.batch}, {call.heads}, {call.query_len}, {call.head_dim}]",
                      "flops": call.flops, "macs": call.macs,
                      "softmax_flops": SOFTMAX_FLOPS_PER_ELEMENT * call.similarity_elements})

    with register_call_hook(hook):
        run()
    return calls


def count_split(workload, request, model: _SplitModel, strided: bool) -> pd.DataFrame:
    """FLOPs and bytes per (group, component) from the FLOP counter on the meta device (same request)."""
    from genscope.instrument.flops import FlopCounter

    meta_request = replace(request, device=torch.device("meta"))
    pipeline = workload.build(workload.config(request.preset), "meta", request.dtype)
    if strided:
        from genscope.passes.temporal import apply

        apply(pipeline.component(model.component))
    with torch.inference_mode(), use_backend(request.attention), FlopCounter(pipeline.components) as counter:
        pipeline.generate(meta_request)
    rows = counter.table()
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows.itertuples(index=False):
        where = _classify_row(r.module, r.op, r.op_class, model)
        if where is None:
            continue
        acc = out[where]
        acc[0] += int(r.flops)
        acc[1] += int(r.softmax_flops)
        acc[2] += int(r.bytes)
        acc[3] += int(r.calls)
    return pd.DataFrame([(g, c, v[0], v[0] // 2, v[1], v[2]) for (g, c), v in out.items()],
                        columns=["group", "component", "flops", "macs", "softmax_flops", "bytes"])


def _classify_row(module: str, op: str, cls: str, model: _SplitModel) -> tuple[str, str] | None:
    site = model.site_of(module)
    if site is not None:
        if cls == "Attention":
            return model.sites[site], "core"
        return model.sites[site], {"Linear": "projections", "Memory": "head_layout"}.get(cls, "attention_other")
    if module in model.scopes and cls == "Memory":
        return model.scopes[module] or "shared", "layout"
    parent = module.rsplit(".", 1)[0] if "." in module else ""
    if parent in model.scopes and model.scopes[parent] is not None and op in _COPY_OPS and cls == "Memory":
        return model.scopes[parent], "layout"
    return None


@dataclass(frozen=True)
class SplitConfig:
    workload: str = "make-a-video"
    preset: str = "small"
    steps: int | None = 2
    frames: int | None = None
    image_size: int | None = None
    repeat: int = 2
    warmup: int = 1
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    strided: bool = True  # also profile the frame-strided pass (make-a-video)
    device: str = "cpu"
    dtype: str = "float32"
    count_flops: bool = True

    def settings(self) -> dict:
        d = asdict(self)
        d["backends"] = list(self.backends)
        return d


def run_split(config: SplitConfig = SplitConfig(), progress: Callable[[str], None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """The in-model split: tables ``split``, ``calls``, ``summary``, ``flops``."""
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    if config.workload not in SPLIT_COMPONENTS:
        raise UserError(f"the spatial/temporal split applies to video workloads; accepted: "
                        f"{', '.join(SPLIT_COMPONENTS)} (got {config.workload!r})")
    if config.repeat < 1 or config.warmup < 0:
        raise UserError(f"repeat must be >= 1 and warmup >= 0, got {config.repeat} / {config.warmup}")
    workload = registry.get(config.workload)
    settings = RunSettings(preset=config.preset, steps=config.steps, frames=config.frames,
                           image_size=config.image_size, device=config.device, dtype=config.dtype)
    request = workload.request(settings)
    component = SPLIT_COMPONENTS[config.workload]
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    model = _SplitModel.of(pipeline.sites, component)
    if not any(g == "temporal" for g in model.sites.values()):
        raise UserError(f"{config.workload}: no temporal attention found in {component!r}")
    variants = ["standard"]
    can_stride = config.strided and config.workload == "make-a-video"
    if can_stride:
        variants.append("strided")
    components = [(c.name, c.module) for c in pipeline.components]
    target = pipeline.component(component)

    def runner(backend: str):
        def run():
            with use_backend(backend):
                pipeline.generate(replace(request, attention=backend))
        return run

    @contextlib.contextmanager
    def variant_applied(variant: str):
        from genscope.passes import temporal as passes_temporal

        if variant == "strided":
            passes_temporal.apply(target)
        try:
            yield
        finally:
            if variant == "strided":
                passes_temporal.remove(target)

    keys = [(b, v) for v in variants for b in config.backends]
    with torch.inference_mode():
        calls = [c for c in record_calls(runner(config.backends[-1])) if c["path"] in model.sites]
        for backend, variant in keys:
            with variant_applied(variant):
                for _ in range(config.warmup):
                    runner(backend)()
        collected: dict[tuple, list] = defaultdict(list)
        for i in range(config.repeat):
            for backend, variant in keys:
                with variant_applied(variant):
                    start = time.perf_counter()
                    events = _trace_events(runner(backend), components, request.device)
                    wall = (time.perf_counter() - start) * 1e3
                collected[(backend, variant)].append((attribute_split(events, model, request.device.type), wall))
                if progress is not None:
                    progress(f"{config.workload}: {backend}/{variant} repetition {i + 1} of {config.repeat}")
    split_rows, call_times = [], defaultdict(dict)
    summary_rows = []
    for (backend, variant), reps in collected.items():
        n = len(reps)
        totals: dict[tuple[str, str], float] = defaultdict(float)
        per_call: dict[str, list[float]] = defaultdict(list)
        component_ms = 0.0
        for (split, cts, comp_ms), _ in reps:
            for k, v in split.items():
                totals[k] += v / n
            for path, times in cts.items():
                per_call[path] += times
            component_ms += comp_ms / n
        for (group, comp), ms in totals.items():
            split_rows.append({"workload": config.workload, "attention": backend, "variant": variant,
                               "group": group, "component": comp, "time_ms": ms})
        for path, times in per_call.items():
            call_times[(backend, variant)][path] = statistics.median(times)
        summary_rows.append(_summary_row(config.workload, backend, variant, totals, component_ms,
                                         statistics.median([w for _, w in reps])))
    split_df = pd.DataFrame(split_rows, columns=["workload", "attention", "variant", "group", "component",
                                                 "time_ms"])
    calls_df = _calls_table(config.workload, calls, call_times)
    flops_parts = []
    if config.count_flops:
        for variant in variants:
            for backend in config.backends:
                part = count_split(workload, replace(request, attention=backend), model, variant == "strided")
                part.insert(0, "variant", variant)
                part.insert(0, "attention", backend)
                flops_parts.append(part)
    flops_df = (pd.concat(flops_parts, ignore_index=True) if flops_parts else
                pd.DataFrame(columns=["attention", "variant", "group", "component", "flops", "macs",
                                      "softmax_flops", "bytes"]))
    flops_df.insert(0, "workload", config.workload)
    summary = _add_flops_to_summary(pd.DataFrame(summary_rows), calls, flops_df)
    return {"split": split_df, "calls": calls_df, "summary": summary, "flops": flops_df}


def _summary_row(workload: str, backend: str, variant: str, totals: dict, component_ms: float,
                 wall_ms: float) -> dict:
    def ms(group: str, comps: Iterable[str]) -> float:
        return float(sum(totals.get((group, c), 0.0) for c in comps))

    row = {"workload": workload, "attention": backend, "variant": variant, "run_ms": wall_ms,
           "component_ms": component_ms}
    for group in GROUPS:
        row[f"{group}_core_ms"] = ms(group, ["core"])
        row[f"{group}_ms"] = ms(group, HEADLINE_COMPONENTS)
        row[f"{group}_with_projections_ms"] = ms(group, COMPONENTS)
        row[f"{group}_layout_ms"] = ms(group, ["layout", "head_layout"])
    row["shared_layout_ms"] = ms("shared", ["layout"])
    row["time_ratio_temporal_to_spatial"] = _ratio(row["temporal_ms"], row["spatial_ms"])
    row["core_time_ratio_temporal_to_spatial"] = _ratio(row["temporal_core_ms"], row["spatial_core_ms"])
    core_total = row["temporal_core_ms"] + row["spatial_core_ms"]
    row["temporal_share_of_attention_core"] = _ratio(row["temporal_core_ms"], core_total)
    row["temporal_share_of_attention"] = _ratio(row["temporal_ms"], row["temporal_ms"] + row["spatial_ms"])
    row["attention_share_of_component"] = _ratio(row["temporal_ms"] + row["spatial_ms"], component_ms)
    return row


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _calls_table(workload: str, calls: list[dict], call_times: dict) -> pd.DataFrame:
    """One row per attention site of the split component: layout, shape, calls per run, FLOPs, core ms per call."""
    if not calls:
        return pd.DataFrame()
    df = pd.DataFrame(calls)
    keys = ["path", "kind", "group", "layout", "shape", "batch", "heads", "query_len", "key_len", "head_dim"]
    per_site = df.groupby(keys, as_index=False, sort=False).agg(
        calls=("flops", "size"), flops_per_call=("flops", "first"), macs_per_call=("macs", "first"),
        softmax_flops_per_call=("softmax_flops", "first"), flops=("flops", "sum"))
    per_site.insert(0, "workload", workload)
    for (backend, variant), times in call_times.items():
        if variant != "standard":
            continue
        per_site[f"core_ms_per_call_{backend}"] = per_site["path"].map(times)
    return per_site


def _add_flops_to_summary(summary: pd.DataFrame, calls: list[dict], flops: pd.DataFrame) -> pd.DataFrame:
    """Matmul FLOPs per group (from the call hook: the same for every backend and variant) and, per row, the
    projection FLOPs and the bytes of the headline components (from the FLOP counter)."""
    call_df = pd.DataFrame(calls)
    if call_df.empty or summary.empty:
        return summary
    for group in GROUPS:
        sel = call_df[call_df["group"] == group]
        summary[f"{group}_core_flops"] = int(sel["flops"].sum())
        summary[f"{group}_softmax_flops"] = int(sel["softmax_flops"].sum())
        summary[f"{group}_calls"] = len(sel)
        if not flops.empty:
            proj, nbytes = [], []
            for row in summary.itertuples(index=False):
                sel_f = flops[(flops["attention"] == row.attention) & (flops["variant"] == row.variant)
                              & (flops["group"] == group)]
                proj.append(int(sel_f.loc[sel_f["component"] == "projections", "flops"].sum()))
                nbytes.append(int(sel_f.loc[sel_f["component"].isin(HEADLINE_COMPONENTS), "bytes"].sum()))
            summary[f"{group}_projection_flops"] = proj
            summary[f"{group}_bytes"] = nbytes
            summary[f"{group}_core_ai"] = summary[f"{group}_core_flops"] / summary[f"{group}_bytes"].replace(0, np.nan)
    summary["flops_ratio_spatial_to_temporal"] = summary["spatial_core_flops"] / summary["temporal_core_flops"]
    return summary


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "probe":
    sys.exit(_probe_main(sys.argv[2:]))
