"""Report sections of the analytical characterization: FLOPs (Sections II-C / IV-B), Table I, Figure 5.

Stored tables read (newest run wins; all drawn from the store, nothing recomputed):

* ``flops`` runs (one per workload): ``summary`` (one row), ``phases`` (phase, entries, flops, ...),
  ``classes`` (op_class, flops, ...);
* ``taxonomy`` runs (workload ``suite``): ``taxonomy``, ``thresholds``, ``paper``;
* ``roofline`` runs (workload ``suite``): ``points``, ``devices``, ``workloads``.
"""

from __future__ import annotations

import math

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
from genscope.workloads.registry import SUITE

CLASS_COLORS = {
    "Attention": "#d62728", "Convolution": "#1f77b4", "Linear": "#ff7f0e", "GroupNorm": "#2ca02c",
    "LayerNorm": "#98df8a", "Activation": "#9467bd", "Elementwise": "#8c564b", "Softmax": "#e377c2",
    "Memory": "#7f7f7f", "Communication": "#bcbd22", "Other": "#c7c7c7",
}
FAMILY_MARKERS = {"diffusion": "o", "transformer": "s"}


def _latest_per_workload(store: ResultsStore, study: str, preset: str | None = None) -> list[RunRecord]:
    runs = store.list_runs(study=study)
    runs = runs[runs["status"] == "complete"]
    if preset is not None:
        runs = runs[runs["preset"] == preset]
    if runs.empty:
        return []
    newest = runs.sort_values("id").groupby("workload", sort=False).tail(1)
    order = {w: i for i, w in enumerate(SUITE)}
    newest = newest.assign(_o=newest["workload"].map(lambda w: order.get(w, len(order)))).sort_values(["_o", "id"])
    return [store.load_run(int(i)) for i in newest["id"]]


def _tflops(x: float) -> float:
    return float(x) / 1e12


