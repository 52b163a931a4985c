"""The compute estimate counts each method's trials with the architecture it trains and the one
teaching it, and each pretrained model once per dataset."""

from __future__ import annotations

import json

import pytest

from kdtune.estimate import compute, dataset_shape, estimate, forward_flops
from kdtune.search import search_trials
from kdtune.spec import parse_spec


def _flops(model, shape) -> float:
    return forward_flops(model["arch"], json.dumps(model.get("options", {}), sort_keys=True),
                         shape.channels, shape.side, shape.classes)


def test_reversed_and_its_baseline_train_the_teacher_architecture(tiny_spec_dict):
    tiny_spec_dict["methods"] = ["scratch", "reversed_scratch", "reversed", "self"]
    spec = parse_spec(tiny_spec_dict)
    shape = dataset_shape(spec.datasets[0])
    big, small = _flops(tiny_spec_dict["teacher"], shape), _flops(tiny_spec_dict["student"], shape)
    t, s = spec.training.teacher_epochs, spec.training.student_epochs
    per_step = {f: s * (3 * f * shape.n_train + f * shape.n_val) for f in (big, small)}
    seeds = len(spec.final.seeds)
    n = {m: search_trials(spec, m) + seeds for m in spec.methods}
    expected_students = (n["scratch"] * per_step[small]
                         + n["reversed_scratch"] * per_step[big]
                         # the teacher architecture trained, taught by the student's
                         + n["reversed"] * (per_step[big] + s * small * shape.n_train)
                         # the student taught by a pretrained copy of itself
                         + n["self"] * (per_step[small] + s * small * shape.n_train))
    # reversed and self are taught by the pretrained student architecture only: no teacher
    expected_teachers = t * (3 * small * shape.n_train + small * shape.n_val)
    c = compute(spec)
    assert c.student_flops == pytest.approx(expected_students)
    assert c.teacher_flops == pytest.approx(expected_teachers)
    assert c.trials == 1 + sum(n.values())
    assert f"over {c.trials} trials" in estimate(spec)[0]


def test_a_baseline_is_never_counted_as_distilling(tiny_spec_dict):
    tiny_spec_dict["methods"] = ["scratch"]
    c = compute(parse_spec(tiny_spec_dict))
    assert c.teacher_flops == 0.0  # nothing distils: no teacher is trained
    assert c.trials == search_trials(parse_spec(tiny_spec_dict), "scratch") + 2
