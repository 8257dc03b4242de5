"""Stable Diffusion 1.5: the paper's latent-diffusion text-to-image model (Table I, "Stable Diffusion").

Components: CLIP ViT-L/14 text encoder -> UNet (classifier-free guidance, N denoising steps) -> VAE decoder.

Sources of the ``paper`` preset (values copied from the published configs):
* UNet: runwayml/stable-diffusion-v1-5 ``unet/config.json`` (859,520,964 parameters);
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022, Table 13/14.
* Text encoder: openai/clip-vit-large-patch14 text tower, as shipped in
  stable-diffusion-v1-5 ``text_encoder/config.json`` (123,060,480 parameters); Radford et al. 2021.
* VAE: stable-diffusion-v1-5 ``vae/config.json`` (KL-f8, 4 latent channels, scaling factor 0.18215).
* Scheduler: stable-diffusion-v1-5 ``scheduler/scheduler_config.json`` (scaled_linear betas 0.00085-0.012,
  1000 training steps); 50 steps and guidance 7.5 are the diffusers pipeline defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from genscope.models.base import ModelConfig, PresetTable
from genscope.models.spec import ModuleSpec


def clip_text_spec(*, hidden: int, layers: int, heads: int, mlp: int, vocab: int = 49408, max_positions: int = 77,
                   act: str = "quick_gelu", projection_dim: int = 768, with_projection: bool = False,
                   pad_token_id: int = 1, bos_token_id: int = 0, eos_token_id: int = 2) -> ModuleSpec:
    return ModuleSpec.of(
        "CLIPTextModelWithProjection" if with_projection else "CLIPTextModel",
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_positions, hidden_act=act,
        layer_norm_eps=1e-5, projection_dim=projection_dim, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )


def kl_vae_spec(*, channels: tuple[int, ...], latent_channels: int = 4, layers_per_block: int = 2,
                groups: int = 32, scaling_factor: float = 0.18215, sample_size: int = 512,
                force_upcast: bool = True) -> ModuleSpec:
    return ModuleSpec.of(
        "AutoencoderKL", in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=channels, layers_per_block=layers_per_block, norm_num_groups=groups,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), act_fn="silu",
        sample_size=sample_size, scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


SD_SCHEDULER = (
    ("beta_start", 0.00085), ("beta_end", 0.012), ("beta_schedule", "scaled_linear"),
    ("num_train_timesteps", 1000), ("clip_sample", False), ("set_alpha_to_one", False),
    ("steps_offset", 1), ("prediction_type", "epsilon"),
)


@dataclass(frozen=True)
class LatentDiffusionConfig(ModelConfig):
    """A latent text-to-image diffusion model: text encoder(s) -> UNet -> VAE decoder."""

    text_encoder: ModuleSpec = None  # type: ignore[assignment]
    denoiser: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 77  # tokens per prompt (CLIP context length)
    image_size: int = 512  # default output size (pixels)
    steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str = "ddim"  # "ddim" or "euler"
    scheduler_config: tuple = SD_SCHEDULER

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("denoiser", "denoiser"), ("decoder", "decoder"))


def sd15_unet_spec(*, channels=(320, 640, 1280, 1280), layers_per_block=2, head_dim=8, cross_dim=768,
                   groups=32, sample_size=64) -> ModuleSpec:
    return ModuleSpec.of(
        "UNet2DConditionModel",
        sample_size=sample_size, in_channels=4, out_channels=4, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels, layers_per_block=layers_per_block, downsample_padding=1,
        mid_block_scale_factor=1, act_fn="silu", norm_num_groups=groups, norm_eps=1e-5,
        cross_attention_dim=cross_dim,
        # SD 1.5 names this "attention_head_dim" but diffusers uses it as the number of heads (8);
        # the per-head channels are 320/8 = 40, 640/8 = 80, 1280/8 = 160.
        attention_head_dim=head_dim,
    )


PAPER = LatentDiffusionConfig(
    preset="paper",
    text_encoder=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072),  # CLIP ViT-L/14 text tower
    denoiser=sd15_unet_spec(),
    decoder=kl_vae_spec(channels=(128, 256, 512, 512)),
    text_len=77, image_size=512, steps=50, guidance_scale=7.5, scheduler="ddim",
)

# small: same levels, block types, attention placement and head count; narrower channels and text tower.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, projection_dim=256),
    denoiser=sd15_unet_spec(channels=(64, 128, 256, 256), cross_dim=256, sample_size=32),
    decoder=kl_vae_spec(channels=(32, 64, 128, 128), layers_per_block=1),
    image_size=256, steps=20,
)

# tiny: milliseconds, for tests; still 4 UNet levels with the SD block layout.
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, projection_dim=32, vocab=1000,
                                max_positions=16),
    denoiser=sd15_unet_spec(channels=(32, 32, 64, 64), layers_per_block=1, head_dim=2, cross_dim=32,
                            groups=8, sample_size=8),
    decoder=kl_vae_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4, sample_size=64),
    text_len=16, image_size=64, steps=2,
)

PRESETS = PresetTable("stable-diffusion", {"paper": PAPER, "small": SMALL, "tiny": TINY})
