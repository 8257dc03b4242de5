"""FLOPs, MACs, softmax FLOPs and bytes moved of a whole workload run, per phase, module and operator class.

Built on ``torch.utils.flop_counter``: :class:`FlopCounter` is a :class:`~torch.utils.flop_counter.FlopCounterMode`
(its formula registry, its dispatch mode, its module tracker and its ``Global``/per-module counts are
torch's) that additionally files every counted ATen op under

* the **phase** it ran in (``genscope.workloads.phases.current_phase()``: ``text_encoder``, ``denoise`` step i,
  ``decoder``, ``prefill``, ``decode`` token i, ...; ops outside any phase go to ``(outside phases)``),
* its innermost **module path** (``denoiser.down_blocks.0.attentions.0.transformer_blocks.0.attn1``; the
  component names of the pipeline are the roots, any depth can be aggregated afterwards),
* its **operator class** (:func:`genscope.instrument.opclasses.op_class`), with the rule of the profiler: an op
  inside an attention entry-point call is ``Attention`` whatever its own class (so the baseline backend's
  ``baddbmm``/``softmax``/``bmm`` and the flash backend's fused kernel land in the same class).

What torch's counter lacks and is added here:

* formulas for the fused attention ops it misses: ``aten.scaled_dot_product_attention`` (the op seen under
  ``inference_mode``, where every pipeline runs) and ``aten._scaled_dot_product_flash_attention_for_cpu`` (the
  CPU kernel, counted 0 by torch 2.13) - registered with ``register_flop_formula``;
* **softmax FLOPs**, reported separately from ``flops`` (DESIGN: attention FLOPs are the two matmuls,
  4*B*H*Lq*Lk*d; softmax apart): :data:`SOFTMAX_FLOPS_PER_ELEMENT` (=5: max, subtract, exp, sum, divide) per
  element of the similarity matrix, whether the matrix is materialized (``_softmax``) or not (fused op);
* **bytes moved**, the traffic model of the roofline: every executed ATen op reads all its tensor inputs and
  writes all its tensor outputs from/to memory (no reuse between ops, no fusion beyond what the op itself
  fuses); views and allocations move nothing; ``copy_`` reads its source and writes its destination. Weights
  are counted every time an op reads them. This is the traffic of eager, unfused execution (an upper bound
  of DRAM traffic when caches are ignored);
* **meta-device runs** of whole pipelines: values read back from meta tensors (``.cpu()``, ``.item()``) are
  zeros (a meta tensor has no values; counts depend on shapes only; the number of such reads is reported),
  and repeated calls of a pipeline component with the same input shapes are **memoized** (see
  :class:`FlopCounter`), which makes a 50-step paper-scale diffusion count take seconds. Below components,
  each distinct op (and each decomposed composite op) on meta tensors runs once: later identical calls reuse
  its output metadata and counts (see :class:`_GenscopeFlopMode`) - torch's meta kernels are Python and cost
  about 0.2 ms per op, a cache hit about 17 us.

FLOPs = 2 x MACs for every op torch counts (matmuls and convolutions); ``macs`` is ``flops // 2``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode, flop_registry, register_flop_formula

from genscope.instrument.opclasses import op_class
from genscope.instrument.patching import wrap_forward
from genscope.models.layers.attention import register_wrapper
from genscope.workloads.phases import current_phase

aten = torch.ops.aten

NO_PHASE = "(outside phases)"  # the same label the profiler uses
NO_MODULE = "(no module)"
# softmax over a row of n elements: max-reduce, subtract, exp, sum-reduce, divide = 5 FLOPs per element
SOFTMAX_FLOPS_PER_ELEMENT = 5
ATTENTION_NOTE = ("Attention = ops inside attention entry-point calls (QK^T and @V: 4*B*H*Lq*Lk*d FLOPs whatever "
                  "the mask; softmax counted apart in softmax_flops); Q/K/V/output projections count as Linear.")
BYTES_NOTE = ("bytes = every executed ATen op reads its tensor inputs and writes its outputs (views and "
              "allocations move nothing; weights counted at every read): eager, unfused traffic.")


# ----------------------------------------------------------------------------------------------------
# Formulas torch's counter lacks
# ----------------------------------------------------------------------------------------------------
def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of the two attention matmuls: q [..., H, Lq, d], k [..., Hkv, Lk, d], v [..., Hkv, Lk, dv].

    QK^T: 2*B*H*Lq*Lk*d, PV: 2*B*H*Lq*Lk*dv (= 4*B*H*Lq*Lk*d when dv = d). Leading dims are the batch;
    grouped-query attention (Hkv < H) costs what H heads cost. Masks and causality are ignored: the dense
    computation (what the baseline backend does and what torch's own SDPA formula counts).
    """
    *lead, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    bh = math.prod(lead) if lead else 1
    return 2 * bh * lq * lk * d + 2 * bh * lq * lk * dv


def attention_softmax_elements(query_shape, key_shape) -> int:
    """Elements of the similarity matrix B*H*Lq*Lk."""
    *lead, lq, _ = query_shape
    return (math.prod(lead) if lead else 1) * lq * key_shape[-2]


