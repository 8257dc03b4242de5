"""FLUX.1-dev: a rectified-flow MMDiT for text-to-image (after the paper; Black Forest Labs, 2024).

Components: CLIP ViT-L/14 (pooled prompt embedding) + T5-XXL (512 tokens) -> FluxTransformer2DModel
(19 dual-stream blocks: text and image projected apart, attended jointly; 38 single-stream blocks over the
concatenated sequence; 24 heads x 128) on 2x2-packed latents for 28 steps, guidance-distilled (the guidance
scale is an input embedding: no CFG batch) -> 16-channel AutoencoderKL decoder.

Sources of the ``paper`` preset (values copied from the published configs):
* transformer: black-forest-labs/FLUX.1-dev ``transformer/config.json`` (patch_size 1, in_channels 64,
  num_layers 19, num_single_layers 38, attention_head_dim 128, num_attention_heads 24, joint_attention_dim
  4096, pooled_projection_dim 768, guidance_embeds true, axes_dims_rope [16, 56, 56]); diffusers
  ``scripts/convert_flux_to_diffusers.py`` (num_layers = 19, num_single_layers = 38).
* text encoders: FLUX.1-dev ``text_encoder/config.json`` (openai/clip-vit-large-patch14 text tower) and
  ``text_encoder_2/config.json`` (google/t5-v1_1-xxl encoder: d_model 4096, 24 layers, 64 heads, d_ff 10240).
* VAE: FLUX.1-dev ``vae/config.json`` (latent_channels 16, block_out_channels [128, 256, 512, 512],
  scaling_factor 0.3611, shift_factor 0.1159, no quant convs).
* pipeline: diffusers ``FluxPipeline`` defaults for dev (max_sequence_length 512, 28 steps, guidance 3.5);
  ``scheduler/scheduler_config.json``: FlowMatchEulerDiscreteScheduler, shift 3.0 (the dynamic shift by image
  size is left off: it moves timestep values, not shapes or cost).
"""

from __future__ import annotations

from dataclasses import replace

from genscope.models.base import PresetTable
from genscope.models.dit import FLOW_SCHEDULER, DiTConfig
from genscope.models.imagen import t5_encoder_spec
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import clip_text_spec, kl_vae_spec


def flux_transformer_spec(*, layers: int = 19, single_layers: int = 38, heads: int = 24, head_dim: int = 128,
                          text_dim: int = 4096, pooled_dim: int = 768,
                          rope_axes: tuple[int, ...] = (16, 56, 56)) -> ModuleSpec:
    return ModuleSpec.of(
        "FluxTransformer2DModel", patch_size=1, in_channels=64, out_channels=None, num_layers=layers,
        num_single_layers=single_layers, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim, guidance_embeds=True,
        axes_dims_rope=rope_axes,
    )


def vae16_spec(*, channels: tuple[int, ...], layers_per_block: int = 2, groups: int = 32, scaling_factor: float,
               shift_factor: float, sample_size: int = 1024) -> ModuleSpec:
    """The 16-channel KL VAE of Flux and SD3 (no quant convs; latents are shifted, then scaled)."""
    return kl_vae_spec(channels=channels, latent_channels=16, layers_per_block=layers_per_block, groups=groups,
                       scaling_factor=scaling_factor, sample_size=sample_size).replace(
        shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)


FLUX_SCHEDULER = FLOW_SCHEDULER + (("shift", 3.0),)

PAPER = DiTConfig(
    preset="paper",
    text_encoder=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072),  # CLIP ViT-L/14 text tower
    text_encoder_2=t5_encoder_spec(d_model=4096, layers=24, heads=64, d_ff=10240),  # T5-v1.1-XXL encoder
    denoiser=flux_transformer_spec(),
    decoder=vae16_spec(channels=(128, 256, 512, 512), scaling_factor=0.3611, shift_factor=0.1159),
    text_len=512, image_size=1024, width=1024, steps=28, guidance_scale=3.5, guidance_distilled=True,
    patch=2,  # the transformer's patch_size is 1 over latents packed 2x2 into 64 channels
    scheduler_config=FLUX_SCHEDULER,
)

# small: the same two block types (dual then single stream) and RoPE axes split, 4 heads x 64; 256 px.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, projection_dim=256),
    text_encoder_2=t5_encoder_spec(d_model=256, layers=4, heads=4, d_ff=640),
    denoiser=flux_transformer_spec(layers=2, single_layers=4, heads=4, head_dim=64, text_dim=256, pooled_dim=256,
                                   rope_axes=(8, 28, 28)),
    decoder=vae16_spec(channels=(32, 64, 128, 128), layers_per_block=1, scaling_factor=0.3611,
                       shift_factor=0.1159, sample_size=256),
    text_len=128, image_size=256, width=256, steps=8,
)

TINY = replace(
    PAPER, preset="tiny",
    text_encoder=clip_text_spec(hidden=32, layers=1, heads=2, mlp=64, projection_dim=32, vocab=1000,
                                max_positions=16),
    text_encoder_2=t5_encoder_spec(d_model=32, layers=1, heads=2, d_ff=64, d_kv=16, vocab=1000),
    denoiser=flux_transformer_spec(layers=1, single_layers=1, heads=2, head_dim=16, text_dim=32, pooled_dim=32,
                                   rope_axes=(4, 6, 6)),
    decoder=vae16_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4, scaling_factor=0.3611,
                       shift_factor=0.1159, sample_size=64),
    text_len=12, clip_len=16, image_size=64, width=64, steps=2,
)

PRESETS = PresetTable("flux", {"paper": PAPER, "small": SMALL, "tiny": TINY})
