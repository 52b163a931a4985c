"""Warm starts (kdtune.warm_start, ``search.warm_start``): which earlier searches a search
starts from, what travels (configs only, cut to this space), the order Optuna hands them out,
where each trial's config came from, and a real second study that starts from a first."""

from __future__ import annotations

import copy
import json

import pytest

from kdtune.rundir import RUN_FILE, TRIAL_SCHEMA, RunFileError, write_table_atomic
from kdtune.search import make_searcher, sourced_start_points
from kdtune.spec import SpecError, parse_spec
from kdtune.storage import StorageError
from kdtune.warm_start import (
    SourceSearch,
    best_of_searches,
    choose,
    choose_warm_start,
    in_space,
    read_warm_start,
    write_warm_start,
)

STUDENT = 'small_cnn{"widths": [4, 8]}'
TEACHER = 'small_cnn{"widths": [8, 16]}'


def _row(trial_id, val_acc, dataset="d", method="rkd", role="search", status="finished",
         **hp):
    config = {"alpha": 0.5, "tau": 3.0, "hint_layer": None, "lr": 0.1} | hp
    return {"trial_id": trial_id, "dataset": dataset, "method": method, "role": role,
            "status": status, "val_acc": val_acc, "test_acc": 99.0, "arch": STUDENT,
            "teacher_arch": TEACHER if method != "scratch" else None,
            "config_json": json.dumps(config | {"stage": "search-x", "seed": 0}),
            "finished_at": "2026-12-01T00:00:00+00:00"}


def _source(run, dataset, complexity, method="rkd", arch=STUDENT, teacher=TEACHER, **config):
    return SourceSearch(run, dataset, method, arch, teacher, f"{run}-t", 80.0,
                        {"alpha": 0.5, "tau": 3.0} | config, complexity, "2026-12-01")


def test_the_best_finished_search_trial_of_each_search_is_taken(tiny_spec_dict):
    rows = [_row("a", 70.0, alpha=0.2), _row("b", 90.0, alpha=0.3),  # b: the best
            _row("c", 99.0, role="final"),  # a final run: selected on nothing, never taken
            _row("d", 95.0, status="stopped"), _row("e", None, status="failed"),
            _row("f", 60.0, dataset="e"), _row("g", 80.0, method="scratch")]
    found = {(s.dataset, s.method): s for s in best_of_searches(
        "run-1", rows, [{"dataset": "d", "complexity_score": 0.4}])}
    assert set(found) == {("d", "rkd"), ("e", "rkd"), ("d", "scratch")}
    best = found[("d", "rkd")]
    assert (best.trial_id, best.val_acc, best.complexity) == ("b", 90.0, 0.4)
    # the hyperparameters only: never an accuracy, the stage or the seed
    assert best.config == {"alpha": 0.3, "tau": 3.0, "lr": 0.1}
    assert found[("e", "rkd")].complexity is None  # not in datasets.parquet


