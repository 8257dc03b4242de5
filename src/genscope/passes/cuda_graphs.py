"""``cuda_graphs``: replay each block of the denoiser from a captured CUDA graph (CUDA only).

Why: genscope's GPU characterization of the recorded H200 traces shows an eager Stable Diffusion UNet step
leaving the GPU idle most of its span (69% in ``stable-diffusion_h200.baseline``: one kernel launch per
operator, ~1,500 per step, each launched from Python). A CUDA graph launches a block's kernels in one call,
so the host no longer paces the GPU. What is left is the kernels' own time.

How: the pass swaps every *block* (the elements of ``*blocks`` module lists - ``down_blocks.0``,
``up_blocks.3``, ``transformer_blocks.7`` - and ``mid_block``; the outermost match only) for a subclass of
its own class (:func:`~genscope.passes.base.shallow_clone`: same parameters, same state_dict) whose
``forward`` captures one graph per input signature (tensor shapes/dtypes/strides and the non-tensor
arguments) on the first call - after two eager warm-up calls on a side stream, as PyTorch's CUDA-graph notes
prescribe - and replays it afterwards: the call's tensors are copied into the graph's static inputs, the
graph replayed, and the outputs cloned (so a caller may keep them across calls). Graphs need static shapes
and no host synchronization inside the block; a block whose capture fails (or a module that sees more than
:data:`MAX_GRAPHS` signatures) runs eagerly, and the pass says so. Gradients are not supported: a call
with autograd recording runs eagerly.

Written here because PyTorch's ``torch.cuda.make_graphed_callables`` captures autograd graphs for training
(its callables' inputs must require grad consistently and it graphs backward too), and ``torch.compile``'s
``mode="reduce-overhead"`` graphs only what it compiles (minutes of compile, see ``benchmarks/peers.py``).

Oracle: with example inputs, the graphed model's output is compared with the eager model's: the same kernels
replayed, so the relative difference must stay within twice the dtype's unit round-off (or the eager model's
own run-to-run difference, if larger).
With ``measure`` (the default), the pass also times one example step eager vs graphed, interleaved, and
undoes its swaps when graphs do not measure faster (:data:`~genscope.passes.auto.MARGIN`).

Status: opt-in (``--passes ...,cuda_graphs``), not yet part of ``PassConfig.auto``: written after the last GPU
session of 2026-11-29 and not yet run on a GPU; ``tests/test_cuda_graphs.py``'s CUDA test must pass there first.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from genscope.errors import UserError
from genscope.passes.base import Pass, PassContext, shallow_clone
from genscope.passes.oracle import OracleResult, relative_error

MAX_GRAPHS = 8  # signatures captured per block; beyond that (shape churn) the block runs eagerly
WARMUP_CALLS = 2  # eager calls on a side stream before capture (lazy init, cuBLAS workspaces, decisions)
BLOCK_PATH = re.compile(r"(^|\.)([A-Za-z_]*blocks)\.\d+$|(^|\.)mid_block$")


def is_block(path: str) -> bool:
    return bool(BLOCK_PATH.search(path))


def _signature(leaves: list[Any], spec) -> tuple:
    parts = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            parts.append(("t", tuple(x.shape), x.dtype, x.device, tuple(x.stride())))
        elif isinstance(x, (bool, int, float, str, type(None), torch.dtype)):
            parts.append(("v", x))
        else:
            parts.append(("id", id(x)))
    return (str(spec), tuple(parts))


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, static_leaves: list[Any], static_out: Any):
        self.graph = graph
        self.static_leaves = static_leaves  # the graph's inputs: tensors it reads, copied into before replay
        self.static_out = static_out

    def replay(self, leaves: list[Any]) -> Any:
        for static, x in zip(self.static_leaves, leaves, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(x)
        self.graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.static_out)


class GraphedBlock(nn.Module):
    """Mixin placed before a block's own class: ``forward`` replays a captured graph per input signature."""

    _graphed_base: ClassVar[type[nn.Module]]

    def forward(self, *args, **kwargs):
        eager = super().forward
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return eager(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tensors or any(t.device.type != "cuda" for t in tensors) or torch.cuda.is_current_stream_capturing():
            return eager(*args, **kwargs)
        graphs: dict = self.__dict__.setdefault("_graphs", {})
        key = _signature(leaves, spec)
        entry = graphs.get(key)
        if entry is None:
            if len(graphs) >= MAX_GRAPHS:
                return eager(*args, **kwargs)
            entry = graphs[key] = self._capture(leaves, spec)
        if entry == "eager":
            return eager(*args, **kwargs)
        return entry.replay(leaves)

    def _capture(self, leaves: list[Any], spec) -> _Captured | str:
        eager = super().forward
        static_leaves = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        static_args, static_kwargs = tree_unflatten(static_leaves, spec)
        device = next(x for x in leaves if isinstance(x, torch.Tensor)).device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    eager(*static_args, **static_kwargs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = eager(*static_args, **static_kwargs)
        except Exception as exc:  # noqa: BLE001 - host syncs or dynamic shapes inside: this block stays eager
            torch.cuda.synchronize(device)
            self.__dict__.setdefault("_graph_failures", []).append(f"{type(exc).__name__}: {str(exc)[:200]}")
            return "eager"
        return _Captured(graph, static_leaves, static_out)


def graphed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``Graphed<cls>``: :class:`GraphedBlock` first, then ``cls`` (one class per block class)."""
    cache = graphed_class.__dict__.setdefault("_classes", {})
    if cls not in cache:
        cache[cls] = type(f"Graphed{cls.__name__}", (GraphedBlock, cls), {"_graphed_base": cls})
    return cache[cls]


def capture_failures(model: nn.Module) -> list[str]:
    """``path: reason`` for every graphed block that fell back to eager at capture."""
    return [f"{path}: {reason}" for path, m in model.named_modules()
            for reason in m.__dict__.get("_graph_failures", [])]


class CudaGraphsPass(Pass):
    name = "cuda_graphs"
    title = "+ CUDA graphs (per block)"

    def run(self, ctx: PassContext) -> None:
        if ctx.device.type != "cuda":
            raise UserError(f"pass cuda_graphs needs a model on a CUDA device (this one is on {ctx.device.type})")
        chosen: list[str] = []
        for path, module in ctx.modules(lambda p, m: is_block(p) and not isinstance(m, GraphedBlock)):
            if any(path.startswith(c + ".") for c in chosen):
                continue  # the outermost block only
            chosen.append(path)
            ctx.swap(path, shallow_clone(module, graphed_class(type(module))),
                     "one CUDA graph per input shape: the block's kernels launched in one call")
        if not chosen or not ctx.has_example():
            if chosen:
                ctx.note("no example inputs: graphs are captured at the first call of each shape, unchecked")
            return
        self._check(ctx, [s for s in ctx.log if s.pass_name == self.name])

    def _check(self, ctx: PassContext, swaps) -> None:
        """Oracle (graphed vs eager output) and, with ``measure``, keep the graphs only if they measure faster."""
        def step():
            out = _example_forward(ctx)
            return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out

        with torch.inference_mode():
            graphed = step()  # captures
            graphed = step()  # replays
            for s in swaps:
                s.undo()
            eager = step()
            eager_again = step()
        # the same kernels replayed: the graph may differ from eager only where a library picks another kernel
        # under capture, i.e. by round-off - the baseline is the dtype's unit round-off (or the eager model's
        # own run-to-run difference, if larger)
        unit_roundoff = torch.finfo(eager.dtype).eps / 2
        baseline = max(relative_error(eager_again, eager), unit_roundoff)
        ctx.require(OracleResult(self.name, "graph replay vs eager", str(eager.dtype).removeprefix("torch."),
                                 relative_error(graphed, eager), baseline))
        for s in swaps:
            s.redo()
        failures = capture_failures(ctx.model)
        if failures:
            ctx.note(f"{len(failures)} block(s) could not be captured and run eagerly: {failures[0]}")
        if not ctx.config.measure:
            return
        from genscope.passes.auto import decide
        from genscope.passes.decisions import measure_interleaved

        def switch(on: bool):
            for s in swaps:
                s.redo() if on else s.undo()

        def timed(on: bool):
            def fn():
                switch(on)
                with torch.inference_mode():
                    _example_forward(ctx)
            return fn

        times = measure_interleaved({"eager": timed(False), "graphed": timed(True)},
                                    repeats=max(ctx.config.repeats, 5), device=ctx.device)
        switch(True)
        best, medians = decide(times, default="eager")
        ctx.decision(what="whole model, example inputs", choice=best,
                     **{f"{k}_ms": round(v, 3) for k, v in medians.items()})
        if best == "eager":
            for s in reversed(swaps):
                s.undo()
                ctx.log.remove(s)
            ctx.note(f"graphs measured no faster ({medians}); undone")


def _example_forward(ctx: PassContext):
    dtype = next((p.dtype for p in ctx.model.parameters() if p.is_floating_point()), torch.float32)

    def cast(x):
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    return ctx.model(*[cast(x) for x in ctx.config.example_inputs],
                     **{k: cast(v) for k, v in dict(ctx.config.example_kwargs).items()})
