"""Frames sweep (paper Figure 14): one spatial and one temporal attention layer of the ModelScope UNet3D's
first level (:class:`genscope.models.layers.temporal_attention.VideoAttentionLayer`) over frame counts and
image sizes - analytical FLOPs and bytes (:mod:`genscope.studies.temporal_model`), time per backend (median of
interleaved repetitions), achieved FLOP/s and GB/s, fitted exponents in F, predicted and measured crossovers,
the frame-strided variant, and hardware counters where available (:mod:`genscope.instrument.counters`).
See :mod:`genscope.studies.temporal` for the model and the findings.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from genscope.errors import UserError
from genscope.instrument.counters import counters_available, ncu_metrics, perf_attached
from genscope.models.layers.attention import AttentionCall, register_wrapper, use_backend
from genscope.models.layers.temporal_attention import (
    LAYERS,
    MODELSCOPE_CHANNELS,
    MODELSCOPE_HEADS,
    VAE_FACTOR,
    VideoAttentionLayer,
)
from genscope.models.runtime import synchronize
from genscope.passes.temporal import relative_error
from genscope.studies.temporal_model import (
    LayerShape,
    check_image_size,
    check_layer_config,
    layer_model,
    predicted_crossover,
)

# Default sweep grid: on 2 CPU cores in well under 5 minutes (latent 4x4, 8x8 and 16x16, so that the predicted
# crossovers F = H*W = 16 and 64 lie inside the grid and 256 beyond it).
DEFAULT_FRAMES = (2, 4, 8, 16, 32, 64, 128)
DEFAULT_IMAGE_SIZES = (32, 64, 128)
DEFAULT_BATCH = 1
DEFAULT_BACKENDS = ("baseline", "flash")  # the paper's two; any of genscope's BACKENDS can be asked for
MAX_FRAMES = 4096
MAX_SIMILARITY_BYTES = 1 << 30  # a baseline point whose similarity matrix would exceed 1 GiB is skipped


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
    check_sweep_fits(config, device, dtype_bytes)  # before anything is allocated
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


def check_sweep_fits(config: SweepConfig, device: torch.device, dtype_bytes: int) -> None:
    """Refuse a sweep whose largest point cannot be allocated: its layer traffic (every tensor the layer
    allocates is written at least once, so the traffic bounds the footprint; baseline points over
    MAX_SIMILARITY_BYTES are skipped anyway and not counted) must fit the memory available now."""
    from genscope.validate import check_fits

    need, where = 0, ""
    for size in config.image_sizes:
        side = check_image_size(size)
        for frames in config.frames:
            for layer, variant, backend in _layer_configs(config.backends):
                shape = LayerShape(layer, config.batch, frames, side, side, config.channels, config.heads)
                model = layer_model(shape, backend, variant, dtype_bytes)
                if backend == "baseline" and model["similarity_bytes"] > MAX_SIMILARITY_BYTES:
                    continue
                if model["layer_bytes"] > need:
                    need, where = model["layer_bytes"], f"image size {size} with {frames} frames"
    check_fits(f"the frames sweep at {where}", need, device)


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
                values = ncu_metrics(["genscope.models.layers.temporal_attention", "probe", layer, variant, backend,
                                      str(size), str(frames), str(config.channels), str(config.heads),
                                      str(config.batch), config.dtype])
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
