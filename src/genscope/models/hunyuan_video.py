"""HunyuanVideo: a dual- then single-stream DiT for text-to-video with full 3-D attention (after the paper; 2024).

Components: a Llama-3-8B-architecture text encoder (LLaVA-Llama-3; hidden states of its third-to-last layer,
256 prompt tokens after a 95-token template is cropped) + CLIP ViT-L/14 (pooled) -> HunyuanVideoTransformer3DModel
(2 token-refiner blocks over the text, 20 dual-stream + 40 single-stream blocks over ``[video; text]``,
24 heads x 128, QK RMS-norm, 3-D RoPE), guidance-distilled (guidance as an embedding: no CFG batch), 50 steps
-> 3-D causal VAE (AutoencoderKLHunyuanVideo: 8x8 spatial, 4x temporal). At 720x1280 and 129 frames:
33 x 45 x 80 = 118,800 video tokens + 256 text tokens = 119,056 per attention call.

Sources of the ``paper`` preset:
* transformer: hunyuanvideo-community/HunyuanVideo ``transformer/config.json``, as diffusers
  ``scripts/convert_hunyuan_video_to_diffusers.py`` TRANSFORMER_CONFIGS["HYVideo-T/2-cfgdistill"]
  (24 heads x 128, 20 layers, 40 single layers, 2 refiner layers, mlp_ratio 4, patch 2 x 2 x 1, qk_norm
  rms_norm, guidance_embeds true, text_embed_dim 4096, pooled_projection_dim 768, rope_theta 256,
  rope_axes_dim (16, 56, 56)).
* text encoders: ``text_encoder/config.json`` (xtuner/llava-llama-3-8b-v1_1 language model: hidden 4096, 32
  layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary 128,320, rope_theta 500000) and
  ``text_encoder_2`` (openai/clip-vit-large-patch14 text tower).
* VAE: ``AutoencoderKLHunyuanVideo()`` defaults, as the conversion script builds it (block_out_channels
  [128, 256, 512, 512], 16 latent channels, scaling_factor 0.476986, mid-block attention).
* pipeline: diffusers ``HunyuanVideoPipeline`` (max_sequence_length 256, prompt-template crop_start 95,
  hidden layer -3, 50 steps, guidance 6.0 as embedding); flow shift 7.0 (conversion script ``--flow_shift``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from genscope.models.base import PresetTable
from genscope.models.dit import FLOW_SCHEDULER, DiTConfig
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import clip_text_spec


def hunyuan_transformer_spec(*, layers: int = 20, single_layers: int = 40, refiner_layers: int = 2, heads: int = 24,
                             head_dim: int = 128, text_dim: int = 4096, pooled_dim: int = 768,
                             rope_axes: tuple[int, ...] = (16, 56, 56)) -> ModuleSpec:
    return ModuleSpec.of(
        "HunyuanVideoTransformer3DModel", in_channels=16, out_channels=16, num_attention_heads=heads,
        attention_head_dim=head_dim, num_layers=layers, num_single_layers=single_layers,
        num_refiner_layers=refiner_layers, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim, rope_theta=256.0,
        rope_axes_dim=rope_axes,
    )


def llama_text_spec(*, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int = 128320,
                    rope_theta: float = 500000.0) -> ModuleSpec:
    """A Llama-3 decoder used as a text encoder (``LlamaModel``: no LM head)."""
    return ModuleSpec.of(
        "LlamaModel", vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        rms_norm_eps=1e-5, hidden_act="silu", rope_theta=rope_theta, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False,
    )


def hunyuan_vae_spec(*, channels: tuple[int, ...] = (128, 256, 512, 512), layers_per_block: int = 2,
                     groups: int = 32) -> ModuleSpec:
    return ModuleSpec.of("AutoencoderKLHunyuanVideo", latent_channels=16, block_out_channels=channels,
                         layers_per_block=layers_per_block, norm_num_groups=groups, scaling_factor=0.476986)


@dataclass(frozen=True)
class HunyuanVideoConfig(DiTConfig):
    template_len: int = 95  # prompt-template tokens the pipeline crops from the Llama hidden states
    skip_layers: int = 2  # hidden_states[-(skip_layers + 1)]: the third-to-last layer's output


PAPER = HunyuanVideoConfig(
    preset="paper",
    text_encoder=llama_text_spec(hidden=4096, layers=32, heads=32, kv_heads=8, mlp=14336),  # LLaVA-Llama-3-8B
    text_encoder_2=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072),  # CLIP ViT-L/14 text tower
    denoiser=hunyuan_transformer_spec(),
    decoder=hunyuan_vae_spec(),
    text_len=256, image_size=720, width=1280, frames=129, steps=50, guidance_scale=6.0, guidance_distilled=True,
    vae_spatial=8, vae_temporal=4, patch=2, patch_t=1, scheduler_config=FLOW_SCHEDULER + (("shift", 7.0),),
)

# small: refiner + dual + single blocks, GQA text encoder, 4 heads x 64; 128x224, 9 frames.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=llama_text_spec(hidden=256, layers=4, heads=4, kv_heads=2, mlp=704, vocab=32000),
    text_encoder_2=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, projection_dim=256),
    denoiser=hunyuan_transformer_spec(layers=2, single_layers=4, refiner_layers=1, heads=4, head_dim=64,
                                      text_dim=256, pooled_dim=256, rope_axes=(8, 28, 28)),
    decoder=hunyuan_vae_spec(channels=(16, 32, 64, 64), layers_per_block=1, groups=8),
    text_len=64, template_len=16, image_size=128, width=224, frames=9, steps=6,
)

TINY = replace(
    PAPER, preset="tiny",
    text_encoder=llama_text_spec(hidden=32, layers=3, heads=2, kv_heads=1, mlp=64, vocab=1000),
    text_encoder_2=clip_text_spec(hidden=32, layers=1, heads=2, mlp=64, projection_dim=32, vocab=1000,
                                  max_positions=16),
    denoiser=hunyuan_transformer_spec(layers=1, single_layers=1, refiner_layers=1, heads=2, head_dim=16,
                                      text_dim=32, pooled_dim=32, rope_axes=(4, 6, 6)),
    decoder=hunyuan_vae_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4),
    text_len=12, template_len=4, clip_len=16, image_size=32, width=64, frames=5, steps=2,
)

PRESETS = PresetTable("hunyuan-video", {"paper": PAPER, "small": SMALL, "tiny": TINY})
