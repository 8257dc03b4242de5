"""Peak memory of the tensors a computation creates (intermediate-tensor memory), on any device.

On CUDA, the caching allocator's own counters (``torch.cuda.max_memory_allocated``) are used. On CPU
there is no allocator counter in PyTorch, and process RSS mixes in the allocator's caching and every
other object, so this module tracks storage bytes itself: a ``TorchDispatchMode`` sees every ATen op's
outputs, counts each new storage once, and un-counts it when the last tensor viewing it is freed
(``weakref.finalize``). What exists before the tracker starts (weights, inputs) is not counted: the figure
is the peak of *new* tensor bytes alive at once, which is what an attention backend changes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class MemoryStats:
    peak_bytes: int = 0
    allocated_bytes: int = 0  # total bytes of all new storages (sum, not peak)
    method: str = "dispatch"

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class _StorageTracker(TorchDispatchMode):
    def __init__(self, stats: MemoryStats):
        super().__init__()
        self.stats = stats
        self.live_bytes = 0
        self.refs: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensor count]

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.live_bytes -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0:
                continue
            entry = self.refs.get(key)
            if entry is None:
                self.refs[key] = [nbytes, 1]
                self.live_bytes += nbytes
                self.stats.allocated_bytes += nbytes
                self.stats.peak_bytes = max(self.stats.peak_bytes, self.live_bytes)
            else:
                entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


class track_peak_memory:
    """``with track_peak_memory(device) as stats: ...; stats.peak_bytes``."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.stats = MemoryStats(method="cuda allocator" if self.device.type == "cuda" else "dispatch")
        self._mode: _StorageTracker | None = None

    def __enter__(self) -> MemoryStats:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._mode = _StorageTracker(self.stats)
            self._mode.__enter__()
        return self.stats

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.stats.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._mode is not None:
            self._mode.__exit__(*exc)
