"""In-model split (paper Figures 11 and 12): spatial vs temporal attention time, FLOPs and bytes inside a video
workload (``make-a-video``: the UNet3D; ``phenaki``: the C-ViViT decoder), baseline and flash attention
interleaved, optionally with the frame-strided pass. The groups and components are defined in
:mod:`genscope.studies.temporal`.

The attention calls come from the sequence-length tracer (:class:`genscope.instrument.seqlen.SequenceTracer`),
FLOPs and bytes per component from :class:`genscope.instrument.flops.FlopCounter` on the meta device.

Time comes from the profiler's one attribution: each repetition is one :func:`genscope.instrument.profiler.
profile_callable` trace, whose events are classified by :mod:`genscope.instrument.attribution` (phase, operator
class, innermost module, attention call kind, top-level op, self time); :func:`split_times` is pandas over that
table (which attention site an event's module belongs to, which copies serve which attention). CPU time only:
on CUDA the kernels' time per module is not yet in the attribution's public tables (see the issue 14 report).
"""

from __future__ import annotations

import contextlib
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from genscope.errors import UserError
from genscope.instrument.opclasses import ATTENTION_RANGE
from genscope.models.layers.attention import use_backend
from genscope.studies.temporal_model import SOFTMAX_FLOPS_PER_ELEMENT
from genscope.studies.temporal_split_tables import (
    add_flops_to_summary,
    calls_table,
    summary_row,
)

DEFAULT_BACKENDS = ("baseline", "flash")
# Workloads the in-model split applies to, and the component holding their spatial + temporal attention.
SPLIT_COMPONENTS: dict[str, str] = {"make-a-video": "denoiser", "phenaki": "decoder"}
SPLIT_NOTE = ("core = inside attention entry-point calls (QK^T, softmax, @V / fused kernel); layout = copies "
              "that move the attended axis into the sequence position; head_layout = head split/merge copies; "
              "projections = Q/K/V/out Linear layers. spatial = the spatial transformers' self- and "
              "cross-attention ([B*F, heads, H*W, d]); temporal = [B*H*W, heads, F, d].")


def site_group(kind: str) -> str:
    return "temporal" if kind == "temporal" else "spatial"


def call_layout(kind: str) -> str:
    if kind == "temporal":
        return "[B*H*W, heads, F, d]"
    if kind == "cross":
        return "[B*F, heads, H*W, d] x keys [B*F, heads, T, d]"
    return "[B*F, heads, H*W, d]"


@dataclass
class _SplitModel:
    """Which module paths hold which attention group (within the split component)."""

    sites: dict[str, str]  # attention module path -> group
    kinds: dict[str, str]  # attention module path -> kind
    scopes: dict[str, str | None]  # ancestor path of attention -> its group, None when mixed
    component: str

    @classmethod
    def of(cls, sites, component: str) -> _SplitModel:
        inside = [s for s in sites if s.path == component or s.path.startswith(component + ".")]
        groups = {s.path: site_group(s.kind) for s in inside}
        scopes: dict[str, set[str]] = defaultdict(set)
        for path, group in groups.items():
            parts = path.split(".")
            for i in range(1, len(parts)):
                scopes[".".join(parts[:i])].add(group)
        return cls(groups, {s.path: s.kind for s in inside},
                   {p: (next(iter(g)) if len(g) == 1 else None) for p, g in scopes.items()}, component)

    def site_of(self, path: str) -> str | None:
        """The attention module that ``path`` is (or lies inside), if any."""
        while path:
            if path in self.sites:
                return path
            if "." not in path:
                return None
            path = path.rsplit(".", 1)[0]
        return None

    def group_of_subtree(self, path: str) -> str | None:
        if path in self.sites:
            return self.sites[path]
        return self.scopes.get(path)


_COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_reshape_copy"}


def _path(module: pd.Series) -> pd.Series:
    """``<path>::<Class>`` (the attribution's ``module`` column) -> ``<path>``."""
    return module.fillna("").str.rsplit("::", n=1).str[0]


