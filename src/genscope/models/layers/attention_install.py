"""Installation: route every attention module of a built model through the entry point.

diffusers ``Attention`` modules get a genscope processor (:mod:`.attention_diffusers`); the diffusion
transformers' attention classes (Flux, SD3, Wan, CogVideoX, HunyuanVideo) get theirs from
:mod:`.attention_dit`; transformers models are switched to ``attn_implementation="genscope"``
(:mod:`.attention_transformers`); genscope's own blocks declare ``genscope_attention_site``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn

from genscope.models.layers.attention import TRANSFORMERS_ATTN_IMPLEMENTATION, AttentionSite
from genscope.models.layers.attention_diffusers import GenscopeAddedKVAttnProcessor, GenscopeAttnProcessor
from genscope.models.layers.attention_dit import (
    DIT_PROCESSORS,
    dit_kind,
    track_text_length,
    wan_vae_attention_forward,
)
from genscope.models.layers.attention_transformers import register_transformers_attention

TEMPORAL_PATH_MARKERS = ("temp_attentions", "transformer_in", "temporal")


def default_kind(path: str, module: nn.Module) -> str:
    """Kind of an attention module from its place in the model.

    temporal: inside a temporal transformer (UNet3D ``temp_attentions`` / ``transformer_in``);
    cross: keys come from another sequence (diffusers ``is_cross_attention``, T5 ``EncDecAttention``);
    causal: a decoder self-attention (``is_causal``); self otherwise.
    """
    parts = path.split(".")
    if any(marker in part for part in parts for marker in TEMPORAL_PATH_MARKERS):
        return "temporal"
    if getattr(module, "is_cross_attention", False) or "EncDecAttention" in parts or "crossattention" in parts:
        return "cross"
    if getattr(module, "is_causal", False):
        return "causal"
    if type(module).__name__ == "CLIPAttention" and not any("vision" in part for part in parts):
        return "causal"  # CLIP's text tower masks causally; its attention class is shared with the vision tower
    return "self"


def _dit_processor_class(module: nn.Module):
    """The genscope processor for a diffusion transformer's attention module, or None."""
    processor = getattr(module, "processor", None)
    if processor is None or not hasattr(module, "set_processor"):
        return None
    if type(processor) in DIT_PROCESSORS.values():  # installed already
        return type(processor)
    return DIT_PROCESSORS.get(type(processor).__name__)


def _is_transformers_attention(module: nn.Module) -> bool:
    # transformers attention modules: CLIPAttention, T5Attention, LlamaAttention, ... (class name ends in
    # "Attention" and the module has a config with an attention implementation)
    return type(module).__name__.endswith("Attention") and hasattr(module, "config") and hasattr(
        module.config, "_attn_implementation")


def install_attention(model: nn.Module, prefix: str = "",
                      kind_fn: Callable[[str, nn.Module], str] | None = None) -> list[AttentionSite]:
    """Route every attention module of ``model`` through :func:`attention`; return the sites installed.

    ``prefix`` names the component (``denoiser``, ``text_encoder``, ...) so that paths are unique in a
    workload. For transformers models the model's config is switched to ``attn_implementation="genscope"``
    in place (as ``set_attn_implementation`` does): models sharing one config object are switched together. ``kind_fn(path, module)`` overrides :func:`default_kind` where a model needs it.
    """
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    explicit_kinds = kind_fn is not None
    kind_fn = kind_fn or default_kind
    sites: list[AttentionSite] = []
    uses_transformers = False
    for name, module in model.named_modules():
        path = f"{prefix}.{name}" if prefix and name else (prefix or name)
        dit_class = _dit_processor_class(module)
        if dit_class is not None:  # Flux, SD3, Wan, CogVideoX, HunyuanVideo attention
            kind = kind_fn(path, module) if explicit_kinds else dit_kind(dit_class, module)
            site = AttentionSite(path=path, kind=kind, module_class=type(module).__name__)
            processor = dit_class(site)
            module.set_processor(processor)
            module._genscope_site = site
            sites.append(site)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
            if parent is not None and type(parent).__name__ == "FluxSingleTransformerBlock":
                track_text_length(parent, processor)
        elif type(module).__name__ == "WanAttentionBlock" and hasattr(module, "to_qkv"):  # Wan-VAE
            site = AttentionSite(path=path, kind=kind_fn(path, module), module_class=type(module).__name__)
            module.forward = wan_vae_attention_forward(site).__get__(module)
            module._genscope_site = site
            sites.append(site)
        elif isinstance(module, DiffusersAttention):
            joint = getattr(module, "added_kv_proj_dim", None) is not None
            site = AttentionSite(path=path, kind=kind_fn(path, module), module_class=type(module).__name__,
                                 joint_context=joint)
            processor = GenscopeAddedKVAttnProcessor(site) if joint else GenscopeAttnProcessor(site)
            module.set_processor(processor)
            module._genscope_site = site
            sites.append(site)
        elif _is_transformers_attention(module):
            site = AttentionSite(path=path, kind=kind_fn(path, module), module_class=type(module).__name__)
            module._genscope_site = site
            sites.append(site)
            uses_transformers = True
        elif hasattr(module, "genscope_attention_site"):  # genscope's own blocks declare themselves
            site = AttentionSite(path=path, kind=kind_fn(path, module) if kind_fn is not default_kind
                                 else module.genscope_attention_site, module_class=type(module).__name__)
            module._genscope_site = site
            sites.append(site)
    if uses_transformers:
        register_transformers_attention()
        for module in model.modules():
            if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
                module.config._attn_implementation = TRANSFORMERS_ATTN_IMPLEMENTATION
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation") and not isinstance(
                    module, DiffusersAttention):
                with contextlib.suppress(Exception):
                    config._attn_implementation = TRANSFORMERS_ATTN_IMPLEMENTATION
    return sites
