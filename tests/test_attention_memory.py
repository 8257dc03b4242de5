"""The Section V-A similarity-matrix memory model: exact against traced calls, d^2n not d^n, O(L^4)."""

import pytest
import torch

from genscope.cli import main
from genscope.models.stable_diffusion import PAPER as SD_PAPER
from genscope.studies.attention_memory import (
    UNetAttentionLayout,
    check_against_trace,
    denoiser_geometry,
    level_lengths_vs_paper,
    memory_scaling,
    model_bytes,
    paper_formula_bytes,
    predict_calls,
)
from genscope.workloads import registry


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from 2 threads; on a busy machine the 2nd thread's spin-waits cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_exact(summary):
    assert summary["exact"].all(), summary.to_string()
    assert (summary["calls_mismatched"] == 0).all()
    assert (summary["bytes_model"] == summary["bytes_trace"]).all()
    assert (summary["bytes_closed_form"] == summary["bytes_model"]).all()


def test_model_equals_traced_matrices_for_stable_diffusion_at_three_sizes():
    summary, detail, _ = check_against_trace("stable-diffusion", [64, 128, 192], preset="tiny", device="cpu",
                                             dtype="float32", steps=1)
    _assert_exact(summary)
    assert summary["input_side"].tolist() == [8, 16, 24]
    assert (detail["traced_bytes"] == detail["similarity_bytes"]).all()
    # without guidance the batch halves, and the model follows
    summary, _, _ = check_against_trace("stable-diffusion", [64], preset="tiny", device="cpu", dtype="float32",
                                        steps=1, guidance_scale=1.0)
    _assert_exact(summary)
    assert summary["batch"].tolist() == [1]


def test_model_equals_traced_matrices_for_imagen():
    """Joint text+image (added-KV) attention, cross-attention-only blocks and IF's text pooling, all three UNets.
    The tiny cascade takes two output sizes (128 and 256); the third setting turns guidance off (batch 1)."""
    summary, _, _ = check_against_trace("imagen", [128, 256], preset="tiny", device="cpu", dtype="float32", steps=1)
    _assert_exact(summary)
    assert set(summary["component"]) == {"denoiser", "sr_256", "sr_1024"}
    layout = UNetAttentionLayout.from_spec(registry.get("imagen").config("tiny").denoiser)
    assert {c.keys for c in layout.calls} == {"joint", "pool"}
    summary, _, _ = check_against_trace("imagen", [128], preset="tiny", device="cpu", dtype="float32", steps=1,
                                        guidance_scale=1.0)
    _assert_exact(summary)
    assert set(summary["batch"]) == {1}


def test_sd_paper_layout_is_the_published_unet():
    layout = UNetAttentionLayout.from_spec(SD_PAPER.denoiser)
    per_level = layout.per_level().set_index(["level", "section", "keys"])["modules"]
    for level in (0, 1, 2):  # 2 transformer blocks down, 3 up, each one self + one cross call
        assert per_level[(level, "down", "self")] == per_level[(level, "down", "text")] == 2
        assert per_level[(level, "up", "self")] == per_level[(level, "up", "text")] == 3
    assert per_level[(3, "mid", "self")] == per_level[(3, "mid", "text")] == 1
    assert len(layout.calls) == 32 and {c.heads for c in layout.calls} == {8}
    # 512 px: 64 x 64 latent, CFG batch 2, fp16: 4096^2 x 8 heads x 2 x 2 bytes for the largest matrix
    calls = predict_calls(layout, 64, 64, 77, batch=2, dtype="float16")
    assert calls["similarity_bytes"].max() == 2 * 8 * 4096 * 4096 * 2
    assert calls["query_len"].tolist()[:8] == [4096] * 4 + [1024] * 4


def test_generalized_model_reduces_to_the_papers_formula_v2_not_v1():
    for side, text, depth in ((64, 77, 3), (32, 16, 2), (128, 77, 4)):
        layout = UNetAttentionLayout.paper(depth)
        general = model_bytes(layout, side, side, text, batch=1, dtype="float16")
        assert general == paper_formula_bytes(side, side, text, depth, variant="v2")
        assert general != paper_formula_bytes(side, side, text, depth, variant="v1")


def test_traced_level_lengths_follow_d_2n():
    from genscope.instrument.seqlen import trace_workload

    trace = trace_workload("stable-diffusion", preset="tiny", device="cpu", image_size=128, steps=1)
    geometry = denoiser_geometry("stable-diffusion", trace.config, trace.request)[0]
    levels = level_lengths_vs_paper(trace.calls, geometry)
    assert levels["level"].tolist() == [0, 1, 2, 3]
    assert levels["traced_query_len"].tolist() == [256, 64, 16, 4]
    assert levels["v2_matches"].all()
    assert not levels.loc[levels["level"] > 0, "v1_matches"].any()


def test_memory_grows_as_the_fourth_power_of_the_latent_side():
    table, fit = memory_scaling(SD_PAPER.denoiser, [32, 64, 128, 256], text_len=77, batch=2)
    image = table["image_key_bytes"].to_numpy()
    assert (image[1:] == 16 * image[:-1]).all()  # image x image part: exactly x16 per doubling of the side
    assert (table["text_key_bytes"].to_numpy()[1:] == 4 * table["text_key_bytes"].to_numpy()[:-1]).all()
    assert 3.95 < fit["exponent_largest"] <= 4.0
    assert 3.7 < fit["exponent_fit"] < 4.0  # the cross-attention term (L^2) pulls the small sizes down


def test_cli_memory_model_bad_input(capsys):
    assert main(["memory-model", "llama", "--no-store"]) == 2
    assert "stable-diffusion" in capsys.readouterr().err
    assert main(["memory-model", "stable-diffusion", "--preset", "tiny", "--image-size", "100", "--no-store"]) == 2
    assert "image size 100" in capsys.readouterr().err
