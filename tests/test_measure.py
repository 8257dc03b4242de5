"""The measurement rule (genscope.instrument.measure): interval of the median, stopping, stability, load.

No test asserts a timing: the stopping rule runs on a scripted timer, the interval's coverage is checked by
simulation against a distribution whose median is known, and the load monitor against a child process whose
own CPU time the operating system reports.
"""

from __future__ import annotations

import itertools
import math
import random
import resource
import subprocess
import sys

import pandas as pd
import pytest
import torch

from genscope.errors import UserError
from genscope.instrument import measure as m


def _binomial_coverage(n: int, r: int) -> float:
    """P(x_(r) <= median <= x_(n-r+1)) = P(r <= B <= n - r), B ~ Binomial(n, 1/2): summed directly."""
    return sum(math.comb(n, k) for k in range(r, n - r + 1)) / 2**n


@pytest.mark.parametrize("n", range(1, 40))
def test_ranks_are_the_narrowest_with_95_percent_coverage(n):
    ranks = m.median_ci_ranks(n)
    feasible = [r for r in range(1, n // 2 + 1) if _binomial_coverage(n, r) >= 0.95]
    if not feasible:
        assert ranks is None
        assert n <= 5  # 2 / 2**5 = 6.25 % outside for n = 5: the first n with an interval is 6
    else:
        assert ranks == (max(feasible), n - max(feasible) + 1)


def test_interval_covers_a_known_median_95_percent_of_the_time():
    rng = random.Random(0)
    true_median = math.log(2)  # exponential(1): skewed like timings
    trials, hits = 2000, 0
    for _ in range(trials):
        s = m.summarize([rng.expovariate(1.0) for _ in range(12)])
        hits += s["ci_low_ms"] <= true_median <= s["ci_high_ms"]
    # exact coverage for n = 12, r = 3 is 96.1 %; 2000 trials: standard error 0.43 %
    assert hits / trials > 0.94


class ScriptedTimer:
    """Returns prescribed 'times' per variant and records the call order."""

    def __init__(self, scripts: dict):
        self.scripts = {k: iter(v) for k, v in scripts.items()}
        self.order: list[str] = []

    def variants(self, names):
        return {n: (lambda n=n: self.order.append(n)) for n in names}

    def __call__(self, fn):
        fn()
        return next(self.scripts[self.order[-1]])


def test_constant_times_stop_at_the_minimum_and_are_stable():
    timer = ScriptedTimer({"a": iter(lambda: 10.0, None), "b": iter(lambda: 20.0, None)})
    result = m.measure(timer.variants("ab"), warmup=0, min_reps=6, timer=timer)
    assert result.stop_reason == "ci_within_bound"
    assert result.table["reps"].tolist() == [6, 6] and result.table["stable"].all()
    ratio = result.ratio("a", "b")
    assert ratio["ratio"] == 0.5 and ratio["stable"]
    # interleaved, order rotated each round: a b, b a, a b, ...
    assert timer.order[:6] == ["a", "b", "b", "a", "a", "b"]


def test_noisy_times_run_to_the_cap_and_are_unstable():
    noisy = itertools.cycle((10.0, 30.0))  # half the samples each side: the median's interval never narrows
    timer = ScriptedTimer({"a": noisy, "b": iter(lambda: 20.0, None)})
    result = m.measure(timer.variants("ab"), warmup=0, min_reps=6, max_reps=15, timer=timer)
    assert result.stop_reason == "max_reps"
    row = result.row("a")
    assert row["reps"] == 15 and not row["stable"] and row["ci_pct"] > 5
    assert result.row("b")["stable"] and not result.ratio("a", "b")["stable"]  # unstable if either is


class DriftingTimer:
    """Two variants, a (10 ms) and b (25 ms), whose round r both run at the machine's speed factor of that round."""

    def __init__(self):
        self.drift = itertools.cycle((1.0, 1.6, 0.8, 1.3, 0.7, 1.9, 1.1))
        self.calls, self.factor, self.last = 0, 1.0, ""

    def variants(self):
        return {n: (lambda n=n: setattr(self, "last", n)) for n in "ab"}

    def __call__(self, fn):
        fn()
        if self.calls % 2 == 0:  # the first call of a round: the machine's speed for this round
            self.factor = next(self.drift)
        self.calls += 1
        return (10.0 if self.last == "a" else 25.0) * self.factor


def test_drift_both_variants_share_cancels_in_the_paired_ratio():
    # neither median is known to 5% (the speed drifts 0.7-1.9x between rounds); b / a is 2.5 in every round
    timer = DriftingTimer()
    result = m.measure(timer.variants(), warmup=0, min_reps=6, max_reps=40, timer=timer, compare=[("b", "a")])
    assert not result.row("a")["stable"] and not result.row("b")["stable"]
    ratio = result.ratio("b", "a")
    assert ratio["ratio"] == pytest.approx(2.5) and ratio["stable"] and ratio["ci_pct"] < 1e-9
    assert result.stop_reason == "ratio_within_bound" and ratio["reps"] == 6
    # without ``compare`` the rounds go on to the cap: the absolute medians never settle
    timer = DriftingTimer()
    assert m.measure(timer.variants(), warmup=0, min_reps=6, max_reps=12, timer=timer).stop_reason == "max_reps"


def test_compare_must_name_measured_variants():
    with pytest.raises(UserError, match="unknown variant"):
        m.measure({"a": lambda: None}, warmup=0, min_reps=1, max_reps=1, compare=[("a", "z")])


def test_too_few_samples_are_never_stable():
    timer = ScriptedTimer({"a": iter(lambda: 10.0, None)})
    result = m.measure(timer.variants("a"), warmup=0, min_reps=3, max_reps=3, timer=timer)
    assert not result.row("a")["stable"] and math.isinf(result.row("a")["ci_pct"])


def test_budget_stops_an_unsettled_measurement():
    noisy = itertools.cycle((10.0, 30.0))  # half the samples each side: the median's interval never narrows
    timer = ScriptedTimer({"a": noisy})
    result = m.measure(timer.variants("a"), warmup=0, min_reps=6, max_reps=10_000, budget_s=1e-9, timer=timer)
    assert result.stop_reason == "budget" and result.row("a")["reps"] == 6  # the minimum is always honoured


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"min_reps": 0}, {"budget_s": float("nan")},
                                    {"ci_bound_pct": -5.0}, {"min_reps": 8, "max_reps": 4}, {"confidence": 1.0}])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        m.measure({"a": lambda: None}, **kwargs)


