"""Training the suite's trainable cores: the model's own loss, random data of the right shapes, FSDP2, AdamW.

What is trained (:data:`TRAINABLE`) is the network that the paper's Figure 6 trains - the denoiser of a
diffusion model, the masked-token transformer of Muse - built from the workload's preset config with
random weights. Losses, as the models were trained:

* diffusion (``stable-diffusion``, ``prod-image``, ``make-a-video``): noise prediction, ``MSE(eps_theta(x_t,
  t, c), eps)`` with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` from the preset's noise schedule
  (diffusers' ``DDPMScheduler.add_noise``; Ho et al. 2020, Eq. 14; Rombach et al. 2022, Eq. 2); random latents
  ``x_0`` and text states ``c`` (SDXL: plus the pooled embedding and the size/crop ids);
* masked tokens (``muse``): a cosine-scheduled fraction of the VQ tokens is replaced by [MASK] and the
  cross-entropy of the logits is taken on the masked positions only (Chang et al. 2023, Muse, Sec. 2.3;
  MaskGIT, Chang et al. 2022, Sec. 3.2).

Sharding (:func:`shard_units`, :func:`apply_fsdp`): ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every
block - a UNet's down blocks, mid block and up blocks; a transformer's blocks - then on the root, which
keeps the remaining parameters (embeddings, conv_in/out, norms, heads). The analytical model
(``genscope.studies.training_model``) uses the same :func:`shard_units` on the meta device, so the
communication it predicts is that of these units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genscope.errors import UserError
from genscope.models.base import vae_scale_factor

# workload -> (component trained, loss)
TRAINABLE: dict[str, tuple[str, str]] = {
    "stable-diffusion": ("denoiser", "noise_mse"),
    "prod-image": ("denoiser", "noise_mse"),
    "make-a-video": ("denoiser", "noise_mse"),
    "muse": ("transformer", "masked_token_ce"),
}
LEARNING_RATE = 1e-4  # AdamW; SD 1.x model card: 1e-4 after warm-up (the value does not change the cost)


def check_trainable(workload: str) -> tuple[str, str]:
    """(component, loss) of a workload, or a UserError naming the ones with a training loss."""
    from genscope.workloads import registry

    registry.get(workload)  # unknown names: the registry's own error
    if workload not in TRAINABLE:
        raise UserError(f"{workload} has no training loss in genscope; models that train: {', '.join(TRAINABLE)}")
    return TRAINABLE[workload]


# ----------------------------------------------------------------------------------------------------
# The trained network and its batch
# ----------------------------------------------------------------------------------------------------
def build_trainable(workload: str, preset: str, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """(the trained network with requires_grad on and in train mode, the preset config)."""
    from genscope.workloads import registry

    component, _ = check_trainable(workload)
    config = registry.get(workload).config(preset)
    spec = dict(config.component_specs())[component]
    model = spec.build(device, dtype)
    model.requires_grad_(True)
    model.train()
    return model, config


def batch_shapes(workload: str, config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of one training batch (what :func:`make_batch` draws)."""
    _, loss = check_trainable(workload)
    if loss == "masked_token_ce":
        side = config.image_size // config.vq_factor  # tokens per image side
        return {"tokens": (batch_size, 1, side, side),
                "context": (batch_size, config.text_len, config.transformer["cond_dim"])}
    unet = config.denoiser
    latent = config.image_size // vae_scale_factor(config.decoder)
    channels = unet["in_channels"]
    frames = getattr(config, "frames", None) if unet.class_name == "UNet3DConditionModel" else None
    shapes = {"latents": (batch_size, channels, frames, latent, latent) if frames else
              (batch_size, channels, latent, latent),
              "text": (batch_size, config.text_len, unet["cross_attention_dim"])}
    if unet.get("addition_embed_type") == "text_time":  # SDXL: pooled text embedding + 6 size/crop ids
        time_ids = 6
        pooled = unet["projection_class_embeddings_input_dim"] - time_ids * unet["addition_time_embed_dim"]
        shapes["text_embeds"] = (batch_size, pooled)
        shapes["time_ids"] = (batch_size, time_ids)
    return shapes


