"""Sequence length over the course of inference (the paper's Section V-A: Figures 8 and 9).

* Figure 8: the sequence length of every attention call over one *fundamental period* of inference (the
  minimum repeating pattern): one denoising step of a diffusion model (U-shaped: the UNet's levels shrink the
  image tokens by d^2 = 4 per level and grow them back), the decode steps of an autoregressive model (the
  tokens in context grow by one per step), one parallel-decoding step (constant).
* Figure 9: how often each sequence length occurs over a whole inference, per image size: the distribution
  shifts right as the image grows (lengths are buckets: (image / vae / 2^n)^2).
* The ratio of the largest to the smallest sequence length in the period, and the largest ratio between two
  consecutive calls (the paper's "varies by up to 4x": one UNet level to the next).

Traces come from :func:`genscope.instrument.seqlen.trace_workload` (meta device by default: paper-scale
models cost no memory). Pure: returns DataFrames, never plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from genscope.errors import UserError
from genscope.instrument.seqlen import Trace, fundamental_period, trace_workload

STUDY = "seqlen"
# Figure 9 sweeps 64 x 64 to 1024 x 1024 outputs (the paper's Section V-B)
FIGURE9_SIZES = (64, 128, 256, 512, 1024)
PERIOD_COLUMNS = ("image_size", "position", "phase", "step", "component", "path", "kind", "batch", "heads",
                  "query_len", "key_len", "seq_len", "similarity_bytes")


@dataclass
class SeqLenResult:
    """Tables of the study (all with an ``image_size`` column; 0 where the model has no image size)."""

    period: pd.DataFrame  # Figure 8
    distribution: pd.DataFrame  # Figure 9: image_size, seq_len, calls, fraction
    summary: pd.DataFrame  # per image size: lengths, ratios, calls, trace cost
    traces: list[Trace]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"period": self.period, "distribution": self.distribution, "summary": self.summary}


def takes_image_size(model: str, preset: str) -> bool:
    from genscope.workloads import registry

    return hasattr(registry.get(model).config(preset), "image_size")


def distribution(calls: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """How many attention calls of the run have each sequence length (the whole inference)."""
    counts = calls.groupby("seq_len").size().rename("calls").reset_index()
    counts["fraction"] = counts["calls"] / counts["calls"].sum()
    counts.insert(0, "image_size", image_size)
    return counts


def period_stats(period: pd.DataFrame) -> dict:
    """Largest / smallest sequence length in the period, and the largest jump between consecutive calls."""
    lengths = period["seq_len"].to_numpy()
    jumps = [max(a, b) / min(a, b) for a, b in zip(lengths[:-1], lengths[1:], strict=True) if min(a, b) > 0]
    return {
        "period_calls": len(period),
        "seq_len_min": int(lengths.min()),
        "seq_len_max": int(lengths.max()),
        "max_over_min": float(lengths.max() / max(lengths.min(), 1)),
        "largest_consecutive_ratio": float(max(jumps)) if jumps else 1.0,
        "distinct_seq_lens": int(len(set(lengths.tolist()))),
    }


def sequence_lengths(model: str, preset: str = "paper", image_sizes: list[int] | None = None,
                     device: str = "meta", dtype: str = "float32", steps: int | None = None,
                     decode_tokens: int | None = None, all_steps: bool = False,
                     phase: str | None = None) -> SeqLenResult:
    """Trace ``model`` at each image size (default: the preset's) and compute Figures 8 and 9."""
    from genscope.workloads import registry

    registry.get(model)
    if image_sizes and not takes_image_size(model, preset):
        raise UserError(f"{model} has no image size (it generates tokens); drop --image-size")
    sizes: list[int | None] = list(image_sizes) if image_sizes else [None]
    periods, dists, summary, traces = [], [], [], []
    for size in sizes:
        trace = trace_workload(model, preset=preset, image_size=size, device=device, dtype=dtype, steps=steps,
                               decode_tokens=decode_tokens, all_steps=all_steps)
        traces.append(trace)
        image_size = int(trace.request.image_size or 0)
        calls = trace.calls
        if calls.empty:
            raise UserError(f"{model} made no attention calls at this setting")
        period = fundamental_period(calls, phase)
        period.insert(0, "image_size", image_size)
        periods.append(period[list(PERIOD_COLUMNS)])
        dists.append(distribution(calls, image_size))
        summary.append({"model": model, "preset": trace.preset, "image_size": image_size,
                        "device": str(trace.request.device), "period_phase": str(period["phase"].iloc[0]),
                        "calls_total": len(calls), **period_stats(period),
                        "similarity_bytes_total": int(calls["similarity_bytes"].sum()),
                        "steps_replicated": sum(n["steps"] - n["steps_run"] for n in trace.replicated),
                        "trace_s": round(trace.wall_s, 3)})
    return SeqLenResult(pd.concat(periods, ignore_index=True), pd.concat(dists, ignore_index=True),
                        pd.DataFrame(summary), traces)


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """``image_sizes`` empty: the preset's size; ``phase`` None: the first looped phase."""

    workload: str
    preset: str = "paper"
    image_sizes: tuple[int, ...] = ()
    device: str = "meta"
    dtype: str = "float32"
    steps: int | None = None
    decode_tokens: int | None = None
    all_steps: bool = False
    phase: str | None = None

    def __post_init__(self) -> None:
        from genscope.workloads import registry

        registry.get(self.workload)
        bad = [v for v in self.image_sizes if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise UserError(f"image sizes must be positive integers, got {bad}")
        object.__setattr__(self, "image_sizes", tuple(dict.fromkeys(self.image_sizes)))


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    """Tables ``period`` (Figure 8), ``distribution`` (Figure 9) and ``summary``."""
    s = settings
    return sequence_lengths(s.workload, preset=s.preset, image_sizes=list(s.image_sizes) or None, device=s.device,
                            dtype=s.dtype, steps=s.steps, decode_tokens=s.decode_tokens, all_steps=s.all_steps,
                            phase=s.phase).tables()
