"""hunyuan-video: HunyuanVideo text-to-video (dual- then single-stream blocks over [video; text], distilled)."""

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

# diffusers scripts/convert_hunyuan_video_to_diffusers.py TRANSFORMER_CONFIGS["HYVideo-T/2-cfgdistill"]
HUNYUAN = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
               num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
               qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
               rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# xtuner/llava-llama-3-8b-v1_1-transformers text config (the language model HunyuanVideo encodes with)
LLAVA_LLAMA3 = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


@pytest.mark.slow
def test_paper_parameter_counts_equal_published_configs():
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    with torch.device("meta"):
        transformer = HunyuanVideoTransformer3DModel.from_config(HUNYUAN)
        llama = LlamaModel(LlamaConfig(**LLAVA_LLAMA3))
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        vae = AutoencoderKLHunyuanVideo()
    ours = described("hunyuan-video")
    assert ours["denoiser"] == n_params(transformer) and 12.7e9 < ours["denoiser"] < 12.9e9  # "13B"
    assert ours["text_encoder"] == n_params(llama) and ours["text_encoder_2"] == n_params(clip)
    assert ours["decoder"] == n_params(vae.decoder, vae.post_quant_conv)


def test_tiny_run_makes_a_video_of_the_requested_frames():
    _, _, gen, _ = run_tiny("hunyuan-video", frames=9, steps=1)
    assert gen.raw.shape == (1, 3, 9, 32, 64) and gen.raw.isfinite().all()


def test_entry_point_sees_every_call_with_analytical_lengths():
    steps, frames, height, width, text = 2, 5, 48, 96, 12
    trace = trace_tiny("hunyuan-video", steps=steps, frames=frames, image_size=height)
    calls = denoise_calls(trace)
    denoiser = tiny_on_meta("hunyuan-video").component("denoiser")
    assert len(calls) == count_modules(denoiser, "Attention") * steps  # refiner + dual + single blocks
    video = calls[calls["kind"] == "spatiotemporal"]
    assert len(video) == (1 + 1) * steps  # tiny: one dual-stream and one single-stream block
    video_tokens = (1 + (frames - 1) // 4) * (height // 16) * (width // 16)
    assert (video["query_len"] == video_tokens + text).all() and (video["media_len"] == video_tokens).all()
    assert (video["context_len"] == text).all() and video["batch"].eq(1).all()  # distilled: no CFG batch
    assert video["backend"].eq("flash").all()


@pytest.mark.slow
def test_genscope_processors_match_diffusers_own():
    assert_matches_diffusers_processors("hunyuan-video")


def test_backends_agree():
    assert_backends_agree("hunyuan-video", steps=1)


def test_bad_frames_are_refused_with_the_rule():
    assert_refused("hunyuan-video", r"frames must be 4k\+1", frames=6)
