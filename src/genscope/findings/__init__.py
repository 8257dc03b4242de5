"""Findings: every claim of the two papers, checked against the runs stored on this machine.

Where it sits: between ``results`` and ``report`` (it reads stored runs, imports nothing above ``results``).
The report draws and arranges, and does no computation (DESIGN.md); turning stored tables into a verdict
*is* computation, so it lives here, once, and both the report (its first section, every figure's caption)
and ``genscope characterize`` (the table at the end of ``make run``) call :func:`evaluate`.

* :mod:`genscope.findings.rules` - the claims and their verdict rules, as data (:data:`FINDINGS`);
* :mod:`genscope.findings.measures` - how each number is read from the stored tables.

``evaluate(store)`` returns one row per claim: key, claim, source (paper, figure/table), paper (its number),
measured (text), value (the number judged), device, preset, runs (ids read), stable (True / False / None =
unknown), verdict, rule. The verdict is the thresholds' outcome, except that any row read with
``stable == False`` makes it "unstable", and nothing stored makes it "not measured".
"""

from __future__ import annotations

import pandas as pd

from genscope.findings.measures import MEASURES, Evidence
from genscope.findings.rules import (
    BY_KEY,
    FINDINGS,
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    UNSTABLE,
    VERDICTS,
    FindingRule,
    Thresholds,
)
from genscope.results.store import ResultsStore

COLUMNS = ("key", "claim", "source", "paper", "measured", "value", "device", "preset", "runs", "stable", "verdict",
           "rule")


def evaluate_rule(store: ResultsStore, rule: FindingRule) -> dict:
    try:
        evidence = MEASURES[rule.measure](store, rule)
    except (KeyError, ValueError, TypeError, IndexError) as exc:  # a stored table of another shape
        evidence = Evidence(None, f"could not read the stored {rule.study}/{rule.table} table: "
                                  f"{type(exc).__name__}: {exc}")
    stable = evidence.stable() if evidence.value is not None else None
    verdict = UNSTABLE if stable is False else rule.thresholds.verdict(evidence.value)

    def joined(name: str) -> str:
        return ", ".join(dict.fromkeys(str(getattr(r, name)) for r in evidence.records))

    return {"key": rule.key, "claim": rule.claim, "source": rule.source, "paper": rule.paper_value,
            "measured": evidence.text, "value": evidence.value, "device": joined("device"),
            "preset": joined("preset"), "runs": ", ".join(dict.fromkeys(str(r.id) for r in evidence.records)),
            "stable": stable, "verdict": verdict, "rule": rule.rule_text()}


def evaluate(store: ResultsStore, rules: tuple[FindingRule, ...] = FINDINGS) -> pd.DataFrame:
    """One row per finding (see the module docstring for the columns)."""
    return pd.DataFrame([evaluate_rule(store, r) for r in rules], columns=list(COLUMNS))


def format_findings(df: pd.DataFrame, width: int | None = None) -> str:
    """The findings as a terminal table ``width`` characters wide (default: the terminal's), long cells wrapped,
    then a count of the verdicts."""
    import shutil

    from tabulate import tabulate

    width = width or shutil.get_terminal_size((120, 24)).columns
    usable = max(width - 16, 60)  # 5 columns: borders and padding take 16
    widths = [int(usable * f) for f in (0.30, 0.18, 0.30, 0.09)]
    widths.append(max(usable - sum(widths), 9))
    rows = [[r.claim, r.paper, r.measured, f"{r.device} {r.preset}" if r.device else "", r.verdict]
            for r in df.itertuples()]
    table = tabulate(rows, headers=["finding", "paper", "measured", "device", "verdict"], maxcolwidths=widths,
                     tablefmt="simple_grid")
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS if v in counts.index)
    return f"{table}\nfindings: {summary} (sources, rules and details: the report's first section)"


__all__ = ["BY_KEY", "COLUMNS", "FINDINGS", "NOT_MEASURED", "NOT_REPRODUCED", "PARTLY", "REPRODUCED", "UNSTABLE",
           "VERDICTS", "FindingRule", "Thresholds", "evaluate", "evaluate_rule", "format_findings"]
