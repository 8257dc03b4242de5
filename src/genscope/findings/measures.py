"""Measurements for the findings: each reads the newest stored run(s) of one study and returns the one number
a rule's thresholds judge (:class:`Evidence`), with a line of text showing what it was computed from.

A measurement never runs a study: what is not stored is "not measured" (value None). Stability: timed tables
may carry a ``stable`` column (the measurement's validity rule, written by the timing code); any row read with
``stable == False`` makes the finding "unstable", a table without the column is "unknown" stability; a value
that is no timing (``Evidence.timed=False``) is judged whatever the run's timings. (Just over 400 lines: one
small function per kind of finding, in the order of the papers' sections.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genscope.findings.rules import FindingRule
from genscope.results.store import ResultsStore, RunRecord


@dataclass
class Evidence:
    value: float | None
    text: str
    records: list[RunRecord] = field(default_factory=list)
    rows: list[pd.DataFrame] = field(default_factory=list)  # the stored rows the value rests on (stability)
    timed: bool = True  # False: a count, a byte size, a ratio of shapes - no timing's validity applies

    def stable(self) -> bool | None:
        """The validity of the timings the value rests on: the ``stable`` column of the rows read, and of any
        table of the runs read that carries one (a breakdown's class times are judged by its ``speedup``
        row). False if any says False; True if there is at least one and all say True; None (unknown) if none,
        or if the value is not a timing (``timed=False``: memory and weight sizes of a run stand whatever its
        timings' spread)."""
        if not self.timed:
            return None
        flags: list[bool] = []
        sources = [df for df in self.rows if "stable" in df.columns]
        for record in self.records:
            sources += [df for df in record.tables.values() if "stable" in df.columns and not df.empty]
        for df in sources:
            flags += [bool(v) for v in df["stable"].dropna()]
        if not flags:
            return None
        return all(flags)


def none(text: str) -> Evidence:
    return Evidence(None, text)


def _table(record: RunRecord | None, name: str, workload: str | None = None) -> pd.DataFrame | None:
    if record is None or name not in record.tables:
        return None
    df = record.tables[name]
    if workload is not None and "workload" in df.columns:
        df = df[df["workload"].astype(str) == workload]
    return df


def _newest_group(store: ResultsStore, study: str) -> dict[str, str]:
    """device / preset / dtype of the newest complete run of ``study`` (runs elsewhere are not mixed in)."""
    runs = store.list_runs(study=study)
    runs = runs[runs["status"] == "complete"]
    if runs.empty:
        return {}
    newest = runs.iloc[-1]
    return {"device": str(newest["device"]), "preset": str(newest["preset"]), "dtype": str(newest["dtype"])}


def _per_workload(store: ResultsStore, study: str, table: str, workloads: Iterable[str]
                  ) -> dict[str, tuple[RunRecord, pd.DataFrame]]:
    """Per workload, the newest run with the device / preset / dtype of the study's newest run."""
    group = _newest_group(store, study)
    found = {}
    for w in workloads:
        record = store.latest(study, workload=w, **group) if group else None
        df = _table(record, table, w)
        if df is not None and len(df):
            found[w] = (record, df)
    return found


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ----------------------------------------------------------------------------------------------------
# breakdown (Figure 7, Table II)
# ----------------------------------------------------------------------------------------------------
def _class_times(df: pd.DataFrame, attention: str) -> pd.Series:
    sel = df[df["attention"] == attention]
    return sel.groupby("op_class")["time_ms"].sum()


def largest_class(store: ResultsStore, rule: FindingRule) -> Evidence:
    p = rule.params
    found = _per_workload(store, rule.study, rule.table, p["workloads"])
    if not found:
        return none("no breakdown stored")
    hits, parts = 0, []
    for w, (_, df) in found.items():
        times = _class_times(df, p["attention"]).drop("Other", errors="ignore")
        top = str(times.idxmax()) if len(times) and times.max() > 0 else "-"
        hits += top == p["op_class"]
        parts.append(f"{w}: {top}")
    return Evidence(hits / len(found), "; ".join(parts), [r for r, _ in found.values()],
                    [d for _, d in found.values()])


def class_share(store: ResultsStore, rule: FindingRule) -> Evidence:
    p = rule.params
    found = _per_workload(store, rule.study, rule.table, p["workloads"])
    shares, parts = [], []
    for w, (_, df) in found.items():
        times = _class_times(df, p["attention"]).drop(list(p.get("exclude", ())), errors="ignore")
        total = float(times.sum())
        if total <= 0:
            continue
        share = float(times.reindex(list(p["classes"])).fillna(0.0).sum()) / total
        shares.append(share)
        parts.append(f"{w} {_pct(share)}")
    if not shares:
        return none("no breakdown stored")
    return Evidence(float(np.mean(shares)), f"mean {_pct(float(np.mean(shares)))} ({', '.join(parts)})",
                    [r for r, _ in found.values()], [d for _, d in found.values()])


def column(store: ResultsStore, rule: FindingRule) -> Evidence:
    """One column of one workload's table (e.g. Table II's e2e_speedup)."""
    p = rule.params
    found = _per_workload(store, rule.study, rule.table, p["workloads"])
    if not found:
        return none(f"no {rule.study} run stored")
    (record, df), = found.values()
    value = float(df[p["column"]].iloc[0])
    return Evidence(value, p.get("fmt", "{:.3g}").format(value), [record], [df])


def group_ratio(store: ResultsStore, rule: FindingRule) -> Evidence:
    p = rule.params
    num = _per_workload(store, rule.study, rule.table, p["numerator"])
    den = _per_workload(store, rule.study, rule.table, p["denominator"])
    if not num or not den:
        return none("needs stored runs of both groups")

    def mean(found):
        return float(np.mean([float(df[p["column"]].iloc[0]) for _, df in found.values()]))

    a, b = mean(num), mean(den)
    value = a / b if b > 0 else math.nan
    return Evidence(value, f"{value:.2f}x ({a:.2f}x over {b:.2f}x)",
                    [r for r, _ in (*num.values(), *den.values())], [d for _, d in (*num.values(), *den.values())])


# ----------------------------------------------------------------------------------------------------
# prefill / decode (Table III)
# ----------------------------------------------------------------------------------------------------
def prefill_decode(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no prefill-decode run stored")
    df = df.set_index(df["workload"].astype(str))
    diff = [w for w in rule.params["diffusion"] if w in df.index]
    ar = [w for w in rule.params["autoregressive"] if w in df.index]
    if not diff or not ar:
        return none("needs diffusion and autoregressive workloads")
    long_queries = bool((df.loc[diff, "median_query_len"] > 1).all())
    decode_like = bool((df.loc[ar, "decode_call_share"] > 0.5).all())
    s_diff, s_ar = float(df.loc[diff, "attention_speedup"].mean()), float(df.loc[ar, "attention_speedup"].mean())
    value = long_queries + decode_like + (s_diff > s_ar)
    text = (f"diffusion median query length {'> 1' if long_queries else 'not all > 1'}; autoregressive decode "
            f"share {'> 0.5' if decode_like else 'not all > 0.5'}; attention speedup diffusion {s_diff:.2f}x vs "
            f"autoregressive {s_ar:.2f}x")
    return Evidence(float(value), text, [record], [df.loc[diff + ar]])


# ----------------------------------------------------------------------------------------------------
# sequence length, memory model (Section V-A)
# ----------------------------------------------------------------------------------------------------
def _seqlen_record(store: ResultsStore, rule: FindingRule) -> tuple[RunRecord | None, pd.DataFrame | None]:
    record = store.latest("seqlen", workload=rule.params["workload"])
    df = _table(record, rule.table)
    if df is not None and "image_size" in df.columns and len(df):
        sizes = set(df["image_size"])
        size = rule.params.get("image_size") if rule.params.get("image_size") in sizes else max(sizes)
        df = df[df["image_size"] == size]
    return record, df


def seqlen_step(store: ResultsStore, rule: FindingRule) -> Evidence:
    record, df = _seqlen_record(store, rule)
    if df is None or df.empty:
        return none("no seqlen run stored")
    row = df.iloc[0]
    value = float(row["largest_consecutive_ratio"])
    return Evidence(value, f"{value:.1f}x between adjacent calls (range {int(row['seq_len_min'])}-"
                           f"{int(row['seq_len_max'])}: {float(row['max_over_min']):.0f}x) at "
                           f"{int(row['image_size'])} px, preset {record.preset}", [record], [df])


def is_u_shaped(lengths: list[float]) -> bool:
    """Falls (never rising) to its minimum, then rises (never falling), and both ends exceed the minimum."""
    if len(lengths) < 3:
        return False
    i = int(np.argmin(lengths))
    down, up = lengths[:i + 1], lengths[i:]
    return (all(a >= b for a, b in zip(down, down[1:], strict=False))
            and all(a <= b for a, b in zip(up, up[1:], strict=False))
            and lengths[0] > lengths[i] and lengths[-1] > lengths[i])


def u_shape(store: ResultsStore, rule: FindingRule) -> Evidence:
    record, df = _seqlen_record(store, rule)
    if df is None or df.empty:
        return none("no seqlen run stored")
    calls = df[df["kind"] == "self"] if "kind" in df.columns else df
    lengths = [float(x) for x in calls.sort_values("position")["seq_len"]]
    shape = is_u_shaped(lengths)
    steps = list(dict.fromkeys(int(x) for x in lengths))
    return Evidence(float(shape), f"{'U-shaped' if shape else 'not U-shaped'}: self-attention lengths "
                                  f"{' -> '.join(str(s) for s in steps)} (distinct, in order)", [record], [df])


def memory_exponent(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study, workload=rule.params["workload"])
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no memory-model run stored")
    value = float(df["exponent_largest"].iloc[0])
    return Evidence(value, f"L^{value:.2f} (fit over sides {df['sides'].iloc[0]}: "
                           f"L^{float(df['exponent_fit'].iloc[0]):.2f})", [record], [df])


def d2n_levels(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study, workload=rule.params["workload"])
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no memory-model run stored")
    deeper = df[df["level"] >= 1]  # level 0: d^0 = 1 in both formulas
    if deeper.empty:
        return none("no UNet level below the first traced")
    v2, v1 = int(deeper["v2_matches"].astype(bool).sum()), int(deeper["v1_matches"].astype(bool).sum())
    return Evidence(v2 / len(deeper), f"d^2n matches {v2}/{len(deeper)} levels, d^n {v1}/{len(deeper)}",
                    [record], [df])


# ----------------------------------------------------------------------------------------------------
# image size (Figure 10)
# ----------------------------------------------------------------------------------------------------
def scaling_slopes(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no image-scaling run stored")
    slope = {(r.backend, r.op_class): float(r.slope) for r in df.itertuples()}
    needed = [("baseline", "Attention"), ("baseline", "Convolution"), ("flash", "Attention"), ("flash", "Convolution")]
    if any(k not in slope for k in needed):
        return none("slopes of both classes and both backends are needed")
    before = slope[("baseline", "Attention")] > slope[("baseline", "Convolution")]
    after = slope[("flash", "Convolution")] > slope[("flash", "Attention")]
    text = (f"baseline: attention {slope[('baseline', 'Attention')]:.2f} vs convolution "
            f"{slope[('baseline', 'Convolution')]:.2f}; flash: attention {slope[('flash', 'Attention')]:.2f} vs "
            f"convolution {slope[('flash', 'Convolution')]:.2f}")
    return Evidence(float(before + after), text, [record], [df])


# ----------------------------------------------------------------------------------------------------
# temporal (Figures 12, 14)
# ----------------------------------------------------------------------------------------------------
def temporal_summary(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study, workload=rule.params["workload"])
    df = _table(record, rule.table)
    if df is None or df.empty or rule.params["column"] not in df.columns:
        return none("no temporal split stored")
    std = df[df["variant"] == "standard"] if "variant" in df.columns else df
    flash = std[std["attention"] == "flash"] if "attention" in std.columns else std
    row = (flash if len(flash) else std).iloc[[0]]
    value = float(row[rule.params["column"]].iloc[0])
    backend = str(row["attention"].iloc[0]) if "attention" in row.columns else ""
    return Evidence(value, rule.params.get("fmt", "{:.3g}").format(value) + (f" ({backend} attention, preset "
                                                                              f"{record.preset})"),
                    [record], [row], timed=rule.params["column"].startswith("time"))


SWEEP_WORKLOAD = "attention-layer"  # genscope.studies.temporal's frames-sweep workload name
EXPECTED_EXPONENT = {"temporal": 2.0, "spatial": 1.0}


def frame_exponents(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study, workload=SWEEP_WORKLOAD)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no frames sweep stored")
    fits = df[(df["quantity"] == "core_flops") & (df["variant"] == "standard")]
    fits = fits[fits["backend"] == fits["backend"].iloc[0]] if len(fits) else fits
    if fits.empty:
        return none("no FLOP fits in the stored sweep")
    deviation = max(abs(float(r.exponent) - EXPECTED_EXPONENT.get(r.layer, math.nan)) for r in fits.itertuples())
    by_layer = fits.groupby("layer")["exponent"].agg(["min", "max"])
    text = "; ".join(f"{layer} k = {row['min']:.2f}" + (f"-{row['max']:.2f}" if row["max"] > row["min"] else "")
                     for layer, row in by_layer.iterrows())
    return Evidence(deviation, text, [record], [fits], timed=False)  # FLOP fits


def frame_crossover(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study, workload=SWEEP_WORKLOAD)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no frames sweep stored")
    within = np.isfinite(df["flops_grid_frames"].astype(float))
    parts = [f"{int(r.image_size)} px: " + (f"F = {float(r.flops_grid_frames):.1f}" if ok else str(r.predicted_status))
             for r, ok in zip(df.itertuples(), within, strict=True)]
    return Evidence(float(within.mean()), "; ".join(parts), [record], [df], timed=False)  # FLOP crossovers


# ----------------------------------------------------------------------------------------------------
# roofline (Figure 5), Table I
# ----------------------------------------------------------------------------------------------------
def intensity_ratio(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no roofline run stored")
    ai = df.set_index(df["workload"].astype(str))["ai_params_flops_per_byte"].astype(float)
    num = ai.reindex(rule.params["numerator"]).dropna()
    den = ai.reindex(rule.params["denominator"]).dropna()
    if num.empty or den.empty:
        return none("needs both groups' intensities")
    if rule.params["reduce"] == "max":
        a, b, a_name, b_name = float(num.max()), float(den.max()), str(num.idxmax()), str(den.idxmax())
    else:
        a, b, a_name, b_name = float(num.min()), float(den.max()), str(num.idxmin()), str(den.idxmax())
    value = a / b
    return Evidence(value, f"{value:,.0f}x ({a_name} {a:,.0f} vs {b_name} {b:,.0f} FLOP per parameter byte)",
                    [record], [df])


def class_agreement(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = store.latest(rule.study)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no taxonomy run stored")
    judged = df[df["agrees"].notna()]
    if judged.empty:
        return none("no class derived")
    agree = int(judged["agrees"].astype(bool).sum())
    differ = [f"{r.workload} {r.axis} ({r.derived} vs {r.paper})" for r in judged.itertuples() if not bool(r.agrees)]
    unmeasured = len(df) - len(judged)
    text = f"{agree}/{len(judged)} agree" + (f"; differ: {', '.join(differ)}" if differ else "") + \
        (f"; {unmeasured} not measured" if unmeasured else "")
    return Evidence(agree / len(judged), text, [record], [df])


# ----------------------------------------------------------------------------------------------------
# Chen et al. (Tables 1, 2)
# ----------------------------------------------------------------------------------------------------
def ablation_change(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = next((r for r in _newest_with(store, rule.study, rule.table)), None)
    df = _table(record, rule.table)
    if df is None or df.empty:
        return none("no ablation stored")
    p = rule.params
    by_row = df.set_index(df["row"].astype(str))
    if p["row"] not in by_row.index or p["reference"] not in by_row.index:
        return none(f"rows {p['reference']!r} and {p['row']!r} are needed")
    new, ref = float(by_row.loc[p["row"], p["column"]]), float(by_row.loc[p["reference"], p["column"]])
    if ref <= 0:
        return none(f"{p['column']} of {p['reference']!r} is zero")
    value = 1 - new / ref if p["mode"] == "reduction" else new / ref - 1
    return Evidence(value, f"{'-' if p['mode'] == 'reduction' else '+'}{abs(100 * value):.1f}% ({p['column']} "
                           f"{ref:,.4g} -> {new:,.4g}, preset {record.preset})",
                    [record], [by_row.loc[[p["reference"], p["row"]]]], timed=p["column"].startswith("time"))


def winograd_tiles(store: ResultsStore, rule: FindingRule) -> Evidence:
    record = next((r for r in _newest_with(store, rule.study, rule.table)), None)
    df = _table(record, rule.table)
    if df is None or df.empty or "measured_weight_multiplier" not in df.columns:
        return none("no Winograd table with measured multipliers stored")
    paper = df["paper_weight_multiplier"].astype(float)
    measured = df["measured_weight_multiplier"].astype(float)
    deviation = float(((measured - paper).abs() / paper).max())
    text = ", ".join(f"{r.tile}: weight {float(r.measured_weight_multiplier):.2f}x (paper "
                     f"{float(r.paper_weight_multiplier):.2f}x)" for r in df.itertuples())
    return Evidence(deviation, text, [record], [df], timed=False)


def _newest_with(store: ResultsStore, study: str, table: str) -> Iterable[RunRecord]:
    runs = store.list_runs(study=study)
    for run_id in reversed(list(runs["id"])):
        record = store.load_run(int(run_id))
        if record.status == "complete" and table in record.tables and len(record.tables[table]):
            yield record


MEASURES: dict[str, Callable[[ResultsStore, FindingRule], Evidence]] = {
    f.__name__: f for f in (largest_class, class_share, column, group_ratio, prefill_decode, seqlen_step, u_shape,
                            memory_exponent, d2n_levels, scaling_slopes, temporal_summary, frame_exponents,
                            frame_crossover, intensity_ratio, class_agreement, ablation_change, winograd_tiles)
}