_FUSED_ATTENTION_OPS = [aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu]
# fused attention ops (torch's own and ours): their similarity matrix is never materialized, but softmaxed
_SOFTMAX_IN_FUSED = {
    aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention, aten._flash_attention_forward, aten._efficient_attention_forward,
}
_SOFTMAX_OPS = {aten._softmax, aten._safe_softmax, aten._log_softmax, aten.softmax, aten.log_softmax}


def _fused_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def register_attention_formulas() -> None:
    """Register :func:`attention_flops` for the fused attention ops torch's registry misses (idempotent)."""
    missing = [op for op in _FUSED_ATTENTION_OPS if op not in flop_registry]
    if missing:
        register_flop_formula(missing)(_fused_attention_flop)


register_attention_formulas()


# ----------------------------------------------------------------------------------------------------
# Bytes moved and softmax FLOPs of one op
# ----------------------------------------------------------------------------------------------------
_NO_TRAFFIC = {aten._unsafe_view, aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty,
               aten.new_empty_strided, aten.set_, aten.resize_, aten.lift_fresh, aten.detach, aten.alias}
_WRITE_ONLY_FIRST = {aten.copy_, aten.fill_, aten.zero_, aten.normal_, aten.uniform_, aten.random_,
                     aten.exponential_, aten.bernoulli_}
_VIEW_CACHE: dict[Any, bool] = {}


def _is_view(packet) -> bool:
    if packet not in _VIEW_CACHE:
        try:
            overloads = packet.overloads()
            _VIEW_CACHE[packet] = bool(overloads) and all(getattr(packet, o).is_view for o in overloads)
        except (AttributeError, RuntimeError):
            _VIEW_CACHE[packet] = False
    return _VIEW_CACHE[packet]


def op_bytes(packet, args, kwargs, out) -> int:
    """Bytes one op moves under the eager traffic model (see the module docstring)."""
    if packet in _NO_TRAFFIC or _is_view(packet):
        return 0
    inputs = _tensors(args)
    if kwargs:
        inputs += _tensors(tuple(kwargs.values()))
    if packet in _WRITE_ONLY_FIRST and inputs:
        inputs = inputs[1:]  # the destination is written, not read
    outputs = [out] if isinstance(out, torch.Tensor) else _tensors(out) if isinstance(out, (tuple, list)) else []
    return sum(t.numel() * t.element_size() for t in inputs) + sum(t.numel() * t.element_size() for t in outputs)


def _tensors(values: tuple | list) -> list[torch.Tensor]:
    """Tensors among an op's arguments (ATen arguments nest at most one level: Tensor[] lists)."""
    found = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            found.extend(t for t in v if isinstance(t, torch.Tensor))
    return found


def op_softmax_flops(packet, args) -> int:
    if packet in _SOFTMAX_IN_FUSED and len(args) >= 2 and isinstance(args[0], torch.Tensor):
        return SOFTMAX_FLOPS_PER_ELEMENT * attention_softmax_elements(args[0].shape, args[1].shape)
    if packet in _SOFTMAX_OPS and args and isinstance(args[0], torch.Tensor):
        return SOFTMAX_FLOPS_PER_ELEMENT * args[0].numel()
    return 0


def op_name(packet) -> str:
    """``aten.convolution`` -> ``aten::convolution`` (the profiler's spelling, what ``op_class`` takes)."""
    name = str(packet)
    return name.replace(".", "::", 1) if name.startswith("aten.") else name


# ----------------------------------------------------------------------------------------------------
# The counter
# ----------------------------------------------------------------------------------------------------
# calls that must fit the affine model exactly before later calls are predicted: two determine it, every
# further one verifies it (a second difference that is not zero - quadratic growth - shows within three)
SERIES_WINDOW = 3


class SeriesBroken(RuntimeError):
    """A predicted series of calls left its affine model: the count must be redone without prediction."""


@dataclass(frozen=True)
class _TensorDesc:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorDesc(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)
    return value


@dataclass
class _Memo:
    """One memoized component call: the counts its body produced and the shapes of its outputs."""

    rows: dict[tuple, list[int]]  # (packet, leaf path, in attention, inner parents) -> [flops, softmax, bytes, n]
    out_spec: Any
    out_leaves: list[Any]  # tensors as _TensorDesc; other leaves as they were
    totals: tuple[int, int, int] = (0, 0, 0)  # flops, softmax_flops, bytes summed over rows

    def __post_init__(self) -> None:
        self.totals = tuple(sum(v[i] for v in self.rows.values()) for i in range(3))


@dataclass
class _Capture:
    outer_parents: frozenset[str]
    rows: dict[tuple, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))


@dataclass(frozen=True)
class _Signature:
    exact: tuple | None  # every argument a meta tensor (shape, stride, dtype), a CPU scalar or a plain value
    loose: tuple  # the same without tensor shapes, objects (caches) by identity: the key of a series
    shapes: tuple  # the tensor arguments' shapes, in order


