"""wan: Wan 2.1 text-to-video (diffusion transformer with full 3-D attention)."""

import pytest
import torch
from dit_checks import (
    assert_matches_diffusers_processors,
    assert_refused,
    count_modules,
    denoise_calls,
    described,
    n_params,
    tiny_on_meta,
    trace_tiny,
)
from helpers import assert_backends_agree, run_tiny

# diffusers scripts/convert_wan_to_diffusers.py, "Wan-T2V-14B" and "Wan-T2V-1.3B" diffusers_config
WAN_14B = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=13824,
               freq_dim=256, in_channels=16, num_attention_heads=40, num_layers=40, out_channels=16,
               patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=4096)
WAN_1_3B = dict(WAN_14B, ffn_dim=8960, num_attention_heads=12, num_layers=30)
# google/umt5-xxl config.json
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.mark.slow
def test_paper_parameter_counts_equal_published_configs():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(WAN_14B)
        small_transformer = WanTransformer3DModel.from_config(WAN_1_3B)
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        vae = AutoencoderKLWan()  # the conversion script's defaults
    ours = described("wan")
    assert ours["denoiser"] == n_params(transformer)
    assert 14.0e9 < ours["denoiser"] < 14.5e9  # "14B"
    assert ours["text_encoder"] == n_params(text_encoder)
    assert ours["decoder"] == n_params(vae.decoder, vae.post_quant_conv)
    assert described("wan", "1.3b")["denoiser"] == n_params(small_transformer)


def test_tiny_run_makes_a_video_of_the_requested_frames():
    _, request, gen, times = run_tiny("wan", frames=9, steps=2)
    assert times.counts() == {"text_encoder": 1, "denoise": 2, "decoder": 1}
    assert gen.raw.shape == (1, 3, 9, 32, 64)  # tiny: 32 x 64 pixels
    assert gen.raw.isfinite().all() and len(gen.videos[0]) == 9


def test_entry_point_sees_every_attention_call_with_analytical_lengths():
    steps, frames, height, width = 2, 5, 48, 96  # tiny's 1:2 aspect at 48 px high
    trace = trace_tiny("wan", steps=steps, frames=frames, image_size=height)
    calls = denoise_calls(trace)
    pipeline_modules = count_modules(tiny_on_meta("wan").component("denoiser"), "WanAttention")
    assert len(calls) == pipeline_modules * steps  # attn1 + attn2 per block, every step
    tokens = (1 + (frames - 1) // 4) * (height // 16) * (width // 16)  # F_latent/p_t * H/(8p) * W/(8p)
    self_calls, cross_calls = calls[calls["kind"] == "spatiotemporal"], calls[calls["kind"] == "cross"]
    assert len(self_calls) == len(cross_calls) == pipeline_modules // 2 * steps
    assert (self_calls["query_len"] == tokens).all() and (self_calls["key_len"] == tokens).all()
    assert (self_calls["context_len"] == 0).all() and (self_calls["media_len"] == tokens).all()
    assert (cross_calls["key_len"] == 12).all() and (cross_calls["context_len"] == 12).all()  # text tokens
    assert (calls["batch"] == 2).all()  # CFG: [uncond; cond] in one call
    from genscope.instrument.seqlen import kernels_by_kind

    kernels = kernels_by_kind(trace.calls).set_index("kind")
    assert (kernels["kernel"] == "flash").all()  # CPU: every call on the fused kernel, none on the math path
    assert kernels.loc["spatiotemporal", "calls"] == len(self_calls)


@pytest.mark.slow
def test_genscope_processors_match_diffusers_own():
    assert_matches_diffusers_processors("wan")


def test_backends_agree():
    assert_backends_agree("wan", steps=1)


def test_bad_frames_and_sizes_are_refused_with_the_rule():
    assert_refused("wan", r"frames must be 4k\+1", frames=8)
    assert_refused("wan", "multiple of 16", image_size=40)
