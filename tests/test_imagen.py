import pytest
from helpers import assert_backends_agree, assert_baseline_uses_more_memory, run_tiny

from genscope.cli import main
from genscope.workloads import registry
from genscope.workloads.base import RunSettings


def test_tiny_cascade_has_every_stage_and_the_output_size():
    pipeline, request, gen, times = run_tiny("imagen", steps=2)
    assert times.counts() == {"text_encoder": 1, "denoise": 2, "sr_256": 2, "sr_1024": 2, "decoder": 1}
    assert gen.info["stage_sizes"] == [8, 32, 128]  # base x4 (pixel SR) x4 (x4 upscaler's VAE)
    assert request.image_size == 128
    assert gen.images[0].size == (128, 128)
    assert gen.raw.shape == (1, 3, 128, 128)


def test_steps_and_guidance_per_stage():
    workload = registry.get("imagen")
    default = workload.request(RunSettings(preset="tiny"))
    assert default.stage_steps == (2, 1, 1)  # the tiny preset's base / sr_256 / sr_1024 defaults
    assert default.stage_guidance == (7.0, 4.0, 9.0)  # IFPipeline / IFSuperResolution / SD upscaler defaults
    given = workload.request(RunSettings(preset="tiny", steps=3, guidance_scale=5.0))
    assert given.stage_steps == (3, 3, 3)
    assert given.stage_guidance == (5.0, 5.0, 5.0)
    paper = workload.config("paper")
    assert (paper.steps, paper.sr_256_steps, paper.sr_1024_steps) == (100, 50, 75)
    assert paper.stage_sizes(paper.image_size) == (64, 256, 1024)


def test_seeded_runs_are_deterministic_and_seed_matters():
    # DDPM steps draw noise: the run's generator must make them reproducible
    a = run_tiny("imagen", seed=1, steps=1)[2].raw
    b = run_tiny("imagen", seed=1, steps=1)[2].raw
    c = run_tiny("imagen", seed=2, steps=1)[2].raw
    assert (a == b).all()
    assert not (a == c).all()


def test_baseline_and_flash_agree():
    assert_backends_agree("imagen", steps=1)


def test_baseline_peak_memory_is_larger_at_long_sequence():
    # 256 px output -> x4 latents 64x64 -> the VAE decoder's mid-block attention over 4096 tokens
    assert_baseline_uses_more_memory("imagen", image_size=256, steps=1)


def test_every_attention_goes_through_the_entry_point():
    from diffusers.models.attention_processor import Attention

    from genscope.models.layers.attention import (
        GenscopeAddedKVAttnProcessor,
        GenscopeAttnProcessor,
        register_call_hook,
    )

    calls = []
    with register_call_hook(calls.append):
        pipeline, request, _, _ = run_tiny("imagen", steps=1)
    used = {s for s in pipeline.sites if not s.path.startswith("decoder.encoder")}  # the VAE encoder is unused
    assert {c.site for c in calls} == used
    for name in ("denoiser", "sr_256"):  # IF UNets: joint text+image attention through added K/V projections
        attn = [m for m in pipeline.component(name).modules() if isinstance(m, Attention)]
        assert attn and all(isinstance(m.processor, GenscopeAddedKVAttnProcessor) for m in attn)
        joint = [c for c in calls if c.path.startswith(name) and c.site.joint_context]
        assert joint and all(c.key_len == c.context_len + c.query_len for c in joint)
        assert all(c.context_len == request_len(pipeline) for c in joint)
        # IF's text pooling (addition_embed_type "text") is routed too: one query over [class; text tokens]
        pool = [c for c in calls if c.path == f"{name}.add_embedding.pool"]
        assert pool and all(c.query_len == 1 and c.key_len == 1 + request_len(pipeline) for c in pool)
    attn = [m for m in pipeline.component("sr_1024").modules() if isinstance(m, Attention)]
    assert attn and all(isinstance(m.processor, GenscopeAttnProcessor) for m in attn)
    assert {s.kind for s in pipeline.sites if s.path.startswith("text_encoder_2")} == {"causal"}
    assert {s.kind for s in pipeline.sites if s.path.startswith("text_encoder.")} == {"self"}  # T5 encoder


def request_len(pipeline) -> int:
    return pipeline.config.text_len


