"""The report's plotly figures. Each returns ``None`` when the run holds nothing to draw.

Every string from the data is escaped with :func:`kdtune.report.html.esc` before it reaches
plotly (see that module for why).
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kdtune import methods as registry
from kdtune.report.data import Importance, Run, _num
from kdtune.report.html import esc, missing
from kdtune.report.surface import fit_surface
from kdtune.results import best_search_trial, knob_sweeps

TEACHER = "teacher"  # the curves' name for the pretrained teacher (role teacher)
TEACHER_COLOUR = "#222222"
PALETTE = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
COLORSCALE = "RdBu"  # red: distillation lost, blue: it paid
SYMBOLS = ["circle", "diamond", "square", "triangle-up", "cross", "star-triangle-up", "hexagon",
           "triangle-down"]


def _fixed_colour(method: str) -> str | None:
    if method == TEACHER:
        return TEACHER_COLOUR
    info = registry.REGISTRY.get(method)
    return info.colour if info else None


def colour(method: str, order: list[str]) -> str:
    """A method's colour: its own (the registry's), else the next of the palette."""
    fixed = _fixed_colour(method)
    if fixed:
        return fixed
    others = [m for m in order if not _fixed_colour(m)]
    return PALETTE[others.index(method) % len(PALETTE)] if method in others else PALETTE[0]


def _hp_text(r: dict[str, Any]) -> str:
    parts = []
    for k in ("alpha", "tau", "hint_layer", "beta", "lr"):
        v = r.get(k)
        if v is not None:
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={esc(v)}")
    return " ".join(parts)


def _title(text: str, sub: str = "") -> dict[str, Any]:
    return {"text": text + (f"<br><sup>{sub}</sup>" if sub else ""), "x": 0.01, "xanchor": "left"}


# ----------------------------------------------------------------------------- gain surfaces

def surface_figure(run: Run, dataset: str, prefix: str = "") -> go.Figure | None:
    """Per distilling method, the fitted validation gain over the (alpha, tau) plane."""
    rows = [r for r in run.trials if r["role"] == "search" and r["dataset"] == dataset
            and not registry.is_baseline(r["method"]) and _num(r["alpha"]) and _num(r["tau"])]
    if not rows:
        return None
    methods = [m for m in run.methods(dataset) if any(r["method"] == m for r in rows)]
    # each method against its own baseline: scratch, or reversed_scratch for reversed
    refs = {m: run.scratch_reference(dataset, registry.baseline_of(m)) for m in methods}
    ref_ok = all(v is not None for v in refs.values())
    bases = {m: refs[m] if ref_ok else 0.0 for m in methods}
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    titles = []
    fits = {}
    for m in methods:
        done = [r for r in rows if r["method"] == m and r["status"] == "finished"
                and _num(r["val_acc"])]
        fits[m] = fit_surface([r["alpha"] for r in done], [r["tau"] for r in done],
                              [r["val_acc"] - bases[m] for r in done])
        n = sum(1 for r in rows if r["method"] == m)
        noise = run.trial_noise(dataset, m)
        titles.append(f"{esc(m)} · {n} trials" + ("" if fits[m] else " · too few to fit")
                      + (f" · one trial ±{noise:.1f} pts (seed sd)" if noise is not None
                         else ""))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles,
                        horizontal_spacing=0.08, vertical_spacing=0.16)
    layers = sorted({r["hint_layer"] for r in rows if r["hint_layer"] is not None})
    shown: set[str] = set()
    # one colour scale for every panel, points and surfaces alike (zero in the middle when the
    # colour is a gain); set explicitly per trace: plotly cannot share a coloraxis between
    # contours and markers
    values = [r["val_acc"] - bases[r["method"]] for r in rows if _num(r["val_acc"])] + [
        float(v) for f in fits.values() if f is not None for v in (f.z.min(), f.z.max())]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if ref_ok:
        low, high = -max(abs(low), abs(high), 0.1), max(abs(low), abs(high), 0.1)
    scale = {"colorscale": COLORSCALE, "zmin": low, "zmax": high, "colorbar": dict(
        title=dict(text="gain, pts" if ref_ok else "val acc %"), len=0.9)}

    def legend(name: str) -> bool:
        first = name not in shown
        shown.add(name)
        return first

    for i, m in enumerate(methods):
        row, col = i // ncols + 1, i % ncols + 1
        surface = fits[m]
        if surface is not None:
            fig.add_trace(go.Contour(
                x=surface.x, y=surface.y, z=surface.z, opacity=0.85, **scale,
                showscale=legend("colour bar"),
                contours=dict(showlabels=True, labelfont=dict(size=10, color="white")),
                line=dict(width=0.5), name=f"{esc(m)} fitted", showlegend=False,
                hovertemplate="α=%{x:.2f} τ=%{y:.2f}<br>fitted: %{z:+.2f} pts"
                              "<extra>GP surface</extra>"), row=row, col=col)
            # where the fit's 95 % band (+-1.96 posterior sd) is wider than the surface's whole
            # range it knows less than it shows: fade it (8 noisy single-seed trials are no
            # confident map)
            spread = float(surface.z.max() - surface.z.min())
            unsure = [[1.0 if 2 * 1.96 * sd > spread else None for sd in sd_row]
                      for sd_row in surface.sd]
            if any(v for sd_row in unsure for v in sd_row):
                fig.add_trace(go.Heatmap(
                    x=surface.x, y=surface.y, z=unsure, showscale=False, hoverinfo="skip",
                    colorscale=[[0, "rgba(255,255,255,0.7)"], [1, "rgba(255,255,255,0.7)"]],
                    name="uncertain", legendgroup="uncertain", showlegend=legend("uncertain")),
                    row=row, col=col)
        mrows = [r for r in rows if r["method"] == m]
        base, ref = bases[m], (refs[m] if ref_ok else None)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in mrows:
            state = ("failed" if r["status"] == "failed" or not _num(r["val_acc"])
                     else "stopped" if r["status"] == "stopped" else "finished")
            groups.setdefault((state, r["hint_layer"] or ""), []).append(r)
        for (state, layer), grp in sorted(groups.items()):
            sym = SYMBOLS[layers.index(layer) % len(SYMBOLS)] if layer in layers else "circle"
            name = {"finished": "trial", "stopped": "stopped early", "failed": "failed"}[state]
            name += f" · hint {esc(layer)}" if layer else ""
            marker: dict[str, Any] = dict(size=10, symbol=sym, line=dict(width=1.2, color="#222"))
            if state == "failed":
                marker.update(symbol="x", color="#555", line=dict(width=0))
            else:
                marker.update(color=[r["val_acc"] - base for r in grp], colorscale=COLORSCALE,
                              cmin=scale["zmin"], cmax=scale["zmax"],
                              colorbar=scale["colorbar"],
                              showscale=not any(fits.values()) and legend("colour bar"))
                if state == "stopped":
                    marker["symbol"] = sym + "-open"
                    marker["line"] = dict(width=2)
            fig.add_trace(go.Scatter(
                x=[r["alpha"] for r in grp], y=[r["tau"] for r in grp], mode="markers",
                marker=marker, name=name, legendgroup=name, showlegend=legend(name),
                text=[_trial_hover(r, base, ref) for r in grp],
                hovertemplate="%{text}<extra></extra>"), row=row, col=col)
        best = best_search_trial(run.trials, dataset, m)
        if best is not None and _num(best["alpha"]) and _num(best["tau"]):
            fig.add_trace(go.Scatter(
                x=[best["alpha"]], y=[best["tau"]], mode="markers", name="selected (best val)",
                legendgroup="selected", showlegend=legend("selected"),
                marker=dict(symbol="star", size=18, color="gold", line=dict(width=1.5,
                                                                           color="#222")),
                text=[_trial_hover(best, base, ref)], hovertemplate="%{text}<extra>selected"
                "</extra>"), row=row, col=col)
        fig.update_xaxes(title_text="α (weight of the distillation loss)", row=row, col=col)
        fig.update_yaxes(title_text="τ (temperature)", row=row, col=col)
    baselines = {registry.baseline_of(m) or registry.student_baseline(): refs[m]
                 for m in methods}
    what = ("validation gain over the tuned " + " / ".join(
        f"{b} student ({v:.2f}%)" for b, v in baselines.items()) + ", points" if ref_ok
        else "validation accuracy, % (no baseline search to compare)")
    fig.update_layout(
        title=_title(f"{esc(prefix)}{esc(dataset)}: where distillation pays on the α–τ plane",
                     "colour: " + what + "; surface: Gaussian-process fit over the finished "
                     "search trials (other searched parameters vary and act as noise), faded "
                     "where its 95% band is wider than the surface's whole range"),
        height=360 * nrows + 90, legend=dict(orientation="h", y=-0.18 if nrows == 1 else -0.08))
    return fig


def _trial_hover(r: dict[str, Any], base: float, ref: float | None) -> str:
    if _num(r["val_acc"]):
        val = f"val {r['val_acc']:.2f}%"
        if ref is not None:
            val += f" (gain {r['val_acc'] - base:+.2f} pts)"
    else:
        val = "no validation accuracy"
    status = esc(r["status"]) + (f": {esc(r['failure'])}" if r.get("failure") else "")
    return (f"{esc(r['method'])} · {val}<br>{_hp_text(r)}<br>{status}, "
            f"{r['epochs_run'] or 0}/{r.get('epochs_budget') or '?'} epochs<br>"
            f"{esc(r['trial_id'])}")


def hint_layer_figure(run: Run, dataset: str, prefix: str = "") -> go.Figure | None:
    """Validation gain of the search trials by hint layer (IKD and any method with hints)."""
    rows = [r for r in run.trials if r["role"] == "search" and r["dataset"] == dataset
            and r["hint_layer"] is not None and r["status"] in ("finished", "stopped")
            and _num(r["val_acc"])]
    layers = sorted({r["hint_layer"] for r in rows})
    if len(layers) < 2:
        return None
    ref = run.scratch_reference(dataset)
    base = ref if ref is not None else 0.0
    fig = go.Figure()
    order = run.methods()
    for m in [m for m in order if any(r["method"] == m for r in rows)]:
        mrows = [r for r in rows if r["method"] == m]
        fig.add_trace(go.Box(
            x=[esc(r["hint_layer"]) for r in mrows], y=[r["val_acc"] - base for r in mrows],
            name=esc(m), boxpoints="all", jitter=0.35, pointpos=0, marker_color=colour(m, order),
            text=[_trial_hover(r, base, ref) for r in mrows],
            hovertemplate="%{text}<extra></extra>"))
    if ref is not None:
        fig.add_hline(y=0, line_dash="dot", line_color="#555")
    fig.update_layout(
        title=_title(f"{esc(prefix)}{esc(dataset)}: effect of the hint layer",
                     "search trials (α, τ and the other parameters vary); y: " +
                     ("validation gain over the tuned scratch student, points" if ref is not None
                      else "validation accuracy, %")),
        boxmode="group", xaxis=dict(title="hint layer (teacher:student tap)",
                                    categoryorder="category ascending"),
        yaxis_title="gain, pts" if ref is not None else "val acc %", height=380)
    return fig


# ----------------------------------------------------------------------------- complexity

def _point_label(meta: dict[str, Any]) -> str:
    label = str(meta.get("dataset"))
    knob = meta.get("knob")
    if knob and f"{knob}=" not in label:
        value = meta.get("knob_value")
        label += f" ({knob}={value:g})" if _num(value) else f" ({knob})"
    return label


def complexity_figure(runs: list[Run]) -> tuple[go.Figure | None, str]:
    """Gain against the measured complexity score: one point per dataset, one series per method.

    Returns the figure and a note (escaped HTML) on what it could not show.
    """
    multi = len(runs) > 1
    points = []
    for ri, run in enumerate(runs):
        teacher = _teacher_acc(run)
        for g in run.gains:
            meta = run.dataset_meta(g["dataset"])
            score = meta.get("complexity_score")
            if g["method"] == registry.student_baseline():
                gap = teacher.get(g["dataset"])
                if gap is not None:
                    points.append((ri, run, "teacher − scratch", meta, score,
                                   gap - g["test_acc_mean"], None, None, g))
                continue
            if missing(g["gain_pts"]) or not g.get("baseline"):
                continue
            points.append((ri, run, g["method"], meta, score, g["gain_pts"], g["gain_ci_low"],
                           g["gain_ci_high"], g))
    if not points:
        return None, "No final evaluation with a scratch baseline yet: no gain to plot."
    measured = any(_num(p[4]) for p in points)
    notes = []
    if measured:
        unscored = sorted({f"{esc(p[1].label) + ': ' if multi else ''}{esc(p[3]['dataset'])}"
                           for p in points if not _num(p[4])})
        points = [p for p in points if _num(p[4])]
        if unscored:
            notes.append("Complexity was not measured for " + ", ".join(unscored)
                         + ": not plotted.")
    else:
        notes.append("Complexity was not measured in "
                     + ("these runs" if multi else "this run")
                     + " (datasets.parquet has no complexity_score): datasets are shown in run "
                     "order instead of on a complexity scale.")
    order: list[str] = []
    for p in points:
        if p[2] not in order and p[2] != "teacher − scratch":
            order.append(p[2])
    order.sort(key=lambda m: (_fixed_colour(m) is None, m))
    series: dict[tuple[int, str], list[Any]] = {}
    for p in points:
        series.setdefault((p[0], p[2]), []).append(p)
    fig = go.Figure()
    keys = sorted(series, key=lambda k: (k[1] == "teacher − scratch", k[1], k[0]))
    # on a numeric axis the methods sit side by side around each score, so that their error
    # bars do not hide each other (the hover gives the exact score); one series per run
    # carries the dataset labels
    xs_all = [p[4] for p in points] if measured else []
    width = (max(xs_all) - min(xs_all) or 1.0) * 0.012 if xs_all else 0.0
    labelled: set[int] = set()
    for k, (ri, method) in enumerate(keys):
        pts = series[(ri, method)]
        run = runs[ri]
        if measured:
            pts = sorted(pts, key=lambda p: p[4])
            xs = [p[4] + (k - (len(keys) - 1) / 2) * width for p in pts]
        else:
            xs = [(f"{esc(run.label)}: " if multi else "") + esc(_point_label(p[3])) for p in pts]
        gap = method == "teacher − scratch"
        name = esc(method) + (f" · {esc(run.label)}" if multi else "")
        ys = [p[5] for p in pts]
        text = measured and not gap and ri not in labelled
        if text:
            labelled.add(ri)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=name, mode="lines+markers+text" if text else "lines+markers",
            line=dict(dash="dot" if not gap else "dash", width=1.5,
                      color="#999" if gap else colour(method, order)),
            marker=dict(size=11, symbol=SYMBOLS[ri % len(SYMBOLS)],
                        color="#999" if gap else colour(method, order)),
            visible="legendonly" if gap else True,
            text=[esc(_point_label(p[3])) for p in pts], textposition="top center",
            textfont=dict(size=10),
            error_y=None if gap else dict(
                type="data", symmetric=False, thickness=1.2,
                array=[_nz(p[7] - p[5]) if _num(p[7]) else 0 for p in pts],
                arrayminus=[_nz(p[5] - p[6]) if _num(p[6]) else 0 for p in pts]),
            customdata=[_gain_hover(p, multi) for p in pts],
            hovertemplate="%{customdata}<extra></extra>"))
    if measured:
        for ri, run in enumerate(runs):
            for t in run.trends:
                if t["axis"] == "complexity_score" and _num(t.get("quantile")):
                    _trend_traces(fig, t, run, multi, colour(t["method"], order),
                                  [p[4] for p in points if p[0] == ri and p[2] == t["method"]])
    fig.add_hline(y=0, line_color="#555", line_width=1)
    fig.update_layout(
        title=_title("Gain over the scratch student against dataset complexity",
                     "test accuracy points, mean over seeds; error bars: paired 95% CI over the "
                     "seeds; solid line and band: weighted fit of gain on complexity and its "
                     "95% band; dashed (click to show): teacher − scratch gap"),
        xaxis_title=("measured complexity score (0 = easy, 1 = hard)" if measured
                     else "dataset (complexity not measured)"),
        yaxis_title="gain, pts", height=460, scattermode="group")
    if measured:  # room for the labels of the outermost datasets
        low, high = min(xs_all), max(xs_all)
        pad = max(0.05, 0.08 * (high - low))
        fig.update_xaxes(range=[low - pad, high + pad])
    return fig, " ".join(notes)


def _trend_traces(fig: go.Figure, t: dict[str, Any], run: Run, multi: bool, c: str,
                  xs: list[float]) -> None:
    """The fitted line of gain on complexity and its 95 % band, over the datasets' range."""
    from kdtune.stats import Trend

    if len(xs) < 2:
        return
    trend = Trend(t["slope"], t["slope_low"], t["slope_high"], t["intercept"], t["n_points"],
                  t["dof"], t["support"], t["x_mean"], t["mean_se"], t["quantile"])
    grid = [min(xs) + (max(xs) - min(xs)) * i / 40 for i in range(41)]
    bands = [trend.band(x) for x in grid]
    name = f"{esc(t['method'])} fit" + (f" · {esc(run.label)}" if multi else "")
    fig.add_trace(go.Scatter(
        x=grid + grid[::-1], y=[b[1] for b in bands] + [b[0] for b in bands[::-1]],
        fill="toself", mode="lines", line=dict(width=0), fillcolor=c, opacity=0.12,
        hoverinfo="skip", legendgroup=name, showlegend=False))
    fig.add_trace(go.Scatter(
        x=grid, y=[t["intercept"] + t["slope"] * x for x in grid], mode="lines", name=name,
        legendgroup=name, line=dict(color=c, width=2.5),
        hovertemplate=(f"{esc(t['method'])}: slope {t['slope']:+.1f} pts per unit "
                       f"[{t['slope_low']:+.1f}, {t['slope_high']:+.1f}], {esc(t['support'])}"
                       "<extra></extra>")))


