"""Optimization passes: ``apply(model, PassConfig, filter_fn=None) -> list[Swap]``.

A pass swaps modules (or an attention module's processor) of a built model for optimized ones and logs
every swap: module path, old class, new class, reason. It touches nothing else: the swapped modules share
the original parameter tensors (same state_dict keys and values), except where changing the stored weights
*is* the optimization (``bf16_weights``; Winograd adds its transformed weights as non-persistent buffers).
Every pass is opt-in (``PassConfig.passes``), and each swap meets a numerical oracle
(:mod:`genscope.passes.oracle`) at apply time; a precision a pass cannot serve within the oracle is refused
with the measured error.

The returned :class:`SwapLog` is a ``list[Swap]`` with ``notes`` (what a pass did not do, and why),
``oracle`` (every oracle checked) and ``decisions`` (measured per-shape choices), and can ``undo()`` and
``redo()`` its swaps, which is how the ablation switches one model between configurations.

Passes (module per pass): ``partial_softmax``, ``fused_groupnorm``, ``fused_geglu``, ``selective_flash``,
``winograd``, ``bf16_weights``, ``channels_last``, ``fused_qkv``, ``prepacked_conv``, ``onednn_linear``,
``cuda_graphs`` (CUDA only; last: it captures the blocks as the other passes left them).
``PassConfig.auto(model, ...)`` chooses the precision and the passes by measurement
(:mod:`genscope.passes.auto`); ``apply`` undoes a call's swaps when one of its passes is refused.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.models.layers.triton_support import require_triton, triton_available
from genscope.passes.decisions import DecisionCache, forward_on_meta
from genscope.passes.oracle import OracleResult, PassRefused, cached_check

IMPL_BACKENDS = ("auto", "torch", "triton")
WEIGHT_DTYPES = ("bfloat16", "float16")

# pass name -> "module:Class" (imported on first use)
PASS_MODULES: dict[str, str] = {
    "partial_softmax": "genscope.passes.partial_softmax:PartialSoftmaxPass",
    "fused_groupnorm": "genscope.passes.fused_groupnorm:FusedGroupNormPass",
    "fused_geglu": "genscope.passes.fused_geglu:FusedGEGLUPass",
    "selective_flash": "genscope.passes.selective_flash:SelectiveFlashPass",
    "winograd": "genscope.passes.winograd:WinogradPass",
    "bf16_weights": "genscope.passes.bf16_weights:LowPrecisionWeightsPass",
    "channels_last": "genscope.passes.channels_last:ChannelsLastPass",
    "fused_qkv": "genscope.passes.fused_qkv:FusedQKVPass",
    "prepacked_conv": "genscope.passes.prepacked_conv:PrepackedConvPass",
    "onednn_linear": "genscope.passes.onednn_linear:OneDNNLinearPass",
    "cuda_graphs": "genscope.passes.cuda_graphs:CudaGraphsPass",
}
PASS_NAMES: tuple[str, ...] = tuple(PASS_MODULES)
CUDA_ONLY_PASSES: tuple[str, ...] = ("cuda_graphs",)  # refused for a model that is not on a CUDA device

FilterFn = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class PassConfig:
    """Which passes to apply, in order, and how.

    passes: names from :data:`PASS_NAMES`, applied in the order given.
    backend: ``torch`` (CPU / plain PyTorch), ``triton`` (CUDA kernels; needs a GPU and the package), or
        ``auto`` (triton where it can run, else torch).
    winograd_tile: a fixed output tile (2, 4 or 6), or None to choose per layer by measurement among
        ``winograd_tiles`` (only tiles that meet the oracle in the model's precision are candidates).
    winograd_weight_budget: with measured decisions, the most transformed-weight bytes Winograd may add, as a
        fraction of the model's weight bytes (None: no limit); layers are chosen by time saved per byte.
    weights_dtype: the dtype ``bf16_weights`` stores weights in (bfloat16; float16 for GPUs).
    example_inputs / example_kwargs: one forward's arguments; passes that decide per shape (Winograd,
        selective flash) run the model once on them to see the shapes. Without them, Winograd needs a fixed
        tile and selective flash decides on each new shape at its first call.
    measure: decide by measurement (False: the paper's rules - flash for head dim in ``flash_head_dims``,
        Winograd with ``winograd_tile`` or F(4x4) everywhere - F(2x2) where F(4x4) fails the oracle).
    repeats: interleaved repetitions per measured decision.
    decisions_path: the decision cache (default ``$GENSCOPE_DECISIONS`` or ``~/.genscope/pass-decisions.json``).
    """

    passes: tuple[str, ...] = ()
    backend: str = "auto"
    winograd_tile: int | None = None
    winograd_tiles: tuple[int, ...] = (2, 4, 6)
    winograd_weight_budget: float | None = None
    weights_dtype: str = "bfloat16"
    example_inputs: tuple = field(default=(), compare=False, hash=False, repr=False)
    example_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    measure: bool = True
    flash_head_dims: tuple[int, ...] = (40,)  # Chen et al. 2023, Sec. 3.2.2: flash for d = 40 on Adreno/Apple
    repeats: int = 3
    decisions_path: str | None = None

    @classmethod
    def auto(cls, model: nn.Module, example_inputs: tuple = (), example_kwargs: Mapping[str, Any] | None = None,
             **kwargs: Any) -> PassConfig:
        """Precision and passes chosen by measurement on ``model``'s device (:func:`genscope.passes.auto.auto_config`;
        apply it with :func:`genscope.passes.auto.apply_auto` to fall back to float32 if 16-bit fails its oracle)."""
        from genscope.passes.auto import auto_config

        return auto_config(model, example_inputs, example_kwargs, **kwargs)

    def validate(self) -> None:
        for name in self.passes:
            if name not in PASS_MODULES:
                raise choice_error("pass", name, PASS_NAMES)
        if self.backend not in IMPL_BACKENDS:
            raise choice_error("pass backend", self.backend, IMPL_BACKENDS)
        from genscope.passes.kernels.winograd_math import TILES

        if self.winograd_tile is not None and self.winograd_tile not in TILES:
            raise choice_error("Winograd tile", self.winograd_tile, TILES)
        for tile in self.winograd_tiles:
            if tile not in TILES:
                raise choice_error("Winograd tile", tile, TILES)
        budget = self.winograd_weight_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0):
            raise UserError(f"Winograd weight budget {budget!r} is out of range: accepted a fraction >= 0 (or none)")
        if self.weights_dtype not in WEIGHT_DTYPES:
            raise choice_error("weights dtype", self.weights_dtype, WEIGHT_DTYPES)
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 1 <= self.repeats <= 100:
            raise UserError(f"repeats {self.repeats!r} is out of range: accepted integers 1 to 100")


@dataclass
class Swap:
    """One swap: ``parent.<attr>`` was ``old`` and is now ``new``."""

    path: str
    old_class: str
    new_class: str
    reason: str
    pass_name: str = ""
    parent: Any = field(default=None, repr=False, compare=False)
    attr: str = field(default="", repr=False, compare=False)
    old: Any = field(default=None, repr=False, compare=False)
    new: Any = field(default=None, repr=False, compare=False)

    def undo(self) -> None:
        setattr(self.parent, self.attr, self.old)

    def redo(self) -> None:
        setattr(self.parent, self.attr, self.new)

    def as_row(self) -> dict[str, str]:
        return {"pass": self.pass_name, "path": self.path, "old_class": self.old_class,
                "new_class": self.new_class, "reason": self.reason}


class SwapLog(list):
    """``list[Swap]`` plus what the passes said: ``notes``, ``oracle`` results and measured ``decisions``."""

    def __init__(self, swaps=()):
        super().__init__(swaps)
        self.notes: list[str] = []
        self.oracle: list[OracleResult] = []
        self.pending: list[Callable[[], None]] = []  # work waiting for the shared example forward (apply)
        self.decisions: list[dict[str, Any]] = []

    @property
    def paths(self) -> set[str]:
        return {s.path for s in self}

    def undo(self) -> None:
        for swap in reversed(self):
            swap.undo()

    def redo(self) -> None:
        for swap in self:
            swap.redo()

    def extend_log(self, other: SwapLog) -> None:
        self.extend(other)
        self.notes.extend(other.notes)
        self.oracle.extend(other.oracle)
        self.decisions.extend(other.decisions)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([s.as_row() for s in self], columns=["pass", "path", "old_class", "new_class", "reason"])

    def oracle_table(self) -> pd.DataFrame:
        return pd.DataFrame([r.as_row() for r in self.oracle],
                            columns=["pass", "what", "dtype", "error", "baseline_error", "limit", "ok"])

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self:
            counts[s.pass_name] = counts.get(s.pass_name, 0) + 1
        parts = [f"{k}: {v} swap{'s' if v != 1 else ''}" for k, v in counts.items()]
        return "; ".join(parts + self.notes) or "no swaps"


# ----------------------------------------------------------------------------------------------------
# Helpers for passes
# ----------------------------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def shallow_clone(module: nn.Module, new_cls: type[nn.Module]) -> nn.Module:
    """A new ``new_cls`` instance sharing ``module``'s children, parameters and buffers (own registries).

    Used to swap a block for a subclass with another ``forward`` without copying any tensor: the
    state_dict of the clone has the same keys and the very same tensors.
    """
    new = new_cls.__new__(new_cls)
    for key, value in module.__dict__.items():
        new.__dict__[key] = copy.copy(value) if isinstance(value, dict) else value
    return new


def parent_of(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." in path:
        parent_path, attr = path.rsplit(".", 1)
        return model.get_submodule(parent_path), attr
    return model, path


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` where Triton kernels can run on ``device``, else ``torch``."""
    if requested == "triton":
        require_triton(device)
        return "triton"
    if requested == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    return "torch"


