"""The report's text and table sections: the answer, the overview, the paper's tables, trials."""

from __future__ import annotations

import json
import math
from typing import Any

from kdtune import methods as registry
from kdtune.report import paper
from kdtune.report.data import HYPERPARAMS, Run, _num, compute_summary, spec_dict
from kdtune.report.html import cell, esc, fmt, fmt_duration, missing, note, table


def spec_of(run: Run) -> dict[str, Any]:
    return spec_dict(run.spec_text)


def _arch(spec: dict[str, Any], role: str) -> str:
    part = spec.get(role)
    if not isinstance(part, dict):
        return role
    options = part.get("options") or {}
    widths = options.get("widths") if isinstance(options, dict) else None
    return str(part.get("arch", role)) + (f" {'/'.join(map(str, widths))}"
                                          if isinstance(widths, list) else "")


def _paper_key(run: Run, dataset: str) -> str | None:
    meta = run.dataset_meta(dataset)
    if meta.get("knob"):  # a controlled variant is not the dataset the paper measured
        return None
    name = str(meta.get("name") or dataset)
    return name if name in paper.PUBLISHED and dataset == name else None


# ----------------------------------------------------------------------------- the answer

VERDICT_CLASS = {"pays": "pos", "hurts": "neg", "equivalent": "eq", "inconclusive": "muted"}


def verdict_cell(g: dict[str, Any]) -> dict[str, Any]:
    label = g.get("verdict") or "–"
    return {"html": f"<span class='{VERDICT_CLASS.get(label, '')}'><b>{esc(label)}</b></span>",
            "sort": label}


def _notes(g: dict[str, Any]) -> str:
    notes = []
    target = g.get("target_halfwidth")
    if _num(target):
        state = "reached" if g.get("reached_target") else "not reached"
        notes.append(f"half-width {fmt(g.get('gain_halfwidth'))} (target ±{target:g}: {state})")
    elif _num(g.get("gain_halfwidth")):
        notes.append(f"half-width {fmt(g.get('gain_halfwidth'))}")
    if g.get("verdict") == "inconclusive" and g.get("seeds_needed"):
        notes.append(f"~{g['seeds_needed']} seeds would reach the target")
    if g.get("baseline_still_improving"):
        notes.append(f"<span class='neg'>{esc(g['baseline'])} still improving at the end of its "
                     f"budget ({fmt(g.get('baseline_rise_pts'), '+.1f')} pts): the gain may be "
                     "a budget artefact</span>")
    if _num(g.get("prob_improvement")):
        notes.append(f"P(beats {esc(g['baseline'])} on a seed) = "
                     f"{g['prob_improvement']:.2f} [{fmt(g.get('prob_improvement_low'))}, "
                     f"{fmt(g.get('prob_improvement_high'))}]")
    return "; ".join(notes)


SUPPORT = {"grows": "the gain grows", "falls": "the gain falls",
           "not supported": "no trend the data support"}


def _trend_item(t: dict[str, Any]) -> str:
    axis = "complexity score" if t["axis"] == "complexity_score" else esc(t["axis"])
    return (f"<li>{esc(t['method'])}: gain per unit of {axis} {fmt(t['slope'], '+.1f')} points "
            f"[{fmt(t['slope_low'], '+.1f')}, {fmt(t['slope_high'], '+.1f')}] over "
            f"{t['n_points']} datasets: <b>{SUPPORT.get(t['support'], esc(t['support']))}</b>"
            "</li>")