def _call_signature(module: nn.Module, args, kwargs) -> _Signature | None:
    """Keys of a component call on meta tensors (``None`` when any argument is a real tensor).

    CPU scalar tensors (timesteps) are keyed by dtype only: their values are assumed not to change the
    computation's shapes (true of every denoiser in the suite).
    """
    leaves, spec = tree_flatten((args, kwargs))
    exact: list[Any] = [id(module), spec]
    loose: list[Any] = [id(module), spec]
    shapes: list[tuple] = []
    has_object = any_tensor = False
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type != "meta":
                if leaf.dim() == 0 and leaf.device.type == "cpu":
                    exact.append(("cpu-scalar", leaf.dtype))
                    loose.append(("cpu-scalar", leaf.dtype))
                    continue
                return None
            any_tensor = True
            exact.append((tuple(leaf.shape), leaf.stride(), leaf.dtype))
            loose.append(("tensor", leaf.dim(), leaf.dtype))
            shapes.append(tuple(leaf.shape))
        elif leaf is None or isinstance(leaf, (bool, int, float, str, torch.dtype, torch.device)):
            exact.append(leaf)
            loose.append(leaf)
        else:  # a cache, a generator: an object the call may change - never an exact memo, maybe a series
            has_object = True
            loose.append(("object", id(leaf)))
    if not any_tensor:
        return None
    return _Signature(None if has_object else tuple(exact), tuple(loose), tuple(shapes))


def _affine(values: list) -> tuple | None:
    """(a, b) with values[j] == a + b*j for every j (ints or tuples of ints), else None."""
    a, b = values[0], _sub(values[1], values[0])
    for j, v in enumerate(values):
        if _add_scaled(a, b, j) != v:
            return None
    return a, b


def _sub(x, y):
    if isinstance(x, tuple):
        if not isinstance(y, tuple) or len(x) != len(y):
            return None
        return tuple(_sub(p, q) for p, q in zip(x, y, strict=True))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return x - y
    return 0 if x == y else None