# ----------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------
def flops_overview(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        s = r.tables["summary"].iloc[0]
        rows.append({"workload": r.workload, "preset": r.preset, "steps": s.get("steps"),
                     "image_size": s.get("image_size"), "frames": s.get("frames"),
                     "decode_tokens": s.get("decode_tokens"), "guidance": s.get("guidance_scale"),
                     "tflops_per_image": _tflops(s["flops_per_image"]), "tmacs_per_image": _tflops(s["flops_per_image"]) / 2,
                     "attention_tflops": _tflops(s["attention_flops"]), "softmax_tflops": _tflops(s["softmax_flops"]),
                     "params_b": s["params"] / 1e9,
                     "flops_per_param_byte": s["ai_flops_per_param_byte"],
                     "flops_per_byte_moved": s["ai_flops_per_byte_moved"]})
    return pd.DataFrame(rows)


def flops_class_figure(records: list[RunRecord]) -> str | None:
    parts = []
    for r in records:
        c = r.tables.get("classes")
        if c is None or c.empty:
            continue
        total = float(c["flops"].sum())
        if total <= 0:
            continue
        parts.append((r.workload, c.set_index("op_class")["flops"] / total))
    if not parts:
        return None
    fig = new_figure(max(6.0, 0.9 * len(parts) + 3.0), 4.0)
    ax = fig.add_subplot()
    classes = [c for c in CLASS_COLORS if any(c in p.index and p[c] > 0 for _, p in parts)]
    for i, (_name, share) in enumerate(parts):
        bottom = 0.0
        for cls in classes:
            h = float(share.get(cls, 0.0))
            if h > 0:
                ax.bar(i, h, 0.7, bottom=bottom, color=CLASS_COLORS[cls], label=cls, edgecolor="white", linewidth=0.3)
                bottom += h
    ax.set_xticks(range(len(parts)), [p[0] for p in parts], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of FLOPs")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(list(unique.values()), list(unique), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              frameon=False)
    ax.set_title("FLOPs per operator class (Attention: QK^T and @V; softmax apart)", fontsize=10)
    return figure_to_img(fig, alt="FLOPs per operator class")


@section("flops", title="FLOPs per workload (analytical)", order=20,
         fill_command="genscope flops stable-diffusion --preset paper")
def flops_section(store: ResultsStore) -> list[str]:
    records = _latest_per_workload(store, "flops")
    if not records:
        return []
    out = [paragraph("FLOPs of one full run per workload, counted with torch.utils.flop_counter on the stored "
                     "settings (classifier-free guidance and every step included because the run does them). "
                     "FLOPs = 2 x MACs; attention FLOPs are the two matmuls (4*B*H*Lq*Lk*d), softmax apart; "
                     "per image = total / batch.")]
    out.append(table_html(flops_overview(records), float_format="{:,.3f}"))
    out.append(caption(records))
    img = flops_class_figure(records)
    if img:
        out += [img, caption(records, "Share of each workload's counted FLOPs per operator class at the paper "
                                      "preset. No figure of the paper mirrors it (Section II-C discusses FLOPs "
                                      "per image); the arithmetic-intensity findings use these counts")]
    phase_rows = []
    for r in records:
        ph = r.tables.get("phases")
        if ph is None:
            continue
        for _, p in ph.iterrows():
            if p["flops"] > 0:
                phase_rows.append({"workload": r.workload, "phase": p["phase"], "entries": p["entries"],
                                   "tflops": _tflops(p["flops"]), "tflops_per_entry": _tflops(p["flops_per_entry"]),
                                   "share": p["share"]})
    if phase_rows:
        out += ["<h3>Per phase</h3>", table_html(pd.DataFrame(phase_rows), float_format="{:,.4f}"), caption(records)]
    return out


# ----------------------------------------------------------------------------------------------------
# Table I
# ----------------------------------------------------------------------------------------------------
AGREES_TEXT = {True: "agrees", False: "differs", None: "-"}


def table_one(table_i: pd.DataFrame) -> str:
    """Table I in the paper's layout: per row and model, the paper's value, genscope's, agree/differ, why."""
    rows = []
    for r in table_i.itertuples():
        agrees = None if r.agrees is None or (isinstance(r.agrees, float) and math.isnan(r.agrees)) else bool(r.agrees)
        cls = {True: "v0", False: "v2", None: "v4"}[agrees]
        rows.append(f"<tr><td>{esc(r.row)}</td><td>{esc(r.workload)}</td><td>{esc(r.paper)}</td>"
                    f"<td>{esc(r.genscope)}</td><td class=\"verdict {cls}\">{AGREES_TEXT[agrees]}</td>"
                    f"<td>{esc(r.why)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Table I row", "model", "paper (Table I)", "genscope (derived)",
                                             "agree?", "why they differ"))
    return (f'<table class="data findings"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


@section("taxonomy", title="Table I: taxonomy of the suite", order=21, fill_command="genscope taxonomy")
def taxonomy_section(store: ResultsStore) -> list[str]:
    record = store.latest("taxonomy")
    if record is None or "taxonomy" not in record.tables:
        return []
    out = [paragraph("The paper's Table I (Golden et al. v2) row by row: its value, in its units, next to the value "
                     "genscope derives from the paper-scale config of the open model that stands in for it, and "
                     "why they differ where they do. Num Params: the networks the paper counts (cascade UNets for "
                     "Imagen, encoder + decoder for Parti) next to the whole pipeline; Attn Res: feature-map sizes "
                     "for Imagen, downsampling factors for Stable Diffusion, as the paper writes them. Compute / "
                     "memory / latency classes follow genscope's stated thresholds (below).")]
    table_i = record.tables.get("table_i")
    if table_i is not None and len(table_i):
        out += [table_one(table_i), verdict_caption(store, record, "Table I, aligned.", "Golden et al. Table I",
                                                    "table1-classes")]
    table = record.tables["taxonomy"].copy()
    for col in ("params", "network_params", "main_params"):
        if col in table.columns:
            table[col] = table[col].map(lambda p: "" if pd.isna(p) else f"{p / 1e9:.2f}B")
    if "flops_per_image" in table.columns:
        table["flops_per_image"] = table["flops_per_image"].map(
            lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 1e12:,.1f} TFLOP")
    if "param_bytes_fp16" in table.columns:
        table["param_bytes_fp16"] = table["param_bytes_fp16"].map(lambda x: f"{x / 1e9:,.1f} GB")
    drop = [c for c in ("paper_model", "cross_attn_dim") if c in table.columns]
    wide = table.drop(columns=drop).set_index("workload").T.reset_index().rename(columns={"index": "row"})
    out.append(details("Every derived value, the whole suite", table_html(wide, float_format="{:,.0f}")
                       + caption(record)))
    if "thresholds" in record.tables:
        out.append(details("Class thresholds", table_html(record.tables["thresholds"], float_format="{:g}")))
    return out


# ----------------------------------------------------------------------------------------------------
# Figure 5
# ----------------------------------------------------------------------------------------------------
def roofline_figure(points: pd.DataFrame, devices: pd.DataFrame, definition: str, record: RunRecord) -> str | None:
    pts = points[(points["scope"] == "total") & (points["definition"] == definition)]
    if pts.empty:
        return None
    fig = new_figure(8.5, 4.8)
    ax = fig.add_subplot()
    intensities = pts["intensity_flops_per_byte"].astype(float)
    lo = max(min(float(intensities.min()), float(devices["ridge_flops_per_byte"].min())) / 10, 1e-2)
    hi = max(float(intensities.max()), float(devices["ridge_flops_per_byte"].max())) * 10
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    styles = ["-", "--", ":", "-."]
    for i, (_, d) in enumerate(devices.iterrows()):
        ys = [min(d["peak_flops_per_s"], x * d["bandwidth_bytes_per_s"]) for x in xs]
        ax.plot(xs, ys, styles[i % len(styles)], color="black", linewidth=1.2,
                label=f"{d['device']} ({d['dtype']})")
    cmap = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    first_device = devices.iloc[0]["device"]
    for i, (name, group) in enumerate(pts.groupby("workload", sort=False)):
        on_first = group[group["device"] == first_device]
        for _, p in on_first.iterrows():
            ax.scatter(p["intensity_flops_per_byte"], p["attainable_flops_per_s"], color=cmap[i % len(cmap)],
                       s=40, zorder=3, label=name)
        for _, p in group[group["device"] != first_device].iterrows():
            ax.scatter(p["intensity_flops_per_byte"], p["attainable_flops_per_s"], color=cmap[i % len(cmap)],
                       s=25, marker="x", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte): " + ("FLOPs per image / parameter bytes" if definition ==
                                                          "params" else "FLOPs / bytes moved"))
    ax.set_ylabel("attainable FLOP/s")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"Roofline ({'paper definition' if definition == 'params' else 'bytes moved'}); "
                 f"dots: {first_device}, crosses: other devices", fontsize=10)
    return figure_to_img(fig, alt=f"Figure 5: roofline, {definition}")


