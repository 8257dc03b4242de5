"""Report infrastructure: the section registry and the helpers every section uses.

A section is a function ``(store) -> list[str]`` of HTML fragments, registered with
``@section("study", title=..., order=N)`` in a module listed in ``genscope.report.html.SECTION_MODULES``.
It draws from stored tables only (no computation beyond arranging stored numbers) and returns ``[]``
when nothing of its study is stored. Every user- or run-provided string that reaches the page goes through
:func:`esc` (or :func:`table_html`, which escapes cells and headers).

Figures are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot and no global backend
switch) and inlined as base64 PNG by :func:`figure_to_img`.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from genscope.results.store import ResultsStore, RunRecord


@dataclass(frozen=True)
class Section:
    study: str
    title: str
    order: int
    fn: Callable[[ResultsStore], list[str]]
    fill_command: str = ""  # the command that stores this study's runs, shown when nothing is stored


SECTIONS: dict[str, Section] = {}  # keyed by "module.function" so re-imports do not duplicate


def section(study: str, title: str, order: int = 100, fill_command: str = ""):
    """Register ``fn(store) -> list of HTML fragments`` as a report section for ``study``."""

    def deco(fn: Callable[[ResultsStore], list[str]]):
        SECTIONS[f"{fn.__module__}.{fn.__qualname__}"] = Section(study, title, order, fn, fill_command)
        return fn

    return deco


def ordered_sections() -> list[Section]:
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.title))


def esc(value: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def new_figure(width_in: float = 9.0, height_in: float = 4.5):
    """A matplotlib Figure on the Agg canvas (no pyplot state, safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_img(fig, alt: str = "figure", dpi: int = 110) -> str:
    """``<img>`` with the figure inlined as a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="figure" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _formatter(float_format: str | Callable[[float], str] | None) -> Callable[[float], str] | None:
    if float_format is None or callable(float_format):
        return float_format
    if "{" in float_format:
        return lambda x: float_format.format(x)
    return lambda x: float_format % x


def table_html(df: pd.DataFrame, float_format: str | Callable[[float], str] | None = "{:,.3f}",
               index: bool = False) -> str:
    """The table as HTML; cells, headers and index are escaped; NaN shows as an empty cell."""
    fmt = _formatter(float_format)

    def cell(x):
        return fmt(x) if fmt is not None else x

    page = df.to_html(index=index, escape=True, border=0, classes="data", na_rep="",
                      float_format=cell if fmt is not None else None)
    return _CELL.sub(lambda m: m.group(1) + breakable(m.group(2)) + m.group(3), page)


_CELL = re.compile(r"(<t[hd][^>]*>)([^<]*)(</t[hd]>)")
_BREAK_AFTER = re.compile(r"([_/]|\.(?=[A-Za-z]))(?=\S)")
_CAMEL = re.compile(r"(?<=[A-Za-z0-9])(?=[A-Z][a-z])")


def breakable(escaped: str) -> str:
    """Allow line breaks after ``_``, ``/`` and a ``.`` before a letter (module paths, column names) and inside
    CamelCase names (``UNet2DCondition|Model``), so that wide tables fit the page without breaking words
    anywhere; ``escaped`` is already HTML-escaped."""
    return _CAMEL.sub("<wbr>", _BREAK_AFTER.sub(lambda m: m.group(1) + "<wbr>", escaped))


def _as_list(records: RunRecord | Iterable[RunRecord]) -> list[RunRecord]:
    return [records] if isinstance(records, RunRecord) else list(records)


def caption_text(records: RunRecord | Iterable[RunRecord]) -> str:
    """Plain text: device, preset, dtype and how many stored runs a figure or table rests on."""
    recs = _as_list(records)

    def values(name: str) -> str:
        seen = list(dict.fromkeys(str(getattr(r, name)) for r in recs))
        return ", ".join(seen) if seen else "-"

    ids = sorted(r.id for r in recs if r.id is not None)
    id_text = f" (run id{'s' if len(ids) > 1 else ''} {', '.join(str(i) for i in ids)})" if ids else ""
    return (f"device {values('device')}; preset {values('preset')}; dtype {values('dtype')}; "
            f"{len(recs)} stored run{'s' if len(recs) != 1 else ''}{id_text}")


def caption(records: RunRecord | Iterable[RunRecord], extra: str = "") -> str:
    """``<p class="caption">`` stating device, preset, dtype and the number of runs (escaped)."""
    text = caption_text(records)
    return f'<p class="caption">{esc(text)}{(". " + esc(extra)) if extra else ""}</p>'


# ----------------------------------------------------------------------------------------------------------
# the papers' findings, for captions (evaluated once per page by genscope.findings; nothing computed here)
# ----------------------------------------------------------------------------------------------------------
_FINDINGS_CACHE: dict[tuple[str, int], pd.DataFrame] = {}


def findings_of(store: ResultsStore) -> pd.DataFrame:
    """``genscope.findings.evaluate(store)``, evaluated once per store state (path, newest run id)."""
    from genscope.findings import evaluate

    runs = store.list_runs()
    key = (str(store.path), int(runs["id"].max()) if len(runs) else 0)
    if key not in _FINDINGS_CACHE:
        _FINDINGS_CACHE.clear()
        _FINDINGS_CACHE[key] = evaluate(store)
    return _FINDINGS_CACHE[key]


def verdict_text(store: ResultsStore, *keys: str) -> str:
    """Plain text for a caption: per finding, the paper's value and source, what was measured, the verdict."""
    df = findings_of(store).set_index("key")
    parts = []
    for key in keys:
        if key not in df.index:
            continue
        r = df.loc[key]
        parts.append(f"Paper ({r['source']}): {r['paper']} - {r['claim']}. Measured: {r['measured']}. "
                     f"Verdict: {r['verdict']}")
    return " ".join(p if p.endswith(".") else p + "." for p in parts)


def verdict_caption(store: ResultsStore, records: RunRecord | Iterable[RunRecord], shows: str, mirrors: str,
                    *keys: str) -> str:
    """``<p class="caption">``: what the figure shows, the paper figure it mirrors, the paper's value and the
    verdict (from the findings), then device / preset / dtype / runs."""
    text = f"{shows} Mirrors {mirrors}. {verdict_text(store, *keys)} ({caption_text(records)})"
    return f'<p class="caption">{esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"
