"""Analytical model of the similarity-matrix memory of a diffusion UNet (the paper's Section V-A), checked
against traced attention calls.

The paper's model (Golden et al., "Generative AI Beyond LLMs", Section V-A; /work/shared/papers/
genai-beyond-llms-v2.txt): for a latent of H_L x W_L, text length T, one head, batch 1 and FP16 (2 bytes),
one attention block's similarity matrices take ``2 * H_L W_L [H_L W_L + T]`` bytes (self: (H_L W_L)^2,
cross: H_L W_L * T), and over the UNet's depth::

    2 * [ 2 * sum_{n=0}^{depth-1} (H_L W_L / d^{2n}) [H_L W_L / d^{2n} + T]
          + (H_L W_L / d^{2 depth}) [H_L W_L / d^{2 depth} + T] ]

(the leading 2: bytes per FP16 element; the inner 2: one block on the way down and one on the way up at each
level; the last term: the mid block at the deepest level).

**d^n or d^{2n}?** The paper's first version (genai-beyond-llms-v1.txt) writes the stage-n sequence length as
H_L W_L / d^n, the second (v2) as H_L W_L / d^{2n}. d is "the factor by which the image/latent
representation is reduced", i.e. per axis (Stable Diffusion's downsamplers halve height and width: d = 2), so
stage n has (H_L / d^n) x (W_L / d^n) = H_L W_L / d^{2n} tokens: **v2 (d^{2n}) is right**; v1's d^n would be
right only if d were the factor on the *area* (4 for SD). The traces confirm it: at 512 px (64 x 64 latent)
SD's attention levels run over 4096, 1024, 256 tokens and the mid block over 64 - that is 4096 / 4^n; d^n with
d = 2 predicts 4096, 2048, 1024, 512 (:func:`level_lengths_vs_paper`).

Generalized here to what a real UNet has: any number of attention modules per level in the down, mid and up
paths (SD 1.5: 2 transformer blocks per level down, 3 up, 1 mid; each block = one self- and one cross-attention
call), heads per module, batch (classifier-free guidance doubles it), dtype, joint text+image attention
(DeepFloyd IF / Imagen: keys = [T text tokens ; L image tokens], one matrix of L x (T + L)), cross-attention-only
blocks (x4 upscaler: both calls attend to the text), and IF's text pooling (one query over 1 + T keys)::

    bytes = element_size * batch * sum over attention calls c of heads_c * Lq_c * Lk_c,
    Lq = L_n = (H_L / d^n)(W_L / d^n);  Lk = L_n (self), T (cross), T + L_n (joint)

The layout (which modules sit at which level, their heads and key kind) is read from the UNet built on the
meta device (:meth:`UNetAttentionLayout.from_spec`), so diffusers' own config rules (heads per level,
only-cross-attention, the mid block) are never re-implemented; everything after is closed-form arithmetic.
Because the self term is L_n^2 = (H_L W_L)^2 / d^{4n}, memory grows as the 4th power of the latent side:
O(L^4) (:func:`memory_scaling`, which fits the exponent).

Why hand-written: no library models attention memory from a UNet config; torch's memory tools measure, they do
not predict.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genscope.errors import UserError
from genscope.models.base import dtype_bytes
from genscope.models.runtime import dtype_name, parse_dtype
from genscope.models.spec import ModuleSpec

KEY_KINDS = ("self", "text", "joint", "pool")
SECTIONS = ("pool", "down", "mid", "up")
PAPER_BYTES_PER_ELEMENT = 2  # the paper assumes FP16
MODELED_WORKLOADS = ("stable-diffusion", "imagen")
CALL_COLUMNS = ("path", "batch", "heads", "query_len", "key_len", "context_len", "similarity_bytes")


@dataclass(frozen=True)
class LayoutCall:
    """One attention module of a UNet, in execution order."""

    path: str  # module path inside the UNet, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    section: str  # pool | down | mid | up
    level: int  # n: the downsampling stage it runs at (-1 for the text pooling)
    heads: int
    keys: str  # self (Lk = L_n) | text (Lk = T) | joint (Lk = T + L_n) | pool (Lq = 1, Lk = 1 + T)
    added_kv: bool = False  # keys projected by add_k/add_v (IF): the trace's context_len is T


@dataclass(frozen=True)
class UNetAttentionLayout:
    """Where a UNet's attention modules are: the input of the memory model."""

    calls: tuple[LayoutCall, ...]
    levels: int  # resolution levels (len(block_out_channels)); the mid block runs at level levels - 1
    d: int = 2  # per-axis downsampling factor between levels

    @classmethod
    def from_spec(cls, spec: ModuleSpec) -> UNetAttentionLayout:
        return _layout_from_spec(spec)

    @classmethod
    def paper(cls, depth: int, d: int = 2) -> UNetAttentionLayout:
        """The paper's idealization: at levels 0..depth-1 one self+cross block down and one up, one mid block at
        level ``depth``, one head."""
        calls = []
        for section, levels in (("down", range(depth)), ("mid", [depth]), ("up", reversed(range(depth)))):
            for n in levels:
                for keys in ("self", "text"):
                    calls.append(LayoutCall(f"{section}.{n}.{keys}", section, n, 1, keys))
        return cls(tuple(calls), depth + 1, d)

    def per_level(self) -> pd.DataFrame:
        """Attention modules per level and path (the structure the paper's formula sums over)."""
        rows = [{"level": c.level, "section": c.section, "keys": c.keys, "heads": c.heads} for c in self.calls]
        df = pd.DataFrame(rows)
        return (df.groupby(["level", "section", "keys", "heads"], sort=True).size().rename("modules")
                .reset_index())