def _gain_hover(p: tuple, multi: bool) -> str:
    ri, run, method, meta, score, y, low, high, g = p
    head = (f"{esc(run.label)}<br>" if multi else "") + f"<b>{esc(meta['dataset'])}</b>"
    score_txt = f"complexity {score:.3f}" if _num(score) else "complexity not measured"
    if method == "teacher − scratch":
        return f"{head}<br>teacher − scratch: {y:+.2f} pts<br>{score_txt}"
    ci = f"[{low:+.2f}, {high:+.2f}]" if _num(low) else "(one seed: no interval)"
    return (f"{head} · {esc(method)}<br>gain {y:+.2f} pts {ci}<br>test "
            f"{g['test_acc_mean']:.2f}% vs {esc(g.get('baseline'))} "
            f"{g['scratch_test_acc_mean']:.2f}%, "
            f"{g['n_seeds']} seed(s)<br>{score_txt}")


def _nz(value: float) -> float:
    return 0.0 if missing(value) else max(0.0, value)


def _teacher_acc(run: Run) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in run.trials:
        if r["role"] == "teacher" and r["status"] in ("finished", "reused") and _num(
                r["test_acc"]):
            out.setdefault(r["dataset"], []).append(r["test_acc"])
    return {k: sum(v) / len(v) for k, v in out.items()}


