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

    return df.to_html(index=index, escape=True, border=0, classes="data", na_rep="",
                      float_format=cell if fmt is not None else None)


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


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"
