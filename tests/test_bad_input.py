"""Bad input, by kind: each gets one clear line and exit code 2 (or a UserError from the library), never a
traceback, never a silent acceptance. One test per kind; each failed before the fix it names."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest
import torch

from genscope.cli import main
from genscope.errors import UserError
from genscope.results.store import ResultsStore, RunRecord


def _one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("genscope: error:"), err
    assert needle in err, err
    return err


def _stored(db) -> int:
    import pandas as pd

    store = ResultsStore(db)
    return store.save_run(RunRecord(study="breakdown", workload="stable-diffusion", preset="tiny", settings={},
                                    device="cpu", dtype="float32", tables={"t": pd.DataFrame({"x": [1.0]})}))


# -- tracebacks instead of a message -------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", [str(2**63), str(-(2**63) - 1), "9" * 40])
def test_run_ids_beyond_sqlite_integers(tmp_path, capsys, run_id):
    db = tmp_path / "r.db"
    _stored(db)
    assert main(["runs", "show", run_id, "--db", str(db)]) == 2  # was: OverflowError traceback
    _one_line_error(capsys, "out of range")
    assert main(["runs", "compare", "1", run_id, "--db", str(db)]) == 2
    _one_line_error(capsys, "out of range")


@pytest.mark.parametrize("argv", [
    ["runs", "list", "--db", "{long}.db"],
    ["report", "--db", "{db}", "--out", "{long}"],
    ["profile", "stable-diffusion", "--preset", "tiny", "--no-store", "--trace", "{long}.json"],
    ["run", "llama", "--preset", "tiny", "--out", "{long}"],
])
def test_names_longer_than_the_file_system_allows(tmp_path, capsys, argv):
    db = tmp_path / "r.db"
    _stored(db)
    long = str(tmp_path / ("n" * 300))
    argv = [a.format(long=long, db=db) for a in argv]
    assert main(argv) == 2  # was: OSError [Errno 36] File name too long, with a traceback
    _one_line_error(capsys, "this file system allows")


def test_arguments_that_are_not_utf8(capsys):
    bad = b"a cat \xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of undecodable argv bytes
    assert main(["run", "stable-diffusion", "--preset", "tiny", "--prompt", bad]) == 2
    _one_line_error(capsys, "not valid UTF-8")
    assert main(["runs", "list", "--study", bad]) == 2
    _one_line_error(capsys, "not valid UTF-8")


def test_prompt_with_surrogates_through_the_library():
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    bad = b"\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(UserError, match="UTF-8"):
        registry.get("stable-diffusion").request(RunSettings(preset="tiny", prompt=bad))


def test_sizes_that_cannot_be_allocated_are_refused_before_allocating(capsys):
    # frames and image size each within their accepted ranges, together ~6 TB: checked against free memory
    assert main(["temporal", "--frames", "4096", "--image-size", "2048", "--no-store"]) == 2
    _one_line_error(capsys, "can be allocated")


# -- nonsense accepted ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["profile", "stable-diffusion", "--preset", "tiny", "--warmup", "-1", "--no-store"], "--warmup"),
    (["scaling", "--memory-fraction", "-1", "--no-store"], "memory-fraction"),
    (["scaling", "--memory-fraction", "nan", "--no-store"], "memory-fraction"),
    (["profile", "stable-diffusion", "--preset", "tiny", "--decode-tokens", "5", "--no-store"], "--decode-tokens"),
    (["profile", "llama", "--preset", "tiny", "--steps", "5", "--no-store"], "--steps"),
    (["run", "llama", "--preset", "tiny", "--guidance-scale", "3", "--out", "{tmp}/o"], "--guidance-scale"),
    (["run", "stable-diffusion", "--preset", "tiny", "--decode-tokens", "3", "--out", "{tmp}/o"], "--decode-tokens"),
])
def test_nonsense_options_are_refused(tmp_path, capsys, argv, needle):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2  # each used to run (and store) as if the option had not been given
    _one_line_error(capsys, needle)


def test_parti_still_takes_its_derived_token_count():
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    registry.get("parti").check_options_apply(RunSettings(preset="tiny", decode_tokens=16, image_size=64))


# -- weights ------------------------------------------------------------------------------------------------
def test_safetensors_with_missing_tensors_are_refused(tmp_path):
    from helpers import run_tiny
    from safetensors.torch import load_file, save_file

    pipeline, _, _, _ = run_tiny("llama", decode_tokens=2)
    pipeline.component("language_model").save_pretrained(tmp_path, safe_serialization=True)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(k for k in tensors if k.endswith("mlp.down_proj.weight"))[0]
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(UserError, match="missing keys") as err:  # was: loaded, the tensor zero-filled
        run_tiny("llama", decode_tokens=2, weights=str(tmp_path))
    assert dropped in str(err.value)


# -- the store and output folders ---------------------------------------------------------------------------
def test_read_commands_never_create_a_database(tmp_path, capsys):
    typo = tmp_path / "resutls.db"
    for argv in (["runs", "list"], ["runs", "show", "1"], ["report", "--out", str(tmp_path / "out")]):
        assert main([*argv, "--db", str(typo)]) == 2
        _one_line_error(capsys, "no results database")
    assert not typo.exists()


def test_healthy_database_in_a_read_only_folder_is_readable(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.db"
    run_id = _stored(db)
    assert not (folder / "r.db-wal").exists()  # SQLite removed it when the last connection closed
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the access check say what it says for a user
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(folder)
                                and mode & os.W_OK else real_access(p, mode, **kw))
        assert main(["runs", "show", str(run_id), "--db", str(db)]) == 0  # was: "unreadable or corrupt"
        assert "stable-diffusion" in capsys.readouterr().out
        store = ResultsStore(db)  # a read-write open falls back to reading
        assert store.load_run(run_id).workload == "stable-diffusion"
        assert "immutable=1" in store._uri()  # no -shm and no -wal: nothing uncommitted can exist
    finally:
        folder.chmod(stat.S_IRWXU)


def test_read_only_store_refuses_writes_clearly(tmp_path):
    db = tmp_path / "r.db"
    _stored(db)
    store = ResultsStore(db, readonly=True)
    with pytest.raises(UserError, match="cannot write"):
        _stored_into(store)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def _stored_into(store):
    import pandas as pd

    store.save_run(RunRecord(study="s", workload="w", preset="p", settings={}, device="cpu", dtype="float32",
                             tables={"t": pd.DataFrame({"x": [1]})}))


@pytest.mark.parametrize("argv, needle", [
    (["profile", "stable-diffusion", "--preset", "tiny", "--db", "{notdb}"], "not a SQLite database"),
    (["profile", "stable-diffusion", "--preset", "tiny", "--db", "{file}/sub/r.db"], "not a folder"),
    (["characterize", "--preset", "tiny", "--db", "{tmp}/ok.db", "--out", "{file}"], "not a folder"),
])
def test_store_and_output_folder_checked_before_computing(tmp_path, capsys, monkeypatch, argv, needle):
    (tmp_path / "notdb.db").write_text("hello")
    (tmp_path / "file").write_text("x")
    argv = [a.format(notdb=tmp_path / "notdb.db", file=tmp_path / "file", tmp=tmp_path) for a in argv]
    import genscope.workloads.base as base

    def no_build(*a, **k):
        raise AssertionError("computed before checking the store / output folder")

    monkeypatch.setattr(base.Workload, "request", no_build)
    assert main(argv) == 2
    _one_line_error(capsys, needle)


# -- the report ---------------------------------------------------------------------------------------------
def test_memory_model_heading_is_escaped(tmp_path):
    import pandas as pd

    from genscope.report.sequence import memory_model_section

    store = ResultsStore(tmp_path / "r.db")
    evil = "<script>alert(1)</script>"
    check = pd.DataFrame({"image_size": [64], "exact": [True]})
    store.save_run(RunRecord(study="memory-model", workload=evil, preset="paper", settings={}, device="meta",
                             dtype="float32", tables={"check": check}))
    html = "\n".join(memory_model_section(store))
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;: model vs trace" in html


# -- the Python API -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"repeat": 0}, "repeat"),
    ({"warmup": -1}, "warmup"),
    ({"call_kwargs": [("x", 1)]}, "call_kwargs must be a mapping"),
    ({"call_kwargs": {1: 2}}, "keys must be argument names"),
    ({"inputs": torch.zeros(2)}, "inputs must be a tuple"),
    ({"inputs": [torch.zeros(2)]}, "inputs must be a tuple"),
    ({"device": "tpu"}, "device"),
    ({"device": "cuda:7"}, "cuda"),
])
def test_api_arguments(kwargs, needle):
    import genscope

    calls = []
    with pytest.raises(UserError, match=needle):
        genscope.profile(lambda *a, **k: calls.append(1), **kwargs)
    assert not calls  # refused before running anything


# -- stderr noise --------------------------------------------------------------------------------------------
def test_profiler_and_loading_print_nothing_on_stderr(tmp_path):
    """A profiled run and a weights load in a fresh process: stderr holds no USDT lines, no progress bar."""
    from helpers import run_tiny

    pipeline, _, _, _ = run_tiny("llama", decode_tokens=1)
    pipeline.component("language_model").save_pretrained(tmp_path, safe_serialization=True)  # (its own bar)
    code = f"""
