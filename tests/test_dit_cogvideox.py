"""cogvideox: CogVideoX-5B text-to-video (one sequence [text; video] with full 3-D attention, CFG)."""

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

# THUDM/CogVideoX-5b transformer/config.json (the rest are the class defaults, equal to the published file)
COGVIDEOX_5B = dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, use_rotary_positional_embeddings=True,
                    in_channels=16, out_channels=16, text_embed_dim=4096, time_embed_dim=512, patch_size=2,
                    sample_frames=49, sample_height=60, sample_width=90, max_text_seq_length=226)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.mark.slow
def test_paper_parameter_counts_equal_published_configs():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = CogVideoXTransformer3DModel.from_config(COGVIDEOX_5B)
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        vae = AutoencoderKLCogVideoX(scaling_factor=0.7)
    ours = described("cogvideox")
    assert ours["denoiser"] == n_params(transformer) and 5.4e9 < ours["denoiser"] < 5.7e9  # "5B"
    assert ours["text_encoder"] == n_params(t5)
    assert ours["decoder"] == n_params(vae.decoder)


def test_tiny_run_makes_a_video_of_the_requested_frames():
    _, _, gen, _ = run_tiny("cogvideox", frames=9, steps=1)
    assert gen.raw.shape == (1, 3, 9, 32, 64) and gen.raw.isfinite().all()


def test_entry_point_sees_every_call_with_analytical_lengths():
    steps, frames, height, width, text = 2, 9, 48, 96, 12
    trace = trace_tiny("cogvideox", steps=steps, frames=frames, image_size=height)
    calls = denoise_calls(trace)
    modules = count_modules(tiny_on_meta("cogvideox").component("denoiser"), "Attention")
    assert len(calls) == modules * steps
    video_tokens = (1 + (frames - 1) // 4) * (height // 16) * (width // 16)
    assert (calls["kind"] == "spatiotemporal").all() and (calls["batch"] == 2).all()
    assert (calls["query_len"] == video_tokens + text).all() and (calls["media_len"] == video_tokens).all()
    assert (calls["context_len"] == text).all()


@pytest.mark.slow
def test_genscope_processors_match_diffusers_own():
    assert_matches_diffusers_processors("cogvideox")


def test_backends_agree():
    assert_backends_agree("cogvideox", steps=1)


def test_bad_frames_are_refused_with_the_rule():
    assert_refused("cogvideox", r"frames must be 8k\+1", frames=13)  # 4 latent frames: even
    assert_refused("cogvideox", "multiple of 16", image_size=24)
