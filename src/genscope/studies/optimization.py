"""Study ``optimization``: Tables 1 and 2 of Chen et al. 2023 ("Speed Is All You Need") for the SD UNet.

Table 1 (ablation, :func:`run_ablation`): one UNet step with classifier-free guidance (the UNet on the
[uncond; cond] batch of 2, then the guidance combine) under cumulative passes:

    baseline (materialized softmax) -> + partially fused softmax -> + fused GroupNorm/GELU
    -> + flash attention (selective) -> + Winograd -> + bf16 weights -> + channels-last

Columns: latency (median of interleaved repetitions: every repetition runs every row in turn, so load drifts
hit all rows alike; spread = (max - min) / median), peak intermediate-tensor memory
(:func:`genscope.instrument.memory.track_peak_memory`: peak of new tensor bytes during one step, the output
included), weight memory (parameters + buffers of the configured model, each storage once: the paper's
"Weight" column), relative error vs the float32 baseline's output (max |y - y0| / max |y0| and the L2
ratio), achieved FLOP/s (FLOPs of the step counted once on the meta device), and the dominant operator class
(the lead's profiler, :func:`genscope.instrument.profiler.profile_callable`, when it is importable).

One model is built; each row's passes are applied once (:func:`genscope.passes.apply`, with the step's
inputs as example inputs so that measured decisions are made then) and the rows are switched by undoing /
redoing their swap logs: the rows share every tensor a pass does not replace.

Table 2 (Winograd, :func:`winograd_table`): per tile size, the analytical multiplication saving
9 m^2 / (m+2)^2, tensor multiplier (m+2)^2 / m^2 and weight multiplier (m+2)^2 / 9 (the paper's Table 2
values), the measured weight multiplier (U's bytes / the weight's), the measured tensor multiplier (peak new
bytes of one Winograd convolution / the input's bytes, next to direct convolution's), the time relative to
direct convolution on one SD layer shape, and the relative error per dtype and product precision with the
oracle's verdict.

Pure: returns DataFrames (units in column names); no plotting, no storing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.instrument.memory import track_peak_memory
from genscope.models.base import check_multiple, unet_downsample_factor, vae_scale_factor
from genscope.models.layers.attention import install_attention, use_backend
from genscope.models.runtime import check_dtype_on_device, dtype_name, parse_device, parse_dtype, synchronize
from genscope.passes import PassConfig, SwapLog, apply
from genscope.passes.base import model_dtype
from genscope.passes.oracle import max_relative_error, relative_error

STUDY = "optimization"
WORKLOADS = ("stable-diffusion",)
MAX_IMAGE_SIZE = 2048
TIMESTEP = 500  # a mid-schedule DDPM timestep (the UNet's cost does not depend on it)


@dataclass(frozen=True)
class Row:
    label: str
    passes: tuple[str, ...]


ROWS: tuple[Row, ...] = (
    Row("baseline", ()),
    Row("+ partially fused softmax", ("partial_softmax",)),
    Row("+ fused GroupNorm/GELU", ("fused_groupnorm", "fused_geglu")),
    Row("+ flash attention", ("selective_flash",)),
    Row("+ Winograd", ("winograd",)),
    Row("+ bf16 weights", ("bf16_weights",)),
    Row("+ channels-last", ("channels_last",)),
)
ROW_KEYS = {"softmax": 1, "fused": 2, "flash": 3, "winograd": 4, "bf16": 5, "channels-last": 6}

# Chen et al. 2023, Table 1 (UNet, one iteration, 512x512, Samsung S23 Ultra / iPhone 14 Pro Max):
# latency ms, tensor MB, weight MB per row (baseline, +softmax, +GN/GELU, +flash, +Winograd).
PAPER_TABLE1 = pd.DataFrame({
    "row": ["baseline", "+ partially fused softmax", "+ fused GroupNorm/GELU", "+ flash attention", "+ Winograd"],
    "s23_latency_ms": [1098, 908, 755, 660, 525], "s23_tensor_mb": [105, 105, 85, 80, 84],
    "s23_weight_mb": [1640, 1640, 1640, 1639, 2093],
    "iphone_latency_ms": [1554, 1475, 1382, 1309, 1043], "iphone_tensor_mb": [105, 105, 85, 80, 84],
    "iphone_weight_mb": [1640, 1640, 1640, 1639, 2093],
})
# The weight growth the paper accepted for Winograd: 2093 / 1640 MB (Table 1, "+Winograd(All)" vs the row above)
PAPER_WINOGRAD_WEIGHT_GROWTH = 2093 / 1640 - 1  # 0.276
# Chen et al. 2023, Table 2: tile size -> (flops saving, tensor multiplier, weight multiplier)
PAPER_TABLE2 = {2: (2.25, 4.0, 1.77), 4: (4.0, 2.25, 4.0), 6: (5.06, 1.8, 7.12), 8: (5.76, 1.56, 11.12)}


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def preset_config(workload: str, preset: str):
    if workload not in WORKLOADS:
        raise choice_error("workload for optimize", workload, WORKLOADS)
    from genscope.models.stable_diffusion import PRESETS

    return PRESETS[preset]


def check_image_size(config, image_size: int) -> int:
    multiple = vae_scale_factor(config.decoder) * unet_downsample_factor(config.denoiser)
    check_multiple("image size", image_size, multiple, maximum=MAX_IMAGE_SIZE)
    return image_size // vae_scale_factor(config.decoder)


def unet_inputs(config, image_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """One CFG step's inputs (float32): sample [2, C, h, w] (the same latents twice), timestep, text [2, T, D]."""
    latent = check_image_size(config, image_size)
    gen = torch.Generator("cpu").manual_seed(seed)
    channels = config.denoiser["in_channels"]
    latents = torch.randn(1, channels, latent, latent, generator=gen)
    text = torch.randn(2, config.text_len, config.denoiser["cross_attention_dim"], generator=gen)
    return {"sample": torch.cat([latents, latents]).to(device), "timestep": torch.tensor(TIMESTEP, device=device),
            "encoder_hidden_states": text.to(device)}


