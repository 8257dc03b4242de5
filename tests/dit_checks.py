"""Shared checks for the diffusion-transformer workload tests (flux, sd3, wan, cogvideox, hunyuan-video)."""

from __future__ import annotations

import pytest
import torch

from genscope.cli import main
from genscope.errors import UserError
from genscope.instrument.seqlen import trace_workload
from genscope.workloads import registry
from genscope.workloads.base import RunSettings


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def described(name: str, preset: str = "paper") -> dict[str, int]:
    return {c.name: c.params for c in registry.get(name).describe(preset)}


def trace_tiny(name: str, **overrides):
    """Every attention call of a tiny run on the CPU, all steps run (no replication)."""
    settings = RunSettings(preset="tiny", device="cpu", **overrides)
    return trace_workload(name, settings, all_steps=True)


def denoise_calls(trace):
    return trace.calls[trace.calls["phase"] == "denoise"]


def tiny_on_meta(name: str):
    """The tiny pipeline built on the meta device (to count its modules)."""
    workload = registry.get(name)
    return workload.build(workload.config("tiny"), device="meta")


def count_modules(module: torch.nn.Module, class_name: str) -> int:
    return sum(type(m).__name__ == class_name for m in module.modules())


def assert_refused(name: str, rule: str, **overrides) -> None:
    """Bad sizes are refused with the rule in the message, and the CLI exits with 2."""
    workload = registry.get(name)
    with pytest.raises(UserError, match=rule):
        workload.request(RunSettings(preset="tiny", **overrides))
    argv = ["run", name, "--preset", "tiny"]
    for key, value in overrides.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 2


def assert_matches_diffusers_processors(name: str, tolerance: float = 1e-5, **overrides) -> float:
    """The denoiser with genscope's processors gives what the same denoiser with diffusers' own gives."""
    from dataclasses import replace

    workload = registry.get(name)
    request = workload.request(replace(RunSettings(preset="tiny", steps=1), **overrides))
    config = workload.config("tiny")
    ours = workload.build(config)
    theirs = workload.build(config)
    for component in theirs.components:  # the same weights (seeded build), diffusers' default processors
        if component.name == "denoiser":
            component.module = config.denoiser.build("cpu")
    a, b = ours(request).raw.double(), theirs(request).raw.double()
    err = float((a - b).norm() / b.norm())
    assert err < tolerance, f"{name}: genscope vs diffusers processors relative error {err:.2e}"
    return err