def _section_level(path: str, levels: int) -> tuple[str, int]:
    parts = path.split(".")
    if parts[0] == "down_blocks":
        return "down", int(parts[1])
    if parts[0] == "up_blocks":
        return "up", levels - 1 - int(parts[1])
    if parts[0] == "mid_block":
        return "mid", levels - 1
    return "pool", -1


@functools.lru_cache(maxsize=32)
def _layout_from_spec(spec: ModuleSpec) -> UNetAttentionLayout:
    from diffusers.models.attention_processor import Attention

    if spec.class_name != "UNet2DConditionModel":
        raise UserError(f"the attention-memory model takes UNet2DConditionModel specs, not {spec.class_name}")
    unet = spec.build("meta")
    levels = len(unet.config.block_out_channels)
    found = []
    for order, (path, module) in enumerate(unet.named_modules()):
        if isinstance(module, Attention):
            added = getattr(module, "added_kv_proj_dim", None) is not None
            if added:
                keys = "text" if module.only_cross_attention else "joint"
            else:
                keys = "text" if module.is_cross_attention else "self"
            heads = module.heads
        elif "AttentionPooling" in {c.__name__ for c in type(module).__mro__}:
            keys, heads, added = "pool", module.num_heads, False
        else:
            continue
        section, level = _section_level(path, levels)
        block = int(path.split(".")[1]) if section in ("down", "up") else 0
        found.append(((SECTIONS.index(section), block, order),
                      LayoutCall(path, section, level, int(heads), keys, added)))
    found.sort(key=lambda item: item[0])
    return UNetAttentionLayout(tuple(call for _, call in found), levels)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------
def level_side(size: int, n: int, d: int = 2) -> int:
    """Side of the feature map at level n: size / d^n (sizes the workloads accept divide exactly)."""
    if size % d**n:
        raise UserError(f"latent side {size} is not divisible by {d}^{n}: the UNet cannot take it")
    return size // d**n


def level_tokens(height: int, width: int, n: int, d: int = 2) -> int:
    """L_n = (H_L / d^n)(W_L / d^n) = H_L W_L / d^{2n}: the sequence length at level n."""
    return level_side(height, n, d) * level_side(width, n, d)


