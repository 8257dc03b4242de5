"""The one measurement rule for every timed comparison: interleaved repetitions, a confidence interval of the
median, a stability verdict, and a record of how busy the machine was.

:func:`measure` runs named variants (zero-argument callables) after ``warmup`` calls each, in rounds: every
round runs every variant once, in an order rotated from round to round, so that load drifting during the
measurement hits all variants alike. Rounds continue until

* at least ``min_reps`` rounds ran (always honoured, as pytest-benchmark's ``min_rounds``), and then
* every variant's median is known to within ``ci_bound_pct`` (the half-width of its confidence interval,
  relative to the median), or ``budget_s`` seconds of measuring have passed, or ``max_reps`` rounds ran.
  ``budget_s=None`` scales the budget to the work: :data:`AUTO_BUDGET_FACTOR` times the time the first
  ``min_reps`` rounds took (so a millisecond kernel and a ten-second pipeline both get a few times their
  minimum), capped at :data:`BUDGET_S`.

This is the stopping rule of pytest-benchmark (``min_rounds`` + ``max_time``,
https://pytest-benchmark.readthedocs.io/en/latest/calibration.html) with MLPerf LoadGen's requirement that a
result counts only when its run met the minimum-duration and minimum-count conditions (a "VALID"/"INVALID"
verdict, https://github.com/mlcommons/inference/blob/master/loadgen/README.md); here the condition is the
precision of the median.

Confidence interval of the median: distribution-free, from order statistics (Conover, *Practical
Nonparametric Statistics*, 3rd ed., 1999, Section 3.2): with the n samples sorted, ``[x_(r), x_(n-r+1)]``
covers the median with probability ``1 - 2 P(B <= r - 1)``, ``B ~ Binomial(n, 1/2)``; r is the largest rank
whose coverage is at least ``confidence``. At 95 % this needs n >= 6 (n = 5 gives 93.75 %); with fewer
samples the interval is unbounded and the result is not stable. Timings are skewed (a busy machine only
adds time), which is why the median and a non-parametric interval are used, not a mean and a t interval.

Columns (:attr:`Measurement.table`, one row per variant): variant, reps, min_ms, median_ms, max_ms,
spread_pct ((max - min) / median), ci_low_ms, ci_high_ms, ci_pct (half-width, worst side, % of the median),
stable (ci_pct <= ci_bound_pct).

Comparisons are paired: :meth:`Measurement.ratio` divides the two variants' times *round by round* (both ran
in the same round, back to back, under the same load) and reports the median of those ratios with the same
order-statistics interval; the ratio is stable when that interval is within ``ci_bound_pct``. On a machine
whose speed drifts (a shared 2-core VM measured 25-36% spread between runs of one pipeline with nothing else
running), the per-round ratio cancels the drift that both variants saw, so a speedup can be known to within
5% when neither absolute time is; the absolute times keep their own ``stable`` verdicts. With ``compare``
(pairs of variants), :func:`measure` also stops once every compared ratio is within the bound
(``ratio_within_bound``). This is the paired design of pyperf's ``compare_to`` and of A/B benchmarking:
interleave, pair, then test the differences.

Contention (:class:`LoadRecord`): the 1-minute load average (``os.getloadavg``) at the start and the end,
the CPU time of the other processes during the measurement (``/proc/stat``'s busy jiffies, steal included,
minus this process's CPU time from ``getrusage``), and this process's CPU time per wall second.
**busy** (on a CPU device) when the other processes used more than :data:`BUSY_OTHERS_SHARE` of all cores'
time, or this process ran less than :data:`BUSY_SELF_CPU_PER_WALL` of the wall time (it waited for a core);
without ``/proc/stat`` the load average stands in for the first test (load minus our own threads over the
core count). On CUDA only the first test applies (the host waits for the GPU legitimately).

OpenMP threads: on an oversubscribed machine torch's spinning worker threads make small-tensor ops
10-70x slower (shared/FIELD-NOTES.md). :func:`settle_threads` decides by measurement, not by CPU model:
it times a small-tensor probe with the current thread count and with one thread, interleaved, and keeps one
thread when the extra threads do not make even the probe faster.

CUDA: a repetition is timed with CUDA events recorded around the call (after a synchronize), read after the
end event completes; ``torch.cuda`` is touched only when a variant runs on a CUDA device, so importing this
module never initializes CUDA.

Why by hand: pytest-benchmark times inside pytest only and without interleaving; LoadGen drives inference
servers by queries; neither records machine load or times CUDA with events for arbitrary callables. (A little
over 400 lines: the rule, its statistics and the load record it judges by are one mechanism, kept together.)
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import accumulate

import pandas as pd
import torch

from genscope.errors import UserError

CI_BOUND_PCT = 5.0  # default: the median known to within +-5 %
CONFIDENCE = 0.95
MIN_REPS = 6  # the fewest samples whose order-statistic interval reaches 95 % coverage
MAX_REPS = 50
BUDGET_S = 60.0
AUTO_BUDGET_FACTOR = 3.0
BUSY_OTHERS_SHARE = 0.25  # other processes used > 1/4 of all cores' time: the machine was busy
BUSY_SELF_CPU_PER_WALL = 0.5  # the measured (CPU) process ran < half the wall time: it waited for a core
_PROC_STAT = "/proc/stat"


# ---------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (r, n - r + 1) of the order-statistic confidence interval of the median, or None when
    ``n`` samples cannot reach ``confidence`` (Conover 1999, Section 3.2)."""
    if n < 1:
        return None
    tail = list(accumulate(math.comb(n, k) / 2**n for k in range(n + 1)))  # tail[k] = P(B <= k)
    best = None
    for r in range(1, n // 2 + 1):
        if 1.0 - 2.0 * tail[r - 1] >= confidence:
            best = r
    return None if best is None else (best, n - best + 1)


def summarize(samples_ms: list[float], *, ci_bound_pct: float = CI_BOUND_PCT,
              confidence: float = CONFIDENCE) -> dict:
    """min/median/max/spread and the median's confidence interval of one variant's samples."""
    xs = sorted(samples_ms)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    mid = n // 2
    med = xs[mid] if n % 2 else 0.5 * (xs[mid - 1] + xs[mid])
    ranks = median_ci_ranks(n, confidence)
    low, high = (xs[ranks[0] - 1], xs[ranks[1] - 1]) if ranks else (float("nan"), float("nan"))
    ci_pct = 100.0 * max(med - low, high - med) / med if ranks and med > 0 else float("inf")
    return {"reps": n, "min_ms": xs[0], "median_ms": med, "max_ms": xs[-1],
            "spread_pct": 100.0 * (xs[-1] - xs[0]) / med if med > 0 else float("nan"),
            "ci_low_ms": low, "ci_high_ms": high, "ci_pct": ci_pct, "stable": bool(ci_pct <= ci_bound_pct)}


def paired_ratio(numerator_ms: list[float], denominator_ms: list[float], *, ci_bound_pct: float = CI_BOUND_PCT,
                 confidence: float = CONFIDENCE) -> dict:
    """Median of the per-round ratios ``numerator_ms[i] / denominator_ms[i]`` (sample i of each from round i)
    with its order-statistics interval: ratio, ratio_low, ratio_high, ci_pct, reps, stable."""
    if len(numerator_ms) != len(denominator_ms):
        raise ValueError(f"paired samples differ in count: {len(numerator_ms)} vs {len(denominator_ms)}")
    ratios = [a / b for a, b in zip(numerator_ms, denominator_ms, strict=True) if b > 0]
    if not ratios:
        raise ValueError("no paired samples")
    s = summarize(ratios, ci_bound_pct=ci_bound_pct, confidence=confidence)
    return {"ratio": s["median_ms"], "ratio_low": s["ci_low_ms"], "ratio_high": s["ci_high_ms"],
            "ci_pct": s["ci_pct"], "reps": s["reps"], "stable": s["stable"]}


# ---------------------------------------------------------------------------------------------------------
# machine load
# ---------------------------------------------------------------------------------------------------------
def _busy_jiffies() -> int | None:
    """Busy time of all CPUs since boot, in clock ticks (/proc/stat: user nice system idle iowait irq softirq
    steal ...; busy = all but idle and iowait; guest time is already inside user)."""
    try:
        with open(_PROC_STAT) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LoadRecord:
    """How busy the machine was while something was measured (see the module docstring for the rule)."""

    cores: int
    threads: int  # torch intra-op threads during the measurement
    wall_s: float = float("nan")
    load_avg_1m: float = float("nan")  # at the start
    load_avg_1m_end: float = float("nan")
    others_cpu_s: float = float("nan")  # CPU time of every other process during the measurement
    others_cpu_share: float = float("nan")  # ... over wall_s x cores
    self_cpu_per_wall: float = float("nan")  # this process's CPU seconds per wall second
    busy: bool = False
    busy_reason: str = ""
    device_type: str = "cpu"

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)])