def selection_figure(runs: list[Run]) -> go.Figure | None:
    """Do the best settings move as datasets get harder? Per method, the selected α and τ
    against the complexity score; bars span the near-best search trials (within one trial's
    seed noise of the best validation accuracy), i.e. how sharply the search pinned them."""
    multi = len(runs) > 1
    fig = make_subplots(rows=1, cols=2, subplot_titles=["selected α", "selected τ"],
                        horizontal_spacing=0.1)
    drawn = 0
    for ri, run in enumerate(runs):
        order = run.methods()
        for method in run.distilled():
            pts = []
            for g in run.gains:
                score = run.dataset_meta(g["dataset"]).get("complexity_score")
                if g["method"] != method or not (_num(score) and _num(g.get("alpha"))
                                                 and _num(g.get("tau"))):
                    continue
                search = [r for r in run.trials if r["role"] == "search"
                          and r["dataset"] == g["dataset"] and r["method"] == method
                          and r["status"] == "finished" and _num(r["val_acc"])
                          and _num(r["alpha"]) and _num(r["tau"])]
                if not search:
                    continue
                best = max(r["val_acc"] for r in search)
                noise = run.trial_noise(g["dataset"], method) or 1.0
                near = [r for r in search if r["val_acc"] >= best - noise]
                pts.append((score, g, near))
            if not pts:
                continue
            pts.sort(key=lambda p: p[0])
            name = esc(method) + (f" · {esc(run.label)}" if multi else "")
            for col, key in ((1, "alpha"), (2, "tau")):
                ys = [p[1][key] for p in pts]
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=ys, mode="lines+markers", name=name,
                    legendgroup=name, showlegend=col == 1,
                    marker=dict(size=10, symbol=SYMBOLS[ri % len(SYMBOLS)],
                                color=colour(method, order)),
                    line=dict(color=colour(method, order), dash="dot"),
                    error_y=dict(type="data", symmetric=False,
                                 array=[max(r[key] for r in p[2]) - y for p, y in zip(pts, ys)],
                                 arrayminus=[y - min(r[key] for r in p[2])
                                             for p, y in zip(pts, ys)]),
                    text=[f"{esc(p[1]['dataset'])}: {len(p[2])} near-best trial(s)"
                          for p in pts],
                    hovertemplate="%{text}<br>" + key + " %{y:.3g}<extra></extra>"),
                    row=1, col=col)
                drawn += 1
    if not drawn:
        return None
    fig.update_xaxes(title_text="measured complexity score")
    fig.update_layout(
        title=_title("Do the best settings move as datasets get harder?",
                     "the selected α and τ (on validation) per dataset; bars: the range of the "
                     "search trials within one trial's seed noise of the best"),
        height=400, legend=dict(orientation="h", y=-0.22))
    return fig