@section("roofline", title="Figure 5: the suite on the roofline", order=22, fill_command="genscope roofline")
def roofline_section(store: ResultsStore) -> list[str]:
    record = store.latest("roofline")
    if record is None or "points" not in record.tables:
        return []
    points, devices = record.tables["points"], record.tables["devices"]
    out = [paragraph("Attainable FLOP/s = min(peak, intensity x bandwidth). Two intensities: FLOPs per image over "
                     "parameter bytes (the paper's definition, Section II-C) and FLOPs over bytes moved by eager "
                     "unfused execution (every op reads its inputs and writes its outputs).")]
    for definition in ("params", "moved"):
        img = roofline_figure(points, devices, definition, record)
        if img and definition == "params":
            out += [img, verdict_caption(store, record, "Each workload at its FLOPs per parameter byte (the paper's "
                                         "definition) under the device rooflines.", "Golden et al. Figure 5",
                                         "ai-gap", "ai-diffusion-vs-transformer")]
        elif img:
            out += [img, caption(record, "The same workloads at FLOPs per byte moved by eager unfused execution; "
                                         "beyond the paper (its Figure 5 uses parameter bytes)")]
    totals = points[points["scope"] == "total"][["workload", "definition", "intensity_flops_per_byte", "device",
                                                 "attainable_flops_per_s", "bound"]].copy()
    totals["attainable_tflops_per_s"] = totals.pop("attainable_flops_per_s") / 1e12
    out += [table_html(totals, float_format="{:,.3f}"), caption(record)]
    phases = points[(points["scope"] != "total")][["workload", "scope", "intensity_flops_per_byte", "device",
                                                   "bound"]]
    if len(phases):
        out += ["<h3>Per phase (bytes moved)</h3>", table_html(phases, float_format="{:,.2f}")]
    out += ["<h3>Ceilings</h3>", table_html(devices, float_format="{:,.4g}")]
    return out