def _next_child_groups(ctx: pd.DataFrame, rows: pd.DataFrame, model: _SplitModel) -> pd.Series:
    """For copies issued by a scope holding both groups: the group of the scope's first child module run after
    the copy (C-ViViT: the permute before the temporal blocks -> temporal), else ``shared``."""
    ranges = ctx[(ctx["cat"] == "user_annotation") & ctx["name"].str.startswith("module::")]
    child = _path(ranges["name"].str.removeprefix("module::"))
    children = pd.DataFrame({"thread": ranges["thread"], "start_us": ranges["start_us"],
                             "parent": child.str.rsplit(".", n=1).str[0], "child": child})
    out = pd.Series("shared", index=rows.index, dtype=object)
    for (thread, scope), grp in rows.groupby([rows["thread"], rows["path"]], sort=False):
        kids = children[(children["thread"] == thread) & (children["parent"] == scope)].sort_values("start_us")
        if kids.empty:
            continue
        found = pd.merge_asof(grp[["start_us"]].reset_index().sort_values("start_us"), kids[["start_us", "child"]],
                              on="start_us", direction="forward").set_index("index")["child"]
        groups = found.map(lambda c: model.group_of_subtree(c) if isinstance(c, str) else None)
        out.loc[groups.index] = groups.fillna("shared")
    return out


def split_times(ctx: pd.DataFrame, model: _SplitModel) -> tuple[dict, dict, float]:
    """The profiler attribution's classified CPU events (:func:`genscope.instrument.attribution.classify` over
    :func:`~genscope.instrument.attribution.cpu_context`) -> ({(group, component): ms}, {site path: [call ms]},
    the split component's total ms). Pandas over the one event table: each event's self time is charged by its
    innermost module and attention call, as the module docstring of :mod:`genscope.studies.temporal` says."""
    ctx = ctx.assign(path=_path(ctx["module"]))
    inside = (ctx["path"] == model.component) | ctx["path"].str.startswith(model.component + ".")
    is_range = ctx["cat"] == "user_annotation"
    calls: dict[str, list[float]] = defaultdict(list)
    att = ctx[is_range & ctx["name"].str.startswith(ATTENTION_RANGE + "::")]
    for name, dur in zip(att["name"], att["dur_us"], strict=True):
        site = model.site_of(name.split("::", 3)[3] if name.count("::") >= 3 else "")
        if site is not None:
            calls[site].append(dur / 1e3)
    roots = ctx[is_range & ctx["name"].str.startswith(f"module::{model.component}::")]
    component_ms = float(roots["dur_us"].sum() / 1e3)
    work = ctx[inside & (ctx["self_us"] > 0)]
    site = work["path"].map(model.site_of)
    # 1. inside an attention module: core (the entry-point call), projections, head split/merge copies, other
    in_site = work[site.notna()]
    component = np.where(in_site["attention_kind"].notna() | (in_site["op_class"] == "Attention"), "core",
                         in_site["op_class"].map({"Linear": "projections", "Memory": "head_layout"})
                         .fillna("attention_other"))
    parts = [pd.DataFrame({"group": site[site.notna()].map(model.sites).to_numpy(), "component": component,
                           "time_ms": in_site["self_us"].to_numpy() / 1e3})]
    # 2. layout copies issued by a module with attention below it (a scope)
    rest = work[site.isna() & work["top_op"].notna()]
    scope_group = rest["path"].map(lambda p: model.scopes.get(p, "-"))
    own = rest[(scope_group != "-") & (rest["op_class"] == "Memory")]
    groups = scope_group[own.index].astype(object)
    mixed = groups.isna()
    if mixed.any():
        groups[mixed] = _next_child_groups(ctx, own[mixed], model)
    parts.append(pd.DataFrame({"group": groups.to_numpy(), "component": "layout",
                               "time_ms": own["self_us"].to_numpy() / 1e3}))
    # 3. copies inside a non-attention child of a one-group scope (a GroupNorm applied to a permuted view)
    parent_group = rest["path"].str.rsplit(".", n=1).str[0].map(lambda p: model.scopes.get(p))
    copies = rest[(scope_group == "-") & parent_group.notna()
                  & (rest["name"].isin(_COPY_OPS) | rest["top_op"].isin(_COPY_OPS))]
    parts.append(pd.DataFrame({"group": parent_group[copies.index].to_numpy(), "component": "layout",
                               "time_ms": copies["self_us"].to_numpy() / 1e3}))
    split = pd.concat(parts, ignore_index=True).groupby(["group", "component"])["time_ms"].sum()
    return {k: float(v) for k, v in split.items()}, dict(calls), component_ms


