"""GPU attribution, built and checked without a GPU: on the real H200 traces in shared/fixtures/h200-traces and
on a synthetic trace whose expected table is worked out by hand below."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genscope.cli import main
from genscope.instrument.attribution import IDLE, NO_PHASE, attribute
from genscope.instrument.traces import events_from_chrome, events_from_profiler, load_events

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "h200-traces"
GENSCOPE_TRACES = [f"{w}_h200.{b}.json.gz" for w in ("stable-diffusion", "make-a-video", "llama")
                   for b in ("baseline", "flash")]
PLAIN = "plain_unet_h200.json.gz"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/h200-traces not beside the repo")


@pytest.fixture(scope="module")
def attributed():
    return {name: attribute(load_events(FIXTURES / name)) for name in [*GENSCOPE_TRACES, PLAIN]}


def _raw_gpu(name: str) -> pd.DataFrame:
    """Kernel/memcpy/memset events read straight from the file, independently of genscope's parser."""
    with gzip.open(FIXTURES / name, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    rows = [(e["name"], float(e["ts"]), float(e["dur"])) for e in events
            if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    return pd.DataFrame(rows, columns=["name", "ts", "dur"])


def _union_length(starts, ends) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(zip(starts, ends, strict=True)):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s) if cur_e is not None else 0.0)


@needs_fixtures
@pytest.mark.parametrize("name", [*GENSCOPE_TRACES, PLAIN])
def test_classes_plus_idle_equal_span_and_busy_equals_kernel_union(attributed, name):
    result = attributed[name]
    raw = _raw_gpu(name)
    # busy time: the union of the kernel intervals, computed here with a plain sort-and-merge
    expected_busy_ms = _union_length(raw["ts"], raw["ts"] + raw["dur"]) / 1e3
    assert result.busy_ms == pytest.approx(expected_busy_ms, rel=1e-3)
    by = result.by_class()
    gpu_classes = by[by["op_class"] != IDLE]["time_ms"].sum()
    assert gpu_classes == pytest.approx(result.busy_ms, rel=1e-6)
    assert by["time_ms"].sum() == pytest.approx(result.span_ms, rel=0.01)
    # the span is the run's range (or, in a plain trace, first to last event): it holds every kernel
    first_to_last_gpu_ms = ((raw["ts"] + raw["dur"]).max() - raw["ts"].min()) / 1e3
    assert result.span_ms >= first_to_last_gpu_ms * 0.99
    assert result.idle_ms == pytest.approx(result.span_ms - expected_busy_ms, rel=1e-3)


@needs_fixtures
@pytest.mark.parametrize("name", GENSCOPE_TRACES)
def test_other_at_most_5_percent_on_genscope_traces(attributed, name):
    by = attributed[name].by_class().set_index("op_class")["time_ms"]
    assert by["Other"] <= 0.05 * attributed[name].busy_ms
    assert attributed[name].counts["gpu_linked"] == attributed[name].counts["gpu_events"]


@needs_fixtures
def test_plain_trace_broken_down_by_op_and_kernel_name(attributed):
    result = attributed[PLAIN]
    by = result.by_class().set_index("op_class")["time_ms"]
    assert by["Other"] <= 0.10 * result.busy_ms
    assert by["Convolution"] > 0 and by["GroupNorm"] > 0 and by["Attention"] > 0  # a UNet forward with SDPA
    assert set(result.class_time["phase"]) == {NO_PHASE}


def _kernel_classes(result, pattern: str) -> set[str]:
    k = result.kernels
    return set(k.loc[k["kernel"].str.contains(pattern, case=False, regex=True), "op_class"])


