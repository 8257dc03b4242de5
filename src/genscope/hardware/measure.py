"""Ceilings of the machine genscope runs on, measured: matmul FLOP/s per dtype and copy bandwidth.

Microbenchmarks (median of several repetitions after a warm-up):

* compute: ``torch.mm`` of two n x n matrices (2 n^3 FLOPs) in float32 and bfloat16; n grows from 256
  (doubling, up to :data:`MAX_N`) until one product takes at least ``MIN_SECONDS``, so the measurement is in
  the large-matrix regime without spending more than a few seconds;
* bandwidth: ``dst.copy_(src)`` of a :data:`COPY_BYTES` float32 buffer (read + write: 2 x bytes moved), far
  larger than any last-level cache.

Results are cached per machine in ``~/.genscope/ceilings-<key>.json`` (``$GENSCOPE_HOME`` moves the folder),
the key hashing host name, processor, torch version, thread count and device name, so the roofline study
does not re-measure every time; ``measure_ceilings(refresh=True)`` re-measures. Whole benchmark: well under
20 s on a 2-core CPU.

Why by hand: no library in the environment measures these two numbers (STREAM-like copy and a GEMM
peak) for an arbitrary torch device.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from genscope.errors import UserError

MAX_N = {"cpu": 4096, "cuda": 16384}
MIN_SECONDS = 0.15
COPY_BYTES = 256 * 2**20
REPEAT = 5
TIME_BUDGET_S = 1.5  # per dtype, for the timed repetitions
DTYPES = ("float32", "bfloat16")


@dataclass
class Ceilings:
    """Measured ceilings of one device."""

    device: str  # "cpu" or "cuda:0"
    device_name: str  # processor / GPU name
    peak_flops_per_s: dict[str, float]  # dtype -> FLOP/s
    bandwidth_bytes_per_s: float
    threads: int
    measured_at: str
    key: str
    details: dict = field(default_factory=dict)  # matrix sizes, per-repetition times

    def peak(self, dtype: str) -> float:
        """FLOP/s for ``dtype``; float16 falls back to bfloat16 (same 2-byte tensor path on CPUs), tfloat32 to
        float32 (noted in ``details``)."""
        d = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "tf32": "tfloat32"}.get(dtype, dtype)
        if d in self.peak_flops_per_s:
            return self.peak_flops_per_s[d]
        fallback = {"float16": "bfloat16", "tfloat32": "float32"}.get(d)
        if fallback in self.peak_flops_per_s:
            return self.peak_flops_per_s[fallback]
        raise UserError(f"no measured ceiling for dtype {dtype!r}; measured: {', '.join(self.peak_flops_per_s)}")

    def ridge_flops_per_byte(self, dtype: str) -> float:
        return self.peak(dtype) / self.bandwidth_bytes_per_s

    def attainable_flops_per_s(self, intensity_flops_per_byte: float, dtype: str) -> float:
        return min(self.peak(dtype), intensity_flops_per_byte * self.bandwidth_bytes_per_s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int) -> list[float]:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # Linux: the model name is more telling than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine_key(device: torch.device) -> str:
    parts = [platform.node(), device_name(device), torch.__version__, str(torch.get_num_threads()), str(device)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("GENSCOPE_HOME", "~/.genscope")).expanduser()


def measure_matmul(device: torch.device, dtype: torch.dtype, repeat: int = REPEAT) -> tuple[float, dict]:
    """Median FLOP/s of an n x n x n matmul, n grown until one product takes MIN_SECONDS.

    A dtype without a fast path (bfloat16 on a CPU without AVX512-BF16/AMX) stops growing early and gets
    fewer repetitions (at least 3), so the whole benchmark stays within its time budget.
    """
    n = 256
    limit = MAX_N.get(device.type, 4096)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        single = _time(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), device, 1)[0]
        if single >= MIN_SECONDS or n >= limit:
            break
        n *= 2
    repeat = max(3, min(repeat, int(TIME_BUDGET_S / max(single, 1e-9))))
    times = _time(lambda: torch.mm(a, b, out=out), device, repeat)
    median = statistics.median(times)
    return 2 * n**3 / median, {"n": n, "times_s": times}


def measure_copy(device: torch.device, nbytes: int = COPY_BYTES, repeat: int = REPEAT) -> tuple[float, dict]:
    """Median bytes/s of a large copy (reads nbytes, writes nbytes)."""
    numel = nbytes // 4
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    times = _time(lambda: dst.copy_(src), device, repeat)
    median = statistics.median(times)
    return 2 * numel * 4 / median, {"bytes": 2 * numel * 4, "times_s": times}


def measure_ceilings(device: str | torch.device = "cpu", *, refresh: bool = False, cache: bool = True,
                     dtypes: tuple[str, ...] = DTYPES) -> Ceilings:
    """This machine's ceilings, from the cache unless ``refresh`` (or the cache is missing/unreadable)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available here; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"cannot measure ceilings on device {str(dev)!r}; accepted: cpu, cuda")
    key = machine_key(dev)
    path = cache_dir() / f"ceilings-{key}.json"
    if cache and not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key and all(d in data.get("peak_flops_per_s", {}) for d in dtypes):
                return Ceilings(**data)
        except (OSError, ValueError, TypeError):
            pass  # unreadable cache: measure again
    peaks, details = {}, {}
    for name in dtypes:
        flops, info = measure_matmul(dev, getattr(torch, name))
        peaks[name] = flops
        details[f"matmul_{name}"] = info
    bandwidth, info = measure_copy(dev)
    details["copy"] = info
    result = Ceilings(device=str(dev), device_name=device_name(dev), peak_flops_per_s=peaks,
                      bandwidth_bytes_per_s=bandwidth, threads=torch.get_num_threads(),
                      measured_at=datetime.now(UTC).isoformat(timespec="seconds"), key=key, details=details)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(result), indent=2))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: the measurement is still returned
    return result
