"""Factorized spatial + temporal attention (Make-A-Video) vs full 3-D attention (Wan) at equal frames and size.

The paper's Section VI studies the temporal attention of a factorized video UNet; the video models after it
(Wan 2.1, CogVideoX, HunyuanVideo) attend over every token of every frame at once. This study puts both on the
same Wan 2.1 block (:class:`genscope.models.layers.attention_factorized.VideoDiTBlock`: self-attention, text
cross-attention, FFN at the preset's width, heads, FFN size and text length) and sweeps the frame count:

* ``flops``: per denoising step of the whole transformer (blocks x layers, CFG batch 2), counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta device; ``attention_flops`` = the QK^T and PV
  matmuls of every call the entry point sees (4 B H Lq Lk d), ``other_flops`` = all the rest (projections,
  cross-attention's own matmuls included, FFN). Full 3-D attention grows as (F S)^2, factorized as
  F S^2 + S F^2 (S = tokens per frame).
* ``memory``: the similarity matrices baseline attention materializes (bytes in ``dtype``): the largest single
  call and the sum over one block; flash attention materializes none.
* ``crossover``: the frame count from which full 3-D attention's matmuls cost more FLOPs than everything else
  in the transformer step (and the same for factorized attention), from polynomial fits of the counts
  (attention quadratic, the rest linear in the frames) checked against the counted points.
* ``scaling`` (optional, ``image_sizes``): full 3-D attention's FLOP share over heights x frames;
* ``time`` (optional, ``measure=True``): one block at the ``time_preset`` width on this machine's CPU/GPU,
  median of ``repeat`` runs after a warm-up, flash backend.
* ``models``: the similarity-matrix memory of one joint/3-D attention call of each diffusion transformer at
  its ``paper`` preset (e.g. Wan 480p: 32,760 tokens; HunyuanVideo 720p: 119,056): baseline vs flash.

Why hand-written: no library compares attention factorizations on a common block.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genscope.errors import UserError
from genscope.models.layers.attention import register_call_hook, use_backend
from genscope.models.layers.attention_factorized import MODES, build_block
from genscope.models.runtime import dtype_name, parse_device, parse_dtype, synchronize

DIT_MODELS = ("flux", "sd3", "wan", "cogvideox", "hunyuan-video")
CFG_BATCH = 2  # [uncond; cond] in one call (Wan)


@dataclass(frozen=True)
class Settings:
    preset: str = "paper"  # a preset of the ``wan`` workload: its block geometry, image size and text length
    frames: tuple[int, ...] = (1, 9, 17, 33, 49, 65, 81, 121, 161)  # video frames (4k + 1)
    image_size: int | None = None  # height in pixels (None: the preset's; width keeps the aspect ratio)
    image_sizes: tuple[int, ...] = ()  # heights for the ``scaling`` table (full 3-D attention), e.g. 240, 480, 720
    dtype: str = "bfloat16"  # for similarity-matrix bytes
    measure: bool = False  # time one block at ``time_preset`` on ``device``
    time_preset: str = "small"
    time_frames: tuple[int, ...] = (5, 9, 17)
    repeat: int = 3
    device: str = "cpu"

    def __post_init__(self) -> None:
        from genscope.models.wan import PRESETS

        for preset in (self.preset, self.time_preset):
            PRESETS[preset]  # unknown preset -> UserError listing the known ones
        for what, values in (("frames", self.frames), ("time_frames", self.time_frames)):
            bad = [f for f in values if isinstance(f, bool) or not isinstance(f, int) or f < 1 or (f - 1) % 4]
            if bad or not values:
                raise UserError(f"{what} must be 4k+1 (1, 5, 9, ...): the Wan-VAE keeps the first frame and "
                                f"compresses the rest by 4; got {list(values)}")
        if len(set(self.frames)) < 3:
            raise UserError("frames: at least 3 distinct frame counts are needed to fit the cost curves")
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise UserError(f"repeat must be a positive integer, got {self.repeat}")
        parse_dtype(self.dtype)
        parse_device(self.device)


@dataclass(frozen=True)
class Geometry:
    """A Wan transformer's block geometry and token layout at one size."""

    dim: int
    heads: int
    ffn_dim: int
    layers: int
    text_len: int
    tokens_per_frame: int  # S = H/16 * W/16

    @classmethod
    def of(cls, preset: str, image_size: int | None) -> Geometry:
        from genscope.models.wan import PRESETS

        config = PRESETS[preset]
        spec = config.denoiser
        height = image_size or config.image_size
        if height % config.spatial_multiple:
            raise UserError(f"image size {height} must be a multiple of {config.spatial_multiple} "
                            "(VAE factor 8 x patch 2)")
        return cls(dim=spec["num_attention_heads"] * spec["attention_head_dim"], heads=spec["num_attention_heads"],
                   ffn_dim=spec["ffn_dim"], layers=spec["num_layers"], text_len=config.text_len,
                   tokens_per_frame=config.media_tokens(height, 1))


