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
  :class:`FlopCounter`), which makes a 50-step paper-scale diffusion count take seconds.

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


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def op_bytes(packet, args, kwargs, out) -> int:
    """Bytes one op moves under the eager traffic model (see the module docstring)."""
    if packet in _NO_TRAFFIC or _is_view(packet):
        return 0
    inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if packet in _WRITE_ONLY_FIRST and inputs:
        inputs = inputs[1:]  # the destination is written, not read
    return sum(_tensor_bytes(t) for t in inputs) + sum(_tensor_bytes(t) for t in outputs)


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
@dataclass
class _Memo:
    """One memoized component call: the counts its body produced and the shapes of its outputs."""

    rows: dict[tuple, list[int]]  # (packet, leaf path, in attention, inner parents) -> [flops, softmax, bytes, n]
    out_spec: Any
    out_leaves: list[Any]  # tensors as (shape, stride, dtype, device) tuples; other leaves as they were
    verified: bool = False


@dataclass
class _Capture:
    outer_parents: frozenset[str]
    rows: dict[tuple, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))


class FlopCounter(FlopCounterMode):
    """``with FlopCounter(pipeline.components) as c: pipeline(request)``; then ``c.table()``.

    ``components``: ``Component`` objects (or ``{name: module}``) whose names become the roots of the module
    paths. ``memoize``: on meta tensors, a component called again with the same input shapes, dtypes and
    non-tensor arguments replays the counts (and output shapes) of the earlier call instead of re-running -
    exact, since a meta computation's counts depend on nothing else, and *verified*: a signature is replayed
    only after two real calls with it gave identical counts (a module with hidden state, e.g. a KV cache it
    keeps itself, changes its counts from call to call and is never replayed). Calls taking any argument that
    is not a tensor or a plain value (a cache object, a generator) always run. Real-tensor runs never memoize.
    """

    def __init__(self, components: Any = (), memoize: bool = True):
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
        # (phase, leaf module, packet, in attention) -> [flops, softmax_flops, bytes, calls]
        self.rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.steps: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])  # (phase, step) -> flops, softmax, bytes
        self.meta_value_reads = 0
        self.memo_replays = 0
        self.memo_runs = 0
        self._attention_depth = 0
        self._captures: list[_Capture] = []
        self._memos: dict[tuple, _Memo] = {}
        self._patched: list[tuple[nn.Module, Any]] = []
        self._wrapper_handle = None
        self._leaf_cache: dict[frozenset, str] = {}

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
        for module, had in reversed(self._patched):
            if had is None:
                del module.forward
            else:
                module.forward = had
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

    def _count_flops(self, func_packet, out, args, kwargs):
        flops = 0
        parents = frozenset(self.mod_tracker.parents)
        if func_packet in self.flop_registry:
            flops = int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            for par in parents:
                self.flop_counts[par][func_packet] += flops
        softmax = op_softmax_flops(func_packet, args)
        nbytes = op_bytes(func_packet, args, kwargs, out)
        self._add(func_packet, self._leaf(parents), self._attention_depth > 0, flops, softmax, nbytes, 1)
        for cap in self._captures:
            row = cap.rows[(func_packet, self._leaf(parents), self._attention_depth > 0, parents - cap.outer_parents)]
            row[0] += flops
            row[1] += softmax
            row[2] += nbytes
            row[3] += 1
        return out

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

    # -- memoization (meta only) -------------------------------------------------------------------------
    def _patch(self, module: nn.Module) -> None:
        had = module.__dict__.get("forward")
        original = module.forward
        counter = self

        def forward(*args, **kwargs):
            return counter._memo_call(module, original, args, kwargs)

        module.forward = forward
        self._patched.append((module, had))

    def _signature(self, module: nn.Module, args, kwargs) -> tuple | None:
        leaves, spec = tree_flatten((args, kwargs))
        key: list[Any] = [id(module), spec]
        any_tensor = False
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != "meta":
                    if leaf.dim() == 0 and leaf.device.type == "cpu":  # a CPU scalar (a timestep): no values matter
                        key.append(("cpu-scalar", leaf.dtype))
                        continue
                    return None
                any_tensor = True
                key.append((tuple(leaf.shape), leaf.stride(), leaf.dtype))
            elif leaf is None or isinstance(leaf, (bool, int, float, str, torch.dtype, torch.device)):
                key.append(leaf)
            else:
                return None  # a cache, a generator, ...: state we cannot see - always run
        return tuple(key) if any_tensor else None

    def _memo_call(self, module: nn.Module, original: Callable, args, kwargs):
        key = self._signature(module, args, kwargs)
        if key is None:
            return original(*args, **kwargs)
        memo = self._memos.get(key)
        if memo is not None and memo.verified:
            return self._replay(memo)
        cap = _Capture(outer_parents=frozenset(self.mod_tracker.parents))
        self._captures.append(cap)
        try:
            out = original(*args, **kwargs)
        finally:
            self._captures.remove(cap)
        self.memo_runs += 1
        rows = {k: list(v) for k, v in cap.rows.items()}
        out_leaves, out_spec = tree_flatten(out)
        if any(isinstance(t, torch.Tensor) and t.device.type != "meta" for t in out_leaves):
            return out
        described = [(tuple(t.shape), t.stride(), t.dtype, t.device) if isinstance(t, torch.Tensor) else t
                     for t in out_leaves]
        if memo is None:
            self._memos[key] = _Memo(rows, out_spec, described)
        elif memo.rows == rows and memo.out_leaves == described:
            memo.verified = True
        else:  # the module's counts depend on more than its inputs: never replay it
            self._memos[key] = _Memo(rows, out_spec, described)
            self._signature_unstable(module)
        return out

    def _signature_unstable(self, module: nn.Module) -> None:
        for i, (m, had) in enumerate(self._patched):
            if m is module:
                if had is None:
                    del module.forward
                else:
                    module.forward = had
                del self._patched[i]
                return

    def _replay(self, memo: _Memo):
        self.memo_replays += 1
        outer = frozenset(self.mod_tracker.parents)
        for (packet, leaf, in_attention, inner), (flops, softmax, nbytes, calls) in memo.rows.items():
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
        leaves = [torch.empty_strided(d[0], d[1], dtype=d[2], device=d[3]) if _is_tensor_desc(d) else d
                  for d in memo.out_leaves]
        return tree_unflatten(leaves, memo.out_spec)

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


def _is_tensor_desc(d: Any) -> bool:
    return (isinstance(d, tuple) and len(d) == 4 and isinstance(d[2], torch.dtype)
            and isinstance(d[3], torch.device))


class _GenscopeFlopMode(_FlopCounterMode):
    """torch's counting dispatch mode, plus: values read back from meta tensors are zeros."""

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
        return super().__torch_dispatch__(func, types, args, kwargs)


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
