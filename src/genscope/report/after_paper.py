"""Report section "After the paper: diffusion transformers" (issue 18), from stored runs only.

The five diffusion transformers of :data:`genscope.workloads.registry.AFTER_PAPER` (Flux, SD3.5, Wan 2.1,
CogVideoX, HunyuanVideo) came after Golden et al. (2023): no figure has a paper value or a verdict. Parts, each
drawn when its runs are stored and otherwise replaced by the command that stores them:

* ``flops`` runs of the five (newest per model, ``paper`` preset preferred): table ``summary`` (FLOPs per
  image, attention FLOPs) and ``classes`` (op_class, flops_per_image, share): FLOPs per image split into
  attention and the rest, and the share of each operator class;
* the newest ``dit-temporal`` run: ``models`` (one joint / 3-D attention call per model: similarity-matrix
  bytes, baseline vs flash), ``flops`` and ``crossover`` (factorized spatial + temporal vs full 3-D
  attention), ``memory``, optional ``scaling`` and ``time``;
* ``seqlen`` runs of ``wan`` and ``stable-diffusion`` (table ``period``): a DiT's constant sequence length
  against the UNet's U-shape;
* ``breakdown`` runs of the five (``small`` preferred): the operator breakdown, baseline vs flash, drawn by
  :func:`genscope.report.breakdown.figure7`.
"""

from __future__ import annotations

import pandas as pd

from genscope.instrument.opclasses import OP_CLASSES
from genscope.report.analysis import CLASS_COLORS, flops_class_figure, flops_overview
from genscope.report.breakdown import Breakdown, figure7
from genscope.report.sections import (
    caption_text,
    details,
    esc,
    figure_to_img,
    new_figure,
    paragraph,
    section,
    table_html,
)
from genscope.results.store import ResultsStore, RunRecord
from genscope.workloads.registry import AFTER_PAPER

DITS = tuple(AFTER_PAPER)
NO_PAPER = "These models came after the paper (2023): it has no value to compare with, so no verdict"
DIT_TEMPORAL_COMMAND = "genscope dit-temporal --preset paper --image-sizes 240,480,720 --measure"
MODE_STYLES = {"full": ("#d62728", "full 3-D attention (Wan)"),
               "factorized": ("#1f77b4", "factorized spatial + temporal (Make-A-Video)")}


def newest_run(store: ResultsStore, study: str, workload: str | None, preferred_preset: str) -> RunRecord | None:
    """The newest complete run of ``study`` (for ``workload``) at ``preferred_preset``, else at any preset."""
    return store.latest(study, workload=workload, preset=preferred_preset) or store.latest(study, workload=workload)


def missing(what: str, commands: list[str]) -> str:
    return (f'<div class="empty"><p>{esc(what)} is not stored yet. Run:</p><ul>'
            + "".join(f"<li><code>{esc(c)}</code></li>" for c in commands) + "</ul></div>")


def _shown(record_caption: str, shows: str) -> str:
    """A caption: what the figure shows, that there is no paper value, then the runs it rests on."""
    return f'<p class="caption">{esc(shows)} {esc(NO_PAPER)}. ({esc(record_caption)})</p>'


def _runs_text(records: list[RunRecord]) -> str:
    return caption_text(records)


