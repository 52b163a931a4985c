"""Synthetic run directories, for the report's tests and benchmark (no training, no Ray).

``write_synthetic_run`` writes what a finished run leaves behind (trials, epochs, datasets
Parquet files, run.json, spec.yaml and, optionally, the Optuna journal) with accuracies drawn
from a known model: the gain of a distilling method peaks at alpha = 0.6, tau = 4 and grows
with the dataset's complexity; IKD gains one more point at its deeper hint layer.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from kdtune import methods as registry
from kdtune.rundir import EPOCH_SCHEMA, TRIAL_SCHEMA, write_table_atomic

DEFAULT_DATASETS = [
    {"dataset": "mnist", "name": "mnist", "complexity_score": 0.15},
    {"dataset": "fashion_mnist", "name": "fashion_mnist", "complexity_score": 0.35},
    {"dataset": "cifar10", "name": "cifar10", "complexity_score": 0.6},
    {"dataset": "cifar100", "name": "cifar100", "complexity_score": 0.85},
]


def gain_model(alpha: float, tau: float, complexity: float) -> float:
    """The true validation gain (points) of a distilling method at (alpha, tau)."""
    peak = 1.0 + 12.0 * complexity
    return peak * math.exp(-((alpha - 0.6) / 0.3) ** 2 - (math.log(tau / 4.0) / 0.8) ** 2) - 1.0


def _distils(method: str) -> bool:
    return method in registry.REGISTRY and registry.get(method).distils


def write_synthetic_run(run_dir: str | Path, *, datasets: list[dict[str, Any]] | None = None,
                        methods: tuple[str, ...] = ("scratch", "rkd", "ikd"),
                        search_trials: int = 8, seeds: tuple[int, ...] = (0, 1, 2),
                        epochs: int = 10, teacher_epochs: int = 20, journal: bool = True,
                        stopped_share: float = 0.2, failed: int = 1, study: str = "synthetic",
                        seed: int = 0, extra_search: int = 0) -> Path:
    """Write a run directory; returns its path. ``extra_search`` adds that many search trials to
    the first search (to hit an exact trial count). A dataset dict without
    ``complexity_score`` gets the middle value 0.5 in the accuracy model and no score column
    unless another dataset has one."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    datasets = [dict(d) for d in (datasets or DEFAULT_DATASETS)]
    run_id = run_dir.name
    trials: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    def add(row: dict[str, Any], curve_to: float, budget: int) -> None:
        row |= {"study": study, "run_id": run_id, "epochs_budget": budget,
                "finished_at": (stamp + dt.timedelta(seconds=len(trials))).isoformat(),
                "node_id": "node0", "config_json": json.dumps(
                    {k: row.get(k) for k in ("alpha", "tau", "hint_layer", "beta", "lr")
                     if row.get(k) is not None} | {"method": row["method"], "seed": row["seed"]})}
        trials.append(row)
        n = row["epochs_run"]
        for e in range(1, n + 1):
            frac = 1 - math.exp(-3 * e / budget)
            epoch_rows.append({
                "study": study, "run_id": run_id, "trial_id": row["trial_id"],
                "dataset": row["dataset"], "method": row["method"], "role": row["role"],
                "seed": row["seed"], "epoch": e, "train_loss": 2.3 * (1 - frac) + 0.1,
                "loss_ce": 2.0 * (1 - frac) + 0.1,
                "loss_kd": 0.5 * (1 - frac) if _distils(row["method"]) else None,
                "loss_hint": 0.3 * (1 - frac) if row.get("hint_layer") else None,
                "val_acc": None if curve_to is None else 10 + (curve_to - 10) * frac
                + rng.normal(0, 0.3), "epoch_s": 0.5, "wall_s": 0.5 * e})

    for di, ds in enumerate(datasets):
        label = ds["dataset"]
        stage_label = label.replace("[", "_").replace("]", "").replace("=", "")
        complexity = ds.get("complexity_score", 0.5)
        scratch_acc = 99.0 - 60.0 * complexity
        teacher_acc = scratch_acc + 4.0 + 10.0 * complexity
        add({"stage": "teachers", "trial_id": f"teachers:t{di}", "dataset": label,
             "method": "teacher", "role": "teacher", "seed": 0, "lr": 0.05,
             "val_acc": teacher_acc, "test_acc": teacher_acc + rng.normal(0, 0.3),
             "epochs_run": teacher_epochs, "status": "finished", "wall_s": 30.0,
             "teacher_id": f"{label}-teacher"}, teacher_acc, teacher_epochs)
        best: dict[str, dict[str, Any]] = {}
        for mi, method in enumerate(methods):
            stage = f"search-{stage_label}-{method}"
            n = search_trials + (extra_search if di == 0 and mi == 0 else 0)
            for t in range(n):
                row: dict[str, Any] = {
                    "stage": stage, "trial_id": f"{stage}:{t:05d}", "dataset": label,
                    "method": method, "role": "search", "seed": seeds[0],
                    "lr": float(math.exp(rng.uniform(math.log(0.01), math.log(0.2)))),
                    "teacher_id": f"{label}-teacher", "wall_s": float(rng.uniform(2, 20))}
                gain = 0.0
                if _distils(method):
                    row["alpha"], row["tau"] = (0.7, 4.0) if t == 0 else (
                        float(rng.uniform(0.1, 0.95)), float(rng.uniform(1.0, 10.0)))
                    gain = gain_model(row["alpha"], row["tau"], complexity)
                if method == "ikd":
                    row["hint_layer"] = ["stage1", "stage2"][t % 2]
                    row["beta"] = 1.0
                    gain += 1.0 if row["hint_layer"] == "stage2" else 0.0
                acc = scratch_acc + gain + rng.normal(0, 0.4)
                status, run_epochs = "finished", epochs
                if t == 1 and failed and di == 0 and method != "scratch":
                    status, acc, run_epochs = "failed", None, 2
                    row["failure"] = "loss diverged (nan) at epoch 2"
                elif t > 2 and rng.random() < stopped_share:
                    status, run_epochs = "stopped", int(rng.integers(1, epochs))
                    acc -= 5.0 * (epochs - run_epochs) / epochs
                row |= {"val_acc": acc, "test_acc": None if acc is None else acc + rng.normal(
                    0, 0.4), "epochs_run": run_epochs, "status": status}
                add(row, acc, epochs)
                if status == "finished" and (method not in best
                                             or acc > best[method]["val_acc"]):
                    best[method] = row
        for method in methods:
            cfg = {k: best[method].get(k) for k in ("alpha", "tau", "hint_layer", "beta", "lr")}
            gain = gain_model(cfg["alpha"], cfg["tau"], complexity) if _distils(method) else 0.0
            for s in seeds:
                acc = scratch_acc + gain + rng.normal(0, 0.5)
                add(cfg | {"stage": "final", "trial_id": f"final:{label}-{method}-{s}",
                           "dataset": label, "method": method, "role": "final", "seed": s,
                           "val_acc": acc, "test_acc": acc + rng.normal(0, 0.3),
                           "epochs_run": epochs, "status": "finished", "wall_s": 10.0,
                           "teacher_id": f"{label}-teacher"}, acc, epochs)
    write_table_atomic(trials, TRIAL_SCHEMA, run_dir / "trials.parquet")
    write_table_atomic(epoch_rows, EPOCH_SCHEMA, run_dir / "epochs.parquet")
    _write_datasets(datasets, run_dir / "datasets.parquet")
    (run_dir / "run.json").write_text(json.dumps({
        "study": study, "status": "finished", "host": "synthetic", "platform": "synthetic",
        "python": "3", "created_at": "2026-01-01T00:00:00", "wall_s": 123.0}, indent=2))
    (run_dir / "spec.yaml").write_text(
        f"study: {json.dumps(study)}\ndescription: synthetic run for the report's tests\n"
        f"methods: {json.dumps(list(methods))}\n"
        "teacher: {arch: small_cnn, options: {widths: [32, 64]}}\n"
        "student: {arch: small_cnn, options: {widths: [4, 8]}}\n")
    if journal:
        write_journal(trials, run_dir / "optuna" / "journal.log")
    return run_dir


