"""Shared checks for workload tests (tiny presets)."""

from __future__ import annotations

from dataclasses import replace

import torch

from genscope.instrument.memory import track_peak_memory
from genscope.workloads import registry
from genscope.workloads.base import RunSettings
from genscope.workloads.phases import record_phases


def run_tiny(name: str, **overrides):
    """Build the tiny preset and run it; returns (pipeline, request, generation, phase times)."""
    workload = registry.get(name)
    settings = replace(RunSettings(preset="tiny"), **overrides)
    request = workload.request(settings)
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    with record_phases() as times:
        generation = pipeline(request)
    return pipeline, request, generation, times


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_backends_agree(name: str, tolerance: float = 1e-4, **overrides) -> float:
    """baseline and flash attention give the same output (relative error below ``tolerance``)."""
    _, _, base, _ = run_tiny(name, attention="baseline", **overrides)
    _, _, flash, _ = run_tiny(name, attention="flash", **overrides)
    assert base.raw is not None and flash.raw is not None
    err = relative_error(base.raw, flash.raw)
    assert err < tolerance, f"{name}: baseline vs flash relative error {err:.2e}"
    return err


def run_peak_bytes(name: str, **overrides) -> int:
    """Peak new-tensor bytes of a whole tiny run (weights excluded)."""
    workload = registry.get(name)
    request = workload.request(replace(RunSettings(preset="tiny"), **overrides))
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype)
    with track_peak_memory() as stats:
        pipeline(request)
    return stats.peak_bytes


def assert_baseline_uses_more_memory(name: str, factor: float = 1.5, **overrides) -> tuple[int, int]:
    """With a long enough sequence, the materialized similarity matrix makes baseline's peak larger."""
    base = run_peak_bytes(name, attention="baseline", **overrides)
    flash = run_peak_bytes(name, attention="flash", **overrides)
    assert base > factor * flash, f"{name}: baseline peak {base} B vs flash {flash} B"
    return base, flash


TINY_UNET_TEXT_DIM = 32  # the stable-diffusion tiny preset's cross-attention dim


def tiny_unet():
    """The tiny SD UNet with genscope's attention installed, and one step's inputs: (unet, args, kwargs)."""
    from genscope.models.layers.attention import install_attention
    from genscope.models.stable_diffusion import PRESETS

    config = PRESETS["tiny"]
    unet = config.denoiser.build("cpu", torch.float32)
    install_attention(unet, "denoiser")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(2, config.text_len, TINY_UNET_TEXT_DIM, generator=gen)
    return unet, (sample, torch.tensor(500)), {"encoder_hidden_states": text}


def run_unet(unet, args, kwargs):
    """One UNet call in the UNet's dtype; its sample."""
    dtype = next(unet.parameters()).dtype
    with torch.inference_mode():
        return unet(args[0].to(dtype), args[1], encoder_hidden_states=kwargs["encoder_hidden_states"].to(dtype)).sample