def test_the_nearest_in_complexity_of_the_same_method_and_models_come_first(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    sources = [_source("far", "x", 0.9, alpha=0.11), _source("near", "y", 0.52, alpha=0.22),
               _source("unmeasured", "z", None, alpha=0.33),
               _source("other-student", "y", 0.5, arch='small_cnn{"widths": [2, 4]}'),
               _source("other-teacher", "y", 0.5, teacher="resnet18"),
               _source("other-method", "y", 0.5, method="ikd"),
               _source("same-config", "w", 0.55, alpha=0.22)]
    chosen = choose(sources, spec, "rkd", complexity=0.5, k=3)
    assert [c.source for c in chosen] == ["near/y", "far/x", "unmeasured/z"]
    assert chosen[0].distance == pytest.approx(0.02) and chosen[2].distance is None
    assert chosen[0].config == {"alpha": 0.22, "tau": 3.0}  # the tiny spec searches no lr
    assert [c.source for c in choose(sources, spec, "rkd", 0.5, k=1)] == ["near/y"]
    assert choose(sources, spec, "at", 0.5, k=3) == []  # no earlier search of `at`


def test_a_config_is_cut_to_this_search_and_its_ranges(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)  # alpha [0.1, 0.9], tau [1, 8], hints stage1/stage2
    config = {"alpha": 0.95, "tau": 2.0, "hint_layer": "stage2", "lr": 0.3, "beta": 5.0}
    # alpha outside this range (Optuna samples it); lr and beta are not searched here
    assert in_space(config, spec, "ikd") == {"tau": 2.0, "hint_layer": "stage2"}
    assert in_space(config | {"hint_layer": "stage9"}, spec, "ikd") == {"tau": 2.0}
    assert in_space(config, spec, "rkd") == {"tau": 2.0}
    assert in_space(config, spec, "scratch") == {}


def test_warm_configs_come_first_then_the_paper_point_then_the_spec_points(tiny_spec_dict):
    tiny_spec_dict["search"]["points"] = [{"tau": 2.0}]
    spec = parse_spec(tiny_spec_dict)
    warm = [{"source": "r/d", "config": {"alpha": 0.3, "tau": 5.0, "hint_layer": "stage1"}}]
    assert sourced_start_points(spec, "rkd", warm) == [
        ("warm:r/d", {"alpha": 0.3, "tau": 5.0}), ("paper", {"alpha": 0.7, "tau": 4.0}),
        ("points[0]", {"tau": 2.0})]


def test_each_suggestion_carries_its_source_and_a_resumed_search_keeps_them(tiny_spec_dict,
                                                                           tmp_path):
    spec = parse_spec(tiny_spec_dict)
    journal = tmp_path / "optuna" / "journal.log"
    warm = [{"source": "r/d", "config": {"alpha": 0.3, "tau": 5.0}},
            {"source": "s/d", "config": {"alpha": 0.4, "tau": 6.0}}]

    def searcher():
        return make_searcher(spec, "rkd", journal, "search-d-rkd", seed=0, warm=warm)

    first = searcher()
    config = first.suggest("t1")
    assert (config["config_source"], config["alpha"], config["tau"]) == ("warm:r/d", 0.3, 5.0)
    first.on_trial_complete("t1", {"val_acc": 50.0})
    # the run dies here; a resumed run builds its searcher again from the journal
    again = searcher()
    sources = []
    for trial in ("t2", "t3", "t4"):
        config = again.suggest(trial)
        sources.append(config["config_source"])
        again.on_trial_complete(trial, {"val_acc": 40.0})
    assert sources == ["warm:s/d", "paper", "tpe"]


def test_the_spec_takes_auto_one_run_or_a_list(tiny_spec_dict):
    def warm(value):
        data = copy.deepcopy(tiny_spec_dict)
        data["search"]["warm_start"] = value
        return parse_spec(data).search.warm_start

    assert warm("auto") == "auto" and warm("runs/a") == ["runs/a"]
    assert warm(["runs/a", "s3://b/c"]) == ["runs/a", "s3://b/c"]
    assert warm(None) is None
    for bad in ([], ["auto", "runs/a"], [""], 3):
        with pytest.raises(SpecError, match="warm_start"):
            warm(bad)


def _run_dir(root, name, status="finished", rows=()):
    run = root / name
    run.mkdir(parents=True)
    (run / RUN_FILE).write_text(json.dumps({"status": status}))
    write_table_atomic(list(rows), TRIAL_SCHEMA, run / "trials.parquet")
    return run


def test_auto_reads_finished_runs_and_passes_over_damaged_ones(tiny_spec_dict, tmp_path):
    storage = tmp_path / "runs"
    label = parse_spec(tiny_spec_dict).datasets[0].label
    _run_dir(storage, "done", rows=[_row("a", 80.0, dataset=label, alpha=0.25)])
    _run_dir(storage, "running", status="running",
             rows=[_row("b", 99.0, dataset=label, alpha=0.35)])
    (_run_dir(storage, "cut") / "trials.parquet").write_bytes(b"PAR1 cut short")
    (storage / "teachers").mkdir()
    tiny_spec_dict |= {"storage": str(storage), "methods": ["scratch", "rkd"]}
    tiny_spec_dict["search"]["warm_start"] = "auto"
    spec = parse_spec(tiny_spec_dict)
    lines = []
    chosen = choose_warm_start(spec, {"search-d-rkd": ("rkd", None)}, lines.append)
    assert [(c.source, c.config["alpha"]) for c in chosen["search-d-rkd"]] == \
        [(f"done/{label}", 0.25)]
    assert any("cut passed over" in line and "trials.parquet" in line for line in lines)
    # a run named explicitly that cannot be read stops the study, in one line
    tiny_spec_dict["search"]["warm_start"] = [str(storage / "cut")]
    with pytest.raises(StorageError, match="warm_start.*cut.*trials.parquet"):
        choose_warm_start(parse_spec(tiny_spec_dict), {"s": ("rkd", None)}, lines.append)
    tiny_spec_dict["search"]["warm_start"] = [str(storage / "nowhere")]
    with pytest.raises(StorageError, match="warm_start.*nowhere: no such run directory"):
        choose_warm_start(parse_spec(tiny_spec_dict), {"s": ("rkd", None)}, lines.append)
    # a run that is still running may be named: its finished trials count
    tiny_spec_dict["search"]["warm_start"] = [str(storage / "running")]
    chosen = choose_warm_start(parse_spec(tiny_spec_dict), {"s": ("rkd", None)}, lines.append)
    assert chosen["s"][0].config["alpha"] == 0.35


def test_the_chosen_configs_are_kept_for_a_resumed_run(tiny_spec_dict, tmp_path):
    chosen = choose([_source("r", "d", 0.5)], parse_spec(tiny_spec_dict), "rkd", 0.4, k=2)
    write_warm_start({"search-d-rkd": chosen}, tmp_path)
    assert read_warm_start(tmp_path) == {"search-d-rkd": chosen}
    (tmp_path / "warm_start.json").write_text('{"search-d-rkd": [{"sou')
    with pytest.raises(RunFileError, match="warm_start.json: damaged"):
        read_warm_start(tmp_path)
    assert read_warm_start(tmp_path / "elsewhere") == {}


@pytest.mark.slow
def test_a_second_study_starts_from_the_first_ones_best_config(tiny_spec_dict, tmp_path,
                                                               embedded_ray):
    """Two tiny studies on one storage, the second with ``warm_start: auto``: its rkd search
    begins with the first study's best rkd config (on validation), then the paper point, then
    TPE; every row says which; a resume enqueues nothing new."""
    import kdtune

    tiny_spec_dict |= {"methods": ["scratch", "rkd"], "final": {"seeds": [0]}}
    tiny_spec_dict["search"]["trials"] = 3
    storage = str(tmp_path / "runs")
    first = kdtune.run(copy.deepcopy(tiny_spec_dict), storage=storage, progress=False)
    tiny_spec_dict["search"] |= {"warm_start": "auto", "warm_start_configs": 1}
    lines: list[str] = []
    second = kdtune.run(tiny_spec_dict, storage=storage, progress=lines.append)
    resumed = kdtune.resume(second.path, progress=lines.append)
    searched = first.trials[(first.trials.role == "search") & (first.trials.method == "rkd")]
    best = searched.sort_values("val_acc", ascending=False, kind="stable").iloc[0]
    trials = second.trials
    rkd = trials[(trials.role == "search") & (trials.method == "rkd")]
    source = f"warm:{first.path.name}/{best.dataset}"
    assert sorted(rkd.config_source) == sorted([source, "paper", "tpe"])
    warm = rkd[rkd.config_source == source].iloc[0]
    assert (warm.alpha, warm.tau) == pytest.approx((best.alpha, best.tau))
    assert any(line.startswith("warm start search-") and first.path.name in line
               for line in lines)
    # scratch searches nothing here: one fixed trial, nothing to warm-start
    assert list(trials[(trials.role == "search") & (trials.method == "scratch")]
                .config_source) == ["fixed"]
    finals = trials[trials.role == "final"]
    assert all(s.startswith("search:") for s in finals.config_source)
    assert trials.config_source[trials.role == "teacher"].isna().all()
    assert json.loads((second.path / "warm_start.json").read_text())
    assert sorted(resumed.trials.trial_id) == sorted(trials.trial_id)
