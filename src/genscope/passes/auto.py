"""``PassConfig.auto``: the precision and the pass set chosen by measurement on the device at hand.

Nothing here knows a CPU or GPU model: every choice is a measurement on this device, cached per device key
(:func:`genscope.passes.decisions.device_key`: device name, threads and ISA level) in the decisions file, so
a second run on the same machine decides from the cache (no timing) and a new machine measures once.

1. **Precision** (:func:`choose_precision`): every candidate dtype the device can run
   (:func:`genscope.models.runtime.check_dtype_on_device`) times a probe built from the model's own layer
   widths: a GEMM [1024, D] x [D, D] (D = the first attention's width) and a 3x3 convolution
   [1, C, 32, 32] (C = the first 3x3 convolution's output channels, at most 320), at least 5 interleaved
   repetitions, after a small screen that drops dtypes :data:`SCREEN_FACTOR` x slower than float32 (a dtype
   the CPU emulates - float16 convolutions on CPUs without fp16 arithmetic - ran 150x slower in the screen's
   absence). float32 is kept unless another dtype's median per-round time ratio to it is at most
   1 - :data:`MARGIN` and it won 70 % of the interleaved rounds (:func:`decide`: a loaded machine's noise
   must not pick a precision). A 16-bit winner becomes ``bf16_weights`` with
   ``weights_dtype`` set, applied first (so every later pass decides and checks its oracle in that dtype).
   Whether the precision meets its oracle is the ``bf16_weights`` pass's check at apply time
   (:func:`genscope.passes.apply` raises ``PassRefused`` with the measured error; :func:`apply_auto` then
   falls back to the next-fastest precision and says so).
2. **Passes**: ``selective_flash`` and ``winograd`` decide per layer themselves (measured per shape). Each
   optional pass (:data:`OPTIONAL_PASSES`) is timed on a copy of the first module it would change (a
   ``ResnetBlock2D``, a ``GEGLU``, a self-attention, a ``FeedForward``), in the chosen dtype, with and
   without it; it is kept where it is at least :data:`MARGIN` faster (:func:`decide`).

``timer(label, fns) -> {name: [ms, ...]}`` is injectable (tests pass fake timings); the default is
:func:`genscope.passes.decisions.measure_interleaved`.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genscope.passes.decisions import DecisionCache, decision_key, measure_interleaved

MARGIN = 0.05  # a candidate must be >= 5 % faster than the default to be chosen (timing noise on a shared CPU)
SCREEN_FACTOR = 3.0  # a dtype this much slower than float32 on the small screen probe is not probed further
CANDIDATE_DTYPES = ("float32", "bfloat16", "float16")
PER_LAYER_PASSES = ("selective_flash", "winograd")  # decide per layer (measured per shape) themselves
# optional passes in the order they are applied (channels_last before prepacked_conv: it feeds it NHWC)
OPTIONAL_PASSES = ("fused_groupnorm", "fused_geglu", "fused_qkv", "onednn_linear", "channels_last", "prepacked_conv")
AUTO_VERSION = 5  # part of the cache key: bump when the probes or the cached row change
# probe inputs: tokens of a [2, tokens, D] sequence, side of a [2, C, side, side] image - big enough that a GEMM
# or convolution is not dominated by per-call overhead (at 256 tokens the oneDNN linear measured slower than
# F.linear on a paper-scale FeedForward, at 1024 and more 1.2-2x faster)
PROBE_TOKENS = 1024
PROBE_SIZE = 32

Timer = Callable[[str, Mapping[str, Callable[[], Any]]], dict[str, list[float]]]


def default_timer(repeats: int, device: torch.device) -> Timer:
    """Interleaved repetitions after one warm-up (``precision-screen``: two)."""
    def timer(label: str, fns: Mapping[str, Callable[[], Any]]) -> dict[str, list[float]]:
        return measure_interleaved(fns, repeats=2 if label.endswith("-screen") else repeats, warmup=1, device=device)

    return timer


def _first(model: nn.Module, predicate) -> nn.Module | None:
    return next((m for m in model.modules() if predicate(m)), None)


def model_widths(model: nn.Module) -> tuple[int, int]:
    """(D, C): the first attention's query width and the first 3x3 convolution's output channels."""
    linear = _first(model, lambda m: isinstance(m, nn.Linear) and m.in_features >= 8)
    conv = _first(model, lambda m: isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3) and m.groups == 1)
    try:
        from diffusers.models.attention_processor import Attention

        attn = _first(model, lambda m: isinstance(m, Attention) and isinstance(getattr(m, "to_q", None), nn.Linear))
        if attn is not None:
            linear = attn.to_q
    except ImportError:  # diffusers is a dependency; a plain model still gets a probe
        pass
    width = linear.in_features if linear is not None else 320
    channels = conv.out_channels if conv is not None else width
    return width, channels


def precision_probes(dtype: torch.dtype, device: torch.device, width: int, channels: int,
                     screen: bool = False) -> dict[str, Callable[[], Any]]:
    """``{"gemm": ..., "conv": ...}`` at the model's widths in ``dtype``; ``screen``: a much smaller version
    (a dtype the device emulates can be 100x slower: it is screened out before the full probe runs)."""
    gen = torch.Generator("cpu").manual_seed(0)
    tokens, size = (64, 8) if screen else (1024, 32)
    channels = min(channels, 64 if screen else 320)  # bounded probe time
    a = torch.randn(tokens, width, generator=gen).to(device, dtype)  # [tokens, D]
    w = (torch.randn(width, width, generator=gen) / width**0.5).to(device, dtype)  # [D, D]
    x = torch.randn(1, channels, size, size, generator=gen).to(device, dtype)  # [1, C, size, size]
    k = (torch.randn(channels, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5).to(device, dtype)
    return {"gemm": lambda: F.linear(a, w), "conv": lambda: F.conv2d(x, k, padding=1)}


def decide(times: Mapping[str, list[float]], default: str, margin: float = MARGIN,
           wins: float = 0.7) -> tuple[str, dict[str, float]]:
    """The fastest name, robust to a loaded machine. Repetitions are interleaved, so round i of every
    candidate saw about the same load: a candidate qualifies when the median of its per-round time ratios
    to ``default`` is at most ``1 - margin`` *and* it was faster in at least ``wins`` of the rounds; the
    qualifying one with the lowest median ratio wins, else ``default``. Returns (choice, medians)."""
    medians = {k: statistics.median(v) for k, v in times.items()}
    best, best_ratio = default, 1.0
    for name, ts in times.items():
        if name == default:
            continue
        ratios = [t / d if d > 0 else float("inf") for t, d in zip(ts, times[default], strict=False)]
        ratio = statistics.median(ratios)
        if ratio <= 1 - margin and sum(r < 1 for r in ratios) >= wins * len(ratios) and ratio < best_ratio:
            best, best_ratio = name, ratio
    return best, medians


def runnable_dtypes(device: torch.device, candidates=CANDIDATE_DTYPES) -> tuple[list[str], dict[str, str]]:
    """(dtypes the device runs, {dtype: why not} for the others)."""
    from genscope.errors import UserError
    from genscope.models.runtime import check_dtype_on_device, parse_dtype

    ok, refused = [], {}
    for name in candidates:
        try:
            check_dtype_on_device(parse_dtype(name), device)
            ok.append(name)
        except UserError as exc:
            refused[name] = str(exc)
    return ok, refused


def choose_precision(model: nn.Module, device: torch.device, candidates=CANDIDATE_DTYPES,
                     timer: Timer | None = None, cache: DecisionCache | None = None,
                     repeats: int = 3) -> tuple[str, dict[str, Any]]:
    """The fastest dtype among ``candidates`` on ``device`` (float32 unless another is MARGIN faster).

    Returns (dtype name, decision row with ``<dtype>_ms`` medians, ``rule`` and ``refused``).
    """
    from genscope.models.runtime import parse_dtype

    runnable, refused = runnable_dtypes(device, candidates)
    if not runnable:
        raise ValueError(f"none of {candidates} runs on {device}")
    width, channels = model_widths(model)
    shape = {"d": width, "c": channels, "candidates": "+".join(runnable), "v": AUTO_VERSION}
    key = decision_key("auto-precision", device, torch.float32, shape)
    injected = timer is not None  # fake timings are never cached
    cached = cache.get(key) if cache is not None and not injected else None
    if cached is not None and cached.get("choice") in runnable:
        screened = [n for n in cached.get("screened", "").split("+") if n]
        return cached["choice"], {**cached, "rule": _precision_rule("measured (cached)", screened), "refused": refused}
    timer = timer or default_timer(max(repeats, 5), device)
    default = "float32" if "float32" in runnable else runnable[0]
    # screen: two small runs each; a dtype over SCREEN_FACTOR x the default's time (emulated) goes no further
    probes = {name: precision_probes(parse_dtype(name), device, width, channels, screen=True) for name in runnable}
    screen = timer("precision-screen", {f"{n}/{op}": fn for n, ops in probes.items() for op, fn in ops.items()})
    screen_ms = {n: sum(statistics.median(screen[f"{n}/{op}"]) for op in probes[n]) for n in runnable}
    kept = [n for n in runnable if n == default or screen_ms[n] <= SCREEN_FACTOR * screen_ms[default]]
    probes = {name: precision_probes(parse_dtype(name), device, width, channels) for name in kept}
    per_op = timer("precision", {f"{n}/{op}": fn for n, ops in probes.items() for op, fn in ops.items()})
    # per dtype: the sum over the probe's ops, per interleaved repetition
    times = {n: [sum(vals) for vals in zip(*(per_op[f"{n}/{op}"] for op in probes[n]), strict=True)] for n in kept}
    best, medians = decide(times, default)
    screened = [n for n in runnable if n not in kept]
    # a screened-out dtype's time is the screen's (a smaller probe): named apart, never beside the full probe's
    value = {"choice": best, **{f"{k}_ms": round(v, 3) for k, v in medians.items()},
             **{f"{n}_screen_ms": round(screen_ms[n], 3) for n in runnable}, "screened": "+".join(screened)}
    if cache is not None and not injected:
        cache.put(key, value)
    return best, {**value, "rule": _precision_rule("measured", screened), "refused": refused}


def _precision_rule(how: str, screened: list[str]) -> str:
    return how + (f" ({', '.join(screened)} screened out: over {SCREEN_FACTOR:g}x float32 on the screen probe)"
                  if screened else "")


class _Unit(nn.Module):
    """A module under a parent, so that passes (which never swap the root) can swap it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.unit = module

    def forward(self, *args, **kwargs):
        return self.unit(*args, **kwargs)