@needs_fixtures
def test_llama_gemm_kernels_are_linear(attributed):
    for name in ("llama_h200.baseline.json.gz", "llama_h200.flash.json.gz"):
        result = attributed[name]
        assert _kernel_classes(result, r"^nvjet_") == {"Linear"} or _kernel_classes(result, r"^nvjet_") <= {
            "Linear", "Attention"}  # the baseline's QK^T / @V GEMMs run inside attention calls
        outside_attention = result.kernels[result.kernels["op_class"] != "Attention"]
        assert set(outside_attention.loc[outside_attention["kernel"].str.startswith("nvjet_"), "op_class"]) == {
            "Linear"}
        by = result.by_class().set_index("op_class")["time_ms"]
        assert by["Linear"] == by.drop(IDLE).max()  # decode of a 7B model: GEMMs dominate GPU time


@needs_fixtures
def test_groupnorm_convolution_and_attention_kernels(attributed):
    sd = attributed["stable-diffusion_h200.flash.json.gz"]
    assert _kernel_classes(sd, "RowwiseMoments") == {"GroupNorm"}
    assert _kernel_classes(sd, "nchwToNhwc|nhwcToNchw") == {"Convolution"}  # cuDNN's layout transposes
    assert _kernel_classes(sd, "fprop_implicit_gemm") == {"Convolution"}
    assert _kernel_classes(sd, "sdpa.*flash|fmha") == {"Attention"}
    base = attributed["stable-diffusion_h200.baseline.json.gz"].by_class().set_index("op_class")["time_ms"]
    flash = sd.by_class().set_index("op_class")["time_ms"]
    assert flash["Attention"] < base["Attention"]  # flash attention shortens the attention kernels
    # the paper's Figure 7 pattern: once attention is fused, convolution is the largest class of SD's GPU time
    assert flash.drop(IDLE).idxmax() == "Convolution"


def _synthetic_trace() -> dict:
    """Two phases; three kernels on stream 7 and one on stream 9 overlapping it; one kernel whose op has no
    class (its name decides); a memcpy; gaps. Times in us."""
    def x(cat, name, ts, dur, tid=1, **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}

    def k(name, ts, dur, ext, corr, stream=7, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream, "ts": ts, "dur": dur,
                "args": {"External id": ext, "correlation": corr, "stream": stream, "device": 0}}

    events = [
        x("user_annotation", "genscope::run", 0, 1000, **{"External id": 1}),
        x("user_annotation", "phase::denoise#0", 10, 490, **{"External id": 2}),
        x("user_annotation", "module::unet.conv_in::Conv2d", 20, 100, **{"External id": 3}),
        x("cpu_op", "aten::conv2d", 25, 90, **{"External id": 4}),
        x("cuda_runtime", "cudaLaunchKernel", 30, 5, correlation=100),
        x("user_annotation", "genscope::attention::self::unet.attn", 200, 100, **{"External id": 5}),
        x("cpu_op", "aten::bmm", 210, 50, **{"External id": 6}),
        x("cuda_runtime", "cudaLaunchKernel", 215, 5, correlation=101),
        x("cpu_op", "aten::my_custom_op", 320, 20, **{"External id": 7}),
        x("cuda_runtime", "cudaLaunchKernel", 325, 5, correlation=102),
        x("user_annotation", "phase::decoder", 500, 490, **{"External id": 8}),
        x("cpu_op", "aten::linear", 510, 80, **{"External id": 9}),
        x("cuda_runtime", "cudaLaunchKernel", 515, 5, correlation=103),
        x("cpu_op", "aten::copy_", 700, 30, **{"External id": 10}),
        x("cuda_runtime", "cudaMemcpyAsync", 705, 5, correlation=104),
        k("sm90_xmma_fprop_implicit_gemm", 100, 200, ext=4, corr=100),  # conv: 100-300
        k("nvjet_sm90_qk", 300, 100, ext=6, corr=101),  # bmm inside attention: 300-400
        k("RowwiseMomentsCUDAKernel", 350, 100, ext=7, corr=102, stream=9),  # 350-450, overlaps 350-400
        k("ampere_sgemm", 600, 100, ext=9, corr=103),  # linear: 600-700
        k("Memcpy DtoH", 800, 50, ext=10, corr=104, cat="gpu_memcpy"),  # 800-850
    ]
    return {"traceEvents": events}


