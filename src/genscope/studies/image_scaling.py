"""Convolution vs attention time as the image grows (the paper's Section V-B, Figure 10).

Stable Diffusion at output sizes 64 x 64 to 512 x 512 (and up to 1024 where the device holds it), with
baseline attention (the similarity matrix materialized) and flash attention (fused), timed with the
profiler's ``fast`` mode (forward hooks on convolution modules, a wrapper around every attention entry-point
call; :func:`genscope.instrument.profiler.profile_pipeline`). Repetitions are interleaved across backends
(size by size, backend after backend) and the median per class is kept, so drift on a shared machine hits both
backends alike.

Derived: log-log slopes of time against image size per class and backend (attention over H W tokens is
O(size^4) in FLOPs at large sizes, convolution O(size^2)), and the sizes where the larger of the two classes
changes (interpolated in log-log between measured sizes; also extrapolated from the fitted power laws).

Baseline attention is skipped at a size where it would not fit (flash is still measured there), decided before
anything is built: the largest similarity matrix of the run (from a shape-only trace on the meta device) x 3
(scores, probabilities and the softmax's working copy) must fit in ``memory_fraction`` of the memory available
now.

Pure: returns DataFrames, never plots.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from genscope.errors import UserError

STUDY = "image-scaling"
MODEL = "stable-diffusion"
DEFAULT_SIZES = (64, 128, 256, 512)
BACKENDS = ("baseline", "flash")
CLASSES = ("Convolution", "Attention")
BASELINE_COPIES = 3  # similarity matrices alive at once in baseline attention (scores, probs, softmax temp)


@dataclass
class ScalingResult:
    times: pd.DataFrame  # image_size, backend, op_class, time_ms (median), time_ms_min, time_ms_max, repeats
    slopes: pd.DataFrame  # backend, op_class, slope, sizes
    crossovers: pd.DataFrame  # backend, kind (measured | fitted), image_size, direction
    skipped: pd.DataFrame  # image_size, backend, reason

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"times": self.times, "slopes": self.slopes, "crossovers": self.crossovers, "skipped": self.skipped}


def largest_matrix_bytes(preset: str, image_size: int, dtype: str, batch_size: int = 1) -> int:
    """The largest similarity matrix of one run (shape-only trace on the meta device)."""
    from genscope.instrument.seqlen import trace_workload

    trace = trace_workload(MODEL, preset=preset, image_size=image_size, device="meta", dtype=dtype, steps=1,
                           batch_size=batch_size)
    return int(trace.calls["similarity_bytes"].max())


def _class_totals(profile, phases: tuple[str, ...] | None) -> dict[str, float]:
    df = profile.class_time
    if phases:
        df = df[df["phase"].isin(phases)]
    totals = df.groupby("op_class")["time_ms"].sum()
    out = {c: float(totals.get(c, 0.0)) for c in CLASSES}
    out["Total"] = float(df["time_ms"].sum())
    return out


def loglog_fit(x, y) -> tuple[float, float]:
    """(slope, intercept) of log y = slope log x + intercept."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


def crossovers(times: pd.DataFrame) -> pd.DataFrame:
    """Where the larger of convolution and attention changes, per backend.

    measured: between two measured sizes where (conv - attention) changes sign, interpolated linearly in
    log-log; fitted: the intersection of the two fitted power laws (may lie outside the measured range).
    """
    rows = []
    for backend, group in times.groupby("backend", sort=False):
        wide = group.pivot(index="image_size", columns="op_class", values="time_ms").sort_index()
        if not set(CLASSES) <= set(wide.columns) or len(wide) < 2:
            continue
        sizes = wide.index.to_numpy(dtype=float)
        diff = np.log(wide["Convolution"].to_numpy()) - np.log(wide["Attention"].to_numpy())
        for i in range(len(sizes) - 1):
            before, after = diff[i], diff[i + 1]
            if before * after < 0:  # strictly across: interpolate in log-log
                a, b = math.log(sizes[i]), math.log(sizes[i + 1])
                at = math.exp(a + (b - a) * before / (before - after))
            elif after == 0 and before != 0:  # lands exactly on a measured size
                at = sizes[i + 1]
            else:
                continue
            rows.append({"backend": backend, "kind": "measured", "image_size": round(at, 1),
                         "direction": "convolution overtakes attention" if before < 0
                         else "attention overtakes convolution"})
        pc, ic = loglog_fit(sizes, wide["Convolution"])
        pa, ia = loglog_fit(sizes, wide["Attention"])
        # the fitted lines' crossing; nearly parallel lines (noisy timings) cross absurdly far away: only a
        # crossing between 1 px and MAX_FITTED_CROSSOVER_PX is reported
        log_at = (ia - ic) / (pc - pa) if abs(pc - pa) > 1e-9 else math.inf
        if 0.0 <= log_at <= math.log(MAX_FITTED_CROSSOVER_PX):
            at = math.exp(log_at)
            rows.append({"backend": backend, "kind": "fitted", "image_size": round(at, 1),
                         "direction": "convolution overtakes attention" if pc > pa
                         else "attention overtakes convolution"})
    return pd.DataFrame(rows, columns=["backend", "kind", "image_size", "direction"])


MAX_FITTED_CROSSOVER_PX = 1e6


