"""``flux``: FLUX.1-dev text-to-image (after the paper), following diffusers' ``FluxPipeline``.

text_encoder (CLIP-L pooled [B, 768] + T5-XXL [B, 512, 4096]) -> denoise x 28 (FluxTransformer2DModel on
latents packed 2x2: [B, (H/16)(W/16), 64]; guidance 3.5 as an embedding, no CFG batch) -> decoder (unpack,
un-shift, 16-channel VAE). Every transformer block's attention is joint over [text; image] tokens.
"""

from __future__ import annotations

import torch

from genscope.models.flux import PRESETS
from genscope.workloads.base import Request
from genscope.workloads.dit import DiTPipeline, DiTWorkload


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C], as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w], as ``FluxPipeline._unpack_latents``."""
    b, _, channels = latents.shape
    x = latents.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """RoPE position ids of the packed image tokens: [(h/2)(w/2), 3] = (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxPipeline(DiTPipeline):
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        pooled = self.clip_pooled(request, "text_encoder", prompts)  # [B, 768]
        ids = self.token_ids(request, "text_encoder_2", prompts, self.config.text_len, "tokenizer_2")
        text = self.component("text_encoder_2")(ids)[0]  # [B, 512, 4096]
        return {"text": text, "pooled": pooled}

    def prepare_latents(self, noise: torch.Tensor, request: Request) -> torch.Tensor:
        return pack_latents(noise)  # [B, (h/2)(w/2), 64]

    def predict(self, x, t, cond, request):
        b, h = x.shape[0], request.image_size // self.config.vae_spatial
        w = self.config.width_for(request.image_size) // self.config.vae_spatial
        text = cond["text"]
        guidance = torch.full((b,), request.guidance_scale, device=self.device, dtype=self.dtype)
        return self.component("denoiser")(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=cond["pooled"],
            timestep=self.timestep(t, b) / 1000, guidance=guidance, img_ids=image_ids(h, w, self.device, self.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype), return_dict=False)[0]

    def decode(self, latents, request):
        vae = self.component("decoder")
        h = request.image_size // self.config.vae_spatial
        w = self.config.width_for(request.image_size) // self.config.vae_spatial
        z = unpack_latents(latents, h, w) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z).sample  # [B, 3, H, W]


class Flux(DiTWorkload):
    name = "flux"
    paper_model = "FLUX.1-dev (MMDiT TTI, after the paper)"
    family = "diffusion transformer (latent)"
    modality = "image"
    presets = PRESETS
    pipeline_class = FluxPipeline