def _add_scaled(a, b, j):
    if b is None:
        return None
    if isinstance(a, tuple):
        return tuple(_add_scaled(p, q, j) for p, q in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return a + b * j
    return a


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


@dataclass
class _Series:
    """Calls of one component with the same argument structure and cache objects (an autoregressive loop).

    The last :data:`SERIES_WINDOW` real calls are kept; when their per-op counts, input shapes and output
    shapes are all exactly affine in the call index (attention over a KV cache growing by one token per
    step), later calls are predicted from that model instead of run (their input shapes are checked
    against it on every call).
    """

    window: list[tuple] = field(default_factory=list)  # (rows, shapes, out_leaves)
    out_spec: Any = None
    predicting: bool = False
    next_index: int = 0
    _rows: tuple | None = None  # (keys, a, b)
    _shapes: tuple | None = None
    _out: list | None = None
    total_a: tuple = (0, 0, 0)
    total_b: tuple = (0, 0, 0)

    def observe(self, rows: dict, shapes: tuple, out_spec, out_leaves: list) -> None:
        if self.out_spec is not None and out_spec != self.out_spec:
            self.window.clear()
        self.out_spec = out_spec
        self.window.append((rows, shapes, out_leaves))
        if len(self.window) > SERIES_WINDOW:
            self.window.pop(0)
        if len(self.window) == SERIES_WINDOW:
            self._fit()

    def _fit(self) -> None:
        keys = set(self.window[0][0])
        if any(set(w[0]) != keys for w in self.window):
            return
        ordered = list(self.window[0][0])
        rows = _affine([tuple(tuple(w[0][k]) for k in ordered) for w in self.window])
        shapes = _affine([w[1] for w in self.window])
        outs = []
        for i in range(len(self.window[0][2])):
            column = [w[2][i] for w in self.window]
            if isinstance(column[0], _TensorDesc):
                if any(not isinstance(c, _TensorDesc) or c.dtype != column[0].dtype for c in column):
                    return
                fit = _affine([c.shape for c in column])
                if fit is None:
                    return
                outs.append(("tensor", fit, column[0].dtype, column[0].device))
            else:
                if any(c is not column[0] and c != column[0] for c in column):
                    return
                outs.append(("value", column[0]))
        if rows is None or shapes is None:
            return
        self._rows, self._shapes, self._out = (ordered, *rows), shapes, outs
        # (flops, softmax_flops, bytes) of call 0 summed over ops, and their growth per call
        self.total_a = tuple(sum(v[i] for v in rows[0]) for i in range(3))
        self.total_b = tuple(sum(v[i] for v in rows[1]) for i in range(3))
        self.predicting = True
        self.next_index = len(self.window)

    def outputs_at(self, j: int) -> list:
        leaves = []
        for out in self._out:
            if out[0] == "tensor":
                shape = _add_scaled(*out[1], j)
                leaves.append(_TensorDesc(shape, _contiguous_strides(shape), out[2], out[3]))
            else:
                leaves.append(out[1])
        return leaves

    def shapes_at(self, j: int) -> tuple:
        a, b = self._shapes
        return _add_scaled(a, b, j)

    def at(self, j: int) -> tuple[dict, list]:
        keys, a, b = self._rows
        values = _add_scaled(a, b, j)
        return {k: list(v) for k, v in zip(keys, values, strict=True)}, self.outputs_at(j)


class FlopCounter(FlopCounterMode):
    """``with FlopCounter(pipeline.components) as c: pipeline(request)``; then ``c.table()``.

    ``components``: ``Component`` objects (or ``{name: module}``) whose names become the roots of the module
    paths. ``memoize``: on meta tensors, a component called again with the same input shapes, dtypes and
    non-tensor arguments replays the counts (and output shapes) of the earlier call instead of re-running -
    exact, since a meta computation's counts depend on its inputs' shapes and the module's state only. The
    state is checked: a component whose first call changes any attribute of any of its submodules (a KV
    cache it keeps itself, a step counter; see :func:`state_fingerprint`) is never replayed. Calls taking
    any argument that is not a tensor or a plain value (a cache object, a generator) are not memoized but may
    be **predicted** (``predict``): successive calls passing the same cache object (an autoregressive decode
    loop) whose per-op counts, input shapes and output shapes are exactly affine in the call index over
    :data:`SERIES_WINDOW` real calls (attention over a KV cache that grows by one token per step) are
    predicted from that model afterwards - exact for such loops, each later call's input shapes are checked
    against the model (:class:`SeriesBroken` if they leave it), and a predicted call does not update the
    cache object (nothing reads it on the meta device but its own later calls, which are predicted too).
    Real-tensor runs never memoize or predict.
    """

    def __init__(self, components: Any = (), memoize: bool = True, predict: bool = True, meta_cache: bool = True):
        super().__init__(display=False, depth=None)
        self.components: dict[str, nn.Module] = {}
        if isinstance(components, dict):
            self.components = dict(components)
        else:
            for c in components:
                self.components[c.name] = c.module
        for name, module in self.components.items():
            # every submodule named from its component (a VAE's ``decoder`` is called without its root)
            for sub_name, sub in module.named_modules():
                self.mod_tracker._known_modules[sub] = f"{name}.{sub_name}" if sub_name else name
        self.memoize = memoize
        self.meta_cache = meta_cache  # see _GenscopeFlopMode
        self.predict = predict
        # (phase, leaf module, packet, in attention) -> [flops, softmax_flops, bytes, calls]
        self.rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.steps: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])  # (phase, step) -> flops, softmax, bytes
        self.meta_value_reads = 0
        self.memo_replays = 0
        self.memo_runs = 0
        self.predicted_calls = 0
        self._series: dict[tuple, _Series] = {}
        self._deferred: dict[tuple, list] = {}  # predicted calls not yet expanded into rows
        self._attention_depth = 0
        self._quiet = False
        self._captures: list[_Capture] = []
        self._memos: dict[tuple, _Memo] = {}
        self._patched: list[tuple[nn.Module, Callable[[], None]]] = []  # (component, undo its wrapper)
        self._wrapper_handle = None
        self._leaf_cache: dict[frozenset, str] = {}
        self._submodules: dict[int, list] = {}  # id(component module) -> its named_modules()
        self._op_costs: dict[tuple, tuple[int, int, int]] = {}  # meta key -> flops, softmax_flops, bytes
        self._recordings: list[list] = []  # open recordings of composite ops (see _GenscopeFlopMode)
        self._deferred_replays: dict[tuple, list] = {}  # (memo id, phase, outer parents) -> [memo, calls]

    # -- context -----------------------------------------------------------------------------------------
    def __enter__(self):
        # FlopCounterMode.__enter__, with genscope's dispatch mode (meta reads) in place of torch's
        self.flop_counts.clear()
        self.mod_tracker.__enter__()
        self.mode = _GenscopeFlopMode(self)
        self.mode.__enter__()
        self._wrapper_handle = register_wrapper(self._attention_wrapper)
        if self.memoize:
            for module in self.components.values():
                self._patch(module)
        return self

    def __exit__(self, *args):
        self._flush_deferred()
        for _, undo in reversed(self._patched):
            undo()
        self._patched.clear()
        if self._wrapper_handle is not None:
            self._wrapper_handle.remove()
        return super().__exit__(*args)

    def _attention_wrapper(self, call):
        counter = self

        class _Inside:
            def __enter__(self):
                counter._attention_depth += 1

            def __exit__(self, *exc):
                counter._attention_depth -= 1

        return _Inside()

    # -- counting ----------------------------------------------------------------------------------------
    def _leaf(self, parents: frozenset) -> str:
        leaf = self._leaf_cache.get(parents)
        if leaf is None:
            named = [p for p in parents if p != "Global"]
            leaf = max(named, key=lambda p: (p.count("."), len(p))) if named else NO_MODULE
            self._leaf_cache[parents] = leaf
        return leaf

    def _count_flops(self, func_packet, out, args, kwargs, key: tuple | None = None):
        """Count one executed op (torch's mode calls this); ``key``: the op's meta key, under which its
        (flops, softmax FLOPs, bytes) - a function of its arguments' metadata only - are cached."""
        if self._quiet:  # the counter's own allocations (replayed outputs)
            return out
        costs = self._op_costs.get(key) if key is not None else None
        if costs is None:
            flops = 0
            if func_packet in self.flop_registry:
                flops = int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            costs = (flops, op_softmax_flops(func_packet, args), op_bytes(func_packet, args, kwargs, out))
            if key is not None:
                self._op_costs[key] = costs
        self._record(func_packet, *costs)
        return out

    def _record(self, packet, flops: int, softmax: int, nbytes: int) -> None:
        """File one op's counts under the current phase, module path, attention flag and open captures."""
        parents = frozenset(self.mod_tracker.parents)
        if flops:
            for par in parents:
                self.flop_counts[par][packet] += flops
        leaf = self._leaf(parents)
        in_attention = self._attention_depth > 0
        self._add(packet, leaf, in_attention, flops, softmax, nbytes, 1)
        for cap in self._captures:
            row = cap.rows[(packet, leaf, in_attention, parents - cap.outer_parents)]
            row[0] += flops
            row[1] += softmax
            row[2] += nbytes
            row[3] += 1
        for recording in self._recordings:
            recording.append((packet, flops, softmax, nbytes))

    def _add(self, packet, leaf: str, in_attention: bool, flops: int, softmax: int, nbytes: int, calls: int) -> None:
        info = current_phase()
        name = info.name if info is not None else NO_PHASE
        step = info.step if info is not None else None
        row = self.rows[(name, leaf, packet, in_attention)]
        row[0] += flops
        row[1] += softmax
        row[2] += nbytes
        row[3] += calls
        srow = self.steps[(name, -1 if step is None else step)]
        srow[0] += flops
        srow[1] += softmax
        srow[2] += nbytes

    # -- memoization and series prediction (meta only) ---------------------------------------------------
    def _patch(self, module: nn.Module) -> None:
        counter = self

        def make(original):
            def forward(*args, **kwargs):
                return counter._memo_call(module, original, args, kwargs)
            return forward

        self._patched.append((module, wrap_forward(module, make)))

    def _unpatch(self, module: nn.Module) -> None:
        for i, (m, undo) in enumerate(self._patched):
            if m is module:
                undo()
                del self._patched[i]
                return

    def _memo_call(self, module: nn.Module, original: Callable, args, kwargs):
        sig = _call_signature(module, args, kwargs)
        if sig is None:  # real tensors, or nothing to key on
            return original(*args, **kwargs)
        if sig.exact is not None:
            memo = self._memos.get(sig.exact)
            if memo is not None:
                if self._captures:
                    return self._replay(memo.rows, memo.out_spec, memo.out_leaves)
                return self._replay_deferred(memo)
        else:
            series = self._series.get(sig.loose)
            if series is not None and series.predicting and self.predict:
                return self._predict(series, sig)
        cap = _Capture(outer_parents=frozenset(self.mod_tracker.parents))
        submodules = self._submodules.get(id(module))
        if submodules is None:
            submodules = self._submodules[id(module)] = list(module.named_modules())
        before = state_fingerprint(module, submodules)
        self._captures.append(cap)
        try:
            out = original(*args, **kwargs)
        finally:
            self._captures.remove(cap)
        self.memo_runs += 1
        out_leaves, out_spec = tree_flatten(out)
        if state_fingerprint(module, submodules) != before or any(
                isinstance(t, torch.Tensor) and t.device.type != "meta" for t in out_leaves):
            # the call changed the module's own state (a cache it keeps, a counter): its counts may depend on
            # more than its inputs - never replay or predict this component
            self._unpatch(module)
            return out
        rows = {k: list(v) for k, v in cap.rows.items()}
        described = [_describe(t) for t in out_leaves]
        if sig.exact is not None:
            self._memos[sig.exact] = _Memo(rows, out_spec, described)
        elif self.predict:
            self._series.setdefault(sig.loose, _Series()).observe(rows, sig.shapes, out_spec, described)
        return out

    def _predict(self, series: _Series, sig: _Signature):
        """A call of a verified series: its counts and output shapes follow the series' affine model.

        The per-op rows of predicted calls are accumulated per (series, phase, enclosing modules) as a call
        count and a sum of call indices, and expanded once when the counter exits (a call costs O(1), not
        O(ops)); per-step totals are added at once.
        """
        j = series.next_index
        if sig.shapes != series.shapes_at(j):
            raise SeriesBroken(f"call {j} of a predicted series had input shapes {sig.shapes}, expected "
                               f"{series.shapes_at(j)}")
        series.next_index += 1
        self.predicted_calls += 1
        if self._captures:  # inside a memoized call: replay row by row so that the capture sees them
            rows, out_leaves = series.at(j)
            return self._replay(rows, series.out_spec, out_leaves, count_as_replay=False)
        name = self._add_step_totals([a + b * j for a, b in zip(series.total_a, series.total_b, strict=True)])
        acc = self._deferred.setdefault((id(series), name, frozenset(self.mod_tracker.parents)), [series, 0, 0])
        acc[1] += 1
        acc[2] += j
        return self._outputs(series.out_spec, series.outputs_at(j))

    def _add_step_totals(self, totals) -> str:
        """Add (flops, softmax_flops, bytes) to the current phase entry's totals; returns the phase name."""
        info = current_phase()
        name = info.name if info is not None else NO_PHASE
        srow = self.steps[(name, -1 if info is None or info.step is None else info.step)]
        for i, total in enumerate(totals):
            srow[i] += total
        return name

    def _replay_deferred(self, memo: _Memo):
        """A replay outside any capture: the per-step totals are added now, the memo's rows (hundreds of ops)
        once per (memo, phase, enclosing modules) when the counter exits, times the number of replays."""
        self.memo_replays += 1
        name = self._add_step_totals(memo.totals)
        acc = self._deferred_replays.setdefault((id(memo), name, frozenset(self.mod_tracker.parents)), [memo, 0])
        acc[1] += 1
        return self._outputs(memo.out_spec, memo.out_leaves)

    def _flush_deferred(self) -> None:
        """Expand the accumulated replays (n replays add n x each row) and predicted calls (n calls with
        index sum S add n*a + S*b per row)."""
        for (_, name, outer), (memo, n) in self._deferred_replays.items():
            for key, values in memo.rows.items():
                self._file_row(name, outer, key, [n * v for v in values])
        for (_, name, outer), (series, n, index_sum) in self._deferred.items():
            keys, a, b = series._rows
            for key, va, vb in zip(keys, a, b, strict=True):
                self._file_row(name, outer, key, [n * x + index_sum * y for x, y in zip(va, vb, strict=True)])
        self._deferred_replays.clear()
        self._deferred.clear()

    def _file_row(self, name: str, outer: frozenset, key: tuple, values: list[int]) -> None:
        """Add a deferred row - ``key`` (packet, leaf, in attention, inner parents), ``values`` (flops, softmax,
        bytes, calls) - under phase ``name`` with enclosing modules ``outer``."""
        packet, leaf, in_attention, inner = key
        if values[0]:
            for par in inner | outer:
                self.flop_counts[par][packet] += values[0]
        row = self.rows[(name, leaf, packet, in_attention)]
        for i, v in enumerate(values):
            row[i] += v

    def _replay(self, rows: dict, out_spec, out_leaves: list, count_as_replay: bool = True):
        if count_as_replay:
            self.memo_replays += 1
        outer = frozenset(self.mod_tracker.parents)
        for (packet, leaf, in_attention, inner), (flops, softmax, nbytes, calls) in rows.items():
            if flops:
                for par in inner | outer:
                    self.flop_counts[par][packet] += flops
            self._add(packet, leaf, in_attention, flops, softmax, nbytes, calls)
            for cap in self._captures:
                row = cap.rows[(packet, leaf, in_attention, (inner | outer) - cap.outer_parents)]
                row[0] += flops
                row[1] += softmax
                row[2] += nbytes
                row[3] += calls
        return self._outputs(out_spec, out_leaves)

    def _outputs(self, out_spec, out_leaves: list):
        """Fresh meta tensors of the recorded shapes (not counted: the counter's own allocations)."""
        self._quiet = True
        try:
            return _fresh(out_spec, out_leaves)
        finally:
            self._quiet = False

    # -- results -----------------------------------------------------------------------------------------
    @property
    def total_flops(self) -> int:
        return self.get_total_flops()

    def table(self) -> pd.DataFrame:
        """One row per (phase, module, op, in_attention): ``phase, module, op, op_class, flops, macs,
        softmax_flops, bytes, calls``."""
        records = []
        for (ph, leaf, packet, in_attention), (flops, softmax, nbytes, calls) in self.rows.items():
            name = op_name(packet)
            if name.startswith("profiler."):  # record_function ranges: bookkeeping, not computation
                continue
            records.append({"phase": ph, "module": leaf, "op": name,
                            "op_class": "Attention" if in_attention else op_class(name),
                            "flops": flops, "macs": flops // 2, "softmax_flops": softmax, "bytes": nbytes,
                            "calls": calls})
        columns = ["phase", "module", "op", "op_class", "flops", "macs", "softmax_flops", "bytes", "calls"]
        df = pd.DataFrame(records, columns=columns)
        for c in ("flops", "macs", "softmax_flops", "bytes", "calls"):
            df[c] = df[c].astype("int64")
        return df

    def step_table(self) -> pd.DataFrame:
        """``phase, step, flops, macs, softmax_flops, bytes`` per phase entry (step -1: a phase without steps)."""
        records = [{"phase": ph, "step": step, "flops": f, "macs": f // 2, "softmax_flops": s, "bytes": b}
                   for (ph, step), (f, s, b) in self.steps.items()]
        df = pd.DataFrame(records, columns=["phase", "step", "flops", "macs", "softmax_flops", "bytes"])
        return df.astype({"step": "int64", "flops": "int64", "macs": "int64", "softmax_flops": "int64",
                          "bytes": "int64"})


_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "forward",
                               "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                               "_state_dict_hooks", "_load_state_dict_pre_hooks", "_forward_hooks_with_kwargs",
                               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"})


_HASHABLE_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.memory_format,
                     torch.layout)
