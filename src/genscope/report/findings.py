"""Report section: the findings - every claim of the two papers, its number, what this machine measured and the
verdict - first on the page. The verdicts come from :mod:`genscope.findings` (evaluated once per page); this
module only arranges them.
"""

from __future__ import annotations

from genscope.findings import VERDICTS
from genscope.report.sections import esc, findings_of, section, table_html
from genscope.results.store import ResultsStore

VERDICT_CLASS = {v: f"v{i}" for i, v in enumerate(VERDICTS)}  # CSS classes v0..v4 (colors in report.html)


def findings_table_html(df) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in ("finding", "paper", "measured", "device / preset", "verdict"))
    rows = []
    for r in df.itertuples():
        where = f"{r.device} / {r.preset}" if r.device else ""
        rows.append(f'<tr id="finding-{esc(r.key)}"><td>{esc(r.claim)}</td>'
                    f"<td>{esc(r.paper)}<br><span class=\"src\">{esc(r.source)}</span></td>"
                    f"<td>{esc(r.measured)}</td><td>{esc(where)}</td>"
                    f'<td class="verdict {VERDICT_CLASS.get(r.verdict, "")}">{esc(r.verdict)}</td></tr>')
    return f'<table class="data findings"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


@section("findings", title="Findings: the papers' claims on this machine", order=0,
         fill_command="genscope characterize")
def findings_section(store: ResultsStore) -> list[str]:
    if store.list_runs().empty:
        return []
    df = findings_of(store)
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS if v in counts.index)
    rules = df[["key", "rule", "stable", "runs"]].assign(
        stable=df["stable"].map(lambda s: "unknown" if s is None else ("yes" if s else "no")))
    return [
        f"<p>Each row is one claim of Golden et al. (\"Generative AI Beyond LLMs\", v2) or Chen et al. (\"Speed Is "
        f"All You Need\", 2023), checked against the runs stored here: {esc(summary)}. The papers measured on "
        "NVIDIA A100 GPUs and mobile GPUs; a verdict says whether the claim holds on the device named in the row. "
        "\"unstable\": the timing failed its validity rule; \"not measured\": no stored run holds the numbers.</p>",
        findings_table_html(df),
        "<details><summary>How each verdict is decided (the rules, the runs read, stability)</summary>"
        + table_html(rules, float_format=None) + "</details>",
    ]