def cfg_step(unet: nn.Module, inputs: dict[str, torch.Tensor], guidance_scale: float = 7.5) -> torch.Tensor:
    """One UNet step with classifier-free guidance -> the guided noise prediction [1, C, h, w] (float32)."""
    dtype = model_dtype(unet)
    out = unet(inputs["sample"].to(dtype), inputs["timestep"],
               encoder_hidden_states=inputs["encoder_hidden_states"].to(dtype)).sample
    uncond, cond = out.float().chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def _example(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[tuple, dict]:
    return ((inputs["sample"].to(dtype), inputs["timestep"]),
            {"encoder_hidden_states": inputs["encoder_hidden_states"].to(dtype)})


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers reachable in ``model``, each storage counted once."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def step_flops(config, image_size: int) -> int:
    """FLOPs of one CFG UNet step (batch 2), counted on the meta device (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        from genscope.instrument.flops import register_attention_formulas

        register_attention_formulas()
    except ImportError:  # pragma: no cover - the lead's module is optional here
        pass
    unet = config.denoiser.build("meta")
    install_attention(unet, "denoiser")
    inputs = unet_inputs(config, image_size, torch.device("cpu"))
    meta = {k: v.to("meta") for k, v in inputs.items()}
    with torch.inference_mode(), use_backend("flash"), FlopCounterMode(display=False) as counter:
        unet(meta["sample"], meta["timestep"], encoder_hidden_states=meta["encoder_hidden_states"])
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------
# Table 1: the ablation
# ----------------------------------------------------------------------------------------------------
def select_rows(rows: list[str] | None, dtype: torch.dtype) -> list[Row]:
    """Rows to run. Each row adds its passes to those of the rows above it; ``rows`` (keys of
    :data:`ROW_KEYS`) keeps the baseline and the rows named (the passes of rows left out are not applied).
    In a 16-bit ablation the bf16-weights row is dropped (the baseline already stores 16-bit weights)."""
    chosen = list(ROWS)
    if rows:
        for r in rows:
            if r not in ROW_KEYS:
                raise choice_error("ablation row", r, tuple(ROW_KEYS))
        keep = {0} | {ROW_KEYS[r] for r in rows}
        chosen = [row for i, row in enumerate(ROWS) if i in keep]
    if dtype != torch.float32:
        chosen = [row for row in chosen if "bf16_weights" not in row.passes]
    return chosen


class _Configurations:
    """One model, a swap log per row; :meth:`switch` moves between rows by undoing / redoing logs."""

    def __init__(self, model: nn.Module, logs: list[SwapLog]):
        self.model = model
        self.logs = logs
        self.current = len(logs) - 1

    def switch(self, index: int) -> None:
        while self.current > index:
            self.logs[self.current].undo()
            self.current -= 1
        while self.current < index:
            self.current += 1
            self.logs[self.current].redo()


def _dominant_class(fn: Callable[[], object], unet: nn.Module, device: torch.device):
    """(op class, share %, class table) of one step, or (None, nan, None) without the lead's profiler."""
    try:
        from genscope.instrument.profiler import profile_callable
    except ImportError:
        return None, float("nan"), None
    prof = profile_callable(fn, components=[("denoiser", unet)], device=device, mode="trace", repeat=1, warmup=0)
    by = prof.by_class()
    top = by.sort_values("time_ms", ascending=False).iloc[0]
    return str(top.op_class), float(top.share_pct), by


def run_ablation(workload: str = "stable-diffusion", preset: str = "small", image_size: int | None = None,
                 dtype: str = "float32", device: str = "cpu", repeats: int = 3, rows: list[str] | None = None,
                 profile: bool = True, memory: bool = True, backend: str = "auto", guidance_scale: float = 7.5,
                 measure: bool = True, winograd_budget: float | None = PAPER_WINOGRAD_WEIGHT_GROWTH,
                 progress: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """Table 1 for ``workload`` at ``preset``. Returns tables ``ablation``, ``class_time``, ``swaps``,
    ``oracle``, ``decisions``, ``notes``, ``settings``. ``measure=False``: the paper's rules instead of
    measured per-shape decisions (flash for head dim 40, Winograd F(4x4) everywhere). ``winograd_budget``: the
    transformed weights Winograd may add, as a fraction of the model's weights (default: the paper's 27.6 %
    growth; None: no limit)."""
    say = progress or (lambda text: None)
    config = preset_config(workload, preset)
    image_size = image_size or config.image_size
    check_image_size(config, image_size)
    dev = parse_device(device)
    if dev.type == "meta":
        raise UserError("the ablation measures real tensors: use --device cpu or cuda")
    run_dtype = parse_dtype(dtype)
    check_dtype_on_device(run_dtype, dev)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 50:
        raise UserError(f"repeats {repeats!r} is out of range: accepted integers 1 to 50")
    chosen = select_rows(rows, run_dtype)

    say(f"building the {preset} UNet (float32) on {dev}")
    unet = config.denoiser.build(dev, torch.float32)
    install_attention(unet, "denoiser")
    inputs = unet_inputs(config, image_size, dev)
    with torch.inference_mode(), use_backend("baseline"):
        reference = cfg_step(unet, inputs, guidance_scale)  # the float32 baseline's output

    logs: list[SwapLog] = []
    applied: list[tuple[str, ...]] = []
    all_logs = SwapLog()
    for i, row in enumerate(chosen):
        passes = row.passes
        if i == 0 and run_dtype != torch.float32:
            passes = ("bf16_weights",)  # the baseline of a 16-bit ablation: weights stored in that dtype
        applied.append(passes)
        cfg_dtype = model_dtype(unet)
        args, kwargs = _example(inputs, cfg_dtype)
        say(f"applying {row.label}: {', '.join(passes) or '-'}")
        pass_config = PassConfig(passes=passes, backend=backend, example_inputs=args, example_kwargs=kwargs,
                                 measure=measure, winograd_weight_budget=winograd_budget,
                                 weights_dtype=dtype_name(run_dtype) if run_dtype != torch.float32 else "bfloat16")
        with use_backend("baseline"):
            log = apply(unet, pass_config)
        logs.append(log)
        all_logs.extend_log(log)
    configs = _Configurations(unet, logs)

    def step():
        with torch.inference_mode(), use_backend("baseline"):
            return cfg_step(unet, inputs, guidance_scale)

    outputs: dict[int, torch.Tensor] = {}
    for i in range(len(chosen)):  # warm-up (one-time costs: weight reorders, first-call decisions) + error
        configs.switch(i)
        outputs[i] = step()
    times: dict[int, list[float]] = {i: [] for i in range(len(chosen))}
    for rep in range(repeats):
        say(f"timing repetition {rep + 1}/{repeats}")
        for i in range(len(chosen)):
            configs.switch(i)
            synchronize(dev)
            start = time.perf_counter()
            step()
            synchronize(dev)
            times[i].append((time.perf_counter() - start) * 1e3)

    flops = step_flops(config, image_size)
    records, class_frames = [], []
    for i, row in enumerate(chosen):
        configs.switch(i)
        peak = float("nan")
        if memory:
            say(f"memory of {row.label}")
            with torch.inference_mode(), use_backend("baseline"), track_peak_memory(dev) as stats:
                cfg_step(unet, inputs, guidance_scale)
            peak = stats.peak_bytes / 2**20
        dominant, share = None, float("nan")
        if profile:
            say(f"profiling {row.label}")
            dominant, share, by = _dominant_class(step, unet, dev)
            if by is not None:
                class_frames.append(by.assign(row=row.label))
        med = statistics.median(times[i])
        records.append({
            "row": row.label, "passes": "+".join(applied[i]) or "-", "dtype": dtype_name(model_dtype(unet)),
            "time_ms": med, "time_min_ms": min(times[i]), "time_max_ms": max(times[i]),
            "spread_pct": 100.0 * (max(times[i]) - min(times[i])) / med if med else 0.0,
            "peak_tensor_mb": peak, "weight_mb": weight_bytes(unet) / 2**20,
            "max_rel_error": max_relative_error(outputs[i], reference),
            "rel_error": relative_error(outputs[i], reference),
            "gflops_per_s": flops / med / 1e6 if med else float("nan"),
            "dominant_op_class": dominant, "dominant_share_pct": share,
            "swaps": len(logs[i]), "repeats": repeats,
        })
    ablation = pd.DataFrame(records)
    base_ms = ablation["time_ms"].iloc[0]
    ablation.insert(4, "speedup", base_ms / ablation["time_ms"])
    ablation["step_flops"] = flops
    swaps = pd.concat([log.table().assign(row=row.label) for row, log in zip(chosen, logs, strict=True)],
                      ignore_index=True)
    class_time = (pd.concat(class_frames, ignore_index=True) if class_frames
                  else pd.DataFrame(columns=["row", "op_class", "time_ms", "share_pct"]))
    decisions = pd.DataFrame([{k: (str(v) if isinstance(v, dict) else v) for k, v in d.items()}
                              for d in all_logs.decisions])
    notes = pd.DataFrame({"note": all_logs.notes})
    configs.switch(len(chosen) - 1)
    return {"ablation": ablation, "class_time": class_time, "swaps": swaps, "oracle": all_logs.oracle_table(),
            "decisions": decisions, "notes": notes,
            "settings": pd.DataFrame([{"workload": workload, "preset": preset, "image_size": image_size,
                                       "dtype": dtype_name(run_dtype), "device": str(dev), "repeats": repeats,
                                       "guidance_scale": guidance_scale, "threads": torch.get_num_threads(),
                                       "backend": backend, "measured_decisions": measure,
                                       "winograd_budget": winograd_budget}])}


# ----------------------------------------------------------------------------------------------------
# Table 2: Winograd
# ----------------------------------------------------------------------------------------------------
def representative_layer(config, image_size: int) -> tuple[int, int]:
    """(channels, latent size) of the UNet's first-level 3x3 convolutions at ``image_size``."""
    latent = check_image_size(config, image_size)
    return int(config.denoiser["block_out_channels"][0]), latent


def winograd_table(workload: str = "stable-diffusion", preset: str = "small", image_size: int | None = None,
                   device: str = "cpu", repeats: int = 3, dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
                   tiles: tuple[int, ...] = (2, 4, 6, 8)) -> dict[str, pd.DataFrame]:
    """Table 2: ``winograd`` (one row per tile: analytical and measured multipliers, time vs direct) and
    ``winograd_error`` (tile x dtype x product precision x transforms: error, direct's error, oracle)."""
    import torch.nn.functional as F

    from genscope.passes.decisions import measure_interleaved
    from genscope.passes.kernels import cpu as kcpu
    from genscope.passes.kernels import winograd_math as wm
    from genscope.passes.winograd import Variant, winograd_oracle

    config = preset_config(workload, preset)
    image_size = image_size or config.image_size
    channels, latent = representative_layer(config, image_size)
    dev = parse_device(device)
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, channels, latent, latent, generator=gen).to(dev)
    w = (torch.randn(channels, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5).to(dev)
    b = torch.zeros(channels, device=dev)
    implemented = [m for m in tiles if m in wm.TILES]
    us = {m: kcpu.winograd_weight(w, m) for m in implemented}
    fns = {"direct": lambda: F.conv2d(x, w, b, padding=1)}
    fns.update({f"F{m}": (lambda m=m: kcpu.winograd_conv2d(x, us[m], b, m)) for m in implemented})
    times = measure_interleaved(fns, repeats=repeats, warmup=1, device=dev)
    med = {k: statistics.median(v) for k, v in times.items()}
    input_bytes = x.numel() * x.element_size()

    def peak_of(fn) -> int:
        with torch.inference_mode(), track_peak_memory(dev) as stats:
            fn()
        return stats.peak_bytes

    direct_peak = peak_of(fns["direct"])
    rows = []
    for m in tiles:
        paper = PAPER_TABLE2.get(m, (float("nan"),) * 3)
        row = {"tile": f"{m}x{m}", "m": m, "flops_saving": wm.flops_saving(m), "paper_flops_saving": paper[0],
               "tensor_multiplier": wm.tensor_multiplier(m), "paper_tensor_multiplier": paper[1],
               "weight_multiplier": wm.weight_multiplier(m), "paper_weight_multiplier": paper[2],
               "implemented": m in implemented}
        if m in implemented:
            peak = peak_of(fns[f"F{m}"])
            row.update({
                "measured_weight_multiplier": us[m].numel() * us[m].element_size() / (w.numel() * w.element_size()),
                "measured_peak_tensor_multiplier": peak / input_bytes,
                "direct_peak_tensor_multiplier": direct_peak / input_bytes,
                "time_ms": med[f"F{m}"], "direct_time_ms": med["direct"],
                "speedup_vs_direct": med["direct"] / med[f"F{m}"],
            })
        rows.append(row)
    table = pd.DataFrame(rows)
    table["layer"] = f"[2, {channels}, {latent}, {latent}] -> {channels} channels, 3x3"

    errors = []
    for dname in dtypes:
        dt = parse_dtype(dname)
        try:
            check_dtype_on_device(dt, dev)
        except UserError:
            continue
        for m in implemented:
            products = ("model",) + (("float32",) if dt != torch.float32 else ())
            points = ("accurate", "lavin") if m == 4 else ("accurate",)
            for product in products:
                for variant in points:
                    r = winograd_oracle(m, dt, dev, product=product, variant=variant)
                    errors.append({"tile": f"{m}x{m}", "dtype": dname, "product": product,
                                   "points": "Lavin & Gray" if variant == "lavin" or m == 2 else
                                   ("0, ±3/2, ±2/3" if m == 4 else "wincnn default"),
                                   "variant": Variant(m, product).name, "rel_error": r.error,
                                   "direct_rel_error": r.baseline_error, "error_ratio": r.error / r.baseline_error,
                                   "oracle_ok": r.ok})
    return {"winograd": table, "winograd_error": pd.DataFrame(errors)}