# ----------------------------------------------------------------------------------------------------
def flops_part(store: ResultsStore) -> list[str]:
    records = [r for r in (newest_run(store, "flops", w, "paper") for w in DITS)
               if r is not None and "summary" in r.tables]
    absent = [w for w in DITS if w not in {r.workload for r in records}]
    out = ["<h3>FLOPs per image and attention's share</h3>"]
    if records:
        fig = new_figure(9.0, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        names = [r.workload for r in records]
        per_image = [float(r.tables["summary"].iloc[0]["flops_per_image"]) / 1e12 for r in records]
        attention = []
        for r in records:
            classes = r.tables.get("classes", pd.DataFrame(columns=["op_class", "flops_per_image"]))
            attention.append(float(classes.loc[classes["op_class"] == "Attention", "flops_per_image"].sum()) / 1e12)
        rest = [t - a for t, a in zip(per_image, attention, strict=True)]
        ax.bar(names, attention, color=CLASS_COLORS["Attention"], label="Attention (QK^T and @V)")
        ax.bar(names, rest, bottom=attention, color="#aaaaaa", label="everything else")
        for i, r in enumerate(records):
            classes = r.tables.get("classes")
            share = classes.loc[classes["op_class"] == "Attention", "share"] if classes is not None else []
            if len(share):
                ax.text(i, per_image[i], f"attention {float(share.iloc[0]):.0%}", ha="center", va="bottom",
                        fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("TFLOPs per image / video")
        ax.legend(fontsize=8)
        out.append(figure_to_img(fig, "FLOPs per image of the diffusion transformers, attention apart"))
        out.append(_shown(_runs_text(records), "FLOPs of one full generation per image or video (text encoders, "
                          "every denoising step with its guidance batch, decoder), the attention matmuls in red, "
                          "log scale; the label is attention's share of all counted FLOPs."))
        out.append(table_html(flops_overview(records), float_format="{:,.3f}"))
        img = flops_class_figure(records)
        if img:
            out += [img, _shown(_runs_text(records), "Share of each model's counted FLOPs per operator class.")]
    if absent:
        out.append(missing("The FLOP count of " + ", ".join(absent),
                           [f"genscope flops {w} --preset paper" for w in absent]))
    return out


# ----------------------------------------------------------------------------------------------------
def models_memory_part(record: RunRecord | None) -> list[str]:
    out = ["<h3>Similarity-matrix memory of one attention call: baseline vs flash</h3>"]
    models = None if record is None else record.tables.get("models")
    if models is None or models.empty:
        return out + [missing("The dit-temporal study", [DIT_TEMPORAL_COMMAND])]
    table = models.copy()
    table["baseline_matrix_gib"] = table["baseline_matrix_bytes"] / 2**30
    out.append(paragraph("One joint (text + image) or full 3-D attention call of each model at its paper preset: "
                         "the similarity matrix (batch x heads x tokens^2) baseline attention materializes, and "
                         "flash attention, which materializes none."))
    out.append(table_html(table, float_format="{:,.2f}"))
    out.append(_shown(_runs_text([record]), "Similarity-matrix bytes per call, baseline vs flash (0)."))
    return out


def temporal_part(record: RunRecord | None) -> list[str]:
    out = ["<h3>Factorized spatial + temporal vs full 3-D attention</h3>"]
    flops = None if record is None else record.tables.get("flops")
    if flops is None or flops.empty:
        return out + [missing("The dit-temporal study", [DIT_TEMPORAL_COMMAND])]
    crossover = record.tables.get("crossover", pd.DataFrame())
    fig = new_figure(9.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for mode, g in flops.groupby("mode", sort=False):
        color, label = MODE_STYLES.get(str(mode), ("#000000", str(mode)))
        g = g.sort_values("frames")
        ax.plot(g["frames"], g["attention_flops"], marker="o", color=color, label=f"{label}: attention")
        ax.plot(g["frames"], g["other_flops"], linestyle="--", color=color, label=f"{label}: everything else")
    beyond = []  # crossovers past the counted frames: in the crossover table, not drawn (they would squash the axis)
    for row in crossover.itertuples():
        if row.crossover_frames is None or row.crossover_frames != row.crossover_frames:
            continue
        if float(row.crossover_frames) <= float(flops["frames"].max()):
            color, _ = MODE_STYLES.get(str(row.mode), ("#000000", ""))
            ax.axvline(float(row.crossover_frames), color=color, linewidth=0.7, linestyle=":")
        else:
            beyond.append(f"{row.mode} at {int(row.crossover_frames)} frames")
    ax.set_yscale("log")
    ax.set_xlabel("video frames")
    ax.set_ylabel("FLOPs per denoising step (whole transformer)")
    ax.legend(fontsize=7)
    out.append(figure_to_img(fig, "factorized vs full 3-D attention FLOPs over frames"))
    out.append(_shown(_runs_text([record]), f"FLOPs per denoising step of a Wan transformer ({record.preset} "
                      "preset) over the frame count: attention matmuls (solid) vs everything else (dashed), full "
                      "3-D attention vs factorized spatial + temporal attention on the same blocks; dotted lines: "
                      "the frame count from which attention costs more than the rest"
                      + (f" (beyond the counted frames, not drawn: {'; '.join(beyond)})." if beyond else ".")))
    out.append(table_html(flops, float_format="{:,.4g}"))
    if not crossover.empty:
        out += ["<h4>crossover</h4>", table_html(crossover, float_format="{:,.3g}")]
    scaling = record.tables.get("scaling")
    if scaling is not None and not scaling.empty:
        fig = new_figure(8.0, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        for height, g in scaling.groupby("height"):
            g = g.sort_values("frames")
            ax.plot(g["frames"], g["attention_share"], marker="o", label=f"{height} px high")
        ax.set_xlabel("video frames")
        ax.set_ylabel("attention's share of FLOPs")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        out.append(figure_to_img(fig, "full 3-D attention share of FLOPs over resolution and length"))
        out.append(_shown(_runs_text([record]), "Full 3-D attention's share of the transformer step's FLOPs as "
                          "resolution (one line per height) and length (frames) grow."))
    for name in ("memory", "time"):
        df = record.tables.get(name)
        if df is not None and not df.empty:
            out.append(details(f"{name} table", table_html(df, float_format="{:,.4g}")))
    return out


# ----------------------------------------------------------------------------------------------------
def _period_at(record: RunRecord, size: int | None) -> tuple[pd.DataFrame, object]:
    period = record.tables["period"]
    sizes = sorted(set(period["image_size"]))
    chosen = size if size in sizes else sizes[-1]
    return period[period["image_size"] == chosen], chosen


def seqlen_part(store: ResultsStore) -> list[str]:
    out = ["<h3>Sequence length: constant in a DiT, U-shaped in a UNet</h3>"]
    panels = []
    for workload, size in (("wan", None), ("stable-diffusion", 512)):  # Figure 8 shows SD at 512 px
        record = newest_run(store, "seqlen", workload, "paper")
        if record is not None and "period" in record.tables and not record.tables["period"].empty:
            panels.append((record, *_period_at(record, size)))
    if panels:
        fig = new_figure(9.0, 2.4 * len(panels) + 0.4)
        for i, (record, period, size) in enumerate(panels):
            ax = fig.add_subplot(len(panels), 1, i + 1, sharey=fig.axes[0] if i else None)  # one length scale
            ax.plot(period["position"], period["seq_len"], linewidth=0.5, color="grey")
            for kind, g in period.groupby("kind"):
                ax.scatter(g["position"], g["seq_len"], s=8, label=str(kind))
            ax.set_yscale("log")
            ax.set_ylabel("sequence length")
            ax.legend(fontsize=7, loc="upper right")
            ax.set_title(f"{record.workload} @ {record.preset}, image {size}", fontsize=9)
        fig.axes[-1].set_xlabel("attention call in one denoising step")
        records = [p[0] for p in panels]
        out.append(figure_to_img(fig, "sequence length per attention call: DiT vs UNet"))
        out.append(_shown(_runs_text(records), "Sequence length of every attention call in one denoising step "
                          "(log scale, shared by the panels): the diffusion transformer attends over the same tokens in every block, "
                          "the UNet's lengths shrink by 4 per level and grow back (Stable Diffusion is the "
                          "paper's; its U-shape is checked against the paper in the sequence-length section)."))
        summaries = [r.tables["summary"].assign(workload=r.workload) for r in records if "summary" in r.tables]
        if summaries:
            summary = pd.concat(summaries, ignore_index=True)
            cols = [c for c in ("workload", "image_size", "period_calls", "seq_len_min", "seq_len_max",
                                "max_over_min") if c in summary]
            out.append(table_html(summary[cols], float_format="{:,.2f}"))
    shown = {p[0].workload for p in panels}
    absent = [w for w in ("wan", "stable-diffusion") if w not in shown]
    if absent:
        out.append(missing("The sequence-length trace of " + ", ".join(absent),
                           [f"genscope seqlen {w} --preset paper" for w in absent]))
    return out


# ----------------------------------------------------------------------------------------------------
def breakdown_part(store: ResultsStore) -> list[str]:
    out = ["<h3>Operator breakdown, baseline vs flash attention</h3>"]
    records = [r for r in (newest_run(store, "breakdown", w, "small") for w in DITS)
               if r is not None and "class_time" in r.tables]
    if records:
        class_time = pd.concat([r.tables["class_time"].assign(workload=r.workload) for r in records],
                               ignore_index=True)
        class_time["op_class"] = class_time["op_class"].where(class_time["op_class"].isin(OP_CLASSES), "Other")
        speedup = pd.concat([r.tables["speedup"].assign(workload=r.workload) for r in records
                             if "speedup" in r.tables], ignore_index=True) if any(
            "speedup" in r.tables for r in records) else pd.DataFrame(columns=["workload"])
        data = Breakdown(records, class_time, speedup, [r.workload for r in records], 0,
                         {r.workload: r for r in records})
        drawn = figure7(data)
        if drawn is not None:
            img, clipped = drawn
            out.append(img)
            extra = f" Bars clipped (height written on them): {', '.join(clipped)}." if clipped else ""
            out.append(_shown(_runs_text(records), "Execution time per operator class of a whole generation, "
                              "baseline (B) and flash (F) attention, normalized to baseline; the label over F is "
                              "the end-to-end speedup." + extra))
        cols = [c for c in ("workload", "e2e_speedup", "attention_speedup", "attention_share_baseline",
                            "baseline_ms", "flash_ms", "stable") if c in speedup]
        if len(cols) > 1:
            out.append(table_html(speedup[cols], float_format="{:,.3f}"))
    absent = [w for w in DITS if w not in {r.workload for r in records}]
    if absent:
        out.append(missing("The operator breakdown of " + ", ".join(absent),
                           [f"genscope profile {w} --preset small" for w in absent]))
    return out


@section("after-paper", title="After the paper: diffusion transformers", order=90,
         fill_command="genscope characterize")
def after_paper_section(store: ResultsStore) -> list[str]:
    temporal = newest_run(store, "dit-temporal", None, "paper")
    stored = [newest_run(store, "flops", w, "paper") for w in DITS] + [temporal] + \
        [newest_run(store, "breakdown", w, "small") for w in DITS] + [newest_run(store, "seqlen", "wan", "paper")]
    if not any(stored):
        return []  # listed under "Not stored yet" with its command
    return ([paragraph("Text-to-image and text-to-video moved after the paper from UNets to diffusion transformers "
                       "(FLUX.1-dev, SD3.5 Large, Wan 2.1, CogVideoX-5B, HunyuanVideo) with joint text + image "
                       "attention and full 3-D attention over every video token. The paper has no values for them.")]
            + flops_part(store) + models_memory_part(temporal) + temporal_part(temporal) + seqlen_part(store)
            + breakdown_part(store))