def _record(**kw):
    base = dict(cores=2, threads=2, wall_s=1.0, load_avg_1m=0.5, load_avg_1m_end=0.5, others_cpu_s=0.0,
                others_cpu_share=0.0, self_cpu_per_wall=1.0)
    return m.LoadRecord(**{**base, **kw})


def test_busy_rule():
    assert m.busy_verdict(_record()) == (False, "")
    assert m.busy_verdict(_record(others_cpu_share=0.5))[0]  # another process spun one of two cores
    assert m.busy_verdict(_record(self_cpu_per_wall=0.3))[0]  # we waited for a core 70 % of the time
    assert not m.busy_verdict(_record(self_cpu_per_wall=0.3, device_type="cuda"))[0]  # waiting for the GPU
    # without /proc/stat: the load average minus our own threads
    assert m.busy_verdict(_record(others_cpu_share=float("nan"), load_avg_1m=3.0))[0]
    assert not m.busy_verdict(_record(others_cpu_share=float("nan"), load_avg_1m=1.2))[0]


def test_monitor_sees_another_process_spinning():
    spin = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with m.LoadMonitor("cpu") as mon:
        subprocess.run([sys.executable, "-c", spin], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rec = mon.record
    assert child_cpu >= 0.9
    # /proc/stat counts in clock ticks (1/100 s): the child's CPU time is in the others' total
    assert rec.others_cpu_s >= child_cpu - 0.05
    assert rec.self_cpu_per_wall < 0.5 and rec.busy  # we only waited for the child


def test_settle_threads_keeps_one_thread_when_extra_threads_do_not_help(monkeypatch):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(m, "_probe_ms", lambda threads, rounds=20: 50.0 if threads > 1 else 5.0)
        assert m.settle_threads("cpu")["threads"] == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr(m, "_probe_ms", lambda threads, rounds=20: 3.0 if threads > 1 else 5.0)
        assert m.settle_threads("cpu")["threads"] == 2 and torch.get_num_threads() == 2
        assert m.settle_threads("meta")["threads"] == 2  # only CPUs are probed
    finally:
        torch.set_num_threads(previous)


def test_importing_measure_does_not_initialize_cuda():
    code = ("import torch, genscope.instrument.measure as m; m.measure({'a': lambda: None}, min_reps=1, max_reps=1);"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unstable_marks():
    import pandas as pd

    marks = m.unstable_marks(pd.DataFrame({"stable": [True, False, None]}))
    assert marks.tolist() == ["", "UNSTABLE", ""]
    assert m.unstable_marks(pd.DataFrame({"x": [1]})) is None


def test_automatic_budget_scales_with_the_minimum_rounds():
    noisy = itertools.cycle((10.0, 30.0))  # half the samples each side: the median's interval never narrows
    timer = ScriptedTimer({"a": noisy})
    result = m.measure(timer.variants("a"), warmup=0, min_reps=6, max_reps=10_000, budget_s=None, timer=timer)
    # a scripted round takes microseconds: three times that is spent long before 10,000 rounds
    assert result.stop_reason == "budget" and result.row("a")["reps"] < 10_000
    assert result.settings["budget_s"] <= m.BUDGET_S


def test_cli_prints_unstable_next_to_such_results(capsys):
    import argparse

    import pandas as pd

    from genscope.commands.common import emit
    from genscope.commands.profile import validity_note

    emit(argparse.Namespace(json=False), {"t": pd.DataFrame({"row": ["a", "b"], "stable": [True, False]})})
    out = capsys.readouterr().out.splitlines()
    assert "UNSTABLE" in next(line for line in out if " b " in f" {line} ")
    assert "UNSTABLE" not in next(line for line in out if " a " in f" {line} ")
    row = pd.Series({"stable": False, "ci_pct": 12.0, "e2e_speedup_low": 1.1, "e2e_speedup_high": 1.4, "busy": True})
    assert "UNSTABLE" in validity_note(row) and "busy" in validity_note(row) and "1.10-1.40x" in validity_note(row)
    assert validity_note(row.copy().replace({False: True})) == ""


def test_single_run_timings_carry_the_load_verdict():
    tables = m.with_load_verdict("cpu", lambda: {"t": pd.DataFrame({"x": [1]})})
    load = tables["load"].iloc[0]
    assert set(tables) == {"t", "load"} and bool(load["stable"]) == (not bool(load["busy"]))
    assert {"load_avg_1m", "others_cpu_share", "self_cpu_per_wall"} <= set(tables["load"].columns)
