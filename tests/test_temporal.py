"""Spatial vs temporal attention (paper Section VI): FLOP model, frame-strided attention, in-model split, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genscope.cli import main
from genscope.instrument.flops import FlopCounter
from genscope.models.layers.attention import register_call_hook, use_backend
from genscope.models.layers.temporal_attention import VideoAttentionLayer
from genscope.passes import temporal as strided_pass
from genscope.studies import temporal_split, temporal_sweep
from genscope.studies.temporal import SWEEP_WORKLOAD
from genscope.studies.temporal_model import LayerShape, layer_model
from genscope.workloads import registry


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a loaded 2-core machine, 2-thread parallel regions of tiny ops wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _count(layer: VideoAttentionLayer, x: torch.Tensor, frames: int, variant: str, backend: str):
    with torch.inference_mode(), use_backend(backend), FlopCounter({"layer": layer}) as counter:
        layer(x, frames, variant)
    return counter.table()


@pytest.mark.parametrize("frames,height,width", [(2, 4, 4), (8, 2, 4), (5, 3, 3)])
@pytest.mark.parametrize("kind,variant", [("spatial", "standard"), ("temporal", "standard"),
                                          ("temporal", "strided")])
def test_flop_model_equals_the_counter(frames, height, width, kind, variant):
    channels, heads, batch = 16, 2, 2
    torch.manual_seed(0)
    layer = VideoAttentionLayer(kind, channels, heads)
    x = torch.randn(batch * frames, channels, height, width)
    shape = LayerShape(kind, batch, frames, height, width, channels, heads)
    for backend in ("baseline", "flash"):
        rows = _count(layer, x, frames, variant, backend)
        model = layer_model(shape, backend, variant)
        attention = rows[rows["op_class"] == "Attention"]
        assert int(rows["flops"].sum()) == model["layer_flops"]
        assert int(attention["flops"].sum()) == model["core_flops"]
        assert int(rows["softmax_flops"].sum()) == model["softmax_flops"]
        if backend == "flash":  # the fused kernel reads q, k, v and writes o: the model's 4*T*C elements
            assert int(attention["bytes"].sum()) == model["core_bytes"]


def test_flop_model_at_modelscope_width_on_meta():
    """320 channels, 5 heads of 64 (the ModelScope UNet3D's first level), counted on the meta device."""
    frames, side = 16, 32
    for kind in ("spatial", "temporal"):
        layer = VideoAttentionLayer(kind).to("meta")
        x = torch.empty(frames, 320, side, side, device="meta")
        rows = _count(layer, x, frames, "standard", "flash")
        model = layer_model(LayerShape(kind, 1, frames, side, side, 320, 5))
        assert int(rows.loc[rows["op_class"] == "Attention", "flops"].sum()) == model["core_flops"]
        assert int(rows["flops"].sum()) == model["layer_flops"]
    t = layer_model(LayerShape("temporal", 1, frames, side, side, 320, 5))
    s = layer_model(LayerShape("spatial", 1, frames, side, side, 320, 5))
    assert s["core_flops"] / t["core_flops"] == side * side / frames  # ratio H*W / F
    assert t["core_ai"] == frames / 4 and s["core_ai"] == side * side / 4  # L / s for the fused kernel, fp32


@pytest.mark.parametrize("batch,frames,side", [(1, 4, 4), (2, 8, 3), (2, 3, 5)])
def test_strided_temporal_attention_equals_the_standard_one(batch, frames, side):
    torch.manual_seed(1)
    layer = VideoAttentionLayer("temporal", 32, 4)
    x = torch.randn(batch * frames, 32, side, side)
    calls = []
    with torch.inference_mode(), register_call_hook(lambda c: calls.append((c.batch, c.query_len))):
        for backend in ("baseline", "flash"):
            with use_backend(backend):
                standard = layer(x, frames)
                strided = layer(x, frames, "strided")
            assert strided_pass.relative_error(strided, standard) < 1e-5
    # the standard path makes one call over [B*H*W, heads, F, d]; the strided one a call per video over
    # [H*W, heads, F, d] views
    assert calls[0] == (batch * side * side, frames)
    assert calls[1:1 + batch] == [(side * side, frames)] * batch


def test_pass_on_a_temporal_transformer_is_equivalent_and_removable():
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    from genscope.models.layers.attention import install_attention

    torch.manual_seed(2)
    module = TransformerTemporalModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                      norm_num_groups=4).eval()
    install_attention(module, "t")
    x = torch.randn(2 * 5, 16, 3, 4)
    with torch.inference_mode():
        reference = module(x, num_frames=5).sample
    swaps = strided_pass.apply(module)
    assert [s.after for s in swaps].count("FrameStridedAttnProcessor") == 2  # attn1, attn2 (both self)
    with torch.inference_mode():
        patched = module(x, num_frames=5).sample
    assert strided_pass.relative_error(patched, reference) < 1e-5
    assert strided_pass.check_equivalence(module, x, 5) < 1e-5
    assert strided_pass.remove(module) == 1
    with torch.inference_mode():
        assert torch.equal(module(x, num_frames=5).sample, reference)


