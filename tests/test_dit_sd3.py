"""sd3: Stable Diffusion 3.5 Large text-to-image (MMDiT: joint attention over [image; text], CFG)."""

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

# stabilityai/stable-diffusion-3.5-large transformer/config.json
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
                  dual_attention_layers=[])
# text_encoder (CLIP-L), text_encoder_2 (OpenCLIP bigG), text_encoder_3 (T5-v1.1-XXL) config.json
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False)
VAE16 = dict(latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
             down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
             use_quant_conv=False, use_post_quant_conv=False)


@pytest.mark.slow
def test_paper_parameter_counts_equal_published_configs():
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(SD35_LARGE)
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        vae = AutoencoderKL.from_config(VAE16)
    ours = described("sd3")
    assert ours["denoiser"] == n_params(transformer)
    assert 8.0e9 < ours["denoiser"] < 8.2e9  # "8.1B"
    assert (ours["text_encoder"], ours["text_encoder_2"], ours["text_encoder_3"]) == (
        n_params(clip_l), n_params(clip_g), n_params(t5))
    assert ours["decoder"] == n_params(vae.decoder)


def test_tiny_run_makes_an_image():
    _, _, gen, times = run_tiny("sd3", steps=2)
    assert times.counts() == {"text_encoder": 1, "denoise": 2, "decoder": 1}
    assert gen.raw.shape == (1, 3, 64, 64) and gen.raw.isfinite().all()


def test_entry_point_sees_every_joint_call_with_text_and_image_tokens_apart():
    steps, size = 2, 96
    text = 16 + 12  # CLIP tokens (tiny context 16) followed by T5 tokens (tiny 12)
    trace = trace_tiny("sd3", steps=steps, image_size=size)
    calls = denoise_calls(trace)
    modules = count_modules(tiny_on_meta("sd3").component("denoiser"), "Attention")
    assert modules == 2 and len(calls) == modules * steps
    image_tokens = (size // 16) ** 2  # latent H/8, patch 2
    assert (calls["kind"] == "joint").all() and (calls["batch"] == 2).all()  # CFG: [uncond; cond]
    assert (calls["query_len"] == image_tokens + text).all()
    assert (calls["context_len"] == text).all() and (calls["media_len"] == image_tokens).all()


@pytest.mark.slow
def test_genscope_processors_match_diffusers_own():
    assert_matches_diffusers_processors("sd3")


def test_backends_agree():
    assert_backends_agree("sd3", steps=1)


def test_bad_size_is_refused_with_the_rule():
    assert_refused("sd3", "multiple of 16", image_size=100)
