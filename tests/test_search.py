"""Augmentation policy and augmented share as searched study dimensions."""

from __future__ import annotations

import optuna
import pytest

from kdtune.job import TrialJob
from kdtune.search import define_space, searched_dimensions, space_of
from kdtune.spec import SpecError, parse_spec
from kdtune.trial import budget_for


def _spec(tiny_spec_dict, **search):
    tiny_spec_dict["search"].update(search)
    return parse_spec(tiny_spec_dict)


def _sample(spec, method, n=40):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = define_space(trial, method, space_of(spec))
        out.append(trial.params | fixed)
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("method", ["scratch", "rkd"])
def test_policy_and_share_are_sampled_for_every_method(tiny_spec_dict, method):
    spec = _spec(tiny_spec_dict, augmentation=["none", "paper", "crop_flip"],
                 aug_share=[0.2, 0.9])
    configs = _sample(spec, method)
    assert {c["augmentation"] for c in configs} == {"none", "paper", "crop_flip"}
    for c in configs:
        # the share exists only where a policy augments (define-by-run)
        assert ("aug_share" in c) == (c["augmentation"] != "none")
        if "aug_share" in c:
            assert 0.2 <= c["aug_share"] <= 0.9
    assert searched_dimensions(spec, method)[:2] == ["augmentation", "aug_share"]


def test_share_alone_uses_the_fixed_policy(tiny_spec_dict):
    tiny_spec_dict["training"]["augmentation"] = "crop_flip"
    spec = _spec(tiny_spec_dict, aug_share=[0.0, 1.0])
    configs = _sample(spec, "ikd", n=5)
    assert all("augmentation" not in c and 0 <= c["aug_share"] <= 1 for c in configs)


def test_share_without_any_policy_is_rejected(tiny_spec_dict):
    with pytest.raises(SpecError, match=r"^search.aug_share: nothing to share"):
        _spec(tiny_spec_dict, aug_share=[0.0, 1.0])
    with pytest.raises(SpecError, match=r"^search.augmentation\[1\]: unknown augmentation 'mix'"):
        _spec(tiny_spec_dict, augmentation=["paper", "mix"])


def test_the_trainable_uses_the_trial_config_and_the_teacher_the_spec(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, augmentation=["none", "paper"], aug_share=[0.0, 1.0])
    student = budget_for(spec, TrialJob.from_config(
        {"stage": "s", "role": "search", "dataset_index": 0, "method": "rkd", "seed": 0,
         "augmentation": "paper", "aug_share": 0.3}))
    assert (student.augmentation, student.aug_share, student.epochs) == ("paper", 0.3, 2)
    # teacher jobs carry no searched values
    teacher = budget_for(spec, TrialJob("teachers", "teacher", 0, "teacher", 0))
    assert (teacher.augmentation, teacher.aug_share, teacher.epochs) == ("none", 1.0, 3)


def test_a_method_with_nothing_searched_runs_one_search_trial(tiny_spec_dict):
    from kdtune.search import search_trials

    spec = parse_spec(tiny_spec_dict)  # no lr range: scratch has nothing to search
    assert searched_dimensions(spec, "scratch") == []
    assert search_trials(spec, "scratch") == 1
    assert search_trials(spec, "rkd") == spec.search.trials
    tuned = parse_spec(tiny_spec_dict | {"search": tiny_spec_dict["search"] | {"lr": [0.01, 0.1]}})
    assert search_trials(tuned, "scratch") == tuned.search.trials


def test_search_storage_must_be_an_optuna_rdb_url(tiny_spec_dict):
    from kdtune.spec import SpecError, parse_spec

    tiny_spec_dict["search"]["storage"] = "redis://localhost/0"
    with pytest.raises(SpecError, match=r"search\.storage.*Optuna RDB URL") as error:
        parse_spec(tiny_spec_dict)
    assert "\n" not in str(error.value)


def test_an_rdb_that_cannot_open_is_one_line_before_anything_is_written(
        tiny_spec_dict, write_spec, tmp_path, capsys):
    from kdtune.cli import main

    tiny_spec_dict["search"]["storage"] = f"sqlite:///{tmp_path}/no/such/folder/optuna.db"
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdtune: error: search.storage sqlite:///{tmp_path}/no/such/folder/"
                          "optuna.db: cannot open it (") and "\n" not in err
    assert not storage.exists()


def test_a_relative_sqlite_file_is_made_absolute(tiny_spec_dict, tmp_path, monkeypatch):
    from kdtune.preflight import resolve_paths
    from kdtune.spec import parse_spec

    monkeypatch.chdir(tmp_path)
    tiny_spec_dict["search"]["storage"] = "sqlite:///studies.db"
    spec = resolve_paths(parse_spec(tiny_spec_dict), None, None)
    assert spec.search.storage == f"sqlite:///{tmp_path / 'studies.db'}"