def _diffusers_core_flops(kind: str, frames: int, height: int, width: int, channels: int = 16,
                          heads: int = 2) -> int:
    """FLOPs of the two attention matmuls (QK^T, PV) of diffusers' own Attention module with its classic
    processor (baddbmm + softmax + bmm), counted by torch's FlopCounterMode on the meta device: spatial
    attention attends over the H*W positions of each frame, temporal over the F frames of each position."""
    from diffusers.models.attention_processor import Attention, AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, processor=AttnProcessor())
    batch, seq = (frames, height * width) if kind == "spatial" else (height * width, frames)
    x = torch.empty(batch, seq, channels, device="meta")  # x: [batch, sequence, C]
    with FlopCounterMode(display=False) as counter:
        attn.to("meta")(x)
    counts = counter.get_flop_counts()["Global"]
    return int(sum(v for op, v in counts.items() if op in (torch.ops.aten.bmm, torch.ops.aten.baddbmm)))


def test_crossover_and_exponents_derived_from_counted_flops():
    """Exponents and the crossover from FLOPs counted on diffusers' attention, not from the study's model."""
    frames = np.array([2, 4, 8, 16])
    height = width = 2  # the sweep's image size 16 -> a 2x2 latent
    counted = {kind: np.array([_diffusers_core_flops(kind, int(f), height, width) for f in frames], dtype=float)
               for kind in ("spatial", "temporal")}
    fitted = {kind: np.polyfit(np.log(frames), np.log(c), 1) for kind, c in counted.items()}  # log c = k log F + b
    # crossover: where the two fitted power laws meet, exp(b_s) F^k_s = exp(b_t) F^k_t
    (k_s, b_s), (k_t, b_t) = fitted["spatial"], fitted["temporal"]
    crossover = float(np.exp((b_s - b_t) / (k_t - k_s)))

    config = temporal_sweep.SweepConfig(frames=(2, 4, 8), image_sizes=(16,), channels=16, heads=2, repeat=1, warmup=0,
                                        min_time_s=0.0, counters="off")
    tables = temporal_sweep.run_sweep(config)
    fits = tables["fits"].set_index(["layer", "variant", "backend", "quantity"])["exponent"]
    assert fits[("spatial", "standard", "flash", "core_flops")] == pytest.approx(k_s, abs=1e-6)
    assert fits[("temporal", "standard", "flash", "core_flops")] == pytest.approx(k_t, abs=1e-6)
    cross = tables["crossover"].iloc[0]
    assert cross["predicted_frames"] == pytest.approx(crossover, rel=1e-6)
    assert cross["flops_grid_frames"] == pytest.approx(crossover, rel=1e-6)
    assert cross["predicted_status"] == "within the grid"
    assert (tables["speedup"]["rel_error"] < 1e-5).all()
    points = tables["points"]
    assert len(points) == 3 * 3 * 2 and np.isfinite(points["layer_ms"]).all()


def test_measured_crossover_interpolates_and_reports_beyond():
    f = np.array([2.0, 4.0, 8.0])
    value, status = temporal_sweep._measured_crossover(f, np.array([0.25, 0.5, 2.0]))
    assert status == "within the grid" and 4.0 < value < 8.0
    assert temporal_sweep._measured_crossover(f, np.array([0.1, 0.2, 0.4]))[1] == "beyond the grid (> 8 frames)"
    assert temporal_sweep._measured_crossover(f, np.array([1.5, 2.0, 4.0]))[1] == "at or below the grid"


@pytest.fixture(scope="module")
def split_tables():
    assert "make-a-video" in registry.available()  # part of the suite: missing is a failure, not a skip
    config = temporal_split.SplitConfig(workload="make-a-video", preset="tiny", steps=1, frames=3, repeat=1, warmup=0,
                               backends=("flash",), strided=True)
    return temporal_split.run_split(config)