def predict_calls(layout: UNetAttentionLayout, height: int, width: int, text_len: int, batch: int,
                  dtype: torch.dtype | str = torch.float16) -> pd.DataFrame:
    """Every attention call of one UNet forward, predicted: position, path, section, level, keys, batch,
    heads, query_len, key_len, context_len, image_keys, similarity_elements, similarity_bytes,
    image_key_bytes (the image-keys part of the matrix)."""
    dtype = parse_dtype(dtype)
    size = dtype_bytes(dtype)
    rows = []
    for position, c in enumerate(layout.calls):
        if c.keys == "pool":
            lq, lk, ctx = 1, 1 + text_len, 0
        else:
            tokens = level_tokens(height, width, c.level, layout.d)
            lq = tokens
            lk = {"self": tokens, "text": text_len, "joint": text_len + tokens}[c.keys]
            ctx = text_len if c.added_kv else 0
        elements = batch * c.heads * lq * lk
        image_keys = {"self": lk, "joint": lk - text_len}.get(c.keys, 0)  # image tokens among the keys
        rows.append({"position": position, "path": c.path, "section": c.section, "level": c.level, "keys": c.keys,
                     "batch": batch, "heads": c.heads, "query_len": lq, "key_len": lk, "context_len": ctx,
                     "image_keys": image_keys, "similarity_elements": elements, "similarity_bytes": elements * size,
                     "image_key_bytes": batch * c.heads * lq * image_keys * size})
    return pd.DataFrame(rows)


def model_bytes(layout: UNetAttentionLayout, height: int, width: int, text_len: int, batch: int,
                dtype: torch.dtype | str = torch.float16) -> int:
    """Closed form of the generalized formula (the sum of :func:`predict_calls`):
    size * batch * sum_c heads_c * Lq_c * Lk_c, grouped by level."""
    size = dtype_bytes(parse_dtype(dtype))
    total = 0
    for c in layout.calls:
        if c.keys == "pool":
            total += c.heads * (1 + text_len)
            continue
        tokens = level_tokens(height, width, c.level, layout.d)
        total += c.heads * tokens * {"self": tokens, "text": text_len, "joint": tokens + text_len}[c.keys]
    return size * batch * total


def paper_formula_bytes(height: int, width: int, text_len: int, depth: int, d: int = 2,
                        variant: str = "v2") -> float:
    """The paper's formula as printed: FP16, one head, batch 1. ``variant`` "v2": d^{2n} (correct), "v1": d^n."""
    if variant not in ("v1", "v2"):
        raise UserError(f"unknown paper formula variant {variant!r}; accepted: v1, v2")
    hw = height * width

    def stage(n: int) -> float:
        tokens = hw / (d ** (2 * n) if variant == "v2" else d**n)
        return tokens * (tokens + text_len)

    return PAPER_BYTES_PER_ELEMENT * (2 * sum(stage(n) for n in range(depth)) + stage(depth))


# ----------------------------------------------------------------------------------------------------
# Workloads: which UNets run at which size
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiserGeometry:
    """One UNet of a workload at one request: its input size, text length and batch."""

    component: str  # component name (first part of the traced paths)
    phase: str  # the denoising loop's phase name
    spec: ModuleSpec
    height: int  # input side of the UNet (latent or pixel)
    width: int
    text_len: int
    batch: int  # with classifier-free guidance: 2 x batch size


