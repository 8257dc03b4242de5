"""Diffusion transformers (after the paper): the config shared by Flux, SD3.5, Wan 2.1, CogVideoX and HunyuanVideo.

Text encoder(s) -> a diffusion transformer over latent patches (image: ``[B, C, H/8, W/8]``; video:
``[B, C, 1 + (F-1)/4, H/8, W/8]``) for N steps -> a VAE decoder. Unlike the UNets of the paper's suite, a DiT
keeps one sequence length through every block: ``tokens = F_latent/p_t * H/(8 p) * W/(8 p)`` image/video
tokens, plus the text tokens where text and image attend jointly (MMDiT).

Each model's module (``models/flux.py`` ...) fills in :class:`DiTConfig` presets, citing the published
config of every ``paper`` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from genscope.models.base import ModelConfig
from genscope.models.spec import ModuleSpec

# FlowMatchEulerDiscreteScheduler's config (rectified-flow models: Flux, SD3, Wan, HunyuanVideo); ``shift``
# per model from its published scheduler config, set where each preset is defined.
FLOW_SCHEDULER = (("num_train_timesteps", 1000), ("use_dynamic_shifting", False))


@dataclass(frozen=True)
class DiTConfig(ModelConfig):
    """A text-to-image/video diffusion transformer: up to three text encoders -> DiT -> VAE decoder."""

    text_encoder: ModuleSpec | None = None
    text_encoder_2: ModuleSpec | None = None
    text_encoder_3: ModuleSpec | None = None
    denoiser: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 512  # tokens of the long text encoder (T5 / umT5 / Llama) as the pipeline pads them
    clip_len: int = 77  # CLIP context length (pooled / concatenated embeddings)
    image_size: int = 1024  # height in pixels (the size studies sweep)
    width: int = 1024  # width in pixels at ``image_size``; other sizes keep the aspect ratio
    frames: int = 1  # video frames (1 for images)
    steps: int = 28
    guidance_scale: float = 3.5
    guidance_distilled: bool = False  # guidance as an input embedding, no CFG batch (Flux-dev, HunyuanVideo)
    vae_spatial: int = 8  # pixels per latent, per side
    vae_temporal: int = 1  # frames per latent frame after the first (4 for the causal video VAEs)
    frame_step: int = 0  # frames must be frame_step*k + 1 (0: vae_temporal); the reason, for the error message
    frame_rule: str = "the causal video VAE keeps the first frame and compresses the rest by 4"
    patch: int = 2  # latent pixels per token, per side
    patch_t: int = 1  # latent frames per token
    scheduler: str = "flow_euler"  # "flow_euler" or "ddim"
    scheduler_config: tuple = FLOW_SCHEDULER

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("text_encoder_2", "text_encoder_2"),
                            ("text_encoder_3", "text_encoder_3"), ("denoiser", "denoiser"), ("decoder", "decoder"))

    def component_specs(self) -> list[tuple[str, ModuleSpec]]:
        return [(name, spec) for name, spec in super().component_specs() if spec is not None]

    @property
    def spatial_multiple(self) -> int:
        """Pixel sizes must be multiples of this: VAE factor x patch size."""
        return self.vae_spatial * self.patch

    def width_for(self, height: int) -> int:
        """The width at ``height`` pixels: the preset's aspect ratio, rounded to :attr:`spatial_multiple`."""
        m = self.spatial_multiple
        return max(m, round(height * self.width / self.image_size / m) * m)

    def latent_frames(self, frames: int) -> int:
        """Frames after the causal video VAE: 1 + (F - 1) / 4 (images: 1)."""
        return 1 if self.vae_temporal == 1 else 1 + (frames - 1) // self.vae_temporal

    def media_tokens(self, height: int, frames: int) -> int:
        """Image/video tokens of the DiT: F_latent/p_t x H/(8 p) x W/(8 p)."""
        m = self.spatial_multiple
        return (self.latent_frames(frames) // self.patch_t) * (height // m) * (self.width_for(height) // m)
