"""What a run's rows say: the gain of every method over its baseline with its interval, tests
and verdict; how the gain moves with complexity (or a knob); and the search trial each final
evaluation retrains. Computed from the rows of ``trials.parquet`` (and ``epochs.parquet``,
``datasets.parquet``) alone, so ``kdtune report`` needs nothing else and anyone can recompute
them. The statistics are :mod:`kdtune.stats`; the files :mod:`kdtune.rundir`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kdtune import methods, stats
from kdtune.hparams import HYPERPARAMS


@dataclass(frozen=True)
class FinalSettings:
    """What the verdicts are judged against (``final`` of the spec)."""

    target_halfwidth: float | None = None
    max_seeds: int | None = None
    equivalence_margin: float | None = None

    @classmethod
    def of(cls, final: Any) -> FinalSettings:
        """From a ``FinalSpec`` or the ``final`` mapping of a spec.yaml (missing: defaults)."""
        get = (final.get if isinstance(final, dict) else
               (lambda k, d=None: getattr(final, k, d)))
        return cls(get("target_halfwidth", None), get("max_seeds", None),
                   get("equivalence_margin", None))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval; the interval is NaN for one value."""
    return stats.t_interval(values)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _curves(epochs: list[dict[str, Any]] | None, trial_ids: set[str]) -> list[list[float]]:
    if not epochs:
        return []
    by_trial: dict[str, list[tuple[int, float]]] = {}
    for e in epochs:
        if e["trial_id"] in trial_ids and e.get("val_acc") is not None:
            by_trial.setdefault(e["trial_id"], []).append((int(e["epoch"]), float(e["val_acc"])))
    return [[v for _, v in sorted(points)] for points in by_trial.values()]


def compute_gains(trials: list[dict[str, Any]], epochs: list[dict[str, Any]] | None = None,
                  final: FinalSettings | None = None) -> list[dict[str, Any]]:
    """The gain of every method over its baseline, from the final-evaluation rows.

    The baseline is ``scratch`` for student methods and ``reversed_scratch`` for ``reversed``
    (the same architecture on labels alone); ``scratch_test_acc_mean`` holds the baseline's
    mean. Everything about a gain is over the seeds both ran (same seed, same split, same
    initialisation of the student): ``gain_pts`` = mean paired difference in points, which is
    ``test_acc_mean - scratch_test_acc_mean`` (both over those seeds), ``gain_ci_low/high`` its
    paired Student-t 95 % interval, ``n_seeds`` the number of pairs. A baseline's own row holds
    its mean over its own seeds. ``p_holm`` adjusts the paired t-test over every comparison of
    the study (Holm); ``verdict`` follows :func:`kdtune.stats.verdict`. With ``epochs``, each
    comparison also says whether its baseline was still improving at the end of its budget.
    """
    final = final or FinalSettings()
    done = [r for r in trials if r["role"] == "final" and r["status"] == "finished"
            and r.get("test_acc") is not None]
    out: list[dict[str, Any]] = []
    for dataset in sorted({r["dataset"] for r in done}):
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for r in done:
            if r["dataset"] == dataset:
                by_method.setdefault(r["method"], {})[int(r["seed"])] = r
        for method in sorted(by_method, key=lambda m: (not methods.is_baseline(m), m)):
            out.append(_gain_row(dataset, method, by_method, epochs, final))
    # Holm over every comparison of the study: a verdict holds for the whole table at once
    compared = [g for g in out if g["baseline"] and g["n_seeds"] >= 2]
    for g, p in zip(compared, stats.holm([g["p_value"] for g in compared])):
        g["p_holm"] = p
    for g in out:
        if g["baseline"]:
            v = stats.verdict(g.pop("_diffs"), g["p_holm"], final.equivalence_margin,
                              final.target_halfwidth)
            g.update(verdict=v.label, verdict_reason=v.reason, seeds_needed=v.seeds_needed)
        else:
            g.pop("_diffs")
    return out