class LoadMonitor:
    """``with LoadMonitor(device) as mon: ...`` then ``mon.record`` (a :class:`LoadRecord`)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device_type = torch.device(device).type
        self.record: LoadRecord | None = None

    def __enter__(self) -> LoadMonitor:
        self._load0 = _loadavg()
        self._jiffies0 = _busy_jiffies()
        self._cpu0 = _self_cpu_s()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall0
        self_cpu = _self_cpu_s() - self._cpu0
        jiffies1 = _busy_jiffies()
        cores = os.cpu_count() or 1
        rec = LoadRecord(cores=cores, threads=torch.get_num_threads(), wall_s=wall, load_avg_1m=self._load0,
                         load_avg_1m_end=_loadavg(), device_type=self.device_type,
                         self_cpu_per_wall=self_cpu / wall if wall > 0 else float("nan"))
        if self._jiffies0 is not None and jiffies1 is not None and wall > 0:
            ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            rec.others_cpu_s = max(0.0, (jiffies1 - self._jiffies0) / ticks - self_cpu)
            rec.others_cpu_share = rec.others_cpu_s / (wall * cores)
        rec.busy, rec.busy_reason = busy_verdict(rec)
        self.record = rec


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def busy_verdict(rec: LoadRecord) -> tuple[bool, str]:
    """(busy, why) for a load record, by the rule of the module docstring."""
    reasons = []
    if not math.isnan(rec.others_cpu_share):
        if rec.others_cpu_share > BUSY_OTHERS_SHARE:
            reasons.append(f"other processes used {100 * rec.others_cpu_share:.0f}% of {rec.cores} cores")
    elif not math.isnan(rec.load_avg_1m):
        others = max(rec.load_avg_1m, rec.load_avg_1m_end) - (rec.self_cpu_per_wall or 0.0)
        if others / rec.cores > BUSY_OTHERS_SHARE:
            reasons.append(f"load average {rec.load_avg_1m:.1f} on {rec.cores} cores")
    if rec.device_type == "cpu" and rec.self_cpu_per_wall < BUSY_SELF_CPU_PER_WALL:
        reasons.append(f"the measured process ran {100 * rec.self_cpu_per_wall:.0f}% of the wall time")
    return bool(reasons), "; ".join(reasons)


# ---------------------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------------------
def _probe_ms(threads: int, rounds: int = 20) -> float:
    """Time of a small-tensor probe (the ops that suffer from spinning threads): 128x128 matmuls + softmax."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(128, 128)
        start = time.perf_counter()
        for _ in range(rounds):
            a = (a @ a).softmax(-1)
        return (time.perf_counter() - start) * 1e3
    finally:
        torch.set_num_threads(previous)


