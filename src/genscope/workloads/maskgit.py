"""Parallel decoding (MaskGIT, Chang et al. 2022) shared by the masked-token transformers (Muse, Phenaki).

Start with every token masked; at each of N iterations run the transformer once over all tokens (with
classifier-free guidance: on [uncond; cond], logits mixed), sample a code for every masked position, keep
the most confident samples and re-mask the rest so that the masked fraction follows the cosine schedule
cos(pi/2 * (i+1)/N); after the last iteration nothing is masked. The sequence length is the same at every
iteration (the paper's Figure 8 shows it constant for Muse).

The sampling and re-masking step is diffusers' ``AmusedScheduler`` (MaskGIT's algorithm: multinomial sample,
Gumbel-perturbed confidence with a temperature annealed from 2 to 0, cosine mask ratio), driven by a seeded
CPU ``torch.Generator`` so that runs are deterministic on every device. Written out (not diffusers'
``AmusedPipeline``) because the loop must open a phase per iteration and take any transformer callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genscope.workloads.phases import loop_steps, phase


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # [B, L] final token ids (no mask left)
    first_logits: torch.Tensor | None  # [B, L, V] guided logits of iteration 0 (float32 copy)


def make_mask_scheduler(mask_token_id: int, masking_schedule: str = "cosine"):
    from diffusers import AmusedScheduler

    from genscope.models.spec import quiet_libraries

    with quiet_libraries():
        return AmusedScheduler(mask_token_id=mask_token_id, masking_schedule=masking_schedule)


def parallel_decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    seq_len: int,
    mask_token_id: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    device: torch.device,
    temperature: tuple[float, float] = (2.0, 0.0),
    masking_schedule: str = "cosine",
    phase_name: str = "decode",
) -> DecodeResult:
    """Run ``steps`` parallel-decoding iterations; each is one phase ``decode#i``.

    logits_fn(tokens) -> logits: tokens [N, L] (N = 2B with guidance: [uncond; cond]) -> [N, L, V] over the
    codebook (V real codes; the mask id is never predicted).
    On the meta device (shape-only traces) the transformer runs every iteration but nothing is sampled.
    """
    use_cfg = guidance_scale > 1.0
    scheduler = make_mask_scheduler(mask_token_id, masking_schedule)
    meta = torch.device(device).type == "meta"
    scheduler.set_timesteps(steps, temperature=tuple(temperature), device="cpu" if meta else device)
    generator = torch.Generator("cpu").manual_seed(seed)
    tokens = torch.full((batch, seq_len), mask_token_id, dtype=torch.long, device=device)  # [B, L] all masked
    first_logits = None
    timesteps = list(scheduler.timesteps)
    for i in loop_steps(phase_name, len(timesteps)):
        t = timesteps[i]
        with phase(phase_name, step=i):
            model_input = torch.cat([tokens, tokens]) if use_cfg else tokens  # [N, L]
            logits = logits_fn(model_input)  # [N, L, V]
            if use_cfg:
                uncond, cond = logits.chunk(2)
                logits = uncond + guidance_scale * (cond - uncond)  # [B, L, V]
            if i == 0 and not meta:
                first_logits = logits.detach().float().clone()
            if meta:
                continue
            tokens = scheduler.step(logits, t, tokens, generator=generator).prev_sample  # [B, L]
    return DecodeResult(tokens=tokens, first_logits=first_logits)
