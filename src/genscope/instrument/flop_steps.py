"""Counting a loop from a few of its steps: the exact per-step rule, fitted and verified on counted steps.

A shape-only (meta device) count runs every loop of a workload under a
:class:`~genscope.workloads.phases.StepLimit`: a few steps run and are counted op by op; the steps not run
are added from a rule fitted to the counted ones. Two kinds of loops occur in the suite:

* **identical steps** (a denoising step, a parallel-decoding step): every step runs the same ops on the same
  shapes, but the first and the last may differ (a scheduler's set-up; its final step: DDIM's final alpha,
  DDPM's step without noise). The first :data:`~genscope.instrument.flop_counter.IDENTICAL_STEPS` steps and
  the last run; the last two of the leading steps must be equal row for row (same ops in the same modules,
  same FLOPs, softmax FLOPs, bytes and calls), and are replicated for the steps between;
* **growing steps** (autoregressive decode over a KV cache): step s attends over a key length that grows by
  one token per step, so every count is affine in s (QK^T and PV FLOPs, the softmax, the bytes of the
  cache read and of its concatenation). The first :data:`~genscope.instrument.flop_counter.GROWING_STEPS`
  steps run; the first may differ (an empty cache; cross-attention keys computed once); the last three must
  lie on one line, row for row (equal second differences), and the steps not run follow it:
  ``count(s) = count(last run) + slope * (s - last run)``.

A loop whose counted steps do not fit raises :class:`SeriesBroken`; the caller then counts every step
(``FlopCounter(..., predict=False)``).

A row is keyed (module path, op packet, inside attention) and holds ``[flops, softmax_flops, bytes, calls]``.
"""

from __future__ import annotations

from dataclasses import dataclass

Row = list[int]  # flops, softmax_flops, bytes, calls
StepRows = dict[tuple, Row]  # (module path, packet, inside attention) -> Row


class SeriesBroken(RuntimeError):
    """The counted steps of a loop do not fit its rule: the count must be redone with every step run."""


@dataclass
class StepRule:
    """``rows(s) = base + slope * (s - origin)`` for every row key (``slope`` all zero: identical steps)."""

    keys: list[tuple]
    base: list[Row]
    slope: list[Row]
    origin: int

    @property
    def identical(self) -> bool:
        return not any(any(v) for v in self.slope)

    def sum_over(self, first: int, end: int) -> list[tuple[tuple, Row]]:
        """Each key's rows summed over steps ``first .. end - 1``: n * base + slope * sum(s - origin)."""
        n = end - first
        offsets = sum(range(first - self.origin, end - self.origin))
        return [(k, [n * b + offsets * d for b, d in zip(base, slope, strict=True)])
                for k, base, slope in zip(self.keys, self.base, self.slope, strict=True)]

    def totals_at(self, step: int) -> tuple[int, int, int]:
        """(flops, softmax_flops, bytes) of step ``step``."""
        j = step - self.origin
        base = [sum(b[i] for b in self.base) for i in range(3)]
        slope = [sum(d[i] for d in self.slope) for i in range(3)]
        return tuple(base[i] + slope[i] * j for i in range(3))


def _difference(later: StepRows, earlier: StepRows, keys: list[tuple]) -> list[Row]:
    return [[x - y for x, y in zip(later[k], earlier[k], strict=True)] for k in keys]


def fit_steps(phase_name: str, counted: list[StepRows], growing: bool = False) -> StepRule:
    """The rule of a loop from its counted steps 0 .. len(counted) - 1 (see the module docstring): the last two
    must be equal (identical steps) or, ``growing``, the last three must lie on one line."""
    run = len(counted)
    if run < (3 if growing else 2):
        raise SeriesBroken(f"loop {phase_name!r}: {run} steps counted; too few to replicate or extrapolate")
    window = counted[-3:] if growing else counted[-2:]
    keys = list(window[-1])
    if any(set(rows) != set(keys) for rows in window):
        raise SeriesBroken(f"loop {phase_name!r}: steps {run - len(window)}..{run - 1} run different ops; count "
                           "every step (exact)")
    slope = _difference(window[-1], window[-2], keys)
    if len(window) == 2 and any(any(d) for d in slope):
        raise SeriesBroken(f"loop {phase_name!r}: steps {run - 2} and {run - 1} differ; count every step (exact)")
    if len(window) == 3 and _difference(window[-2], window[-3], keys) != slope:
        raise SeriesBroken(f"loop {phase_name!r}: steps {run - 3}..{run - 1} are not affine in the step; count "
                           "every step (exact)")
    return StepRule(keys=keys, base=[list(window[-1][k]) for k in keys], slope=slope, origin=run - 1)
