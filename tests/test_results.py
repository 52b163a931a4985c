"""Gains and CIs from rows, selection on validation only, atomic Parquet writes."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from kdtune.results import best_search_trial, compute_gains, mean_ci
from kdtune.rundir import TRIAL_SCHEMA, write_table_atomic


def _row(method, seed, test, val=90.0, role="final", **kw):
    return {"dataset": "d", "method": method, "seed": seed, "role": role, "status": "finished",
            "test_acc": test, "val_acc": val, "trial_id": f"{role}-{method}-{seed}-{val}",
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
