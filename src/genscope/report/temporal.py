"""Report section of the ``temporal`` study (paper Section VI): Figure 12 and Figure 14 analogues, from stored
tables only.

Stored runs read (study ``temporal``; the newest run wins):

* in-model split, one run per video workload (``make-a-video``, ``phenaki``): ``summary`` (per backend and
  variant: spatial/temporal time per component, matmul FLOPs, ratios), ``split`` (``attention, variant, group,
  component, time_ms``), ``flops`` (``attention, variant, group, component, flops, bytes``), ``calls`` (per
  attention site: layout, shape, calls, FLOPs per call, core ms per call);
* frames sweep (workload ``attention-layer``): ``points`` (per image size, frames, layer, variant, backend: FLOPs,
  bytes, arithmetic intensity, median times, achieved rates), ``fits``, ``crossover``, ``speedup``,
  ``counters``, ``notes``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from genscope.report.sections import (
    caption,
    details,
    esc,
    figure_to_img,
    new_figure,
    paragraph,
    section,
    table_html,
    verdict_caption,
)
from genscope.results.store import ResultsStore, RunRecord

STUDY = "temporal"
SWEEP_WORKLOAD = "attention-layer"  # genscope.studies.temporal.SWEEP_WORKLOAD (report draws stored tables only)
SPLIT_WORKLOADS = ("make-a-video", "phenaki")
FILL_COMMAND = "genscope temporal --model make-a-video --preset small"
COMPONENT_COLORS = {"core": "#d62728", "head_layout": "#ff9896", "layout": "#9467bd", "projections": "#ff7f0e",
                    "attention_other": "#c7c7c7"}
COMPONENT_LABELS = {"core": "attention core (QK^T, softmax, PV)", "head_layout": "head split/merge copies",
                    "layout": "layout copies (frames <-> sequence)", "projections": "Q/K/V/out projections",
                    "attention_other": "framework + elementwise in attention module"}
SIZE_COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
# Paper values (Golden et al., Section VI-A, Figure 12; Make-A-Video on an A100): temporal attention takes 2x the
# time of spatial attention with 9x fewer FLOPs; abstract: temporal attention is over 60% of attention time.
PAPER_TIME_RATIO = 2.0
PAPER_FLOPS_RATIO = 9.0


def _newest(store: ResultsStore, workload: str) -> RunRecord | None:
    return store.latest(STUDY, workload=workload)


def _fmt(value, pattern: str = "{:.3g}") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    return "" if not np.isfinite(v) else pattern.format(v)


# ----------------------------------------------------------------------------------------------------
# Figure 12: the in-model split
# ----------------------------------------------------------------------------------------------------
def figure12(record: RunRecord) -> str | None:
    split, flops = record.tables.get("split"), record.tables.get("flops")
    if split is None or split.empty:
        return None
    fig = new_figure(11.0, 4.2)
    ax_t, ax_f = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bars = []  # (label, frame of component -> ms)
    for backend in dict.fromkeys(split["attention"]):
        for variant in dict.fromkeys(split["variant"]):
            for group in ("spatial", "temporal"):
                if variant != "standard" and group == "spatial":
                    continue
                sel = split[(split["attention"] == backend) & (split["variant"] == variant)
                            & (split["group"] == group)]
                if sel.empty:
                    continue
                label = f"{group}\n{backend}" + ("\n+strided" if variant != "standard" else "")
                bars.append((label, sel.groupby("component")["time_ms"].sum()))
    legend_done: set[str] = set()
    top = 0.0
    for i, (_, comps) in enumerate(bars):
        bottom = 0.0
        for comp in COMPONENT_COLORS:
            h = float(comps.get(comp, 0.0))
            if h <= 0:
                continue
            ax_t.bar(i, h, 0.7, bottom=bottom, color=COMPONENT_COLORS[comp],
                     label=COMPONENT_LABELS[comp] if comp not in legend_done else None)
            legend_done.add(comp)
            bottom += h
        top = max(top, bottom)
    ax_t.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax_t.set_ylabel("time per run (ms)")
    ax_t.set_title("(a) time: spatial vs temporal attention", fontsize=9)
    ax_t.set_ylim(0, 1.45 * top if top > 0 else 1.0)  # room for the legend above the bars
    ax_t.legend(fontsize=6, loc="upper center", ncol=2)
    if flops is not None and not flops.empty:
        f = flops[(flops["variant"] == "standard") & (flops["attention"] == flops["attention"].iloc[0])]
        for i, group in enumerate(("spatial", "temporal")):
            sel = f[f["group"] == group].groupby("component")["flops"].sum()
            core, proj = float(sel.get("core", 0.0)) / 1e9, float(sel.get("projections", 0.0)) / 1e9
            ax_f.bar(i, core, 0.6, color=COMPONENT_COLORS["core"], label="attention matmuls" if i == 0 else None)
            ax_f.bar(i, proj, 0.6, bottom=core, color=COMPONENT_COLORS["projections"],
                     label="Q/K/V/out projections" if i == 0 else None)
            ax_f.text(i, core / 2, f"{core:.3g}", ha="center", va="center", fontsize=7, color="white")
        ax_f.set_xticks([0, 1], ["spatial", "temporal"])
        ax_f.set_ylabel("GFLOP per run (2 x MACs)")
        ax_f.set_title("(b) FLOPs: attention matmuls and projections", fontsize=9)
        ax_f.legend(fontsize=7)
    fig.suptitle(f"{record.workload} @ {record.preset}: Figure 12 analogue", fontsize=10)
    return figure_to_img(fig, alt=f"Figure 12: spatial vs temporal attention in {record.workload}")


def split_table(record: RunRecord) -> pd.DataFrame:
    s = record.tables["summary"]
    rows = []
    for r in s.to_dict("records"):
        rows.append({
            "attention": r.get("attention"), "variant": r.get("variant"),
            "spatial ms (core + copies)": _fmt(r.get("spatial_ms"), "{:,.2f}"),
            "temporal ms (core + copies)": _fmt(r.get("temporal_ms"), "{:,.2f}"),
            "temporal / spatial time": _fmt(r.get("time_ratio_temporal_to_spatial"), "{:.2f}x"),
            "core only: temporal / spatial": _fmt(r.get("core_time_ratio_temporal_to_spatial"), "{:.2f}x"),
            "layout copies ms (spatial / temporal)": (f"{_fmt(r.get('spatial_layout_ms'), '{:,.2f}')} / "
                                                      f"{_fmt(r.get('temporal_layout_ms'), '{:,.2f}')}"),
            "with projections ms (spatial / temporal)": (
                f"{_fmt(r.get('spatial_with_projections_ms'), '{:,.2f}')} / "
                f"{_fmt(r.get('temporal_with_projections_ms'), '{:,.2f}')}"),
            "matmul GFLOP (spatial / temporal)": (f"{_fmt(r.get('spatial_core_flops', np.nan) / 1e9, '{:.4g}')} / "
                                                  f"{_fmt(r.get('temporal_core_flops', np.nan) / 1e9, '{:.4g}')}"),
            "spatial / temporal FLOPs": _fmt(r.get("flops_ratio_spatial_to_temporal"), "{:.2f}x"),
            "temporal share of attention": _fmt(r.get("temporal_share_of_attention"), "{:.1%}"),
            "attention share of network": _fmt(r.get("attention_share_of_component"), "{:.1%}"),
        })
    return pd.DataFrame(rows)


def calls_table(record: RunRecord) -> pd.DataFrame | None:
    calls = record.tables.get("calls")
    if calls is None or calls.empty:
        return None
    cols = [c for c in ("path", "kind", "layout", "shape", "calls", "flops_per_call") if c in calls.columns]
    cols += [c for c in calls.columns if c.startswith("core_ms_per_call_")]
    return calls[cols]


# ----------------------------------------------------------------------------------------------------
# Figure 14: the frames sweep
# ----------------------------------------------------------------------------------------------------
def figure14(record: RunRecord) -> str | None:
    points = record.tables.get("points")
    if points is None or points.empty:
        return None
    std = points[points["variant"] == "standard"]
    backend = "flash" if (std["backend"] == "flash").any() else std["backend"].iloc[0]
    fig = new_figure(12.0, 4.0)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    sizes = sorted(std["image_size"].unique())
    for j, size in enumerate(sizes):
        color = SIZE_COLORS[j % len(SIZE_COLORS)]
        sel = std[(std["image_size"] == size) & (std["backend"] == backend)]
        for layer, style in (("spatial", "--"), ("temporal", "-")):
            ls = sel[sel["layer"] == layer].sort_values("frames")
            label = f"{layer}, {size}px ({int(ls['latent'].iloc[0])}x{int(ls['latent'].iloc[0])})" if len(ls) else None
            axes[0].plot(ls["frames"], ls["core_flops"], style, color=color, marker=".", label=label)
            axes[1].plot(ls["frames"], ls["core_ms"], style, color=color, marker=".")
            axes[2].plot(ls["frames"], ls["core_gflops_per_s"], style, color=color, marker=".")
        hw = int(sel["latent"].iloc[0]) ** 2 if len(sel) else 0
        if hw and sel["frames"].min() <= hw <= sel["frames"].max():
            axes[0].axvline(hw, color=color, linewidth=0.6, linestyle=":")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames F")
    axes[0].set_ylabel("attention matmul FLOPs per layer call")
    axes[0].set_title("(a) FLOPs: spatial ~F, temporal ~F^2\n(dotted: predicted crossover F = H*W)", fontsize=8)
    axes[1].set_ylabel(f"measured core time (ms, {backend})")
    axes[1].set_title("(b) measured attention core time", fontsize=8)
    axes[2].set_ylabel("achieved GFLOP/s (core)")
    axes[2].set_title("(c) achieved throughput", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.suptitle("Figure 14 analogue: one spatial (dashed) and one temporal (solid) attention layer, "
                 "ModelScope level 0", fontsize=9)
    return figure_to_img(fig, alt="Figure 14: attention FLOPs and time vs frames")


def fits_table(record: RunRecord) -> pd.DataFrame | None:
    fits = record.tables.get("fits")
    if fits is None or fits.empty:
        return None
    f = fits[fits["variant"] == "standard"]
    wide = f.pivot_table(index=["image_size", "layer", "backend"], columns="quantity", values="exponent",
                         sort=False)
    wide.columns.name = None
    return wide.reset_index()


def crossover_table(record: RunRecord) -> pd.DataFrame | None:
    cross = record.tables.get("crossover")
    if cross is None or cross.empty:
        return None
    rows = []
    for r in cross.to_dict("records"):
        row = {"image size": r["image_size"], "latent H*W": r["hw"],
               "predicted F (FLOP model)": f"{r['predicted_frames']} ({r['predicted_status']})"}
        for key, value in r.items():
            if key.startswith("measured_") and key.endswith("_frames"):
                status = r.get(key.replace("_frames", "_status"), "")
                label = key.removeprefix("measured_").removesuffix("_frames").replace("_", " ")
                row[f"measured ({label})"] = (f"{_fmt(value, '{:.3g}')} ({status})" if np.isfinite(float(value))
                                              else str(status))
        rows.append(row)
    return pd.DataFrame(rows)


def intensity_table(record: RunRecord) -> pd.DataFrame | None:
    points = record.tables.get("points")
    if points is None or points.empty:
        return None
    std = points[points["variant"] == "standard"]
    size = max(std["image_size"])
    sel = std[std["image_size"] == size]
    wide = sel.pivot_table(index=["frames", "backend"], columns="layer",
                           values=["core_ai", "core_gflops_per_s", "core_gb_per_s"], sort=False)
    wide.columns = [f"{a} ({b})" for a, b in wide.columns]
    out = wide.reset_index()
    out.insert(0, "image_size", size)
    return out


# ----------------------------------------------------------------------------------------------------
@section(STUDY, title="The temporal dimension: spatial vs temporal attention (paper Figures 11-14)", order=40,
         fill_command=FILL_COMMAND)
def temporal_section(store: ResultsStore) -> list[str]:
    splits = [r for r in (_newest(store, w) for w in SPLIT_WORKLOADS) if r is not None and "summary" in r.tables]
    sweep = _newest(store, SWEEP_WORKLOAD)
    if not splits and sweep is None:
        return []
    out = [paragraph(
        "Figure 11 of the paper: spatial attention folds frames into the batch (q: [B*F, heads, H*W, d]); temporal "
        "attention folds space into the batch (q: [B*H*W, heads, F, d]), so its sequence is the frame count. The "
        "paper (Golden et al., Section VI-A) finds that in Make-A-Video temporal attention takes 2x the time of "
        "spatial attention with 9x fewer FLOPs, and over 60% of all attention time.")]
    for record in splits:
        img = figure12(record)
        out.append(f"<h3>Figure 12: spatial vs temporal attention in {esc(record.workload)}</h3>")
        if img is not None:
            out.append(img)
        out.append(table_html(split_table(record), float_format=None))
        keys = ("temporal-time", "temporal-flops") if record.workload == "make-a-video" else ()
        out.append(verdict_caption(store, record, "(a) Time of spatial and temporal attention: the attention core "
                                   "plus the copies it needs (layout, head split/merge), mean per run over the "
                                   "repetitions; (b) their FLOPs, the two attention matmuls (2 x MACs). "
                                   "'+strided' = the opt-in frame-strided pass." + (
                                       "" if keys else " No verdict: the paper's numbers are for Make-A-Video."),
                                   f"Golden et al. Figure 12 (Make-A-Video; paper: {PAPER_TIME_RATIO:.0f}x time, "
                                   f"{PAPER_FLOPS_RATIO:.0f}x fewer FLOPs on an A100)", *keys))
        calls = calls_table(record)
        if calls is not None:
            out.append(details("Per attention site: layout, shape, calls, FLOPs and core time per call",
                               table_html(calls, float_format="{:,.4g}")))
    if sweep is not None:
        img = figure14(sweep)
        out.append("<h3>Figure 14: attention FLOPs and time vs frames</h3>")
        if img is not None:
            out.append(img)
        out.append(verdict_caption(store, sweep, "Spatial and temporal attention FLOPs and time vs frame count, one "
                                   "layer call at batch 1; FLOPs from the analytical model (equal to torch's FLOP "
                                   "counter); times are medians of interleaved repetitions.", "Golden et al. "
                                   "Figure 14", "temporal-quadratic", "temporal-crossover"))
        for title, table, fmt in (
                ("Fitted exponents k in F (y = A * F^k)", fits_table(sweep), "{:.3f}"),
                ("Crossover frame count (temporal >= spatial)", crossover_table(sweep), None),
                ("Why temporal attention is slow: arithmetic intensity (FLOP/byte, traffic model) and achieved "
                 "rates", intensity_table(sweep), "{:,.3g}")):
            if table is not None:
                out.append(f"<h4>{esc(title)}</h4>")
                out.append(table_html(table, float_format=fmt))
        out.append(paragraph(
            "Arithmetic intensity of the fused attention core = L / s FLOP per byte (s = bytes per element): "
            "H*W / s for spatial, F / s for temporal - temporal attention moves as many bytes per token as spatial "
            "but does F / (H*W) as much arithmetic with them, in B*H*W*heads tiny [F, d] x [d, F] problems."))
        speed = sweep.tables.get("speedup")
        if speed is not None and not speed.empty:
            out.append("<h4>Beyond the paper: frame-strided temporal attention (no layout copies)</h4>")
            out.append(table_html(speed[["image_size", "frames", "backend", "standard_layer_ms",
                                         "strided_layer_ms", "layer_speedup", "standard_layout_ms",
                                         "rel_error"]], float_format="{:,.4g}"))
            out.append(caption(sweep, "speedup = standard / strided layer time (same weights); rel_error = "
                                      "relative error of the strided layer's output vs the standard one"))
        counters = sweep.tables.get("counters")
        if counters is not None and not counters.empty:
            out.append("<h4>Hardware counters (Figure 13 analogue)</h4>")
            out.append(table_html(counters, float_format="{:,.4g}"))
        notes = sweep.tables.get("notes")
        if notes is not None and not notes.empty:
            out += [paragraph(f"Note: {n}") for n in notes["note"]]
    return out


__all__ = ["crossover_table", "figure12", "figure14", "fits_table", "split_table", "temporal_section"]
