"""CUDA-only checks of the profiler (skipped without a GPU; run whenever one is available):
fast mode times with CUDA events (no synchronize per module), and trace mode attributes GPU kernel time."""

from __future__ import annotations

import pytest
import torch

from genscope.instrument.attribution import IDLE
from genscope.instrument.profiler import profile_callable
from genscope.workloads.phases import phase

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
                               torch.nn.Conv2d(64, 64, 3, padding=1)).cuda().half()


def test_fast_mode_on_cuda_uses_events_and_sees_convolution():
    model = _model()
    x = torch.randn(8, 64, 128, 128, device="cuda", dtype=torch.half)
    calls = {"sync": 0}
    real_sync = torch.cuda.synchronize

    def counting_sync(*args, **kwargs):
        calls["sync"] += 1
        return real_sync(*args, **kwargs)

    def run():
        with phase("denoise", step=0):
            model(x)

    torch.cuda.synchronize = counting_sync
    try:
        prof = profile_callable(run, components=[("m", model)], device="cuda", mode="fast", repeat=1, warmup=1)
    finally:
        torch.cuda.synchronize = real_sync
    by = prof.by_class().set_index("op_class")["time_ms"]
    assert by["Convolution"] > by["Activation"] > 0
    assert by["GroupNorm"] > 0
    # one read of all events at the end, plus the phase and run boundaries - not two per module (4 modules)
    assert calls["sync"] <= 6


def test_trace_mode_on_cuda_reports_gpu_busy_time_and_idle():
    model = _model()
    x = torch.randn(8, 64, 128, 128, device="cuda", dtype=torch.half)

    def run():
        with phase("denoise", step=0):
            model(x)

    prof = profile_callable(run, components=[("m", model)], device="cuda", mode="trace", repeat=1, warmup=1)
    att = prof.attribution
    assert att is not None and att.device_kind == "gpu"
    by = prof.by_class().set_index("op_class")["time_ms"]
    assert IDLE in by.index
    assert by.sum() == pytest.approx(att.span_ms, rel=0.01)
    assert by["Other"] <= 0.05 * att.busy_ms
    assert by["Convolution"] == by.drop(IDLE).max()
