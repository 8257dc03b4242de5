"""Distributed-training timelines: per-rank Chrome traces -> compute, communication, exposed communication, idle.

A rank's step is a window ``[t0, t1)`` of its trace. Inside it two sets of intervals are drawn from the events:

* **compute** - on CPU, the rank's main-thread operators (``cpu_op``), except the collectives' own entries
  (``c10d::*`` and what runs inside them); on GPU, the kernels that are not NCCL kernels;
* **communication** - on CPU, the collectives as gloo runs them on its own threads (``gloo:all_gather``,
  ``gloo:all_reduce``, ...) plus the main thread's time inside ``c10d::*`` calls (blocked issuing or
  waiting); on GPU, the NCCL kernels (``ncclDevKernel_*`` / ``ncclKernel_*``) on their streams.

Then, by an interval sweep over the merged timeline (:func:`split_window`): ``overlapped`` = communication
while compute runs, ``exposed communication`` = communication while no compute runs, ``idle`` = neither
(Python and framework time between operators on CPU, launch gaps on GPU). Exactly:
``window = compute + exposed + idle`` and ``communication = overlapped + exposed``.

Bytes moved per collective come from the collectives' arguments as ``record_shapes`` records them on the
``c10d::`` operators (``Input Dims`` and ``Input type``): ``c10d::_allgather_base_(output, input)`` and
``c10d::_reduce_scatter_base_(output, input)`` (and the list forms).

Why hand-written: Holistic Trace Analysis computes comm/compute overlap from GPU kernels only (it reads no CPU
collectives, so it cannot split gloo traces), and torch.profiler gives events, not interval algebra. The
algebra below is a few vectorized numpy lines (sort, running maximum, ``searchsorted``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genscope.instrument.intervals import covered, split_window, union
from genscope.instrument.traces import read_trace_file

COMM_PREFIXES = ("gloo:", "nccl:")  # CPU-side collectives as the backends' threads record them
C10D_PREFIX = "c10d::"
NCCL_KERNEL_MARKERS = ("nccl",)  # GPU kernel names: ncclDevKernel_AllGather_RING_LL, ncclKernel_...
GPU_KERNEL_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# element sizes of the profiler's "Input type" strings
ELEMENT_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4,
                 "signed char": 1, "unsigned char": 1, "bool": 1, "short int": 2, "c10::Float8_e4m3fn": 1}
# collective kind of each c10d op; the first two Input Dims are (output, input) for the *_base_ forms
COLLECTIVES = {
    "c10d::_allgather_base_": "all_gather", "c10d::allgather_": "all_gather",
    "c10d::allgather_into_tensor_coalesced_": "all_gather",
    "c10d::_reduce_scatter_base_": "reduce_scatter", "c10d::reduce_scatter_": "reduce_scatter",
    "c10d::reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "c10d::allreduce_": "all_reduce", "c10d::broadcast_": "broadcast",
}
SPLIT_COLUMNS = ("window_ms", "compute_ms", "communication_ms", "overlapped_ms", "exposed_comm_ms", "idle_ms")


# ----------------------------------------------------------------------------------------------------
# Traces
# ----------------------------------------------------------------------------------------------------
def load_trace(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A Chrome trace written by ``torch.profiler`` -> (complete events, ``distributedInfo``).

    Events: ``name, cat, pid, tid, ts, dur, end`` (microseconds) and, where recorded, ``input_dims`` and
    ``input_types`` (from ``record_shapes``). Parsed as JSON only.
    """
    trace = read_trace_file(path)  # .json or .json.gz; one clear error for anything else
    rows = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    events = pd.DataFrame({
        "name": [str(e.get("name", "")) for e in rows],
        "cat": [str(e.get("cat", "")) for e in rows],
        "pid": [str(e.get("pid", "")) for e in rows],
        "tid": [str(e.get("tid", "")) for e in rows],
        "ts": np.array([float(e["ts"]) for e in rows], dtype=np.float64),
        "dur": np.array([float(e["dur"]) for e in rows], dtype=np.float64),
        "input_dims": [(e.get("args") or {}).get("Input Dims") for e in rows],
        "input_types": [(e.get("args") or {}).get("Input type") for e in rows],
    })
    events["end"] = events["ts"] + events["dur"]
    return events, dict(trace.get("distributedInfo") or {})


def is_nccl_kernel(names: pd.Series) -> pd.Series:
    low = names.str.lower()
    return np.logical_or.reduce([low.str.contains(m, regex=False) for m in NCCL_KERNEL_MARKERS])


