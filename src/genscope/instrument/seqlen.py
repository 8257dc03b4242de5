"""Sequence-length tracer: every attention call of a run, with its phase, shapes and similarity-matrix size.

A call hook on the attention entry point (:func:`genscope.models.layers.attention.register_call_hook`) sees
each call before it runs; the phase and step come from :func:`genscope.workloads.phases.current_phase`.
One row per call (:data:`COLUMNS`):

* ``call`` (0-based order), ``phase``, ``step`` (``<NA>`` outside stepped phases), ``component`` (first part
  of the module path: ``denoiser``, ``text_encoder``, ...), ``path``, ``kind`` (self, cross, temporal, causal);
* ``batch``, ``heads``, ``query_len``, ``key_len``, ``context_len`` (text tokens inside the keys of a joint
  text+image attention, else 0), ``head_dim``, ``dtype``, ``backend``;
* ``seq_len``: the call's sequence length as the paper's Figure 8 plots it: the query length (the image
  tokens of a diffusion model, the tokens processed at once), except for causal calls, where it is the key
  length (the tokens in context: it grows by one per decode step while the query length stays 1);
* ``similarity_elements`` = batch * heads * Lq * Lk and ``similarity_bytes`` (in the call's dtype): the
  matrix QK^T that baseline attention materializes; ``macs`` and ``flops`` (= 2 x MACs) of the two matmuls.
* ``media_len``: image/video tokens among the queries (a joint text+image call's text tokens are
  ``query_len - media_len``; ``context_len`` are those among the keys); ``kernel``: the kernel that ran.

Runs on the meta device too (shapes only: a paper-scale trace costs no memory). Denoising steps all have the
same shapes, so :func:`trace_workload` on the meta device runs two steps of every denoising loop
(:func:`genscope.workloads.phases.limit_steps`), checks that they agree call for call, and replicates the
second for the remaining steps; autoregressive decode steps grow by one token each, so it runs three of them
and extrapolates the rest on their line (checked: :func:`replicate_steps`); ``all_steps=True`` runs every
step instead.

Why hand-written: torch.profiler records op shapes but not which attention call (kind, module, phase) they
belong to, and does not run on the meta device; the entry point's call hook sees exactly that.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from genscope.errors import UserError
from genscope.instrument.meta_cache import MetaOpCache
from genscope.models.layers.attention import AttentionCall, register_call_hook
from genscope.models.runtime import dtype_name, parse_device
from genscope.workloads.phases import current_phase

COLUMNS: tuple[str, ...] = (
    "call", "phase", "step", "component", "path", "kind", "batch", "heads", "query_len", "key_len",
    "context_len", "head_dim", "seq_len", "dtype", "backend", "similarity_elements", "similarity_bytes", "macs",
    "flops", "media_len", "kernel",
)
# what makes two calls the same computation (used to check that replicated steps are identical)
SIGNATURE: tuple[str, ...] = ("path", "kind", "batch", "heads", "query_len", "key_len", "context_len", "head_dim",
                              "dtype")
NO_PHASE = "(outside phases)"
TRACED_STEPS = 2  # steps per denoising loop actually run in a shape-only trace
GROWING_TRACED_STEPS = 3  # steps per autoregressive decode loop run (the rest extrapolated on their line)
# what may grow step by step in a decode loop over a KV cache (every other column must repeat exactly)
LINEAR_COLUMNS = ("key_len", "seq_len", "context_len", "similarity_elements", "similarity_bytes", "macs", "flops",
                  "query_len", "media_len")


def sequence_length(kind: str, query_len: int, key_len: int) -> int:
    """Figure 8's sequence length: the query length, or the key length (tokens in context) for causal calls."""
    return key_len if kind == "causal" else query_len


def call_row(call: AttentionCall) -> dict[str, Any]:
    """One traced call as a row (without ``call`` index)."""
    info = current_phase()
    element_size = call.dtype.itemsize
    path = call.path
    return {
        "phase": info.name if info is not None else NO_PHASE,
        "step": info.step if info is not None else None,
        "component": path.split(".", 1)[0],
        "path": path,
        "kind": call.kind,
        "batch": call.batch,
        "heads": call.heads,
        "query_len": call.query_len,
        "key_len": call.key_len,
        "context_len": call.context_len,
        "head_dim": call.head_dim,
        "seq_len": sequence_length(call.kind, call.query_len, call.key_len),
        "dtype": dtype_name(call.dtype),
        "backend": call.backend,
        "similarity_elements": call.similarity_elements,
        "similarity_bytes": call.similarity_elements * element_size,
        "macs": call.macs,
        "flops": call.flops,
        "media_len": call.media_len,  # image/video tokens among the queries (text ones: query_len - media_len)
        "kernel": call.kernel,  # the kernel the backend ran (flash, efficient, math, materialized, meta, ...)
    }


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the trace DataFrame (``call`` renumbered 0..n-1, ``step`` as nullable integers)."""
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "call"])
    df.insert(0, "call", range(len(df)))
    df["step"] = df["step"].astype("Int64")
    for col in ("batch", "heads", "query_len", "key_len", "context_len", "head_dim", "seq_len",
                "similarity_elements", "similarity_bytes", "macs", "flops", "media_len"):
        df[col] = df[col].astype("int64")
    return df


class SequenceTracer:
    """Record every attention call while active::

        with SequenceTracer() as tracer:
            pipeline(request)
        df = tracer.frame()
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._handle = None

    def _record(self, call: AttentionCall) -> None:
        self.rows.append(call_row(call))

    def __enter__(self) -> SequenceTracer:
        self._handle = register_call_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows)


