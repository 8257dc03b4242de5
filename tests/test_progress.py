"""Progress inside long work: a workload's step loop reports each finished step to the installed sink."""

from __future__ import annotations

import torch

from genscope.progress import advance, reporting
from genscope.workloads import registry
from genscope.workloads.base import RunSettings


def test_denoising_loop_reports_every_step_in_order():
    seen: list[tuple[int, int, str]] = []
    torch.manual_seed(0)
    with reporting(lambda done, total, what: seen.append((done, total, what))):
        registry.get("stable-diffusion").run(RunSettings(preset="tiny", steps=3))
    denoise = [s for s in seen if s[2] == "denoise"]
    assert denoise == [(1, 3, "denoise"), (2, 3, "denoise"), (3, 3, "denoise")]


def test_no_sink_no_effect_and_sinks_nest():
    advance(1, 2, "x")  # nothing installed: a no-op
    outer, inner = [], []
    with reporting(lambda *a: outer.append(a)):
        with reporting(lambda *a: inner.append(a)):
            advance(1, 2, "x")
        advance(2, 2, "x")
    assert inner == [(1, 2, "x")] and outer == [(2, 2, "x")]
