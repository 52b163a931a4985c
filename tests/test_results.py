"""Gains and CIs from rows, selection on validation only, atomic Parquet writes."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from kdtune.results import (
    FinalSettings,
    best_search_trial,
    compute_gains,
    compute_trends,
    mean_ci,
)
from kdtune.rundir import TRIAL_SCHEMA, write_table_atomic
from kdtune.stats import holm


def _row(method, seed, test, val=90.0, role="final", dataset="d", **kw):
    return {"dataset": dataset, "method": method, "seed": seed, "role": role, "status": "finished",
            "test_acc": test, "val_acc": val, "trial_id": f"{role}-{dataset}-{method}-{seed}-{val}",
            "epochs_run": 10, "epochs_budget": 10, **kw}


def test_gain_is_paired_mean_difference_with_t_interval():
    rows = [_row("scratch", s, a) for s, a in [(0, 80.0), (1, 82.0), (2, 84.0)]]
    rows += [_row("rkd", s, a, alpha=0.7, tau=4.0) for s, a in [(0, 83.0), (1, 83.0), (2, 87.0)]]
    gains = {g["method"]: g for g in compute_gains(rows)}
    diffs = [3.0, 1.0, 3.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2)
    g = gains["rkd"]
    assert g["gain_pts"] == pytest.approx(mean)
    assert g["gain_pts"] == pytest.approx(g["test_acc_mean"] - g["scratch_test_acc_mean"])
    assert (g["gain_ci_low"], g["gain_ci_high"]) == pytest.approx((mean - half, mean + half))
    assert g["alpha"] == 0.7 and g["n_seeds"] == 3
    assert math.isnan(gains["scratch"]["gain_pts"])


def test_failed_and_search_rows_do_not_enter_gains():
    rows = [_row("scratch", 0, 80.0), _row("rkd", 0, 90.0),
            _row("rkd", 1, 10.0) | {"status": "failed"}, _row("rkd", 2, 99.0, role="search")]
    gains = {g["method"]: g for g in compute_gains(rows)}
    assert gains["rkd"]["n_seeds"] == 1 and gains["rkd"]["gain_pts"] == 10.0
    assert math.isnan(gains["rkd"]["gain_ci_low"])  # one pair: no interval


def test_best_search_trial_uses_validation_never_test():
    rows = [_row("rkd", 0, test=99.0, val=80.0, role="search"),
            _row("rkd", 0, test=50.0, val=85.0, role="search"),
            _row("rkd", 0, test=99.9, val=95.0, role="search") | {"status": "stopped",
                                                                   "epochs_run": 3}]
    assert best_search_trial(rows, "d", "rkd")["val_acc"] == 85.0
    assert best_search_trial(rows, "d", "ikd") is None


def test_mean_ci_edge_cases():
    assert math.isnan(mean_ci([])[0])
    mean, low, high = mean_ci([2.0])
    assert mean == 2.0 and math.isnan(low) and math.isnan(high)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "trials.parquet"
    write_table_atomic([{"trial_id": "a", "status": "finished"}], TRIAL_SCHEMA, path)
    write_table_atomic([{"trial_id": "a"}, {"trial_id": "b"}], TRIAL_SCHEMA, path)
    table = pq.read_table(path)
    assert table.num_rows == 2 and table.schema == TRIAL_SCHEMA
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]  # no temp file left


def test_the_means_beside_a_gain_are_over_the_seeds_both_ran():
    # scratch ran seeds 0-3, rkd's seed 3 failed: every number of the comparison uses 0-2
    rows = [_row("scratch", s, a) for s, a in [(0, 80.0), (1, 82.0), (2, 84.0), (3, 60.0)]]
    rows += [_row("rkd", s, a) for s, a in [(0, 83.0), (1, 83.0), (2, 87.0)]]
    rows.append(_row("rkd", 3, 99.0) | {"status": "failed"})
    gains = {g["method"]: g for g in compute_gains(rows)}
    g = gains["rkd"]
    assert g["n_seeds"] == 3 and g["n_runs"] == 3
    assert g["scratch_test_acc_mean"] == pytest.approx(82.0)  # not 76.5, the mean of all four
    assert g["gain_pts"] == pytest.approx(g["test_acc_mean"] - g["scratch_test_acc_mean"])
    assert gains["scratch"]["n_seeds"] == 4  # a baseline's own row: all its seeds
    assert gains["scratch"]["test_acc_mean"] == pytest.approx(76.5)


def test_verdicts_are_holm_adjusted_over_every_comparison():
    rows = []
    for dataset, gain in (("a", 3.0), ("b", 0.0), ("c", -3.0)):
        for s in range(6):
            noise = [0.2, -0.1, 0.3, -0.2, 0.1, 0.0][s]
            rows += [_row("scratch", s, 80.0 + s, dataset=dataset),
                     _row("rkd", s, 80.0 + s + gain + noise, dataset=dataset)]
    gains = {g["dataset"]: g for g in compute_gains(
        rows, final=FinalSettings(target_halfwidth=3.0, max_seeds=10,
                                  equivalence_margin=1.0)) if g["method"] == "rkd"}
    assert [gains[d]["verdict"] for d in "abc"] == ["pays", "equivalent", "hurts"]
    raw = [gains[d]["p_value"] for d in "abc"]
    assert [gains[d]["p_holm"] for d in "abc"] == pytest.approx(holm(raw))
    assert all(gains[d]["reached_target"] for d in "abc")
    low, high = gains["a"]["gain_boot_low"], gains["a"]["gain_boot_high"]
    assert low < gains["a"]["gain_pts"] < high
    assert gains["a"]["prob_improvement"] == 1.0 and gains["c"]["prob_improvement"] == 0.0


def test_a_still_improving_baseline_is_flagged_beside_its_verdict():
    rows, epochs = [], []
    for s in range(3):
        for method, curve in (("scratch", [10 + 8 * e for e in range(10)]),
                              ("rkd", [90.0] * 10)):
            r = _row(method, s, curve[-1])
            rows.append(r)
            epochs += [{"trial_id": r["trial_id"], "epoch": e + 1, "val_acc": v + 0.3 * s}
                       for e, v in enumerate(curve)]
    (g,) = [g for g in compute_gains(rows, epochs) if g["method"] == "rkd"]
    assert g["baseline_still_improving"] and g["baseline_rise_pts"] == pytest.approx(16.0)
    assert "budget artefact" in g["adequacy_reason"]


def test_trends_fit_the_gain_against_complexity_and_against_a_knob():
    gains = [{"dataset": d, "method": "rkd", "baseline": "scratch", "gain_pts": g, "gain_se": 0.1}
             for d, g in (("x", 1.0), ("x[label_noise=0.2]", 3.0), ("x[label_noise=0.4]", 5.0))]
    datasets = [{"dataset": "x", "name": "x", "complexity_score": 0.2, "knobs_json": "{}"},
                {"dataset": "x[label_noise=0.2]", "name": "x", "complexity_score": 0.4,
                 "knobs_json": '{"label_noise": 0.2}'},
                {"dataset": "x[label_noise=0.4]", "name": "x", "complexity_score": 0.6,
                 "knobs_json": '{"label_noise": 0.4}'}]
    trends = {t["axis"]: t for t in compute_trends(gains, datasets)}
    assert trends["complexity_score"]["slope"] == pytest.approx(10.0)
    assert trends["complexity_score"]["support"] == "grows"
    # the clean set names no label_noise: not on the sweep (its neutral value is not assumed)
    assert trends["label_noise"]["slope"] == pytest.approx(10.0)
    assert trends["label_noise"]["n_points"] == 2


def test_a_knob_held_fixed_beside_the_swept_one_keeps_the_sweep():
    """knobs-digits: every level has max_train 300, label_noise 0 / 0.1 / 0.4; a variant with
    another max_train or of another source is not on that sweep."""
    levels = {"a": (300, 0.0, 1.0), "b": (300, 0.1, 2.0), "c": (300, 0.4, 5.0),
              "d": (1000, 0.2, 50.0)}
    gains = [{"dataset": d, "method": "rkd", "baseline": "scratch", "gain_pts": g,
              "gain_se": 0.5} for d, (_, _, g) in levels.items()]
    gains.append({"dataset": "e", "method": "rkd", "baseline": "scratch", "gain_pts": -9.0,
                  "gain_se": 0.5})
    datasets = [{"dataset": d, "name": "digits", "complexity_score": 0.1 * i,
                 "knobs_json": json.dumps({"max_train": n, "label_noise": p})}
                for i, (d, (n, p, _)) in enumerate(levels.items())]
    datasets.append({"dataset": "e", "name": "fashion_mnist", "complexity_score": 0.9,
                     "knobs_json": json.dumps({"max_train": 300, "label_noise": 0.3})})
    trends = {t["axis"]: t for t in compute_trends(gains, datasets)}
    sweep = trends["label_noise"]
    assert json.loads(sweep["datasets_json"]) == ["a", "b", "c"]
    assert sweep["slope"] == pytest.approx(10.0)  # the gain rises 1 point per 0.1 of noise
    # max_train takes 300 and 1000, but never with the rest of the knobs equal: no sweep
    assert "max_train" not in trends
