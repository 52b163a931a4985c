"""Measured complexity: each property on data with a known answer, the score's range and order."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdtune.cli import main
from kdtune.complexity import (
    WEIGHTS,
    components_for,
    knn_error,
    linear_probe_error,
    measure,
    pca_spectrum,
    pixel_entropy,
    within_class_share,
)
from kdtune.data import Splits
from kdtune.spec import DatasetSpec


def _measure(**knobs):
    ds = DatasetSpec(name="digits", **knobs)
    return measure(ds.load(), ds.label)


@pytest.fixture(scope="module")
def clean():
    return _measure()


def test_weights_sum_to_one():
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_properties_on_data_with_known_answers():
    rng = np.random.default_rng(0)
    # 3 well-separated clusters in 20 dimensions lying in a 3-dimensional subspace
    basis = torch.from_numpy(rng.standard_normal((3, 20))).float()
    labels = torch.arange(300) % 3
    coords = torch.nn.functional.one_hot(labels, 3).float() * 10 + torch.from_numpy(
        rng.standard_normal((300, 3))).float() * 0.1
    flat = coords @ basis
    assert knn_error(flat, labels) == 0.0
    assert linear_probe_error(flat, labels) == 0.0
    assert within_class_share(flat, labels) < 0.01
    assert components_for(pca_spectrum(flat)) <= 3
    # labels unrelated to the images: both errors near chance (2/3)
    shuffled = labels[torch.from_numpy(rng.permutation(300))]
    assert knn_error(flat, shuffled) > 0.5 and linear_probe_error(flat, shuffled) > 0.5
    # entropy: one value -> 0 bits, all 256 values equally often -> 8 bits
    assert pixel_entropy(torch.zeros(10, 1, 4, 4, dtype=torch.uint8)) == 0.0
    assert pixel_entropy(torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)) == 8.0


def test_score_and_terms_lie_in_unit_interval_and_are_deterministic(clean):
    assert 0.0 <= clean.score <= 1.0
    assert all(0.0 <= t <= 1.0 for t in clean.terms.values())
    assert _measure().score == clean.score
    assert clean.descriptors["num_classes"] == 10 and clean.descriptors["input_dim"] == 64


@pytest.mark.parametrize("knobs", [{"label_noise": 0.2}, {"pixel_noise": 0.25},
                                   {"clutter": 3}, {"max_train": 100}])
def test_a_harder_variant_of_digits_scores_higher(clean, knobs):
    harder = _measure(**knobs)
    assert harder.score > clean.score + 0.02, (knobs, harder.score, clean.score)


def test_more_label_noise_scores_higher_and_fewer_classes_lower(clean):
    scores = [_measure(label_noise=p).score for p in (0.1, 0.4)]
    assert clean.score < scores[0] < scores[1]
    assert _measure(classes=[0, 1]).score < clean.score


def test_a_term_that_cannot_be_measured_is_left_out():
    # one image per class: no held-out fold for the linear probe
    x = torch.randint(0, 255, (4, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(4)
    splits = Splits("four", x, y, x, y, x, y, 4, (0.5,), (0.2,))
    cx = measure(splits)
    assert math.isnan(cx.measured["linear_error"]) and math.isnan(cx.terms["linear"])
    assert 0.0 <= cx.score <= 1.0


def test_cli_complexity_json_has_a_top_level_score(capsys):
    assert main(["complexity", "digits", "--json", "--knob", "label_noise=0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["score"] <= 1.0
    assert out["dataset"] == "digits[label_noise=0.1]"
    assert set(out["terms"]) == set(WEIGHTS) and out["measured"]["knn_error"] > 0.05


def test_cli_complexity_table_and_bad_knob(capsys):
    assert main(["complexity", "digits"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits: complexity 0.") and "knn" in out and "scarcity" in out
    assert main(["complexity", "digits", "--knob", "label_noise=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdtune: error: label_noise:") and err.count("\n") == 1
