"""``make-a-video``: latent text-to-video diffusion (paper: Make-A-Video; here ModelScope T2V at ``paper`` scale).

text_encoder (CLIP, prompt and negative prompt) -> denoise x N (3-D UNet on [uncond; cond] latents
[2B, 4, F, H/8, W/8], CFG) -> decoder (VAE decode of every frame, frames batched as [B*F, 4, H/8, W/8]).

Inside the UNet (diffusers ``UNet3DConditionModel``), frames fold into the batch for the 2-D layers and
spatial attention (q: [2B*F, heads, h*w, d]), and space folds into the batch for ``transformer_in`` and
``temp_attentions`` (q: [2B*h*w, heads, F, d]) - the rearrangement of the paper's Figure 11. Their attention
sites get kind ``temporal`` from their module path (``default_kind``).

The loop follows diffusers' ``TextToVideoSDPipeline``; it is written out (via ``workloads.diffusion.denoise``)
to open a phase per step. diffusers folds frames into the batch before ``scheduler.step``; DDIM's step is
elementwise, so stepping the [B, 4, F, h, w] latents directly gives the same result.
"""

from __future__ import annotations

import torch

from genscope.models.base import check_multiple, unet_downsample_factor, vae_scale_factor
from genscope.models.make_a_video import PRESETS, VideoDiffusionConfig
from genscope.workloads.base import MAX_FRAMES, Generation, Request, Workload, check_range, to_pil
from genscope.workloads.diffusion import denoise, make_scheduler, seeded_noise
from genscope.workloads.phases import phase
from genscope.workloads.stable_diffusion import StableDiffusionPipeline, build_components

MAX_IMAGE_SIZE = 1024  # pixels per side; 16 frames at 1024 px is already 16x the paper preset's pixels per frame


class MakeAVideoPipeline(StableDiffusionPipeline):
    """Text encoding as Stable Diffusion's (``encode_prompt``); a 3-D UNet over frames; per-frame decode."""

    config: VideoDiffusionConfig

    def generate(self, request: Request) -> Generation:
        unet = self.component("denoiser")
        vae = self.component("decoder")
        with phase("text_encoder"):
            text = self.encode_prompt(request)  # [2B, 77, 1024] at paper scale ([negative; prompt])
        scale = vae_scale_factor(self.config.decoder)
        latent_size = request.image_size // scale
        batch, frames = request.batch_size, request.frames
        channels = unet.config.in_channels
        # latents: [B, 4, F, H/8, W/8]
        latents = seeded_noise((batch, channels, frames, latent_size, latent_size), request.seed,
                               self.device, self.dtype)
        scheduler = make_scheduler(self.config.scheduler, self.config.scheduler_config)

        def unet_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # x: [2B, 4, F, H/8, W/8]; text: [2B, 77, D] (the UNet repeats it per frame)
            return unet(x, t, encoder_hidden_states=text).sample

        latents = denoise(unet_fn, latents, scheduler, request.steps, request.guidance_scale)
        with phase("decoder"):
            # as TextToVideoSDPipeline.decode_latents: [B, 4, F, h, w] -> [B*F, 4, h, w] -> VAE -> [B, 3, F, H, W]
            z = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, latent_size, latent_size)
            images = vae.decode(z / vae.config.scaling_factor).sample  # [B*F, 3, H, W]
            video = images.reshape(batch, frames, *images.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        videos = [to_pil(images[b * frames:(b + 1) * frames]) for b in range(batch)]
        return Generation(videos=videos, raw=video.float(),
                          info={"latent_size": latent_size, "frames": frames})


class MakeAVideo(Workload):
    name = "make-a-video"
    paper_model = "Make-A-Video (latent diffusion TTV)"
    family = "diffusion (latent, video)"
    modality = "video"
    phases = ("text_encoder", "denoise", "decoder")
    presets = PRESETS
    weights_subfolders = ("text_encoder", "unet", "vae")
    weights_note = "diffusers layout of ali-vilab/text-to-video-ms-1.7b (safetensors)"

    def validate(self, config: VideoDiffusionConfig, request: Request) -> None:
        super().validate(config, request)
        check_range("frames", request.frames, 1, MAX_FRAMES)
        multiple = vae_scale_factor(config.decoder) * unet_downsample_factor(config.denoiser)
        check_multiple("image size", request.image_size, multiple, maximum=MAX_IMAGE_SIZE)

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> MakeAVideoPipeline:
        comps, sites = build_components(config, device, dtype, weights)
        return MakeAVideoPipeline(config, comps, torch.device(device), dtype, sites)
