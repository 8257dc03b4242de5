"""``cogvideox``: CogVideoX-5B text-to-video (after the paper), following diffusers' ``CogVideoXPipeline``.

text_encoder (T5-XXL [B, 226, 4096]) -> denoise x 50 (CogVideoXTransformer3DModel on [uncond; cond] latents
[2B, F_latent, 16, H/8, W/8] - frames before channels, as the pipeline - with 3-D RoPE, CFG; attention over
one sequence [text; video]) -> decoder (3-D causal VAE).
"""

from __future__ import annotations

import torch

from genscope.models.cogvideox import PRESETS
from genscope.workloads.base import Request
from genscope.workloads.dit import DiTPipeline, DiTWorkload


def rotary_embedding(config, transformer, height: int, width: int, latent_frames: int, device):
    """3-D RoPE (cos, sin) of the video tokens, as ``CogVideoXPipeline._prepare_rotary_positional_embeddings``."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p = transformer.config.patch_size
    grid_h, grid_w = height // (config.vae_spatial * p), width // (config.vae_spatial * p)
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), transformer.config.sample_width // p,
                                            transformer.config.sample_height // p)
    return get_3d_rotary_pos_embed(embed_dim=transformer.config.attention_head_dim, crops_coords=crops,
                                   grid_size=(grid_h, grid_w), temporal_size=latent_frames, device=device)


class CogVideoXPipeline(DiTPipeline):
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.token_ids(request, "text_encoder", prompts, self.config.text_len)
        text = self.component("text_encoder")(ids)[0]  # [B, 226, 4096]
        width = self.config.width_for(request.image_size)
        cos, sin = rotary_embedding(self.config, self.component("denoiser"), request.image_size, width,
                                    self.config.latent_frames(request.frames), self.device)
        return {"text": text, "rope": (cos.to(self.dtype), sin.to(self.dtype))}

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        b, c, f, h, w = super().latent_shape(request)
        return (b, f, c, h, w)  # [B, F_latent, 16, h, w]

    def predict(self, x, t, cond, request):
        return self.component("denoiser")(hidden_states=x, encoder_hidden_states=cond["text"],
                                          timestep=self.timestep(t, x.shape[0]), image_rotary_emb=cond["rope"],
                                          return_dict=False)[0]

    def decode(self, latents, request):
        vae = self.component("decoder")
        z = latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor  # [B, 16, F_latent, h, w]
        return vae.decode(z).sample  # [B, 3, F, H, W]


class CogVideoX(DiTWorkload):
    name = "cogvideox"
    paper_model = "CogVideoX-5B (DiT with full 3-D attention, after the paper)"
    family = "diffusion transformer (latent, video)"
    modality = "video"
    presets = PRESETS
    pipeline_class = CogVideoXPipeline