def settle_threads(device: torch.device | str = "cpu", trials: int = 3) -> dict:
    """On a CPU with more than one torch thread: keep them only if they make the small-tensor probe faster
    than one thread (best of ``trials`` interleaved); else set one thread. Returns what was measured."""
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads <= 1:
        return {"threads": threads, "probe_multi_ms": float("nan"), "probe_single_ms": float("nan")}
    multi, single = [], []
    for _ in range(trials):
        multi.append(_probe_ms(threads))
        single.append(_probe_ms(1))
    chosen = threads if min(multi) < min(single) else 1
    torch.set_num_threads(chosen)
    return {"threads": chosen, "probe_multi_ms": min(multi), "probe_single_ms": min(single)}


# ---------------------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------------------
def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    if device.type == "cuda":
        def cuda_time(fn):
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        return cuda_time

    # other accelerators (mps, xpu): their module's synchronize() brackets the call
    backend = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
    sync = getattr(backend, "synchronize", None) or (lambda: None)

    def wall_time(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3
    return wall_time


@dataclass
class Measurement:
    """The outcome of :func:`measure`: per-variant samples, their summary table and the load record."""

    samples_ms: dict[str, list[float]]
    table: pd.DataFrame
    load: LoadRecord
    ci_bound_pct: float
    stop_reason: str
    settings: dict = field(default_factory=dict)

    def row(self, variant: str) -> dict:
        return self.table.set_index("variant").loc[variant].to_dict()

    def ratio(self, numerator: str, denominator: str) -> dict:
        """The paired ratio numerator / denominator: the median of the per-round ratios, its confidence
        interval (``ratio_low``/``ratio_high``, ``ci_pct``) and ``stable`` (interval within the bound)."""
        confidence = self.settings.get("confidence", CONFIDENCE)
        return paired_ratio(self.samples_ms[numerator], self.samples_ms[denominator], ci_bound_pct=self.ci_bound_pct,
                            confidence=confidence)

    def load_table(self) -> pd.DataFrame:
        return self.load.table().assign(stop_reason=self.stop_reason, ci_bound_pct=self.ci_bound_pct,
                                        **{k: v for k, v in self.settings.items() if k != "ci_bound_pct"})


def check_measure_args(*, warmup: int, min_reps: int, max_reps: int, budget_s: float | None, ci_bound_pct: float,
                       confidence: float) -> None:
    from genscope.validate import check_count, check_positive_number

    check_count("warm-up count", warmup, minimum=0)
    check_count("minimum repetitions", min_reps, minimum=1)
    check_count("maximum repetitions", max_reps, minimum=min_reps)
    if budget_s is not None:
        check_positive_number("time budget (s)", budget_s)
    check_positive_number("confidence-interval bound (%)", ci_bound_pct)
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"confidence must be in [0.5, 1), got {confidence!r}")


