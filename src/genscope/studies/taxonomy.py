"""The paper's Table I ("Taxonomy of Text-to-Image Models") for the whole suite, generated from the configs.

For each workload, the ``paper`` preset is built on the meta device and its *main network* is described: the
largest component that is neither a text encoder nor an image/video decoder (VAE, VQ-GAN, ViT-VQGAN,
C-ViViT) - the base UNet of a diffusion model, the token transformer of a transformer model.

Architecture rows (Table I's rows, from the built model and its spec):

* UNets: attention levels are the levels whose down block holds attention; ``attn_downsample_factors`` lists
  their downsampling factors 2^level, largest first (SD 1.5: [4, 2, 1], as Table I writes Stable Diffusion's
  "Attn Res"), ``attn_resolutions`` the feature-map sizes there (DeepFloyd IF at 64 px: [32, 16, 8], as
  Table I writes Imagen's); ``channel_mult`` = block channels / base channels; ``res_blocks`` = resnets per
  level; ``heads`` and ``head_channels`` come from the attention modules themselves (Table I's "Per-Head
  Channels" for Stable Diffusion, 8, is SD 1.5's ``attention_head_dim``, which diffusers uses as the number
  of heads: the per-head channels are 40/80/160); ``text_embed_dim`` is the text encoder's width (Table I's
  "Embed Dim" 768 for Stable Diffusion) and ``cross_attn_dim`` the width the UNet's cross-attention takes.
* Transformers: ``layers``, ``model_dim``, ``heads``, ``head_channels`` from the spec (encoder + decoder layers
  for an encoder-decoder such as Parti, ``layers_parts`` = "16 + 64").
* ``network_params``: the networks the paper's "Num Params" counts (``taxonomy_paper.NETWORK_COMPONENTS``),
  next to ``params`` (the whole pipeline); ``cross_attn_*``: levels with text cross-attention.

Table ``table_i`` lines these up with the paper's Table I, row by row (:mod:`genscope.studies.taxonomy_paper`).

System classes (Low / Medium / High), with the thresholds stated in the ``thresholds`` table:

* compute: FLOPs per image of a full run at paper scale (counted; :mod:`genscope.studies.flops`);
* memory: parameter bytes in float16 (the paper's 2 bytes/parameter);
* latency: the end-to-end time of a *measured* run at the ``small`` preset, when one is stored; otherwise
  "not measured" (small-scale CPU latency ranks the workloads, it is not the paper's A100 latency).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError
from genscope.studies.taxonomy_paper import ENCODER_DECODER_LAYERS, NETWORK_COMPONENTS, PAPER_TABLE_I, align
from genscope.workloads import registry

STUDY = "taxonomy"
DECODER_CLASSES = ("AutoencoderKL", "VQModel", "ViTVQGANDecoder", "CViViTDecoder")
FP16_BYTES = 2

# (name, unit, boundary Low|Medium, boundary Medium|High, what it measures)
THRESHOLDS = (
    ("compute", "FLOPs per image", 1e13, 1e14, "counted FLOPs of one full run per image, paper preset"),
    ("memory", "parameter bytes (float16)", 10e9, 40e9, "parameters x 2 bytes; 40 GB = half an A100-80GB"),
    ("latency", "seconds, small preset, measured", 10.0, 100.0,
     "end-to-end time of a stored measured run at the small preset on its machine"),
)
NOT_MEASURED = "not measured"

# Table I of the paper, typed from it, and its row-by-row alignment: genscope.studies.taxonomy_paper.
CLASS_ROWS = {"compute": "Compute", "memory": "Memory", "latency": "Latency"}


def classify(value: float | None, low_below: float, high_from: float) -> str:
    if value is None or value != value:  # None or NaN
        return NOT_MEASURED
    if value < low_below:
        return "Low"
    return "Medium" if value < high_from else "High"


def thresholds_table() -> pd.DataFrame:
    return pd.DataFrame([{"axis": a, "unit": u, "low_below": lo, "high_from": hi, "basis": b,
                          "rule": f"Low < {lo:g} <= Medium < {hi:g} <= High"} for a, u, lo, hi, b in THRESHOLDS])


def main_component(components) -> object:
    """The largest component that is neither a text encoder nor an image/video decoder."""
    candidates = [c for c in components if not c.name.startswith("text_encoder") and c.class_name not in DECODER_CLASSES]
    return max(candidates or components, key=lambda c: c.params)


def _first(spec_or_config: Callable[[str], object], *keys: str):
    for key in keys:
        value = spec_or_config(key)
        if value is not None:
            return value
    return None


def _attention_modules(module: nn.Module) -> list[tuple[str, int, int]]:
    """(path, heads, head channels) of every attention module (diffusers or transformers) in ``module``."""
    from diffusers.models.attention_processor import Attention

    found = []
    for path, m in module.named_modules():
        if isinstance(m, Attention):
            heads = int(m.heads)
            found.append((path, heads, m.to_q.out_features // heads))
        elif type(m).__name__.endswith("Attention") and hasattr(m, "head_dim"):
            heads = getattr(m, "num_heads", None) or getattr(getattr(m, "config", None), "num_attention_heads", None)
            if heads:
                found.append((path, int(heads), int(m.head_dim)))
    return found


def _unique(values) -> list:
    return sorted(set(values))


def describe_unet(module: nn.Module) -> dict:
    config = module.config
    channels = list(config.block_out_channels)
    levels, cross_levels = [], []
    for i, block in enumerate(module.down_blocks):
        if _attention_modules(block):
            levels.append(i)
        if any(getattr(m, "is_cross_attention", False) for m in block.modules()):  # diffusers Attention
            cross_levels.append(i)
    sample = int(config.sample_size if not isinstance(config.sample_size, (list, tuple)) else config.sample_size[0])
    spatial = [a for a in _attention_modules(module) if not any(k in a[0] for k in ("temp_attentions", "transformer_in"))]
    layers = config.layers_per_block
    return {
        "attn_downsample_factors": [2**i for i in reversed(levels)],
        "attn_resolutions": [sample // 2**i for i in levels],
        "cross_attn_downsample_factors": [2**i for i in reversed(cross_levels)],  # Table I "Text Cross Attn Res"
        "cross_attn_resolutions": [sample // 2**i for i in cross_levels],
        "channel_mult": [c // channels[0] for c in channels] if all(c % channels[0] == 0 for c in channels)
        else [round(c / channels[0], 2) for c in channels],
        "model_channels": channels[0],
        "res_blocks": list(layers) if isinstance(layers, (list, tuple)) else int(layers),
        "heads": _unique(a[1] for a in spatial),
        "head_channels": _unique(a[2] for a in spatial),
        "cross_attn_dim": getattr(config, "cross_attention_dim", None),
        "sample_size": sample,
    }


def describe_transformer(spec, module: nn.Module) -> dict:
    """Layers, width, heads and per-head channels from a transformer's spec (attention modules as fallback).

    Diffusion transformers (diffusers' Flux / SD3 / Wan / CogVideoX / HunyuanVideo classes) name their
    per-head channels ``attention_head_dim`` (their width is heads x that) and the dual-stream (MMDiT) and
    single-stream blocks ``num_layers`` and ``num_single_layers``: layers = their sum, ``layers_parts``
    = "dual + single" (FLUX.1-dev: 19 + 38).
    """
    layers = _first(spec.get, "num_hidden_layers", "num_layers", "n_layer", "spatial_layers")
    heads = _first(spec.get, "num_attention_heads", "num_heads", "n_head")
    head_channels = _first(spec.get, "d_kv", "head_dim", "attention_head_dim")
    dim = _first(spec.get, "hidden_size", "d_model", "n_embd") or (heads * head_channels if heads and head_channels
                                                                   else None)
    head_channels = head_channels or (dim // heads if dim and heads else None)
    attn = _attention_modules(module)
    row = {"layers": layers, "model_dim": dim, "heads": [heads] if heads else _unique(a[1] for a in attn),
           "head_channels": [head_channels] if head_channels else _unique(a[2] for a in attn)}
    single = spec.get("num_single_layers")
    if layers is not None and single:  # dual-stream + single-stream blocks (Flux, HunyuanVideo)
        row["layers"], row["layers_parts"] = int(layers) + int(single), f"{int(layers)} + {int(single)}"
    return row


def describe_workload(name: str, preset: str = "paper") -> dict:
    """Table I's architecture rows of one workload (built on the meta device)."""
    workload = registry.get(name)
    config = workload.config(preset)
    components = workload.describe(preset)
    main = main_component(components)
    specs = dict(config.component_specs())
    spec = specs.get(main.name)
    row: dict = {"workload": name, "paper_model": workload.paper_model, "architecture": workload.family,
                 "params": sum(c.params for c in components), "main_component": main.name,
                 "main_class": main.class_name, "main_params": main.params}
    if hasattr(main.module, "down_blocks") and hasattr(main.module, "config"):
        row.update(describe_unet(main.module))
    elif spec is not None:
        row.update(describe_transformer(spec, main.module))
    text = specs.get("text_encoder")
    if text is not None:
        row["text_embed_dim"] = _first(text.get, "hidden_size", "d_model", "n_embd")
    # the networks the paper's "Num Params" counts (default: the main network), next to the pipeline's count
    counted = [c for c in components if c.name in NETWORK_COMPONENTS.get(name, (main.name,))] or [main]
    row["network_params"] = sum(c.params for c in counted)
    row["network_components"] = " + ".join(c.name for c in counted)
    parts = ENCODER_DECODER_LAYERS.get(name)
    if parts and all(p in specs for p in parts):  # e.g. Parti: encoder + decoder layers
        counts = [int(_first(specs[p].get, "num_hidden_layers", "num_layers", "n_layer")) for p in parts]
        row["layers"], row["layers_parts"] = sum(counts), " + ".join(str(c) for c in counts)
    row["param_bytes_fp16"] = row["params"] * FP16_BYTES
    del components
    return row


def _lists_to_text(df: pd.DataFrame) -> pd.DataFrame:
    """Lists as ``[1, 2, 4, 4]`` text so that the table stores and prints as one value per cell."""
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, (list, tuple))).any():
            out[col] = out[col].map(lambda v: "[" + ", ".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple))
                                    else v)
        elif col in INTEGER_COLUMNS:  # whole numbers with gaps (a UNet has no "layers"): nullable integers
            out[col] = out[col].astype("Int64")
    return out


