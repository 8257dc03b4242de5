"""Measured per-shape decisions of the passes, cached per device (selective flash attention, Winograd).

A decision ("for this attention shape on this device, flash beats the partially fused softmax"; "for this
convolution shape, Winograd F(4x4) beats direct convolution") is measured once with interleaved
repetitions (:func:`measure_interleaved`) and stored in a JSON file, keyed by pass, device, dtype and shape:
``$GENSCOPE_DECISIONS`` or ``~/.genscope/pass-decisions.json``. The file is data: it is parsed as JSON
only, unknown or malformed entries are ignored (and re-measured), writes are atomic (temp file + rename).

The shapes to decide come from one forward of the model on the meta device where it can run there
(:func:`forward_on_meta`, used by :meth:`genscope.passes.base.PassContext.run_example`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

ENV_VAR = "GENSCOPE_DECISIONS"
DEFAULT_PATH = "~/.genscope/pass-decisions.json"
FORMAT_VERSION = 1


def decisions_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


@functools.cache
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_key(device: torch.device | str) -> str:
    """What a timing decision depends on: the device model, and on CPU the thread count and ISA level."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        return f"cpu:{_cpu_model()}:{torch.get_num_threads()}t:{torch.backends.cpu.get_cpu_capability()}"
    return device.type


class DecisionCache:
    """``cache.get(key)`` / ``cache.put(key, value)``; ``value`` is a JSON object."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = decisions_path(path)
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            data: dict[str, Any] = {}
            try:
                raw = json.loads(self.path.read_text())
                if isinstance(raw, dict) and raw.get("version") == FORMAT_VERSION and isinstance(
                        raw.get("decisions"), dict):
                    data = raw["decisions"]
            except (OSError, ValueError):
                pass
            self._data = data
        return self._data

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._load().get(key)
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        self._data = None  # merge with what other processes wrote meanwhile
        data = self._load()
        data[key] = dict(value)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pass-decisions-")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": FORMAT_VERSION, "decisions": data}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home: decisions are re-measured next time


def decision_key(pass_name: str, device: torch.device | str, dtype: torch.dtype, shape: Mapping[str, Any]) -> str:
    parts = ",".join(f"{k}={v}" for k, v in sorted(shape.items()))
    return f"{pass_name}|{device_key(device)}|{str(dtype).removeprefix('torch.')}|{parts}"


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1,
                        device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Wall times (ms) of each callable, run in turn (a, b, c, a, b, c, ...) so that load drifts hit all alike."""
    dev = torch.device(device) if device is not None else None
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                _sync(dev)
                start = time.perf_counter()
                fn()
                _sync(dev)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def fastest(times: Mapping[str, list[float]], default: str, margin: float = 0.03) -> tuple[str, dict[str, float]]:
    """The name with the lowest median time; ``default`` is kept unless another is ``margin`` faster."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    best = min(medians, key=medians.get)
    if best != default and medians[best] > (1.0 - margin) * medians[default]:
        best = default
    return best, medians


def forward_on_meta(model: torch.nn.Module, args, kwargs) -> bool:
    """Run ``model`` once with its parameters, buffers and tensor arguments replaced by meta tensors of the
    same shape, dtype and strides (``torch.func.functional_call``: the model's own tensors are untouched and
    restored after the call). True if it ran; False if the forward raised (the caller falls back to a real
    forward)."""
    from torch.func import functional_call

    def meta(x):
        return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x

    state = {name: meta(t) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.inference_mode():
            functional_call(model, state, tuple(meta(x) for x in args), {k: meta(v) for k, v in kwargs.items()})
    except Exception:  # noqa: BLE001 - any failure on meta means: run the real forward (which reports real errors)
        return False
    return True
