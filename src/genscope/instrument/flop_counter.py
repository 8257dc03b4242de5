"""The FLOP counter: torch's ``FlopCounterMode`` filing every counted op by phase, module, class and step.

:class:`FlopCounter` is a :class:`torch.utils.flop_counter.FlopCounterMode` (torch's dispatch mode, formula
registry, decomposition of composite ops and ``Global`` count) whose per-op hook also files each op under

* the **phase** it ran in (``genscope.workloads.phases.current_phase()``: ``text_encoder``, ``denoise`` step
  i, ``decoder``, ``prefill``, ``decode`` token i, ...; ops outside any phase go to ``(outside phases)``),
* its innermost **module path** (``denoiser.down_blocks.0.attentions.0.transformer_blocks.0.attn1``: the
  pipeline's component names are the roots; any depth can be aggregated afterwards),
* whether it ran inside an **attention entry-point call** (then its class is ``Attention`` whatever the op,
  the profiler's rule: the baseline backend's ``baddbmm``/``softmax``/``bmm`` and the flash backend's fused
  op land in one class),

with its FLOPs, softmax FLOPs and bytes (:mod:`genscope.instrument.flop_formulas`).

On the meta device, a count of a whole pipeline runs a few steps of each loop (a
:class:`~genscope.workloads.phases.StepLimit`) and adds the rest exactly from the counted steps
(:mod:`genscope.instrument.flop_steps`): a 50-step paper-scale diffusion count runs three UNet forwards
(steps 0, 1 and 49; step 2 too when a scheduler's first step differs), a 1024-token autoregressive decode
four decoder steps. A block called again with the same structure and argument shapes is counted once,
checked once and then replayed from its rows (:mod:`genscope.instrument.block_replay`: 0.66-0.86x the
count's time per paper-scale workload), and identical op calls on meta tensors run their meta kernel once
(:mod:`genscope.instrument.meta_cache`).

Why module paths are tracked here (global forward hooks, the public ``nn.Module`` API) and not by torch's
``ModuleTracker``: its names start at the class name of the first module it meets, so two UNets of one
class (Imagen's cascade) or a VAE decoder called without its root cannot be told apart; torch offers no
public way to name modules.

``aten.scaled_dot_product_attention`` is counted as one fused op on every device (its formula,
:func:`~genscope.instrument.flop_formulas.attention_flops`, is passed to torch's counter as a custom mapping
of its overload, which stops torch's mode from decomposing it into the materialized math path).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils.flop_counter import FlopCounterMode

from genscope.instrument.block_replay import BlockReplay, component_paths
from genscope.instrument.flop_formulas import fused_attention_flop, op_bytes, op_name, op_softmax_flops
from genscope.instrument.flop_steps import SeriesBroken, StepRows, fit_steps
from genscope.instrument.meta_cache import MetaDispatchMode, MetaOpCache
from genscope.instrument.opclasses import op_class
from genscope.models.layers.attention import register_wrapper
from genscope.workloads.phases import current_phase, limit_steps

aten = torch.ops.aten

NO_PHASE = "(outside phases)"  # the same label the profiler uses
NO_MODULE = "(no module)"
IDENTICAL_STEPS = 2  # leading steps run of a loop of identical steps; one more while the last two differ,
MAX_IDENTICAL_STEPS = 4  # up to this many (the first may differ: a scheduler's set-up step)
GROWING_STEPS = 4  # steps run of an autoregressive loop: the first may differ, the last three fit a line
ROW_COLUMNS = ["phase", "module", "op", "op_class", "flops", "macs", "softmax_flops", "bytes", "calls"]

__all__ = ["FlopCounter", "SeriesBroken", "NO_PHASE", "NO_MODULE", "IDENTICAL_STEPS", "GROWING_STEPS"]


# ops torch's counting mode leaves to the next handler (metadata queries of non-standard tensors)
_METADATA_OPS = frozenset({
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    torch.ops.prim.layout.default})


_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd


class _CountingMode(MetaDispatchMode):
    """The dispatch mode of :class:`FlopCounter`: torch's ``FlopCounterMode`` dispatch, same decisions, less work.

    As torch's (private) ``_FlopCounterMode``: an op with no formula of its own is decomposed when it has a
    composite (``CompositeImplicitAutograd``) decomposition and its parts are counted; any other op runs and
    is counted. Unlike it: an op whose ``decompose`` said ``NotImplemented`` once (that depends on how the
    op is registered, not on its arguments) is not offered again (torch pushes the mode and asks for each
    of the 50-100 k op calls of a paper-scale count), and on the meta device the op runs through the
    :class:`~genscope.instrument.meta_cache.MetaOpCache` called directly rather than as a second mode
    stacked under this one (one Python dispatch per op instead of two). Higher-order operators (``cond``,
    Triton kernels) are not supported (torch errors out naming the mode); genscope's workloads run none.
    """

    def __init__(self, counter: FlopCounter, op_cache: MetaOpCache | None) -> None:
        super().__init__()
        self.counter = counter
        self.op_cache = op_cache
        self.registry = counter.flop_registry  # op packets, and the overloads of custom mappings
        self.not_composite: set = {torch.ops.prim.device.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return NotImplemented
        if func not in self.registry and func not in self.not_composite:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            if _COMPOSITE not in func.py_kernels:  # a Python decomposition may decline for some arguments only
                self.not_composite.add(func)
        out = self.op_cache.run(func, args, kwargs) if self.op_cache is not None else func(*args, **kwargs)
        return self.counter._count_flops(func._overloadpacket, out, args, kwargs)


def _depth_key(path: str) -> tuple[int, int]:
    return path.count("."), len(path)


class FlopCounter(FlopCounterMode):
    """``with FlopCounter(pipeline.components) as c: pipeline(request)``; then ``c.table()``.

    ``components``: ``Component`` objects (or ``{name: module}``) whose names become the roots of the module
    paths. On the meta device (every component's parameters on meta) the loops of the run are cut to a few
    steps and completed from them (see :mod:`genscope.instrument.flop_steps`); :class:`SeriesBroken` is
    raised when the counted steps of a loop do not fit their rule. ``memoize=False`` or ``predict=False``
    (the names of the earlier design, kept for callers) runs every step of every loop: the exact count, and
    the fallback after :class:`SeriesBroken`. Real-tensor runs always run every step. ``meta_cache``: on the
    meta device, run each distinct op call once (:class:`~genscope.instrument.meta_cache.MetaOpCache`).
    """

    def __init__(self, components: Any = (), memoize: bool = True, predict: bool = True, meta_cache: bool = True):
        super().__init__(display=False, depth=None,
                         custom_mapping={aten.scaled_dot_product_attention.default: fused_attention_flop})
        if isinstance(components, dict):
            self.components: dict[str, nn.Module] = dict(components)
        else:
            self.components = {c.name: c.module for c in components}
        self.memoize = memoize
        self.predict = predict
        self.meta_cache = meta_cache
        # (phase, leaf module, packet, in attention) -> [flops, softmax_flops, bytes, calls]
        self.rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.steps: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])  # (phase, step) -> flops, softmax, bytes
        self.meta_value_reads = 0  # values are never read back from meta tensors by the suite's loops
        self.replicated_steps = 0  # steps of identical-step loops added from a counted step
        self.extrapolated_steps = 0  # steps of growing loops added from the fitted line
        self._paths: dict[nn.Module, str] = component_paths(self.components)
        self._open: list[str] = []  # paths of the modules whose forward is running, outermost first
        self._leaves: list[str] = [NO_MODULE]  # _leaves[i + 1]: the deepest path among _open[: i + 1]
        self._attention_depth = 0
        self._step_rows: dict[tuple[str, int], StepRows] = {}  # (phase, step) -> rows, under a step limit
        self._exits: list = []
        self.op_cache: MetaOpCache | None = None
        self._op_costs: dict[tuple, tuple[int, int, int]] = {}  # meta cache key -> flops, softmax flops, bytes
        self._limited = False  # a step limit is active (set on entering, on the meta device)
        self.block_replay: BlockReplay | None = None  # on the meta device (memoize): repeated blocks replayed

    # -- context -----------------------------------------------------------------------------------------
    def __enter__(self):
        on_meta = self._on_meta()
        self.op_cache = MetaOpCache() if self.meta_cache and on_meta else None
        # what FlopCounterMode.__enter__ does, with this module's dispatch mode in place of torch's
        self.flop_counts.clear()
        self.mod_tracker.__enter__()
        self.mode = _CountingMode(self, self.op_cache)
        self.mode.__enter__()
        handles = [register_module_forward_pre_hook(self._enter_module),
                   register_module_forward_hook(self._exit_module), register_wrapper(self._attention_wrapper)]
        self._exits = [h.remove for h in handles]
        if self.memoize and on_meta:  # repeated block calls counted once, checked once, then replayed
            self.block_replay = BlockReplay(list(self._paths), self._path, self._file_replayed, self._phase_key,
                                            context=lambda: self._attention_depth > 0).__enter__()
            self._exits.append(lambda: self.block_replay.__exit__(None, None, None))
        if self.memoize and self.predict and on_meta:
            limit = limit_steps(IDENTICAL_STEPS, on_loop_end=self._loop_end, max_growing_steps=GROWING_STEPS,
                                run_last=True, extend=self._extend)
            limit.__enter__()
            self._exits.append(lambda: limit.__exit__(None, None, None))
            self._limited = True
        return self

    def __exit__(self, *args):
        for undo in reversed(self._exits):
            undo()
        self._exits = []
        self._limited = False
        return super().__exit__(*args)  # leaves the mode and the module tracker

    def _on_meta(self) -> bool:
        firsts = [next(m.parameters(), None) for m in self.components.values()]
        return bool(firsts) and all(p is not None and p.device.type == "meta" for p in firsts)

    # -- where an op runs ------------------------------------------------------------------------------------
    def _path(self, module: nn.Module) -> str:
        path = self._paths.get(module)
        if path is None:  # a module outside the components: named by its class, as torch's ModuleTracker does
            path = type(module).__name__
            for sub_name, sub in module.named_modules():
                self._paths.setdefault(sub, f"{path}.{sub_name}" if sub_name else path)
        return path

    def _enter_module(self, module, args) -> None:
        path = self._path(module)
        leaf = self._leaves[-1]
        self._open.append(path)
        self._leaves.append(path if leaf == NO_MODULE or _depth_key(path) > _depth_key(leaf) else leaf)

    def _exit_module(self, module, args, output) -> None:
        path = self._path(module)
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i] == path:
                del self._open[i:]
                del self._leaves[i + 1:]
                return

    def _attention_wrapper(self, call):
        counter = self

        class _Inside:
            def __enter__(self):
                counter._attention_depth += 1

            def __exit__(self, *exc):
                counter._attention_depth -= 1

        return _Inside()

    # -- counting ----------------------------------------------------------------------------------------
    def _count_flops(self, func_packet, out, args, kwargs):
        """torch's per-op hook: count as torch does (``Global`` and its module names), then file the op.

        An op the meta cache has just answered (its output is the cache's last) has costs that depend on its
        cache key only: they are computed once per key."""
        if self.block_replay is not None and self.block_replay.replaying:  # a replayed block's outputs
            return out
        last = self.op_cache.last if self.op_cache is not None else None
        answered = last is not None and last[1] == id(out) and last[0][0].overloadpacket is func_packet
        key = last[0] if answered else None
        costs = self._op_costs.get(key) if key is not None else None
        if costs is None:
            flops = 0
            if func_packet in self.flop_registry:
                flops = int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            costs = (flops, op_softmax_flops(func_packet, args), op_bytes(func_packet, args, kwargs, out))
            if key is not None:
                self._op_costs[key] = costs
        if costs[0]:
            for par in set(self.mod_tracker.parents):
                self.flop_counts[par][func_packet] += costs[0]
        self._file(func_packet, *costs)
        return out

    def _phase_key(self) -> tuple[str, int | None]:
        info = current_phase()
        return (info.name, info.step) if info is not None else (NO_PHASE, None)

    def _file(self, packet, flops: int, softmax: int, nbytes: int, calls: int = 1, leaf: str | None = None,
              in_attention: bool | None = None) -> None:
        """File an op (or ``calls`` replayed ones) under the current phase and step and its leaf module."""
        name, step = self._phase_key()
        leaf = self._leaves[-1] if leaf is None else leaf
        in_attention = self._attention_depth > 0 if in_attention is None else in_attention
        key = (leaf, packet, in_attention)
        for row in (self.rows[(name, *key)], self._step_row(name, step, key)):
            if row is not None:
                row[0] += flops
                row[1] += softmax
                row[2] += nbytes
                row[3] += calls
        srow = self.steps[(name, -1 if step is None else step)]
        srow[0] += flops
        srow[1] += softmax
        srow[2] += nbytes
        if self.block_replay is not None:
            self.block_replay.observe(leaf, packet, in_attention, (flops, softmax, nbytes, calls))

    def _file_replayed(self, rows, prefix: str) -> None:
        """A replayed block's rows (:class:`BlockReplay`), filed as if its ops had run under ``prefix``."""
        parents = set(self.mod_tracker.parents)
        for (rel, packet, in_attention), (flops, softmax, nbytes, calls) in rows:
            if flops:
                for par in parents:
                    self.flop_counts[par][packet] += flops
            self._file(packet, flops, softmax, nbytes, calls, f"{prefix}.{rel}" if rel else prefix, in_attention)

    def _step_row(self, name: str, step: int | None, key: tuple) -> list[int] | None:
        if step is None or not self._limited:  # no step limit: nothing to replicate
            return None
        rows = self._step_rows.setdefault((name, step), {})
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0, 0, 0, 0]
        return row

    def _extend(self, phase_name: str, run: int) -> bool:
        """Run one more leading step of a loop of identical steps while its last two counted steps differ."""
        return run < MAX_IDENTICAL_STEPS and (self._step_rows.get((phase_name, run - 1))
                                              != self._step_rows.get((phase_name, run - 2)))

    def _loop_end(self, phase_name: str, steps: int, run: int) -> None:
        """A loop under the step limit ended after its leading ``run`` of ``steps`` steps (and its last one,
        for a loop of identical steps): add the steps not run."""
        counted = [self._step_rows.pop((phase_name, s), {}) for s in range(run)]
        if run >= steps:
            return
        ran_last = self._step_rows.pop((phase_name, steps - 1), None) is not None
        end = steps - 1 if ran_last else steps  # steps run .. end - 1 are added
        rule = fit_steps(phase_name, counted, growing=not ran_last)  # a cut loop of identical steps ran its last
        for (leaf, packet, in_attention), values in rule.sum_over(run, end):
            row = self.rows[(phase_name, leaf, packet, in_attention)]
            for i, v in enumerate(values):
                row[i] += v
            if values[0]:
                self.flop_counts["Global"][packet] += values[0]
        last = self.steps.pop((phase_name, steps - 1)) if ran_last else None
        first = rule.totals_at(run)
        growth = [b - a for a, b in zip(first, rule.totals_at(run + 1), strict=True)]
        for step in range(run, end):  # the step totals are affine too
            self.steps[(phase_name, step)] = [a + g * (step - run) for a, g in zip(first, growth, strict=True)]
        if last is not None:  # in step order, after the added steps
            self.steps[(phase_name, steps - 1)] = last
        if rule.identical:
            self.replicated_steps += end - run
        else:
            self.extrapolated_steps += end - run

    # -- results -----------------------------------------------------------------------------------------
    @property
    def memo_replays(self) -> int:
        """Steps added by replication (the study's ``memoized_calls`` column)."""
        return self.replicated_steps

    @property
    def predicted_calls(self) -> int:
        """Steps added by extrapolation (the study's ``predicted_calls`` column)."""
        return self.extrapolated_steps

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
            records.append((ph, leaf, name, "Attention" if in_attention else op_class(name), flops, flops // 2,
                            softmax, nbytes, calls))
        df = pd.DataFrame(records, columns=ROW_COLUMNS)
        return df.astype({c: "int64" for c in ("flops", "macs", "softmax_flops", "bytes", "calls")})

    def step_table(self) -> pd.DataFrame:
        """``phase, step, flops, macs, softmax_flops, bytes`` per phase entry (step -1: a phase without steps)."""
        records = [{"phase": ph, "step": step, "flops": f, "macs": f // 2, "softmax_flops": s, "bytes": b}
                   for (ph, step), (f, s, b) in self.steps.items()]
        df = pd.DataFrame(records, columns=["phase", "step", "flops", "macs", "softmax_flops", "bytes"])
        return df.astype({"step": "int64", "flops": "int64", "macs": "int64", "softmax_flops": "int64",
                          "bytes": "int64"})