def make_batch(workload: str, config, batch_size: int, generator: torch.Generator,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Random data of the right shapes (drawn on the CPU from ``generator``, then moved)."""
    shapes = batch_shapes(workload, config, batch_size)
    _, loss = TRAINABLE[workload]
    if loss == "masked_token_ce":
        codebook = config.codebook_size
        tokens = torch.randint(0, codebook, shapes["tokens"], generator=generator)
        # cosine masking schedule: ratio = cos(pi/2 * r), r ~ U(0, 1) per sample; at least one token masked
        r = torch.rand(batch_size, generator=generator)
        ratio = torch.cos(math.pi / 2 * r)
        scores = torch.rand(shapes["tokens"], generator=generator).flatten(1)  # [B, L]
        count = (ratio * scores.shape[1]).ceil().clamp(min=1).long()  # masked tokens per sample
        rank = scores.argsort(dim=1).argsort(dim=1)
        mask = (rank < count[:, None]).view(shapes["tokens"])
        batch = {"tokens": tokens, "mask": mask,
                 "context": torch.randn(shapes["context"], generator=generator)}
    else:
        batch = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        batch["noise"] = torch.randn(shapes["latents"], generator=generator)
        batch["timesteps"] = torch.randint(0, 1000, (batch_size,), generator=generator)
        if "time_ids" in batch:
            size = float(config.image_size)
            batch["time_ids"] = torch.tensor([[size, size, 0.0, 0.0, size, size]]).repeat(batch_size, 1)
    return {k: v.to(device) for k, v in batch.items()}


def loss_function(workload: str, config) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """``loss(model, batch) -> scalar``: the model's own training objective."""
    _, kind = check_trainable(workload)
    if kind == "masked_token_ce":
        mask_id = config.mask_token_id

        def masked_ce(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            tokens, mask = batch["tokens"], batch["mask"]  # [B, 1, h, w]
            inputs = torch.where(mask, torch.full_like(tokens, mask_id), tokens)
            logits = model(inputs, batch["context"])  # [B, L, codebook]
            # per-position cross-entropy, averaged over the masked positions only (no boolean indexing, so
            # the same code runs on the meta device)
            ce = nn.functional.cross_entropy(logits.float().transpose(1, 2), tokens.flatten(1), reduction="none")
            weight = mask.flatten(1).to(ce.dtype)  # [B, L]
            return (ce * weight).sum() / weight.sum()

        return masked_ce

    from genscope.workloads.diffusion import make_scheduler

    scheduler = make_scheduler("ddpm", config.scheduler_config)

    def noise_mse(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["latents"], batch["noise"], batch["timesteps"]
        noisy = scheduler.add_noise(x0, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        added = ({"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]}
                 if "time_ids" in batch else None)
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        pred = model(noisy, t, encoder_hidden_states=batch["text"], **kwargs).sample
        return nn.functional.mse_loss(pred.float(), noise.float())

    return noise_mse


# ----------------------------------------------------------------------------------------------------
# FSDP2
# ----------------------------------------------------------------------------------------------------
def shard_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks ``fully_shard`` wraps one by one (in forward order), before the root."""
    units: list[tuple[str, nn.Module]] = []
    for list_name in ("down_blocks", "mid_block", "up_blocks", "transformer_blocks"):
        child = getattr(model, list_name, None)
        if isinstance(child, nn.ModuleList):
            units += [(f"{list_name}.{i}", m) for i, m in enumerate(child)]
        elif isinstance(child, nn.Module):
            units.append((list_name, child))
    if not units:
        raise UserError(f"{type(model).__name__} has no blocks genscope knows how to shard")
    return units


def unit_parameters(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Parameters per FSDP unit: each block's, then the root's (everything no block holds)."""
    units = shard_units(model)
    seen: set[int] = set()
    out = []
    for name, module in units:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        out.append((name, params))
    out.append(("(root)", [p for p in model.parameters() if id(p) not in seen]))
    return out


def mixed_precision_policy(param_dtype: torch.dtype):
    """FSDP2 mixed precision: compute and all-gather in ``param_dtype``, reduce-scatter gradients in float32
    (``None`` when ``param_dtype`` is float32: full precision)."""
    if param_dtype == torch.float32:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype = torch.float32, mesh=None) -> nn.Module:
    """``fully_shard`` every block, then the root (needs an initialized process group)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mesh": mesh}
    policy = mixed_precision_policy(param_dtype)
    if policy is not None:
        kwargs["mp_policy"] = policy
    for _, module in shard_units(model):
        fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


@dataclass
class Trainer:
    """One rank's training state: the sharded model, its optimizer, loss and data."""

    workload: str
    config: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    batch_size: int
    generator: torch.Generator
    device: torch.device

    def step(self) -> torch.Tensor:
        """Forward, backward (FSDP all-gathers and reduce-scatters inside), AdamW; the loss (detached)."""
        batch = make_batch(self.workload, self.config, self.batch_size, self.generator, self.device)
        loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def make_trainer(workload: str, preset: str, *, batch_size: int, device: torch.device, param_dtype: torch.dtype,
                 seed: int, mesh=None) -> Trainer:
    """Build, shard (FSDP2) and set up AdamW; same weights on every rank (built from one seed), data per ``seed``."""
    model, config = build_trainable(workload, preset, device, torch.float32)
    apply_fsdp(model, param_dtype, mesh)
    # fused AdamW: one op per parameter group instead of ~10 per parameter (smaller traces, as on GPUs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    return Trainer(workload, config, model, optimizer, loss_function(workload, config), batch_size, generator,
                   torch.device(device))