def measure(variants: Mapping[str, Callable[[], object]], *, device: torch.device | str = "cpu", warmup: int = 1,
            min_reps: int = MIN_REPS, max_reps: int = MAX_REPS, budget_s: float | None = BUDGET_S,
            ci_bound_pct: float = CI_BOUND_PCT, confidence: float = CONFIDENCE,
            prepare: Mapping[str, Callable[[], object]] | None = None,
            progress: Callable[[str, int], None] | None = None,
            timer: Callable[[Callable[[], object]], float] | None = None,
            compare: Sequence[tuple[str, str]] = ()) -> Measurement:
    """Interleaved repetitions of ``variants`` until each median is within ``ci_bound_pct``, or each paired
    ratio named in ``compare`` is (see the module docstring). ``prepare[name]()``, if given, runs untimed before every call of that variant (e.g. switching
    a model's configuration); ``progress(variant, round)`` is called after each timed call; ``timer(fn) -> ms``
    replaces the device's timer (tests)."""
    if not variants:
        raise UserError("nothing to measure: no variants")
    check_measure_args(warmup=warmup, min_reps=min_reps, max_reps=max_reps, budget_s=budget_s,
                       ci_bound_pct=ci_bound_pct, confidence=confidence)
    device = torch.device(device)
    timer = timer or _timer(device)
    names = list(variants)
    unknown = {n for pair in compare for n in pair} - set(names)
    if unknown:
        raise UserError(f"compare names unknown variant(s) {', '.join(sorted(unknown))}")
    prepare = prepare or {}
    for name in names:
        for _ in range(warmup):
            prepare.get(name, lambda: None)()
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    stop = "max_reps"
    with LoadMonitor(device) as monitor:
        start = time.perf_counter()
        for rnd in range(max_reps):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:  # rotated order: no variant always runs first
                prepare.get(name, lambda: None)()
                samples[name].append(timer(variants[name]))
                if progress is not None:
                    progress(name, rnd)
            if rnd + 1 < min_reps:
                continue
            if budget_s is None:  # auto: a few times what the minimum took
                budget_s = min(BUDGET_S, AUTO_BUDGET_FACTOR * (time.perf_counter() - start))
            if all(summarize(samples[n], ci_bound_pct=ci_bound_pct, confidence=confidence)["stable"]
                   for n in names):
                stop = "ci_within_bound"
                break
            if compare and all(paired_ratio(samples[a], samples[b], ci_bound_pct=ci_bound_pct,
                                            confidence=confidence)["stable"] for a, b in compare):
                stop = "ratio_within_bound"
                break
            if time.perf_counter() - start >= budget_s:
                stop = "budget"
                break
    rows = [{"variant": n, **summarize(samples[n], ci_bound_pct=ci_bound_pct, confidence=confidence)}
            for n in names]
    settings = {"warmup": warmup, "min_reps": min_reps, "max_reps": max_reps, "budget_s": budget_s,
                "confidence": confidence}
    return Measurement(samples_ms=samples, table=pd.DataFrame(rows), load=monitor.record,
                       ci_bound_pct=ci_bound_pct, stop_reason=stop, settings=settings)


def with_load_verdict(device: torch.device | str, run: Callable[[], dict[str, pd.DataFrame]]
                      ) -> dict[str, pd.DataFrame]:
    """``run()``'s tables plus ``load``: the machine's load while it ran, and ``stable`` = not busy. For
    studies that time single runs rather than interleaved rounds (no interval to judge them by): a timing
    taken while other processes held the cores is not trusted, and the findings say "unstable"."""
    with LoadMonitor(device) as monitor:
        tables = dict(run())
    tables["load"] = monitor.record.table().assign(stable=not monitor.record.busy)
    return tables


def unstable_marks(df: pd.DataFrame) -> pd.Series | None:
    """'UNSTABLE' where a table's ``stable`` column is False ('' elsewhere); None without that column."""
    if "stable" not in df.columns:
        return None
    return df["stable"].map(lambda s: "" if pd.isna(s) or bool(s) else "UNSTABLE")


__all__ = ["paired_ratio", "with_load_verdict", "BUSY_OTHERS_SHARE", "BUSY_SELF_CPU_PER_WALL", "CI_BOUND_PCT", "LoadMonitor", "LoadRecord",
           "Measurement", "busy_verdict", "measure", "median_ci_ranks", "settle_threads", "summarize",
           "unstable_marks"]
