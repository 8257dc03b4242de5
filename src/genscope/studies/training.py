"""FSDP training, measured: per-rank traces -> compute / communication / exposed communication per step (Figure 6).

Input: a folder written by ``genscope train`` (the ranks run through torch's own launcher there): one Chrome
trace per rank (``rank<r>.json``, with its ``distributedInfo``) and one ``rank<r>.meta.json`` (losses, wall
time, threads, device). This study only reads them - no processes, no printing.

Tables:

* ``steps``: per rank and step, the split of :func:`genscope.instrument.distributed.split_steps` (window =
  compute + exposed communication + idle; communication = overlapped + exposed) and the loss;
* ``summary``: one row - the mean over ranks and steps, the shares, the bytes per step, the world size;
* ``collectives``: per collective kind, calls and bytes per step as measured (rank 0's first step; every
  rank and step is checked to be the same) next to the analytical model's prediction
  (:mod:`genscope.studies.training_model`) - equal when the model is right;
* ``validation``: predicted vs measured bytes (exact) and compute time (FLOPs / the measured matmul ceiling of
  this machine vs the measured compute time: the error is stated, not hidden).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from genscope.errors import UserError
from genscope.instrument.distributed import SPLIT_COLUMNS, collective_bytes, load_trace, split_steps
from genscope.models.base import dtype_bytes
from genscope.models.runtime import parse_dtype
from genscope.studies.training_model import collectives_per_step, fsdp_units, training_flops
from genscope.workloads.training import check_trainable

STEP_PREFIX = "ProfilerStep"  # the step ranges torch.profiler's schedule records (genscope train uses it)


@dataclass(frozen=True)
class Settings:
    trace_dir: str
    model: str
    preset: str = "small"
    world_size: int = 2
    precision: str = "float32"
    batch_size: int = 1
    predict_compute: bool = True  # compare compute time with FLOPs / this machine's measured ceiling
    ranks: tuple[int, ...] = ()  # the ranks to read (multi-node: this node's); () = every rank in the folder

    def __post_init__(self):
        check_trainable(self.model)
        if not Path(self.trace_dir).is_dir():
            raise UserError(f"trace folder {self.trace_dir!r} does not exist")
        parse_dtype(self.precision)


def rank_files(trace_dir: Path) -> list[tuple[int, Path, Path]]:
    """(rank, trace, meta) for every rank that wrote both, sorted by rank."""
    out = []
    for meta in sorted(trace_dir.glob("rank*.meta.json")):
        rank = int(meta.name[len("rank"):-len(".meta.json")])
        trace = trace_dir / f"rank{rank}.json"
        if trace.is_file():
            out.append((rank, trace, meta))
    if not out:
        raise UserError(f"no rank traces in {str(trace_dir)!r} (expected rank<r>.json and rank<r>.meta.json)")
    return sorted(out)


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    trace_dir = Path(settings.trace_dir)
    step_rows, byte_frames, metas = [], [], {}
    for rank, trace, meta_path in rank_files(trace_dir):
        if settings.ranks and rank not in settings.ranks:
            continue
        meta = json.loads(meta_path.read_text())
        metas[rank] = meta
        events, info = load_trace(trace)
        split = split_steps(events, STEP_PREFIX)
        losses = meta.get("losses", [])
        for row in split.to_dict("records"):
            step = int(row["step"])
            step_rows.append({"rank": rank, **row, "loss": losses[step] if step < len(losses) else float("nan"),
                              "backend": info.get("backend", meta.get("backend", ""))})
        coll = collective_bytes(events, STEP_PREFIX)
        coll.insert(0, "rank", rank)
        byte_frames.append(coll)
        del events
    steps = pd.DataFrame(step_rows)
    calls = pd.concat(byte_frames, ignore_index=True)
    first = metas[min(metas)]

    # measured bytes per step and collective; every (rank, step) must agree
    per_step = calls.groupby(["rank", "step", "collective"], as_index=False).agg(
        calls=("op", "size"), input_bytes=("input_bytes", "sum"), output_bytes=("output_bytes", "sum"))
    spread = per_step.groupby("collective")[["calls", "input_bytes", "output_bytes"]].nunique()
    measured = per_step[(per_step["rank"] == per_step["rank"].min()) & (per_step["step"] == per_step["step"].min())]

    # the analytical model at this scale
    model, flops = training_flops(settings.model, settings.preset)
    units = fsdp_units(model, settings.world_size)
    dtype = parse_dtype(settings.precision)
    pred = collectives_per_step(units, settings.world_size, dtype_bytes(dtype),
                                dtype_bytes(torch.float32) if dtype != torch.float32 else dtype_bytes(dtype))
    pred = pred.assign(input_bytes=pred["input_bytes"] * pred["calls"],
                       output_bytes=pred["output_bytes"] * pred["calls"]).groupby("collective", as_index=False)[
        ["calls", "input_bytes", "output_bytes"]].sum()
    collectives = measured.drop(columns=["rank", "step"]).merge(pred, on="collective", how="outer",
                                                                suffixes=("_measured", "_predicted"))
    measured_cols = ["calls_measured", "input_bytes_measured", "output_bytes_measured"]
    collectives[measured_cols] = collectives[measured_cols].fillna(0).astype("int64")  # none seen: 0 calls
    collectives["same_on_all_ranks_and_steps"] = collectives["collective"].map(
        lambda c: bool(c not in spread.index or (spread.loc[c] == 1).all()))
    collectives["bytes_match"] = ((collectives["input_bytes_measured"] == collectives["input_bytes_predicted"])
                                  & (collectives["output_bytes_measured"] == collectives["output_bytes_predicted"]))

    means = steps[list(SPLIT_COLUMNS)].mean()
    summary = pd.DataFrame([{
        "model": settings.model, "preset": settings.preset, "world_size": settings.world_size,
        "ranks_traced": len(metas), "steps": int(steps["step"].nunique()), "backend": first.get("backend", ""),
        "device": first.get("device", ""), "precision": settings.precision, "threads_per_rank": first.get("threads"),
        "batch_per_rank": settings.batch_size, **{c: float(means[c]) for c in SPLIT_COLUMNS},
        "comm_share": float(means["communication_ms"] / (means["compute_ms"] + means["communication_ms"]))
        if means["compute_ms"] + means["communication_ms"] > 0 else 0.0,
        "exposed_share": float(means["exposed_comm_ms"] / means["window_ms"]) if means["window_ms"] else 0.0,
        "all_gather_bytes_per_step": float(measured.loc[measured["collective"] == "all_gather", "output_bytes"].sum()),
        "reduce_scatter_bytes_per_step": float(
            measured.loc[measured["collective"] == "reduce_scatter", "input_bytes"].sum()),
        "loss_finite": bool(steps["loss"].notna().all() and (steps["loss"].abs() < float("inf")).all()),
        "flops_per_step_per_rank": settings.batch_size * (flops["forward"] + flops["backward"]),
    }])

    validation = [{"quantity": f"{r.collective} bytes per step", "measured": float(r.output_bytes_measured),
                   "predicted": float(r.output_bytes_predicted),
                   "error_pct": 100 * (r.output_bytes_predicted / r.output_bytes_measured - 1)
                   if r.output_bytes_measured else (0.0 if r.output_bytes_predicted == 0 else float("nan"))}
                  for r in collectives.itertuples()]
    if settings.predict_compute and first.get("device", "cpu") == "cpu":
        from genscope.hardware.measure import measure_ceilings

        threads = torch.get_num_threads()
        torch.set_num_threads(int(first.get("threads") or threads))  # the ceiling at the ranks' thread count
        try:
            rate = measure_ceilings("cpu", dtypes=(settings.precision,)).peak(settings.precision)
        finally:
            torch.set_num_threads(threads)
        predicted_ms = summary["flops_per_step_per_rank"].iloc[0] / rate * 1e3
        validation.append({"quantity": "compute ms per step (FLOPs / measured matmul ceiling)",
                           "measured": float(means["compute_ms"]), "predicted": predicted_ms,
                           "error_pct": 100 * (predicted_ms / float(means["compute_ms"]) - 1)})
    return {"summary": summary, "steps": steps, "collectives": collectives, "validation": pd.DataFrame(validation)}
