"""Fast mode's class totals against a model whose leaf modules take a known time.

Fast mode times leaf modules by class name (``genscope.instrument.opclasses.MODULE_CLASSES``) and books the
rest of each phase as Other; its classes sum to the phase by construction, so only a model with known
per-class times can check it. Here every leaf module's forward sleeps a fixed time: ``time.sleep(s)`` never
returns before ``s`` has passed, so each class must get at least the sum of its sleeps, and at most that
plus a scheduling slack per call (:data:`SLACK_S`, generous: the machine is shared). The sleeps differ by
class so that time booked to the wrong class, or counted twice, falls outside the bounds.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from genscope.instrument.profiler import profile_callable
from genscope.workloads.phases import phase

SLACK_S = 0.025  # per timed call: wake-up latency of a sleeping thread on a loaded machine


def _sleeper(class_name: str, seconds: float, inner: nn.Module | None = None) -> nn.Module:
    """A module whose type is named ``class_name`` (the name fast mode looks up) and whose forward sleeps."""

    def forward(self, x):
        time.sleep(seconds)
        return self.inner(x) if self.inner is not None else x

    cls = type(class_name, (nn.Module,), {"forward": forward})
    module = cls()
    module.inner = inner
    return module


class Model(nn.Module):
    """Per forward: Linear 2 x 40 ms, one of them wrapping a SiLU of 100 ms (nested: only the outer region is
    timed, so those 100 ms are Linear's; counted as Activation too, they would break Activation's bound); GroupNorm 25 ms; GELU 3 x 5 ms; an untimed 'Mixer' 30 ms (Other)."""

    def __init__(self):
        super().__init__()
        self.fc1 = _sleeper("Linear", 0.040)
        self.fc2 = _sleeper("Linear", 0.040, inner=_sleeper("SiLU", 0.100))
        self.norm = _sleeper("GroupNorm", 0.025)
        self.acts = nn.ModuleList(_sleeper("GELU", 0.005) for _ in range(3))
        self.mixer = _sleeper("Mixer", 0.030)  # not in MODULE_CLASSES: its time is Other

    def forward(self, x):
        x = self.norm(self.fc1(x))
        for act in self.acts:
            x = act(x)
        return self.fc2(self.mixer(x))


# (class, seconds of sleep inside its timed regions, timed calls) per forward
EXPECTED = {"Linear": (0.180, 2), "GroupNorm": (0.025, 1), "Activation": (0.015, 3)}


@pytest.mark.parametrize("steps", [1, 2])
def test_fast_mode_books_each_class_its_own_time(steps):
    model = Model()
    x = torch.zeros(1)

    def run():
        with phase("text_encoder"):
            model.acts[0](x)  # one GELU call in another phase: 5 ms there, not in denoise
        for i in range(steps):
            with phase("denoise", step=i):
                model(x)

    prof = profile_callable(run, components=[("m", model)], mode="fast", repeat=1, warmup=0)
    ct = prof.class_time
    denoise = ct[ct.phase == "denoise"].set_index("op_class")["time_ms"]
    for cls, (seconds, calls) in EXPECTED.items():
        low_ms = 1e3 * seconds * steps
        high_ms = low_ms + 1e3 * SLACK_S * calls * steps
        assert low_ms <= denoise[cls] <= high_ms, (cls, denoise[cls], low_ms, high_ms)
    assert 1e3 * 0.030 * steps <= denoise["Other"] <= 1e3 * (0.030 + SLACK_S) * steps  # the Mixer alone
    text = ct[ct.phase == "text_encoder"].set_index("op_class")["time_ms"]
    assert 5.0 <= text["Activation"] <= 5.0 + 1e3 * SLACK_S
    assert set(text.index) <= {"Activation", "Other"}