def answer(run: Run) -> str:
    """Every comparison's verdict with its interval and seed count, then the trend."""
    rows = []
    order = run.dataset_labels
    compared = sorted((g for g in run.gains if g.get("baseline")),
                      key=lambda g: (order.index(g["dataset"]) if g["dataset"] in order else 0,
                                     g["method"]))
    for g in compared:
        hps = ", ".join(f"{k}={fmt(g.get(k), '.3g')}" for k in ("alpha", "tau", "hint_layer")
                        if g.get(k) is not None)
        rows.append([esc(g["dataset"]), f"{esc(g['method'])} vs {esc(g['baseline'])}",
                     _gain_cell(g["gain_pts"], g["gain_ci_low"], g["gain_ci_high"]),
                     cell(str(g["n_seeds"]), g["n_seeds"]), verdict_cell(g), hps or "–",
                     _notes(g)])
    if not rows:
        return "<p>No final evaluation yet.</p>"
    counts: dict[str, int] = {}
    for g in compared:
        counts[g.get("verdict") or "–"] = counts.get(g.get("verdict") or "–", 0) + 1
    head = ("<p>" + ", ".join(f"<b>{n}</b> {esc(v)}" for v, n in sorted(counts.items()))
            + f" of {len(compared)} comparisons. Test accuracy gain over the baseline, in "
            "points, over the seeds both ran; paired Student-t 95 % interval; verdicts: "
            "<b>pays</b> / <b>hurts</b> where the Holm-adjusted paired t-test (over every "
            "comparison of the study) rejects no difference at 5 %, <b>equivalent</b> where "
            "TOST puts the gain inside the equivalence margin, otherwise "
            "<b>inconclusive</b>. Each verdict is for the configs the searches chose (below): "
            "the interval covers the final seeds' noise, not the search's choice, and another "
            "search (another <code>search.sampler_seed</code>) can choose configs that read "
            "differently.</p>")
    trend = [_trend_item(t) for t in run.trends]
    return (head + table(["dataset", "comparison", "gain, pts [95% CI]", "seeds", "verdict",
                          "config (selected on validation)", "notes"], rows, "verdicts")
            + (("<p>Does the gain grow with complexity? A weighted fit of each dataset's "
                "gain on its measured score (weights from each gain's standard error):</p><ul>"
                + "".join(trend) + "</ul>") if trend else ""))


# ----------------------------------------------------------------------------- overview

HIDDEN_META = {"datasets", "study"}


def overview(run: Run) -> str:
    spec = spec_of(run)
    s = compute_summary(run.trials)
    out = []
    if spec.get("description"):
        out.append(f"<p>{esc(spec['description'])}</p>")
    if spec:
        methods = spec.get("methods")
        out.append(f"<p>Teacher <b>{esc(_arch(spec, 'teacher'))}</b> → student "
                   f"<b>{esc(_arch(spec, 'student'))}</b>"
                   + (f"; methods {esc(', '.join(map(str, methods)))}"
                      if isinstance(methods, list) else "") + ".</p>")
    if run.spec_text:
        out.append("<details><summary>the study spec (spec.yaml)</summary>"
                   f"<pre class='spec'>{esc(run.spec_text)}</pre></details>")
    else:
        out.append(note("No spec.yaml in the run directory."))
    # datasets, with the complexity columns first where they were measured
    if run.datasets:
        cols = list(dict.fromkeys(k for d in run.datasets for k in d))
        lead = [c for c in ("dataset", "name", "complexity_score", "knob", "knob_value")
                if c in cols]
        cols = lead + [c for c in cols if c not in lead]
        rows = [[_compact_cell(d.get(c)) for c in cols] for d in run.datasets]
        out.append("<div class='wide'>" + table(cols, rows, "datasets", "Datasets") + "</div>")
        if "complexity_score" not in cols:
            out.append(note("Complexity was not measured in this run (no complexity_score in "
                            "datasets.parquet)."))
    else:
        out.append(note("No datasets.parquet in the run directory."))
    # hardware and run facts from run.json
    facts = [[esc(k), fmt(v, ".4g") if not isinstance(v, (dict, list)) else
              esc(json.dumps(v, default=str))] for k, v in run.meta.items()
             if k not in HIDDEN_META]
    counts = ", ".join(f"{n} {esc(k)}" for k, n in s["by_status"].items())
    saved_pct = (f" ({100 * s['epochs_saved'] / s['epochs_budget']:.1f}% of the budget)"
                 if s["epochs_budget"] else "")
    facts += [
        ["trials", f"{s['trials']} ({counts})"],
        ["total compute", f"{fmt_duration(s['compute_s'])} of trial time "
                          f"({s['compute_s']:.0f} s summed over trials)"],
        ["epochs trained", str(s["epochs_run"])],
        ["epochs saved by early stopping",
         f"{s['epochs_saved']} over {s['n_stopped']} stopped trial(s){saved_pct}"],
    ]
    if not run.meta:
        out.append(note("No run.json in the run directory: hardware unknown."))
    out.append(table(["", ""], facts, "kv", "Run and hardware"))
    out.append(failures(run))
    return "\n".join(out)


