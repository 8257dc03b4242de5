"""Component specs: frozen, hashable descriptions of one network, built with diffusers or transformers.

A workload config (a frozen dataclass per workload, e.g. ``StableDiffusionConfig``) holds one
:class:`ModuleSpec` per component. A spec names a class from an allow-list (user-supplied configs are
data: they can never name an arbitrary class) and the keyword arguments of that class's config, frozen.
Presets cite the source of each value next to it.

Building: ``spec.build(device, dtype)``; on ``torch.device("meta")`` nothing is allocated, so paper-scale
models are described in well under a second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genscope.errors import UserError

# (library, class name) -> (module to import from, config class or None)
ALLOWED_CLASSES: dict[str, tuple[str, str, str | None]] = {
    "UNet2DConditionModel": ("diffusers", "diffusers", None),
    "UNet3DConditionModel": ("diffusers", "diffusers", None),
    "AutoencoderKL": ("diffusers", "diffusers", None),
    "VQModel": ("diffusers", "diffusers", None),
    "UVit2DModel": ("diffusers", "diffusers", None),
    "CLIPTextModel": ("transformers", "transformers", "CLIPTextConfig"),
    "CLIPTextModelWithProjection": ("transformers", "transformers", "CLIPTextConfig"),
    "T5EncoderModel": ("transformers", "transformers", "T5Config"),
    "LlamaForCausalLM": ("transformers", "transformers", "LlamaConfig"),
    "GPT2LMHeadModel": ("transformers", "transformers", "GPT2Config"),
    # diffusion transformers and their encoders/VAEs (the "after the paper" workloads: flux, sd3, wan, ...)
    "FluxTransformer2DModel": ("diffusers", "diffusers", None),
    "SD3Transformer2DModel": ("diffusers", "diffusers", None),
    "WanTransformer3DModel": ("diffusers", "diffusers", None),
    "CogVideoXTransformer3DModel": ("diffusers", "diffusers", None),
    "HunyuanVideoTransformer3DModel": ("diffusers", "diffusers", None),
    "AutoencoderKLWan": ("diffusers", "diffusers", None),
    "AutoencoderKLCogVideoX": ("diffusers", "diffusers", None),
    "AutoencoderKLHunyuanVideo": ("diffusers", "diffusers", None),
    "UMT5EncoderModel": ("transformers", "transformers", "UMT5Config"),
    "LlamaModel": ("transformers", "transformers", "LlamaConfig"),
    # genscope's own (diffusers ModelMixin/ConfigMixin) modules, where no library model fits
    "MaskGITTransformer": ("genscope", "genscope.models.layers.maskgit", None),
    "CViViTDecoder": ("genscope", "genscope.models.phenaki", None),
    "ViTVQGANDecoder": ("genscope", "genscope.models.parti", None),
}

# diffusers classes whose constructors concatenate config lists (``[1] + dim_mult``): tuples thawed to lists
LIST_CONFIG_CLASSES = frozenset({"AutoencoderKLWan"})


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any, as_list: bool) -> Any:
    if isinstance(value, tuple):
        items = [_thaw(v, as_list) for v in value]
        return items if as_list else tuple(items)
    return value


@dataclass(frozen=True)
class ModuleSpec:
    """One network: an allowed class and its config's keyword arguments (frozen)."""

    class_name: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, class_name: str, **params: Any) -> ModuleSpec:
        if class_name not in ALLOWED_CLASSES:
            raise UserError(f"unknown module class {class_name!r}; accepted: {', '.join(ALLOWED_CLASSES)}")
        return cls(class_name, tuple(sorted((k, _freeze(v)) for k, v in params.items())))

    @property
    def library(self) -> str:
        return ALLOWED_CLASSES[self.class_name][0]

    def kwargs(self) -> dict[str, Any]:
        """The config as keyword arguments (tuples back to lists where a library expects lists)."""
        as_list = self.library == "transformers" or self.class_name in LIST_CONFIG_CLASSES
        return {k: _thaw(v, as_list=as_list) for k, v in self.params}

    def __getitem__(self, key: str) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def replace(self, **changes: Any) -> ModuleSpec:
        merged = dict(self.params)
        merged.update({k: _freeze(v) for k, v in changes.items()})
        return ModuleSpec(self.class_name, tuple(sorted(merged.items())))

    def build(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              seed: int = 0) -> nn.Module:
        """Instantiate with random weights on ``device`` (``meta``: shapes only) in ``dtype``.

        The weights are drawn from ``seed`` (the global RNG is left as it was), so two builds of the same
        spec are identical: comparing backends or passes compares the same network.
        """
        import importlib

        _, module_name, config_name = ALLOWED_CLASSES[self.class_name]
        lib = importlib.import_module(module_name)
        cls = getattr(lib, self.class_name)
        device = torch.device(device)
        skip = skip_init() if device.type == "meta" else contextlib.nullcontext()
        with _BUILDING, quiet_libraries(), torch.random.fork_rng(devices=[]), torch.device(device), skip:
            torch.manual_seed(seed)
            if config_name is None:
                model = cls.from_config(self.kwargs())
            else:
                config = getattr(lib, config_name)(**self.kwargs())
                model = cls(config)
        model = model.to(dtype=dtype)
        model.eval()
        model.requires_grad_(False)
        return model


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers chatter while building from configs (unused keys, fp32 notes)."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# builds take turns: while a meta build has torch.nn.init's initializers replaced (skip_init), a real build in
# another thread would get uninitialized weights
_BUILDING = threading.RLock()


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initializers do nothing while a model is built on the meta device: there are
    no values to draw, and each call still dispatches a few ops (40% of a meta UNet's build time). The same
    idea as torch's ``nn.utils.skip_init``, which only serves modules taking a ``device`` argument."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, _no_init)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _no_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def count_params(module: nn.Module) -> int:
    """Parameters of a module, each shared tensor counted once (works on meta tensors)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
