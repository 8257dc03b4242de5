"""Make-A-Video: the paper's diffusion text-to-video model (Table I, "Make-A-Video"; Section VI case study).

Make-A-Video's weights and configs are not published. Its design - a text-to-image latent diffusion UNet
extended with temporal attention and temporal (1-D over frames) convolutions after each spatial layer, run on
F frames at once, each frame decoded by the image VAE - is the one of the open ModelScope text-to-video
model (damo-vilab, now ali-vilab/text-to-video-ms-1.7b), which diffusers implements as
``UNet3DConditionModel`` + ``TextToVideoSDPipeline``. The ``paper`` preset is that model.

Components: text encoder (OpenCLIP ViT-H/14 text tower) -> 3-D UNet (classifier-free guidance, N denoising
steps over latents [B, 4, F, H/8, W/8]) -> VAE decoder (frames batched as [B*F, 4, H/8, W/8]).

Sources of the ``paper`` preset (values copied from the published configs of ali-vilab/text-to-video-ms-1.7b):

* UNet: ``unet/config.json`` (UNet3DConditionModel; block_out_channels 320/640/1280/1280, layers_per_block 2,
  attention_head_dim 64, cross_attention_dim 1024, norm_num_groups 32, norm_eps 1e-5, sample_size 32,
  CrossAttnDownBlock3D x3 + DownBlock3D, UpBlock3D + CrossAttnUpBlock3D x3, act silu). Built: 1,411,233,860
  parameters, of which 545,323,136 in ``transformer_in``/``temp_attentions``/``temp_convs``; the fp32
  ``diffusion_pytorch_model.safetensors`` is 5.65 GB (= 1.41 G x 4 bytes).
* Text encoder: ``text_encoder/config.json`` (CLIPTextModel: hidden 1024, 23 layers, 16 heads, MLP 4096,
  act gelu, 77 positions, vocab 49408 - the OpenCLIP ViT-H/14 text tower with its last layer dropped).
  Built: 340,387,840 parameters.
* VAE: ``vae/config.json`` (AutoencoderKL, 128/256/512/512, 4 latent channels, scaling factor 0.18215 - the
  Stable Diffusion KL-f8 VAE).
* Scheduler: ``scheduler/scheduler_config.json`` (DDIMScheduler: scaled_linear betas 0.00085-0.012,
  1000 training steps, set_alpha_to_one false, steps_offset 1, epsilon prediction).
* Run defaults: diffusers ``TextToVideoSDPipeline.__call__``: num_frames=16, num_inference_steps=50,
  guidance_scale=9.0, height/width = unet sample_size (32) x VAE factor (8) = 256.
* Published total: "1.7 billion parameters, in which 0.5 billion parameters are dedicated to temporal
  capabilities" (Wang et al., "ModelScope Text-to-Video Technical Report", arXiv:2308.06571); built here:
  UNet + text encoder = 1.75 G, temporal 0.55 G.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from genscope.models.base import PresetTable
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import SD_SCHEDULER, LatentDiffusionConfig, clip_text_spec, kl_vae_spec

# ali-vilab/text-to-video-ms-1.7b scheduler/scheduler_config.json: identical to Stable Diffusion's DDIM config
MS_SCHEDULER = SD_SCHEDULER


@dataclass(frozen=True)
class VideoDiffusionConfig(LatentDiffusionConfig):
    """A latent text-to-video diffusion model: text encoder -> 3-D UNet over F frames -> per-frame VAE decode."""

    frames: int = 16  # default number of frames F


def unet3d_spec(*, channels=(320, 640, 1280, 1280), layers_per_block=2, head_dim=64, cross_dim=1024,
                groups=32, sample_size=32) -> ModuleSpec:
    """diffusers ``UNet3DConditionModel`` with the ModelScope block layout.

    Unlike SD 1.x's UNet2D, the 3-D blocks use ``attention_head_dim`` as channels per head: the spatial and
    temporal transformers of a level with C channels have C / head_dim heads (ModelScope: 5, 10, 20, 20 heads of
    64 channels); ``transformer_in`` always has 8 heads of ``attention_head_dim`` channels.
    """
    return ModuleSpec.of(
        "UNet3DConditionModel",
        sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=channels, layers_per_block=layers_per_block, downsample_padding=1,
        mid_block_scale_factor=1, act_fn="silu", norm_num_groups=groups, norm_eps=1e-5,
        cross_attention_dim=cross_dim, attention_head_dim=head_dim,
    )


PAPER = VideoDiffusionConfig(
    preset="paper",
    # OpenCLIP ViT-H/14 text tower as shipped (23 of 24 layers); projection_dim 512 is in the config but
    # CLIPTextModel has no projection layer
    text_encoder=clip_text_spec(hidden=1024, layers=23, heads=16, mlp=4096, act="gelu", projection_dim=512),
    denoiser=unet3d_spec(),
    decoder=kl_vae_spec(channels=(128, 256, 512, 512)),
    text_len=77, image_size=256, frames=16, steps=50, guidance_scale=9.0, scheduler="ddim",
    scheduler_config=MS_SCHEDULER,
)

# small: same 4 levels, block types, spatial + temporal attention after every spatial layer, temporal convs,
# transformer_in; narrower channels (heads of 16 channels: 4, 8, 16, 16 heads), 8 frames at 128x128 (latent 16x16).
SMALL = replace(
    PAPER, preset="small",
    text_encoder=clip_text_spec(hidden=256, layers=4, heads=4, mlp=1024, act="gelu", projection_dim=256),
    denoiser=unet3d_spec(channels=(64, 128, 256, 256), head_dim=16, cross_dim=256, sample_size=16),
    decoder=kl_vae_spec(channels=(32, 64, 128, 128), layers_per_block=1),
    image_size=128, frames=8, steps=20,
)

# tiny: milliseconds, for tests; still 4 UNet levels with the ModelScope block layout.
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, act="gelu", projection_dim=32, vocab=1000,
                                max_positions=16),
    denoiser=unet3d_spec(channels=(32, 32, 64, 64), layers_per_block=1, head_dim=8, cross_dim=32, groups=8,
                         sample_size=8),
    decoder=kl_vae_spec(channels=(8, 8, 16, 16), layers_per_block=1, groups=4, sample_size=64),
    text_len=16, image_size=64, frames=4, steps=2,
)

PRESETS = PresetTable("make-a-video", {"paper": PAPER, "small": SMALL, "tiny": TINY})