def _write_datasets(datasets: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {"channels": 1, "image_size": 28, "num_classes": 10, "n_train": 50000,
            "n_val": 7000, "n_test": 3000}
    rows = [base | {"name": d.get("name", d["dataset"])} | d for d in datasets]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def write_journal(trials: list[dict[str, Any]], journal: Path) -> None:
    """An Optuna journal with one study per search stage, as ``kdtune run`` leaves it."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    stages: dict[str, list[dict[str, Any]]] = {}
    for r in trials:
        if r["role"] == "search":
            stages.setdefault(r["stage"], []).append(r)
    for stage, rows in stages.items():
        study = optuna.create_study(study_name=stage, storage=storage, direction="maximize")
        frozen = []
        for r in rows:
            dists: dict[str, Any] = {"lr": FloatDistribution(0.01, 0.2, log=True)}
            if r.get("alpha") is not None:
                dists |= {"alpha": FloatDistribution(0.1, 0.95),
                          "tau": FloatDistribution(1.0, 10.0)}
            if r.get("hint_layer") is not None:
                dists["hint_layer"] = CategoricalDistribution(["stage1", "stage2"])
            params = {k: r[k] for k in dists}
            state = (optuna.trial.TrialState.FAIL if r["val_acc"] is None
                     else optuna.trial.TrialState.COMPLETE)
            frozen.append(optuna.trial.create_trial(
                params=params, distributions=dists, state=state,
                value=r["val_acc"] if state == optuna.trial.TrialState.COMPLETE else None))
        study.add_trials(frozen)