def knob_figures(runs: list[Run]) -> list[go.Figure]:
    """Gain against the value of each knob swept over at least two settings (the sweeps the
    trends fit: :func:`kdtune.results.knob_sweeps`)."""
    multi = len(runs) > 1
    sweeps: dict[str, list[tuple[Run, dict[str, Any], dict[str, Any]]]] = {}
    for run in runs:
        meta = {d["dataset"]: d for d in run.datasets}
        compared = [g for g in run.gains if g.get("baseline") and not missing(g["gain_pts"])]
        for method in dict.fromkeys(g["method"] for g in compared):
            mine = [g for g in compared if g["method"] == method]
            for knob, points in knob_sweeps(mine, meta):
                sweeps.setdefault(knob, []).extend(
                    (run, run.dataset_meta(g["dataset"]) | {"knob_value": x}, g)
                    for x, g in points)
    figures = []
    for knob, items in sorted(sweeps.items()):
        if len({it[1]["knob_value"] for it in items}) < 2:
            continue
        fig = go.Figure()
        groups: dict[tuple[str, str, str], list[Any]] = {}
        for run, meta, g in items:
            groups.setdefault((run.label, str(meta.get("name") or ""), g["method"]), []).append(
                (meta, g))
        methods = sorted({k[2] for k in groups})
        for (label, name, method), pts in sorted(groups.items()):
            pts.sort(key=lambda p: p[0]["knob_value"])
            fig.add_trace(go.Scatter(
                x=[p[0]["knob_value"] for p in pts], y=[p[1]["gain_pts"] for p in pts],
                mode="lines+markers", line=dict(color=colour(method, methods)),
                name=" · ".join(esc(s) for s in ([label] if multi else []) + [name, method] if s),
                error_y=dict(type="data", symmetric=False,
                             array=[_nz(p[1]["gain_ci_high"] - p[1]["gain_pts"]) for p in pts],
                             arrayminus=[_nz(p[1]["gain_pts"] - p[1]["gain_ci_low"])
                                         for p in pts]),
                text=[esc(p[0]["dataset"]) for p in pts],
                hovertemplate="%{text}<br>gain %{y:+.2f} pts<extra></extra>"))
        fig.add_hline(y=0, line_color="#555", line_width=1)
        fig.update_layout(title=_title(f"Gain against the knob {esc(knob)}",
                                       "one dataset variant per setting; 95% CI over seeds"),
                          xaxis_title=esc(knob), yaxis_title="gain, pts", height=400)
        figures.append(fig)
    return figures