INTEGER_COLUMNS = ("params", "network_params", "main_params", "layers", "model_dim", "model_channels", "res_blocks", "text_embed_dim",
                   "cross_attn_dim", "param_bytes_fp16")


def taxonomy_table(workloads: list[str], flops_per_image: dict[str, float], latency_s: dict[str, float | None],
                   preset: str = "paper") -> dict[str, pd.DataFrame]:
    """Tables ``taxonomy`` (one row per workload), ``thresholds`` and ``paper`` (Table I vs derived classes)."""
    (_, _, c_lo, c_hi, _), (_, _, m_lo, m_hi, _), (_, _, l_lo, l_hi, _) = THRESHOLDS
    rows = []
    with torch.device("meta"):
        for name in workloads:
            row = describe_workload(name, preset)
            flops = flops_per_image.get(name)
            latency = latency_s.get(name)
            row["flops_per_image"] = float("nan") if flops is None else float(flops)
            row["latency_small_s"] = float("nan") if latency is None else float(latency)
            row["compute_class"] = classify(flops, c_lo, c_hi)
            row["memory_class"] = classify(row["param_bytes_fp16"], m_lo, m_hi)
            row["latency_class"] = classify(latency, l_lo, l_hi)
            rows.append(row)
    columns = ["workload", "paper_model", "architecture", "params", "network_params", "network_components",
               "main_component", "main_class", "main_params", "layers", "layers_parts", "model_dim",
               "attn_downsample_factors", "attn_resolutions", "cross_attn_downsample_factors",
               "cross_attn_resolutions", "channel_mult", "model_channels",
               "res_blocks", "heads", "head_channels", "text_embed_dim", "cross_attn_dim", "flops_per_image",
               "param_bytes_fp16", "latency_small_s", "compute_class", "memory_class", "latency_class"]
    table = pd.DataFrame(rows)
    table = table[[c for c in columns if c in table.columns]]
    paper_rows = []
    for _, r in table.iterrows():
        published = PAPER_TABLE_I.get(r["workload"])
        if published is None:
            continue
        for axis, paper_row in CLASS_ROWS.items():
            paper_rows.append({"workload": r["workload"], "axis": axis, "paper": published[paper_row],
                               "derived": r[f"{axis}_class"],
                               "agrees": None if r[f"{axis}_class"] == NOT_MEASURED
                               else published[paper_row] == r[f"{axis}_class"]})
    return {"taxonomy": _lists_to_text(table), "table_i": align(table), "thresholds": thresholds_table(),
            "paper": pd.DataFrame(paper_rows, columns=["workload", "axis", "paper", "derived", "agrees"])}


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
COUNT_DTYPE = "float16"  # FLOPs do not depend on the dtype; a count in any dtype is reused