_PLAIN_VALUE_TYPES = frozenset(_HASHABLE_SCALARS)  # exact types: the fast path of _value_fingerprint


def _value_fingerprint(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN_VALUE_TYPES:
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple, dict, set)):
        return (kind.__name__, id(value), len(value))
    if isinstance(value, _HASHABLE_SCALARS):  # subclasses (enums)
        return value
    return (kind.__name__, id(value))


def state_fingerprint(module: nn.Module, submodules: list[tuple[str, nn.Module]] | None = None) -> tuple:
    """What a forward call could change in a module tree: every attribute of every submodule (tensors by
    identity and shape, containers by identity and length, plain values by value), buffers included.
    ``submodules``: ``list(module.named_modules())``, when the caller keeps it."""
    items = []
    for path, sub in submodules if submodules is not None else module.named_modules():
        for name, value in vars(sub).items():
            if name not in _MODULE_INTERNALS:
                items.append((path, name, _value_fingerprint(value)))
        for name, buf in sub._buffers.items():
            items.append((path, name, _value_fingerprint(buf)))
    return tuple(items)


_OP_KIND: dict[Any, str] = {}
_POINTWISE: dict[Any, bool] = {}
META_CACHE_LIMIT = 200_000
LEAF, COMPOSITE, PLAIN, DECOMPOSE = "leaf", "composite", "plain", "decompose"


