"""The paper's Figure 7, Table II and Section IV-B: operator breakdown with baseline vs flash attention.

For one workload: build once, run with ``baseline`` and with ``flash`` attention (the same weights: only
the attention backend changes), interleaved - warm-up runs of each first, then ``repeat`` timed pairs - and
return tidy tables:

* ``class_time``: workload, attention, phase, op_class, time_ms (self time per class per phase, mean over
  the timed repetitions);
* ``speedup`` (one row): baseline_ms, flash_ms, e2e_speedup (Table II), attention_baseline_ms,
  attention_flash_ms, attention_speedup (the attention module alone), attention_share_baseline, and the
  Amdahl check: amdahl_predicted_speedup = 1 / ((1 - a) + a / s) with a the baseline attention share and
  s the attention speedup, next to the measured e2e speedup; repeats and the spread of each backend;
* ``class_total``: workload, attention, op_class, time_ms, share_pct (share of that backend's total) and
  normalized_pct (share of the *baseline* total: the bar heights of Figure 7).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from genscope.instrument.opclasses import OP_CLASSES
from genscope.instrument.profiler import ATTENTION_NOTE, Profile, profile_callable
from genscope.models.layers.attention import use_backend
from genscope.workloads import registry
from genscope.workloads.base import RunSettings

BACKEND_ORDER = ("baseline", "flash")


def amdahl(attention_share: float, attention_speedup: float) -> float:
    """Speedup of the whole when a fraction ``attention_share`` is sped up by ``attention_speedup``."""
    if attention_speedup <= 0:
        return float("nan")
    return 1.0 / ((1.0 - attention_share) + attention_share / attention_speedup)


def merge(profiles: list[Profile]) -> Profile:
    """Mean of several single-repetition profiles of the same run."""
    n = len(profiles)
    class_time = pd.concat([p.class_time for p in profiles]).groupby(["phase", "op_class"], as_index=False)[
        "time_ms"].sum()
    class_time["time_ms"] /= n
    other = pd.concat([p.other_ops for p in profiles]).groupby("op", as_index=False)["time_ms"].sum()
    other["time_ms"] /= n
    phase_time = pd.concat([p.phase_time for p in profiles]).groupby("phase", as_index=False, sort=False).agg(
        calls=("calls", "first"), time_ms=("time_ms", "mean"))
    walls = [w for p in profiles for w in p.repeat_totals_ms]
    return Profile(mode=profiles[0].mode, device=profiles[0].device, class_time=class_time,
                   phase_time=phase_time, other_ops=other.sort_values("time_ms", ascending=False, ignore_index=True),
                   total_ms=float(class_time["time_ms"].sum()), repeat_totals_ms=walls)


def profile_backends(pipeline, request, *, mode: str = "trace", repeat: int = 2, warmup: int = 1,
                     trace_path=None, progress=None, backends: tuple[str, ...] = BACKEND_ORDER) -> dict[str, Profile]:
    """Interleaved profiles of the same built pipeline under each attention backend."""
    components = [(c.name, c.module) for c in pipeline.components]

    def runner(backend):
        def run():
            with use_backend(backend):
                pipeline.generate(replace(request, attention=backend))
        return run

    runs = {b: runner(b) for b in backends}
    with torch.inference_mode():
        for backend in backends:  # warm-up: excluded from every table
            for _ in range(warmup):
                runs[backend]()
    collected: dict[str, list[Profile]] = {b: [] for b in backends}
    for i in range(repeat):
        for backend in backends:
            path = None
            if trace_path is not None and i == repeat - 1:  # one trace file per backend: NAME.baseline.json
                trace_path = Path(trace_path)
                path = trace_path.with_name(f"{trace_path.stem}.{backend}{trace_path.suffix or '.json'}")
            collected[backend].append(profile_callable(runs[backend], components=components, device=pipeline.device,
                                                       mode=mode, repeat=1, warmup=0, trace_path=path))
            if progress is not None:
                progress(backend, i)
    return {b: merge(ps) for b, ps in collected.items()}


def breakdown_tables(workload: str, profiles: dict[str, Profile]) -> dict[str, pd.DataFrame]:
    class_rows, total_rows = [], []
    for backend, prof in profiles.items():
        ct = prof.class_time.copy()
        ct.insert(0, "attention", backend)
        ct.insert(0, "workload", workload)
        class_rows.append(ct)
        by = prof.by_class()
        by.insert(0, "attention", backend)
        by.insert(0, "workload", workload)
        total_rows.append(by)
    class_time = pd.concat(class_rows, ignore_index=True)
    class_total = pd.concat(total_rows, ignore_index=True)
    base, flash = profiles["baseline"], profiles["flash"]
    class_total["normalized_pct"] = 100.0 * class_total["time_ms"] / base.total_ms
    attention_share = base.attention_ms / base.total_ms if base.total_ms else float("nan")
    attention_speedup = base.attention_ms / flash.attention_ms if flash.attention_ms else float("nan")
    base_wall = statistics.median(base.repeat_totals_ms)
    flash_wall = statistics.median(flash.repeat_totals_ms)
    speedup = pd.DataFrame([{
        "workload": workload,
        "baseline_ms": base_wall,
        "flash_ms": flash_wall,
        "e2e_speedup": base_wall / flash_wall,
        "attention_baseline_ms": base.attention_ms,
        "attention_flash_ms": flash.attention_ms,
        "attention_speedup": attention_speedup,
        "attention_share_baseline": attention_share,
        "attention_share_flash": flash.attention_ms / flash.total_ms if flash.total_ms else float("nan"),
        "amdahl_predicted_speedup": amdahl(attention_share, attention_speedup),
        "repeats": len(base.repeat_totals_ms),
        "baseline_spread_pct": base.spread_pct,
        "flash_spread_pct": flash.spread_pct,
        "dominant_class_flash": flash.by_class().sort_values("time_ms").iloc[-1]["op_class"],
    }])
    phases = []
    for backend, prof in profiles.items():
        pt = prof.phase_time.copy()
        pt.insert(0, "attention", backend)
        pt.insert(0, "workload", workload)
        phases.append(pt)
    other = []
    for backend, prof in profiles.items():
        ot = prof.other_ops.copy()
        ot.insert(0, "attention", backend)
        ot.insert(0, "workload", workload)
        other.append(ot)
    return {"class_time": class_time, "class_total": class_total, "speedup": speedup,
            "phase_time": pd.concat(phases, ignore_index=True), "other_ops": pd.concat(other, ignore_index=True)}


def run_breakdown(workload_name: str, settings: RunSettings, *, mode: str = "trace", repeat: int = 2,
                  warmup: int = 1, trace_path=None, progress=None) -> dict[str, pd.DataFrame]:
    """Build ``workload_name`` once and return the breakdown tables (see module docstring)."""
    workload = registry.get(workload_name)
    request = workload.request(settings)
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    profiles = profile_backends(pipeline, request, mode=mode, repeat=repeat, warmup=warmup,
                                trace_path=trace_path, progress=progress)
    return breakdown_tables(workload_name, profiles)


__all__ = ["ATTENTION_NOTE", "OP_CLASSES", "amdahl", "breakdown_tables", "profile_backends", "run_breakdown"]
