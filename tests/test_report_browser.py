"""The report in a real browser: headless Chromium (skipped where none is installed).

The page must load offline with no console error, no plotly warning, no dialog and no request
beyond the file itself; every figure must have rendered its data as SVG; names from specs and
folders must show as text; the trial table must sort. A full-page screenshot is saved under the
test's tmp dir (its path is printed; ``pytest -s`` shows it).
"""

from __future__ import annotations

import pytest

from kdtune.report import build_report
from tests._browser import (
    REPORT_PROBE,
    REPORT_READY,
    check_in_browser,
    find_chromium,
    open_page,
    sort_probe,
)
from tests.synthetic import write_synthetic_run

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium installed (.ci/run installs Debian's)")

XSS = "<img src=x onerror=alert(1)>"


def test_report_renders_in_chromium_with_every_figure_and_escaped_names(tmp_path):
    datasets = [{"dataset": XSS, "name": "mnist", "complexity_score": 0.2},
                {"dataset": "cifar10", "name": "cifar10", "complexity_score": 0.7}]
    a = write_synthetic_run(tmp_path / "run-a", datasets=datasets, search_trials=10,
                            methods=("scratch", "rkd", "ikd", "at"), study=f"study {XSS}")
    b = write_synthetic_run(tmp_path / "run-b", datasets=[
        {"dataset": "usps", "name": "usps"}], search_trials=6, seed=3)
    html = build_report([a, b], tmp_path / "report.html")
    found = check_in_browser(html, tmp_path / "report.png",
                             extra=sort_probe("table.trials", "val_acc"))
    report = found["report"]
    assert XSS in report["text"]  # shown as text, not markup
    assert report["sections"] == ["1 · Overview", "2 · The core study's tables",
                                  "3 · Gain surfaces", "4 · Gain versus complexity",
                                  "5 · Parameter importance", "6 · Learning curves",
                                  "7 · Every trial"]
    titles = " ".join(f["title"] for f in report["figures"])
    for words in ("where distillation pays", "effect of the hint layer",
                  "against dataset complexity", "which searched parameters mattered",
                  "learning curves"):
        assert words in titles
    assert XSS in titles.replace("&lt;", "<").replace("&gt;", ">")
    # clicking the header sorted the column numerically, missing values last
    column = found["extra"]
    numbers = [float(v) for v in column if v != "–"]
    assert numbers == sorted(numbers) and len(numbers) > 10
    assert column[len(numbers):] == ["–"] * (len(column) - len(numbers))


def test_quickstart_sized_real_report_renders(tmp_path):
    """A single run, as ``kdtune run`` writes it (the e2e test checks a real run the same way)."""
    run = write_synthetic_run(tmp_path / "quick", datasets=[{"dataset": "digits"}],
                              search_trials=8)
    html = build_report(run)
    check_in_browser(html, tmp_path / "quick.png")


def test_the_check_catches_console_errors_empty_figures_and_alerts(tmp_path):
    """The browser check is not vacuous: a broken page fails it."""
    run = write_synthetic_run(tmp_path / "run", datasets=[{"dataset": "digits"}],
                              search_trials=4)
    page = build_report(run, tmp_path / "good.html").read_text()
    broken = page.replace("</body>", "<div id='fig-empty' class='plotly-graph-div'></div>"
                          "<script>console.error('boom');alert('xss');"
                          "kdPlot('fig-empty', {data: [], layout: {}});</script></body>")
    (tmp_path / "bad.html").write_text(broken)
    result = open_page(tmp_path / "bad.html", REPORT_PROBE, tmp_path / "bad.png",
                       ready=REPORT_READY)
    assert any("boom" in e for e in result.errors)
    assert result.dialogs == ["xss"]
    empty = [f for f in result.probe["figures"] if f["id"] == "fig-empty"]
    assert empty and empty[0]["points"] == 0