def _op_kind(func) -> str:
    """How the counting mode treats an op overload.

    ``LEAF``: functional (no mutation, no aliasing outputs), not random, with a kernel of its own - run once
    per distinct metadata, its outputs re-created afterwards. ``COMPOSITE``: the same, but an op torch's mode
    decomposes (a CompositeImplicitAutograd kernel: ``linear``, ``group_norm``, ``conv2d``, ``quantile``) and
    counts through its parts - decomposed once per distinct metadata, the parts' counts recorded and re-filed
    afterwards. ``PLAIN``: any other op with no decomposition (views, in-place ops, random ops) - run and
    counted, as torch's mode would after finding nothing to decompose. ``DECOMPOSE``: any other decomposable
    op - left to torch's mode.
    """
    kind = _OP_KIND.get(func)
    if kind is None:
        schema = func._schema
        functional = (not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
                      and torch.Tag.nondeterministic_seeded not in func.tags)
        decomposable = func._can_decompose()
        kind = (COMPOSITE if decomposable else LEAF) if functional else (DECOMPOSE if decomposable else PLAIN)
        _OP_KIND[func] = kind
    return kind


class _NotMetaKeyable(Exception):
    pass


def _meta_value_key(value: Any, found: list) -> Any:
    """Hashable description of one op argument (``found[0]``: a meta tensor was seen; ``found[1]``: real
    0-dim tensors may be keyed by dtype); raises :class:`_NotMetaKeyable` for any other real tensor or an
    unhashable value."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            found[0] = True
            return (tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
        if found[1] and value.dim() == 0:  # a real scalar (a scheduler's alpha): its dtype counts, not its value
            return ("scalar", value.dtype, value.device.type)
        raise _NotMetaKeyable
    if isinstance(value, (list, tuple)):
        return tuple(_meta_value_key(v, found) for v in value)
    if isinstance(value, _HASHABLE_SCALARS):
        return value
    raise _NotMetaKeyable


def _meta_key(func, args, kwargs) -> tuple | None:
    """Everything a meta op's output depends on: tensor metadata and the other arguments; None without a meta
    tensor among the arguments (a real computation: its values matter), with a real tensor (but a 0-dim one
    in a pointwise op), or with an unhashable argument. The value of a real 0-dim tensor in a pointwise op
    with meta tensors decides nothing of the output but its dtype (type promotion), which its dtype decides."""
    pointwise = _POINTWISE.get(func)
    if pointwise is None:
        pointwise = _POINTWISE[func] = torch.Tag.pointwise in func.tags
    found = [False, pointwise]
    try:
        key = (func, _meta_value_key(args, found), tuple((k, _meta_value_key(v, found)) for k, v in kwargs.items()))
    except _NotMetaKeyable:
        return None
    return key if found[0] else None


def _fresh(out_spec, described: list):
    """Meta tensors of recorded metadata (``_TensorDesc``), other leaves as recorded, in ``out_spec``'s structure."""
    leaves = [torch.empty_strided(d.shape, d.stride, dtype=d.dtype, device=d.device)
              if isinstance(d, _TensorDesc) else d for d in described]
    return tree_unflatten(leaves, out_spec)