def profiled_context(run: Callable[[], object], components, device: torch.device) -> tuple[pd.DataFrame, float]:
    """One traced run through the profiler (:func:`genscope.instrument.profiler.profile_callable`): its classified
    CPU events (the attribution's context table, read back from the trace) and its wall time in ms."""
    import tempfile
    from pathlib import Path

    from genscope.instrument.attribution import classify, cpu_context
    from genscope.instrument.profiler import profile_callable
    from genscope.instrument.traces import load_events

    with tempfile.TemporaryDirectory(prefix="genscope-split-") as tmp:
        path = Path(tmp) / "split.json"
        profile = profile_callable(run, components=components, device=device, mode="trace", repeat=1, warmup=0,
                                   trace_path=path)
        events = load_events(path)
    host = events[events["kind"] != "gpu"]
    return classify(cpu_context(host)), float(profile.repeat_totals_ms[0])


def record_calls(run: Callable[[], object]) -> list[dict]:
    """Every attention call of one run (the sequence-length tracer's rows), with its group and layout."""
    from genscope.instrument.seqlen import SequenceTracer

    with SequenceTracer() as tracer:
        run()
    return [{**row, "group": site_group(row["kind"]), "layout": call_layout(row["kind"]),
             "shape": f"[{row['batch']}, {row['heads']}, {row['query_len']}, {row['head_dim']}]",
             "softmax_flops": SOFTMAX_FLOPS_PER_ELEMENT * int(row["similarity_elements"])} for row in tracer.rows]


