"""Imagen: the paper's pixel-space cascaded diffusion model (Table I, "Imagen"), as the open DeepFloyd IF cascade.

Components: T5-v1.1-XXL encoder -> ``denoiser`` (64x64 base UNet, CFG, N steps) -> ``sr_256`` (64 -> 256
super-resolution UNet conditioned on the bilinearly upsampled, noised 64x64 image) -> ``sr_1024`` (256 -> 1024:
the Stable Diffusion x4 upscaler, a *latent* UNet over 4-channel latents at 256x256 concatenated with the
noised 256x256 image, with its own CLIP text encoder ``text_encoder_2`` and its own VAE ``decoder``).
Imagen itself (Saharia et al. 2022) has the same shape - frozen T5-XXL, a 64x64 base model and two
text-conditioned super-resolution models - but no published weights or configs; DeepFloyd IF ("inspired by
Imagen", same cascade) is its open reproduction, so the ``paper`` preset copies IF's published configs.

Sources of the ``paper`` preset (values copied from the published configs):
* text encoder: google/t5-v1_1-xxl ``config.json`` (d_model 4096, d_ff 10240, 24 layers, 64 heads, d_kv 64,
  gated-gelu, 32 relative-attention buckets, vocab 32128), the encoder shipped in DeepFloyd/IF-I-XL-v1.0
  ``text_encoder/``: 4,762,310,656 parameters. IF's pipeline uses 77 tokens (``IFPipeline.encode_prompt``).
* denoiser: DeepFloyd/IF-I-XL-v1.0 ``unet/config.json`` (block_out_channels 704/1408/2112/2816, 3 layers per
  block, SimpleCrossAttn at 32/16/8 px, head dim 64, encoder_hid_dim 4096 "text_proj", addition_embed_type
  "text" with 64 pooling heads, out_channels 6 = epsilon + learned variance): 4,304,695,110 parameters
  (the model card says 4.3B). Original: IF-I-XL ``config.yml`` (model_channels 704, channel_mult 1,2,3,4,
  attention_resolutions 32,16,8).
* sr_256: DeepFloyd/IF-II-L-v1.0 ``unet/config.json`` (160/320/640/960/1280, layers 2/2/3/5/5, attention at the
  two lowest resolutions, class_embed_type "timestep" for the noise level, resnet_out_scale_factor and
  mid_block_scale_factor 1.4142271248762552, resnet_skip_time_act): 1,187,608,070 parameters (card: 1.2B).
  Up-block types follow diffusers' ``scripts/convert_if.py`` (the mirror of the down blocks).
* sr_1024 / text_encoder_2 / decoder: stabilityai/stable-diffusion-x4-upscaler ``unet/config.json``
  (256/512/512/1024, in_channels 7 = 4 latent + 3 image, num_class_embeds 1000 for the noise level,
  only_cross_attention true/true/true/false, linear projections; 473,398,020 parameters),
  ``text_encoder/config.json`` (OpenCLIP ViT-H/14 text tower, 23 layers, 1024 wide, gelu: 340,387,840) and
  ``vae/config.json`` (KL, 128/256/512 -> x4, scaling_factor 0.08333). DeepFloyd's model card runs this
  pipeline as IF's stage III (``noise_level=100``).
* Schedulers: IF stages I/II: DDPM, squaredcos_cap_v2, learned_range variance, dynamic thresholding
  (ratio 0.95, sample_max_value 1.5 for stage I, 1.0 for stage II) - diffusers ``scripts/convert_if.py``;
  the image-noising scheduler of stage II is DDPM squaredcos_cap_v2. x4 upscaler: ``scheduler`` DDIM
  (scaled_linear 0.0001-0.02, v_prediction) and ``low_res_scheduler`` DDPM (scaled_linear 0.0001-0.02).
* Steps and guidance: the diffusers pipeline defaults - ``IFPipeline`` 100 steps, guidance 7.0;
  ``IFSuperResolutionPipeline`` 50 steps, guidance 4.0, noise_level 250; ``StableDiffusionUpscalePipeline``
  75 steps, guidance 9.0 (noise_level 100 as in IF's model card).

``AttentionPooling`` (the "text" addition embedding of IF's UNets pools the text tokens with a one-query
attention) is written by hand in diffusers with einsum; :func:`route_attention_pooling` swaps in a subclass
whose forward is the same computation through genscope's attention entry point, so that it too is seen,
traced and switched with the backend.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from genscope.models.base import ModelConfig, PresetTable, unet_downsample_factor, vae_scale_factor
from genscope.models.layers.attention import AttentionSite, attention
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import clip_text_spec, kl_vae_spec


def t5_encoder_spec(*, d_model: int, layers: int, heads: int, d_ff: int, d_kv: int = 64,
                    vocab: int = 32128) -> ModuleSpec:
    """T5 v1.1 encoder (gated-GELU feed-forward, relative position buckets, untied embeddings)."""
    return ModuleSpec.of(
        "T5EncoderModel", vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
        num_heads=heads, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def _if_block_types(attention: tuple[bool, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    down = tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention)
    up = tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention))
    return down, up


def if_unet_spec(*, channels: tuple[int, ...], layers_per_block, attention: tuple[bool, ...], text_dim: int,
                 cross_dim: int | None = None, head_dim: int = 64, pool_heads: int = 64, groups: int = 32,
                 sample_size: int = 64, super_resolution: bool = False) -> ModuleSpec:
    """A DeepFloyd IF UNet: stage I (``super_resolution=False``) or stage II (noise-level conditioned SR).

    attention[i]: level i has SimpleCrossAttn blocks (joint self + text attention through added K/V).
    cross_dim: width of the projected text tokens (IF: the deepest level's channels).
    """
    down, up = _if_block_types(attention)
    extra = {}
    if super_resolution:  # IF-II: image + upsampled low-res image in, noise level as a "timestep" class label
        extra = dict(class_embed_type="timestep", resnet_skip_time_act=True,
                     resnet_out_scale_factor=1.4142271248762552, mid_block_scale_factor=1.4142271248762552)
    return ModuleSpec.of(
        "UNet2DConditionModel",
        sample_size=sample_size, in_channels=6 if super_resolution else 3, out_channels=6,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=channels, layers_per_block=layers_per_block, act_fn="gelu", norm_num_groups=groups,
        norm_eps=1e-5, attention_head_dim=head_dim, cross_attention_dim=cross_dim or channels[-1],
        cross_attention_norm="group_norm", encoder_hid_dim=text_dim, encoder_hid_dim_type="text_proj",
        addition_embed_type="text", addition_embed_type_num_heads=pool_heads,
        resnet_time_scale_shift="scale_shift", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        upcast_attention=False, use_linear_projection=False, **extra,
    )


def x4_upscaler_unet_spec(*, channels=(256, 512, 512, 1024), layers_per_block=2, heads=8, cross_dim=1024,
                          groups=32, sample_size=128) -> ModuleSpec:
    """stable-diffusion-x4-upscaler UNet: latents (4) + noised low-res image (3) in; cross-attention-only
    transformers at the three highest resolutions, self+cross at the lowest; noise level as a class label."""
    return ModuleSpec.of(
        "UNet2DConditionModel",
        sample_size=sample_size, in_channels=7, out_channels=4, act_fn="silu", attention_head_dim=heads,
        block_out_channels=channels, center_input_sample=False, cross_attention_dim=cross_dim,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, layers_per_block=layers_per_block,
        mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=groups, num_class_embeds=1000,
        only_cross_attention=(True, True, True, False), use_linear_projection=True,
    )


IF_STAGE1_SCHEDULER = (
    ("beta_schedule", "squaredcos_cap_v2"), ("num_train_timesteps", 1000), ("variance_type", "learned_range"),
    ("prediction_type", "epsilon"), ("thresholding", True), ("dynamic_thresholding_ratio", 0.95),
    ("sample_max_value", 1.5), ("clip_sample", True), ("clip_sample_range", 1.0),
)
IF_STAGE2_SCHEDULER = tuple((k, 1.0 if k == "sample_max_value" else v) for k, v in IF_STAGE1_SCHEDULER)
IF_NOISING_SCHEDULER = (("beta_schedule", "squaredcos_cap_v2"), ("num_train_timesteps", 1000))
X4_SCHEDULER = (  # stable-diffusion-x4-upscaler scheduler/scheduler_config.json (DDIM)
    ("beta_start", 0.0001), ("beta_end", 0.02), ("beta_schedule", "scaled_linear"), ("clip_sample", False),
    ("num_train_timesteps", 1000), ("prediction_type", "v_prediction"), ("set_alpha_to_one", False),
    ("steps_offset", 1),
)
X4_LOW_RES_SCHEDULER = (  # stable-diffusion-x4-upscaler low_res_scheduler/scheduler_config.json (DDPM)
    ("beta_start", 0.0001), ("beta_end", 0.02), ("beta_schedule", "scaled_linear"), ("clip_sample", True),
    ("num_train_timesteps", 1000), ("prediction_type", "epsilon"), ("variance_type", "fixed_small"),
)


@dataclass(frozen=True)
class PixelCascadeConfig(ModelConfig):
    """A pixel-space cascade: text encoder -> base UNet -> SR UNet (pixels) -> x4 latent upscaler + VAE."""

    text_encoder: ModuleSpec = None  # type: ignore[assignment]
    denoiser: ModuleSpec = None  # type: ignore[assignment]
    sr_256: ModuleSpec = None  # type: ignore[assignment]
    text_encoder_2: ModuleSpec = None  # type: ignore[assignment]  # the x4 upscaler's own CLIP text tower
    sr_1024: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 77  # T5 tokens (IF) and CLIP tokens (x4 upscaler)
    base_size: int = 64  # pixels per side of the base stage's output
    sr_factor: int = 4  # the pixel SR stage's upscale (64 -> 256); the x4 stage's is its VAE's factor
    steps: int = 100  # base stage (IFPipeline default)
    sr_256_steps: int = 50  # IFSuperResolutionPipeline default
    sr_1024_steps: int = 75  # StableDiffusionUpscalePipeline default
    guidance_scale: float = 7.0
    sr_256_guidance_scale: float = 4.0
    sr_1024_guidance_scale: float = 9.0
    sr_256_noise_level: int = 250
    sr_1024_noise_level: int = 100
    scheduler_config: tuple = IF_STAGE1_SCHEDULER
    sr_256_scheduler_config: tuple = IF_STAGE2_SCHEDULER
    noising_scheduler_config: tuple = IF_NOISING_SCHEDULER
    sr_1024_scheduler_config: tuple = X4_SCHEDULER
    low_res_scheduler_config: tuple = X4_LOW_RES_SCHEDULER

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("denoiser", "denoiser"), ("sr_256", "sr_256"),
                            ("text_encoder_2", "text_encoder_2"), ("sr_1024", "sr_1024"), ("decoder", "decoder"))

    def stage_factors(self) -> tuple[int, int]:
        """(pixel SR factor, x4 stage factor = its VAE's upscale)."""
        return self.sr_factor, vae_scale_factor(self.decoder)

    @property
    def image_size(self) -> int:
        """The cascade's output size at the preset's base size (paper: 64 * 4 * 4 = 1024)."""
        f1, f2 = self.stage_factors()
        return self.base_size * f1 * f2

    def base_multiple(self) -> int:
        """The base size must be a multiple of this for every UNet of the cascade to take its input."""
        f1, _ = self.stage_factors()
        sr_256 = unet_downsample_factor(self.sr_256)
        sr_1024 = unet_downsample_factor(self.sr_1024)
        return math.lcm(unet_downsample_factor(self.denoiser), sr_256 // math.gcd(sr_256, f1),
                        sr_1024 // math.gcd(sr_1024, f1))

    def stage_sizes(self, image_size: int) -> tuple[int, int, int]:
        """(base, sr_256 output, sr_1024 output) pixels per side for a final ``image_size``."""
        f1, f2 = self.stage_factors()
        base = image_size // (f1 * f2)
        return base, base * f1, base * f1 * f2


PAPER = PixelCascadeConfig(
    preset="paper",
    text_encoder=t5_encoder_spec(d_model=4096, layers=24, heads=64, d_ff=10240),  # T5-v1.1-XXL encoder
    denoiser=if_unet_spec(channels=(704, 1408, 2112, 2816), layers_per_block=3,
                          attention=(False, True, True, True), text_dim=4096, sample_size=64),  # IF-I-XL
    sr_256=if_unet_spec(channels=(160, 320, 640, 960, 1280), layers_per_block=(2, 2, 3, 5, 5),
                        attention=(False, False, False, True, True), text_dim=4096, sample_size=256,
                        super_resolution=True),  # IF-II-L
    text_encoder_2=clip_text_spec(hidden=1024, layers=23, heads=16, mlp=4096, act="gelu", projection_dim=512),
    sr_1024=x4_upscaler_unet_spec(),
    decoder=kl_vae_spec(channels=(128, 256, 512), scaling_factor=0.08333, sample_size=256),
)

# small: same three stages, levels, block types and attention placement (IF head dim 64); narrower, fewer
# layers; 32 -> 128 -> 512 px (the paper's x4 / x4 factors): a 4-step cascade takes about 11 s of one core.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=t5_encoder_spec(d_model=256, layers=4, heads=4, d_ff=1024),
    denoiser=if_unet_spec(channels=(64, 128, 192, 256), layers_per_block=1, attention=(False, True, True, True),
                          text_dim=256, pool_heads=4, sample_size=32),
    sr_256=if_unet_spec(channels=(32, 64, 128, 192, 256), layers_per_block=(1, 1, 1, 2, 2),
                        attention=(False, False, False, True, True), text_dim=256, pool_heads=4,
                        sample_size=128, super_resolution=True),
    text_encoder_2=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, act="gelu", projection_dim=256),
    sr_1024=x4_upscaler_unet_spec(channels=(32, 64, 64, 128), layers_per_block=1, cross_dim=256, sample_size=128),
    decoder=kl_vae_spec(channels=(32, 64, 128), layers_per_block=1, scaling_factor=0.08333, sample_size=512),
    base_size=32, steps=20, sr_256_steps=10, sr_1024_steps=15,
)

# tiny: milliseconds, for tests; 8 -> 32 -> 128 px, every stage and block type still there.
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=t5_encoder_spec(d_model=32, layers=2, heads=2, d_ff=64, d_kv=16, vocab=1000),
    denoiser=if_unet_spec(channels=(16, 32, 48, 64), layers_per_block=1, attention=(False, True, True, True),
                          text_dim=32, head_dim=16, pool_heads=2, groups=8, sample_size=8),
    sr_256=if_unet_spec(channels=(16, 16, 32, 48, 64), layers_per_block=1,
                        attention=(False, False, False, True, True), text_dim=32, head_dim=16, pool_heads=2,
                        groups=8, sample_size=32, super_resolution=True),
    text_encoder_2=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, act="gelu", projection_dim=32,
                                  vocab=1000, max_positions=16),
    sr_1024=x4_upscaler_unet_spec(channels=(16, 32, 32, 64), layers_per_block=1, heads=2, cross_dim=32, groups=8,
                                  sample_size=32),
    decoder=kl_vae_spec(channels=(8, 8, 16), layers_per_block=1, groups=4, scaling_factor=0.08333, sample_size=128),
    text_len=16, base_size=8, steps=2, sr_256_steps=1, sr_1024_steps=1,
)

