"""The characterization plan on an executor: a two-task plan on a local Ray instance, stored by the driver."""

from __future__ import annotations

import ray  # the `ray` extra is installed by `make test` (-e '.[dev,ray]'): a missing Ray fails, never skips

from genscope.commands.executors import RayExecutor, run_plan, task_resources
from genscope.results.store import ResultsStore
from genscope.studies.plan import build_plan, task


def test_two_task_plan_on_local_ray_is_stored_by_the_driver(tmp_path):
    tasks = [task("seqlen", workload="stable-diffusion", preset="tiny"),
             task("seqlen", workload="llama", preset="tiny")]
    store = ResultsStore(tmp_path / "r.db")
    events = []
    executor = RayExecutor(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        counts = run_plan(tasks, store, executor=executor,
                          on_event=lambda event, t, detail: events.append((event, t.workload, detail)))
    finally:
        assert not ray.is_initialized()  # the executor shut down the instance it started
    assert counts == {"done": 2, "skipped": 0, "failed": 0}, events
    runs = store.list_runs("seqlen")
    assert sorted(runs.workload) == ["llama", "stable-diffusion"]
    for name in ("stable-diffusion", "llama"):
        record = store.latest("seqlen", workload=name, preset="tiny")
        assert {"period", "distribution", "summary"} <= set(record.tables)
        assert record.tables["summary"]["calls_total"].iloc[0] > 0
    # resume: a second run on the in-process executor finds both keys stored and runs nothing
    assert run_plan(tasks, store) == {"done": 0, "skipped": 2, "failed": 0}


def test_task_resources_ask_a_gpu_for_cuda_tasks():
    cpu = task("breakdown", workload="stable-diffusion", preset="tiny", device="cpu")
    assert task_resources(cpu) == {"num_cpus": 1}
    cuda = cpu.__class__(cpu.study, cpu.workload, {**cpu.settings, "device": "cuda"}, cpu.preset, "cuda:0", cpu.dtype)
    assert task_resources(cuda)["num_gpus"] == 1


def test_analytical_plan_covers_the_paper_scale_studies():
    tasks = build_plan(["stable-diffusion", "llama"], studies="analytical", preset="small")
    studies = [(t.study, t.workload, t.preset, t.dtype) for t in tasks]
    # one count per workload, in the roofline's dtype (FLOPs do not depend on it; Table I and the roofline reuse it)
    flops = [(w, d) for s, w, p, d in studies if s == "flops"]
    assert sorted(flops) == [("llama", "float16"), ("stable-diffusion", "float16")]
    assert ("seqlen", "llama", "small", "float32") in studies  # autoregressive: at the plan's preset
    assert ("memory-model", "stable-diffusion", "paper", "float16") in studies
    assert [s for s, *_ in studies][-1] == "roofline" and "taxonomy" in [s for s, *_ in studies]
    assert all(t.study != "breakdown" for t in tasks)