def denoiser_geometry(workload: str, config, request) -> list[DenoiserGeometry]:
    """The UNets of ``workload`` at ``request`` (stable-diffusion: one latent UNet; imagen: the cascade's three)."""
    from genscope.models.base import vae_scale_factor

    if workload == "stable-diffusion":
        side = request.image_size // vae_scale_factor(config.decoder)
        batch = request.batch_size * (2 if request.use_cfg else 1)
        return [DenoiserGeometry("denoiser", "denoise", config.denoiser, side, side, config.text_len, batch)]
    if workload == "imagen":
        base, mid, _ = config.stage_sizes(request.image_size)
        # per-stage guidance (a CascadeRequest carries it); without CFG every stage runs on batch B
        guidance = getattr(request, "stage_guidance", (request.guidance_scale,) * 3)
        if not request.use_cfg:
            guidance = (1.0, 1.0, 1.0)
        batches = [request.batch_size * (2 if g > 1.0 else 1) for g in guidance]
        return [
            DenoiserGeometry("denoiser", "denoise", config.denoiser, base, base, config.text_len, batches[0]),
            DenoiserGeometry("sr_256", "sr_256", config.sr_256, mid, mid, config.text_len, batches[1]),
            # the x4 upscaler's latents sit at the stage-II output size
            DenoiserGeometry("sr_1024", "sr_1024", config.sr_1024, mid, mid, config.text_len, batches[2]),
        ]
    raise UserError(f"the attention-memory model covers the UNet diffusion workloads "
                    f"({', '.join(MODELED_WORKLOADS)}), not {workload!r}")


# ----------------------------------------------------------------------------------------------------
# Checks against traces
# ----------------------------------------------------------------------------------------------------
def traced_step(calls: pd.DataFrame, geometry: DenoiserGeometry) -> pd.DataFrame:
    """The traced calls of one UNet forward: the first step of its loop, its own component only."""
    rows = calls[(calls["phase"] == geometry.phase) & (calls["step"] == 0)
                 & (calls["component"] == geometry.component)].copy()
    rows["path"] = rows["path"].str.slice(len(geometry.component) + 1)
    return rows.reset_index(drop=True)


def compare_step(predicted: pd.DataFrame, traced: pd.DataFrame) -> dict:
    """Per-call and total agreement of a predicted and a traced UNet forward."""
    same_count = len(predicted) == len(traced)
    mismatches = 0
    if same_count:
        a = predicted[list(CALL_COLUMNS)].reset_index(drop=True)
        b = traced[list(CALL_COLUMNS)].reset_index(drop=True).astype(a.dtypes.to_dict())
        mismatches = int((a != b).any(axis=1).sum())
    else:
        mismatches = abs(len(predicted) - len(traced))
    model_total = int(predicted["similarity_bytes"].sum())
    trace_total = int(traced["similarity_bytes"].sum())
    return {"calls_model": len(predicted), "calls_trace": len(traced), "calls_mismatched": mismatches,
            "bytes_model": model_total, "bytes_trace": trace_total,
            "max_call_bytes": int(predicted["similarity_bytes"].max()) if len(predicted) else 0,
            "exact": same_count and mismatches == 0 and model_total == trace_total}