import torch
from genscope.instrument.profiler import profile_callable
from helpers import run_tiny
profile_callable(lambda: torch.randn(64, 64) @ torch.randn(64, 64), mode="trace", repeat=2, warmup=0)
run_tiny("llama", decode_tokens=1, weights={str(tmp_path)!r})
import sys; print("kept", file=sys.stderr)
"""
    root = os.path.dirname(os.path.abspath(__file__))  # tests/: helpers importable
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "USDT" not in out.stderr and "STAGE:" not in out.stderr
    assert "Loading" not in out.stderr and "it/s" not in out.stderr and "%|" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "kept"  # other stderr output still gets through


@pytest.mark.parametrize("fraction", [-1.0, float("nan"), 0.0, 1.5, float("inf")])
def test_memory_fraction_through_the_library(fraction):
    from genscope.studies.image_scaling import image_scaling
    from genscope.studies.prefill_decode import memory_budget

    with pytest.raises(UserError, match="memory-fraction"):
        image_scaling(preset="tiny", image_sizes=[64], steps=1, repeat=1, memory_fraction=fraction)
    with pytest.raises(UserError, match="memory fraction"):
        memory_budget(torch.device("cpu"), fraction)


@pytest.mark.parametrize(("argv", "code"), [(["models"], 0), (["flops", "no-such-model"], 2)])
def test_console_script_runs_exit_handlers_and_flushes_before_leaving(argv, code):
    # `genscope` leaves with os._exit after the command (no module teardown): what was registered with atexit
    # must still run, everything printed must arrive, and the command's exit code must be the process's
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        f"sys.argv = ['genscope', *{argv!r}]\n"
        "print('x' * 100000)\n"  # more than a pipe's buffer: must be flushed, not lost
        "from genscope.cli import run\n"
        "run()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == code, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "x" * 100000
    assert lines[-1] == "exit handler ran"
    if code == 2:
        assert "unknown model 'no-such-model'" in out.stderr
    else:
        assert "stable-diffusion" in out.stdout
