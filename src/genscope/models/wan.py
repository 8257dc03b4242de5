"""Wan 2.1 text-to-video: a DiT with full 3-D self-attention over every video token (after the paper; 2025).

Components: umT5-XXL (512 tokens) -> WanTransformer3DModel (40 blocks of 3-D self-attention over all
F_latent x h x w tokens, cross-attention to the text, 40 heads x 128, QK RMS-norm across heads, 3-D RoPE)
on [uncond; cond] latents (CFG) for 50 steps -> Wan-VAE (causal 3-D VAE: 8x8 spatial, 4x temporal
compression, frames 1 + 4k). At 480x832 and 81 frames: 21 x 30 x 52 = 32,760 tokens per sample.

Sources of the ``paper`` preset:
* transformer: Wan-AI/Wan2.1-T2V-14B-Diffusers ``transformer/config.json``, as in diffusers
  ``scripts/convert_wan_to_diffusers.py`` ("Wan-T2V-14B": attention_head_dim 128, num_attention_heads 40,
  num_layers 40, ffn_dim 13824, freq_dim 256, text_dim 4096, patch_size [1, 2, 2], qk_norm
  rms_norm_across_heads, cross_attn_norm true, eps 1e-6, in/out_channels 16); the ``1.3b`` preset is
  "Wan-T2V-1.3B" there (12 heads, 30 layers, ffn_dim 8960).
* text encoder: google/umt5-xxl (``convert_wan_to_diffusers.py`` loads ``UMT5EncoderModel`` from it:
  d_model 4096, 24 layers, 64 heads, d_kv 64, d_ff 10240, gated-gelu, vocabulary 256,384).
* VAE: ``AutoencoderKLWan()`` with its defaults, as the conversion script builds it (base_dim 96, z_dim 16,
  dim_mult [1, 2, 4, 4], 2 res blocks, temporal downsampling at the last two levels).
* pipeline: diffusers ``WanPipeline`` (max_sequence_length 512; 480x832, 81 frames, guidance 5.0, 50 steps in
  its example); flow shift 3.0 for text-to-video (``convert_wan_to_diffusers.py``; genscope steps with
  FlowMatchEulerDiscreteScheduler instead of UniPC: same cost per step).
"""

from __future__ import annotations

from dataclasses import replace

from genscope.models.base import PresetTable
from genscope.models.dit import FLOW_SCHEDULER, DiTConfig
from genscope.models.spec import ModuleSpec


def wan_transformer_spec(*, layers: int = 40, heads: int = 40, head_dim: int = 128, ffn: int = 13824,
                         text_dim: int = 4096, freq_dim: int = 256) -> ModuleSpec:
    return ModuleSpec.of(
        "WanTransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, added_kv_proj_dim=None,
    )


def umt5_spec(*, d_model: int, layers: int, heads: int, d_ff: int, d_kv: int = 64, vocab: int = 256384) -> ModuleSpec:
    """umT5 encoder (T5 v1.1 with a relative position bias in every layer)."""
    return ModuleSpec.of(
        "UMT5EncoderModel", vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
        num_heads=heads, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def wan_vae_spec(*, base_dim: int = 96, num_res_blocks: int = 2) -> ModuleSpec:
    return ModuleSpec.of("AutoencoderKLWan", base_dim=base_dim, z_dim=16, dim_mult=(1, 2, 4, 4),
                         num_res_blocks=num_res_blocks, attn_scales=(), temperal_downsample=(False, True, True))


WAN_SCHEDULER = FLOW_SCHEDULER + (("shift", 3.0),)

PAPER = DiTConfig(
    preset="paper",
    text_encoder=umt5_spec(d_model=4096, layers=24, heads=64, d_ff=10240),  # google/umt5-xxl encoder
    denoiser=wan_transformer_spec(),
    decoder=wan_vae_spec(),
    text_len=512, image_size=480, width=832, frames=81, steps=50, guidance_scale=5.0,
    vae_spatial=8, vae_temporal=4, patch=2, patch_t=1, scheduler_config=WAN_SCHEDULER,
)

WAN_1_3B = replace(PAPER, preset="1.3b", denoiser=wan_transformer_spec(layers=30, heads=12, ffn=8960))

# small: the same block (3-D self-attention + text cross-attention), 4 heads x 64; 128x224, 9 frames.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=umt5_spec(d_model=256, layers=4, heads=4, d_ff=640, vocab=32128),
    denoiser=wan_transformer_spec(layers=4, heads=4, head_dim=64, ffn=1024, text_dim=256, freq_dim=64),
    decoder=wan_vae_spec(base_dim=8, num_res_blocks=1),
    text_len=64, image_size=128, width=224, frames=9, steps=6,
)

TINY = replace(
    PAPER, preset="tiny",
    text_encoder=umt5_spec(d_model=32, layers=1, heads=2, d_ff=64, d_kv=16, vocab=1000),
    denoiser=wan_transformer_spec(layers=1, heads=2, head_dim=16, ffn=64, text_dim=32, freq_dim=16),
    decoder=wan_vae_spec(base_dim=8, num_res_blocks=1),
    text_len=12, image_size=32, width=64, frames=5, steps=2,
)

PRESETS = PresetTable("wan", {"paper": PAPER, "1.3b": WAN_1_3B, "small": SMALL, "tiny": TINY})