def _all_fresh_meta(leaves: list) -> bool:
    return all(isinstance(t, torch.Tensor) and t.device.type == "meta" and t.storage_offset() == 0 for t in leaves)


class _GenscopeFlopMode(_FlopCounterMode):
    """torch's counting dispatch mode, plus:

    * values read back from meta tensors are zeros (see the module docstring);
    * ``aten.scaled_dot_product_attention`` is one op on every device (torch's mode would decompose it);
    * a **meta op cache**: the output metadata of a functional ATen op on meta tensors depends on nothing but
      its inputs' metadata and its other arguments, so each distinct call is run once (torch's Python meta
      kernels cost up to a millisecond) and later identical calls get fresh tensors of the recorded shapes
      and strides - the counts are unaffected (they are computed from the same shapes as before);
    * a **composite cache**: likewise for the functional CompositeImplicitAutograd ops torch's mode decomposes
      (``linear`` -> ``t`` + ``addmm``): each distinct call is decomposed once while the counts of its parts
      are recorded, and later identical calls re-file those counts (same ops, same numbers, same phase and
      module as a decomposition would give) and get fresh outputs - decomposing through Python costs about
      half a millisecond per call.
    """

    def __init__(self, counter) -> None:
        super().__init__(counter)
        self.meta_cache: dict[tuple, tuple] = {}  # meta key -> (out spec, out leaves described)
        self.composite_cache: dict[tuple, tuple] = {}  # meta key -> (out spec, out leaves, [(packet, counts)])

    def _remember(self, cache: dict, key: tuple, value: tuple) -> None:
        if len(cache) >= META_CACHE_LIMIT:
            cache.clear()
        cache[key] = value

    def _cached(self, func, args, kwargs):
        """(output, meta key or None): a leaf op run once per distinct metadata."""
        key = _meta_key(func, args, kwargs) if self.counter.meta_cache else None
        if key is None:
            return func(*args, **kwargs), None
        hit = self.meta_cache.get(key)
        if hit is not None:
            return _fresh(*hit), key
        out = func(*args, **kwargs)
        leaves, spec = tree_flatten(out)
        if _all_fresh_meta(leaves):
            self._remember(self.meta_cache, key, (spec, [_describe(t) for t in leaves]))
        return out, key

    def _composite(self, func, types, args, kwargs):
        """A functional composite op: its recorded parts re-filed, or decomposed (and recorded) by torch's mode."""
        counter = self.counter
        key = _meta_key(func, args, kwargs) if counter.meta_cache and not counter._quiet else None
        if key is None:
            return super().__torch_dispatch__(func, types, args, kwargs)
        hit = self.composite_cache.get(key)
        if hit is not None:
            for packet, flops, softmax, nbytes in hit[2]:
                counter._record(packet, flops, softmax, nbytes)
            return _fresh(hit[0], hit[1])
        recording: list = []
        reads = counter.meta_value_reads
        counter._recordings.append(recording)
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            counter._recordings.remove(recording)
        leaves, spec = tree_flatten(out)
        # a decomposition that read meta values (zeros) may branch on them: never cached
        if counter.meta_value_reads == reads and _all_fresh_meta(leaves):
            self._remember(self.composite_cache, key, (spec, [_describe(t) for t in leaves], recording))
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._to_copy.default and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "meta":
                self.counter.meta_value_reads += 1
                src = args[0]
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype, device=device)
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.counter.meta_value_reads += 1
            return False if args[0].dtype == torch.bool else (0.0 if args[0].is_floating_point() else 0)
        if func is aten.copy_.default and args[1].device.type == "meta" and args[0].device.type != "meta":
            self.counter.meta_value_reads += 1
            return args[0]
        if func is aten.scaled_dot_product_attention.default:
            # one fused op on every device: torch's mode would decompose it (the math path on meta tensors,
            # materializing the similarity matrix) - counted whole, it moves q, k, v and the output only
            out, key = self._cached(func, args, kwargs)
            return self.counter._count_flops(func._overloadpacket, out, args, kwargs, key)
        if isinstance(func, torch._ops.OpOverload) and func not in _SKIPPED_BY_TORCH_MODE:
            kind = _op_kind(func)
            if kind == LEAF:
                out, key = self._cached(func, args, kwargs)
                return self.counter._count_flops(func._overloadpacket, out, args, kwargs, key)
            if kind == PLAIN:  # what torch's mode does once func.decompose() returned NotImplemented
                return self.counter._count_flops(func._overloadpacket, func(*args, **kwargs), args, kwargs)
            if kind == COMPOSITE and func not in self.counter.flop_registry:
                return self._composite(func, types, args, kwargs)
        return super().__torch_dispatch__(func, types, args, kwargs)


