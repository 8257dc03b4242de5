"""``sd3``: Stable Diffusion 3.5 Large text-to-image (after the paper), following ``StableDiffusion3Pipeline``.

text_encoder (CLIP-L and bigG penultimate states [B, 77, 2048] padded to 4096 and followed by T5-XXL's
[B, 256, 4096] -> [B, 333, 4096]; pooled [B, 2048]) -> denoise x 28 (SD3Transformer2DModel on [uncond; cond]
latents [2B, 16, H/8, W/8], CFG) -> decoder (un-shift, 16-channel VAE). Attention is joint over [image; text].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genscope.models.sd3 import PRESETS
from genscope.workloads.base import Request
from genscope.workloads.dit import DiTPipeline, DiTWorkload


class SD3Pipeline(DiTPipeline):
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for name, folder in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            ids = self.token_ids(request, name, prompts, self.config.clip_len, folder)
            out = self.component(name)(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # penultimate layer, as the pipeline (clip_skip None)
            pooled.append(out.text_embeds)
        t5 = self.component("text_encoder_3")(
            self.token_ids(request, "text_encoder_3", prompts, self.config.text_len, "tokenizer_3"))[0]
        clip = torch.cat(hidden, dim=-1)  # [B, 77, 768 + 1280]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # [B, 77, 4096]
        return {"text": torch.cat([clip, t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}  # [B, 333, 4096]

    def predict(self, x, t, cond, request):
        return self.component("denoiser")(
            hidden_states=x, encoder_hidden_states=cond["text"], pooled_projections=cond["pooled"],
            timestep=self.timestep(t, x.shape[0]), return_dict=False)[0]

    def decode(self, latents, request):
        vae = self.component("decoder")
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample  # [B, 3, H, W]


class SD3(DiTWorkload):
    name = "sd3"
    paper_model = "Stable Diffusion 3.5 Large (MMDiT TTI, after the paper)"
    family = "diffusion transformer (latent)"
    modality = "image"
    presets = PRESETS
    pipeline_class = SD3Pipeline
