"""Results store: round trip, concurrent writers, refusing foreign / corrupt files, resume keys, CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genscope.cli import main
from genscope.errors import UserError
from genscope.results.store import APPLICATION_ID, SCHEMA_VERSION, ResultsStore, RunRecord, run_key

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _tables(scale: float = 1.0) -> dict[str, pd.DataFrame]:
    class_time = pd.DataFrame({
        "workload": ["stable-diffusion"] * 4,
        "attention": ["baseline", "baseline", "flash", "flash"],
        "phase": ["denoise", "decoder", "denoise", "decoder"],
        "op_class": ["Attention", "Convolution", "Attention", "Convolution"],
        "time_ms": [10.0 * scale, 1.0 / 3.0, 4.0 * scale, np.nan],
        "calls": np.array([3, 1, 3, 1], dtype="int64"),
        "fused": [False, False, True, True],
    })
    indexed = pd.DataFrame({"peak_bytes": [1 << 40, 7]}, index=pd.Index(["unet", "vae"], name="component"))
    return {"class_time": class_time, "memory": indexed, "empty": pd.DataFrame({"x": pd.Series([], dtype="float64")})}


def _record(**overrides) -> RunRecord:
    fields = {"study": "breakdown", "workload": "stable-diffusion", "preset": "tiny",
              "settings": {"steps": 2, "image_size": 32, "prompt": "<b>a cat</b>"}, "device": "cpu",
              "dtype": "float32", "tables": _tables()}
    fields.update(overrides)
    return RunRecord(**fields)


def test_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "sub" / "results.db")  # parent folders are created
    record = _record()
    run_id = store.save_run(record)
    assert run_id == record.id == 1
    back = store.load_run(run_id)
    assert list(back.tables) == ["class_time", "memory", "empty"]
    for name, df in _tables().items():
        pd.testing.assert_frame_equal(back.tables[name], df)
    assert back.settings == record.settings
    assert (back.study, back.workload, back.preset, back.device, back.dtype) == \
        ("breakdown", "stable-diffusion", "tiny", "cpu", "float32")
    assert back.key == run_key("breakdown", "stable-diffusion", "tiny", record.settings, "cpu", "float32")
    assert back.environment["torch"].startswith("2.") and back.environment["python"]
    assert back.git_commit and back.created_at.endswith("+00:00")
    assert back.status == "complete"


def test_schema_is_marked_and_versioned(tmp_path):
    path = tmp_path / "r.db"
    ResultsStore(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["application"] == "genscope" and meta["schema_version"] == str(SCHEMA_VERSION)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(UserError, match="newer genscope"):
        ResultsStore(path)


def test_env_var_selects_database(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCOPE_DB", str(tmp_path / "env.db"))
    store = ResultsStore()
    assert store.path == tmp_path / "env.db" and store.path.exists()


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {src!r})
    import pandas as pd
    from genscope.results.store import ResultsStore, RunRecord
    name, path, go, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    store = ResultsStore(path)  # both writers may create the database at the same moment
    for i in range(n):
        tables = {{"t": pd.DataFrame({{"i": [i] * 50, "v": [float(i)] * 50}}),
                   "u": pd.DataFrame({{"w": [name] * 20}})}}
        store.save_run(RunRecord("sweep", name, "tiny", {{"i": i}}, "cpu", "float32", tables,
                                 environment={{}}, git_commit="test"))
        time.sleep(0.01)  # let the other writer in between: the writes interleave
""")


def test_two_concurrent_writers(tmp_path):
    path, go, n = tmp_path / "shared.db", tmp_path / "go", 25
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(src=SRC))
    procs = [subprocess.Popen([sys.executable, str(script), name, str(path), str(go), str(n)],
                              stderr=subprocess.PIPE, text=True) for name in ("w1", "w2")]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = ResultsStore(path)
    runs = store.list_runs(study="sweep")
    assert len(runs) == 2 * n
    assert sorted(runs["workload"].value_counts().items()) == [("w1", n), ("w2", n)]
    for run_id in runs["id"]:
        record = store.load_run(int(run_id))
        assert len(record.tables["t"]) == 50 and len(record.tables["u"]) == 20
        assert record.tables["t"]["i"].iloc[0] == record.settings["i"]
    assert not list(tmp_path.glob(".shared.db.*.tmp"))  # no temporary files left behind


@pytest.mark.parametrize("kind", ["text", "foreign-sqlite", "empty"])
def test_foreign_file_is_refused_and_untouched(tmp_path, kind):
    path = tmp_path / "results.db"
    if kind == "text":
        path.write_text("my thesis notes\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE runs (id INTEGER, payload TEXT)")
        conn.execute("INSERT INTO runs VALUES (1, 'precious')")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match="results.db"):
        ResultsStore(path)
    assert main(["runs", "list", "--db", str(path)]) == 2
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]


