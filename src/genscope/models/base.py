"""What every model of the suite has: a config with presets, components, and size rules.

A model config is a frozen dataclass (``@dataclass(frozen=True)``) subclassing :class:`ModelConfig`.
Its components are :class:`~genscope.models.spec.ModuleSpec` fields; ``component_specs()`` lists them
in pipeline order under their genscope names (``text_encoder``, ``denoiser``, ``decoder``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.models.spec import ModuleSpec, count_params

SCALES = ("paper", "small", "tiny")


@dataclass(frozen=True)
class ModelConfig:
    """Base of every workload's config. Subclasses add ``ModuleSpec`` fields and settings."""

    preset: str

    # component field name -> genscope component name, in pipeline order (set by subclasses)
    COMPONENTS: ClassVar[tuple[tuple[str, str], ...]] = ()

    def component_specs(self) -> list[tuple[str, ModuleSpec]]:
        return [(name, getattr(self, attr)) for attr, name in self.COMPONENTS]

    def settings(self) -> dict:
        """Non-component fields (step counts, sizes, ...) for summaries."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not isinstance(getattr(self, f.name), ModuleSpec)}


class PresetTable:
    """Named presets of one model: ``paper``, ``small``, ``tiny`` and any extra (e.g. ``amused-512``)."""

    def __init__(self, model: str, presets: dict[str, ModelConfig]):
        self.model = model
        self._presets = dict(presets)

    def names(self) -> list[str]:
        return list(self._presets)

    def __getitem__(self, name: str) -> ModelConfig:
        try:
            return self._presets[name]
        except KeyError:
            raise choice_error(f"preset for {self.model}", name, self.names()) from None


@dataclass
class Component:
    """A built network in a workload. ``params`` counts what generation uses (see ``note``)."""

    name: str
    module: nn.Module
    class_name: str
    params: int
    note: str = ""


def component(name: str, module: nn.Module, used: nn.Module | None = None, note: str = "") -> Component:
    """``used``: the part that runs at inference when it is less than the whole (e.g. a VAE's decoder)."""
    return Component(name, module, type(module).__name__, count_params(used if used is not None else module), note)


def check_multiple(what: str, value: int, multiple: int, minimum: int | None = None,
                   maximum: int | None = None) -> None:
    """Sizes the architecture can take: multiples of ``multiple`` within [minimum, maximum]."""
    minimum = minimum or multiple
    if value < minimum or value % multiple or (maximum is not None and value > maximum):
        upper = f" up to {maximum}" if maximum is not None else ""
        raise UserError(f"{what} {value} is not supported: it must be a multiple of {multiple}, "
                        f"at least {minimum}{upper} (e.g. {minimum}, {minimum + multiple}, {minimum + 2 * multiple})")


def unet_downsample_factor(unet: ModuleSpec) -> int:
    """2^(number of downsampling levels) of a diffusers UNet: the multiple its sample size must be."""
    return 2 ** (len(unet["block_out_channels"]) - 1)


def vae_scale_factor(vae: ModuleSpec) -> int:
    return 2 ** (len(vae["block_out_channels"]) - 1)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