@dataclass(frozen=True)
class Settings:
    workloads: tuple[str, ...]
    preset: str = "paper"
    latency_preset: str = "small"  # preset of the stored measured runs that give the latency class

    def __post_init__(self) -> None:
        if not self.workloads:
            raise UserError("taxonomy: give at least one workload")
        for name in self.workloads:
            registry.get(name)


def stored_latency_s(store, workload: str, preset: str = "small") -> float | None:
    """End-to-end seconds of the newest stored measured run of ``workload`` at ``preset``, if any.

    Looks at ``breakdown`` runs (table ``speedup``: ``flash_ms``, the default backend) and ``profile`` runs
    (table ``phase_time``: the sum of the phases), newest first. ``store``: a ResultsStore or None.
    """
    if store is None:
        return None
    candidates = [r for r in (store.latest(s, workload=workload, preset=preset) for s in ("breakdown", "profile"))
                  if r is not None]
    for record in sorted(candidates, key=lambda r: r.id or 0, reverse=True):
        speedup = record.tables.get("speedup")
        if speedup is not None and "flash_ms" in speedup.columns:
            rows = speedup[speedup["workload"] == workload] if "workload" in speedup.columns else speedup
            if len(rows):
                return float(rows["flash_ms"].iloc[-1]) / 1e3
        phase_time = record.tables.get("phase_time")
        if phase_time is not None and "time_ms" in phase_time.columns and len(phase_time):
            return float(phase_time["time_ms"].sum()) / 1e3
    return None


def stored_inputs(settings: Settings, store) -> dict:
    """What earlier runs in ``store`` give this study: FLOP counts (any dtype) and measured latencies."""
    from genscope.studies.flops import stored_count

    counts = {n: stored_count(store, n, settings.preset) for n in settings.workloads}
    return {"counts": {n: c for n, c in counts.items() if c is not None},
            "latency_s": {n: stored_latency_s(store, n, settings.latency_preset) for n in settings.workloads}}


def run(settings: Settings, *, counts: Mapping | None = None,
        latency_s: Mapping[str, float | None] | None = None) -> dict[str, pd.DataFrame]:
    """Table I; ``counts`` (name -> FlopsResult) are reused, the others counted on the meta device."""
    from genscope.studies.flops import count_workload

    counts = dict(counts or {})
    for name in settings.workloads:
        if name not in counts:
            counts[name] = count_workload(name, settings.preset, dtype=COUNT_DTYPE)
    flops = {n: float(counts[n].summary["flops_per_image"]) for n in settings.workloads}
    return taxonomy_table(list(settings.workloads), flops, dict(latency_s or {}), preset=settings.preset)