def timeline_sets(events: pd.DataFrame, main_tid: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The compute and communication interval sets of one rank (see the module docstring)."""
    gpu = events["cat"].isin(GPU_KERNEL_CATS)
    if gpu.any():  # GPU: kernels decide
        kernels = events[gpu]
        nccl = is_nccl_kernel(kernels["name"])
        comp, comm = kernels[~nccl], kernels[nccl]
        return {"compute": union(comp["ts"], comp["end"]), "communication": union(comm["ts"], comm["end"])}
    ops = events[events["cat"] == "cpu_op"]
    backend_comm = ops[ops["name"].str.startswith(COMM_PREFIXES)]
    main = ops[ops["tid"] == main_tid]
    c10d = main[main["name"].str.startswith(C10D_PREFIX)]
    c10d_s, c10d_e = union(c10d["ts"], c10d["end"])
    # main-thread ops that are not collectives and do not start inside one
    work = main[~main["name"].str.startswith(C10D_PREFIX) & ~covered(main["ts"].to_numpy(), c10d_s, c10d_e)]
    comm_s = np.concatenate([backend_comm["ts"].to_numpy(), c10d["ts"].to_numpy()])
    comm_e = np.concatenate([backend_comm["end"].to_numpy(), c10d["end"].to_numpy()])
    return {"compute": union(work["ts"], work["end"]), "communication": union(comm_s, comm_e)}


def step_windows(events: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The step ranges (``record_function`` names ``<prefix>#<k>``), renumbered 0, 1, ... in order of k: step,
    tid, ts, end."""
    marks = events[events["name"].str.startswith(prefix + "#") & (events["cat"] == "user_annotation")]
    marks = marks.assign(number=marks["name"].str.slice(len(prefix) + 1).astype(int)).sort_values("number")
    return pd.DataFrame({"step": range(len(marks)), "tid": marks["tid"].to_numpy(),  # 0, 1, ... in trace order
                         "ts": marks["ts"].to_numpy(), "end": marks["end"].to_numpy()})


def split_steps(events: pd.DataFrame, step_prefix: str) -> pd.DataFrame:
    """One row per step of one rank: the columns of :data:`SPLIT_COLUMNS`."""
    windows = step_windows(events, step_prefix)
    if windows.empty:
        return pd.DataFrame(columns=["step", *SPLIT_COLUMNS])
    sets = timeline_sets(events, main_tid=str(windows["tid"].iloc[0]))
    rows = [{"step": int(w.step), **split_window(w.ts, w.end, sets["compute"], sets["communication"])}
            for w in windows.itertuples()]
    return pd.DataFrame(rows)


def _numel(dims: Any) -> int:
    return int(math.prod(dims)) if isinstance(dims, list) and all(isinstance(d, int) for d in dims) else 0


def collective_bytes(events: pd.DataFrame, step_prefix: str) -> pd.DataFrame:
    """One row per collective call in a step window: step, collective, op, dtype, input/output elements and
    bytes, from the ``c10d::`` operators' recorded arguments (output first, input second)."""
    windows = step_windows(events, step_prefix)
    calls = events[events["name"].isin(list(COLLECTIVES)) & (events["cat"] == "cpu_op")]
    if windows.empty or calls.empty:
        return pd.DataFrame(columns=["step", "collective", "op", "dtype", "output_numel", "input_numel",
                                     "output_bytes", "input_bytes", "ts"])
    starts, ends = windows["ts"].to_numpy(), windows["end"].to_numpy()
    idx = np.searchsorted(starts, calls["ts"].to_numpy(), side="right") - 1
    inside = (idx >= 0) & (calls["ts"].to_numpy() < ends[np.clip(idx, 0, None)])
    rows = []
    for (_, call), i, ok in zip(calls.iterrows(), idx, inside, strict=True):
        if not ok:
            continue
        dims, types = call["input_dims"] or [], call["input_types"] or []
        dtype = str(types[0]) if types else ""
        elt = ELEMENT_BYTES.get(dtype, 0)
        out_n, in_n = _numel(dims[0] if dims else None), _numel(dims[1] if len(dims) > 1 else None)
        if call["name"] in ("c10d::allreduce_", "c10d::broadcast_"):
            in_n = out_n  # in-place: one tensor
        rows.append({"step": int(windows["step"].iloc[i]), "collective": COLLECTIVES[call["name"]],
                     "op": call["name"], "dtype": dtype, "output_numel": out_n, "input_numel": in_n,
                     "output_bytes": out_n * elt, "input_bytes": in_n * elt, "ts": float(call["ts"])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Recording one rank
# ----------------------------------------------------------------------------------------------------
def profile_steps(step, steps: int, trace_path: str | Path, *, device_type: str = "cpu") -> list:
    """Run ``step()`` once to warm the profiler up, then ``steps`` times recorded, under ``torch.profiler``'s own
    step schedule (CPU ops with shapes; CUDA kernels on GPUs): each recorded step is a ``ProfilerStep#<k>``
    range - the iteration marker Holistic Trace Analysis and TensorBoard look for - synchronized on CUDA so the
    range covers the step's kernels. Writes one Chrome trace (with its ``distributedInfo`` when a process group
    is up); returns the recorded steps' results."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    results = []
    plan = schedule(wait=0, warmup=1, active=steps, repeat=1)
    from genscope.instrument.native_stderr import native_status_lines_dropped

    # the schedule starts and stops Kineto inside prof.step(): its USDT status lines are dropped over the whole
    # loop (anything else written to stderr meanwhile is written back, in order, when the loop ends or fails)
    with native_status_lines_dropped(), profile(
            activities=activities, record_shapes=True, schedule=plan,
            on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path))) as prof:
        for i in range(steps + 1):
            result = step()
            if device_type == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                results.append(result)
            prof.step()
    return results