class PassContext:
    """What a pass sees: the model, the config, the filter, the log it writes, shape probes, the cache."""

    def __init__(self, model: nn.Module, config: PassConfig, filter_fn: FilterFn | None, pass_name: str,
                 log: SwapLog, backend: str):
        self.model = model
        self.config = config
        self.filter_fn = filter_fn
        self.pass_name = pass_name
        self.log = log
        self.backend = backend
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        self.cache = DecisionCache(config.decisions_path)

    # ----- enumeration -----------------------------------------------------------------------------
    def modules(self, predicate: Callable[[str, nn.Module], bool] | None = None) -> Iterator[tuple[str, nn.Module]]:
        """(path, module) for every module that passes ``filter_fn`` and ``predicate`` (a snapshot)."""
        for path, module in list(self.model.named_modules()):
            if path == "":
                continue
            if self.filter_fn is not None and not self.filter_fn(path, module):
                continue
            if predicate is None or predicate(path, module):
                yield path, module

    # ----- logging ---------------------------------------------------------------------------------
    def swap(self, path: str, new: Any, reason: str, parent: Any = None, attr: str | None = None) -> Swap:
        """Replace the module (or attribute) at ``path`` with ``new`` and log it."""
        if parent is None:
            parent, attr = parent_of(self.model, path)
        assert attr is not None
        old = getattr(parent, attr)
        entry = Swap(path=path, old_class=type(old).__name__, new_class=type(new).__name__, reason=reason,
                     pass_name=self.pass_name, parent=parent, attr=attr, old=old, new=new)
        setattr(parent, attr, new)
        self.log.append(entry)
        return entry

    def note(self, text: str) -> None:
        self.log.notes.append(f"{self.pass_name}: {text}")

    def decision(self, **row: Any) -> None:
        self.log.decisions.append({"pass": self.pass_name, **row})

    def record(self, result: OracleResult) -> OracleResult:
        self.log.oracle.append(result)
        return result

    def cached_check(self, fields: dict[str, Any], check: Callable[[], OracleResult]) -> OracleResult:
        """``check()`` once per device, dtype and ``fields`` (:func:`genscope.passes.oracle.cached_check`): for a
        check made on a representative module of a structure, where the fields name that structure."""
        return cached_check(self.cache, self.pass_name, self.device, self.dtype, fields, check)

    def require(self, result: OracleResult) -> None:
        """Record an oracle result; refuse (raise) when it fails."""
        self.record(result)
        if not result.ok:
            raise PassRefused(result)

    # ----- shapes ----------------------------------------------------------------------------------
    def has_example(self) -> bool:
        return bool(self.config.example_inputs) or bool(self.config.example_kwargs)

    def after_example(self, finish: Callable[[], None]) -> None:
        """Run ``finish`` after a forward on the example inputs: the per-shape choosers a pass installed decide
        during that forward. Passes that defer their work this way (``Pass.shares_example``) share one forward
        (at paper scale a forward is 10-20 s of a 2-core CPU's time): :func:`apply` runs it before the next
        pass that does not share, and at the end."""
        self.log.pending.append(finish)

    def run_example(self) -> None:
        """One forward on the example inputs, floating tensors cast to the model's current dtype - for the shapes.

        First on the meta device (:func:`forward_on_meta`): the per-shape choosers see every shape there and
        decide them from their cache, or queue them and decide after the forward on inputs of that shape
        (``ConvChooser.decide_deferred``), so the model itself never runs (a paper-scale SD UNet forward is
        10-20 s of a 2-core CPU's time; its meta forward well under a second). A model that cannot run on
        meta (a module holding a tensor the forward uses outside its parameters and buffers, a kernel
        without a meta implementation) gets the real forward instead, in which the choosers decide inline.
        """
        dtype = model_dtype(self.model)

        def cast(x):
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        args = [cast(x) for x in self.config.example_inputs]
        kwargs = {k: cast(v) for k, v in dict(self.config.example_kwargs).items()}
        if self.device.type != "meta" and forward_on_meta(self.model, args, kwargs):
            return
        with torch.inference_mode():
            self.model(*args, **kwargs)