def check_against_trace(workload: str, image_sizes: list[int | None], preset: str = "paper",
                        device: str = "meta", dtype: str = "float16", batch_size: int = 1,
                        guidance_scale: float | None = None, steps: int | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Trace ``workload`` at each size and compare every UNet's calls with the model.

    Returns (summary per image size and UNet, the predicted calls with their traced twins, the traces).
    """
    from genscope.instrument.seqlen import trace_workload

    if workload not in MODELED_WORKLOADS:
        raise UserError(f"the attention-memory model covers {', '.join(MODELED_WORKLOADS)}, not {workload!r}")
    summary, detail, traces = [], [], []
    for size in image_sizes:
        trace = trace_workload(workload, preset=preset, image_size=size, device=device, dtype=dtype,
                               batch_size=batch_size, guidance_scale=guidance_scale, steps=steps)
        traces.append(trace)
        request = trace.request
        for geo in denoiser_geometry(workload, trace.config, request):
            layout = UNetAttentionLayout.from_spec(geo.spec)
            predicted = predict_calls(layout, geo.height, geo.width, geo.text_len, geo.batch, request.dtype)
            traced = traced_step(trace.calls, geo)
            result = compare_step(predicted, traced)
            closed = model_bytes(layout, geo.height, geo.width, geo.text_len, geo.batch, request.dtype)
            summary.append({"image_size": request.image_size, "component": geo.component, "input_side": geo.height,
                            "text_len": geo.text_len, "batch": geo.batch, "dtype": dtype_name(request.dtype),
                            **result, "bytes_closed_form": closed,
                            "exact": result["exact"] and closed == result["bytes_model"]})
            merged = predicted.assign(image_size=request.image_size, component=geo.component)
            if len(traced) == len(predicted):
                merged["traced_query_len"] = traced["query_len"].to_numpy()
                merged["traced_key_len"] = traced["key_len"].to_numpy()
                merged["traced_bytes"] = traced["similarity_bytes"].to_numpy()
            detail.append(merged)
    return pd.DataFrame(summary), pd.concat(detail, ignore_index=True), traces


def level_lengths_vs_paper(calls: pd.DataFrame, geometry: DenoiserGeometry, d: int = 2) -> pd.DataFrame:
    """Per level: the traced query length of the UNet's calls vs the paper's H_L W_L / d^{2n} (v2) and
    H_L W_L / d^n (v1)."""
    layout = UNetAttentionLayout.from_spec(geometry.spec)
    traced = traced_step(calls, geometry)
    by_path = dict(zip(traced["path"], traced["query_len"], strict=False))
    hw = geometry.height * geometry.width
    rows = []
    for level in sorted({c.level for c in layout.calls if c.level >= 0}):
        lengths = {by_path[c.path] for c in layout.calls if c.level == level and c.path in by_path}
        traced_len = lengths.pop() if len(lengths) == 1 else None
        v2 = hw / d ** (2 * level)
        v1 = hw / d**level
        rows.append({"component": geometry.component, "level": level, "traced_query_len": traced_len,
                     "paper_v2_d2n": v2, "paper_v1_dn": v1, "v2_matches": traced_len == v2,
                     "v1_matches": traced_len == v1})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Scaling: O(L^4)
# ----------------------------------------------------------------------------------------------------
def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def memory_scaling(spec: ModuleSpec, latent_sides: list[int], text_len: int, batch: int,
                   dtype: torch.dtype | str = torch.float16) -> tuple[pd.DataFrame, dict]:
    """Similarity-matrix bytes of one UNet forward per latent side, and the fitted exponent.

    Returns (table: latent_side, tokens_level0, image_key_bytes (image queries x image keys: L_n^2, the O(L^4)
    term), text_key_bytes (x text keys: L_n T), total_bytes, max_call_bytes, local_slope; fit: exponent over
    the whole range, exponent between the two largest sides).
    """
    layout = UNetAttentionLayout.from_spec(spec)
    rows = []
    for side in latent_sides:
        calls = predict_calls(layout, side, side, text_len, batch, dtype)
        image_bytes = int(calls["image_key_bytes"].sum())  # image x image part: L_n^2, the O(L^4) term
        rows.append({"latent_side": side, "tokens_level0": side * side, "image_key_bytes": image_bytes,
                     "text_key_bytes": int(calls["similarity_bytes"].sum()) - image_bytes,
                     "total_bytes": int(calls["similarity_bytes"].sum()),
                     "max_call_bytes": int(calls["similarity_bytes"].max())})
    df = pd.DataFrame(rows)
    slopes = [math.nan]
    for i in range(1, len(df)):
        slopes.append(loglog_slope(df["latent_side"].iloc[i - 1:i + 1], df["total_bytes"].iloc[i - 1:i + 1]))
    df["local_slope"] = slopes
    fit = {"exponent_fit": loglog_slope(df["latent_side"], df["total_bytes"]) if len(df) > 1 else math.nan,
           "exponent_largest": slopes[-1] if len(df) > 1 else math.nan,
           "sides": f"{df['latent_side'].min()}-{df['latent_side'].max()}"}
    return df, fit
