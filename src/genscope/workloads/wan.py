"""``wan``: Wan 2.1 text-to-video (after the paper), following diffusers' ``WanPipeline``.

text_encoder (umT5-XXL [B, 512, 4096]) -> denoise x 50 (WanTransformer3DModel on [uncond; cond] latents
[2B, 16, 1 + (F-1)/4, H/8, W/8], CFG; each block: full 3-D self-attention over every video token, then
cross-attention to the text) -> decoder (de-normalize with the VAE's latent mean/std, Wan-VAE decode).
"""

from __future__ import annotations

import torch

from genscope.models.wan import PRESETS
from genscope.workloads.base import Request
from genscope.workloads.dit import DiTPipeline, DiTWorkload


class WanPipeline(DiTPipeline):
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.token_ids(request, "text_encoder", prompts, self.config.text_len)
        return {"text": self.component("text_encoder")(ids)[0]}  # [B, 512, 4096]

    def predict(self, x, t, cond, request):
        return self.component("denoiser")(hidden_states=x, timestep=self.timestep(t, x.shape[0]),
                                          encoder_hidden_states=cond["text"], return_dict=False)[0]

    def decode(self, latents, request):
        vae = self.component("decoder")
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(self.device, self.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(self.device, self.dtype)
        return vae.decode(latents * std + mean).sample  # [B, 3, F, H, W]


class Wan(DiTWorkload):
    name = "wan"
    paper_model = "Wan 2.1 T2V (DiT with full 3-D attention, after the paper)"
    family = "diffusion transformer (latent, video)"
    modality = "video"
    presets = PRESETS
    pipeline_class = WanPipeline
