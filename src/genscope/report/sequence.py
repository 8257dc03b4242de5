"""Report sections of the sequence-length studies, from stored tables only:

* ``seqlen``: Figure 8 (sequence length over one fundamental period, newest run per workload) and Figure 9
  (calls per sequence length per image size);
* ``memory-model``: the Section V-A similarity-matrix model vs the traced calls, d^2n vs d^n per level, the
  O(L^4) growth;
* ``image-scaling``: Figure 10 (convolution vs attention time over image sizes, baseline and flash);
* ``prefill-decode``: flash speedup vs query length with the workloads' own attention shapes (Table III).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from genscope.report.sections import (
    caption,
    figure_to_img,
    new_figure,
    paragraph,
    section,
    table_html,
    verdict_caption,
)
from genscope.results.store import ResultsStore, RunRecord


def _newest_per_workload(store: ResultsStore, study: str) -> list[RunRecord]:
    runs = store.list_runs(study=study)
    if runs.empty:
        return []
    runs = runs[runs["status"] == "complete"] if "status" in runs else runs
    newest = runs.groupby("workload")["id"].max().sort_values()
    return [store.load_run(int(i)) for i in newest]


# ----------------------------------------------------------------------------------------------------
@section("seqlen", title="Sequence length over inference (Figures 8 and 9)", order=50,
         fill_command="genscope seqlen stable-diffusion --preset paper --image-size 64 128 256 512 1024")
def seqlen_section(store: ResultsStore) -> list[str]:
    records = [r for r in _newest_per_workload(store, "seqlen") if "period" in r.tables]
    if not records:
        return []
    out = [paragraph("Each point is one attention call; the period is the minimum repeating pattern (one denoising "
                     "step of a diffusion model, the decode steps of an autoregressive model). Sequence length = "
                     "query length (key length for causal calls: the tokens in context).")]
    fig = new_figure(9.0, 2.6 * len(records))
    for i, record in enumerate(records):
        period = record.tables["period"]
        sizes = set(period["image_size"])
        size = 512 if 512 in sizes else max(sizes)  # the paper's Figure 8 shows Stable Diffusion at 512 px
        one = period[period["image_size"] == size]
        ax = fig.add_subplot(len(records), 1, i + 1)
        ax.plot(one["position"], one["seq_len"], linewidth=0.5, color="grey")
        for kind, g in one.groupby("kind"):  # e.g. Parti: causal self-attention grows, cross-attention stays
            ax.scatter(g["position"], g["seq_len"], s=8, label=kind)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel("sequence length")
        ax.set_title(f"{record.workload} @ {record.preset}" + (f", image {size}" if size else ""), fontsize=9)
    fig.axes[-1].set_xlabel("attention call in the period")
    out.append(figure_to_img(fig, "Figure 8: sequence length over one period"))
    out.append(verdict_caption(store, records, "Sequence length of each attention call over one fundamental period, "
                               "per workload.", "Golden et al. Figure 8", "seqlen-step", "seqlen-u-shape"))
    for record in records:
        dist = record.tables.get("distribution")
        if dist is None or dist["image_size"].nunique() < 2:
            continue
        sizes = sorted(dist["image_size"].unique())
        buckets = sorted(dist["seq_len"].unique())
        fig = new_figure(9.0, 1.6 * len(sizes) + 0.6)
        for i, size in enumerate(sizes):
            d = dist[dist["image_size"] == size].set_index("seq_len")["fraction"]
            ax = fig.add_subplot(len(sizes), 1, i + 1)
            ax.bar(range(len(buckets)), [float(d.get(b, 0.0)) for b in buckets], color="#1f77b4")
            ax.set_ylabel(f"{size} px", fontsize=8)
            ax.set_xticks(range(len(buckets)), [str(b) for b in buckets] if i == len(sizes) - 1 else [])
            ax.tick_params(labelsize=7)
        fig.axes[0].set_title(f"{record.workload}: fraction of attention calls per sequence length, per image size",
                              fontsize=9)
        fig.axes[-1].set_xlabel("sequence length")
        out.append(figure_to_img(fig, "Figure 9: sequence-length distribution"))
        out.append(caption(record, "Fraction of attention calls per sequence length, one panel per image size. "
                                   "Mirrors Golden et al. Figure 9 (the distribution shifts right as the image "
                                   "grows; no number is claimed, so no verdict)"))
    summaries = pd.concat([r.tables["summary"] for r in records if "summary" in r.tables], ignore_index=True)
    if not summaries.empty:
        cols = [c for c in ("model", "preset", "image_size", "period_calls", "seq_len_min", "seq_len_max",
                            "max_over_min", "largest_consecutive_ratio", "calls_total") if c in summaries]
        out.append(table_html(summaries[cols], float_format="{:,.2f}"))
    return out


# ----------------------------------------------------------------------------------------------------
@section("memory-model", title="Similarity-matrix memory model (Section V-A)", order=51,
         fill_command="genscope memory-model stable-diffusion --image-size 256 512 1024")
def memory_model_section(store: ResultsStore) -> list[str]:
    records = [r for r in _newest_per_workload(store, "memory-model") if "check" in r.tables]
    if not records:
        return []
    out = [paragraph("bytes = element size x batch x sum over attention calls of heads x Lq x Lk, with "
                     "Lq = H_L W_L / d^2n at UNet level n (d = 2 per axis). The paper's first version writes d^n; "
                     "the traced lengths follow d^2n (per-axis downsampling by d shrinks H x W by d^2).")]
    for record in records:
        check = record.tables["check"]
        cols = [c for c in ("image_size", "component", "input_side", "batch", "calls_model", "calls_trace",
                            "calls_mismatched", "bytes_model", "bytes_trace", "exact") if c in check]
        out.append(f"<h4>{html.escape(record.workload)}: model vs trace</h4>")  # a stored field: escaped
        out.append(table_html(check[cols], float_format="{:,.0f}"))
        if "levels" in record.tables:
            out.append(table_html(record.tables["levels"], float_format="{:,.0f}"))
        scaling = record.tables.get("scaling")
        if scaling is not None and len(scaling) > 1:
            fig = new_figure(7.0, 3.5)
            ax = fig.add_subplot(1, 1, 1)
            ax.loglog(scaling["latent_side"], scaling["total_bytes"], marker="o", label="model (all calls)")
            ref = scaling["total_bytes"].iloc[-1] * (scaling["latent_side"] / scaling["latent_side"].iloc[-1]) ** 4
            ax.loglog(scaling["latent_side"], ref, linestyle="--", label="L^4")
            ax.set_xlabel("latent side L")
            ax.set_ylabel("similarity-matrix bytes per UNet forward")
            ax.legend(fontsize=8)
            out.append(figure_to_img(fig, "similarity-matrix memory vs latent side"))
            out.append(verdict_caption(store, record, "Similarity-matrix bytes of one UNet forward vs the latent "
                                       "side, with an L^4 reference line.", "Golden et al. Section V-A (its "
                                       "memory formula; no figure)", "memory-l4", "memory-d2n"))
        fit = record.tables.get("fit")
        if fit is not None and not fit.empty:
            out.append(table_html(fit, float_format="{:,.3f}"))
        out.append(caption(record))
    return out


# ----------------------------------------------------------------------------------------------------
@section("image-scaling", title="Convolution vs attention over image size (Figure 10)", order=52,
         fill_command="genscope scaling --preset small")
def image_scaling_section(store: ResultsStore) -> list[str]:
    record = store.latest("image-scaling")
    if record is None or "times" not in record.tables or record.tables["times"].empty:
        return []
    times = record.tables["times"]
    fig = new_figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"baseline": "-", "flash": "--"}
    colors = {"Convolution": "#1f77b4", "Attention": "#d62728"}
    for (backend, op_class), g in times[times["op_class"].isin(colors)].groupby(["backend", "op_class"]):
        g = g.sort_values("image_size")
        ax.loglog(g["image_size"], g["time_ms"], styles.get(backend, ":"), marker="o", color=colors[op_class],
                  label=f"{op_class} ({backend})")
    ax.set_xlabel("image size (pixels per side)")
    ax.set_ylabel("time (ms)")
    ax.legend(fontsize=8)
    out = [figure_to_img(fig, "Figure 10: convolution vs attention time over image size"),
           verdict_caption(store, record, "Convolution and attention time of the denoising step vs image size, "
                           "baseline (solid) and flash (dashed) attention, log-log.", "Golden et al. Figure 10",
                           "scaling-conv-vs-attention")]
    for name in ("slopes", "crossovers", "skipped"):
        df = record.tables.get(name)
        if df is not None and not df.empty:
            out.append(f"<h4>{name}</h4>")
            out.append(table_html(df, float_format="{:,.2f}"))
    return out


# ----------------------------------------------------------------------------------------------------
@section("prefill-decode", title="Prefill vs decode: flash speedup vs query length (Table III)", order=53,
         fill_command="genscope prefill-decode --preset small")
def prefill_decode_section(store: ResultsStore) -> list[str]:
    record = store.latest("prefill-decode")
    if record is None:
        return []
    sweep = record.tables.get("sweep", pd.DataFrame())
    shapes = record.tables.get("shapes", pd.DataFrame())
    if sweep.empty and shapes.empty:
        return []
    fig = new_figure(8.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    if not sweep.empty:
        ax.plot(sweep["query_len"], sweep["speedup"], marker="o", color="black",
                label=f"sweep, key length {int(sweep['key_len'].iloc[0])}")
    if not shapes.empty and "speedup" in shapes:
        timed = shapes[shapes["timed"].astype(bool) & np.isfinite(shapes["speedup"])]
        for family, g in timed.groupby("family"):
            ax.scatter(g["query_len"], g["speedup"], s=14 + 4 * np.log2(g["calls"].clip(lower=1)), alpha=0.7,
                       label=f"{family} (workload shapes)")
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_xlabel("query length (1 = decode)")
    ax.set_ylabel("flash speedup over baseline")
    ax.legend(fontsize=7)
    out = [figure_to_img(fig, "flash speedup vs query length"),
           verdict_caption(store, record, "Flash speedup over baseline attention vs query length: a sweep at one key "
                           "length, and each workload's own attention shapes.", "Golden et al. Table III "
                           "(prefill vs decode; the paper has no figure of it)", "prefill-decode")]
    workloads = record.tables.get("workloads")
    if workloads is not None and not workloads.empty:
        out.append(table_html(workloads, float_format="{:,.3f}"))
    return out