# a text cell longer than this is folded (one line, expands on click): the datasets' JSON
# columns otherwise wrap into rows hundreds of pixels tall
FOLD_CHARS = 32


def _compact_cell(value: Any) -> dict[str, Any]:
    text = fmt(value, ".3g")
    if isinstance(value, str) and len(value) > FOLD_CHARS:
        return cell(f"<details><summary>{esc(value[:FOLD_CHARS - 4])}…</summary>"
                    f"<code>{esc(value)}</code></details>", value)
    return cell(text, value)


def failures(run: Run) -> str:
    """What failed and why: a study goes on past failed trials, and the report says so."""
    failed = [r for r in run.trials if r["status"] == "failed"]
    if not failed:
        return ""
    rows = [[esc(r["stage"]), esc(r["dataset"]), esc(r["method"]), fmt(r["seed"]),
             fmt(r.get("lr"), ".3g"), esc(r.get("failure"))] for r in failed]
    return (table(["stage", "dataset", "method", "seed", "lr", "reason"], rows, "failures",
                  f"Failed trials ({len(failed)})")
            + note("Failed trials are recorded with their reason and left out of every "
                   "selection and gain."))


# ----------------------------------------------------------------------------- paper's tables

def _mean_sd(g: dict[str, Any]) -> str:
    sd = g.get("test_acc_std")
    return (f"{fmt(g['test_acc_mean'])} ± {fmt(sd)}" if _num(sd) else fmt(g["test_acc_mean"]))


def _gain_cell(gain: float, low: float, high: float) -> dict[str, Any]:
    if missing(gain):
        return cell("–", None)
    cls = "pos" if _num(low) and low > 0 else "neg" if _num(high) and high < 0 else ""
    ci = f" [{fmt(low, '+.2f')}, {fmt(high, '+.2f')}]" if _num(low) else " (one seed)"
    return {"html": f"<span class='{cls}'>{fmt(gain, '+.2f')}</span>{ci}", "sort": gain}


def teacher_table(run: Run) -> str:
    """The paper's Table 5: teacher versus the scratch student."""
    spec = spec_of(run)
    baseline = registry.student_baseline()
    scratch = {g["dataset"]: g for g in run.gains if g["method"] == baseline}
    teachers: dict[str, list[dict[str, Any]]] = {}
    for r in run.trials:
        if r["role"] == "teacher" and r["status"] in ("finished", "reused"):
            teachers.setdefault(r["dataset"], []).append(r)
    published = any(_paper_key(run, d) for d in run.dataset_labels)
    rows = []
    for d in run.dataset_labels:
        t = [r["test_acc"] for r in teachers.get(d, []) if _num(r["test_acc"])]
        tacc = sum(t) / len(t) if t else math.nan
        g = scratch.get(d)
        gap = tacc - g["test_acc_mean"] if g and t else math.nan
        if not t and not g:
            continue
        status = ", ".join(sorted({esc(r["status"]) for r in teachers.get(d, [])}))
        row = [esc(d), cell(fmt(tacc) + (f" <span class='muted'>({status})</span>"
                                         if status else ""), tacc),
               cell(_mean_sd(g) if g else "–", g["test_acc_mean"] if g else None),
               cell(str(g["n_seeds"]) if g else "–", g["n_seeds"] if g else None),
               cell(fmt(gap, "+.2f"), gap)]
        if published:
            key = _paper_key(run, d) or ""
            t_pub, s_pub = paper.published(key, "teacher"), paper.published(key, baseline)
            row += [fmt(t_pub), fmt(s_pub),
                    fmt(t_pub - s_pub, "+.2f") if t_pub is not None and s_pub is not None
                    else "–"]
        rows.append(row)
    headers = ["dataset", f"teacher {_arch(spec, 'teacher')}: test acc %",
               f"{baseline} student {_arch(spec, 'student')}: test acc % (mean ± sd)",
               "seeds", f"teacher − {baseline}, pts"]
    if published:
        headers += ["published teacher", f"published {baseline}", "published gap"]
    if not rows:
        return note(f"No teacher or {esc(baseline)} results yet.")
    number = paper.table_of("teacher")
    return table(headers, rows, "paper", f"{number + ' · ' if number else ''}teacher versus the "
                 f"{esc(baseline)} student") + (note(paper.NOTE) if published else "")


