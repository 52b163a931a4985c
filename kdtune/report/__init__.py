"""A self-contained HTML report, built from the run directory's Parquet files alone.

plotly.js is inlined once, so the file opens offline and can be mailed around. Every string
that comes from a spec or the data is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from kdtune.results import EPOCHS_FILE, TRIALS_FILE, compute_gains, read_rows

REPORT_FILE = "report.html"


class ReportError(RuntimeError):
    """The run directory holds nothing a report can be built from."""


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure_html(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def gain_table(gains: list[dict[str, Any]]) -> str:
    rows = []
    for g in gains:
        gain = "" if g["method"] == "scratch" else (
            f"<b>{_fmt(g['gain_pts'], '+.2f')}</b> [{_fmt(g['gain_ci_low'], '+.2f')}, "
            f"{_fmt(g['gain_ci_high'], '+.2f')}]")
        hps = ", ".join(f"{k}={_fmt(g[k], '.3g')}" for k in ("alpha", "tau", "hint_layer",
                                                            "beta", "lr") if g.get(k) is not None)
        rows.append([_fmt(g["dataset"]), _fmt(g["method"]), str(g["n_seeds"]),
                     f"{_fmt(g['test_acc_mean'])} ± {_fmt(g['test_acc_std'])}",
                     _fmt(g["val_acc_mean"]), gain, hps])
    return _table(["dataset", "method", "seeds", "test acc % (mean ± sd)", "val acc %",
                   "gain over scratch, pts [95% CI]", "selected on validation"], rows, "gains")


def gain_figure(gains: list[dict[str, Any]]) -> go.Figure | None:
    distilled = [g for g in gains if g["method"] != "scratch" and not math.isnan(g["gain_pts"])]
    if not distilled:
        return None
    fig = go.Figure()
    for method in sorted({g["method"] for g in distilled}):
        rows = [g for g in distilled if g["method"] == method]
        fig.add_bar(name=method, x=[g["dataset"] for g in rows], y=[g["gain_pts"] for g in rows],
                    error_y=dict(type="data", symmetric=False,
                                 array=[_nz(g["gain_ci_high"] - g["gain_pts"]) for g in rows],
                                 arrayminus=[_nz(g["gain_pts"] - g["gain_ci_low"]) for g in rows]))
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title="Gain over the scratch student (test accuracy points, 95% CI)",
                      barmode="group", yaxis_title="gain (points)", height=380)
    return fig


def _nz(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else value


def alpha_tau_figure(trials: list[dict[str, Any]], dataset: str) -> go.Figure | None:
    rows = [r for r in trials if r["role"] == "search" and r["dataset"] == dataset
            and r["alpha"] is not None and r["tau"] is not None and r["val_acc"] is not None]
    if not rows:
        return None
    methods = sorted({r["method"] for r in rows})
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    low = min(r["val_acc"] for r in rows)
    high = max(r["val_acc"] for r in rows)
    symbols = ["circle", "diamond", "square", "triangle-up", "x", "star"]
    for col, method in enumerate(methods, start=1):
        mrows = [r for r in rows if r["method"] == method]
        layers = sorted({r["hint_layer"] or "" for r in mrows})
        for li, layer in enumerate(layers):
            lrows = [r for r in mrows if (r["hint_layer"] or "") == layer]
            fig.add_scatter(
                row=1, col=col, mode="markers", name=f"{method} {layer}".strip(),
                x=[r["alpha"] for r in lrows], y=[r["tau"] for r in lrows],
                text=[f"val {r['val_acc']:.2f}% · {r['status']} · {r['epochs_run']} ep"
                      + (f" · hint {html.escape(r['hint_layer'])}" if r["hint_layer"] else "")
                      for r in lrows],
                hovertemplate="α=%{x:.3f}, τ=%{y:.2f}<br>%{text}<extra></extra>",
                marker=dict(size=11, symbol=symbols[li % len(symbols)],
                            color=[r["val_acc"] for r in lrows], colorscale="Viridis",
                            cmin=low, cmax=high, line=dict(width=1, color="black"),
                            showscale=(col == len(methods) and li == 0),
                            colorbar=dict(title="val acc %")))
        fig.update_xaxes(title_text="α", range=[-0.05, 1.05], row=1, col=col)
    fig.update_yaxes(title_text="τ", row=1, col=1)
    fig.update_layout(title=f"{dataset}: search trials on the α–τ plane, coloured by validation "
                      "accuracy (marker: hint layer)", height=420, showlegend=True)
    return fig


def curves_figure(epochs: list[dict[str, Any]], dataset: str) -> go.Figure | None:
    rows = [r for r in epochs if r["dataset"] == dataset and r["role"] in ("final", "teacher")]
    if not rows:
        return None
    fig = go.Figure()
    for method in sorted({r["method"] for r in rows}, key=lambda m: (m != "teacher", m)):
        by_epoch: dict[int, list[float]] = {}
        for r in rows:
            if r["method"] == method and r["val_acc"] is not None:
                by_epoch.setdefault(r["epoch"], []).append(r["val_acc"])
        xs = sorted(by_epoch)
        fig.add_scatter(x=xs, y=[sum(by_epoch[e]) / len(by_epoch[e]) for e in xs],
                        mode="lines+markers", name=method)
    fig.update_layout(title=f"{dataset}: validation accuracy per epoch (final runs, mean over "
                      "seeds; teacher)", xaxis_title="epoch", yaxis_title="val acc %",
                      height=360)
    return fig


def trials_table(trials: list[dict[str, Any]]) -> str:
    cols = ["stage", "dataset", "method", "role", "seed", "alpha", "tau", "hint_layer", "beta",
            "lr", "val_acc", "test_acc", "epochs_run", "status", "wall_s"]
    rows = [[_fmt(r.get(c), ".3g" if c in ("alpha", "tau", "beta", "lr", "wall_s") else ".2f")
             for c in cols] for r in trials]
    return _table(cols, rows, "trials")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} .muted{color:#666}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4;cursor:pointer} table.trials{font-size:12px}
.answer{background:#f6f9ff;border-left:4px solid #4a7bd0;padding:.6em 1em;margin:1em 0}
"""

