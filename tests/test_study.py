"""A study's plan and what it stores: every method inside a study (spec rules, search
dimensions, baselines of gains, the omit-one-class transfer set, one tiny run of every method
through Ray Tune), its datasets, per-role resources and the compute estimate."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import torch

from kdtune.cli import main
from kdtune.data import load_splits, omit_class
from kdtune.estimate import dataset_shape
from kdtune.methods import REGISTRY, names, teacher_sources, trial_models
from kdtune.preflight import resolve_paths
from kdtune.results import compute_gains
from kdtune.search import define_space, searched_dimensions, space_of, start_points
from kdtune.spec import DatasetSpec, SpecError, parse_spec
from kdtune.study import Study
from kdtune.tuner import stage_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_method_is_a_spec_method(tiny_spec_dict):
    assert set(names()) >= {"scratch", "rkd", "ikd", "at", "self", "reversed",
                            "reversed_scratch", "mskd"}
    tiny_spec_dict["training"]["augmentation"] = "paper"  # what every method can use
    for name, method in REGISTRY.items():  # each validates beside its baseline
        spec = parse_spec(tiny_spec_dict | {"methods": list(dict.fromkeys(
            [m for m in (method.baseline, name) if m]))})
        assert name in spec.methods


def test_reversed_swaps_the_architectures_and_needs_its_own_baseline(tiny_spec_dict):
    tiny_spec_dict["methods"] = ["scratch", "reversed"]
    with pytest.raises(SpecError, match="^methods: method reversed needs its baseline "
                                        "reversed_scratch"):
        parse_spec(tiny_spec_dict)
    tiny_spec_dict["methods"] = ["scratch", "self", "reversed_scratch", "reversed", "rkd"]
    spec = parse_spec(tiny_spec_dict)
    assert teacher_sources(spec) == ["teacher", "student"]
    trained, teacher = trial_models(spec, "reversed")
    assert (trained, teacher) == (spec.teacher, spec.student)
    assert trial_models(spec, "self") == (spec.student, spec.student)
    assert trial_models(spec, "reversed_scratch") == (spec.teacher, None)


def test_pretrained_student_gets_its_own_teacher_id(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    ds = spec.datasets[0]
    assert spec.teacher_id(ds) != spec.teacher_id(ds, "student")
    tiny_spec_dict.update(student={"arch": "resnet8"}, methods=["scratch", "self"])
    tiny_spec_dict["search"]["hint_layers"] = None
    other = parse_spec(tiny_spec_dict)
    assert other.teacher_id(ds, "student").startswith("digits-resnet8-s0-")
    assert other.teacher_id(ds) == spec.teacher_id(ds)  # the teacher's id did not move


def test_mskd_needs_a_student_with_two_stages(tiny_spec_dict):
    tiny_spec_dict["methods"] = ["scratch", "mskd"]
    tiny_spec_dict["student"]["options"] = {"widths": [4]}
    tiny_spec_dict["search"]["hint_layers"] = None
    with pytest.raises(SpecError, match="^methods: mskd needs a student with at least two"):
        parse_spec(tiny_spec_dict)


@pytest.mark.parametrize("points,message", [
    ([{"tau": 50.0}], r"search.points\[0\]: tau=50.0 is outside search.tau \[1.0, 8.0\]"),
    ([{"tau": 2.0}, {"gamma": 1}], r"search.points\[1\]: unknown dimension 'gamma'"),
    ([{"beta": 1.0}], r"search.points\[0\]: beta is not searched"),
    ([{"hint_layer": "stage9"}], r"search.points\[0\]: hint_layer 'stage9' is not among"),
])
def test_bad_search_points_are_named(tiny_spec_dict, points, message):
    tiny_spec_dict["search"]["points"] = points
    with pytest.raises(SpecError, match=message):
        parse_spec(tiny_spec_dict)


def test_omit_class_out_of_range_fails_before_the_run(tiny_spec_dict, write_spec, tmp_path,
                                                     capsys):
    tiny_spec_dict["distillation"] = {"omit_class": 10}
    storage = tmp_path / "storage"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    assert "distillation.omit_class: digits[n=300] has no class 10" in capsys.readouterr().err
    assert not any(p.name != "teachers" for p in storage.glob("*"))


def test_each_method_searches_its_own_dimensions(tiny_spec_dict):
    tiny_spec_dict["methods"] = list(names())
    tiny_spec_dict["search"] |= {"beta": [0.5, 4.0], "lr": [0.01, 0.1]}
    tiny_spec_dict["training"]["augmentation"] = "paper"  # ccd weighs augmented images
    spec = parse_spec(tiny_spec_dict)
    expected = {"scratch": [], "reversed_scratch": [], "rkd": ["alpha", "tau"],
                "self": ["alpha", "tau"], "reversed": ["alpha", "tau"], "mskd": ["alpha", "tau"],
                "at": ["alpha", "tau", "beta"], "ikd": ["alpha", "tau", "hint_layer", "beta"],
                "ccd": ["alpha", "tau"]}
    assert set(expected) == set(names())
    study = optuna.create_study()
    for method, dims in expected.items():
        assert searched_dimensions(spec, method) == ["lr"] + dims
        trial = study.ask()
        fixed = define_space(trial, method, space_of(spec))
        assert sorted(trial.params) == sorted(["lr"] + dims)
        assert fixed == {"config_source": "tpe"}  # sampled, not an enqueued start point


def test_start_points_keep_what_each_method_searches(tiny_spec_dict):
    tiny_spec_dict["search"] |= {"points": [{"tau": 2.0}, {"tau": 6.0, "alpha": 0.5}],
                                 "include_paper_point": False}
    spec = parse_spec(tiny_spec_dict)
    assert start_points(spec, "rkd") == [{"tau": 2.0}, {"tau": 6.0, "alpha": 0.5}]
    assert start_points(spec, "scratch") is None
    tiny_spec_dict["search"]["include_paper_point"] = True
    assert start_points(parse_spec(tiny_spec_dict), "at")[0] == {"alpha": 0.7, "tau": 4.0}


def _final(method, seed, test, **extra):
    return {"dataset": "d", "method": method, "seed": seed, "role": "final",
            "status": "finished", "test_acc": test, "val_acc": test, **extra}


def test_reversed_gains_are_measured_against_the_same_architecture():
    rows = [_final("scratch", s, 50.0) for s in (0, 1)]
    rows += [_final("reversed_scratch", s, a) for s, a in ((0, 80.0), (1, 82.0))]
    rows += [_final("reversed", s, a) for s, a in ((0, 81.0), (1, 85.0))]
    rows += [_final("self", s, a, omitted_class=3, omitted_class_acc=a - 40)
             for s, a in ((0, 52.0), (1, 54.0))]
    gains = {g["method"]: g for g in compute_gains(rows)}
    assert gains["reversed"]["baseline"] == "reversed_scratch"
    assert gains["reversed"]["gain_pts"] == pytest.approx(2.0)
    assert gains["reversed_scratch"]["baseline"] is None
    assert gains["self"]["gain_pts"] == pytest.approx(3.0)
    assert gains["self"]["omitted_class_acc_mean"] == pytest.approx(13.0)


def test_omit_class_drops_it_from_train_and_val_only():
    splits = load_splits("digits")
    student = omit_class(splits, 3)
    assert 3 not in student.train_y.tolist() and 3 not in student.val_y.tolist()
    assert torch.equal(student.test_y, splits.test_y) and 3 in student.test_y.tolist()
    assert len(student.train_y) == int((splits.train_y != 3).sum())
    assert student.mean == splits.mean  # the teacher's normalisation, not a new one
    with pytest.raises(ValueError, match="not a class"):
        omit_class(splits, 10)


@pytest.mark.slow
def test_every_method_runs_in_a_study_with_one_class_omitted(tiny_spec_dict, write_spec,
                                                              tmp_path, embedded_ray):
    tiny_spec_dict.update(
        methods=["scratch", "at", "self", "reversed_scratch", "reversed", "mskd"],
        student={"arch": "resnet8", "options": {"widths": [4, 8, 8]}},
        distillation={"omit_class": 3}, final={"seeds": [0]})
    tiny_spec_dict["search"] |= {"trials": 1, "hint_layers": None, "beta": [0.5, 2.0]}
    tiny_spec_dict["training"] |= {"teacher_epochs": 2, "student_epochs": 2}
    storage = tmp_path / "storage"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 0
    (run_dir,) = [p for p in storage.iterdir() if p.name != "teachers"]
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    teachers = {r["method"]: r for r in rows if r["role"] == "teacher"}
    assert set(teachers) == {"teacher", "pretrained_student"}
    assert teachers["pretrained_student"]["arch"].startswith("resnet8")
    assert len(list((storage / "teachers").iterdir())) == 2
    finals = {r["method"]: r for r in rows if r["role"] == "final"}
    assert set(finals) == set(tiny_spec_dict["methods"])
    assert finals["reversed"]["arch"].startswith("small_cnn")
    assert finals["reversed"]["teacher_arch"].startswith("resnet8")
    assert finals["self"]["teacher_arch"] == finals["self"]["arch"]
    for r in finals.values():
        assert r["status"] == "finished" and r["omitted_class"] == 3
        per_class = json.loads(r["class_acc_json"])
        assert set(per_class) == {str(k) for k in range(10)}
        assert r["omitted_class_acc"] == per_class["3"]
    exits = json.loads(finals["mskd"]["exit_acc_json"])
    assert list(exits) == ["exit1", "exit2", "exit3", "ensemble"]
    assert exits["ensemble"] == pytest.approx(finals["mskd"]["test_acc"], abs=1e-3)
    # the search trial and its retrain on the same seed are the same computation
    search = {r["method"]: r for r in rows if r["role"] == "search"}
    for method in ("mskd", "at", "reversed"):
        assert search[method]["val_acc"] == pytest.approx(finals[method]["val_acc"])
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pylist()
    assert all(e["loss_at"] is not None for e in epochs if e["method"] == "at")
    gains = {g["method"]: g for g in pq.read_table(run_dir / "gains.parquet").to_pylist()}
    assert gains["reversed"]["baseline"] == "reversed_scratch"
    assert gains["at"]["baseline"] == "scratch" and gains["at"]["omitted_class"] == 3


def test_study_stores_complexity_and_knobs_per_dataset(tiny_spec_dict, tmp_path,
                                                        embedded_ray):
    tiny_spec_dict["datasets"] = [{"name": "digits", "label_noise": 0.0},
                                  {"name": "digits", "label_noise": 0.3},
                                  {"name": "digits", "max_train": 300, "resolution": 4}]
    spec = resolve_paths(parse_spec(tiny_spec_dict), str(tmp_path / "s"), None)
    # Study.create joins Ray (it plans resources on the cluster): the session's shared one
    study = Study.create(spec, "spec text", log=lambda _: None)
    rows = pq.read_table(study.run_dir / "datasets.parquet").to_pylist()
    assert [r["dataset"] for r in rows] == [ds.label for ds in spec.datasets]
    assert [(r["knob"], r["knob_value"]) for r in rows] == [
        ("label_noise", 0.0), ("label_noise", 0.3), ("max_train+resolution", None)]
    assert all(0.0 <= r["complexity_score"] <= 1.0 for r in rows)
    assert rows[1]["complexity_score"] > rows[0]["complexity_score"]
    assert rows[2]["n_train"] == 300 and rows[2]["image_size"] == 4
    assert rows[1]["knn_error"] > rows[0]["knn_error"]


def test_stage_names_are_path_safe():
    assert stage_name("search", "digits[n=300]", "rkd") == "search-digits_n300-rkd"
    name = stage_name("search", "imagefolder:a b<c>[n=3,label_noise=0.1]", "ikd")
    assert name == "search-imagefolder_a_b_c__n3_label_noise0.1-ikd"


def test_resources_per_role(tiny_spec_dict):
    tiny_spec_dict["resources"] = {"cpus": 2, "gpus": 0.5, "teacher": {"gpus": 1},
                                   "student": {"gpus": 0.25}}
    resources = parse_spec(tiny_spec_dict).resources
    assert resources.for_role("teacher") == (2, 1)
    assert resources.for_role("search") == (2, 0.25)
    assert parse_spec(tiny_spec_dict | {"resources": {"gpus": 0.5}}).resources.for_role(
        "teacher") == (1, 0.5)


@pytest.mark.parametrize("fields,expected", [
    ({"name": "mnist"}, (1, 28, 10, 60_000, 7_000, 3_000)),
    ({"name": "usps"}, (1, 16, 10, 7_291, 1_404, 603)),
    ({"name": "cifar100", "max_train": 1000, "channels": 1}, (1, 32, 100, 1000, 7_000, 3_000)),
    ({"name": "cifar10", "classes": 2, "resolution": 16}, (3, 16, 2, 10_000, 1_400, 600)),
])
def test_dataset_shapes_without_loading(fields, expected):
    shape = dataset_shape(DatasetSpec(**fields))
    assert (shape.channels, shape.side, shape.classes, shape.n_train, shape.n_val,
            shape.n_test) == expected


def test_validate_prints_the_plan_and_a_compute_estimate(capsys):
    assert main(["validate", str(ROOT / "studies" / "belinga2024.yaml")]) == 0
    out = capsys.readouterr().out
    assert "plan:" in out and "compute:" in out and "GPU-hours" in out
