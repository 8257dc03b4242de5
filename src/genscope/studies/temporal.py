"""The temporal dimension (paper Section VI, Figures 11-14): spatial vs temporal attention in text-to-video.

The study's entry point (``Settings`` with ``part`` = ``sweep`` or ``split``, and ``run``); the parts live in
:mod:`~genscope.studies.temporal_model` (the analytic model), :mod:`~genscope.studies.temporal_sweep` (the
frames sweep), :mod:`~genscope.studies.temporal_split` (the in-model split); the benchmark layer in
:mod:`genscope.models.layers.temporal_attention`, the hardware counters in :mod:`genscope.instrument.counters`.
All return tidy tables (no plotting):

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

from dataclasses import dataclass

import pandas as pd

from genscope.errors import UserError, choice_error
from genscope.models.layers.temporal_attention import MODELSCOPE_CHANNELS, MODELSCOPE_HEADS
from genscope.studies.temporal_model import check_image_size, check_layer_config
from genscope.studies.temporal_split import SPLIT_COMPONENTS, SplitConfig, run_split
from genscope.studies.temporal_sweep import (
    DEFAULT_BACKENDS,
    DEFAULT_BATCH,
    DEFAULT_FRAMES,
    DEFAULT_IMAGE_SIZES,
    MAX_FRAMES,
    SweepConfig,
    run_sweep,
)

STUDY = "temporal"
SWEEP_WORKLOAD = "attention-layer"  # RunRecord.workload of a frames sweep
SWEEP_PRESET = "modelscope-level0"
PARTS = ("sweep", "split")
COUNTER_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Settings:
    """``part="sweep"``: the frames sweep (frames, image_sizes, channels, heads, batch, counters); ``part="split"``:
    the in-model split of ``workload`` (preset, steps, model_frames, model_image_size, strided). Shared: backends,
    repeat, warmup, device, dtype."""

    part: str = "sweep"
    frames: tuple[int, ...] = DEFAULT_FRAMES
    image_sizes: tuple[int, ...] = DEFAULT_IMAGE_SIZES
    channels: int = MODELSCOPE_CHANNELS
    heads: int = MODELSCOPE_HEADS
    batch: int = DEFAULT_BATCH
    counters: str = "auto"
    workload: str = "make-a-video"
    preset: str = "small"
    steps: int | None = 2
    model_frames: int | None = None
    model_image_size: int | None = None
    strided: bool = True
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    repeat: int = 3
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from genscope.models.layers.attention import BACKENDS
        from genscope.models.runtime import check_dtype_on_device, parse_device, parse_dtype

        if self.part not in PARTS:
            raise choice_error("temporal part", self.part, PARTS)
        if not self.backends:
            raise UserError("--backends: give a comma-separated list, e.g. baseline,flash")
        for name in self.backends:
            if name not in BACKENDS:
                raise choice_error("attention backend", name, BACKENDS)
        if isinstance(self.repeat, bool) or self.repeat < 1:
            raise UserError(f"--repeat must be at least 1, got {self.repeat}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.counters not in COUNTER_CHOICES:
            raise choice_error("counters setting", self.counters, COUNTER_CHOICES)
        check_dtype_on_device(parse_dtype(self.dtype), parse_device(self.device))
        if self.part == "sweep":
            check_layer_config(self.channels, self.heads, self.batch)
            for size in self.image_sizes:
                check_image_size(size)
            if not self.frames or any(not 1 <= f <= MAX_FRAMES for f in self.frames):
                raise UserError(f"--frames: accepted 1 to {MAX_FRAMES}, got {list(self.frames)}")
        elif self.workload not in SPLIT_COMPONENTS:
            raise UserError(f"the spatial/temporal split applies to video workloads; accepted: "
                            f"{', '.join(SPLIT_COMPONENTS)} (got {self.workload!r})")

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(frames=tuple(self.frames), image_sizes=tuple(self.image_sizes), channels=self.channels,
                           heads=self.heads, batch=self.batch, backends=tuple(self.backends), repeat=self.repeat,
                           warmup=self.warmup, device=self.device, dtype=self.dtype, counters=self.counters)

    def split_config(self) -> SplitConfig:
        return SplitConfig(workload=self.workload, preset=self.preset, steps=self.steps, frames=self.model_frames,
                           image_size=self.model_image_size, repeat=self.repeat, warmup=self.warmup,
                           backends=tuple(self.backends), strided=self.strided, device=self.device,
                           dtype=self.dtype)

    @property
    def record_workload(self) -> str:
        """The ``workload`` a run is stored under: the sweep's layer, or the split's workload."""
        return SWEEP_WORKLOAD if self.part == "sweep" else self.workload

    @property
    def record_preset(self) -> str:
        return SWEEP_PRESET if self.part == "sweep" else self.preset


def run(settings: Settings, *, progress=None) -> dict[str, pd.DataFrame]:
    """Sweep: tables ``points``, ``fits``, ``crossover``, ``speedup``, ``counters``, ``notes``; split: ``split``,
    ``calls``, ``summary``, ``flops``; both ``load`` (the machine's load, ``stable`` = not busy)."""
    from genscope.instrument.measure import with_load_verdict

    if settings.part == "sweep":
        return with_load_verdict(settings.device, lambda: run_sweep(settings.sweep_config(), progress=progress))
    return with_load_verdict(settings.device, lambda: run_split(settings.split_config(), progress=progress))
