"""The paper's Figure 5: the suite on a roofline (default the A100-80GB, as in the paper), plus this machine.

Two arithmetic intensities per workload, both from one FLOP count of a full run
(:func:`genscope.studies.flops.count_workload`, meta device by default):

* ``params`` - the paper's definition (Section II-C: "arithmetic intensity is calculated as ratio of FLOPs to
  required model capacity"): FLOPs per image / parameter bytes in the chosen dtype. Diffusion models reuse
  the same parameters over every denoising step, hence their high intensity.
* ``moved`` - FLOPs / bytes moved, the traffic of eager unfused execution (every ATen op reads its inputs
  and writes its outputs; weights counted at every read; see :mod:`genscope.instrument.flops`): the
  intensity the hardware sees when nothing stays in cache between ops.

Each point is placed on each device roofline: attainable FLOP/s = min(peak[dtype], intensity x bandwidth);
``bound`` says which roof it sits under (intensity below the ridge point peak/bandwidth: memory). Devices:
the published spec chosen (:mod:`genscope.hardware.specs`) and, unless disabled, this machine's measured
ceilings (:mod:`genscope.hardware.measure`, cached per machine). Per-phase points (``moved`` only) show
e.g. an LLM's prefill vs its decode.

Tables: ``points`` (workload, scope, definition, intensity, device, ...), ``devices`` (the ceilings with
their sources), ``workloads`` (flops per image, parameter bytes, bytes moved per workload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from genscope.hardware.specs import DEFAULT_SPEC, DeviceSpec, get_spec
from genscope.studies.flops import FlopsResult, count_workload

STUDY = "roofline"
DEFINITIONS = {
    "params": "FLOPs per image / parameter bytes (the paper's definition)",
    "moved": "FLOPs / bytes moved (eager, unfused: every op reads its inputs and writes its outputs)",
}


@dataclass
class Ceiling:
    """One roofline: a name, peak FLOP/s for the dtype, bandwidth, and where the numbers come from."""

    name: str
    peak_flops_per_s: float
    bandwidth_bytes_per_s: float
    source: str
    kind: str = "spec"  # "spec" (published) or "measured"

    @property
    def ridge_flops_per_byte(self) -> float:
        return self.peak_flops_per_s / self.bandwidth_bytes_per_s

    def attainable(self, intensity: float) -> float:
        """min(peak, intensity x bandwidth)."""
        return min(self.peak_flops_per_s, intensity * self.bandwidth_bytes_per_s)

    def bound(self, intensity: float) -> str:
        return "compute" if intensity >= self.ridge_flops_per_byte else "memory"


def spec_ceiling(spec: DeviceSpec, dtype: str) -> Ceiling:
    key = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "tfloat32": "tfloat32"}.get(
        dtype, dtype)
    return Ceiling(name=spec.name, peak_flops_per_s=spec.peak(dtype), bandwidth_bytes_per_s=spec.bandwidth_bytes_per_s,
                   source=f"{spec.sources.get(key, '')}; {spec.sources.get('bandwidth', '')}")


def measured_ceiling(dtype: str, device: str = "cpu", refresh: bool = False) -> Ceiling:
    from genscope.hardware.measure import measure_ceilings

    c = measure_ceilings(device, refresh=refresh)
    used = dtype if dtype in c.peak_flops_per_s else {"float16": "bfloat16", "tfloat32": "float32"}.get(dtype, dtype)
    note = "" if used == dtype else f" ({used} measured; used for {dtype})"
    return Ceiling(name=f"this machine ({c.device_name}, {c.threads} threads)", peak_flops_per_s=c.peak(dtype),
                   bandwidth_bytes_per_s=c.bandwidth_bytes_per_s, kind="measured",
                   source=f"measured {c.measured_at}: matmul n={c.details.get(f'matmul_{used}', {}).get('n')}"
                          f"{note}, copy of {c.details.get('copy', {}).get('bytes', 0) / 2**20:.0f} MiB")


@dataclass
class RooflineResult:
    preset: str
    dtype: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def workload_row(result: FlopsResult) -> dict:
    s = result.summary
    return {"workload": result.workload, "preset": result.preset, "dtype": result.dtype,
            "flops_per_image": float(s["flops_per_image"]), "flops": int(s["flops"]), "bytes": int(s["bytes"]),
            "params": int(s["params"]), "param_bytes": int(s["param_bytes"]),
            "ai_params_flops_per_byte": float(s["ai_flops_per_param_byte"]),
            "ai_moved_flops_per_byte": float(s["ai_flops_per_byte_moved"])}


def roofline_points(results: list[FlopsResult], ceilings: list[Ceiling]) -> pd.DataFrame:
    """One row per (workload, scope, definition, device)."""
    rows = []
    for result in results:
        w = workload_row(result)
        points = [("total", "params", w["ai_params_flops_per_byte"], w["flops_per_image"]),
                  ("total", "moved", w["ai_moved_flops_per_byte"], w["flops_per_image"])]
        phases = result.tables["phases"]
        for _, ph in phases.iterrows():
            if ph["flops"] > 0 and ph["bytes"] > 0:
                points.append((str(ph["phase"]), "moved", ph["flops"] / ph["bytes"], float(ph["flops_per_image"])))
        for scope, definition, intensity, flops in points:
            for c in ceilings:
                attainable = c.attainable(intensity)
                rows.append({"workload": result.workload, "scope": scope, "definition": definition,
                             "intensity_flops_per_byte": float(intensity), "flops_per_image": flops,
                             "device": c.name, "device_kind": c.kind, "peak_flops_per_s": c.peak_flops_per_s,
                             "bandwidth_bytes_per_s": c.bandwidth_bytes_per_s,
                             "ridge_flops_per_byte": c.ridge_flops_per_byte, "attainable_flops_per_s": attainable,
                             "bound": c.bound(intensity), "time_lower_bound_s": flops / attainable})
    return pd.DataFrame(rows)


def devices_table(ceilings: list[Ceiling], dtype: str) -> pd.DataFrame:
    return pd.DataFrame([{"device": c.name, "kind": c.kind, "dtype": dtype, "peak_flops_per_s": c.peak_flops_per_s,
                          "bandwidth_bytes_per_s": c.bandwidth_bytes_per_s,
                          "ridge_flops_per_byte": c.ridge_flops_per_byte, "source": c.source} for c in ceilings])


def run_roofline(workloads: list[str], *, preset: str = "paper", spec: str = DEFAULT_SPEC, dtype: str = "float16",
                 measured: bool = True, device: str = "meta", flops_results: dict[str, FlopsResult] | None = None,
                 progress=None) -> RooflineResult:
    """Count (or reuse ``flops_results``) each workload and place it on the rooflines."""
    ceilings = [spec_ceiling(get_spec(spec), dtype)]
    if measured:
        ceilings.append(measured_ceiling(dtype))
    results = []
    for name in workloads:
        result = (flops_results or {}).get(name)
        if result is None:
            result = count_workload(name, preset, device=device, dtype=dtype)
        results.append(result)
        if progress is not None:
            progress(result)
    return RooflineResult(preset=preset, dtype=dtype, tables={
        "points": roofline_points(results, ceilings),
        "devices": devices_table(ceilings, dtype),
        "workloads": pd.DataFrame([workload_row(r) for r in results]),
    })


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    workloads: tuple[str, ...]
    preset: str = "paper"
    device_spec: str = DEFAULT_SPEC
    dtype: str = "float16"
    measured: bool = True  # also this machine's measured ceilings

    def __post_init__(self) -> None:
        from genscope.errors import UserError
        from genscope.models.runtime import dtype_name, parse_dtype
        from genscope.workloads import registry

        if not self.workloads:
            raise UserError("roofline: give at least one workload")
        for name in self.workloads:
            registry.get(name)
        get_spec(self.device_spec).peak(dtype_name(parse_dtype(self.dtype)))  # unknown spec or dtype: UserError


def stored_inputs(settings: Settings, store) -> dict:
    """Stored meta counts of the workloads in the study's dtype (bytes depend on it)."""
    from genscope.studies.flops import stored_count

    counts = {n: stored_count(store, n, settings.preset, settings.dtype) for n in settings.workloads}
    return {"counts": {n: c for n, c in counts.items() if c is not None}}


def run(settings: Settings, *, counts: dict[str, FlopsResult] | None = None) -> dict[str, pd.DataFrame]:
    """The roofline tables; ``counts`` (name -> FlopsResult in ``settings.dtype``) reused, the rest counted."""
    return run_roofline(list(settings.workloads), preset=settings.preset, spec=get_spec(settings.device_spec).name,
                        dtype=settings.dtype, measured=settings.measured, flops_results=counts).tables
