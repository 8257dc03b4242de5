import statistics

import pytest
import torch
from torch import nn

from genscope.instrument.opclasses import OP_CLASSES, op_class
from genscope.instrument.profiler import profile_callable, profile_pipeline
from genscope.models.layers.attention import attention, use_backend
from genscope.workloads import registry
from genscope.workloads.base import RunSettings
from genscope.workloads.phases import phase


@pytest.fixture(scope="module")
def sd_tiny():
    workload = registry.get("stable-diffusion")
    request = workload.request(RunSettings(preset="tiny", steps=2))
    return workload.build(workload.config("tiny")), request


@pytest.mark.parametrize("mode", ["trace", "fast"])
def test_classes_sum_to_measured_total(sd_tiny, mode):
    pipeline, request = sd_tiny
    prof = profile_pipeline(pipeline, request, mode=mode, repeat=1, warmup=0)
    assert set(prof.class_time.op_class) <= set(OP_CLASSES)
    wall = prof.repeat_totals_ms[0]
    assert abs(prof.class_time.time_ms.sum() - wall) <= 0.01 * wall
    assert set(prof.phase_time.phase) == {"text_encoder", "denoise", "decoder"}
    by = prof.by_class().set_index("op_class")
    for cls in ("Convolution", "Linear", "GroupNorm", "Attention"):
        assert by.loc[cls, "time_ms"] > 0, cls


def test_trace_mode_attributes_phases_and_lists_other(sd_tiny):
    pipeline, request = sd_tiny
    prof = profile_pipeline(pipeline, request, mode="trace", repeat=1, warmup=0)
    phases = set(prof.class_time.phase)
    assert {"text_encoder", "denoise", "decoder"} <= phases
    other = prof.class_time.loc[prof.class_time.op_class == "Other", "time_ms"].sum()
    assert abs(prof.other_ops.time_ms.sum() - other) < 1e-6 + 1e-9 * other


def test_added_convolution_shows_up_as_convolution():
    conv = nn.Conv2d(16, 16, 3, padding=1).eval()
    lin = nn.Linear(64, 64).eval()
    x = torch.randn(1, 16, 64, 64)
    y = torch.randn(256, 64)

    def fn():
        with phase("linear_only"):
            lin(y)
        with phase("with_conv"):
            lin(y)
            conv(x)

    prof = profile_callable(fn, components=[("conv", conv), ("lin", lin)], mode="trace", repeat=1, warmup=1)
    ct = prof.class_time.set_index(["phase", "op_class"]).time_ms
    assert ("linear_only", "Convolution") not in ct.index
    assert ct[("with_conv", "Convolution")] > 0
    assert ct[("linear_only", "Linear")] > 0


def test_attention_time_drops_with_flash_for_long_sequence():
    q = torch.randn(1, 4, 2048, 32)

    def run(backend):
        def fn():
            with use_backend(backend), phase("attn"):
                attention(q, q, q, kind="self")
        return fn

    times = {"baseline": [], "flash": []}
    for _ in range(3):
        for backend in times:
            prof = profile_callable(run(backend), mode="trace", repeat=1, warmup=1)
            times[backend].append(prof.attention_ms)
    assert statistics.median(times["flash"]) < statistics.median(times["baseline"])


def test_op_class_table():
    assert op_class("aten::conv2d") == "Convolution"
    assert op_class("aten::addmm") == "Linear"
    assert op_class("aten::native_group_norm") == "GroupNorm"
    assert op_class("aten::_scaled_dot_product_flash_attention_for_cpu") == "Attention"
    assert op_class("ampere_sgemm_128x64_tn") == "Linear"
    assert op_class("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") \
        == "Elementwise"
    assert op_class("aten::definitely_not_an_op") == "Other"


def test_bad_repeat_and_mode_are_user_errors():
    from genscope.errors import UserError

    with pytest.raises(UserError):
        profile_callable(lambda: None, repeat=0)
    with pytest.raises(UserError):
        profile_callable(lambda: None, mode="slow")


def test_trace_export_has_single_rank_metadata(tmp_path):
    import json

    lin = nn.Linear(8, 8)
    path = tmp_path / "t.json"
    profile_callable(lambda: lin(torch.randn(2, 8)), components=[("lin", lin)], trace_path=path, warmup=0)
    trace = json.loads(path.read_text())
    assert trace["distributedInfo"]["rank"] == 0
    assert any(e.get("name", "").startswith("module::lin") for e in trace["traceEvents"])
