"""``imagen``: pixel-space cascaded text-to-image (paper: Imagen; here the DeepFloyd IF cascade at ``paper`` scale).

text_encoder (T5 for the IF stages and the x4 upscaler's CLIP, prompt and empty prompt)
-> denoise x N1 (base UNet on [uncond; cond] 64x64 images, CFG, learned-range DDPM)
-> sr_256 x N2 (SR UNet on [image ; bilinearly upsampled + noised base image], noise level as class label)
-> sr_1024 x N3 (x4 upscaler UNet on [latents ; noised 256x256 image], DDIM, v-prediction)
-> decoder (the x4 upscaler's VAE decodes the 256x256 latents to 1024x1024 pixels).

The loops follow diffusers' ``IFPipeline``, ``IFSuperResolutionPipeline`` and ``StableDiffusionUpscalePipeline``
(the stage III that DeepFloyd's model card uses), written out through ``workloads.diffusion.denoise`` to open
a phase per step; the conditioning image is concatenated inside the denoiser call, after the scheduler's
``scale_model_input`` (the identity for DDPM; the upscaler pipeline scales only the latents).

Steps and guidance per stage: without ``--steps`` / ``--guidance-scale`` each stage uses its own default
(paper: 100 / 50 / 75 steps, guidance 7 / 4 / 9); with one, every stage uses that value.
Image sizes: the output is base x 4 (pixel SR) x the x4 stage's VAE factor; ``--image-size`` sets the output
and so the base size (paper: 1024 = 64 x 4 x 4).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from genscope.models.base import check_multiple
from genscope.models.imagen import PRESETS, PixelCascadeConfig, route_attention_pooling
from genscope.workloads.base import Generation, Pipeline, Request, RunSettings, Workload, to_pil
from genscope.workloads.diffusion import denoise, make_scheduler
from genscope.workloads.phases import phase
from genscope.workloads.stable_diffusion import build_components, prompt_batch
from genscope.workloads.text import HashTokenizer, make_tokenizer

NAMES = ("text_encoder", "denoiser", "sr_256", "text_encoder_2", "sr_1024", "decoder")
# --weights DIR: DeepFloyd/IF-I-XL-v1.0 as DIR, DeepFloyd/IF-II-L-v1.0 in DIR/sr_256,
# stabilityai/stable-diffusion-x4-upscaler in DIR/sr_1024 (diffusers layouts, safetensors)
FOLDERS = ("text_encoder", "unet", "sr_256/unet", "sr_1024/text_encoder", "sr_1024/unet", "sr_1024/vae")


@dataclass(frozen=True)
class CascadeRequest(Request):
    """A validated run of a cascade: steps and guidance scale per stage (base, sr_256, sr_1024)."""

    stage_steps: tuple[int, int, int] = (1, 1, 1)
    stage_guidance: tuple[float, float, float] = (1.0, 1.0, 1.0)


def stage_plan(request: Request) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Per-stage steps and guidance of a request (a plain Request: the given values in every stage)."""
    steps = getattr(request, "stage_steps", (request.steps,) * 3)
    guidance = getattr(request, "stage_guidance", (request.guidance_scale,) * 3)
    if not request.use_cfg:  # the text embeddings carry no unconditional half
        guidance = (1.0, 1.0, 1.0)
    return tuple(steps), tuple(guidance)