def test_corrupt_database_is_refused_and_untouched(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save_run(_record())
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    rng = np.random.default_rng(0)
    data[page_size:] = rng.integers(0, 256, len(data) - page_size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt") as info:
        ResultsStore(path).load_run(1)
    assert str(path) in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create results database"):
        ResultsStore(blocker / "results.db")
    with pytest.raises(UserError, match="is a folder"):
        ResultsStore(tmp_path)


def test_resume_by_key_latest_and_unknown_id(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    key = run_key("breakdown", "stable-diffusion", "tiny", {"image_size": 32, "steps": 2, "prompt": "<b>a cat</b>"},
                  "cpu", "float32")
    assert not store.has_key(key)
    first = store.save_run(_record())
    assert store.has_key(key)  # same settings in another order -> same key: the sweep skips it
    assert run_key("breakdown", "stable-diffusion", "tiny", {"steps": 3}, "cpu", "float32") != key
    store.save_run(_record(key="explicit-key", preset="small"))
    assert store.has_key("explicit-key")
    second = store.save_run(_record(tables=_tables(2.0)))
    store.save_run(_record(device="cuda"))
    assert store.latest("breakdown", workload="stable-diffusion", preset="tiny", device="cpu").id == second
    assert store.latest("breakdown", preset="small").key == "explicit-key"
    assert store.latest("nothing") is None
    assert list(store.list_runs(study="breakdown")["id"]) == [first, 2, 3, 4]
    with pytest.raises(UserError, match="no run with id 99"):
        store.load_run(99)


def test_compare(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    a = store.save_run(_record())
    b = store.save_run(_record(tables=_tables(2.0)))
    out = store.compare(a, b)
    assert set(out) == {"class_time", "memory", "empty"}
    assert out["memory"]["component"].tolist() == ["unet", "vae"]  # a named index is a key column
    ct = out["class_time"]
    assert list(ct.columns[:4]) == ["workload", "attention", "phase", "op_class"]
    row = ct[(ct["attention"] == "baseline") & (ct["op_class"] == "Attention")].iloc[0]
    assert (row["time_ms_a"], row["time_ms_b"], row["time_ms_ratio"]) == (10.0, 20.0, 2.0)
    assert (ct["calls_ratio"] == 1.0).all()


def _cli_json(capsys, argv: list[str]):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_cli(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    store = ResultsStore(db)
    a = store.save_run(_record())
    b = store.save_run(_record(tables=_tables(2.0)))
    runs = _cli_json(capsys, ["runs", "list", "--db", db, "--json"])
    assert [r["id"] for r in runs] == [a, b] and runs[0]["tables"] == "class_time,memory,empty"
    shown = _cli_json(capsys, ["runs", "show", str(a), "--db", db, "--json"])
    assert shown["settings"]["steps"] == 2 and shown["tables"]["class_time"][0]["time_ms"] == 10.0
    assert shown["tables"]["class_time"][3]["time_ms"] is None  # NaN -> null, valid JSON
    cmp = _cli_json(capsys, ["runs", "compare", str(a), str(b), "--db", db, "--json"])
    assert cmp["tables"]["class_time"][0]["time_ms_ratio"] == 2.0
    assert main(["runs", "list", "--db", db, "--study", "breakdown"]) == 0
    text = capsys.readouterr().out
    assert "stable-diffusion" in text and "class_time" in text
    assert main(["runs", "show", str(a), "--db", db]) == 0
    assert "== class_time (4 rows)" in capsys.readouterr().out
    assert main(["runs", "show", "42", "--db", db]) == 2
    assert "no run with id 42" in capsys.readouterr().err
    assert main(["runs", "show", "x", "--db", db]) == 2
    # a read command never creates a database: a mistyped --db is an error
    assert main(["runs", "list", "--db", str(tmp_path / "new.db")]) == 2
    assert "no results database at" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "new.db")
    ResultsStore(tmp_path / "empty.db")
    assert main(["runs", "list", "--db", str(tmp_path / "empty.db")]) == 0
    assert "no runs stored" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["genscope", "genscope.cli"])
def test_python_dash_m_runs_the_cli(tmp_path, module):
    """``python -m genscope`` and ``python -m genscope.cli`` run the registered commands (the second used to
    fail: run as ``__main__``, the module's command table stayed empty) and keep the exit-code contract."""
    db = tmp_path / "results.db"
    ResultsStore(db)
    ok = subprocess.run([sys.executable, "-m", module, "runs", "list", "--db", str(db)], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "no runs stored" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", module, "runs", "show", "999", "--db", str(db)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_validity_of_timed_comparisons_is_stored_with_the_run(tmp_path, capsys):
    """A run whose tables carry ``stable``/``busy``/``load_avg_1m`` is listed with them; a run without timed
    comparisons, and every run stored before the columns existed, lists None (backward compatible)."""
    db = tmp_path / "r.db"
    store = ResultsStore(db)
    speedup = pd.DataFrame({"workload": ["sd"], "e2e_speedup": [1.5], "stable": [False], "ci_pct": [12.0],
                            "busy": [True], "load_avg_1m": [3.5]})
    timed = store.save_run(_record(tables={"speedup": speedup}))
    steady = store.save_run(_record(tables={"speedup": speedup.assign(stable=True, busy=False)}))
    plain = store.save_run(_record())
    with sqlite3.connect(db) as conn:  # a run written by an older genscope: no "measurement" in environment
        conn.execute("UPDATE runs SET environment = ? WHERE id = ?", (json.dumps({"torch": "2.13.0"}), plain))
    runs = store.list_runs().set_index("id")
    assert runs.loc[timed, "stable"] is False and runs.loc[timed, "busy"] is True
    assert runs.loc[steady, "stable"] is True and runs.loc[steady, "busy"] is False
    assert runs.loc[plain, "stable"] is None
    assert store.load_run(timed).environment["measurement"] == {"stable": False, "busy": True, "load_avg_1m": 3.5}
    assert main(["runs", "list", "--db", str(db)]) == 0
    lines = {int(line.split()[0]): line for line in capsys.readouterr().out.splitlines() if line.split()[0].isdigit()}
    assert "UNSTABLE" in lines[timed] and "UNSTABLE" not in lines[steady] and "UNSTABLE" not in lines[plain]