def latent_frames(frames: int) -> int:
    return 1 + (frames - 1) // 4


def count_block(geometry: Geometry, mode: str, frames: int) -> dict:
    """FLOPs and similarity-matrix elements of one block call on the meta device (CFG batch 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = geometry
    f = latent_frames(frames)
    block = build_block(g.dim, g.heads, g.ffn_dim, g.dim, mode, device="meta")
    x = torch.empty(CFG_BATCH, f * g.tokens_per_frame, g.dim, device="meta")  # [2B, F*S, D]
    text = torch.empty(CFG_BATCH, g.text_len, g.dim, device="meta")  # Wan projects the text to D first
    calls = []
    with torch.inference_mode(), use_backend("baseline"), register_call_hook(calls.append), \
            FlopCounterMode(display=False) as counter:
        block(x, text, f)
    attention = sum(c.flops for c in calls if c.kind != "cross")
    cross = sum(c.flops for c in calls if c.kind == "cross")
    return {"total_flops": counter.get_total_flops(), "attention_flops": attention, "cross_attention_flops": cross,
            "similarity_elements_max": max(c.similarity_elements for c in calls if c.kind != "cross"),
            "similarity_elements_block": sum(c.similarity_elements for c in calls)}


def flops_table(s: Settings, g: Geometry) -> pd.DataFrame:
    rows = []
    for mode in MODES:
        for frames in s.frames:
            c = count_block(g, mode, frames)
            attention = c["attention_flops"] * g.layers
            total = c["total_flops"] * g.layers
            rows.append({"mode": mode, "frames": frames, "latent_frames": latent_frames(frames),
                         "tokens": latent_frames(frames) * g.tokens_per_frame, "attention_flops": attention,
                         "attention_macs": attention // 2, "other_flops": total - attention, "total_flops": total,
                         "attention_share": attention / total,
                         "similarity_elements_max": c["similarity_elements_max"],
                         "similarity_elements_block": c["similarity_elements_block"]})
    return pd.DataFrame(rows)


def memory_table(flops: pd.DataFrame, dtype: torch.dtype) -> pd.DataFrame:
    size = dtype.itemsize
    out = flops[["mode", "frames", "tokens"]].copy()
    out["baseline_largest_matrix_bytes"] = flops["similarity_elements_max"] * size
    out["baseline_block_matrices_bytes"] = flops["similarity_elements_block"] * size
    out["flash_matrix_bytes"] = 0  # never materialized
    out["dtype"] = dtype_name(dtype)
    return out


def crossover(flops: pd.DataFrame, g: Geometry) -> pd.DataFrame:
    """Frames from which attention's matmuls cost more than the rest: fit attention = a2 f^2 + a1 f + a0,
    rest = r1 f + r0 (f = latent frames), solve, and report how well the fits match the counts."""
    rows = []
    for mode in MODES:
        d = flops[flops["mode"] == mode]
        f = d["latent_frames"].to_numpy(dtype=float)
        attention_fit = np.polyfit(f, d["attention_flops"].to_numpy(dtype=float), 2)
        rest_fit = np.polyfit(f, d["other_flops"].to_numpy(dtype=float), 1)
        fit_error = max(
            float(np.max(np.abs(np.polyval(attention_fit, f) / d["attention_flops"] - 1))),
            float(np.max(np.abs(np.polyval(rest_fit, f) / d["other_flops"] - 1))))
        a2, a1, a0 = attention_fit
        r1, r0 = rest_fit
        roots = np.roots([a2, a1 - r1, a0 - r0])
        real = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0)
        latent = real[0] if real else float("nan")
        frames = 4 * (int(np.ceil(latent)) - 1) + 1 if real else None
        rows.append({"mode": mode, "crossover_latent_frames": latent,
                     "crossover_tokens": latent * g.tokens_per_frame if real else float("nan"),
                     "crossover_frames": frames, "fit_max_relative_error": fit_error})
    return pd.DataFrame(rows)


def time_table(s: Settings) -> pd.DataFrame:
    g = Geometry.of(s.time_preset, None)
    device, dtype = parse_device(s.device), torch.float32
    rows = []
    for frames in s.time_frames:
        f = latent_frames(frames)
        x = torch.randn(CFG_BATCH, f * g.tokens_per_frame, g.dim, generator=torch.Generator().manual_seed(0))
        text = torch.randn(CFG_BATCH, g.text_len, g.dim, generator=torch.Generator().manual_seed(1))
        x, text = x.to(device, dtype), text.to(device, dtype)
        for mode in MODES:
            block = build_block(g.dim, g.heads, g.ffn_dim, g.dim, mode, device=device, dtype=dtype)
            times = []
            with torch.inference_mode(), use_backend("flash"):
                for i in range(s.repeat + 1):
                    synchronize(device)
                    start = time.perf_counter()
                    block(x, text, f)
                    synchronize(device)
                    if i:  # the first run is the warm-up
                        times.append((time.perf_counter() - start) * 1e3)
            rows.append({"mode": mode, "frames": frames, "tokens": f * g.tokens_per_frame, "preset": s.time_preset,
                         "device": str(device), "block_time_ms": statistics.median(times),
                         "spread": (max(times) - min(times)) / statistics.median(times), "repeat": s.repeat})
    return pd.DataFrame(rows)


def models_table(dtype: torch.dtype) -> pd.DataFrame:
    """One joint / 3-D attention call of each diffusion transformer at its paper preset: the matrix baseline
    attention materializes vs flash (none). Tokens = image/video tokens + the text tokens in the sequence."""
    import importlib

    text_in_sequence = {"flux": lambda c: c.text_len, "sd3": lambda c: c.clip_len + c.text_len,
                        "wan": lambda c: 0, "cogvideox": lambda c: c.text_len, "hunyuan-video": lambda c: c.text_len}
    rows = []
    for name in DIT_MODELS:
        config = importlib.import_module(f"genscope.models.{name.replace('-', '_')}").PRESETS["paper"]
        spec = config.denoiser
        media = config.media_tokens(config.image_size, config.frames)
        tokens = media + text_in_sequence[name](config)
        batch = 1 if config.guidance_distilled else CFG_BATCH
        heads = spec["num_attention_heads"]
        elements = batch * heads * tokens * tokens
        rows.append({"model": name, "height": config.image_size, "width": config.width, "frames": config.frames,
                     "media_tokens": media, "text_tokens": tokens - media, "tokens": tokens, "heads": heads,
                     "batch": batch, "dtype": dtype_name(dtype), "baseline_matrix_bytes": elements * dtype.itemsize,
                     "baseline_matrix_bytes_per_head": tokens * tokens * dtype.itemsize, "flash_matrix_bytes": 0})
    return pd.DataFrame(rows)


def scaling_table(s: Settings) -> pd.DataFrame:
    """Full 3-D attention's share of the transformer step's FLOPs as resolution and length grow."""
    rows = []
    for height in s.image_sizes:
        g = Geometry.of(s.preset, height)
        for frames in s.frames:
            c = count_block(g, "full", frames)
            rows.append({"height": height, "frames": frames, "tokens": latent_frames(frames) * g.tokens_per_frame,
                         "attention_flops": c["attention_flops"] * g.layers,
                         "total_flops": c["total_flops"] * g.layers,
                         "attention_share": c["attention_flops"] / c["total_flops"]})
    return pd.DataFrame(rows)


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    """Tables ``flops``, ``memory``, ``crossover``, ``models``, (with ``image_sizes``) ``scaling`` and (with
    ``measure``) ``time``."""
    s = settings
    geometry = Geometry.of(s.preset, s.image_size)
    dtype = parse_dtype(s.dtype)
    flops = flops_table(s, geometry)
    tables = {"flops": flops.drop(columns=["similarity_elements_max", "similarity_elements_block"]),
              "memory": memory_table(flops, dtype), "crossover": crossover(flops, geometry),
              "models": models_table(dtype)}
    if s.image_sizes:
        tables["scaling"] = scaling_table(s)
    if s.measure:
        tables["time"] = time_table(s)
    return tables
