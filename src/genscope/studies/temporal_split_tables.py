"""The in-model split's summary tables (:mod:`genscope.studies.temporal_split`): one summary row per backend and
variant (headline times, ratios, shares), the per-site calls table, and the FLOPs and bytes added to the summary.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

GROUPS = ("spatial", "temporal")
COMPONENTS = ("core", "head_layout", "layout", "projections", "attention_other")
# What "attention time" means in the headline comparison (Figure 12a): the computation and the copies it needs.
HEADLINE_COMPONENTS = ("core", "head_layout", "layout")


def summary_row(workload: str, backend: str, variant: str, totals: dict, component_ms: float,
                 wall_ms: float) -> dict:
    def ms(group: str, comps: Iterable[str]) -> float:
        return float(sum(totals.get((group, c), 0.0) for c in comps))

    row = {"workload": workload, "attention": backend, "variant": variant, "run_ms": wall_ms,
           "component_ms": component_ms}
    for group in GROUPS:
        row[f"{group}_core_ms"] = ms(group, ["core"])
        row[f"{group}_ms"] = ms(group, HEADLINE_COMPONENTS)
        row[f"{group}_with_projections_ms"] = ms(group, COMPONENTS)
        row[f"{group}_layout_ms"] = ms(group, ["layout", "head_layout"])
    row["shared_layout_ms"] = ms("shared", ["layout"])
    row["time_ratio_temporal_to_spatial"] = _ratio(row["temporal_ms"], row["spatial_ms"])
    row["core_time_ratio_temporal_to_spatial"] = _ratio(row["temporal_core_ms"], row["spatial_core_ms"])
    core_total = row["temporal_core_ms"] + row["spatial_core_ms"]
    row["temporal_share_of_attention_core"] = _ratio(row["temporal_core_ms"], core_total)
    row["temporal_share_of_attention"] = _ratio(row["temporal_ms"], row["temporal_ms"] + row["spatial_ms"])
    row["attention_share_of_component"] = _ratio(row["temporal_ms"] + row["spatial_ms"], component_ms)
    return row


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def calls_table(workload: str, calls: list[dict], call_times: dict) -> pd.DataFrame:
    """One row per attention site of the split component: layout, shape, calls per run, FLOPs, core ms per call."""
    if not calls:
        return pd.DataFrame()
    df = pd.DataFrame(calls)
    keys = ["path", "kind", "group", "layout", "shape", "batch", "heads", "query_len", "key_len", "head_dim"]
    per_site = df.groupby(keys, as_index=False, sort=False).agg(
        calls=("flops", "size"), flops_per_call=("flops", "first"), macs_per_call=("macs", "first"),
        softmax_flops_per_call=("softmax_flops", "first"), flops=("flops", "sum"))
    per_site.insert(0, "workload", workload)
    for (backend, variant), times in call_times.items():
        if variant != "standard":
            continue
        per_site[f"core_ms_per_call_{backend}"] = per_site["path"].map(times)
    return per_site


def add_flops_to_summary(summary: pd.DataFrame, calls: list[dict], flops: pd.DataFrame) -> pd.DataFrame:
    """Matmul FLOPs per group (from the call hook: the same for every backend and variant) and, per row, the
    projection FLOPs and the bytes of the headline components (from the FLOP counter)."""
    call_df = pd.DataFrame(calls)
    if call_df.empty or summary.empty:
        return summary
    for group in GROUPS:
        sel = call_df[call_df["group"] == group]
        summary[f"{group}_core_flops"] = int(sel["flops"].sum())
        summary[f"{group}_softmax_flops"] = int(sel["softmax_flops"].sum())
        summary[f"{group}_calls"] = len(sel)
        if not flops.empty:
            proj, nbytes = [], []
            for row in summary.itertuples(index=False):
                sel_f = flops[(flops["attention"] == row.attention) & (flops["variant"] == row.variant)
                              & (flops["group"] == group)]
                proj.append(int(sel_f.loc[sel_f["component"] == "projections", "flops"].sum()))
                nbytes.append(int(sel_f.loc[sel_f["component"].isin(HEADLINE_COMPONENTS), "bytes"].sum()))
            summary[f"{group}_projection_flops"] = proj
            summary[f"{group}_bytes"] = nbytes
            summary[f"{group}_core_ai"] = summary[f"{group}_core_flops"] / summary[f"{group}_bytes"].replace(0, np.nan)
    summary["flops_ratio_spatial_to_temporal"] = summary["spatial_core_flops"] / summary["temporal_core_flops"]
    return summary