PRESETS = PresetTable("imagen", {"paper": PAPER, "small": SMALL, "tiny": TINY})


# ----------------------------------------------------------------------------------------------------
# IF's text pooling through the attention entry point
# ----------------------------------------------------------------------------------------------------
@functools.cache
def _pooling_classes() -> tuple[type, type]:
    """(diffusers ``AttentionPooling``, genscope's subclass); built on first use so that importing this module
    does not import diffusers."""
    from diffusers.models.embeddings import AttentionPooling

    class GenscopeAttentionPooling(AttentionPooling):
        """diffusers ``AttentionPooling`` (IF's text pooling: one query, the mean text token) via :func:`attention`.

        q: [B, heads, 1, d] from the class token; k, v: [B, heads, 1 + T, d] from [class token; text tokens].
        diffusers scales q and k by d^-1/4 each (and takes the softmax in float32); here the scale is d^-1/2.
        """

        genscope_attention_site = "self"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, _, width = x.shape
            class_token = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)  # [B, 1, W]
            tokens = torch.cat([class_token, x], dim=1)  # [B, 1 + T, W]

            def heads(t: torch.Tensor) -> torch.Tensor:  # [B, L, W] -> [B, heads, L, d]
                return t.view(batch, -1, self.num_heads, self.dim_per_head).transpose(1, 2)

            out = attention(heads(self.q_proj(class_token)), heads(self.k_proj(tokens)), heads(self.v_proj(tokens)),
                            site=getattr(self, "_genscope_site", None), kind="self")  # [B, heads, 1, d]
            return out.transpose(1, 2).reshape(batch, width)

    return AttentionPooling, GenscopeAttentionPooling


def route_attention_pooling(model: nn.Module, prefix: str) -> list[AttentionSite]:
    """Make every diffusers ``AttentionPooling`` in ``model`` genscope's subclass (same parameters, same math)."""
    original, routed = _pooling_classes()
    sites = []
    for name, module in model.named_modules():
        if type(module) is original:
            module.__class__ = routed
            site = AttentionSite(path=f"{prefix}.{name}", kind="self", module_class="AttentionPooling")
            module._genscope_site = site
            sites.append(site)
    return sites