SORT_JS = """
document.querySelectorAll('th').forEach(function(th){th.addEventListener('click',function(){
 var table=th.closest('table'),body=table.tBodies[0],i=Array.from(th.parentNode.children).indexOf(th);
 var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 var rows=Array.from(body.rows);rows.sort(function(a,b){
  var x=a.cells[i].innerText,y=b.cells[i].innerText,nx=parseFloat(x),ny=parseFloat(y);
  var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});});});
"""


def answer(gains: list[dict[str, Any]]) -> str:
    """One sentence per dataset: did distillation pay, and with which settings."""
    parts = []
    for dataset in sorted({g["dataset"] for g in gains}):
        rows = [g for g in gains if g["dataset"] == dataset and g["method"] != "scratch"
                and not math.isnan(g["gain_pts"])]
        if not rows:
            continue
        best = max(rows, key=lambda g: g["gain_pts"])
        significant = not math.isnan(best["gain_ci_low"]) and best["gain_ci_low"] > 0
        hps = ", ".join(f"{k}={_fmt(best[k], '.3g')}" for k in ("alpha", "tau", "hint_layer")
                        if best.get(k) is not None)
        verdict = ("distillation paid" if significant else
                   "no gain distinguishable from zero at 95%" if best["gain_pts"] > 0 or
                   math.isnan(best["gain_ci_low"]) else "distillation did not pay")
        parts.append(f"<li><b>{_fmt(dataset)}</b>: {verdict}; best method "
                     f"<b>{_fmt(best['method'])}</b> ({hps}) at {_fmt(best['gain_pts'], '+.2f')} "
                     f"points [{_fmt(best['gain_ci_low'], '+.2f')}, "
                     f"{_fmt(best['gain_ci_high'], '+.2f')}].</li>")
    return "<ul>" + "".join(parts) + "</ul>" if parts else "<p>No final evaluation yet.</p>"


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` (default ``run_dir/report.html``) and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / TRIALS_FILE).exists():
        raise ReportError(f"{run_dir}: no {TRIALS_FILE} (not a kdtune run directory, or no "
                          "trial has finished yet)")
    trials = read_rows(run_dir / TRIALS_FILE)
    epochs = read_rows(run_dir / EPOCHS_FILE)
    datasets_meta = read_rows(run_dir / "datasets.parquet")
    gains = compute_gains(trials)
    study = trials[0]["study"] if trials else run_dir.name
    counts: dict[str, int] = {}
    for r in trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    compute_s = sum(r["wall_s"] or 0 for r in trials)
    sections = [
        f"<h1>kdtune · {_fmt(study)}</h1>",
        f"<p class='muted'>run {_fmt(run_dir.name)} · {len(trials)} trials ("
        + ", ".join(f"{v} {_fmt(k)}" for k, v in sorted(counts.items()))
        + f") · {compute_s / 60:.1f} trial-minutes · built "
        f"{dt.datetime.now().isoformat(timespec='seconds')}</p>",
        "<h2>Did distillation pay?</h2>", f"<div class='answer'>{answer(gains)}</div>",
        "<p class='muted'>Configs were chosen on the validation split; the test split only "
        "reports. Gain = mean test accuracy of the distilled student − that of the scratch "
        "student on the same seeds; interval: paired Student-t, 95%.</p>",
        gain_table(gains),
    ]
    if datasets_meta:
        sections += ["<h2>Datasets</h2>", _table(
            list(datasets_meta[0]), [[_fmt(v) for v in row.values()] for row in datasets_meta])]
    figures = [gain_figure(gains)]
    for dataset in sorted({r["dataset"] for r in trials}):
        figures += [alpha_tau_figure(trials, dataset), curves_figure(epochs, dataset)]
    sections += ["<h2>Figures</h2>"] + [_figure_html(f) for f in figures if f is not None]
    sections += ["<h2>Every trial</h2><p class='muted'>Click a header to sort.</p>",
                 trials_table(trials)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdtune · "
            f"{_fmt(study)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + "\n".join(sections) + f"<script>{SORT_JS}</script></body></html>")
    out_path = Path(out) if out else run_dir / REPORT_FILE
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return out_path
