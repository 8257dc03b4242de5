"""The inference loop shared by the diffusion-transformer workloads (flux, sd3, wan, cogvideox, hunyuan-video).

text_encoder (each model's encoders) -> denoise x N (the DiT on latents; with CFG on ``[uncond; cond]``,
guidance-distilled models get the scale as an input and run one batch) -> decoder (VAE). Each workload
module supplies ``encode_prompt`` (conditioning tensors), ``predict`` (one transformer call) and
``decode``; the loop, the schedulers and the size rules live here.

Size rules (refused with the rule in the message): pixel sizes are multiples of VAE factor x patch size
(16 for all five); video frame counts are ``1 + 4k`` (the causal video VAEs keep the first frame and
compress the rest by 4).

The loop follows diffusers' pipelines (``FluxPipeline``, ``StableDiffusion3Pipeline``, ``WanPipeline``,
``CogVideoXPipeline``, ``HunyuanVideoPipeline``), written out through ``workloads.diffusion.denoise`` to open a
phase per step and to honour the shape-only step limit.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genscope.errors import UserError
from genscope.models.base import check_multiple, component
from genscope.models.dit import DiTConfig
from genscope.models.layers.attention import install_attention
from genscope.models.spec import quiet_libraries
from genscope.workloads.base import MAX_FRAMES, Generation, Pipeline, Request, Workload, to_pil
from genscope.workloads.diffusion import denoise, make_scheduler, seeded_noise
from genscope.workloads.phases import phase
from genscope.workloads.stable_diffusion import prompt_batch
from genscope.workloads.text import make_tokenizer

MAX_IMAGE_SIZE = 2048  # pixels per side (height)


class FlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' rectified-flow Euler scheduler with the two members ``denoise`` expects of a scheduler."""

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample


def make_dit_scheduler(config: DiTConfig):
    if config.scheduler == "flow_euler":
        with quiet_libraries():
            return FlowMatchScheduler.from_config(dict(config.scheduler_config))
    return make_scheduler(config.scheduler, config.scheduler_config)


def build_dit_components(config: DiTConfig, device, dtype) -> tuple[list, list]:
    """Build every component with random weights, route attention through the entry point, count parameters."""
    comps, sites = [], []
    for name, spec in config.component_specs():
        module = spec.build(device, dtype)
        sites += install_attention(module, prefix=name)
        if name == "decoder":  # generation runs only the VAE's decoder half
            used = torch.nn.ModuleList([m for m in (getattr(module, "post_quant_conv", None), module.decoder)
                                        if m is not None])
            comps.append(component(name, module, used, note="decoder (the encoder is unused)"))
        else:
            comps.append(component(name, module))
    return comps, sites


class DiTPipeline(Pipeline):
    config: DiTConfig

    # ----- per model ----------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompt(self, request: Request, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for ``prompts`` (stacked on the batch), as keyword arguments of ``predict``."""

    @abc.abstractmethod
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor],
                request: Request) -> torch.Tensor:
        """One transformer call: latents ``x`` at timestep ``t`` -> prediction of ``x``'s shape."""

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        """[B, C, h, w] for images, [B, C, F_latent, h, w] for video (CogVideoX overrides: frames first)."""
        c = self.config
        h, w = request.image_size // c.vae_spatial, c.width_for(request.image_size) // c.vae_spatial
        channels = 16
        if c.vae_temporal > 1:  # a video model
            return (request.batch_size, channels, c.latent_frames(request.frames), h, w)
        return (request.batch_size, channels, h, w)

    def prepare_latents(self, noise: torch.Tensor, request: Request) -> torch.Tensor:
        return noise

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, request: Request) -> torch.Tensor:
        """Final latents -> images [B, 3, H, W] or video [B, 3, F, H, W]."""

    # ----- the loop -----------------------------------------------------------------------------
    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """The scheduler's timestep as a [batch] tensor on the model's device, in the model's dtype."""
        return t.reshape(1).expand(batch).to(device=self.device, dtype=self.dtype)

    def generate(self, request: Request) -> Generation:
        use_cfg = request.use_cfg and not self.config.guidance_distilled
        prompts = prompt_batch(request) if use_cfg else [request.prompt] * request.batch_size
        with phase("text_encoder"):
            cond = self.encode_prompt(request, prompts)
        noise = seeded_noise(self.latent_shape(request), request.seed, self.device, self.dtype)
        latents = self.prepare_latents(noise, request)
        scheduler = make_dit_scheduler(self.config)

        def denoiser_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.predict(x, t, cond, request)

        latents = denoise(denoiser_fn, latents, scheduler, request.steps,
                          request.guidance_scale if use_cfg else 1.0)
        with phase("decoder"):
            out = self.decode(latents, request)
        if out.dim() == 5:  # [B, 3, F, H, W]
            frames = out.shape[2]
            flat = out.permute(0, 2, 1, 3, 4).reshape(-1, out.shape[1], out.shape[3], out.shape[4])  # [B*F, 3, H, W]
            videos = [to_pil(flat[b * frames:(b + 1) * frames]) for b in range(out.shape[0])]
            return Generation(videos=videos, raw=out.float(), info={"frames": frames})
        return Generation(images=to_pil(out), raw=out.float())

    # ----- text helpers -------------------------------------------------------------------------
    def token_ids(self, request: Request, encoder: str, prompts: list[str], length: int,
                  subfolder: str = "tokenizer", device: torch.device | str | None = None) -> torch.Tensor:
        vocab = self.component(encoder).config.vocab_size
        tokenizer = make_tokenizer(vocab, length, request.weights, subfolder=subfolder)
        return tokenizer(prompts, device=device or self.device)  # [B, length]

    def clip_pooled(self, request: Request, encoder: str, prompts: list[str]) -> torch.Tensor:
        """CLIP's pooled prompt embedding: [B, hidden] (``pooler_output`` / ``text_embeds`` with projection)."""
        out = self.component(encoder)(self.token_ids(request, encoder, prompts, self.config.clip_len))
        return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


class DiTWorkload(Workload):
    """Validation shared by the DiT workloads: sizes (multiples of VAE factor x patch) and frames (1 + 4k)."""

    phases = ("text_encoder", "denoise", "decoder")
    pipeline_class: type[DiTPipeline]

    def validate(self, config: DiTConfig, request: Request) -> None:
        super().validate(config, request)
        check_multiple("image size (height)", request.image_size, config.spatial_multiple, maximum=MAX_IMAGE_SIZE)
        if self.modality == "video":
            f = config.frame_step or config.vae_temporal
            if request.frames > MAX_FRAMES or (request.frames - 1) % f:
                raise UserError(
                    f"frames {request.frames} is not supported by {self.name}: {config.frame_rule}, so frames must "
                    f"be {f}k+1 (1, {f + 1}, {2 * f + 1}, {3 * f + 1}, ...) up to {MAX_FRAMES}")

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> DiTPipeline:
        if weights is not None:
            raise UserError(f"{self.name}: --weights is not supported yet (random weights only)")
        comps, sites = build_dit_components(config, device, dtype)
        return self.pipeline_class(config, comps, torch.device(device), dtype, sites)
