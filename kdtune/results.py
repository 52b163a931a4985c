"""What a run's rows say: the gain of every method over its baseline, and the search trial
each final evaluation retrains. Computed from the rows of ``trials.parquet`` alone, so
``kdtune report`` needs nothing else (the files themselves: :mod:`kdtune.rundir`).
"""

from __future__ import annotations

import math
from typing import Any

from kdtune import methods
from kdtune.hparams import HYPERPARAMS

# ----------------------------------------------------------------------------- statistics

def t_quantile_975(dof: int) -> float:
    # scipy.special, not scipy.stats: the same quantile without seconds of import time
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.975))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval; the interval is NaN for one value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compute_gains(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gain of every method over its baseline, from the final-evaluation rows.

    The baseline is ``scratch`` for student methods and ``reversed_scratch`` for ``reversed``
    (the same architecture on labels alone); ``scratch_test_acc_mean`` holds the baseline's mean.
    ``gain_pts`` = mean test accuracy (method) - mean test accuracy (baseline), in points. The
    95% interval is a paired Student-t interval over the seeds both ran (same seed, same split,
    same initialisation of the student), which removes the seed-to-seed spread they share.
    """
    final = [r for r in trials if r["role"] == "final" and r["status"] == "finished"
             and r.get("test_acc") is not None]
    out = []
    for dataset in sorted({r["dataset"] for r in final}):
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for r in final:
            if r["dataset"] == dataset:
                by_method.setdefault(r["method"], {})[r["seed"]] = r
        for method in sorted(by_method, key=lambda m: (not methods.is_baseline(m), m)):
            baseline = methods.baseline_of(method)
            scratch = by_method.get(baseline or method, {})  # a baseline: its own mean
            rows = by_method[method]
            accs = [r["test_acc"] for r in rows.values()]
            first = next(iter(rows.values()))
            paired = sorted(set(rows) & set(scratch))
            omitted = [r["omitted_class_acc"] for r in rows.values()
                       if r.get("omitted_class_acc") is not None]
            if baseline is None or not paired:
                gain = low = high = math.nan
            else:
                gain, low, high = mean_ci([rows[s]["test_acc"] - scratch[s]["test_acc"]
                                           for s in paired])
                # equal accuracies differ by float rounding (1e-15): print 0.00, not -0.00
                gain = round(gain, 9)
            out.append({
                "dataset": dataset, "method": method, "n_seeds": len(rows),
                "test_acc_mean": sum(accs) / len(accs), "test_acc_std": _std(accs),
                "scratch_test_acc_mean": (sum(r["test_acc"] for r in scratch.values())
                                          / len(scratch)) if scratch else math.nan,
                "gain_pts": gain, "gain_ci_low": low, "gain_ci_high": high,
                "val_acc_mean": sum(r["val_acc"] for r in rows.values()) / len(rows),
                **{k: first.get(k) for k in HYPERPARAMS},
                "baseline": baseline, "omitted_class": first.get("omitted_class"),
                "omitted_class_acc_mean": sum(omitted) / len(omitted) if omitted else None,
            })
    return out


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