def test_split_finds_spatial_and_temporal_calls_with_their_layouts(split_tables):
    calls = split_tables["calls"]
    frames, cfg_batch = 3, 2  # classifier-free guidance doubles the batch
    temporal = calls[calls["kind"] == "temporal"]
    spatial = calls[calls["kind"] == "self"]
    assert len(temporal) and len(spatial) and (calls["kind"] == "cross").any()
    assert (temporal["layout"] == "[B*H*W, heads, F, d]").all()
    assert (temporal["query_len"] == frames).all()
    assert set(temporal["batch"] // cfg_batch) <= {64, 16, 4, 1}  # H*W of the levels of the 8x8 latent
    assert (spatial["layout"] == "[B*F, heads, H*W, d]").all()
    assert (spatial["batch"] == cfg_batch * frames).all()
    assert set(spatial["query_len"]) <= {64, 16, 4, 1}
    assert temporal["path"].str.contains("temp_attentions|transformer_in").all()


def test_the_strided_count_leaves_the_shared_shape_only_pipeline_as_it_was(split_tables):
    """The strided variant's pass changes a model: it must be a build of its own, not the process's shared
    meta pipeline that later counts and traces of make-a-video read (Workload.shapes_pipeline)."""
    workload = registry.get("make-a-video")
    shared = workload.shapes_pipeline(workload.config("tiny"))
    assert not any(getattr(m, "_genscope_strided", False) for c in shared.components for m in c.module.modules())


def test_split_charges_time_flops_and_layout_copies(split_tables):
    split, summary, flops = split_tables["split"], split_tables["summary"], split_tables["flops"]
    std = split[split["variant"] == "standard"].set_index(["group", "component"])["time_ms"]
    for group in ("spatial", "temporal"):
        assert std[(group, "core")] > 0 and std[(group, "layout")] > 0 and std[(group, "projections")] > 0
    row = summary[summary["variant"] == "standard"].iloc[0]
    assert row["temporal_ms"] > row["temporal_core_ms"] > 0
    # FLOPs of the attention matmuls: the counter's (meta device) equal the call hook's
    core = flops[(flops["variant"] == "standard") & (flops["component"] == "core")].set_index("group")["flops"]
    assert core["spatial"] == row["spatial_core_flops"] and core["temporal"] == row["temporal_core_flops"]
    # the pass fuses the copy back to channel-first into the residual add: fewer temporal layout bytes
    layout = flops[(flops["component"] == "layout") & (flops["group"] == "temporal")].set_index("variant")["bytes"]
    assert layout["standard"] > 0 and layout.get("strided", 0) < layout["standard"]
    assert set(summary["variant"]) == {"standard", "strided"}


@pytest.mark.parametrize("argv", [
    ["--frames", "0"], ["--frames", "2,x"], ["--image-size", "30"], ["--image-size", "0"],
    ["--heads", "3"], ["--backends", "fast"], ["--no-sweep"], ["--model", "stable-diffusion", "--no-sweep"],
])
def test_bad_input_exits_2(argv, capsys):
    assert main(["temporal", "--no-store", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genscope: error:")


def test_counters_requested_where_none_exist_exit_2(capsys, monkeypatch):
    import genscope.instrument.counters as counters

    # a machine without counters, whatever this one has
    monkeypatch.setattr(counters, "counters_available", lambda device: (False, "no perf events here"))
    assert main(["temporal", "--no-store", "--counters", "--frames", "2", "--image-size", "16"]) == 2
    assert "counters" in capsys.readouterr().err


def test_cli_stores_the_sweep_and_the_report_draws_it(tmp_path, capsys):
    from genscope.report.temporal import temporal_section
    from genscope.results.store import ResultsStore

    db = tmp_path / "r.db"
    argv = ["temporal", "--frames", "2,4", "--image-size", "16", "--channels", "16", "--heads", "2",
            "--repeat", "1", "--warmup", "0", "--no-counters", "--db", str(db), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sweep"]["run_id"] is not None
    store = ResultsStore(db)
    record = store.latest("temporal", workload=SWEEP_WORKLOAD)
    assert record is not None and set(record.tables) >= {"points", "fits", "crossover", "speedup"}
    html = "".join(temporal_section(store))
    assert "Figure 14" in html and "<img" in html
