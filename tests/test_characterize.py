from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import pytest

from genscope.cli import main
from genscope.commands.executors import run_plan
from genscope.results.store import ResultsStore
from genscope.studies import registry
from genscope.studies.plan import PlanTask

CALLS: list[str] = []


@dataclass(frozen=True)
class _UnitSettings:
    name: str
    fail: str = ""  # "interrupt" | "error"


def _unit_run(settings: _UnitSettings) -> dict[str, pd.DataFrame]:
    CALLS.append(settings.name)
    if settings.fail == "interrupt":
        raise KeyboardInterrupt
    if settings.fail == "error":
        raise RuntimeError("broken study")
    return {"t": pd.DataFrame({"x": [1.0, 2.0]})}


@pytest.fixture
def unit_study(monkeypatch):
    """A study "unit" in the registry that records its calls."""
    monkeypatch.setitem(registry.STUDIES, "unit", SimpleNamespace(Settings=_UnitSettings, run=_unit_run))
    CALLS.clear()
    return CALLS


def _task(name, fail=""):
    return PlanTask("unit", name, {"name": name, "fail": fail}, "tiny", "cpu", "float32")


def test_interrupted_plan_resumes_without_duplicates(tmp_path, unit_study):
    calls = unit_study
    store = ResultsStore(tmp_path / "r.db")
    with pytest.raises(KeyboardInterrupt):
        run_plan([_task("a"), _task("b", fail="interrupt"), _task("c")], store)
    assert calls == ["a", "b"]
    assert list(store.list_runs("unit").workload) == ["a"]
    calls.clear()
    counts = run_plan([_task("a"), _task("b"), _task("c")], store)
    assert calls == ["b", "c"] and counts == {"done": 2, "skipped": 1, "failed": 0}
    runs = store.list_runs("unit")
    assert sorted(runs.workload) == ["a", "b", "c"]  # one row each: nothing duplicated


def test_characterize_tiny_stores_breakdown_and_writes_report(tmp_path, capsys):
    db, out = tmp_path / "r.db", tmp_path / "out"
    argv = ["characterize", "--preset", "tiny", "--models", "stable-diffusion", "--repeat", "1",
            "--studies", "breakdown", "--db", str(db), "--out", str(out)]
    assert main(argv) == 0
    store = ResultsStore(db)
    rec = store.latest("breakdown", workload="stable-diffusion")
    assert rec is not None
    assert set(rec.tables["class_time"].attention) == {"baseline", "flash"}
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html
    n_runs = len(store.list_runs())
    assert main(argv) == 0  # everything stored: nothing is run again
    assert len(ResultsStore(db).list_runs()) == n_runs
    assert "skipped" in capsys.readouterr().out


def test_failing_step_is_reported_and_others_still_run(tmp_path, unit_study):
    store = ResultsStore(tmp_path / "r.db")
    events = []
    counts = run_plan([_task("x", fail="error"), _task("y")], store,
                      on_event=lambda event, task, detail: events.append((event, task.workload, detail)))
    assert counts["failed"] == 1 and counts["done"] == 1 and unit_study == ["x", "y"]
    assert ("failed", "x", "broken study") in events
    assert list(store.list_runs("unit").workload) == ["y"]


def test_characterize_unknown_model_is_exit_2(tmp_path, capsys):
    assert main(["characterize", "--models", "nope", "--db", str(tmp_path / "r.db")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_every_study_exposes_frozen_validated_settings_and_run():
    from dataclasses import FrozenInstanceError, fields

    from genscope.errors import UserError

    assert {"breakdown", "flops", "seqlen", "memory-model", "taxonomy", "roofline", "image-scaling",
            "prefill-decode", "temporal", "optimization"} <= set(registry.STUDIES)
    for name, module in registry.STUDIES.items():
        assert callable(module.run) and fields(module.Settings), name
    settings = registry.make_settings("flops", {"workload": "stable-diffusion", "preset": "tiny"})
    with pytest.raises(FrozenInstanceError):
        settings.preset = "paper"
    with pytest.raises(UserError, match="unknown model"):
        registry.make_settings("flops", {"workload": "nope"})
    with pytest.raises(UserError, match="unknown setting"):
        registry.make_settings("seqlen", {"workload": "llama", "colour": "blue"})
    with pytest.raises(UserError, match="unknown study"):
        registry.run_study("nope", {})
