"""Stable Diffusion 3.5 Large: an MMDiT for text-to-image (after the paper; Esser et al. 2024, Stability AI).

Components: CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 (penultimate hidden states concatenated, pooled outputs
concatenated to 2048) + T5-XXL (256 tokens) -> SD3Transformer2DModel (38 MMDiT blocks, 38 heads x 64, QK
RMS-norm; text and image tokens projected apart and attended jointly: 77 + 256 = 333 text tokens) on
[uncond; cond] latents (CFG) -> 16-channel AutoencoderKL decoder.

Sources of the ``paper`` preset:
* transformer: stabilityai/stable-diffusion-3.5-large ``transformer/config.json`` (sample_size 128,
  patch_size 2, in_channels 16, num_layers 38, attention_head_dim 64, num_attention_heads 38,
  joint_attention_dim 4096, caption_projection_dim 2432, pooled_projection_dim 2048, pos_embed_max_size 192,
  qk_norm rms_norm, dual_attention_layers []); diffusers ``scripts/convert_sd3_to_diffusers.py``
  (num_attention_heads = num_layers; "sd3.0 and sd3.5 8b use 192"; "sd3.5 use qk norm").
* text encoders: ``text_encoder`` (CLIP-L with projection 768), ``text_encoder_2`` (OpenCLIP bigG:
  hidden 1280, 32 layers, 20 heads, 5120, gelu, projection 1280), ``text_encoder_3`` (T5-v1.1-XXL).
* VAE: ``vae/config.json`` (16 latent channels, scaling_factor 1.5305, shift_factor 0.0609, no quant convs;
  the same values in ``convert_sd3_to_diffusers.py``).
* pipeline: the model card (28 steps, guidance 3.5), diffusers ``StableDiffusion3Pipeline``
  (max_sequence_length 256); ``scheduler/scheduler_config.json``: FlowMatchEulerDiscreteScheduler, shift 3.0.
"""

from __future__ import annotations

from dataclasses import replace

from genscope.models.base import PresetTable
from genscope.models.dit import FLOW_SCHEDULER, DiTConfig
from genscope.models.flux import vae16_spec
from genscope.models.imagen import t5_encoder_spec
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import clip_text_spec


def sd3_transformer_spec(*, layers: int = 38, heads: int = 38, head_dim: int = 64, text_dim: int = 4096,
                         pooled_dim: int = 2048, sample_size: int = 128, pos_embed_max_size: int = 192) -> ModuleSpec:
    return ModuleSpec.of(
        "SD3Transformer2DModel", sample_size=sample_size, patch_size=2, in_channels=16, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=pooled_dim, out_channels=16,
        pos_embed_max_size=pos_embed_max_size, dual_attention_layers=(), qk_norm="rms_norm",
    )


SD3_SCHEDULER = FLOW_SCHEDULER + (("shift", 3.0),)

PAPER = DiTConfig(
    preset="paper",
    text_encoder=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072, with_projection=True),  # CLIP-L
    text_encoder_2=clip_text_spec(hidden=1280, layers=32, heads=20, mlp=5120, act="gelu", projection_dim=1280,
                                  with_projection=True),  # OpenCLIP ViT-bigG/14 text tower
    text_encoder_3=t5_encoder_spec(d_model=4096, layers=24, heads=64, d_ff=10240),  # T5-v1.1-XXL encoder
    denoiser=sd3_transformer_spec(),
    decoder=vae16_spec(channels=(128, 256, 512, 512), scaling_factor=1.5305, shift_factor=0.0609),
    text_len=256, image_size=1024, width=1024, steps=28, guidance_scale=3.5, patch=2,
    scheduler_config=SD3_SCHEDULER,
)

# small: every block an MMDiT block with QK-norm, three encoders, 4 heads x 64; 256 px.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=clip_text_spec(hidden=128, layers=2, heads=2, mlp=512, projection_dim=128, with_projection=True),
    text_encoder_2=clip_text_spec(hidden=128, layers=2, heads=2, mlp=512, act="gelu", projection_dim=128,
                                  with_projection=True),
    text_encoder_3=t5_encoder_spec(d_model=256, layers=4, heads=4, d_ff=640),
    denoiser=sd3_transformer_spec(layers=6, heads=4, text_dim=256, pooled_dim=256, sample_size=32,
                                  pos_embed_max_size=64),
    decoder=vae16_spec(channels=(32, 64, 128, 128), layers_per_block=1, scaling_factor=1.5305,
                       shift_factor=0.0609, sample_size=256),
    text_len=64, image_size=256, width=256, steps=8,
)

TINY = replace(
    PAPER, preset="tiny",
    text_encoder=clip_text_spec(hidden=16, layers=1, heads=2, mlp=32, projection_dim=16, vocab=1000,
                                max_positions=16, with_projection=True),
    text_encoder_2=clip_text_spec(hidden=16, layers=1, heads=2, mlp=32, act="gelu", projection_dim=16, vocab=1000,
                                  max_positions=16, with_projection=True),
    text_encoder_3=t5_encoder_spec(d_model=32, layers=1, heads=2, d_ff=64, d_kv=16, vocab=1000),
    denoiser=sd3_transformer_spec(layers=2, heads=2, head_dim=16, text_dim=32, pooled_dim=32, sample_size=8,
                                  pos_embed_max_size=16),
    decoder=vae16_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4, scaling_factor=1.5305,
                       shift_factor=0.0609, sample_size=64),
    text_len=12, clip_len=16, image_size=64, width=64, steps=2,
)

PRESETS = PresetTable("sd3", {"paper": PAPER, "small": SMALL, "tiny": TINY})
