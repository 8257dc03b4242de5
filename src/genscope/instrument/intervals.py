"""Interval algebra over trace timelines (half-open ``[start, end)``, any unit), vectorized with numpy.

One place for what the analyses of traces need: merging intervals (:func:`union`), membership
(:func:`covered`), cutting a window at every boundary (:func:`sweep`) and splitting it into compute /
communication / overlapped / exposed / idle (:func:`split_window`, the FSDP study), the overlap of intervals
with a union (:func:`overlap_us`, GPU idle per phase) and each interval's share of a union when several overlap
(:func:`busy_share_us`, GPU busy time per class on several streams).

Why hand-written: pandas has interval indexes but no union/sweep over millions of events in linear time; these
are a few lines of sort, running maximum and ``searchsorted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd


# ----------------------------------------------------------------------------------------------------
def union(starts: Iterable[float], ends: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals into sorted disjoint ones (touching intervals merge)."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)  # furthest end seen so far
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]  # a gap before this interval starts a new merged one
    return s[new], np.maximum.reduceat(e, np.flatnonzero(new))  # each merged interval ends at its group's max


def covered(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which ``points`` lie inside the disjoint sorted intervals ``[starts, ends)``."""
    points = np.asarray(points, dtype=np.float64)
    if starts.size == 0:
        return np.zeros(points.shape, dtype=bool)
    idx = np.searchsorted(starts, points, side="right") - 1
    return (idx >= 0) & (points < ends[np.clip(idx, 0, None)])


def clip(starts: np.ndarray, ends: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.clip(starts, lo, hi), np.clip(ends, lo, hi)
    keep = e > s
    return s[keep], e[keep]


def sweep(lo: float, hi: float, sets: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The window ``[lo, hi)`` cut at every boundary of every set: one row per elementary segment with its
    ``length`` and, per set, whether the segment is inside it. Any combination (A and not B, ...) is then a
    boolean mask over these rows."""
    merged = {name: clip(*union(*iv), lo, hi) for name, iv in sets.items()}
    cuts = np.unique(np.concatenate([[lo, hi], *(np.concatenate(iv) for iv in merged.values())]))
    cuts = cuts[(cuts >= lo) & (cuts <= hi)]
    seg_lo, seg_hi = cuts[:-1], cuts[1:]
    mid = (seg_lo + seg_hi) / 2
    out = {"start": seg_lo, "end": seg_hi, "length": seg_hi - seg_lo}
    for name, (s, e) in merged.items():
        out[name] = covered(mid, s, e)
    return pd.DataFrame(out)


def split_window(lo: float, hi: float, compute: tuple[np.ndarray, np.ndarray],
                 communication: tuple[np.ndarray, np.ndarray], scale_to_ms: float = 1e-3) -> dict[str, float]:
    """compute / communication / overlapped / exposed communication / idle time of the window ``[lo, hi)``.

    ``scale_to_ms``: milliseconds per unit of the inputs (Chrome traces are in microseconds: 1e-3).
    """
    seg = sweep(lo, hi, {"compute": compute, "comm": communication})
    length = seg["length"].to_numpy()
    comp, comm = seg["compute"].to_numpy(), seg["comm"].to_numpy()

    def total(mask: np.ndarray) -> float:
        return float(length[mask].sum()) * scale_to_ms

    return {"window_ms": (hi - lo) * scale_to_ms, "compute_ms": total(comp), "communication_ms": total(comm),
            "overlapped_ms": total(comp & comm), "exposed_comm_ms": total(comm & ~comp),
            "idle_ms": total(~comp & ~comm)}


def overlap_us(a_starts: np.ndarray, a_ends: np.ndarray, b_starts: np.ndarray, b_ends: np.ndarray) -> np.ndarray:
    """For each interval of A, its overlap with the union of the (disjoint, sorted) intervals B, in us."""
    if len(b_starts) == 0 or len(a_starts) == 0:
        return np.zeros(len(a_starts))
    # cumulative covered length of B up to time t: piecewise linear, evaluated at A's ends
    covered_before = np.concatenate([[0.0], np.cumsum(b_ends - b_starts)])

    def covered(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(b_starts, t, side="right")  # intervals starting at or before t
        inside = np.clip(t - b_starts[np.maximum(i - 1, 0)], 0, None)
        full = covered_before[np.maximum(i - 1, 0)]
        last_len = np.minimum(inside, (b_ends - b_starts)[np.maximum(i - 1, 0)])
        return np.where(i > 0, full + last_len, 0.0)

    return covered(a_ends) - covered(a_starts)


def busy_share_us(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each interval's share of the union: elementary intervals shared equally by the intervals covering them."""
    if len(starts) == 0:
        return np.zeros(0)
    bounds = np.unique(np.concatenate([starts, ends]))
    active = (np.searchsorted(np.sort(starts), bounds[:-1], side="right")
              - np.searchsorted(np.sort(ends), bounds[:-1], side="right"))
    weight = np.where(active > 0, np.diff(bounds) / np.maximum(active, 1), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(weight)])
    return cumulative[np.searchsorted(bounds, ends)] - cumulative[np.searchsorted(bounds, starts)]
