import pytest
from helpers import assert_backends_agree, assert_baseline_uses_more_memory, run_tiny

from genscope.cli import main
from genscope.workloads import registry


def test_tiny_run_has_phases_and_an_image():
    pipeline, request, gen, times = run_tiny("prod-image", steps=3)
    assert times.counts() == {"text_encoder": 1, "denoise": 3, "decoder": 1}
    assert gen.images[0].size == (request.image_size, request.image_size) == (64, 64)
    assert gen.raw.shape == (1, 3, 64, 64)


def test_sdxl_conditioning_reaches_the_unet():
    """Penultimate states of both encoders concatenated, bigG's pooled projection, size/crop ids; zero uncond."""
    captured = {}
    pipeline, request, _, _ = run_tiny("prod-image", steps=1, image_size=128)
    unet = pipeline.component("denoiser")
    handle = unet.register_forward_pre_hook(lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True)
    try:
        pipeline(request)
    finally:
        handle.remove()
    text = captured["encoder_hidden_states"]
    widths = [pipeline.component(n).config.hidden_size for n in ("text_encoder", "text_encoder_2")]
    assert text.shape == (2, pipeline.config.text_len, sum(widths)) == (2, 16, unet.config.cross_attention_dim)
    added = captured["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, pipeline.component("text_encoder_2").config.projection_dim)
    assert added["time_ids"].tolist() == [[128, 128, 0, 0, 128, 128]] * 2
    # empty negative prompt -> zero embeddings (force_zeros_for_empty_prompt), the prompt's are not zero
    assert (text[0] == 0).all() and (added["text_embeds"][0] == 0).all()
    assert not (text[1] == 0).all()


def test_seeded_runs_are_deterministic_and_seed_matters():
    a = run_tiny("prod-image", seed=1, steps=1)[2].raw
    b = run_tiny("prod-image", seed=1, steps=1)[2].raw
    c = run_tiny("prod-image", seed=2, steps=1)[2].raw
    assert (a == b).all()
    assert not (a == c).all()


def test_baseline_and_flash_agree():
    assert_backends_agree("prod-image", steps=1)


def test_baseline_peak_memory_is_larger_at_long_sequence():
    # 512 px -> latent 64x64 -> the VAE decoder's mid-block attention over 4096 tokens (SDXL's UNet has no
    # attention at the latent's full resolution)
    assert_baseline_uses_more_memory("prod-image", image_size=512, steps=1)


def test_every_attention_goes_through_the_entry_point():
    from diffusers.models.attention_processor import Attention

    from genscope.models.layers.attention import GenscopeAttnProcessor, register_call_hook

    calls = []
    with register_call_hook(calls.append):
        pipeline, _, _, _ = run_tiny("prod-image", steps=1)
    used = {s for s in pipeline.sites if not s.path.startswith("decoder.encoder")}
    assert {c.site for c in calls} == used
    attn = [m for m in pipeline.component("denoiser").modules() if isinstance(m, Attention)]
    assert attn and all(isinstance(m.processor, GenscopeAttnProcessor) for m in attn)
    assert {s.kind for s in pipeline.sites if s.path.startswith("denoiser")} == {"self", "cross"}
    for name in ("text_encoder.", "text_encoder_2."):
        assert {s.kind for s in pipeline.sites if s.path.startswith(name)} == {"causal"}
    # no attention at the highest UNet level (SDXL's DownBlock2D / UpBlock2D)
    assert not any(s.path.startswith(("denoiser.down_blocks.0.", "denoiser.up_blocks.2.")) for s in pipeline.sites)


def test_paper_preset_matches_published_sdxl_base():
    """References built directly with diffusers/transformers from stable-diffusion-xl-base-1.0's configs."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
        "center_input_sample": False, "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
    }
    with torch.device("meta"):
        ref_unet = UNet2DConditionModel.from_config(unet_config)
        ref_text = CLIPTextModel(CLIPTextConfig(  # text_encoder/config.json
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
        ref_text_2 = CLIPTextModelWithProjection(CLIPTextConfig(  # text_encoder_2/config.json
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))
    info = {c.name: c.params for c in registry.get("prod-image").describe("paper")}
    # published: SDXL UNet 2,567,463,684 (Podell et al. 2023: "2.6B"); CLIP ViT-L/14 text 123,060,480
    assert info["denoiser"] == sum(p.numel() for p in ref_unet.parameters()) == 2_567_463_684
    assert info["text_encoder"] == sum(p.numel() for p in ref_text.parameters()) == 123_060_480
    assert info["text_encoder_2"] == sum(p.numel() for p in ref_text_2.parameters()) == 694_659_840
    config = registry.get("prod-image").config("paper")
    assert (config.image_size, config.steps, config.guidance_scale) == (1024, 50, 5.0)


@pytest.mark.parametrize("argv, needle", [
    (["run", "prod-image", "--preset", "tiny", "--image-size", "100"], "multiple of 32"),
    (["run", "prod-image", "--preset", "paper", "--image-size", "1000"], "multiple of 32"),
    (["run", "prod-image", "--preset", "tiny", "--steps", "0"], "steps 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_weights_folder_loads_safetensors(tmp_path):
    """A diffusers-layout SDXL folder (safetensors) loads and gives the same output as the built model."""
    workload = registry.get("prod-image")
    pipeline, _, gen, _ = run_tiny("prod-image", steps=1)
    for comp, folder in zip(("text_encoder", "text_encoder_2", "denoiser", "decoder"), workload.weights_subfolders,
                            strict=True):
        pipeline.component(comp).save_pretrained(tmp_path / folder, safe_serialization=True)
    _, _, loaded, _ = run_tiny("prod-image", steps=1, weights=str(tmp_path))
    assert (loaded.raw - gen.raw).abs().max() < 1e-5
