"""``genscope characterize`` end to end on ``tiny``: every study of the plan runs, is stored and reaches the
report; the timed comparisons carry their validity columns.

Three workloads cover every study of the plan: stable-diffusion (image scaling, the memory model, the
optimization ablation), make-a-video (the temporal split and sweep) and llama (autoregressive decode for
prefill-decode and seqlen). Slow: several minutes on 2 cores (the analytical studies count paper-scale
models on the meta device whatever the preset); it stays in the default run.
"""

from __future__ import annotations

import pytest

from genscope.cli import main
from genscope.instrument.measure import CI_BOUND_PCT
from genscope.results.store import ResultsStore
from genscope.studies.plan import build_plan
from genscope.studies.registry import STUDIES

WORKLOADS = ["stable-diffusion", "make-a-video", "llama"]
# registry studies that are not part of this characterization: ``analyze`` reads a saved trace file;
# ``dit-temporal`` is planned with the diffusion transformers (``wan``), not these three workloads. A study
# registered later and left out of the plan fails test_plan_covers_every_study until it is planned or listed here.
NOT_CHARACTERIZED = {"analyze", "dit-temporal"}


def test_plan_covers_every_study():
    assert {t.study for t in build_plan(WORKLOADS, preset="tiny")} == set(STUDIES) - NOT_CHARACTERIZED


@pytest.mark.slow
def test_characterize_runs_every_study_on_tiny(tmp_path, capsys):
    db, out = tmp_path / "r.db", tmp_path / "out"
    plan = build_plan(WORKLOADS, preset="tiny")
    planned = {t.study for t in plan}

    assert main(["characterize", "--preset", "tiny", "--models", *WORKLOADS, "--db", str(db),
                 "--out", str(out)]) == 0
    capsys.readouterr()
    store = ResultsStore(db, readonly=True)
    runs = store.list_runs()
    assert (runs["status"] == "complete").all()
    assert planned <= set(runs["study"])
    assert len(runs) >= len(plan)

    for workload in WORKLOADS:
        record = store.latest("breakdown", workload=workload)
        assert record is not None
        speedup = record.tables["speedup"].iloc[0]
        for column in ("stable", "ci_pct", "busy", "load_avg_1m", "baseline_ci_pct", "flash_ci_pct"):
            assert column in speedup.index, column
        assert speedup["repeats"] >= 6  # the measurement's minimum rounds (a 95 % interval of the median)
        # the verdict is the paired speedup's: its interval within the bound (each backend's own apart)
        assert speedup["stable"] == (speedup["ci_pct"] <= CI_BOUND_PCT)
        assert {"baseline_stable", "flash_stable"} <= set(speedup.index)
        assert {"e2e", "load"} <= set(record.tables)
    ablation = store.latest("optimization", workload="stable-diffusion").tables["ablation"]
    assert {"stable", "ci_pct", "busy", "load_avg_1m"} <= set(ablation.columns)

    page = (out / "index.html").read_text()
    for workload in WORKLOADS:
        assert workload in page
