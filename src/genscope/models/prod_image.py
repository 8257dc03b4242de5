"""Prod Image: the paper's production-scale latent text-to-image model, as the SDXL base architecture.

The paper's "Prod Image" is an internal model (a Stable-Diffusion-style latent UNet at production scale,
Table II); its configuration is not published. SDXL base 1.0 is the open model of that class: a 2.6B-parameter
latent UNet with two text encoders, micro-conditioning on image size and crop, 1024x1024 output.

Components: CLIP ViT-L/14 text encoder + OpenCLIP ViT-bigG/14 text encoder (with projection) -> UNet (CFG,
N steps; cross-attention on the two encoders' penultimate hidden states concatenated to 2048 channels; the
pooled, projected bigG embedding and the six size/crop "time ids" enter through ``add_embedding``)
-> VAE decoder.

Sources of the ``paper`` preset (values copied from stabilityai/stable-diffusion-xl-base-1.0):
* UNet: ``unet/config.json`` (320/640/1280, DownBlock2D then two CrossAttn levels, transformer_layers_per_block
  1/2/10, attention_head_dim 5/10/20 (= heads; 64 channels each), cross_attention_dim 2048,
  addition_embed_type "text_time", addition_time_embed_dim 256, projection_class_embeddings_input_dim 2816,
  linear projections): 2,567,463,684 parameters. Podell et al., "SDXL", 2023, Table 1 ("2.6B").
* text_encoder: ``text_encoder/config.json`` (CLIP ViT-L/14 text tower, 123,060,480 parameters).
* text_encoder_2: ``text_encoder_2/config.json`` (OpenCLIP ViT-bigG/14 text tower: 1280 wide, 32 layers,
  20 heads, 5120 MLP, gelu, projection 1280; 694,659,840 parameters).
* VAE: ``vae/config.json`` (KL-f8 as SD, scaling_factor 0.13025, sample_size 1024).
* Scheduler: ``scheduler/scheduler_config.json`` (EulerDiscreteScheduler, scaled_linear 0.00085-0.012,
  leading timestep spacing, steps_offset 1); 50 steps and guidance 5.0 are the defaults of diffusers'
  ``StableDiffusionXLPipeline``; ``model_index.json`` sets ``force_zeros_for_empty_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from genscope.models.base import PresetTable
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import LatentDiffusionConfig, clip_text_spec, kl_vae_spec

TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)


def sdxl_unet_spec(*, channels=(320, 640, 1280), layers_per_block=2, heads=(5, 10, 20),
                   transformer_layers=(1, 2, 10), cross_dim=2048, time_id_dim=256, pooled_dim=1280, groups=32,
                   sample_size=128) -> ModuleSpec:
    """SDXL UNet: no attention at the highest resolution, deep transformer stacks at the lowest.

    heads: diffusers' ``attention_head_dim`` (SDXL uses it as the number of heads per level).
    pooled_dim: width of text_encoder_2's projected pooled embedding, concatenated to the time-id embedding.
    """
    return ModuleSpec.of(
        "UNet2DConditionModel",
        sample_size=sample_size, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
        freq_shift=0, act_fn="silu", norm_num_groups=groups, norm_eps=1e-5, downsample_padding=1,
        mid_block_scale_factor=1, mid_block_type="UNetMidBlock2DCrossAttn",
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=channels, layers_per_block=layers_per_block, attention_head_dim=heads,
        transformer_layers_per_block=transformer_layers, cross_attention_dim=cross_dim, use_linear_projection=True,
        addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=time_id_dim,
        projection_class_embeddings_input_dim=TIME_IDS * time_id_dim + pooled_dim,
    )


SDXL_SCHEDULER = (
    ("beta_start", 0.00085), ("beta_end", 0.012), ("beta_schedule", "scaled_linear"),
    ("num_train_timesteps", 1000), ("interpolation_type", "linear"), ("prediction_type", "epsilon"),
    ("steps_offset", 1), ("timestep_spacing", "leading"), ("use_karras_sigmas", False),
)


@dataclass(frozen=True)
class DualEncoderLatentConfig(LatentDiffusionConfig):
    """A latent diffusion model with two text encoders (SDXL): their hidden states concatenated."""

    text_encoder_2: ModuleSpec = None  # type: ignore[assignment]
    force_zeros_for_empty_prompt: bool = True  # an empty negative prompt is a zero embedding, not encoded

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("text_encoder_2", "text_encoder_2"),
                            ("denoiser", "denoiser"), ("decoder", "decoder"))


PAPER = DualEncoderLatentConfig(
    preset="paper",
    text_encoder=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072),  # CLIP ViT-L/14 text tower
    text_encoder_2=clip_text_spec(hidden=1280, layers=32, heads=20, mlp=5120, act="gelu", projection_dim=1280,
                                  with_projection=True),  # OpenCLIP ViT-bigG/14 text tower
    denoiser=sdxl_unet_spec(),
    decoder=kl_vae_spec(channels=(128, 256, 512, 512), scaling_factor=0.13025, sample_size=1024),
    text_len=77, image_size=1024, steps=50, guidance_scale=5.0, scheduler="euler", scheduler_config=SDXL_SCHEDULER,
)

# small: same levels, block types, attention placement (none at the top level), 64-channel heads and a
# deeper transformer stack at the lowest level; narrower everything; 512 px.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, projection_dim=256),
    text_encoder_2=clip_text_spec(hidden=384, layers=4, heads=6, mlp=1536, act="gelu", projection_dim=384,
                                  with_projection=True),
    denoiser=sdxl_unet_spec(channels=(64, 128, 256), heads=(1, 2, 4), transformer_layers=(1, 1, 3),
                            cross_dim=256 + 384, time_id_dim=64, pooled_dim=384, sample_size=64),
    decoder=kl_vae_spec(channels=(32, 64, 128, 128), layers_per_block=1, scaling_factor=0.13025, sample_size=512),
    image_size=512, steps=20,
)

# tiny: milliseconds, for tests; every block type still there.
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, projection_dim=32, vocab=1000,
                                max_positions=16),
    text_encoder_2=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, act="gelu", projection_dim=32, vocab=1000,
                                  max_positions=16, with_projection=True),
    denoiser=sdxl_unet_spec(channels=(32, 32, 64), layers_per_block=1, heads=(1, 1, 2), transformer_layers=(1, 1, 2),
                            cross_dim=64, time_id_dim=8, pooled_dim=32, groups=8, sample_size=8),
    decoder=kl_vae_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4, scaling_factor=0.13025,
                        sample_size=64),
    text_len=16, image_size=64, steps=2,
)

PRESETS = PresetTable("prod-image", {"paper": PAPER, "small": SMALL, "tiny": TINY})