def count_split(workload, request, model: _SplitModel, strided: bool) -> pd.DataFrame:
    """FLOPs and bytes per (group, component) from the FLOP counter on the meta device (same request)."""
    from genscope.instrument.flops import FlopCounter

    meta_request = replace(request, device=torch.device("meta"))
    config = workload.config(request.preset)
    if strided:  # the pass changes the model: its own build, never the process's shared shape-only pipeline
        from genscope.passes.temporal import apply

        pipeline = workload.build(config, "meta", request.dtype)
        apply(pipeline.component(model.component))
    else:
        pipeline = workload.shapes_pipeline(config, request.dtype)
    with torch.inference_mode(), use_backend(request.attention), FlopCounter(pipeline.components) as counter:
        pipeline.generate(meta_request)
    rows = counter.table()
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows.itertuples(index=False):
        where = _classify_row(r.module, r.op, r.op_class, model)
        if where is None:
            continue
        acc = out[where]
        acc[0] += int(r.flops)
        acc[1] += int(r.softmax_flops)
        acc[2] += int(r.bytes)
        acc[3] += int(r.calls)
    return pd.DataFrame([(g, c, v[0], v[0] // 2, v[1], v[2]) for (g, c), v in out.items()],
                        columns=["group", "component", "flops", "macs", "softmax_flops", "bytes"])


def _classify_row(module: str, op: str, cls: str, model: _SplitModel) -> tuple[str, str] | None:
    site = model.site_of(module)
    if site is not None:
        if cls == "Attention":
            return model.sites[site], "core"
        return model.sites[site], {"Linear": "projections", "Memory": "head_layout"}.get(cls, "attention_other")
    if module in model.scopes and cls == "Memory":
        return model.scopes[module] or "shared", "layout"
    parent = module.rsplit(".", 1)[0] if "." in module else ""
    if parent in model.scopes and model.scopes[parent] is not None and op in _COPY_OPS and cls == "Memory":
        return model.scopes[parent], "layout"
    return None


@dataclass(frozen=True)
class SplitConfig:
    workload: str = "make-a-video"
    preset: str = "small"
    steps: int | None = 2
    frames: int | None = None
    image_size: int | None = None
    repeat: int = 2
    warmup: int = 1
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    strided: bool = True  # also profile the frame-strided pass (make-a-video)
    device: str = "cpu"
    dtype: str = "float32"
    count_flops: bool = True

    def settings(self) -> dict:
        d = asdict(self)
        d["backends"] = list(self.backends)
        return d


def run_split(config: SplitConfig = SplitConfig(), progress: Callable[[str], None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """The in-model split: tables ``split``, ``calls``, ``summary``, ``flops``."""
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    if config.workload not in SPLIT_COMPONENTS:
        raise UserError(f"the spatial/temporal split applies to video workloads; accepted: "
                        f"{', '.join(SPLIT_COMPONENTS)} (got {config.workload!r})")
    if config.repeat < 1 or config.warmup < 0:
        raise UserError(f"repeat must be >= 1 and warmup >= 0, got {config.repeat} / {config.warmup}")
    workload = registry.get(config.workload)
    settings = RunSettings(preset=config.preset, steps=config.steps, frames=config.frames,
                           image_size=config.image_size, device=config.device, dtype=config.dtype)
    request = workload.request(settings)
    component = SPLIT_COMPONENTS[config.workload]
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    model = _SplitModel.of(pipeline.sites, component)
    if not any(g == "temporal" for g in model.sites.values()):
        raise UserError(f"{config.workload}: no temporal attention found in {component!r}")
    variants = ["standard"]
    can_stride = config.strided and config.workload == "make-a-video"
    if can_stride:
        variants.append("strided")
    components = [(c.name, c.module) for c in pipeline.components]
    target = pipeline.component(component)

    def runner(backend: str):
        def run():
            with use_backend(backend):
                pipeline.generate(replace(request, attention=backend))
        return run

    @contextlib.contextmanager
    def variant_applied(variant: str):
        from genscope.passes import temporal as passes_temporal

        if variant == "strided":
            passes_temporal.apply(target)
        try:
            yield
        finally:
            if variant == "strided":
                passes_temporal.remove(target)

    keys = [(b, v) for v in variants for b in config.backends]
    with torch.inference_mode():
        calls = [c for c in record_calls(runner(config.backends[-1])) if c["path"] in model.sites]
        for backend, variant in keys:
            with variant_applied(variant):
                for _ in range(config.warmup):
                    runner(backend)()
        collected: dict[tuple, list] = defaultdict(list)
        for i in range(config.repeat):
            for backend, variant in keys:
                with variant_applied(variant):
                    ctx, wall = profiled_context(runner(backend), components, request.device)
                collected[(backend, variant)].append((split_times(ctx, model), wall))
                if progress is not None:
                    progress(f"{config.workload}: {backend}/{variant} repetition {i + 1} of {config.repeat}")
    split_rows, call_times = [], defaultdict(dict)
    summary_rows = []
    for (backend, variant), reps in collected.items():
        n = len(reps)
        totals: dict[tuple[str, str], float] = defaultdict(float)
        per_call: dict[str, list[float]] = defaultdict(list)
        component_ms = 0.0
        for (split, cts, comp_ms), _ in reps:
            for k, v in split.items():
                totals[k] += v / n
            for path, times in cts.items():
                per_call[path] += times
            component_ms += comp_ms / n
        for (group, comp), ms in totals.items():
            split_rows.append({"workload": config.workload, "attention": backend, "variant": variant,
                               "group": group, "component": comp, "time_ms": ms})
        for path, times in per_call.items():
            call_times[(backend, variant)][path] = statistics.median(times)
        summary_rows.append(summary_row(config.workload, backend, variant, totals, component_ms,
                                         statistics.median([w for _, w in reps])))
    split_df = pd.DataFrame(split_rows, columns=["workload", "attention", "variant", "group", "component",
                                                 "time_ms"])
    calls_df = calls_table(config.workload, calls, call_times)
    flops_parts = []
    if config.count_flops:
        for variant in variants:
            for backend in config.backends:
                part = count_split(workload, replace(request, attention=backend), model, variant == "strided")
                part.insert(0, "variant", variant)
                part.insert(0, "attention", backend)
                flops_parts.append(part)
    flops_df = (pd.concat(flops_parts, ignore_index=True) if flops_parts else
                pd.DataFrame(columns=["attention", "variant", "group", "component", "flops", "macs",
                                      "softmax_flops", "bytes"]))
    flops_df.insert(0, "workload", config.workload)
    summary = add_flops_to_summary(pd.DataFrame(summary_rows), calls, flops_df)
    return {"split": split_df, "calls": calls_df, "summary": summary, "flops": flops_df}
