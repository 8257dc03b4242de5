import pandas as pd
import pytest

from genscope.cli import main
from genscope.commands.characterize import Task, run_plan
from genscope.results.store import ResultsStore


def _task(name, calls, fail=False):
    def run():
        calls.append(name)
        if fail:
            raise KeyboardInterrupt
        return {"t": pd.DataFrame({"x": [1.0, 2.0]})}
    return Task("unit", name, {"n": 1}, run, preset="tiny")


def test_interrupted_plan_resumes_without_duplicates(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_plan([_task("a", calls), _task("b", calls, fail=True), _task("c", calls)], store)
    assert calls == ["a", "b"]
    assert list(store.list_runs("unit").workload) == ["a"]
    calls.clear()
    counts = run_plan([_task("a", calls), _task("b", calls), _task("c", calls)], store)
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


def test_failing_step_is_reported_and_others_still_run(tmp_path):
    store = ResultsStore(tmp_path / "r.db")

    def boom():
        raise RuntimeError("broken study")

    calls = []
    counts = run_plan([Task("unit", "x", {}, boom, preset="tiny"), _task("y", calls)], store)
    assert counts["failed"] == 1 and counts["done"] == 1 and calls == ["y"]


def test_characterize_unknown_model_is_exit_2(tmp_path, capsys):
    assert main(["characterize", "--models", "nope", "--db", str(tmp_path / "r.db")]) == 2
    assert "unknown model" in capsys.readouterr().err
