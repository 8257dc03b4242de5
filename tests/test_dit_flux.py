"""flux: FLUX.1-dev text-to-image (MMDiT: dual-stream then single-stream joint attention, guidance-distilled)."""

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

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])
# openai/clip-vit-large-patch14 (text tower) and google/t5-v1_1-xxl config.json
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False)
# FLUX.1-dev vae/config.json (16 latent channels, no quant convs)
VAE16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
             layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
             use_quant_conv=False, use_post_quant_conv=False)


@pytest.mark.slow
def test_paper_parameter_counts_equal_published_configs():
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(FLUX_DEV)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        vae = AutoencoderKL.from_config(VAE16)
    ours = described("flux")
    assert ours["denoiser"] == n_params(transformer)
    assert 11.8e9 < ours["denoiser"] < 12.0e9  # "12B"
    assert ours["text_encoder"] == n_params(clip) and ours["text_encoder_2"] == n_params(t5)
    assert ours["decoder"] == n_params(vae.decoder)


def test_tiny_run_makes_an_image():
    _, _, gen, times = run_tiny("flux", steps=2)
    assert times.counts() == {"text_encoder": 1, "denoise": 2, "decoder": 1}
    assert gen.raw.shape == (1, 3, 64, 64) and gen.raw.isfinite().all()


def test_entry_point_sees_every_joint_call_with_text_and_image_tokens_apart():
    steps, size, text = 3, 96, 12
    trace = trace_tiny("flux", steps=steps, image_size=size)
    calls = denoise_calls(trace)
    modules = count_modules(tiny_on_meta("flux").component("denoiser"), "FluxAttention")  # dual + single
    assert modules == 2 and len(calls) == modules * steps
    image_tokens = (size // 16) ** 2  # latent H/8 packed 2x2
    assert (calls["kind"] == "joint").all() and (calls["batch"] == 1).all()  # guidance-distilled: no CFG batch
    assert (calls["query_len"] == image_tokens + text).all() and (calls["key_len"] == image_tokens + text).all()
    assert (calls["context_len"] == text).all() and (calls["media_len"] == image_tokens).all()


@pytest.mark.slow
def test_genscope_processors_match_diffusers_own():
    assert_matches_diffusers_processors("flux")


def test_backends_agree():
    assert_backends_agree("flux", steps=1)


def test_bad_size_is_refused_with_the_rule():
    assert_refused("flux", "multiple of 16", image_size=72)
