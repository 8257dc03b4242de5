"""The report opened in a real browser (Debian's ``chromium``, headless): no console errors, every figure rendered
with a non-zero size, nothing wider than a 1280 px viewport, the findings table first; a screenshot is written
(its path is printed; ``GENSCOPE_SCREENSHOT=PATH`` writes it there too).

The page is built from a tiny characterization: real runs of the fast studies (tiny presets, through the study
registry, as ``genscope characterize`` runs them) plus synthetic records for the slow ones (breakdown of the
other workloads - one of them an outlier, one unstable - the temporal split and the optimization ablation).

How the page is probed without a driver: a copy of the page gets a script at the top of ``<head>`` that records
errors (``error`` events, rejected promises, CSP violations), opens every ``<details>`` and, on ``load``,
writes its measurements as JSON into the page; ``chromium --dump-dom`` prints the page after ``load``, and
``--enable-logging=stderr`` prints every console message, which must be none.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time

import pytest
from report_fixtures import SUITE, synthetic_store

from genscope.report.html import build_report
from genscope.results.store import RunRecord
from genscope.studies import registry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT_PX = 1280
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]

# Real tiny runs (study, settings): the fast studies of the plan, at tiny presets.
REAL_RUNS = (
    ("breakdown", {"workload": "llama", "preset": "tiny", "repeat": 1}),
    ("seqlen", {"workload": "llama", "preset": "tiny"}),
    ("seqlen", {"workload": "stable-diffusion", "preset": "tiny"}),
    ("memory-model", {"workload": "stable-diffusion", "preset": "tiny"}),
    ("image-scaling", {"preset": "tiny", "image_sizes": [64, 128], "steps": 1, "repeat": 1, "phases": ["denoise"]}),
    ("flops", {"workload": "stable-diffusion", "preset": "tiny"}),
    ("taxonomy", {"workloads": list(SUITE), "preset": "tiny"}),  # the widest table: one column per workload
    ("roofline", {"workloads": ["stable-diffusion", "llama"], "preset": "tiny", "measured": False}),
    ("prefill-decode", {"workloads": ["llama", "stable-diffusion"], "preset": "tiny", "repeat": 1, "max_shapes": 2,
                        "key_len": 256, "query_lens": [1, 16, 256]}),
    ("temporal", {"part": "sweep", "frames": [2, 4, 8], "image_sizes": [32], "repeat": 1}),
)

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push('error: ' + (e.message || (e.target && (e.target.src || '').slice(0, 60)) || 'resource')), true);
window.addEventListener('unhandledrejection', e => __errors.push('rejection: ' + e.reason));
document.addEventListener('securitypolicyviolation', e => __errors.push('csp: ' + e.violatedDirective));
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const vw = document.documentElement.clientWidth, wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.right > vw + 1 || r.left < -1) wide.push(el.tagName + '.' + el.className + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  const sections = [...document.querySelectorAll('section')].map(s => ({
    id: s.id, title: s.querySelector('h2').textContent, findings: !!s.querySelector('table.findings'),
    figures: [...s.querySelectorAll('img')].map(i => { const r = i.getBoundingClientRect(); return [r.width, r.height, i.naturalWidth]; })}));
  const nav = performance.getEntriesByType('navigation')[0];
  const out = {errors: __errors, viewport: vw, scrollWidth: document.documentElement.scrollWidth, wide: wide.slice(0, 20),
               sections: sections, loadMs: nav ? nav.loadEventStart : performance.now()};
  const pre = document.createElement('pre'); pre.id = 'genscope-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", f"--window-size={VIEWPORT_PX},1000", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(page path, store): synthetic runs first, the real tiny runs after them (newest wins)."""
    root = tmp_path_factory.mktemp("browser")
    store = synthetic_store(root / "r.db", agree=False, studies=("breakdown", "temporal", "optimization"),
                            breakdown_preset="tiny", outliers=("muse",), unstable=("phenaki",))
    for study, settings in REAL_RUNS:
        s = registry.make_settings(study, settings)
        preset, device, dtype = registry.record_fields(study, s)
        workload = getattr(s, "workload", None) if study != "temporal" else "attention-layer"
        tables = registry.run_study(study, settings)
        store.save_run(RunRecord(study, workload or "suite", preset, settings, device, dtype, tables))
    start = time.perf_counter()
    page = build_report(store, root / "report", strict=True)
    print(f"\nreport built in {time.perf_counter() - start:.1f} s, {page.stat().st_size / 1e6:.2f} MB: {page}")
    return page, store


@pytest.fixture(scope="module")
def probe(report):
    page, _ = report
    text = page.read_text(encoding="utf-8")
    probed = page.with_name("probed.html")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    start = time.perf_counter()
    run = chromium("--dump-dom", probed.as_uri())
    wall = time.perf_counter() - start
    match = re.search(r'<pre id="genscope-probe">(.*?)</pre>', run.stdout, re.S)
    assert match, f"no probe output; chromium exit {run.returncode}: {run.stderr[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    result["console"] = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    print(f"chromium: page loaded in {result['loadMs']:.0f} ms (process {wall:.1f} s incl. browser start)")
    return result


def test_no_console_errors(probe):
    assert probe["errors"] == [] and probe["console"] == []


def test_findings_table_is_the_first_section(probe):
    first = probe["sections"][0]
    assert first["title"].startswith("Findings") and first["findings"]


def test_every_figure_is_rendered(probe):
    figures = [(s["title"], f) for s in probe["sections"] for f in s["figures"]]
    assert len(figures) >= 6  # Figure 7, roofline x2, FLOPs classes, Figures 8, 10, 14, Table 1 ablation ...
    for title, (width, height, natural) in figures:
        assert width > 0 and height > 0 and natural > 0, title
    drawn = {s["title"] for s in probe["sections"] if s["figures"]}
    for expected in ("Figure 7", "Figure 10", "Figure 5", "Figures 8 and 9", "Figures 11-14", "Chen et al."):
        assert any(expected in t for t in drawn), (expected, drawn)


def test_nothing_wider_than_the_viewport(probe):
    assert probe["viewport"] == VIEWPORT_PX
    assert probe["wide"] == [] and probe["scrollWidth"] <= VIEWPORT_PX


def test_page_states_verdicts_and_clipping(report):
    page, _ = report
    text = page.read_text(encoding="utf-8")
    assert "Mirrors Golden et al. Figure 7" in text and "Verdict: " in text
    clipped = re.search(r"the bars of ([^.]*?) are taller", text)  # the 3x outlier is clipped and said so
    assert clipped and "muse" in clipped.group(1).split(", ")  # (a noisy real tiny run may be clipped too)
    unstable = re.search(r"Marked unstable \(timing failed its validity rule\): ([^.]*)\.", text)
    assert unstable and "phenaki" in unstable.group(1).split(", ")  # stored stable == False
    assert text.count('<td class="verdict') >= 30 and "http://" not in text and "https://" not in text


def test_screenshot(report, tmp_path):
    page, _ = report
    shot = page.with_name("report-screenshot.png")
    run = chromium(f"--screenshot={shot}", "--window-size=1280,2200", page.as_uri())
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG"), run.stderr[-2000:]
    target = os.environ.get("GENSCOPE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
    print(f"screenshot: {shot}")
