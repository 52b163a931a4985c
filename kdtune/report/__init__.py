"""A self-contained HTML report, built from run directories' files alone.

``build_report(run_dir)`` writes ``run_dir/report.html``; ``build_report([a, b], out)`` writes
one page that overlays several runs (comparison mode). plotly.js is inlined once, so the file
opens offline and can be mailed around. Every string that comes from a spec, a folder name or
a result file is HTML-escaped, in the page and inside the figures.

Sections: the answer (did distillation pay?), 1 overview, 2 the core study's tables, 3 gain
surfaces on the (alpha, tau) plane and the hint layer's effect, 4 gain against dataset
complexity, 5 parameter importance, 6 learning curves, 7 every trial (sortable).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from kdtune.report import figures, sections
from kdtune.report.data import ReportError, Run, load_run
from kdtune.report.html import CSS, SORT_JS, esc, figure_div, note, plotly_head
from kdtune.rundir import REPORT_FILE, write_text_atomic

__all__ = ["REPORT_FILE", "ReportError", "build_report", "load_runs", "render"]

SECTIONS = [("overview", "1 · Overview"), ("tables", "2 · The core study's tables"),
            ("surfaces", "3 · Gain surfaces"), ("complexity", "4 · Gain versus complexity"),
            ("importance", "5 · Parameter importance"), ("curves", "6 · Learning curves"),
            ("trials", "7 · Every trial")]


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Read each run directory; labels are the folder names, made unique if they repeat."""
    runs = []
    for path in run_dirs:
        name = Path(path).resolve().name
        label = name
        n = 2
        while label in {r.label for r in runs}:
            label = f"{name} ({n})"
            n += 1
        runs.append(load_run(path, label))
    return runs


class _Figures:
    """Numbers the figure divs, so that every id in the page is unique and stable."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> str:
        if fig is None:
            return ""
        self.count += 1
        return figure_div(fig, f"fig-{self.count}")


def render(runs: list[Run]) -> str:
    """The report page of ``runs`` (one run, or several overlaid) as an HTML string."""
    multi = len(runs) > 1
    fig = _Figures()
    study = runs[0].trials[0]["study"] if runs[0].trials else runs[0].label
    title = (f"kdtune · {esc(study)}" if not multi
             else f"kdtune · comparison of {len(runs)} runs")

    def per_run(body) -> str:
        """One block per run; the run's name heads it in comparison mode."""
        parts = []
        for run in runs:
            content = body(run)
            if multi:
                content = f"<div class='run'><h3>run {esc(run.label)}</h3>{content}</div>"
            parts.append(content)
        return "\n".join(parts)

    def prefix(run: Run) -> str:
        return f"{run.label}: " if multi else ""

    def surfaces(run: Run) -> str:
        out = []
        for d in run.dataset_labels:
            out.append(fig(figures.surface_figure(run, d, prefix(run))))
            out.append(fig(figures.hint_layer_figure(run, d, prefix(run))))
        out = [o for o in out if o]
        return "\n".join(out) or note("No search trial with α and τ: nothing to draw.")

    def importance(run: Run) -> str:
        out = []
        for d in run.dataset_labels:
            out.append(fig(figures.importance_figure(run, d, prefix(run))))
            missing_ = [f"{esc(m)}: {esc(imp.note)}" for (dd, m), imp in run.importance.items()
                        if dd == d and imp.note]
            if missing_:
                out.append(note(f"{esc(d)} — " + "; ".join(missing_)))
        sources = sorted({imp.source for imp in run.importance.values()})
        out.append(note("Computed from: " + esc(", ".join(sources)) + ".") if sources else
                   note("No search trials: no importance to compute."))
        return "\n".join(o for o in out if o)

    def curves(run: Run) -> str:
        out = []
        for d in run.dataset_labels:
            f, why = figures.curves_figure(run, d, prefix(run))
            out.append(fig(f))
            if why:
                out.append(note(f"{esc(d)}: {esc(why)}."))
        return "\n".join(o for o in out if o) or note("No epoch rows: no curves.")

    def tables(run: Run) -> str:
        return "\n".join([sections.teacher_table(run)]
                         + [sections.method_table(run, m) for m in run.distilled()]) + note(
            "Configs were chosen on the validation split; the test split only reports. Gain = "
            "mean test accuracy of the distilled student − that of the scratch student over the "
            "same seeds; interval: paired Student-t, 95%.")

    def complexity() -> str:  # all runs in one figure
        figure, why = figures.complexity_figure(runs)
        return (fig(figure) + (note(why) if why else "")
                + "".join(fig(f) for f in figures.knob_figures(runs))
                + fig(figures.selection_figure(runs)))

    body = {  # built in page order, so that the figures are numbered in page order
        "overview": per_run(sections.overview),
        "tables": per_run(tables),
        "surfaces": per_run(surfaces),
        "complexity": complexity(),
        "importance": per_run(importance),
        "curves": per_run(curves),
        "trials": note("Click a header to sort; click again to reverse.")
        + sections.trials_table(runs),
    }
    answer = per_run(lambda run: sections.answer(run))
    runs_line = " · ".join(f"run {esc(r.label)}: {len(r.trials)} trials" for r in runs)
    toc = "".join(f"<a href='#{key}'>{esc(name)}</a>" for key, name in SECTIONS)
    page = [
        f"<h1>{title}</h1>",
        f"<p class='muted'>{runs_line} · built "
        f"{dt.datetime.now().isoformat(timespec='seconds')} by kdtune report</p>",
        f"<nav class='toc'>{toc}</nav>",
        "<h2 id='answer'>Did distillation pay?</h2>", f"<div class='answer'>{answer}</div>",
    ]
    for key, name in SECTIONS:
        page.append(f"<section id='{key}'><h2>{esc(name)}</h2>{body[key]}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{title}</title><style>{CSS}</style>"
            f"{plotly_head()}</head><body>"
            + "\n".join(page) + f"<script>{SORT_JS}</script></body></html>")


def build_report(run_dir: str | Path | Sequence[str | Path],
                 out: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """Write the report of one run directory (default ``run_dir/report.html``), or of several
    overlaid (``out`` required), and return its path; ``log`` hears what reading the runs
    repaired (a finished run's missing or damaged ``gains.parquet``, written anew)."""
    dirs = [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir)
    if not dirs:
        raise ReportError("no run directory given")
    if len(dirs) > 1 and out is None:
        raise ReportError("a comparison of several runs needs --out FILE")
    runs = load_runs(dirs)
    for line in (line for run in runs for line in run.notes) if log else ():
        log(line)
    page = render(runs)
    out_path = Path(out) if out else Path(dirs[0]) / REPORT_FILE
    write_text_atomic(page, out_path)
    return out_path
