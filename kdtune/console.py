"""What a study prints: one line per finished trial, teacher progress, the closing summary.

Pure formatting: the study and its recorder print these lines through a ``log`` callable.
"""

from __future__ import annotations

import math
from typing import Any


def log(message: str) -> None:
    print(message, flush=True)


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else f"{value}"


def trial_line(row: dict[str, Any], done: int, total: int | str | None, best: float | None,
               hp_shown: list[str]) -> str:
    """``[stage] 3/8 digits rkd seed 0: val 90.5% (best 92.9%) after 10 epochs, 1s alpha=...``"""
    status, failure = row["status"], row.get("failure")
    hp = " ".join(f"{k}={_value(row[k])}" for k in hp_shown if row.get(k) is not None)
    val = f"val {row['val_acc']:.1f}%" if row["val_acc"] is not None else "no val"
    best_text = f" (best {best:.1f}%)" if best is not None and row["role"] == "search" else ""
    why = (f" [{status}: {failure}]" if failure
           else " [stopped early]" if status == "stopped" else "")
    why += f" [restarted {row['restarts']}x from its checkpoint]" if row.get("restarts") else ""
    count = f"{done}/{total}" if total is not None else f"{done}"
    return (f"  [{row['stage']}] {count} {row['dataset']} {row['method']} seed "
            f"{row['seed']}: {val}{best_text} after {row['epochs_run']} epochs, "
            f"{row['wall_s'] or 0:.0f}s {hp}{why}")


def teacher_epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (f"  [{row['stage']}] {row['dataset']} teacher epoch {row['epoch']}/{epochs}: "
            f"val {row['val_acc']:.1f}%")


def _pts(value: Any, spec: str = "+.2f") -> str:
    return format(value, spec) if isinstance(value, float) and math.isfinite(value) else "n/a"


def verdict_line(g: dict[str, Any]) -> str:
    """``digits  rkd vs scratch  +2.15 pts [+0.60, +3.70]  7 seeds  pays  (...)``"""
    width = g.get("gain_halfwidth")
    target = g.get("target_halfwidth")
    notes = []
    if target:
        reached = "reached" if g.get("reached_target") else "not reached"
        notes.append(f"half-width {_pts(width, '.2f')}, target {target:g} {reached}")
    if g.get("verdict") == "inconclusive" and g.get("seeds_needed"):
        notes.append(f"~{g['seeds_needed']} seeds would reach "
                     f"+-{target:g}" if target else f"~{g['seeds_needed']} seeds")
    if g.get("baseline_still_improving"):
        notes.append(f"{g['baseline']} still improving ({_pts(g.get('baseline_rise_pts'), '+.1f')}"
                     " pts at the end): may be a budget artefact")
    if g.get("final_wall_s"):
        notes.append(f"{g['final_wall_s']:.0f}s of trials")
    text = (f"  {g['dataset']:<16} {g['method']:<8} vs {g['baseline']:<8} "
            f"{_pts(g['gain_pts'])} pts [{_pts(g['gain_ci_low'])}, {_pts(g['gain_ci_high'])}]"
            f"  {g['n_seeds']} seeds  {str(g.get('verdict')).upper()}")
    if g.get("omitted_class_acc_mean") is not None:
        text += f"  (class {g['omitted_class']}: {g['omitted_class_acc_mean']:.1f}%)"
    return text + (f"  ({'; '.join(notes)})" if notes else "")


def summary(trials: list[dict[str, Any]], gains: list[dict[str, Any]], wall_s: float,
            trends: list[dict[str, Any]] | None = None) -> str:
    counts: dict[str, int] = {}
    for r in trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"done in {wall_s:.0f}s: {len(trials)} trials ("
             + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
    baselines = [g for g in gains if not g.get("baseline")]
    for g in baselines:
        line = (f"  {g['dataset']:<16} {g['method']:<8} test {g['test_acc_mean']:.2f}% over "
                f"{g['n_seeds']} seeds")
        if g.get("omitted_class_acc_mean") is not None:
            line += f"  (class {g['omitted_class']}: {g['omitted_class_acc_mean']:.1f}%)"
        lines.append(line)
    compared = [g for g in gains if g.get("baseline")]
    if compared:
        # the interval is over final seeds of the configs the searches chose; another search
        # (another sampler_seed) can choose others: the quickstart's verdicts on noisy pixels
        # read PAYS, INCONCLUSIVE and HURTS for sampler seeds 0, 1, 2 (README, 2026-12-07)
        lines.append(f"did distillation pay? test accuracy gain over the baseline, paired 95% "
                     f"interval, Holm-adjusted over {len(compared)} comparisons (for the configs "
                     f"the searches chose: the interval covers seeds, not the search's choice):")
        lines += [verdict_line(g) for g in compared]
    for t in trends or []:
        axis = "complexity" if t["axis"] == "complexity_score" else t["axis"]
        lines.append(f"  trend: {t['method']} gain vs {axis}: slope {_pts(t['slope'], '+.1f')} "
                     f"pts per unit [{_pts(t['slope_low'], '+.1f')}, "
                     f"{_pts(t['slope_high'], '+.1f')}] over {t['n_points']} datasets: "
                     + {"grows": "the gain grows with it",
                        "falls": "the gain falls with it",
                        "not supported": "no trend the data support"}.get(t["support"],
                                                                            t["support"]))
    return "\n".join(lines)