class ImagenPipeline(Pipeline):
    config: PixelCascadeConfig

    def _noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        """Drawn on the CPU (same picture on every device), then moved."""
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=self.device, dtype=self.dtype)

    def encode_t5(self, request: Request) -> torch.Tensor:
        """-> [2B, 77, 4096] ([uncond; cond]) at paper scale; padding masked as in ``IFPipeline.encode_prompt``."""
        text_encoder = self.component("text_encoder")
        tokenizer = make_tokenizer(text_encoder.config.vocab_size, self.config.text_len, request.weights,
                                   add_bos=False, pad_with_eos=False)  # T5: no start token, pad id 0
        ids = tokenizer(prompt_batch(request), device=self.device)
        pad = tokenizer.pad_id if isinstance(tokenizer, HashTokenizer) else tokenizer.tok.pad_token_id
        # on the meta device (shapes only) the padding mask has no values for transformers to inspect
        mask = None if ids.device.type == "meta" else (ids != pad).long()
        return text_encoder(ids, attention_mask=mask)[0]

    def encode_clip(self, request: Request) -> torch.Tensor:
        """The x4 upscaler's prompt embedding: last CLIP hidden state, [2B, 77, 1024] at paper scale."""
        text_encoder = self.component("text_encoder_2")
        tokenizer = make_tokenizer(text_encoder.config.vocab_size, self.config.text_len, request.weights,
                                   subfolder="sr_1024/tokenizer")
        return text_encoder(tokenizer(prompt_batch(request), device=self.device))[0]

    def generate(self, request: Request) -> Generation:
        config = self.config
        steps, guidance = stage_plan(request)
        base, mid, out = config.stage_sizes(request.image_size)
        batch = request.batch_size
        copies = 2 if request.use_cfg else 1
        generator = torch.Generator("cpu").manual_seed(request.seed)
        with phase("text_encoder"):
            t5 = self.encode_t5(request)  # [2B, 77, 4096]
            clip = self.encode_clip(request)  # [2B, 77, 1024]

        # stage I: 64x64 pixels from noise
        unet = self.component("denoiser")
        images = self._noise(generator, (batch, unet.config.out_channels // 2, base, base))  # [B, 3, 64, 64]

        def base_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x, t, encoder_hidden_states=t5).sample  # x: [2B, 3, 64, 64] -> [2B, 6, 64, 64]

        images = denoise(base_fn, images, make_scheduler("ddpm", config.scheduler_config), steps[0], guidance[0],
                         phase_name="denoise", learned_variance=True, generator=generator)

        # stage II: 64 -> 256 pixels, conditioned on the upsampled, noised stage-I image
        sr = self.component("sr_256")
        upscaled = F.interpolate(images, (mid, mid), mode="bilinear", align_corners=True)  # [B, 3, 256, 256]
        level = torch.full((batch,), config.sr_256_noise_level, dtype=torch.long, device=self.device)
        noising = make_scheduler("ddpm", config.noising_scheduler_config)
        upscaled = noising.add_noise(upscaled, self._noise(generator, tuple(upscaled.shape)), level)
        sr_cond, sr_level = torch.cat([upscaled] * copies), torch.cat([level] * copies)
        images = self._noise(generator, (batch, sr.config.out_channels // 2, mid, mid))

        def sr_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # [x ; upscaled]: [2B, 6, 256, 256] -> [2B, 6, 256, 256]
            return sr(torch.cat([x, sr_cond], dim=1), t, encoder_hidden_states=t5, class_labels=sr_level).sample

        images = denoise(sr_fn, images, make_scheduler("ddpm", config.sr_256_scheduler_config), steps[1],
                         guidance[1], phase_name="sr_256", learned_variance=True, generator=generator)

        # stage III: x4 latent upscaler - 4-channel latents at 256x256 next to the noised 256x256 image
        x4 = self.component("sr_1024")
        vae = self.component("decoder")
        level = torch.full((batch,), config.sr_1024_noise_level, dtype=torch.long, device=self.device)
        low_res = make_scheduler("ddpm", config.low_res_scheduler_config)
        low = low_res.add_noise(images, self._noise(generator, tuple(images.shape)), level)
        x4_cond, x4_level = torch.cat([low] * copies), torch.cat([level] * copies)
        latents = self._noise(generator, (batch, vae.config.latent_channels, mid, mid))  # [B, 4, 256, 256]

        def x4_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # [latents ; image]: [2B, 7, 256, 256] -> [2B, 4, 256, 256]
            return x4(torch.cat([x, x4_cond], dim=1), t, encoder_hidden_states=clip, class_labels=x4_level).sample

        latents = denoise(x4_fn, latents, make_scheduler("ddim", config.sr_1024_scheduler_config), steps[2],
                          guidance[2], phase_name="sr_1024", generator=generator)
        with phase("decoder"):
            images = vae.decode(latents / vae.config.scaling_factor).sample  # [B, 3, 1024, 1024]
        return Generation(images=to_pil(images), raw=images.float(),
                          info={"stage_sizes": [base, mid, out], "stage_steps": list(steps),
                                "stage_guidance": list(guidance)})


class Imagen(Workload):
    name = "imagen"
    paper_model = "Imagen (pixel diffusion TTI cascade)"
    family = "diffusion (pixel)"
    modality = "image"
    phases = ("text_encoder", "denoise", "sr_256", "sr_1024", "decoder")
    presets = PRESETS
    weights_subfolders = FOLDERS
    weights_note = ("DeepFloyd/IF-I-XL-v1.0 as DIR, DeepFloyd/IF-II-L-v1.0 in DIR/sr_256, "
                    "stabilityai/stable-diffusion-x4-upscaler in DIR/sr_1024 (diffusers layouts, safetensors)")

    def request(self, settings: RunSettings) -> CascadeRequest:
        request = super().request(settings)
        config = self.config(request.preset)
        steps = ((request.steps,) * 3 if settings.steps is not None
                 else (config.steps, config.sr_256_steps, config.sr_1024_steps))
        guidance = ((request.guidance_scale,) * 3 if settings.guidance_scale is not None
                    else (config.guidance_scale, config.sr_256_guidance_scale, config.sr_1024_guidance_scale))
        return CascadeRequest(**{f.name: getattr(request, f.name) for f in fields(Request)},
                              stage_steps=steps, stage_guidance=guidance)

    def validate(self, config: PixelCascadeConfig, request: Request) -> None:
        super().validate(config, request)
        f1, f2 = config.stage_factors()
        # the output is base * f1 * f2 and every UNet must take its stage's size
        check_multiple("image size", request.image_size, config.base_multiple() * f1 * f2,
                       maximum=2 * config.image_size)

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> ImagenPipeline:
        comps, sites = build_components(config, device, dtype, weights, names=NAMES, folders=FOLDERS)
        for c in comps:
            if c.name in ("denoiser", "sr_256"):
                sites += route_attention_pooling(c.module, prefix=c.name)
        return ImagenPipeline(config, comps, torch.device(device), dtype, sites)