def test_synthetic_trace_gives_the_table_worked_out_by_hand():
    result = attribute(events_from_chrome(_synthetic_trace()))
    got = result.class_time.set_index(["phase", "op_class"])["time_ms"].mul(1e3).round(6).to_dict()
    # busy: 100-450 (350 us) + 600-700 (100) + 800-850 (50) = 500 us; span 0-1000; idle 500 us.
    # 350-400 is shared by the attention GEMM and the GroupNorm kernel: 25 us each.
    # idle by host phase: denoise 10-500 minus busy 100-450 = 140 us; decoder 500-990 minus 600-700, 800-850 =
    # 340 us; outside phases 0-10 and 990-1000 = 20 us.
    expected = {
        ("denoise", "Convolution"): 200.0,  # by the op's module (Conv2d)
        ("denoise", "Attention"): 75.0,  # 100 us kernel, 25 us of it shared
        ("denoise", "GroupNorm"): 75.0,  # op of no class -> the kernel's name decides
        ("decoder", "Linear"): 100.0,
        ("decoder", "Memory"): 50.0,
        ("denoise", IDLE): 140.0,
        ("decoder", IDLE): 340.0,
        (NO_PHASE, IDLE): 20.0,
    }
    assert got == expected
    assert result.busy_ms == pytest.approx(0.5) and result.span_ms == pytest.approx(1.0)
    assert result.idle_ms == pytest.approx(0.5)
    attention = result.attention_time.set_index(["phase", "attention_kind"])["time_ms"].mul(1e3).round(6)
    assert attention.to_dict() == {("denoise", "self"): 75.0}  # the kind comes from the call's range name
    # CPU time is its own table: the conv op's self time (90 us minus its 5 us launch) is CPU Convolution
    cpu = result.cpu_class_time.set_index(["phase", "op_class"])["time_ms"].mul(1e3).round(6)
    assert cpu[("denoise", "Convolution")] == pytest.approx(90.0)  # op 85 + launch call 5, both in Conv2d
    assert result.cpu_class_time["time_ms"].sum() == pytest.approx(1.0)  # self times sum to the run's range


def test_kineto_events_and_chrome_file_give_the_same_cpu_attribution(tmp_path):
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("genscope::run"), record_function("phase::denoise#0"):
            model(torch.randn(4, 32))
    live = attribute(events_from_profiler(prof)).by_class().set_index("op_class")["time_ms"]
    # the saved file, read back the way a torch without kineto's activity types (2.11) reads a live session
    from genscope.instrument.traces import _events_via_chrome_export

    saved = attribute(_events_via_chrome_export(prof)).by_class().set_index("op_class")["time_ms"]
    assert np.allclose(live.to_numpy(), saved.to_numpy(), atol=2e-3)
    assert live["Linear"] > 0


@needs_fixtures
def test_analyze_command_on_a_fixture(capsys, tmp_path):
    db = tmp_path / "r.db"
    assert main(["analyze", str(FIXTURES / "stable-diffusion_h200.flash.json.gz"), "--db", str(db), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_id"] is not None
    summary = payload["summary"][0]
    assert summary["device_kind"] == "gpu" and summary["device_name"] == "NVIDIA H200"
    assert summary["other_pct_of_busy"] <= 5
    classes = {row["op_class"]: row["time_ms"] for row in payload["class_total"]}
    assert sum(classes.values()) == pytest.approx(summary["span_ms"], rel=0.01)


@pytest.mark.parametrize("content", [b"", b"not json", b'{"a": 1}', b"\x1f\x8b\x08broken gzip"])
def test_analyze_refuses_what_is_not_a_trace(capsys, tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert main(["analyze", str(path), "--no-store"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genscope: error:")
    assert main(["analyze", str(tmp_path / "missing.json"), "--no-store"]) == 2
