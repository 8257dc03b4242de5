"""Analytical characterization (paper Sections II-C, IV-B): FLOPs of a whole workload run.

``count_workload(name, preset, ...)`` builds the workload (on the meta device by default: paper scale in
seconds, no weights) and runs its pipeline's ``generate`` under :class:`genscope.instrument.flops.FlopCounter`:
classifier-free guidance (the doubled batch), the number of denoising steps or decoded tokens, the text
encoders, super-resolution stages and decoders are all in the count because the run itself does them.

Tables (tidy, units in names; FLOPs = 2 x MACs; softmax apart, see ``genscope.instrument.flops``):

* ``summary`` (one row): totals, per image (divided by the batch), attention and softmax FLOPs, bytes moved,
  parameters and parameter bytes, both arithmetic intensities (FLOPs per parameter byte, as the paper
  defines it; FLOPs per byte moved), how long the count took, steps replicated (``memoized_calls``) and
  extrapolated (``predicted_calls``), block calls replayed (``replayed_blocks``,
  :mod:`genscope.instrument.block_replay`), meta value reads;
* ``phases``: per phase (``text_encoder``, ``denoise``, ``decoder``, ...): entries (steps), flops, macs,
  softmax_flops, bytes, flops per entry (= per step), flops per image, share;
* ``classes``: per operator class; ``phase_classes``: per phase and class;
* ``modules``: per module subtree at ``depth`` path components (``denoiser.down_blocks.0.attentions``);
* ``ops``: per ATen op; ``steps``: per phase entry (phase, step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from genscope.errors import UserError
from genscope.instrument.flops import (
    ATTENTION_NOTE,
    BYTES_NOTE,
    NO_PHASE,
    SUM_COLUMNS,
    FlopCounter,
    SeriesBroken,
    by_class,
    by_module,
    by_op,
)
from genscope.models.runtime import dtype_name, parse_device, parse_dtype
from genscope.workloads import registry
from genscope.workloads.base import RunSettings
from genscope.workloads.phases import record_phases

STUDY = "flops"
DEFAULT_DEPTH = 4
DEVICES = ("meta", "cpu", "cuda")


@dataclass
class FlopsResult:
    workload: str
    preset: str
    device: str
    dtype: str
    settings: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        return self.tables["summary"].iloc[0].to_dict()


def _settings(preset: str, *, steps=None, image_size=None, frames=None, decode_tokens=None, guidance_scale=None,
              batch_size: int = 1, attention: str = "flash") -> RunSettings:
    return RunSettings(preset=preset, steps=steps, image_size=image_size, frames=frames, decode_tokens=decode_tokens,
                       guidance_scale=guidance_scale, batch_size=batch_size, attention=attention)


def count_workload(name: str, preset: str = "paper", *, steps: int | None = None, image_size: int | None = None,
                   frames: int | None = None, decode_tokens: int | None = None,
                   guidance_scale: float | None = None, batch_size: int = 1, device: str = "meta",
                   dtype: str = "float32", attention: str = "flash", depth: int = DEFAULT_DEPTH,
                   memoize: bool = True) -> FlopsResult:
    """Count one full run of workload ``name``; see the module docstring for the tables.

    ``memoize``: on the meta device, run a few steps of each loop and add the rest from them (identical steps
    replicated, autoregressive steps extrapolated; exact, see :mod:`genscope.instrument.flop_steps`);
    ``False`` runs every step.
    """
    workload = registry.get(name)
    dev = parse_device(device)
    dt = parse_dtype(dtype)
    settings = _settings(preset, steps=steps, image_size=image_size, frames=frames, decode_tokens=decode_tokens,
                         guidance_scale=guidance_scale, batch_size=batch_size, attention=attention)
    if dev.type == "meta":
        # validate as a CPU float32 run (the ranges are the same), then move the request to the meta device
        request = replace(workload.request(replace(settings, device="cpu", dtype="float32")), device=dev, dtype=dt)
    else:
        request = workload.request(replace(settings, device=str(dev), dtype=dtype_name(dt)))
    start = time.perf_counter()
    config = workload.config(preset)
    on_meta = request.device.type == "meta"
    pipeline = (workload.shapes_pipeline(config, request.dtype) if on_meta
                else workload.build(config, request.device, request.dtype))
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    predict = memoize
    try:
        with record_phases(request.device) as times, FlopCounter(pipeline.components, memoize=memoize,
                                                                 predict=predict) as counter:
            pipeline(request)
    except SeriesBroken:  # a decode loop left its affine model: count it call by call
        predict = False
        with record_phases(request.device) as times, FlopCounter(pipeline.components, memoize=memoize,
                                                                 predict=False) as counter:
            pipeline(request)
    count_s = time.perf_counter() - start
    rows = counter.table()
    total = int(rows["flops"].sum())
    if total != counter.get_total_flops():  # every counted FLOP is filed under exactly one row
        raise AssertionError(f"per-row FLOPs {total} != torch's Global count {counter.get_total_flops()}")
    params = sum(c.params for c in pipeline.components)
    param_bytes = params * torch.empty((), dtype=request.dtype).element_size()
    tables = flops_tables(rows, counter.step_table(), times.counts(), batch_size=request.batch_size,
                          depth=depth)
    attention_flops = int(rows.loc[rows["op_class"] == "Attention", "flops"].sum())
    bytes_moved = int(rows["bytes"].sum())
    summary = {
        "workload": name, "preset": preset, "device": str(request.device), "dtype": dtype_name(request.dtype),
        "attention": request.attention, "batch_size": request.batch_size, "steps": request.steps,
        "image_size": request.image_size, "frames": request.frames, "decode_tokens": request.decode_tokens,
        "guidance_scale": request.guidance_scale,
        "flops": total, "macs": total // 2, "flops_per_image": total / request.batch_size,
        "attention_flops": attention_flops, "softmax_flops": int(rows["softmax_flops"].sum()),
        "bytes": bytes_moved, "params": params, "param_bytes": param_bytes,
        "ai_flops_per_param_byte": total / request.batch_size / param_bytes if param_bytes else float("nan"),
        "ai_flops_per_byte_moved": total / bytes_moved if bytes_moved else float("nan"),
        "build_s": build_s, "count_s": count_s, "memoized_calls": counter.memo_replays, "predicted_calls": counter.predicted_calls,
        "replayed_blocks": counter.block_replay.replays if counter.block_replay is not None else 0,
        "meta_value_reads": counter.meta_value_reads, "depth": depth,
        # every setting at the preset's default: what taxonomy / roofline may reuse from the store
        "defaults": all(v is None for v in (steps, image_size, frames, decode_tokens, guidance_scale))
        and batch_size == 1 and attention == "flash",
    }
    tables = {"summary": pd.DataFrame([summary]), **tables}
    return FlopsResult(workload=name, preset=preset, device=str(request.device), dtype=dtype_name(request.dtype),
                       settings={k: v for k, v in request.as_dict().items() if k not in ("device", "dtype")},
                       tables=tables)


def flops_tables(rows: pd.DataFrame, steps: pd.DataFrame, phase_calls: dict[str, int], *, batch_size: int = 1,
                 depth: int = DEFAULT_DEPTH) -> dict[str, pd.DataFrame]:
    """The tidy tables from the counter's rows (see the module docstring)."""
    total = int(rows["flops"].sum())

    def share(df: pd.DataFrame) -> pd.DataFrame:
        df["share"] = df["flops"] / total if total else 0.0
        return df

    phases = rows.groupby("phase", as_index=False, sort=False)[SUM_COLUMNS].sum()
    phases["entries"] = phases["phase"].map(lambda p: int(phase_calls.get(p, 0 if p == NO_PHASE else 1)))
    phases["flops_per_entry"] = phases["flops"] / phases["entries"].clip(lower=1)
    phases["flops_per_image"] = phases["flops"] / batch_size
    phases = share(phases)[["phase", "entries"] + SUM_COLUMNS + ["flops_per_entry", "flops_per_image", "share"]]
    classes = share(by_class(rows))
    classes["flops_per_image"] = classes["flops"] / batch_size
    return {
        "phases": phases,
        "classes": classes,
        "phase_classes": by_class(rows, per_phase=True),
        "modules": share(by_module(rows, depth)),
        "ops": share(by_op(rows)),
        "steps": steps,
    }


