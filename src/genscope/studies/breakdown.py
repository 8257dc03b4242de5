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
  the end-to-end times come from uninstrumented runs timed by :func:`genscope.instrument.measure.measure`
  (interleaved until each median's 95 % interval is within ``ci_bound_pct`` or ``e2e_budget_s`` runs out;
  default: three times what the six minimum rounds took):
  per backend ``<b>_min_ms``, ``<b>_spread_pct``, ``<b>_ci_pct``, ``<b>_stable``; ``e2e_speedup_low/high``,
  ``e2e_speedup`` and its interval are the *paired* ratio (median of per-round baseline/flash ratios,
  :func:`genscope.instrument.measure.paired_ratio`), ``ci_pct`` its interval's half-width and ``stable``
  its verdict (each backend's own median precision: ``<b>_stable``), ``busy`` and ``load_avg_1m`` (the
  machine's load while measuring);
* ``e2e`` (one row per backend: measure's table, its ``stable`` named ``median_stable``) and ``load`` (the load record, threads chosen);
* ``class_total``: workload, attention, op_class, time_ms, share_pct (share of that backend's total) and
  normalized_pct (share of the *baseline* total: the bar heights of Figure 7).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from genscope.instrument.measure import (
    CI_BOUND_PCT,
    MIN_REPS,
    Measurement,
    measure,
    paired_ratio,
    settle_threads,
    summarize,
)
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
    from genscope.validate import check_count

    check_count("--repeat", repeat, minimum=1)
    check_count("--warmup", warmup, minimum=0)
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


def measure_backends(pipeline, request, *, budget_s: float | None, ci_bound_pct: float = CI_BOUND_PCT,
                     progress=None, backends: tuple[str, ...] = BACKEND_ORDER) -> Measurement:
    """End-to-end time of uninstrumented runs per backend (already warm: no warm-up)."""
    def runner(backend):
        def run():
            with torch.inference_mode(), use_backend(backend):
                pipeline.generate(replace(request, attention=backend))
        return run

    compare = (("baseline", "flash"),) if {"baseline", "flash"} <= set(backends) else ()
    return measure({b: runner(b) for b in backends}, device=pipeline.device, warmup=0, min_reps=MIN_REPS,
                   budget_s=budget_s, ci_bound_pct=ci_bound_pct, progress=progress, compare=compare)


def e2e_columns(profiles: dict[str, Profile], measurement: Measurement | None) -> dict:
    """The speedup row's timing columns: from ``measurement`` if given, else from the profiled walls."""
    if measurement is not None:
        rows = {b: measurement.row(b) for b in profiles}
        ratio = measurement.ratio("baseline", "flash")
    else:  # the profiled repetitions ran as interleaved pairs too
        rows = {b: summarize(p.repeat_totals_ms) for b, p in profiles.items()}
        ratio = paired_ratio(profiles["baseline"].repeat_totals_ms, profiles["flash"].repeat_totals_ms)
    base, flash = rows["baseline"], rows["flash"]
    out = {"baseline_ms": base["median_ms"], "flash_ms": flash["median_ms"],
           "e2e_speedup": ratio["ratio"], "e2e_speedup_low": ratio["ratio_low"], "e2e_speedup_high": ratio["ratio_high"],
           "repeats": int(base["reps"]), "timed_by": "measure" if measurement is not None else "profiler"}
    for b, row in rows.items():
        out.update({f"{b}_min_ms": row["min_ms"], f"{b}_spread_pct": row["spread_pct"],
                    f"{b}_ci_pct": row["ci_pct"], f"{b}_stable": bool(row["stable"])})
    out["ci_pct"] = ratio["ci_pct"]  # the speedup's interval (paired per round)
    out["stable"] = bool(ratio["stable"])
    load = measurement.load if measurement is not None else None
    out["busy"] = bool(load.busy) if load is not None else False
    out["load_avg_1m"] = load.load_avg_1m if load is not None else float("nan")
    return out


def breakdown_tables(workload: str, profiles: dict[str, Profile],
                     measurement: Measurement | None = None) -> dict[str, pd.DataFrame]:
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
    e2e = e2e_columns(profiles, measurement)
    speedup = pd.DataFrame([{
        "workload": workload,
        **{k: e2e[k] for k in ("baseline_ms", "flash_ms", "e2e_speedup")},
        "attention_baseline_ms": base.attention_ms,
        "attention_flash_ms": flash.attention_ms,
        "attention_speedup": attention_speedup,
        "attention_share_baseline": attention_share,
        "attention_share_flash": flash.attention_ms / flash.total_ms if flash.total_ms else float("nan"),
        "amdahl_predicted_speedup": amdahl(attention_share, attention_speedup),
        "dominant_class_flash": flash.by_class().sort_values("time_ms").iloc[-1]["op_class"],
        **{k: v for k, v in e2e.items() if k not in ("baseline_ms", "flash_ms", "e2e_speedup")},
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
    tables = {"class_time": class_time, "class_total": class_total, "speedup": speedup,
              "phase_time": pd.concat(phases, ignore_index=True), "other_ops": pd.concat(other, ignore_index=True)}
    if measurement is not None:
        # each backend's own median precision ("median_stable"); the record's verdict is the speedup's "stable"
        tables["e2e"] = measurement.table.rename(columns={"variant": "attention", "stable": "median_stable"}
                                                 ).assign(workload=workload)
        tables["load"] = measurement.load_table().assign(workload=workload)
    return tables


def run_breakdown(workload_name: str, settings: RunSettings, *, mode: str = "trace", repeat: int = 2,
                  warmup: int = 1, trace_path=None, progress=None, e2e_budget_s: float | None = None,
                  ci_bound_pct: float = CI_BOUND_PCT) -> dict[str, pd.DataFrame]:
    """Build ``workload_name`` once and return the breakdown tables (see module docstring)."""
    workload = registry.get(workload_name)
    request = workload.request(settings)
    threads = settle_threads(request.device)  # one thread when extra threads only spin on a busy machine
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    profiles = profile_backends(pipeline, request, mode=mode, repeat=repeat, warmup=warmup,
                                trace_path=trace_path, progress=progress)
    measurement = measure_backends(pipeline, request, budget_s=e2e_budget_s, ci_bound_pct=ci_bound_pct,
                                   progress=progress)
    measurement.settings.update(threads)
    return breakdown_tables(workload_name, profiles, measurement)


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """One workload's breakdown; ``None`` = the preset's default."""

    workload: str
    preset: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "trace"
    repeat: int = 2
    warmup: int = 1
    steps: int | None = None
    image_size: int | None = None
    frames: int | None = None
    decode_tokens: int | None = None
    e2e_budget_s: float | None = None  # s of uninstrumented e2e timing; None: 3x the 6 minimum rounds, <= 60
    ci_bound_pct: float = CI_BOUND_PCT

    def __post_init__(self) -> None:
        from genscope.errors import UserError, choice_error
        from genscope.instrument.profiler import MODES

        registry.get(self.workload)
        if self.mode not in MODES:
            raise choice_error("mode", self.mode, MODES)
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise UserError(f"--repeat must be at least 1, got {self.repeat}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        from genscope.validate import check_positive_number

        if self.e2e_budget_s is not None:
            check_positive_number("e2e time budget (s)", self.e2e_budget_s)
        check_positive_number("confidence-interval bound (%)", self.ci_bound_pct)
        registry.get(self.workload).check_options_apply(self.run_settings())

    def run_settings(self) -> RunSettings:
        return RunSettings(preset=self.preset, device=self.device, dtype=self.dtype, steps=self.steps,
                           image_size=self.image_size, frames=self.frames, decode_tokens=self.decode_tokens)


def run(settings: Settings, *, trace_path=None, progress=None) -> dict[str, pd.DataFrame]:
    return run_breakdown(settings.workload, settings.run_settings(), mode=settings.mode, repeat=settings.repeat,
                         warmup=settings.warmup, trace_path=trace_path, progress=progress,
                         e2e_budget_s=settings.e2e_budget_s, ci_bound_pct=settings.ci_bound_pct)


__all__ = ["ATTENTION_NOTE", "OP_CLASSES", "Settings", "amdahl", "breakdown_tables", "profile_backends", "run",
           "run_breakdown"]
