"""CogVideoX-5B: an expert-transformer DiT for text-to-video with full 3-D attention (after the paper; 2024).

Components: T5-XXL (226 tokens) -> CogVideoXTransformer3DModel (42 blocks; text and video tokens in one
sequence ``[text; video]`` with full 3-D attention, 48 heads x 64, 3-D RoPE on the video tokens) on [uncond;
cond] latents ``[2B, F_latent, 16, h, w]`` (CFG) for 50 steps -> 3-D causal VAE (AutoencoderKLCogVideoX:
8x8 spatial, 4x temporal compression). At 480x720 and 49 frames: 13 x 30 x 45 = 17,550 video tokens + 226 text.

Sources of the ``paper`` preset:
* transformer: THUDM/CogVideoX-5b ``transformer/config.json`` (num_attention_heads 48, attention_head_dim 64,
  num_layers 42, use_rotary_positional_embeddings true, text_embed_dim 4096, time_embed_dim 512, patch_size 2,
  sample 49 x 60 x 90, max_text_seq_length 226); diffusers ``scripts/convert_cogvideox_to_diffusers.py``
  ("For 5B, num_layers is 42 ... num_attention_heads is 48 ... use_rotary_positional_embeddings is True").
* text encoder: google/t5-v1_1-xxl encoder (``convert_cogvideox_to_diffusers.py``: text_encoder_id).
* VAE: ``AutoencoderKLCogVideoX`` defaults (block_out_channels [128, 256, 256, 512], 3 layers per block,
  16 latent channels, temporal compression 4) with scaling_factor 0.7 ("For 5B, it is 0.7", same script).
* pipeline: diffusers ``CogVideoXPipeline`` (480x720, 49 frames, 50 steps, guidance 6, 226 tokens);
  scheduler: CogVideoX's DDIM-family v-prediction scheduler with zero-SNR betas (genscope uses diffusers'
  DDIMScheduler with the same betas: same cost per step).
"""

from __future__ import annotations

from dataclasses import replace

from genscope.models.base import PresetTable
from genscope.models.dit import DiTConfig
from genscope.models.imagen import t5_encoder_spec
from genscope.models.spec import ModuleSpec


def cogvideox_transformer_spec(*, layers: int = 42, heads: int = 48, head_dim: int = 64, text_dim: int = 4096,
                               time_dim: int = 512, text_len: int = 226, sample: tuple[int, int, int] = (49, 60, 90),
                               ) -> ModuleSpec:
    frames, height, width = sample
    return ModuleSpec.of(
        "CogVideoXTransformer3DModel", num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, time_embed_dim=time_dim, text_embed_dim=text_dim, num_layers=layers,
        sample_frames=frames, sample_height=height, sample_width=width, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=text_len, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )


def cogvideox_vae_spec(*, channels: tuple[int, ...] = (128, 256, 256, 512), layers_per_block: int = 3,
                       groups: int = 32, scaling_factor: float = 0.7) -> ModuleSpec:
    return ModuleSpec.of("AutoencoderKLCogVideoX", block_out_channels=channels, latent_channels=16,
                         layers_per_block=layers_per_block, norm_num_groups=groups, temporal_compression_ratio=4,
                         scaling_factor=scaling_factor)


# THUDM/CogVideoX-5b scheduler/scheduler_config.json (v-prediction, zero-terminal-SNR scaled-linear betas)
COGVIDEOX_SCHEDULER = (
    ("beta_start", 0.00085), ("beta_end", 0.012), ("beta_schedule", "scaled_linear"),
    ("num_train_timesteps", 1000), ("clip_sample", False), ("set_alpha_to_one", True), ("steps_offset", 0),
    ("prediction_type", "v_prediction"), ("rescale_betas_zero_snr", True), ("timestep_spacing", "trailing"),
)

PAPER = DiTConfig(
    preset="paper",
    text_encoder=t5_encoder_spec(d_model=4096, layers=24, heads=64, d_ff=10240),  # T5-v1.1-XXL encoder
    denoiser=cogvideox_transformer_spec(),
    decoder=cogvideox_vae_spec(),
    text_len=226, image_size=480, width=720, frames=49, steps=50, guidance_scale=6.0,
    vae_spatial=8, vae_temporal=4, patch=2, patch_t=1, scheduler="ddim", scheduler_config=COGVIDEOX_SCHEDULER,
    # AutoencoderKLCogVideoX decodes latent frames in batches of 2 after the first: their count must be odd
    frame_step=8, frame_rule="the VAE compresses time by 4 and decodes latent frames in pairs after the first "
    "(latent frames 1 + (F-1)/4 must be odd)",
)

# small: the same expert blocks over [text; video], 4 heads x 64; 128x192, 9 frames.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=t5_encoder_spec(d_model=256, layers=4, heads=4, d_ff=640),
    denoiser=cogvideox_transformer_spec(layers=4, heads=4, text_dim=256, time_dim=128, text_len=64,
                                        sample=(9, 16, 24)),
    decoder=cogvideox_vae_spec(channels=(16, 32, 32, 64), layers_per_block=1, groups=8),
    text_len=64, image_size=128, width=192, frames=9, steps=6,
)

TINY = replace(
    PAPER, preset="tiny",
    text_encoder=t5_encoder_spec(d_model=32, layers=1, heads=2, d_ff=64, d_kv=16, vocab=1000),
    denoiser=cogvideox_transformer_spec(layers=1, heads=2, head_dim=16, text_dim=32, time_dim=16, text_len=8,
                                        sample=(9, 4, 8)),
    decoder=cogvideox_vae_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4),
    text_len=12, image_size=32, width=64, frames=9, steps=2,
)

PRESETS = PresetTable("cogvideox", {"paper": PAPER, "small": SMALL, "tiny": TINY})
