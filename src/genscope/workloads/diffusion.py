"""The denoising loop shared by the diffusion workloads (latent, pixel cascade, video).

Written out rather than calling diffusers' pipelines because the loop must open a phase per step, take any
denoiser callable (2-D UNet, 3-D UNet, super-resolution UNet with a low-res condition) and use the
attention entry point; the schedulers themselves are diffusers' (DDIM, Euler, DDPM).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from genscope.errors import choice_error
from genscope.workloads.phases import StepLimit, limit_steps, loop_steps, phase

SCHEDULERS = ("ddim", "euler", "ddpm")


@contextlib.contextmanager
def limit_denoise_steps(max_steps: int,
                        on_loop_end: Callable[[str, int, int], None] | None = None) -> Iterator[StepLimit]:
    """``with limit_denoise_steps(2) as limit:`` every :func:`denoise` loop (and every other loop of identical
    steps) inside stops after 2 steps; see :func:`genscope.workloads.phases.limit_steps`."""
    with limit_steps(max_steps, on_loop_end=on_loop_end) as limit:
        yield limit


def make_scheduler(name: str, config: tuple | dict):
    """A diffusers scheduler from a frozen config (pairs) - DDIM, Euler (discrete) or DDPM."""
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "ddpm": DDPMScheduler}
    if name not in classes:
        raise choice_error("scheduler", name, SCHEDULERS)
    cfg = dict(config)
    from genscope.models.spec import quiet_libraries

    with quiet_libraries():
        return classes[name].from_config(cfg)


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Noise drawn on the CPU from ``seed`` (same picture on every device), then moved."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def denoise(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler,
    steps: int,
    guidance_scale: float,
    phase_name: str = "denoise",
    learned_variance: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``steps`` denoising steps with classifier-free guidance.

    denoiser(model_input, t) -> prediction, where model_input is ``[uncond; cond]`` stacked on the batch
    (2B) when guidance is on, else the B latents. latents: [B, C, ...] (image [B,C,H,W], video [B,C,F,H,W]).
    ``learned_variance``: the prediction carries 2C channels (DeepFloyd IF); the variance half is kept for
    the scheduler's ``learned_range`` as diffusers' IF pipeline does.
    ``generator``: for schedulers that draw noise in ``step`` (DDPM), so that a seeded run is reproducible.
    """
    use_cfg = guidance_scale > 1.0
    # on the meta device (shape-only traces) the timesteps stay on the CPU: schedulers index tables with them
    scheduler.set_timesteps(steps, device="cpu" if latents.device.type == "meta" else latents.device)
    latents = latents * scheduler.init_noise_sigma
    channels = latents.shape[1]
    timesteps = list(scheduler.timesteps)
    for i in loop_steps(phase_name, len(timesteps)):
        t = timesteps[i]
        with phase(phase_name, step=i):
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = denoiser(model_input, t)
            if use_cfg:
                uncond, cond = prediction.chunk(2)
                if learned_variance:
                    uncond_eps, _ = uncond.split(channels, dim=1)
                    cond_eps, cond_var = cond.split(channels, dim=1)
                    eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
                    prediction = torch.cat([eps, cond_var], dim=1)
                else:
                    prediction = uncond + guidance_scale * (cond - uncond)
            if learned_variance and getattr(scheduler.config, "variance_type", None) not in (
                    "learned", "learned_range"):
                prediction = prediction[:, :channels]
            step_kwargs = {"generator": generator} if generator is not None else {}
            latents = scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
    return latents