def slopes(times: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (backend, op_class), group in times.groupby(["backend", "op_class"], sort=False):
        group = group.sort_values("image_size")
        if len(group) >= 2 and (group["time_ms"] > 0).all():
            slope, _ = loglog_fit(group["image_size"], group["time_ms"])
            last = loglog_fit(group["image_size"].iloc[-2:], group["time_ms"].iloc[-2:])[0]
            rows.append({"backend": backend, "op_class": op_class, "slope": slope, "slope_last_pair": last,
                         "sizes": f"{group['image_size'].min()}-{group['image_size'].max()}"})
    return pd.DataFrame(rows, columns=["backend", "op_class", "slope", "slope_last_pair", "sizes"])


def image_scaling(preset: str = "small", image_sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
                  steps: int = 2, repeat: int = 3, device: str = "cpu", dtype: str = "float32",
                  backends: tuple[str, ...] = BACKENDS, phases: tuple[str, ...] | None = None,
                  memory_fraction: float = 0.5, progress=None) -> ScalingResult:
    """Measure convolution and attention time of stable-diffusion per image size and attention backend.

    ``phases``: restrict the times to these phases (e.g. ("denoise",)); default: the whole inference.
    ``progress(message)``: called before each measurement.
    """
    from genscope.instrument.profiler import profile_pipeline
    from genscope.models.layers.attention import BACKENDS as ALL_BACKENDS
    from genscope.models.runtime import parse_device
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    if parse_device(device).type == "meta":
        raise UserError("image scaling measures real time: --device meta has no timings; use cpu or cuda")
    for b in backends:
        if b not in ALL_BACKENDS:
            raise UserError(f"unknown attention backend {b!r}; accepted: {', '.join(ALL_BACKENDS)}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"repeat must be an integer of at least 1, got {repeat!r}")
    if not image_sizes:
        raise UserError("give at least one image size")
    workload = registry.get(MODEL)
    requests = {}
    for size in image_sizes:  # validate every size before running any
        requests[size] = workload.request(RunSettings(preset=preset, image_size=size, steps=steps, device=device,
                                                      dtype=dtype))
    from genscope.validate import available_bytes, check_fraction

    budget = check_fraction("--memory-fraction", memory_fraction) * available_bytes(device)
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    skipped = []
    for size in sorted(image_sizes):
        request = requests[size]
        here = list(backends)
        if "baseline" in backends:
            need = BASELINE_COPIES * largest_matrix_bytes(preset, size, dtype, request.batch_size)
            if need > budget:
                here.remove("baseline")
                skipped.append({"image_size": size, "backend": "baseline",
                                "reason": f"baseline attention needs ~{need / 2**30:.1f} GiB for its similarity "
                                f"matrices; {budget / 2**30:.1f} GiB allowed"})
        if not here:
            continue
        pipeline = workload.build(workload.config(preset), request.device, request.dtype)
        for i in range(repeat):
            for backend in here:
                if progress is not None:
                    progress(f"image {size}: {backend} attention, repetition {i + 1}/{repeat}")
                profile = profile_pipeline(pipeline, replace(request, attention=backend), mode="fast", repeat=1,
                                           warmup=1 if i == 0 else 0)
                samples.setdefault((size, backend), []).append(_class_totals(profile, phases))
        del pipeline
    rows = []
    for (size, backend), runs in samples.items():
        for op_class in (*CLASSES, "Total"):
            values = [r[op_class] for r in runs]
            rows.append({"image_size": size, "backend": backend, "op_class": op_class,
                         "time_ms": statistics.median(values), "time_ms_min": min(values),
                         "time_ms_max": max(values), "repeats": len(values), "steps": steps})
    times = pd.DataFrame(rows, columns=["image_size", "backend", "op_class", "time_ms", "time_ms_min",
                                        "time_ms_max", "repeats", "steps"])
    both = times[times["op_class"].isin(CLASSES)]
    return ScalingResult(times=times, slopes=slopes(both), crossovers=crossovers(both),
                         skipped=pd.DataFrame(skipped, columns=["image_size", "backend", "reason"]))


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """``phases`` empty: the whole inference."""

    preset: str = "small"
    image_sizes: tuple[int, ...] = DEFAULT_SIZES
    steps: int = 2
    repeat: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    phases: tuple[str, ...] = ()
    memory_fraction: float = 0.5

    def __post_init__(self) -> None:
        bad = [v for v in self.image_sizes if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad or not self.image_sizes:
            raise UserError(f"image sizes must be positive integers, got {list(self.image_sizes)}")
        object.__setattr__(self, "image_sizes", tuple(dict.fromkeys(self.image_sizes)))
        if not 0 < self.memory_fraction <= 1:
            raise UserError(f"--memory-fraction must be in (0, 1], got {self.memory_fraction}")


def run(settings: Settings, *, progress=None) -> dict[str, pd.DataFrame]:
    """Tables ``times``, ``slopes``, ``crossovers``, ``skipped`` (see :func:`image_scaling`) and ``load`` (the
    machine's load while timing, ``stable`` = not busy)."""
    from genscope.instrument.measure import with_load_verdict

    s = settings
    return with_load_verdict(s.device, lambda: image_scaling(preset=s.preset, image_sizes=list(s.image_sizes), steps=s.steps, repeat=s.repeat,
                         device=s.device, dtype=s.dtype, phases=tuple(s.phases) or None,
                         memory_fraction=s.memory_fraction, progress=progress).tables())
