"""``hunyuan-video``: HunyuanVideo text-to-video (after the paper), following ``HunyuanVideoPipeline``.

text_encoder (Llama-3 hidden states of layer -3 over [template; prompt], template cropped -> [B, 256, 4096]
with the prompt's padding mask; CLIP-L pooled [B, 768]) -> denoise x 50 (HunyuanVideoTransformer3DModel on
latents [B, 16, 1 + (F-1)/4, H/8, W/8], guidance as an embedding: no CFG batch; attention over [video; text]
with the text padding masked) -> decoder (3-D causal VAE).
"""

from __future__ import annotations

import torch

from genscope.models.hunyuan_video import PRESETS
from genscope.workloads.base import Request
from genscope.workloads.dit import DiTPipeline, DiTWorkload


class HunyuanVideoPipeline(DiTPipeline):
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        c = self.config
        ids = self.token_ids(request, "text_encoder", prompts, c.template_len + c.text_len, device="cpu")  # [B, L]
        pad_id = int(ids[0, -1])  # the tokenizer pads to the full length: the last id is padding
        mask = ids != pad_id  # the prompt's tokens (as the tokenizer's attention mask), on the CPU: meta has no values
        mask[:, : c.template_len + 1] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        # on the meta device transformers cannot inspect the padding mask's values: the encoder runs unmasked
        # there (same shapes and FLOPs); the transformer below still gets the mask
        text_mask = None if self.device.type == "meta" else mask.long()
        out = self.component("text_encoder")(input_ids=ids, attention_mask=text_mask, output_hidden_states=True)
        text = out.hidden_states[-(c.skip_layers + 1)][:, c.template_len:]  # [B, 256, 4096]
        pooled = self.clip_pooled(request, "text_encoder_2", prompts)  # [B, 768]
        return {"text": text, "mask": mask[:, c.template_len:], "pooled": pooled}

    def predict(self, x, t, cond, request):
        b = x.shape[0]
        guidance = torch.full((b,), request.guidance_scale * 1000.0, device=self.device, dtype=self.dtype)
        return self.component("denoiser")(
            hidden_states=x, timestep=self.timestep(t, b), encoder_hidden_states=cond["text"],
            encoder_attention_mask=cond["mask"], pooled_projections=cond["pooled"], guidance=guidance,
            return_dict=False)[0]

    def decode(self, latents, request):
        vae = self.component("decoder")
        return vae.decode(latents / vae.config.scaling_factor).sample  # [B, 3, F, H, W]


class HunyuanVideo(DiTWorkload):
    name = "hunyuan-video"
    paper_model = "HunyuanVideo (dual/single-stream DiT with full 3-D attention, after the paper)"
    family = "diffusion transformer (latent, video)"
    modality = "video"
    presets = PRESETS
    pipeline_class = HunyuanVideoPipeline