def _gain_row(dataset: str, method: str, by_method: dict[str, dict[int, dict[str, Any]]],
              epochs: list[dict[str, Any]] | None, final: FinalSettings) -> dict[str, Any]:
    rows = by_method[method]
    baseline = methods.baseline_of(method)
    base = by_method.get(baseline, {}) if baseline else {}
    first = next(iter(rows.values()))
    row: dict[str, Any] = {
        "dataset": dataset, "method": method, "baseline": baseline if base else None,
        "n_runs": len(rows), "final_wall_s": sum(r.get("wall_s") or 0.0 for r in rows.values()),
        **{k: first.get(k) for k in HYPERPARAMS},
        "omitted_class": first.get("omitted_class"),
        "target_halfwidth": final.target_halfwidth, "max_seeds": final.max_seeds,
        "equivalence_margin": final.equivalence_margin, "p_holm": math.nan, "_diffs": [],
    }
    seeds = sorted(set(rows) & set(base)) if base else sorted(rows)
    accs = [rows[s]["test_acc"] for s in seeds]
    vals = [rows[s]["val_acc"] for s in seeds if rows[s].get("val_acc") is not None]
    omitted = [rows[s]["omitted_class_acc"] for s in seeds
               if rows[s].get("omitted_class_acc") is not None]
    row |= {"n_seeds": len(seeds), "test_acc_mean": _mean(accs), "test_acc_std": _std(accs),
            "val_acc_mean": _mean(vals), "val_acc_std": _std(vals),
            "omitted_class_acc_mean": _mean(omitted) if omitted else None}
    if not base:
        row |= {"scratch_test_acc_mean": math.nan, "gain_pts": math.nan,
                "gain_ci_low": math.nan, "gain_ci_high": math.nan}
        return row
    diffs = [rows[s]["test_acc"] - base[s]["test_acc"] for s in seeds]
    gain, low, high = stats.t_interval(diffs)
    width = stats.halfwidth(diffs)
    boot_low, boot_high = stats.bootstrap_interval(diffs)
    p_better, p_low, p_high = stats.prob_improvement(diffs)
    sd = _std(diffs)
    row |= {
        "scratch_test_acc_mean": _mean([base[s]["test_acc"] for s in seeds]),
        # equal accuracies differ by float rounding (1e-15): print 0.00, not -0.00
        "gain_pts": round(gain, 9) if math.isfinite(gain) else gain,
        "gain_ci_low": low, "gain_ci_high": high, "gain_halfwidth": width,
        "gain_se": sd / math.sqrt(len(diffs)) if len(diffs) >= 2 else math.nan,
        "gain_boot_low": boot_low, "gain_boot_high": boot_high,
        "p_value": stats.t_test_p(diffs), "prob_improvement": p_better,
        "prob_improvement_low": p_low, "prob_improvement_high": p_high,
        "tost_p": (stats.tost_p(diffs, final.equivalence_margin)
                   if final.equivalence_margin else math.nan),
        "reached_target": (bool(math.isfinite(width) and width <= final.target_halfwidth)
                           if final.target_halfwidth else None),
        "_diffs": diffs,
    }
    if epochs:
        adequacy = stats.still_improving(_curves(epochs, {base[s].get("trial_id")
                                                          for s in seeds}))
        row |= {"baseline_still_improving": adequacy.flagged,
                "baseline_rise_pts": adequacy.rise_pts, "adequacy_reason": adequacy.reason}
    return row


def compute_trends(gains: list[dict[str, Any]],
                   datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gain against complexity as an estimate, per method: a weighted fit of each dataset's
    gain on its measured complexity score (weights from each gain's standard error,
    :func:`kdtune.stats.gain_trend`); and, for every knob a study sweeps over at least two
    values, the gain against the knob's value among the datasets of that sweep."""
    meta = {d["dataset"]: d for d in datasets}
    out = []
    compared = [g for g in gains if g.get("baseline") and _finite(g.get("gain_pts"))]
    for method in dict.fromkeys(g["method"] for g in compared):
        mine = [g for g in compared if g["method"] == method]
        axes: list[tuple[str, list[tuple[float, dict[str, Any]]]]] = [(
            "complexity_score", [(meta[g["dataset"]]["complexity_score"], g) for g in mine
                                 if _finite(meta.get(g["dataset"], {}).get("complexity_score"))])]
        axes += knob_sweeps(mine, meta)
        for axis, points in axes:
            if len({x for x, _ in points}) < 2:
                continue
            t = stats.gain_trend([x for x, _ in points], [g["gain_pts"] for _, g in points],
                                 [g.get("gain_se", math.nan) for _, g in points])
            out.append({"method": method, "axis": axis, "n_points": t.n_points,
                        "slope": t.slope, "slope_low": t.slope_low, "slope_high": t.slope_high,
                        "intercept": t.intercept, "dof": t.dof, "support": t.support,
                        "x_mean": t.x_mean, "mean_se": t.mean_se, "quantile": t.quantile,
                        "datasets_json": json.dumps([g["dataset"] for _, g in points])})
    return out


def knob_sweeps(gains: list[dict[str, Any]], meta: dict[str, dict[str, Any]]
                ) -> list[tuple[str, list[tuple[float, dict[str, Any]]]]]:
    """Each knob a study sweeps: the datasets of one source whose knobs (``knobs_json``) are
    equal but for that one, which takes numeric values. A knob held fixed beside it
    (``max_train: 300`` on every level) does not break the sweep; a variant without the knob
    is not on it (its neutral value is not assumed). Where a knob is swept on several sources,
    the sweep with the most datasets."""
    knobs_of = {}
    for g in gains:
        d = meta.get(g["dataset"])
        if d is not None:
            knobs_of[g["dataset"]] = json.loads(d.get("knobs_json") or "{}")
    sweeps: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    names = sorted({k for knobs in knobs_of.values() for k in knobs})
    for knob in names:
        groups: dict[tuple[Any, str], list[tuple[float, dict[str, Any]]]] = {}
        for g in gains:
            knobs = knobs_of.get(g["dataset"], {})
            if knob in knobs and _finite(knobs[knob]):
                rest = json.dumps({k: v for k, v in knobs.items() if k != knob}, sort_keys=True)
                groups.setdefault((meta[g["dataset"]].get("name"), rest), []).append(
                    (float(knobs[knob]), g))
        swept = [pts for pts in groups.values() if len({x for x, _ in pts}) >= 2]
        if swept:
            sweeps[knob] = max(swept, key=len)
    return sorted(sweeps.items())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def best_search_trial(trials: list[dict[str, Any]], dataset: str,
                      method: str) -> dict[str, Any] | None:
    """The search trial that trained its whole budget with the best validation accuracy.

    Trials stopped early by ASHA have status ``stopped`` and are not candidates; the test
    accuracy is never looked at.
    """
    rows = [r for r in trials if r["role"] == "search" and r["status"] == "finished"
            and r["dataset"] == dataset and r["method"] == method and r["val_acc"] is not None]
    if not rows:
        return None
    # ties go to the earlier trial, so the choice does not depend on anything but val_acc
    return max(enumerate(rows), key=lambda item: (item[1]["val_acc"], -item[0]))[1]