def test_paper_preset_matches_published_deepfloyd_if_cascade():
    """References built directly with diffusers/transformers from the published config.json dicts."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if_i_xl = {  # DeepFloyd/IF-I-XL-v1.0 unet/config.json
        "act_fn": "gelu", "addition_embed_type": "text", "addition_embed_type_num_heads": 64,
        "attention_head_dim": 64, "block_out_channels": [704, 1408, 2112, 2816], "class_embed_type": None,
        "cross_attention_dim": 2816, "cross_attention_norm": "group_norm",
        "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                             "SimpleCrossAttnDownBlock2D"],
        "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj", "in_channels": 3, "layers_per_block": 3,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "out_channels": 6,
        "resnet_time_scale_shift": "scale_shift", "sample_size": 64,
        "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                           "ResnetUpsampleBlock2D"],
    }
    if_ii_l = {  # DeepFloyd/IF-II-L-v1.0 unet/config.json
        "act_fn": "gelu", "addition_embed_type": "text", "addition_embed_type_num_heads": 64,
        "attention_head_dim": 64, "block_out_channels": [160, 320, 640, 960, 1280], "class_embed_type": "timestep",
        "cross_attention_dim": 1280, "cross_attention_norm": "group_norm",
        "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["SimpleCrossAttnDownBlock2D"] * 2,
        "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj", "in_channels": 6,
        "layers_per_block": [2, 2, 3, 5, 5], "mid_block_scale_factor": 1.4142271248762552,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "out_channels": 6,
        "resnet_out_scale_factor": 1.4142271248762552, "resnet_skip_time_act": True,
        "resnet_time_scale_shift": "scale_shift", "sample_size": 256,
        "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 2 + ["ResnetUpsampleBlock2D"] * 3,
    }
    x4_unet = {  # stabilityai/stable-diffusion-x4-upscaler unet/config.json
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
        "cross_attention_dim": 1024,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 7, "layers_per_block": 2, "num_class_embeds": 1000,
        "only_cross_attention": [True, True, True, False], "out_channels": 4, "sample_size": 128,
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }
    x4_vae = {  # stabilityai/stable-diffusion-x4-upscaler vae/config.json
        "block_out_channels": [128, 256, 512], "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3, "latent_channels": 4, "layers_per_block": 2,
        "sample_size": 256, "scaling_factor": 0.08333,
    }
    with torch.device("meta"):
        ref = {
            "text_encoder": T5EncoderModel(T5Config(  # google/t5-v1_1-xxl config.json
                d_ff=10240, d_kv=64, d_model=4096, num_heads=64, num_layers=24, vocab_size=32128,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)),
            "denoiser": UNet2DConditionModel.from_config(if_i_xl),
            "sr_256": UNet2DConditionModel.from_config(if_ii_l),
            "text_encoder_2": CLIPTextModel(CLIPTextConfig(  # stable-diffusion-x4-upscaler text_encoder/config.json
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                hidden_act="gelu", projection_dim=512, vocab_size=49408, max_position_embeddings=77)),
            "sr_1024": UNet2DConditionModel.from_config(x4_unet),
        }
        vae = AutoencoderKL.from_config(x4_vae)
    info = {c.name: c.params for c in registry.get("imagen").describe("paper")}
    for name, module in ref.items():
        assert info[name] == sum(p.numel() for p in module.parameters()), name
    assert info["decoder"] == sum(p.numel() for m in (vae.decoder, vae.post_quant_conv) for p in m.parameters())
    # published counts: T5-v1.1-XXL encoder 4,762,310,656; model cards: IF-I-XL "Num Parameters: 4.3B",
    # IF-II-L "Num Parameters: 1.2B"
    assert info["text_encoder"] == 4_762_310_656
    assert info["denoiser"] == 4_304_695_110 and round(info["denoiser"] / 1e9, 1) == 4.3
    assert info["sr_256"] == 1_187_608_070 and round(info["sr_256"] / 1e9, 1) == 1.2
    assert info["sr_1024"] == 473_398_020
    assert info["text_encoder_2"] == 340_387_840


@pytest.mark.parametrize("argv, needle", [
    (["run", "imagen", "--preset", "tiny", "--image-size", "100"], "multiple of 128"),
    (["run", "imagen", "--preset", "tiny", "--image-size", "384"], "up to 256"),
    (["run", "imagen", "--preset", "paper", "--image-size", "1000"], "multiple of 128"),
    (["run", "imagen", "--preset", "tiny", "--steps", "0"], "steps 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_weights_folder_loads_safetensors(tmp_path):
    """IF-I folder as DIR, IF-II in DIR/sr_256, x4 upscaler in DIR/sr_1024: same output as the built model."""
    workload = registry.get("imagen")
    pipeline, _, gen, _ = run_tiny("imagen", steps=1)
    for comp, folder in zip(("text_encoder", "denoiser", "sr_256", "text_encoder_2", "sr_1024", "decoder"),
                            workload.weights_subfolders, strict=True):
        pipeline.component(comp).save_pretrained(tmp_path / folder, safe_serialization=True)
    _, _, loaded, _ = run_tiny("imagen", steps=1, weights=str(tmp_path))
    assert (loaded.raw - gen.raw).abs().max() < 1e-5
