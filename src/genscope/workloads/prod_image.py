"""``prod-image``: production-scale latent text-to-image (paper: Prod Image; here SDXL base at ``paper`` scale).

text_encoder (CLIP ViT-L and OpenCLIP bigG on the prompt; penultimate hidden states concatenated -> [B, 77,
2048], bigG's projected pooled embedding -> [B, 1280]; the empty negative prompt is a zero embedding, as
SDXL's ``force_zeros_for_empty_prompt``) -> denoise x N (UNet on [uncond; cond] latents with the pooled
embedding and the size/crop ids ``[H, W, 0, 0, H, W]`` as added conditions, CFG, Euler) -> decoder (VAE).

The loop follows diffusers' ``StableDiffusionXLPipeline`` (no refiner), written out through
``workloads.diffusion.denoise`` to open a phase per step.
"""

from __future__ import annotations

import torch

from genscope.models.base import vae_scale_factor
from genscope.models.prod_image import PRESETS, DualEncoderLatentConfig
from genscope.workloads.base import Generation, Pipeline, Request, to_pil
from genscope.workloads.diffusion import denoise, make_scheduler, seeded_noise
from genscope.workloads.phases import phase
from genscope.workloads.stable_diffusion import StableDiffusion, build_components, prompt_batch
from genscope.workloads.text import make_tokenizer

NAMES = ("text_encoder", "text_encoder_2", "denoiser", "decoder")
FOLDERS = ("text_encoder", "text_encoder_2", "unet", "vae")  # diffusers layout of stable-diffusion-xl-base-1.0


class ProdImagePipeline(Pipeline):
    config: DualEncoderLatentConfig

    def encode_prompt(self, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (text [2B, 77, 2048], pooled [2B, 1280]) with guidance ([uncond; cond]), else [B, ...]."""
        zero_uncond = request.use_cfg and not request.negative_prompt and self.config.force_zeros_for_empty_prompt
        prompts = [request.prompt] * request.batch_size if zero_uncond else prompt_batch(request)
        hidden, pooled = [], None
        for name, tokenizer_folder in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            encoder = self.component(name)
            tokenizer = make_tokenizer(encoder.config.vocab_size, self.config.text_len, request.weights,
                                       subfolder=tokenizer_folder)
            out = encoder(tokenizer(prompts, device=self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # penultimate layer, as SDXL (clip_skip None)
            if name == "text_encoder_2":
                pooled = out.text_embeds  # [B, 1280]: bigG's pooled output through its projection
        text = torch.cat(hidden, dim=-1)  # [B, 77, 768 + 1280]
        if zero_uncond:
            text = torch.cat([torch.zeros_like(text), text])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
        return text, pooled

    def generate(self, request: Request) -> Generation:
        unet = self.component("denoiser")
        vae = self.component("decoder")
        with phase("text_encoder"):
            text, pooled = self.encode_prompt(request)  # [2B, 77, 2048], [2B, 1280] at paper scale
        size = request.image_size
        # micro-conditioning: original size, crop top-left, target size (the pipeline defaults: no crop)
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=self.dtype,
                                device=self.device).repeat(text.shape[0], 1)  # [2B, 6]
        latent_size = size // vae_scale_factor(self.config.decoder)
        latents = seeded_noise((request.batch_size, unet.config.in_channels, latent_size, latent_size),
                               request.seed, self.device, self.dtype)
        scheduler = make_scheduler(self.config.scheduler, self.config.scheduler_config)
        added = {"text_embeds": pooled, "time_ids": time_ids}

        def unet_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # x: [2B, 4, H/8, W/8]; text: [2B, 77, 2048]
            return unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample

        generator = torch.Generator("cpu").manual_seed(request.seed)  # Euler draws (unused) noise per step
        latents = denoise(unet_fn, latents, scheduler, request.steps, request.guidance_scale, generator=generator)
        with phase("decoder"):
            images = vae.decode(latents / vae.config.scaling_factor).sample  # [B, 3, H, W]
        return Generation(images=to_pil(images), raw=images.float(), info={"latent_size": latent_size})


class ProdImage(StableDiffusion):
    """Validation (image size: multiple of the VAE factor x the UNet's downsampling) as Stable Diffusion's."""

    name = "prod-image"
    paper_model = "Prod Image (production latent diffusion TTI)"
    family = "diffusion (latent)"
    modality = "image"
    phases = ("text_encoder", "denoise", "decoder")
    presets = PRESETS
    weights_subfolders = FOLDERS
    weights_note = "diffusers layout of stabilityai/stable-diffusion-xl-base-1.0 (safetensors)"

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> ProdImagePipeline:
        comps, sites = build_components(config, device, dtype, weights, names=NAMES, folders=FOLDERS)
        return ProdImagePipeline(config, comps, torch.device(device), dtype, sites)
