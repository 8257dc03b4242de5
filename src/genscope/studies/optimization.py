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

Table 2 (Winograd, :func:`genscope.studies.winograd_table.winograd_table`): per tile size, the analytical
multiplication saving and tensor / weight multipliers next to the paper's values and the measured ones, the
time relative to direct convolution on one SD layer shape, and the relative error with the oracle's verdict.

Pure: returns DataFrames (units in column names); no plotting, no storing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.instrument.measure import MAX_REPS
from genscope.instrument.measure import measure as measure_variants
from genscope.instrument.memory import track_peak_memory
from genscope.models.base import check_multiple, unet_downsample_factor, vae_scale_factor
from genscope.models.layers.attention import install_attention, use_backend
from genscope.models.runtime import check_dtype_on_device, dtype_name, parse_device, parse_dtype
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
    Row("+ fused QKV projection", ("fused_qkv",)),
    Row("+ prepacked conv, fused residual, oneDNN linear", ("prepacked_conv", "onednn_linear")),
)
ROW_KEYS = {"softmax": 1, "fused": 2, "flash": 3, "winograd": 4, "bf16": 5, "channels-last": 6, "qkv": 7,
            "prepacked": 8}

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
                 progress: Callable[[str], None] | None = None, time_budget_s: float = 60.0) -> dict[str, pd.DataFrame]:
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
    if dtype == "auto":  # the precision that measures fastest on this device (genscope.passes.auto, cached)
        from genscope.passes.auto import resolve_dtype

        dtype = resolve_dtype(dtype, config.denoiser.build("meta"), dev)
        say(f"precision chosen by measurement: {dtype}")
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
    # interleaved rounds until every row's median is known to within its bound (genscope.instrument.measure);
    # ``repeats`` is the minimum number of rounds
    timing = measure_variants({str(i): step for i in range(len(chosen))}, device=dev, warmup=0, min_reps=repeats,
                     max_reps=max(repeats, MAX_REPS), budget_s=time_budget_s,
                     prepare={str(i): (lambda i=i: configs.switch(i)) for i in range(len(chosen))},
                     progress=lambda name, rnd: say(f"timing round {rnd + 1}") if name == "0" else None,
                     compare=[("0", str(i)) for i in range(1, len(chosen))])

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
        t = timing.row(str(i))
        med = t["median_ms"]
        # the row's speedup over the baseline: paired per round (genscope.instrument.measure.paired_ratio)
        paired = timing.ratio("0", str(i))
        records.append({
            "row": row.label, "passes": "+".join(applied[i]) or "-", "dtype": dtype_name(model_dtype(unet)),
            "time_ms": med, "time_min_ms": t["min_ms"], "time_max_ms": t["max_ms"], "spread_pct": t["spread_pct"],
            "ci_low_ms": t["ci_low_ms"], "ci_high_ms": t["ci_high_ms"], "ci_pct": t["ci_pct"],
            "speedup": paired["ratio"], "speedup_low": paired["ratio_low"], "speedup_high": paired["ratio_high"],
            "median_stable": bool(t["stable"]), "stable": bool(paired["stable"]),  # the speedup's verdict
            "busy": timing.load.busy, "load_avg_1m": timing.load.load_avg_1m, "timed_reps": int(t["reps"]),
            "peak_tensor_mb": peak, "weight_mb": weight_bytes(unet) / 2**20,
            "max_rel_error": max_relative_error(outputs[i], reference),
            "rel_error": relative_error(outputs[i], reference),
            "gflops_per_s": flops / med / 1e6 if med else float("nan"),
            "dominant_op_class": dominant, "dominant_share_pct": share,
            "swaps": len(logs[i]), "repeats": repeats,
        })
    ablation = pd.DataFrame(records)
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
            "decisions": decisions, "notes": notes, "load": timing.load_table(),
            "settings": pd.DataFrame([{"workload": workload, "preset": preset, "image_size": image_size,
                                       "dtype": dtype_name(run_dtype), "device": str(dev), "repeats": repeats,
                                       "guidance_scale": guidance_scale, "threads": torch.get_num_threads(),
                                       "backend": backend, "measured_decisions": measure,
                                       "winograd_budget": winograd_budget}])}


# ----------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry): Table 1 and / or Table 2
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """``rows`` empty: every row; ``image_size`` None: the preset's; ``winograd_budget`` None: no limit."""

    workload: str = "stable-diffusion"
    preset: str = "small"
    image_size: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    ablation: bool = True
    winograd_table: bool = False
    rows: tuple[str, ...] = ()
    repeat: int = 3
    backend: str = "auto"
    profile: bool = True
    memory: bool = True
    measure: bool = True
    winograd_budget: float | None = 0.276  # PAPER_WINOGRAD_WEIGHT_GROWTH to 3 digits (`optimize`'s default)

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:  # the model first: it is the command's one positional argument
            raise choice_error("workload for optimize", self.workload, WORKLOADS)
        if not (self.ablation or self.winograd_table):
            raise UserError("say what to run: --ablation (Table 1) and/or --winograd-table (Table 2)")
        from genscope.models.stable_diffusion import PRESETS

        if self.preset not in PRESETS.names():
            raise choice_error("preset", self.preset, PRESETS.names())
        config = preset_config(self.workload, self.preset)
        check_image_size(config, self.image_size or config.image_size)
        dt = torch.float32 if self.dtype == "auto" else parse_dtype(self.dtype)  # auto: measured in the study
        check_dtype_on_device(dt, parse_device(self.device))
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or not 1 <= self.repeat <= 50:
            raise UserError(f"--repeat {self.repeat} is out of range: accepted 1 to 50")
        if self.backend not in ("auto", "torch", "triton"):
            raise choice_error("kernel backend", self.backend, ("auto", "torch", "triton"))
        if self.winograd_budget is not None and not 0 <= self.winograd_budget < float("inf"):
            raise UserError(f"--winograd-budget {self.winograd_budget!r} is out of range; accepted: a fraction "
                            ">= 0, or none")
        if self.rows:
            select_rows(list(self.rows), dt)  # validates the names


def run(settings: Settings, *, progress: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    s = settings
    image_size = s.image_size or preset_config(s.workload, s.preset).image_size
    tables: dict[str, pd.DataFrame] = {}
    if s.ablation:
        tables.update(run_ablation(s.workload, s.preset, image_size, s.dtype, s.device, repeats=s.repeat,
                                   rows=list(s.rows) or None, profile=s.profile, memory=s.memory, backend=s.backend,
                                   measure=s.measure, winograd_budget=s.winograd_budget, progress=progress))
    if s.winograd_table:
        from genscope.studies.winograd_table import winograd_table

        tables.update(winograd_table(s.workload, s.preset, image_size, s.device, repeats=s.repeat))
    return tables
