"""One self-contained HTML page from the stored runs: ``build_report(store, out_dir) -> index.html``.

No external resources (figures are inline base64 PNGs, the style sheet is inline), every stored string is
escaped, and nothing is computed beyond arranging stored numbers. Sections come from the modules in
:data:`SECTION_MODULES` (imported eagerly: a broken one is an error with its traceback) and are ordered by their ``order``.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from genscope.errors import UserError
from genscope.report.sections import esc, ordered_sections
from genscope.results.store import ResultsStore

SECTION_MODULES = (
    "genscope.report.findings",
    "genscope.report.breakdown",
    "genscope.report.analysis",
    "genscope.report.sequence",
    "genscope.report.temporal",
    "genscope.report.optimize",
    "genscope.report.training",
    "genscope.report.after_paper",
)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.5rem; }
.meta, .caption { color: #555; font-size: 0.9rem; }
.caption { font-style: italic; margin-top: 0.2rem; }
img.figure { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
table.data { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; max-width: 100%;
             display: block; overflow-x: auto; }  /* a table wider than the page scrolls inside itself */
table.data th, table.data td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right;
                               overflow-wrap: break-word; }
table.findings td, table.findings th { text-align: left; vertical-align: top; } table.findings .src { color: #666; font-size: 0.8rem; }
td.verdict { font-weight: 600; white-space: nowrap; } td.v0 { background: #e3f4e3; } td.v1 { background: #fdf3d6; }
td.v2 { background: #fbe3e3; } td.v3 { background: #ece3f6; } td.v4 { background: #eeeeee; color: #555; }
table.data th { background: #f4f4f4; }
table.data td:first-child, table.data th:first-child { text-align: left; }
.empty { background: #f8f8e8; border: 1px solid #e0e0b0; padding: 0.8rem 1rem; }
.error { background: #fbeaea; border: 1px solid #e0a0a0; padding: 0.8rem 1rem; white-space: pre-wrap; }
code { background: #f2f2f2; padding: 0 0.2rem; }
details { margin: 0.5rem 0; } summary { cursor: pointer; }
"""


def load_section_modules() -> list[str]:
    """Import every section module (eagerly: one that fails to import is an error with its traceback)."""
    for name in SECTION_MODULES:
        importlib.import_module(name)
    return list(SECTION_MODULES)


def render(store: ResultsStore, strict: bool = False) -> str:
    """The page as a string. ``strict``: a failing section raises instead of showing its error on the page."""
    load_section_modules()
    runs = store.list_runs()
    blocks: list[tuple[str, str, str]] = []  # (anchor, title, html)
    missing: list[tuple[str, str]] = []  # (title, fill command)
    for number, sec in enumerate(ordered_sections()):
        try:
            fragments = sec.fn(store)
        except Exception as exc:
            if strict:
                raise
            print(f"genscope: warning: report section {sec.title!r} failed: {exc}", file=sys.stderr)
            fragments = [f'<div class="error">This section failed to render: '
                         f"{esc(''.join(traceback.format_exception_only(exc)).strip())}</div>"]
        if fragments:
            blocks.append((f"s{number}", sec.title, "\n".join(fragments)))
        else:
            missing.append((sec.title, sec.fill_command))

    now = datetime.now(UTC).isoformat(timespec="seconds")
    import genscope

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>genscope report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>genscope report</h1>",
        f'<p class="meta">{len(runs)} stored run{"s" if len(runs) != 1 else ""} in <code>{esc(store.path)}</code>; '
        f"generated {esc(now)} by genscope {esc(genscope.__version__)}. Every figure and table is drawn from "
        "stored runs only.</p>",
    ]
    if len(runs) == 0:
        commands = [cmd for _, cmd in missing if cmd] or ["genscope characterize"]
        parts.append('<div class="empty"><p><strong>Nothing is stored yet.</strong> This database holds no runs. '
                     "Fill it by running a study, e.g.:</p><ul>"
                     + "".join(f"<li><code>{esc(cmd)}</code></li>" for cmd in commands)
                     + f"</ul><p>then <code>genscope report --db {esc(store.path)}</code> again.</p></div>")
    if blocks:
        parts.append("<nav><h2>Contents</h2><ol>"
                     + "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in blocks) + "</ol></nav>")
    for anchor, title, body in blocks:
        parts.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{body}\n</section>')
    if missing and len(runs) > 0:
        parts.append("<h2>Not stored yet</h2><ul>"
                     + "".join(f"<li>{esc(t)}" + (f": <code>{esc(c)}</code>" if c else "") + "</li>"
                               for t, c in missing) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(store: ResultsStore, out_dir: str | Path, strict: bool = False) -> Path:
    """Write ``out_dir/index.html`` (one self-contained page) and return its path."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"report output path {str(out)!r} exists and is not a folder")
    page = render(store, strict=strict)
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "index.html"
        tmp = out / ".index.html.tmp"
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write the report into {str(out)!r}: {exc.strerror or exc}") from None
    return path