# ----------------------------------------------------------------------------------------------------
# Whole workloads
# ----------------------------------------------------------------------------------------------------
@dataclass
class Trace:
    """A traced run: the calls, the validated request, and how the trace was obtained."""

    calls: pd.DataFrame
    workload: str
    preset: str
    request: Any  # genscope.workloads.base.Request (device may be meta)
    config: Any  # the workload's ModelConfig
    wall_s: float
    replicated: list[dict[str, Any]] = field(default_factory=list)  # loops whose steps were replicated

    def period(self, phase: str | None = None) -> pd.DataFrame:
        return fundamental_period(self.calls, phase)


def resolve_request(workload, settings):
    """Validate ``settings`` for ``workload``; a meta-device request is validated as on the CPU, then moved."""
    device = parse_device(settings.device)
    if device.type != "meta":
        return workload.request(settings)
    return replace(workload.request(replace(settings, device="cpu")), device=device)


def _loop_rows(rows: list[dict[str, Any]], start: int, end: int, phase_name: str) -> list[int]:
    return [i for i in range(start, end) if rows[i]["phase"] == phase_name and rows[i]["step"] is not None]


def _signature(row: dict[str, Any]) -> tuple:
    return tuple(row[c] for c in SIGNATURE)


def replicate_steps(rows: list[dict[str, Any]], loops: list[tuple[str, int, int, int, int]]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Expand loops that ran fewer steps than they have.

    loops: (phase name, steps the loop has, steps run, first row index after the previous loop, row count at the
    loop's end). A loop of identical steps (the last two run equal call for call) gets the last step copied for
    the steps not run. A growing loop (autoregressive decode over a KV cache: the key length grows by one token
    per step) ran three steps: each call's :data:`LINEAR_COLUMNS` must lie on one line over them and every other
    column repeat, and the steps not run are extrapolated on those lines - exact for a KV cache, where the
    similarity matrix, MACs and FLOPs of a decode call grow linearly with the key length. Anything else raises
    (trace with ``all_steps=True``). Returns (rows, notes on what was replicated or extrapolated).
    """
    out: list[dict[str, Any]] = []
    notes = []
    cursor = 0
    for phase_name, steps, run, start, end in loops:
        out.extend(rows[cursor:start])
        idx = _loop_rows(rows, start, end, phase_name)
        out.extend(rows[start:end])
        cursor = end
        if run >= steps or run == 0:
            continue
        by_step: dict[int, list[dict[str, Any]]] = {}
        for i in idx:
            by_step.setdefault(rows[i]["step"], []).append(rows[i])
        last = by_step.get(run - 1, [])
        before = by_step.get(run - 2, []) if run >= 2 else last
        if [_signature(r) for r in before] == [_signature(r) for r in last]:
            for step in range(run, steps):
                out.extend({**r, "step": step} for r in last)
            notes.append({"phase": phase_name, "steps": steps, "steps_run": run, "calls_per_step": len(last)})
            continue
        slopes = _linear_slopes(phase_name, [by_step.get(run - 3, []), before, last] if run >= 3 else [])
        for step in range(run, steps):
            ahead = step - (run - 1)
            out.extend({**r, "step": step, **{c: r[c] + ahead * d[c] for c in d}} for r, d in zip(last, slopes,
                                                                                                  strict=True))
        notes.append({"phase": phase_name, "steps": steps, "steps_run": run, "calls_per_step": len(last),
                      "extrapolated": True})
    out.extend(rows[cursor:])
    return out, notes


def _linear_slopes(phase_name: str, window: list[list[dict[str, Any]]]) -> list[dict[str, int]]:
    """Per call of the last step: column -> growth per step, when three steps lie on one line; else raise."""
    fixed = [c for c in COLUMNS if c not in LINEAR_COLUMNS and c not in ("call", "step")]
    if len(window) != 3 or not window[0] or len({len(w) for w in window}) != 1:
        raise RuntimeError(f"loop {phase_name!r}: its last steps differ in attention shapes and there are not three "
                           "steps of equal calls to extrapolate; trace with all_steps=True")
    slopes = []
    for a, b, c in zip(*window, strict=True):
        if any(a.get(k) != b.get(k) or b.get(k) != c.get(k) for k in fixed if k in a):
            raise RuntimeError(f"loop {phase_name!r}: steps differ in more than their lengths; trace with "
                               "all_steps=True")
        d = {k: c[k] - b[k] for k in LINEAR_COLUMNS if k in c}
        if any(b[k] - a[k] != d[k] for k in d):
            raise RuntimeError(f"loop {phase_name!r}: the attention shapes do not grow linearly over the last three "
                               "steps; trace with all_steps=True")
        slopes.append({k: v for k, v in d.items() if v})
    return slopes


def trace_pipeline(pipeline, request, *, all_steps: bool = False, replicate: bool | None = None
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Trace one run of a built pipeline (``request.device`` may be meta). Returns (calls, replicated loops).

    ``replicate``: run two steps of each denoising loop and replicate the second, and three of each
    autoregressive decode loop and extrapolate them (:func:`replicate_steps`) - default: on the meta device
    only; True also on real devices, when only shapes are wanted; ``all_steps=True`` never replicates.
    """
    from genscope.workloads.phases import limit_steps

    tracer = SequenceTracer()
    if replicate is None:
        replicate = request.device.type == "meta"
    if not replicate or all_steps:
        with tracer, MetaOpCache() if request.device.type == "meta" else contextlib.nullcontext():
            pipeline(request)
        return tracer.frame(), []
    loops: list[tuple[str, int, int, int, int]] = []
    marks = [0]

    def on_loop_end(phase_name: str, steps: int, run: int) -> None:
        loops.append((phase_name, steps, run, marks[-1], len(tracer.rows)))
        marks.append(len(tracer.rows))

    # on meta, each distinct op call's output metadata is computed once (genscope.instrument.meta_cache)
    op_cache = MetaOpCache() if request.device.type == "meta" else contextlib.nullcontext()
    with tracer, limit_steps(TRACED_STEPS, on_loop_end=on_loop_end, max_growing_steps=GROWING_TRACED_STEPS), \
            op_cache:
        pipeline(request)
    rows, notes = replicate_steps(tracer.rows, loops)
    return to_frame(rows), notes


def trace_workload(model: str, settings=None, *, all_steps: bool = False, replicate: bool | None = None,
                   **overrides: Any) -> Trace:
    """Build ``model`` (on ``settings.device``, default meta) and trace one run.

    ``overrides`` replace fields of :class:`~genscope.workloads.base.RunSettings` (``preset``, ``image_size``,
    ``steps``, ``dtype``, ...); ``replicate`` / ``all_steps``: see :func:`trace_pipeline`. Raises UserError on
    bad settings.
    """
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    settings = settings if settings is not None else RunSettings(device="meta")
    if overrides:
        unknown = set(overrides) - set(RunSettings.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown run setting(s) {', '.join(sorted(unknown))}")
        settings = replace(settings, **overrides)
    workload = registry.get(model)
    request = resolve_request(workload, settings)
    config = workload.config(request.preset)
    start = time.perf_counter()
    if request.device.type == "meta" and request.weights is None:  # shapes only: built once per process
        pipeline = workload.shapes_pipeline(config, request.dtype)
    else:
        pipeline = workload.build(config, request.device, request.dtype, request.weights)
    calls, notes = trace_pipeline(pipeline, request, all_steps=all_steps, replicate=replicate)
    return Trace(calls=calls, workload=workload.name, preset=request.preset, request=request, config=config,
                 wall_s=time.perf_counter() - start, replicated=notes)


# ----------------------------------------------------------------------------------------------------
# Views of a trace
# ----------------------------------------------------------------------------------------------------
def looped_phases(calls: pd.DataFrame) -> list[str]:
    """Phases that repeat (have steps), in the order they first appear."""
    stepped = calls[calls["step"].notna()]
    return list(dict.fromkeys(stepped["phase"]))


def kernels_by_kind(calls: pd.DataFrame) -> pd.DataFrame:
    """Calls per (kind, backend, kernel): which kernel actually ran for each kind of attention call."""
    return calls.groupby(["kind", "backend", "kernel"], as_index=False, sort=False).size().rename(
        columns={"size": "calls"})


def fundamental_period(calls: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """The minimum repeating pattern of a run's attention calls (the paper's Figure 8).

    Of the first looped phase (or ``phase``): if every step has the same calls (a denoising step, a parallel
    decoding step), the calls of its first step; otherwise (autoregressive decoding: the key length grows each
    step) the calls of all its steps. A ``position`` column numbers the calls from 0.
    """
    phases = looped_phases(calls)
    if phase is None:
        if not phases:
            raise UserError("this run has no repeated phase (no denoising or decoding steps)")
        phase = phases[0]
    elif phase not in phases:
        raise UserError(f"phase {phase!r} has no steps in this run; phases with steps: {', '.join(phases) or '-'}")
    loop = calls[(calls["phase"] == phase) & calls["step"].notna()]
    # each call's signature as a number, each step as the sequence of its calls' numbers: one period when
    # every step has the same sequence (vectorized: a 50-step paper-scale trace has tens of thousands of rows)
    codes = loop.groupby(list(SIGNATURE), sort=False, dropna=False).ngroup()
    per_step = codes.groupby(loop["step"].to_numpy(), sort=True).agg(tuple)
    period = loop[loop["step"] == per_step.index[0]] if per_step.nunique() == 1 else loop
    period = period.reset_index(drop=True)
    period.insert(0, "position", range(len(period)))
    return period