# the metadata queries torch's mode passes through uncounted (see _FlopCounterMode.__torch_dispatch__)
_SKIPPED_BY_TORCH_MODE = {aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
                          aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default,
                          aten.size.default, aten.sym_size.default, aten.stride.default, aten.sym_stride.default,
                          aten.storage_offset.default, aten.sym_storage_offset.default, aten.numel.default,
                          aten.sym_numel.default, aten.dim.default, torch.ops.prim.layout.default,
                          torch.ops.prim.device.default}


# ----------------------------------------------------------------------------------------------------
# Aggregations
# ----------------------------------------------------------------------------------------------------
SUM_COLUMNS = ["flops", "macs", "softmax_flops", "bytes"]


def module_at_depth(path: str, depth: int) -> str:
    """``denoiser.down_blocks.0.attentions.0`` at depth 3 -> ``denoiser.down_blocks.0``."""
    return ".".join(path.split(".")[:depth])


def by_module(rows: pd.DataFrame, depth: int = 4) -> pd.DataFrame:
    """FLOPs per module subtree at ``depth`` path components (a partition: sums to the total)."""
    df = rows.assign(module=rows["module"].map(lambda p: module_at_depth(p, depth)))
    out = df.groupby("module", as_index=False, sort=False)[SUM_COLUMNS].sum()
    return out.sort_values("flops", ascending=False, kind="stable").reset_index(drop=True)


def by_class(rows: pd.DataFrame, per_phase: bool = False) -> pd.DataFrame:
    keys = ["phase", "op_class"] if per_phase else ["op_class"]
    out = rows.groupby(keys, as_index=False, sort=False)[SUM_COLUMNS].sum()
    return out.sort_values(keys[:-1] + ["flops"], ascending=[True] * (len(keys) - 1) + [False],
                           kind="stable").reset_index(drop=True)


def by_op(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.groupby(["op", "op_class"], as_index=False, sort=False)[SUM_COLUMNS + ["calls"]].sum()
    return out.sort_values("flops", ascending=False, kind="stable").reset_index(drop=True)


def count_callable(fn: Callable[[], Any], components: Any = (), memoize: bool = True) -> FlopCounter:
    """Count ``fn()`` (run under ``inference_mode``); returns the finished counter."""
    with torch.inference_mode(), FlopCounter(components, memoize=memoize) as counter:
        fn()
    return counter


def iter_phases(steps: pd.DataFrame) -> Iterator[str]:
    return iter(dict.fromkeys(steps["phase"]))