class Pass:
    """One optimization. Subclasses set ``name``, ``title`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # row label in the ablation
    # finishes after a forward it shares with the passes around it (PassContext.after_example): only the
    # modules it swapped decide in that forward, and no other sharing pass reads them
    shares_example: ClassVar[bool] = False

    def run(self, ctx: PassContext) -> None:
        raise NotImplementedError


def get_pass(name: str) -> Pass:
    if name not in PASS_MODULES:
        raise choice_error("pass", name, PASS_NAMES)
    module_name, class_name = PASS_MODULES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def apply(model: nn.Module, config: PassConfig, filter_fn: FilterFn | None = None) -> SwapLog:
    """Apply ``config.passes`` to ``model`` in order; return the log of every swap.

    ``filter_fn(path, module) -> bool`` restricts the modules a pass may swap. Raises ``UserError`` for an
    unknown pass or backend, for ``backend="triton"`` without a GPU and the package, and
    :class:`~genscope.passes.oracle.PassRefused` for a pass / precision combination that fails its oracle.
    """
    config.validate()
    device = model_device(model)
    backend = resolve_backend(config.backend, device)
    log = SwapLog()

    def finish_pending(ctx: PassContext) -> None:
        if log.pending:
            ctx.run_example()  # one forward: every waiting pass's choosers decide their shapes
            pending, log.pending = log.pending, []
            for finish in pending:
                finish()

    try:
        ctx = None
        for name in config.passes:
            ctx = PassContext(model, config, filter_fn, name, log, backend)
            the_pass = get_pass(name)
            if not the_pass.shares_example:
                finish_pending(ctx)
            before = len(log)
            the_pass.run(ctx)
            if len(log) == before and not any(n.startswith(f"{name}:") for n in log.notes):
                ctx.note("nothing to swap in this model; nothing changed")
        if ctx is not None:
            finish_pending(ctx)
    except BaseException:
        log.undo()  # a refused pass leaves the model as it was
        raise
    return log