def pass_probe(name: str, model: nn.Module) -> tuple[nn.Module, tuple, dict] | None:
    """(a module the pass would change, its inputs' shapes spec) or None if the pass has nothing here."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    if name in ("fused_groupnorm", "channels_last", "prepacked_conv"):
        block = _first(model, lambda m: type(m) is ResnetBlock2D)
        if block is None:
            return None
        args = (("x", (2, block.in_channels, PROBE_SIZE, PROBE_SIZE)),
                ("temb", (2, block.time_emb_proj.in_features)) if block.time_emb_proj is not None else ("none", ()))
        return block, args, {}
    if name == "onednn_linear":
        ff = _first(model, lambda m: type(m).__name__ == "FeedForward")
        if ff is not None:
            first = _first(ff, lambda m: isinstance(m, nn.Linear))
            return ff, (("x", (2, PROBE_TOKENS, first.in_features)),), {}
        linear = _first(model, lambda m: type(m) is nn.Linear)
        return None if linear is None else (linear, (("x", (2, PROBE_TOKENS, linear.in_features)),), {})
    if name == "fused_geglu":
        geglu = _first(model, lambda m: type(m) is GEGLU)
        return None if geglu is None else (geglu, (("x", (2, PROBE_TOKENS, geglu.proj.in_features)),), {})
    if name == "fused_qkv":
        attn = _first(model, lambda m: isinstance(m, Attention) and not m.is_cross_attention
                      and isinstance(getattr(m, "to_q", None), nn.Linear))
        return None if attn is None else (attn, (("x", (2, PROBE_TOKENS, attn.to_q.in_features)),), {})
    return None


def _make_inputs(spec, device, dtype):
    gen = torch.Generator("cpu").manual_seed(0)
    return tuple(None if kind == "none" else torch.randn(*shape, generator=gen).to(device, dtype)
                 for kind, shape in spec)


def choose_passes(model: nn.Module, device: torch.device, dtype: torch.dtype, timer: Timer | None = None,
                  cache: DecisionCache | None = None, repeats: int = 3,
                  candidates=OPTIONAL_PASSES) -> tuple[list[str], list[dict[str, Any]]]:
    """The optional passes that measure faster on a probe module (in ``dtype``), and one row per pass."""
    from genscope.passes.base import PassConfig, apply

    chosen, rows = [], []
    for name in candidates:
        probe = pass_probe(name, model)
        if probe is None:
            rows.append({"pass": name, "choice": "skip", "rule": "nothing in this model for it"})
            continue
        module, spec, kwargs = probe
        shape = {"pass": name, "module": type(module).__name__, "in": "x".join(str(d) for d in spec[0][1]),
                 "v": AUTO_VERSION}
        key = decision_key("auto-pass", device, dtype, shape)
        cached = cache.get(key) if cache is not None and timer is None else None
        if cached is not None and cached.get("choice") in ("with", "without"):
            row = {**shape, **cached, "rule": "measured (cached)"}
        else:
            base = _Unit(copy.deepcopy(module)).to(dtype).eval()
            optimized = _Unit(copy.deepcopy(module)).to(dtype).eval()
            try:
                apply(optimized, PassConfig(passes=(name,), measure=False, decisions_path=cache and str(cache.path)))
            except Exception as exc:  # noqa: BLE001 - a pass refused on the probe is not chosen; say why
                rows.append({**shape, "choice": "without", "rule": f"refused on the probe: {exc}"})
                continue
            inputs = _make_inputs(spec, device, dtype)
            fns = {"without": lambda m=base, a=inputs, k=kwargs: m(*a, **k),
                   "with": lambda m=optimized, a=inputs, k=kwargs: m(*a, **k)}
            times = (timer or default_timer(max(repeats, 5), device))(name, fns)
            best, medians = decide(times, default="without")
            value = {"choice": best, **{f"{k}_ms": round(v, 3) for k, v in medians.items()}}
            if cache is not None and timer is None:
                cache.put(key, value)
            row = {**shape, **value, "rule": "measured"}
        rows.append(row)
        if row["choice"] == "with":
            chosen.append(name)
    return chosen, rows


def auto_config(model: nn.Module, example_inputs: tuple = (), example_kwargs: Mapping[str, Any] | None = None,
                candidates=CANDIDATE_DTYPES, timer: Timer | None = None, repeats: int = 3,
                decisions_path: str | None = None, backend: str = "auto", **overrides):
    """A :class:`PassConfig` whose precision and passes were chosen by measurement (see the module docstring).

    The choices are in ``config.auto_decisions`` (rows: what was measured, the medians, the choice).
    """
    from genscope.models.runtime import parse_dtype
    from genscope.passes.base import PassConfig, model_device

    device = model_device(model)
    cache = DecisionCache(decisions_path)
    dtype_name, precision_row = choose_precision(model, device, candidates, timer, cache, repeats)
    dtype = parse_dtype(dtype_name)
    optional, rows = choose_passes(model, device, dtype, timer, cache, repeats)
    # layout and packing before the per-layer passes: Winograd then measures against the prepacked direct
    # convolution it would replace (and keeps it for the shapes where direct wins)
    passes = (["bf16_weights"] if dtype_name != "float32" else []) + [p for p in OPTIONAL_PASSES if p in optional] \
        + list(PER_LAYER_PASSES)
    config = PassConfig(passes=tuple(passes), backend=backend, weights_dtype=dtype_name if dtype_name != "float32"
                        else "bfloat16", example_inputs=tuple(example_inputs), example_kwargs=dict(example_kwargs or {}),
                        repeats=repeats, decisions_path=decisions_path, **overrides)
    decisions = [{"pass": "precision", **precision_row}] + rows
    object.__setattr__(config, "auto_decisions", decisions)
    object.__setattr__(config, "auto_candidates", tuple(candidates))
    return config


def apply_auto(model: nn.Module, config, filter_fn=None):
    """``apply(model, config)``; if the chosen 16-bit precision fails its oracle, float32 instead (noted)."""
    from genscope.passes.base import apply
    from genscope.passes.oracle import PassRefused

    try:
        log = apply(model, config, filter_fn)  # apply undoes its swaps when a pass is refused
    except PassRefused as exc:
        if "bf16_weights" not in config.passes or exc.result.pass_name != "bf16_weights":
            raise
        import dataclasses

        fallback = dataclasses.replace(config, passes=tuple(p for p in config.passes if p != "bf16_weights"))
        log = apply(model, fallback, filter_fn)
        log.notes.append(f"auto: {config.weights_dtype} measured fastest but {exc}; float32 instead")
    for row in getattr(config, "auto_decisions", []):
        log.decisions.append({"pass": "auto", **{k: v for k, v in row.items() if k != "pass"}, "what": row["pass"]})
    return log


def summary(decisions: list[dict[str, Any]]) -> str:
    parts = []
    for row in decisions:
        times = {k[:-3]: v for k, v in row.items() if k.endswith("_ms") and not k.endswith("_screen_ms")}
        timing = ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
        parts.append(f"{row['pass']}: {row.get('choice')}" + (f" ({timing})" if timing else ""))
    return "; ".join(parts)


def resolve_dtype(dtype: str, model: nn.Module, device: torch.device | str) -> str:
    """``dtype`` itself, or for ``"auto"`` the precision that measures fastest on ``device`` for ``model``'s
    widths (:func:`choose_precision`; ``model`` may live on the meta device: only its layer sizes are read)."""
    if dtype != "auto":
        return dtype
    return choose_precision(model, torch.device(device), cache=DecisionCache())[0]