# ----------------------------------------------------------------------------- importance

def importance_figure(run: Run, dataset: str, prefix: str = "") -> go.Figure | None:
    # a search over one parameter has importance 1 by definition: a note says so, no bar
    entries: dict[str, Importance] = {m: imp for (d, m), imp in run.importance.items()
                                      if d == dataset and imp.values and len(imp.values) > 1}
    if not entries:
        return None
    order = run.methods()
    methods = [m for m in order if m in entries] + [m for m in entries if m not in order]
    params = sorted({p for imp in entries.values() for p in imp.values or {}},
                    key=lambda p: -max(imp.values.get(p, 0) for imp in entries.values()))
    fig = go.Figure()
    for m in methods:
        imp = entries[m]
        fig.add_trace(go.Bar(
            y=[esc(p) for p in params], x=[imp.values.get(p, 0.0) for p in params],
            orientation="h", name=f"{esc(m)} ({imp.n_trials} trials)",
            marker_color=colour(m, order),
            hovertemplate="%{y}: %{x:.2f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(
        title=_title(f"{esc(prefix)}{esc(dataset)}: which searched parameters mattered",
                     "PED-ANOVA (Optuna): how much each parameter sets the best 10% of a search's trials apart; "
                     "normalised to sum to 1 per search"),
        barmode="group", xaxis=dict(title="importance", range=[0, 1.05]),
        yaxis=dict(autorange="reversed"), height=max(260, 60 + 32 * len(params) * len(methods)))
    return fig


# ----------------------------------------------------------------------------- learning curves

def _curve_rows(run: Run, dataset: str, method: str) -> tuple[list[dict[str, Any]], str]:
    """Epoch rows of the final runs of ``method`` (or of its best search trial if none)."""
    if method == TEACHER:
        ids = {r["trial_id"] for r in run.trials if r["dataset"] == dataset
               and r["role"] == "teacher" and r["method"] == registry.PRETRAINED["teacher"]}
        return [e for e in run.epochs if e["trial_id"] in ids], TEACHER
    ids = {r["trial_id"] for r in run.trials if r["dataset"] == dataset and r["method"] == method
           and r["role"] == "final" and r["status"] == "finished"}
    if ids:
        return [e for e in run.epochs if e["trial_id"] in ids], f"final runs ({len(ids)} seeds)"
    best = best_search_trial(run.trials, dataset, method)
    if best is None:
        return [], ""
    return [e for e in run.epochs if e["trial_id"] == best["trial_id"]], "best search trial"


def curves_figure(run: Run, dataset: str, prefix: str = "") -> tuple[go.Figure | None, str]:
    """Validation accuracy and training loss per epoch: teacher, scratch, best distilled."""
    distilled = [g for g in run.gains if g["dataset"] == dataset and g.get("baseline")]
    best = max(distilled, key=lambda g: g["val_acc_mean"])["method"] if distilled else None
    order = run.methods()
    baseline = registry.student_baseline()
    methods = [TEACHER, baseline] + ([best] if best else []) + [
        m for m in run.methods(dataset) if m not in (baseline, best)]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["validation accuracy, %", "training loss"])
    drawn = 0
    notes = []
    for m in methods:
        rows, what = _curve_rows(run, dataset, m)
        if not rows:
            if m == TEACHER and any(r["dataset"] == dataset and r["role"] == "teacher"
                                      and r["status"] == "reused" for r in run.trials):
                notes.append("the teacher was reused from the teacher store: its curve is in "
                             "the run that trained it")
            continue
        shown = m in (TEACHER, baseline, best)
        name = esc(m) + (" (best distilled)" if m == best else "") + f" · {esc(what)}"
        c = colour(m, order)
        for col, key in ((1, "val_acc"), (2, "train_loss")):
            by_epoch: dict[int, list[float]] = {}
            for e in rows:
                if _num(e.get(key)):
                    by_epoch.setdefault(int(e["epoch"]), []).append(e[key])
            xs = sorted(by_epoch)
            if not xs:
                continue
            mean = [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs]
            if any(len(by_epoch[x]) > 1 for x in xs):  # band: min to max over the seeds
                fig.add_trace(go.Scatter(
                    x=xs + xs[::-1], y=[max(by_epoch[x]) for x in xs]
                    + [min(by_epoch[x]) for x in xs[::-1]], fill="toself", mode="lines",
                    line=dict(width=0), fillcolor=c, opacity=0.15, hoverinfo="skip",
                    legendgroup=m, showlegend=False,
                    visible=True if shown else "legendonly"), row=1, col=col)
            fig.add_trace(go.Scatter(
                x=xs, y=mean, mode="lines+markers", name=name, legendgroup=m,
                showlegend=col == 1, line=dict(color=c, width=3 if m == best else 2),
                marker=dict(size=5), visible=True if shown else "legendonly",
                hovertemplate="epoch %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"),
                row=1, col=col)
            drawn += 1
    if not drawn:
        return None, "; ".join(notes)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(
        title=_title(f"{esc(prefix)}{esc(dataset)}: learning curves",
                     "mean over seeds, band: min–max; best distilled = highest mean validation "
                     "accuracy of the final runs; other methods: click the legend"),
        height=400, legend=dict(orientation="h", y=-0.2))
    return fig, "; ".join(notes)
