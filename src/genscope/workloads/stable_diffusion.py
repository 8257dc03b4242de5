"""``stable-diffusion``: latent text-to-image (paper: Stable Diffusion; here SD 1.5 at ``paper`` scale).

text_encoder (CLIP, prompt and empty prompt) -> denoise x N (UNet on [uncond; cond] latents, CFG)
-> decoder (VAE decode of the final latents).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genscope.models.base import check_multiple, component, unet_downsample_factor, vae_scale_factor
from genscope.models.layers.attention import install_attention
from genscope.models.stable_diffusion import PRESETS, LatentDiffusionConfig
from genscope.workloads.base import Generation, Pipeline, Request, Workload, to_pil
from genscope.workloads.diffusion import denoise, make_scheduler, seeded_noise
from genscope.workloads.phases import phase
from genscope.workloads.text import make_tokenizer


def build_components(config: LatentDiffusionConfig, device, dtype, weights: Path | None,
                     names: tuple[str, ...] = ("text_encoder", "denoiser", "decoder"),
                     folders: tuple[str, ...] = ("text_encoder", "unet", "vae")):
    """Build (or load from a diffusers-layout folder) each component; route attention; count parameters."""
    from genscope.models.weights import load_pretrained

    modules = {}
    for (name, spec), folder in zip(config.component_specs(), folders, strict=True):
        if weights is not None:
            modules[name] = load_pretrained(spec.class_name, weights / folder, dtype, torch.device(device))
        else:
            modules[name] = spec.build(device, dtype)
    sites = []
    comps = []
    for name in names:
        module = modules[name]
        sites += install_attention(module, prefix=name)
        if name == "decoder":  # generation runs only the VAE's decoder half
            used = torch.nn.ModuleList([module.post_quant_conv, module.decoder])
            comps.append(component(name, module, used, note="decoder + post_quant_conv (the encoder is unused)"))
        else:
            comps.append(component(name, module))
    return comps, sites


def prompt_batch(request: Request) -> list[str]:
    """What a text encoder sees: [negative]*B + [prompt]*B with guidance (uncond first), else [prompt]*B."""
    prompts = [request.prompt] * request.batch_size
    if request.use_cfg:
        prompts = [request.negative_prompt] * request.batch_size + prompts
    return prompts


class StableDiffusionPipeline(Pipeline):
    config: LatentDiffusionConfig

    def encode_prompt(self, request: Request) -> torch.Tensor:
        """-> [2B, T, D] ([uncond; cond]) with guidance, else [B, T, D]."""
        text_encoder = self.component("text_encoder")
        tokenizer = make_tokenizer(text_encoder.config.vocab_size, self.config.text_len, request.weights)
        ids = tokenizer(prompt_batch(request), device=self.device)
        return text_encoder(ids)[0]

    def generate(self, request: Request) -> Generation:
        unet = self.component("denoiser")
        vae = self.component("decoder")
        with phase("text_encoder"):
            text = self.encode_prompt(request)  # [2B, 77, 768] at paper scale
        scale = vae_scale_factor(self.config.decoder)
        latent_size = request.image_size // scale
        channels = unet.config.in_channels
        latents = seeded_noise((request.batch_size, channels, latent_size, latent_size), request.seed,
                               self.device, self.dtype)
        scheduler = make_scheduler(self.config.scheduler, self.config.scheduler_config)

        def unet_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # x: [2B, 4, H/8, W/8]; text: [2B, 77, D]
            return unet(x, t, encoder_hidden_states=text).sample

        latents = denoise(unet_fn, latents, scheduler, request.steps, request.guidance_scale)
        with phase("decoder"):
            images = vae.decode(latents / vae.config.scaling_factor).sample  # [B, 3, H, W]
        return Generation(images=to_pil(images), raw=images.float(), info={"latent_size": latent_size})


class StableDiffusion(Workload):
    name = "stable-diffusion"
    paper_model = "Stable Diffusion (latent diffusion TTI)"
    family = "diffusion (latent)"
    modality = "image"
    phases = ("text_encoder", "denoise", "decoder")
    presets = PRESETS
    weights_subfolders = ("text_encoder", "unet", "vae")

    def validate(self, config: LatentDiffusionConfig, request: Request) -> None:
        super().validate(config, request)
        multiple = vae_scale_factor(config.decoder) * unet_downsample_factor(config.denoiser)
        check_multiple("image size", request.image_size, multiple, maximum=4096)

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> StableDiffusionPipeline:
        comps, sites = build_components(config, device, dtype, weights)
        return StableDiffusionPipeline(config, comps, torch.device(device), dtype, sites)