NOTES = (ATTENTION_NOTE, BYTES_NOTE, "FLOPs = 2 x MACs; per image = total / batch size; per entry = per step "
         "for phases entered once per step (denoise, decode).")


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry): Settings -> tables
# ---------------------------------------------------------------------------------------------------------
def _check_positive(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """One count of ``workload``; ``None`` = the preset's default. ``exact``: run every component call."""

    workload: str
    preset: str = "paper"
    steps: int | None = None
    image_size: int | None = None
    frames: int | None = None
    decode_tokens: int | None = None
    batch_size: int = 1
    device: str = "meta"
    dtype: str = "float32"
    attention: str = "flash"
    depth: int = DEFAULT_DEPTH
    exact: bool = False
    allow_large: bool = False

    def __post_init__(self) -> None:
        registry.get(self.workload)  # unknown workload -> UserError listing the known ones
        if self.device.split(":")[0] not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; accepted: {', '.join(DEVICES)}")
        for what in ("steps", "image_size", "frames", "decode_tokens", "depth", "batch_size"):
            _check_positive(f"--{what.replace('_', '-')}", getattr(self, what))
        if self.device != "meta" and self.preset == "paper" and not self.allow_large:
            raise UserError("counting the paper preset on real tensors would build the full-size model; use "
                            "--device meta (the default), a smaller preset, or --allow-large")


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    """The count's tables (see the module docstring)."""
    s = settings
    return count_workload(s.workload, s.preset, steps=s.steps, image_size=s.image_size, frames=s.frames,
                          decode_tokens=s.decode_tokens, batch_size=s.batch_size, device=s.device, dtype=s.dtype,
                          attention=s.attention, depth=s.depth, memoize=not s.exact).tables


def result_from_tables(tables: dict[str, pd.DataFrame]) -> FlopsResult:
    """A :class:`FlopsResult` around stored or fresh tables (its fields read from the ``summary`` row)."""
    s = tables["summary"].iloc[0]
    settings = {k: (None if pd.isna(s[k]) else s[k]) for k in ("steps", "image_size", "frames", "decode_tokens",
                                                                "guidance_scale", "batch_size", "attention")}
    return FlopsResult(workload=str(s["workload"]), preset=str(s["preset"]), device=str(s["device"]),
                       dtype=str(s["dtype"]), settings=settings, tables=dict(tables))


def stored_count(store, workload: str, preset: str, dtype: str | None = None) -> FlopsResult | None:
    """The newest stored default-settings meta count of ``workload`` at ``preset`` (``dtype`` None: any), or None.

    ``store``: a :class:`genscope.results.store.ResultsStore` (anything with its ``latest``); None -> None.
    """
    if store is None:
        return None
    record = store.latest(STUDY, workload=workload, preset=preset, device="meta", dtype=dtype)
    if record is None or not {"phases", "summary"} <= set(record.tables):
        return None
    if not bool(record.tables["summary"].iloc[0].get("defaults", False)):
        return None
    return FlopsResult(workload=workload, preset=preset, device=record.device, dtype=record.dtype,
                       settings=record.settings, tables=record.tables)
