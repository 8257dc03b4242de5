"""Hardware counters, guarded: ``perf stat`` on CPU (attached to this process around a block) and Nsight Compute
(``ncu``, in a child process) on CUDA. Missing tools or counters are a status ``(False, why)``, never an error.

Why by hand: no Python library reads CPU PMU counters or drives ``ncu``; both tools are run as documented
(``perf stat -x,`` CSV output; ``ncu --csv --metrics``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

# user-space counts (":u"): allowed at perf_event_paranoid 2 for one's own process
COUNTER_EVENTS_CPU = ("instructions:u", "cache-references:u", "cache-misses:u", "L1-dcache-loads:u",
                      "L1-dcache-load-misses:u", "LLC-loads:u", "LLC-load-misses:u")
NCU_METRICS = ("l1tex__t_sector_hit_rate.pct", "lts__t_sector_hit_rate.pct", "dram__bytes_read.sum",
               "dram__bytes_write.sum")


def _perf_values(text: str) -> dict[str, float | None]:
    """``perf stat -x,`` output -> event -> count (None where '<not supported>' / '<not counted>')."""
    values: dict[str, float | None] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        raw, event = parts[0].strip(), parts[2].strip().removesuffix(":u")
        if not event:
            continue
        try:
            values[event] = float(raw)
        except ValueError:
            values[event] = None
    return values


def perf_status() -> tuple[bool, str]:
    """(available, reason): ``perf stat -e cache-misses true`` must run and count."""
    perf = shutil.which("perf")
    if perf is None:
        return False, "perf is not installed"
    try:
        proc = subprocess.run([perf, "stat", "-x,", "-e", "cache-misses:u,instructions:u", "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"perf did not run ({exc})"
    if proc.returncode != 0:
        return False, f"perf stat failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    values = _perf_values(proc.stderr)
    if not values or any(v is None for v in values.values()):
        return False, ("perf stat reports the hardware events as <not supported> (no CPU PMU exposed to this "
                       "machine, e.g. a VM)")
    return True, "perf stat"


def ncu_status(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "Nsight Compute needs a CUDA device"
    if shutil.which("ncu") is None:
        return False, "ncu (Nsight Compute) is not installed"
    return True, "ncu"


def counters_available(device: torch.device) -> tuple[bool, str]:
    return ncu_status(device) if device.type == "cuda" else perf_status()


@contextlib.contextmanager
def perf_attached(events: Sequence[str] = COUNTER_EVENTS_CPU):
    """``perf stat`` attached to this process for the duration of the block; yields a dict filled on exit."""
    result: dict[str, float | None] = {}
    proc = subprocess.Popen([shutil.which("perf") or "perf", "stat", "-x,", "-e", ",".join(events), "-p",
                             str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # let perf attach
    try:
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        result.update(_perf_values(err or ""))


def ncu_metrics(module_argv: Sequence[str], metrics: Sequence[str] = NCU_METRICS, timeout_s: float = 600) -> dict:
    """Nsight Compute ``metrics`` of ``python -m MODULE ARGS...`` run in a child process, summed (``.sum``) or
    averaged (rates) over its kernels; ``{"ncu_failed": None}`` when ncu fails (CUDA only; untested without a
    GPU)."""
    cmd = ["ncu", "--csv", "--metrics", ",".join(metrics), "--target-processes", "all", sys.executable, "-m",
           *module_argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        return {"ncu_failed": None}
    sums: dict[str, list[float]] = defaultdict(list)
    import csv
    import io

    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('"')]
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        name, value = rec.get("Metric Name"), rec.get("Metric Value", "").replace(",", "")
        with contextlib.suppress(TypeError, ValueError):
            sums[name].append(float(value))
    out: dict[str, float | None] = {}
    for name, vals in sums.items():
        # bytes add up over kernels; hit rates are averaged over kernels
        out[name] = sum(vals) if name.endswith(".sum") else statistics.fmean(vals)
    return out
