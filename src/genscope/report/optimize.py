"""Report section of the ``optimization`` study: Chen et al. 2023's Table 1 (ablation of the GPU-aware
optimizations on one SD UNet step) and Table 2 (Winograd tile sizes), from stored runs only.

Stored tables read (``genscope optimize stable-diffusion --ablation --winograd-table``):

* ``ablation``: ``row, passes, dtype, time_ms, speedup, time_min_ms, time_max_ms, spread_pct, peak_tensor_mb,
  weight_mb, max_rel_error, rel_error, gflops_per_s, dominant_op_class, dominant_share_pct, swaps, repeats``;
* ``class_time``: ``row, op_class, time_ms, share_pct`` (one profiled step per row);
* ``settings``: one row (workload, preset, image_size, dtype, device, repeats, threads, ...);
* ``notes``: what the passes did not do, and why;
* ``winograd``: one row per tile (analytical and measured multipliers, time vs direct convolution);
* ``winograd_error``: tile x dtype x product precision: relative errors and the oracle's verdict.
"""

from __future__ import annotations

import pandas as pd

from genscope.report.sections import (
    caption,
    details,
    figure_to_img,
    new_figure,
    paragraph,
    section,
    table_html,
    verdict_caption,
)
from genscope.results.store import ResultsStore, RunRecord

STUDY = "optimization"
FILL_COMMAND = "genscope optimize stable-diffusion --ablation --winograd-table"
CLASS_COLORS: dict[str, str] = {
    "Attention": "#d62728", "Convolution": "#1f77b4", "Linear": "#ff7f0e", "GroupNorm": "#2ca02c",
    "LayerNorm": "#98df8a", "Activation": "#9467bd", "Elementwise": "#8c564b", "Softmax": "#e377c2",
    "Memory": "#7f7f7f", "Communication": "#bcbd22", "Other": "#c7c7c7",
}
ABLATION_SHOWN = ["row", "time_ms", "spread_pct", "speedup", "peak_tensor_mb", "weight_mb", "max_rel_error",
                  "gflops_per_s", "dominant_op_class", "swaps"]
WINOGRAD_SHOWN = ["tile", "flops_saving", "paper_flops_saving", "tensor_multiplier", "paper_tensor_multiplier",
                  "measured_peak_tensor_multiplier", "direct_peak_tensor_multiplier", "weight_multiplier",
                  "paper_weight_multiplier", "measured_weight_multiplier", "speedup_vs_direct"]


PRESET_ORDER = ("paper", "small", "tiny")  # the preset drawn first: the largest stored


def _runs_with(store: ResultsStore, table: str) -> dict[str, RunRecord]:
    """preset -> the newest stored run of this study holding ``table`` (non-empty)."""
    runs = store.list_runs(study=STUDY)
    out: dict[str, RunRecord] = {}
    if runs is None or len(runs) == 0:
        return out
    for run_id in reversed(list(runs["id"])):
        preset = str(runs.loc[runs["id"] == run_id, "preset"].iloc[0])
        if preset in out:
            continue
        record = store.load_run(int(run_id))
        if table in record.tables and len(record.tables[table]):
            out[preset] = record
    return out


def _preferred(records: dict[str, RunRecord]) -> RunRecord | None:
    for preset in PRESET_ORDER:
        if preset in records:
            return records[preset]
    return next(iter(records.values()), None)


def ablation_figure(ablation: pd.DataFrame, class_time: pd.DataFrame | None) -> str | None:
    if ablation.empty:
        return None
    fig = new_figure(9.0, 4.2)
    ax_t, ax_m = fig.subplots(1, 2, width_ratios=[3, 2])
    labels = list(ablation["row"])
    ypos = list(range(len(labels)))[::-1]
    if class_time is not None and not class_time.empty:
        # bars stacked by operator class, scaled so that each bar's length is the row's measured latency
        left = [0.0] * len(labels)
        for cls, color in CLASS_COLORS.items():
            widths = []
            for i, row in enumerate(labels):
                sub = class_time[class_time["row"] == row]
                total = float(sub["time_ms"].sum())
                part = float(sub.loc[sub["op_class"] == cls, "time_ms"].sum())
                widths.append(float(ablation["time_ms"].iloc[i]) * part / total if total > 0 else 0.0)
            if any(w > 0 for w in widths):
                ax_t.barh(ypos, widths, left=left, color=color, label=cls)
                left = [a + b for a, b in zip(left, widths, strict=True)]
        ax_t.legend(fontsize=7, loc="lower right")
    else:
        ax_t.barh(ypos, ablation["time_ms"], color="#1f77b4")
    ax_t.errorbar(ablation["time_ms"], ypos, xerr=[ablation["time_ms"] - ablation["time_min_ms"],
                                                   ablation["time_max_ms"] - ablation["time_ms"]],
                  fmt="none", ecolor="black", capsize=3)
    ax_t.set_yticks(ypos, labels, fontsize=8)
    ax_t.set_xlabel("one UNet step with CFG (ms); whiskers: min-max of the repetitions")
    ax_m.barh(ypos, ablation["peak_tensor_mb"], color="#9467bd", label="peak tensors")
    ax_m.barh([y - 0.35 for y in ypos], ablation["weight_mb"], height=0.3, color="#bcbd22", label="weights")
    ax_m.set_yticks(ypos, [""] * len(labels))
    ax_m.set_xlabel("memory (MB)")
    ax_m.legend(fontsize=7)
    return figure_to_img(fig, alt="ablation: latency by operator class and memory per row")


