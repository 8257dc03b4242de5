"""FSDP training: the interval split, a training step, measured bytes == the model's, and failing ranks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genscope.instrument.distributed import collective_bytes, split_steps
from genscope.instrument.intervals import split_window, sweep, union

# --------------------------------------------------------------------------------------------------------
# interval algebra on synthetic timelines (expected values derived by hand in the comments)
# --------------------------------------------------------------------------------------------------------


def test_union_merges_overlapping_nested_and_touching():
    s, e = union([5, 0, 20, 2, 10], [10, 3, 25, 4, 12])
    # [0,3) and [2,4) overlap -> [0,4); [5,10) and [10,12) touch -> [5,12); [20,25) alone
    assert s.tolist() == [0, 5, 20] and e.tolist() == [4, 12, 25]


def test_split_window_by_hand():
    # compute [0,30) u [20,50) u [70,90) = [0,50) u [70,90): 70
    # comm    [40,60) u [45,55) u [85,100) = [40,60) u [85,100): 35
    # overlapped = [40,50) + [85,90) = 15; exposed = [50,60) + [90,100) = 20; idle = [60,70) = 10
    compute = (np.array([0, 20, 70.0]), np.array([30, 50, 90.0]))
    comm = (np.array([40, 45, 85.0]), np.array([60, 55, 100.0]))
    out = split_window(0, 100, compute, comm, scale_to_ms=1.0)
    assert out == {"window_ms": 100, "compute_ms": 70, "communication_ms": 35, "overlapped_ms": 15,
                   "exposed_comm_ms": 20, "idle_ms": 10}
    # clipped to a window: [45, 95) -> compute [45,50)+[70,90) = 25; comm [45,60)+[85,95) = 25;
    # overlapped [45,50)+[85,90) = 10; exposed [50,60)+[90,95) = 15; idle [60,70) = 10
    out = split_window(45, 95, compute, comm, scale_to_ms=1.0)
    assert (out["compute_ms"], out["communication_ms"], out["overlapped_ms"], out["exposed_comm_ms"],
            out["idle_ms"]) == (25, 25, 10, 15, 10)
    seg = sweep(0, 100, {"a": compute})
    assert seg["length"].sum() == 100


def _event(name, cat, tid, ts, dur, dims=None, types=None):
    return {"name": name, "cat": cat, "pid": "7", "tid": tid, "ts": float(ts), "dur": float(dur), "end": float(ts + dur),
            "input_dims": dims, "input_types": types}


def test_cpu_trace_split_and_bytes_by_hand():
    """A gloo-like rank: main thread "1" with ops and a c10d call, gloo thread "2" running the collectives."""
    events = pd.DataFrame([
        _event("train_step#0", "user_annotation", "1", 0, 100),
        _event("aten::convolution", "cpu_op", "1", 0, 30),
        _event("aten::addmm", "cpu_op", "1", 10, 10),  # nested in the convolution's interval
        _event("c10d::_allgather_base_", "cpu_op", "1", 30, 4, [[8], [4], [], [], []], ["float", "float"]),
        _event("aten::empty", "cpu_op", "1", 31, 1),  # inside the c10d call: not compute
        _event("aten::mm", "cpu_op", "1", 70, 20),
        _event("gloo:all_gather", "cpu_op", "2", 32, 13),
        _event("gloo:all_reduce", "cpu_op", "2", 85, 15),
        _event("aten::mm", "cpu_op", "1", 150, 10),  # outside the step window
    ])
    row = split_steps(events, "train_step").iloc[0]
    # compute = [0,30) + [70,90) = 50 us; comm = [30,34) u [32,45) = [30,45) + [85,100) = 30 us
    # overlapped = [85,90) = 5; exposed = 25; idle = [45,70) = 25
    assert row["compute_ms"] == pytest.approx(0.050) and row["communication_ms"] == pytest.approx(0.030)
    assert row["overlapped_ms"] == pytest.approx(0.005) and row["exposed_comm_ms"] == pytest.approx(0.025)
    assert row["idle_ms"] == pytest.approx(0.025) and row["window_ms"] == pytest.approx(0.100)
    calls = collective_bytes(events, "train_step")
    # output 8 floats = 32 bytes, input 4 floats = 16 bytes
    assert calls[["collective", "output_bytes", "input_bytes"]].values.tolist() == [["all_gather", 32, 16]]


# --------------------------------------------------------------------------------------------------------
# one training step in this process (a one-rank gloo group: FSDP2's code path without other processes)
# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("workload", ["stable-diffusion", "muse", "prod-image"])
def test_training_step_runs_and_loss_is_finite(one_rank_group, workload):
    from torch.distributed.tensor import DTensor

    from genscope.workloads.training import make_trainer

    torch.set_num_threads(1)
    trainer = make_trainer(workload, "tiny", batch_size=1, device=torch.device("cpu"), param_dtype=torch.float32,
                           seed=0)
    before = {n: p.to_local().clone() for n, p in trainer.model.named_parameters()}
    losses = [float(trainer.step()) for _ in range(2)]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert all(isinstance(p, DTensor) for p in trainer.model.parameters())  # FSDP2 manages every parameter
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.to_local())]
    assert len(changed) > len(before) // 2  # AdamW updated the weights


def test_model_without_training_loss_is_a_user_error():
    from genscope.cli import main

    assert main(["train", "llama", "--nproc", "2", "--no-store"]) == 2
    assert main(["train", "stable-diffusion", "--nproc", "0", "--no-store"]) == 2
    if not torch.cuda.is_available():
        assert main(["train", "stable-diffusion", "--backend", "nccl", "--no-store"]) == 2


def test_paper_scale_bytes_follow_fsdp_padding():
    from genscope.studies.training_model import collectives_per_step, fsdp_units
    from genscope.workloads.training import build_trainable

    model, _ = build_trainable("stable-diffusion", "tiny", "meta")
    units = fsdp_units(model, 3)
    # every parameter is padded to ceil(d0 / 3) rows per rank, so 3 shards hold at least all parameters
    assert (3 * units["shard_numel"] >= units["params"]).all()
    coll = collectives_per_step(units, 3, param_bytes=2, reduce_bytes=4)
    gathers = coll[coll["collective"] == "all_gather"]
    assert gathers["calls"].tolist() == [2] * (len(units) - 1) + [1]  # blocks twice, the root once


# --------------------------------------------------------------------------------------------------------
# 2 gloo ranks through torch's launcher
# --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_gloo_ranks_measured_bytes_equal_prediction(tmp_path, capsys):
    from genscope.cli import main
    from genscope.workloads.training import build_trainable

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rc = main(["train", "stable-diffusion", "--preset", "tiny", "--nproc", "2", "--steps", "1",
               "--threads", "1", "--precision", "float32", "--trace-dir", str(tmp_path / "traces"),
               "--db", str(tmp_path / "r.db"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "traces").glob("rank*.json")) == [
        "rank0.json", "rank0.meta.json", "rank1.json", "rank1.meta.json"]
    trace = json.loads((tmp_path / "traces" / "rank1.json").read_text())
    assert trace["distributedInfo"]["rank"] == 1 and trace["distributedInfo"]["world_size"] == 2
    summary = out["summary"][0]
    assert summary["loss_finite"] and summary["ranks_traced"] == 2
    assert summary["window_ms"] == pytest.approx(summary["compute_ms"] + summary["exposed_comm_ms"]
                                                 + summary["idle_ms"], rel=1e-9)
    # expected all-gather bytes per step, independently: FSDP2 pads dim 0 to a multiple of 2 on 2 ranks;
    # every block is gathered twice (forward, backward), the root (params outside the blocks) once; fp32
    model, _ = build_trainable("stable-diffusion", "tiny", "meta")
    padded = {id(p): (p.shape[0] + p.shape[0] % 2) * p[0].numel() for p in model.parameters()}
    in_blocks = {id(p) for name in ("down_blocks", "mid_block", "up_blocks")
                 for p in getattr(model, name).parameters()}
    expected = 4 * (2 * sum(v for k, v in padded.items() if k in in_blocks)
                    + sum(v for k, v in padded.items() if k not in in_blocks))
    gathers = next(r for r in out["collectives"] if r["collective"] == "all_gather")
    assert gathers["output_bytes_measured"] == expected == gathers["output_bytes_predicted"]
    reduces = next(r for r in out["collectives"] if r["collective"] == "reduce_scatter")
    assert reduces["input_bytes_measured"] == 4 * sum(padded.values()) == reduces["input_bytes_predicted"]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live, non-zombie descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = (int(fields[1]), cmd)
    out, frontier = [], {pid}
    while frontier:
        kids = [(p, c) for p, (pp, c) in parents.items() if pp in frontier]
        out += kids
        frontier = {p for p, _ in kids}
    return out


@pytest.mark.slow
def test_failing_rank_ends_the_job_and_leaves_no_process(tmp_path):
    from genscope.commands.train import RankFailed, launch

    job = {"model": "stable-diffusion", "preset": "tiny", "steps": 1, "warmup": 1, "batch_size": 1,
           "backend": "gloo", "precision": "float32", "threads": 1, "trace_dir": str(tmp_path), "seed": 0,
           "world_size": 2, "fail_rank": 1}
    with pytest.raises(RankFailed, match="rank 1 failed.*injected failure on rank 1"):
        launch(job, 2)
    # the launcher's helper (multiprocessing's resource tracker) may stay; no rank may
    ranks = [(p, c) for p, c in _descendants(os.getpid()) if "resource_tracker" not in c]
    assert ranks == []
    assert not list(tmp_path.glob("rank*.json"))  # rank 0 was stopped before writing anything


def test_step_simulation_by_hand():
    from genscope.studies.training_model import ROOT, simulate_step

    # root: gather 1, forward 1, backward 2, reduce 1; block "a": gather 1 (x2), forward 2, backward 4, reduce 1
    # comm channel: root AG [0,1), a AG [1,2); compute: root fwd [1,2), a fwd [2,4)
    # backward: a AG [4,5), a bwd [5,9), a RS [9,10), root bwd [9,11), root RS [11,12) -> step 12
    # compute 9; communication 1 + 2 + 1 + 1 = 5; exposed = [0,1) + [4,5) + [11,12) = 3; overlapped 2
    out = simulate_step(["a"], {ROOT: 1, "a": 2}, {ROOT: 2, "a": 4}, {ROOT: 1, "a": 1}, {ROOT: 1, "a": 1})
    assert out == {"step_ms": 12e3, "compute_ms": 9e3, "communication_ms": 5e3, "exposed_comm_ms": 3e3,
                   "overlapped_ms": 2e3}


def test_training_flops_counted_forward_and_backward():
    from genscope.studies.training_model import ROOT, training_flops

    _, flops = training_flops("stable-diffusion", "tiny")
    # backward of a convolution or linear layer = grad input + grad weight = 2 x its forward
    assert 1.8 <= flops["backward"] / flops["forward"] <= 2.1
    # the blocks carry the forward FLOPs; the root keeps conv_in/conv_out and the time embedding only
    assert 0 < flops[f"forward:{ROOT}"] < 0.05 * flops["forward"]


def test_report_section_draws_stored_runs(tmp_path):
    from genscope.report.training import training_section
    from genscope.results.store import ResultsStore, RunRecord

    store = ResultsStore(tmp_path / "r.db")
    assert training_section(store) == []  # nothing stored: no section
    summary = pd.DataFrame([{"model": "stable-diffusion", "preset": "small", "world_size": 2, "backend": "gloo",
                             "device": "cpu", "precision": "float32", "threads_per_rank": 1, "window_ms": 10.0,
                             "compute_ms": 7.0, "communication_ms": 3.0, "overlapped_ms": 2.0,
                             "exposed_comm_ms": 1.0, "idle_ms": 2.0, "comm_share": 0.3,
                             "all_gather_bytes_per_step": 8, "reduce_scatter_bytes_per_step": 4,
                             "loss_finite": True}])
    validation = pd.DataFrame([{"quantity": "all_gather bytes per step <b>", "measured": 8.0, "predicted": 8.0,
                                "error_pct": 0.0}])
    store.save_run(RunRecord("training", "stable-diffusion", "small", {}, "cpu", "float32",
                             {"summary": summary, "validation": validation}))
    pred = pd.DataFrame([{"model": "stable-diffusion", "gpus": n, "nodes": 1 + n // 9, "compute_ms": 30.0,
                          "communication_ms": 10.0 * n, "overlapped_ms": 5.0, "exposed_comm_ms": 10.0 * n - 5,
                          "step_ms": 25.0 + 10 * n, "comm_share": 0.5, "all_gather_bytes": 1.0,
                          "reduce_scatter_bytes": 1.0} for n in (2, 8, 16)])
    store.save_run(RunRecord("training-model", "suite", "paper", {}, "meta", "bfloat16", {"prediction": pred}))
    html = "\n".join(training_section(store))
    assert html.count("<img") == 3  # measured, predicted at 2/8/16, scaling
    assert "bytes per step &lt;b&gt;" in html and "<b>" not in html  # stored strings are escaped
    assert "16 GPUs 80% of compute+communication" not in html and "16 GPUs 50%" in html