def method_table(run: Run, method: str) -> str:
    """The paper's Tables 6 (RKD) and 7 (IKD), and the same for any other method."""
    number = paper.table_of(method)
    gains = [g for g in run.gains if g["method"] == method]
    baseline = next((g["baseline"] for g in gains if g.get("baseline")),
                    registry.baseline_of(method)) or registry.student_baseline()
    base_gains = {g["dataset"]: g for g in run.gains if g["method"] == baseline}
    published = number is not None and any(_paper_key(run, d) for d in run.dataset_labels)
    rows = []
    order = run.dataset_labels
    for g in sorted(gains,
                    key=lambda g: order.index(g["dataset"]) if g["dataset"] in order else 0):
        s = base_gains.get(g["dataset"])
        hps = ", ".join(f"{k}={fmt(g.get(k), '.3g')}" for k in HYPERPARAMS
                        if g.get(k) is not None)
        row = [esc(g["dataset"]), cell(_mean_sd(s) if s else "–",
                                       s["test_acc_mean"] if s else None),
               cell(_mean_sd(g), g["test_acc_mean"]),
               _gain_cell(g["gain_pts"], g["gain_ci_low"], g["gain_ci_high"]),
               cell(str(g["n_seeds"]), g["n_seeds"]), verdict_cell(g), hps or "–"]
        if published:
            key = _paper_key(run, g["dataset"]) or ""
            b_pub, m_pub = paper.published(key, baseline), paper.published(key, method)
            row += [fmt(b_pub), fmt(m_pub),
                    fmt(m_pub - b_pub, "+.2f") if b_pub is not None and m_pub is not None
                    else "–"]
        rows.append(row)
    if not rows:
        return ""
    headers = ["dataset", f"{baseline}: test acc %", f"{method}: test acc %",
               "gain, pts [95% CI]", "seeds", "verdict", "config (selected on validation)"]
    if published:
        headers += [f"published {baseline}", f"published {method}", "published gain"]
    return table(headers, rows, "paper",
                 f"{number + ' · ' if number else ''}{esc(baseline)} student versus "
                 f"{esc(method)}") + (note(paper.NOTE) if published else "")


# ----------------------------------------------------------------------------- every trial

KNOWN = ["stage", "trial_id", "dataset", "method", "role", "seed", "alpha", "tau", "hint_layer",
         "beta", "lr", "val_acc", "test_acc", "epochs_run", "epochs_budget", "status",
         "failure", "wall_s"]
NOT_SHOWN = {"study", "run_id", "config_json", "node_id", "teacher_id", "finished_at"}
FORMATS = {"alpha": ".3g", "tau": ".3g", "beta": ".3g", "lr": ".3g", "wall_s": ".1f"}


def trials_table(runs: list[Run]) -> str:
    multi = len(runs) > 1
    extras: list[str] = []
    for run in runs:
        for r in run.trials:
            for k in r:
                if k not in KNOWN and k not in NOT_SHOWN and k not in extras:
                    extras.append(k)
    cols = (["run"] if multi else []) + KNOWN + extras
    rows = []
    for run in runs:
        for r in run.trials:
            row = [esc(run.label)] if multi else []
            for c in KNOWN + extras:
                v = r.get(c)
                if isinstance(v, (dict, list)):
                    v = json.dumps(v, default=str)
                row.append(cell(fmt(v, FORMATS.get(c, ".2f")), v))
            rows.append(row)
    return "<div class='trials-wrap'>" + table(cols, rows, "trials") + "</div>"