@section(STUDY, title="GPU-aware diffusion optimizations (Chen et al. 2023, Tables 1 and 2)", order=60,
         fill_command=FILL_COMMAND)
def optimize_section(store: ResultsStore) -> list[str]:
    ablation_runs = _runs_with(store, "ablation")
    ablation_run = _preferred(ablation_runs)
    winograd_run = _preferred(_runs_with(store, "winograd"))
    if ablation_run is None and winograd_run is None:
        return []
    out = [paragraph(
        "Chen et al. (\"Speed Is All You Need\", 2023) speed up one Stable Diffusion UNet step on mobile GPUs with "
        "a partially fused softmax, fused GroupNorm/GELU kernels, flash attention where it wins and Winograd "
        "convolution (Table 1: 1098 -> 525 ms on a Samsung S23 Ultra). genscope applies the same optimizations as "
        "opt-in passes (each a logged module swap meeting a numerical oracle: at most 2x the unoptimized "
        "module's error against float64) plus CPU-specific ones (bf16 weights, channels-last), and measures "
        "each row with interleaved repetitions.")]
    if ablation_run is not None:
        t = ablation_run.tables
        ablation = t["ablation"]
        settings = t.get("settings")
        where = ""
        if settings is not None and len(settings):
            s = settings.iloc[0]
            where = (f"{s['workload']} @ {s['preset']}, {s['image_size']}x{s['image_size']} pixels, "
                     f"{s['threads']} threads, median of {s['repeats']} interleaved repetitions")
        out.append("<h3>Table 1: one UNet step with classifier-free guidance under cumulative passes</h3>")
        img = ablation_figure(ablation, t.get("class_time"))
        if img is not None:
            out.append(img)
        shown = [c for c in ABLATION_SHOWN if c in ablation.columns]
        out.append(table_html(ablation[shown], float_format="{:,.3g}"))
        out.append(verdict_caption(store, ablation_run, "Latency of one UNet step by operator class (left) and its "
                                   "memory (right) as each pass is added.", "Chen et al. Table 1", "chen-latency",
                                   "chen-tensor-memory", "chen-winograd-weights"))
        out.append(caption(ablation_run, f"{where}. Peak tensor memory: peak of new tensor bytes during one step "
                                         "(the output included); weights: parameters and buffers of the "
                                         "configured model; error: max |y - y0| / max |y0| against the float32 "
                                         "baseline's output; dominant class: from one profiled step"))
        notes = t.get("notes")
        if notes is not None and len(notes):
            out.append(details("What the passes did not do, and why",
                               "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes["note"]) + "</ul>"))
        from genscope.studies.optimization import PAPER_TABLE1

        out.append(details("Paper values (Chen et al. 2023, Table 1; mobile GPUs, ms and MB)",
                           table_html(PAPER_TABLE1, float_format="{:,.0f}")))
        for preset, record in ablation_runs.items():
            if record is ablation_run:
                continue
            other = record.tables["ablation"]
            out.append(details(f"Table 1 at preset {preset} (newest stored run)",
                               table_html(other[[c for c in ABLATION_SHOWN if c in other.columns]],
                                          float_format="{:,.3g}") + caption(record)))
        swaps = t.get("swaps")
        if swaps is not None and len(swaps):
            summary = swaps.groupby(["row", "pass", "new_class"], as_index=False, sort=False).size()
            out.append(details("Swaps per row (module class installed, count)", table_html(summary, float_format=None)))
    if winograd_run is not None:
        t = winograd_run.tables
        table = t["winograd"]
        layer = table["layer"].iloc[0] if "layer" in table.columns else ""
        out.append("<h3>Table 2: Winograd F(m x m, 3x3) against direct 3x3 convolution</h3>")
        out.append(table_html(table[[c for c in WINOGRAD_SHOWN if c in table.columns]], float_format="{:,.3g}"))
        out.append(verdict_caption(store, winograd_run, "Winograd tile sizes: FLOP saving and memory multipliers.",
                                   "Chen et al. Table 2", "chen-winograd-tiles"))
        out.append(caption(winograd_run, f"analytical columns: 9m^2/(m+2)^2 multiplications saved, (m+2)^2/m^2 "
                                         f"transformed-input and (m+2)^2/9 transformed-weight multipliers (paper: "
                                         f"Table 2); measured on {layer}: U bytes / weight bytes, peak new bytes / "
                                         "input bytes, time vs direct convolution"))
        err = t.get("winograd_error")
        if err is not None and len(err):
            out.append(table_html(err[["variant", "dtype", "points", "rel_error", "direct_rel_error", "error_ratio",
                                       "oracle_ok"]], float_format="{:,.3g}"))
            out.append(caption(winograd_run, "relative L2 error against direct convolution in float64 on a "
                                             "128-channel layer with SiLU inputs; the oracle accepts at most 2x "
                                             "direct convolution's error in the same precision; fp32-product: U "
                                             "and V kept in float32 in a 16-bit model"))
    return out


def _esc(text: object) -> str:
    from genscope.report.sections import esc

    return esc(text)
