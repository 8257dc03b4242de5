"""Executors of a characterization plan, and the driver loop that stores what they return.

A plan (:mod:`genscope.studies.plan`) is data; an executor only turns a task into tables:

* :class:`InProcessExecutor` (the default): runs each task in this process, one after the other;
* :class:`RayExecutor` (``genscope characterize --executor ray [--address ...]``, the ``genscope[ray]`` extra):
  each task is a Ray remote task with its resource needs (one GPU when the task's device is CUDA, one CPU
  otherwise), run on whatever machines the Ray cluster has; its tables come back to the driver.

:func:`run_plan` is the driver, the same for every executor: it computes each task's resume key and skips
stored ones (unless ``fresh``), reads the stored inputs a study reuses (FLOP counts for Table I and the
roofline) - waiting for every earlier task first, so those inputs are there - and writes each result into the
SQLite store, one run per transaction, in this process only. A failing task is reported and the others go on;
Ctrl-C stops everything and keeps what is stored.

Why here and not in a package of its own: the executors are the command's machinery (the studies know nothing
of them) and the whole mechanism fits in one module.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from genscope.commands.common import store_tables
from genscope.errors import UserError
from genscope.studies.plan import PlanTask

EXECUTORS = ("inprocess", "ray")
Result = dict[str, pd.DataFrame] | Exception


def run_task(study: str, settings: dict, inputs: dict) -> dict[str, pd.DataFrame]:
    """What every executor runs for one task (also inside a Ray worker). A study that needs processes started
    first (:data:`genscope.studies.plan.LAUNCHED`: the FSDP ranks) is launched here, on the command side; its
    study then reads what they wrote."""
    from genscope.studies.plan import LAUNCHED
    from genscope.studies.registry import run_study

    if study in LAUNCHED and "trace_dir" not in settings:
        from genscope.commands.train import run_measured

        return run_measured(settings)
    return run_study(study, settings, inputs)


class InProcessExecutor:
    """Each task runs here when submitted; exceptions (not Ctrl-C) become that task's result."""

    def __init__(self) -> None:
        self._done: deque[tuple[PlanTask, Result]] = deque()

    def submit(self, task: PlanTask, inputs: dict) -> None:
        try:
            result: Result = run_task(task.study, task.settings, inputs)
        except Exception as exc:  # one broken study must not cost the others (Ctrl-C still stops everything)
            result = exc
        self._done.append((task, result))

    def completed(self, wait: bool = False) -> Iterator[tuple[PlanTask, Result]]:
        """The finished tasks (``wait``: until none is left running - here, every submitted one is finished)."""
        while self._done:
            yield self._done.popleft()

    def close(self) -> None:
        pass


def task_resources(task: PlanTask) -> dict[str, float]:
    """A task's Ray resource request: one GPU for a CUDA task, else one CPU."""
    return {"num_gpus": 1, "num_cpus": 1} if task.device.startswith("cuda") else {"num_cpus": 1}


class RayExecutor:
    """Tasks as Ray remote tasks (``ray.init(address)``: None starts a local instance, ``auto`` joins a cluster)."""

    def __init__(self, address: str | None = None, **init_kwargs: Any) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise UserError("--executor ray needs Ray: pip install 'genscope[ray]'") from None
        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, **init_kwargs)
        self._remote = ray.remote(run_task)
        self._pending: dict[Any, PlanTask] = {}

    def submit(self, task: PlanTask, inputs: dict) -> None:
        ref = self._remote.options(**task_resources(task)).remote(task.study, task.settings, inputs)
        self._pending[ref] = task

    def completed(self, wait: bool = False) -> Iterator[tuple[PlanTask, Result]]:
        """The finished tasks; ``wait``: block until every submitted task has finished."""
        while self._pending:
            ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return
            for ref in ready:
                task = self._pending.pop(ref)
                try:
                    result: Result = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause()
                    result = cause if isinstance(cause, Exception) else RuntimeError(str(exc))
                yield task, result

    def close(self) -> None:
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        self._pending.clear()
        if self._started:
            self.ray.shutdown()


def make_executor(name: str, address: str | None = None):
    if name == "inprocess":
        if address:
            raise UserError("--address applies to --executor ray")
        return InProcessExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise UserError(f"unknown executor {name!r}; accepted: {', '.join(EXECUTORS)}")


def error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_plan(tasks: list[PlanTask], store, *, executor=None, fresh: bool = False,
             on_event: Callable[[str, PlanTask, str], None] | None = None) -> dict[str, int]:
    """Run ``tasks`` on ``executor`` (default in-process) and store each result; counts of done / skipped /
    failed. ``on_event(event, task, detail)``: event is start, skipped, done or failed (detail: the error)."""
    from genscope.results.store import run_key
    from genscope.studies import registry

    executor = executor or InProcessExecutor()
    say = on_event or (lambda event, task, detail: None)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    keys: dict[int, str] = {}

    def collect(wait: bool) -> None:
        for task, result in executor.completed(wait):
            if isinstance(result, Exception):
                counts["failed"] += 1
                say("failed", task, error_line(result))
                continue
            store_tables(store, study=task.study, workload=task.workload, preset=task.preset,
                         settings=task.settings, device=task.device, dtype=task.dtype, tables=result,
                         key=keys[id(task)])
            counts["done"] += 1
            say("done", task, "")
            del result
            # each task builds its own models: free them, reference cycles included, before the next one;
            # then move what survives (imported modules, caches) to the permanent generation, so neither this
            # collection nor the interpreter's own ones traverse it again (a full pass over torch's,
            # diffusers' and transformers' objects took 0.25 s per task)
            gc.collect()
            gc.freeze()

    gc.freeze()  # what is imported and alive now is not garbage: no collection need traverse it (see collect)
    try:
        for task in tasks:
            key = run_key(task.study, task.workload, task.preset, task.settings, task.device, task.dtype)
            if not fresh and store.has_key(key):
                counts["skipped"] += 1
                say("skipped", task, "")
                continue
            keys[id(task)] = key
            inputs = {}
            if registry.needs_stored_inputs(task.study):
                collect(wait=True)  # every earlier task finished and stored: what it reuses is there
                inputs = registry.stored_inputs(task.study, task.settings, store)
            say("start", task, "")
            executor.submit(task, inputs)
            collect(wait=False)
        collect(wait=True)
    finally:
        executor.close()
        gc.unfreeze()  # back to the collector: nothing frozen outlives the plan (nanobind reports leaks at exit)
    return counts
