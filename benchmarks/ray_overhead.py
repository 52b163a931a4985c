"""Ray's share of a study's wall time, and what ASHA saves and costs on the quickstart space.

1. The quickstart study runs through kdtune on an embedded Ray (ASHA off, as shipped). Its
   wall time counts from the first check to the end of the last stage (Ray's start, dataset
   loading and resource planning included; the gains table and the HTML report excluded).
2. The same trials (configs read back from ``trials.parquet``: same models, epochs, seeds,
   hyperparameters, the same teacher recipe) run bare: plain PyTorch in a pool of as many
   processes as Ray ran trials at once (cluster CPUs / CPUs per trial), one thread each, with
   kdtune's dependencies (teachers first; a search's final runs once it is done), no
   checkpoints, and a trial's whole work (the trainable's per-process cache of teacher
   outputs, test and per-class accuracy). Its wall time counts from loading the data
   to the end of the last stage, pool start-up included.
   ``ray_overhead = (T_kdtune - T_bare) / T_kdtune``: everything that is not training —
   Ray and Tune, and the bookkeeping around them (Optuna's sampler and journal, per-epoch
   checkpoints, kdtune's Parquet writes) — as a share of the wall time. Target 0.10 for a
   realistic spec (``ray_overhead_fashion.yaml``), 0.15 for the quickstart's half-second trials.
3. ASHA: the same study with ``scheduler.asha: true`` (epochs saved against running every
   search trial to the end), and ASHA's rule replayed on the curves of run 1 (how often it
   would have stopped a trial whose final accuracy ranked in the top quarter of its search).

Writes ``benchmarks/results/ray_overhead-<date>.json`` and ``.md``; the last line printed is
``ray_overhead: <value>x (target <t>)``, and the ``.md`` gives each ABBA pair's share too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.10  # a realistic spec's (ray_overhead_fashion.yaml); issue 16
QUICKSTART_TARGET = 0.15  # the quickstart's half-second trials (issue 16)


def target_for(spec_path: str) -> float:
    """The target of the spec at ``spec_path``: the quickstart's, or a realistic spec's."""
    return QUICKSTART_TARGET if Path(spec_path).name == "quickstart.yaml" else TARGET


def _machine() -> dict[str, Any]:
    import ray
    import torch

    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "date": dt.datetime.now().isoformat(timespec="seconds")}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``: user, nice,
    system, irq, softirq, steal), or None where there is no ``/proc/stat``. Two readings around a
    run say how much of the cores' time it used, and so how much of its wall time was idle."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:9]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- kdtune on Ray

def run_kdtune(spec, spec_text: str, storage: Path, log) -> tuple[Path, float, dict[str, float]]:
    """Run a study in this process; (run directory, wall seconds without the report, phases)."""
    import kdtune.report
    from kdtune.study import Study

    real_report = kdtune.report.build_report
    report_s = [0.0]

    def timed_report(*args, **kwargs):  # the HTML report is not scheduling work: left out
        started = time.perf_counter()
        try:
            return real_report(*args, **kwargs)
        finally:
            report_s[0] += time.perf_counter() - started

    stamps: list[tuple[float, str]] = []

    def logger(line: str) -> None:
        stamps.append((time.perf_counter(), line))
        log(line)

    phases: dict[str, float] = {}
    kdtune.report.build_report = timed_report
    try:
        spec = spec.model_copy(update={"storage": str(storage)})
        started = time.perf_counter()
        study = Study.create(spec, spec_text, log=logger)
        phases["create (datasets, ray.init, resources)"] = time.perf_counter() - started
        study.run()
        wall = time.perf_counter() - started - report_s[0]
    finally:
        kdtune.report.build_report = real_report
    # one Tuner trains the teachers and runs every search and final run: from the first
    # stage line (the plan of the searches) to the end
    marks = [t for t, line in stamps if line.startswith("stage ")]
    if marks:
        phases["tuner"] = started + wall - marks[0]
    phases["report (excluded)"] = report_s[0]
    return study.run_dir, wall, phases


# ----------------------------------------------------------------------------- bare PyTorch

_WORKER: dict[str, Any] = {}


def _bare_init(spec_json: str, teacher_dir: str, threads: int) -> None:
    # as Ray does for a worker with that many CPUs, before torch is imported: two processes
    # of two OpenMP threads each on two cores ran the trials ~1.5x slower
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    import kdtune.trainables  # noqa: F401 - what a Ray worker imports with the trainable
    from kdtune.spec import StudySpec

    torch.set_num_threads(threads)
    _WORKER.update(spec=StudySpec.model_validate_json(spec_json), teacher_dir=teacher_dir,
                   splits={}, teachers={})


def _bare_trial(job: dict[str, Any]) -> tuple[str, float]:
    """One trial as a hand-written loop would run it: no Ray, no checkpoints; the trial built
    as kdtune's trainable builds it (kdtune.trial.build_trial), the teacher's outputs cached per
    process as the trainable caches them."""
    import torch

    from kdtune import methods
    from kdtune.data import load_splits
    from kdtune.engine import evaluate, train_epochs
    from kdtune.job import TrialJob
    from kdtune.models import build_model
    from kdtune.storage import save_torch
    from kdtune.trainables import _class_and_exit_metrics, use_cached_teacher
    from kdtune.trial import build_trial

    started = time.perf_counter()
    spec = _WORKER["spec"]
    index = job["dataset_index"]
    if index not in _WORKER["splits"]:
        ds = spec.datasets[index]
        kwargs = {} if ds.split == "paper" else {"fractions": tuple(ds.split)}
        _WORKER["splits"][index] = load_splits(ds.name, data_dir=ds.data_dir,
                                               download=ds.download, split_seed=ds.split_seed,
                                               max_train=ds.max_train, **kwargs)
    splits = _WORKER["splits"][index]
    trial_job = TrialJob.from_config({k: v for k, v in job.items() if k not in (
        "trial_id", "epochs", "search")})
    teacher_file = Path(_WORKER["teacher_dir"]) / f"{index}.pt"
    is_teacher = trial_job.role == "teacher"
    _, teacher_arch = methods.trial_models(spec, trial_job.method)
    teacher = None
    if not is_teacher and teacher_arch is not None:
        if index not in _WORKER["teachers"]:
            model = build_model(teacher_arch.arch, splits.channels, splits.num_classes,
                                splits.image_size, teacher_arch.options)
            model.load_state_dict(torch.load(teacher_file, weights_only=True)["model"])
            _WORKER["teachers"][index] = model.eval()
        teacher = _WORKER["teachers"][index]

    def cache(distiller, budget):
        return use_cached_teacher(distiller, splits, (index, spec.distillation.omit_class,
                                                      "cpu"), budget)

    trial = build_trial(spec, trial_job, splits, torch.device("cpu"), teacher, cache)
    for _ in train_epochs(trial.distiller, splits, trial.budget, seed=trial_job.seed,
                          optimizer=trial.optimizer):
        pass
    evaluate(trial.distiller.predictor, splits.test_x, splits.test_y, splits,
             amp=trial.budget.amp)
    if not is_teacher:  # kdtune's trials also report per-class (and per-exit) test accuracy
        _class_and_exit_metrics(spec, trial.distiller, splits, trial.budget)
    if is_teacher:
        save_torch({"model": trial.model.state_dict()}, teacher_file)
    return job["trial_id"], time.perf_counter() - started


def bare_jobs(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's teacher trials, and its student trials (searches, then final runs), each with
    the stage it belongs to, in the order kdtune handed them out."""
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(run_dir / "trials.parquet").to_pylist()
            if r["status"] in ("finished", "stopped")]
    jobs = []
    for r in rows:
        config = json.loads(r["config_json"])
        jobs.append(config | {"trial_id": r["trial_id"], "method": r["method"], "seed": r["seed"],
                              "stage": r["stage"], "role": r["role"],
                              "dataset_index": int(config["dataset_index"]),
                              "epochs": r["epochs_run"],
                              "search": (r["stage"] if r["role"] == "search" else
                                         str(config.get("selected_from", "")).split(":")[0])})
    searches = list(dict.fromkeys(j["stage"] for j in jobs if j["role"] == "search"))
    students = sorted((j for j in jobs if j["role"] != "teacher"),
                      key=lambda j: (j["role"] == "final", searches.index(j["search"])
                                     if j["search"] in searches else 0))
    return [j for j in jobs if j["role"] == "teacher"], students


def run_bare(spec, run_dir: Path, processes: int) -> tuple[float, dict[str, float],
                                                          dict[str, float]]:
    """(wall seconds, seconds per phase, seconds per trial) of the same trials without Ray.

    Scheduled as kdtune schedules them: the teachers first; a search trial once its teacher
    is trained (a scratch search needs none and starts beside the teachers); each search's
    final runs once that search is done; a free process takes the first ready trial.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from kdtune import methods
    from kdtune.preflight import check_datasets

    teachers, students = bare_jobs(run_dir)
    phases: dict[str, float] = {}
    per_trial: dict[str, float] = {}
    taught = {m for m in spec.methods if methods.trial_models(spec, m)[1] is not None}
    with tempfile.TemporaryDirectory() as teacher_dir:
        started = time.perf_counter()
        check_datasets(spec)  # what kdtune's driver does before any trial, for the same cost
        with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"),
                                 initializer=_bare_init,
                                 initargs=(spec.model_dump_json(exclude_unset=True), teacher_dir,
                                           max(1, int(spec.resources.cpus)))) as pool:
            left = {j["search"]: sum(1 for k in students if k["role"] == "search"
                                     and k["search"] == j["search"]) for j in students}
            untrained = {j["dataset_index"] for j in teachers}

            def ready(job: dict[str, Any]) -> bool:
                if job["role"] == "teacher":
                    return True
                if job["method"] in taught and job["dataset_index"] in untrained:
                    return False
                return job["role"] == "search" or not left[job["search"]]

            queue, running = list(teachers) + list(students), {}
            while queue or running:
                while len(running) < processes:
                    job = next((j for j in queue if ready(j)), None)
                    if job is None:
                        break
                    queue.remove(job)
                    running[pool.submit(_bare_trial, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    trial_id, seconds = future.result()
                    per_trial[trial_id] = seconds
                    if job["role"] == "teacher":
                        untrained.discard(job["dataset_index"])
                    elif job["role"] == "search":
                        left[job["search"]] -= 1
            phases["trials"] = time.perf_counter() - started
        wall = time.perf_counter() - started
    return wall, phases, per_trial


# ----------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "studies" / "quickstart.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--no-asha", action="store_true", help="skip the ASHA run")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--verbose", action="store_true", help="print kdtune's progress")
    parser.add_argument("--repeats", type=int, default=2,
                        help="kdtune and bare runs each, in ABBA order (default 2)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from kdtune.early_stopping import agreement
    from kdtune.preflight import resolve_paths
    from kdtune.rundir import read_rows
    from kdtune.spec import load_spec
    from kdtune.stats import t_interval

    log = print if args.verbose else (lambda line: None)
    spec_text = Path(args.spec).read_text()
    spec = resolve_paths(load_spec(args.spec), None, None)
    out: dict[str, Any] = {"benchmark": "ray_overhead", "spec": str(Path(args.spec).name),
                           "machine": _machine(), "note": args.note,
                           "loadavg": {"start": _load()}}
    print(f"load average at start: {out['loadavg']['start']} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="kdtune-bench-") as tmp:
        # 1 and 2, in ABBA order (kdtune, bare, bare, kdtune, ...): the load of a shared
        # machine drifts, and alternating keeps the drift from favouring either side
        import ray

        runs: list[dict[str, Any]] = []
        run_dir = None
        for rep in range(args.repeats):
            for kind in (("kdtune", "bare") if rep % 2 == 0 else ("bare", "kdtune")):
                busy_before = busy_cpu_s()
                if kind == "kdtune":
                    where, wall, phases = run_kdtune(spec, spec_text, Path(tmp) / f"ray{rep}", log)
                    run_dir = run_dir or where
                    cluster_cpus = ray.cluster_resources().get("CPU", 1)
                    in_trial = sum(r["wall_s"] or 0 for r in read_rows(where / "trials.parquet")
                                   if r["status"] == "finished")
                    ray.shutdown()  # every kdtune run pays for starting Ray, as from the CLI
                else:
                    parallel = max(1, int(cluster_cpus // spec.resources.cpus))
                    wall, phases, per_trial = run_bare(spec, run_dir, parallel)
                    in_trial = sum(per_trial.values())
                busy_after = busy_cpu_s()
                busy = None if busy_before is None or busy_after is None else round(
                    busy_after - busy_before, 1)  # the kdtune run's report included
                runs.append({"kind": kind, "wall_s": round(wall, 2), "load": _load(),
                             "busy_cpu_s": busy,
                             "sum_in_trial_s": round(in_trial, 2),
                             "phases_s": {k: round(v, 2) for k, v in phases.items()}})
                print(f"{kind}: {wall:.1f}s (load {runs[-1]['load']})")
        trials = read_rows(run_dir / "trials.parquet")
        epochs = read_rows(run_dir / "epochs.parquet")
        t_ray = sum(r["wall_s"] for r in runs if r["kind"] == "kdtune") / args.repeats
        t_bare = sum(r["wall_s"] for r in runs if r["kind"] == "bare") / args.repeats
        pairs = [round((k["wall_s"] - b["wall_s"]) / k["wall_s"], 4) for k, b in zip(
            [r for r in runs if r["kind"] == "kdtune"],
            [r for r in runs if r["kind"] == "bare"], strict=True)]
        out["overhead"] = {
            "kdtune_wall_s": round(t_ray, 2), "bare_wall_s": round(t_bare, 2),
            "parallel_trials": parallel, "trials": len(trials), "repeats": args.repeats,
            "ray_overhead": round((t_ray - t_bare) / t_ray, 4), "runs": runs,
            # each kdtune run against the bare run beside it (ABBA: run i of each kind): the
            # spread of the pairs says how far one figure can be trusted
            "pairs": pairs,
            "pairs_mean_ci95": [round(x, 4) for x in t_interval(pairs)],
            "target": target_for(args.spec),
        }
        out["loadavg"]["after_overhead"] = _load()

        # 3. ASHA: replayed on these curves, and run for real
        g, rf, max_t = (spec.scheduler.grace_period, spec.scheduler.reduction_factor,
                        spec.training.student_epochs)
        replay = agreement(epochs, trials, g, rf, max_t)
        out["asha_replay"] = {
            "grace_period": g, "reduction_factor": rf, "max_t": max_t,
            "searches": [r.__dict__ for r in replay],
            "top_quarter": sum(r.top_quarter for r in replay),
            "top_quarter_stopped": sum(r.top_quarter_stopped for r in replay),
            "best_lost": sum(not r.best_kept for r in replay),
            "epochs_full": sum(r.epochs_full for r in replay),
            "epochs_asha": sum(r.epochs_asha for r in replay),
        }
        if not args.no_asha:
            asha_spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(
                update={"asha": True})})
            asha_dir, t_asha, _ = run_kdtune(asha_spec, spec_text, Path(tmp) / "asha", log)
            ray.shutdown()
            rows = [r for r in read_rows(asha_dir / "trials.parquet") if r["role"] == "search"]
            run_epochs = sum(r["epochs_run"] for r in rows)
            budget = sum(r["epochs_budget"] for r in rows)
            out["asha_run"] = {
                "wall_s": round(t_asha, 2), "search_trials": len(rows),
                "stopped": sum(r["status"] == "stopped" for r in rows),
                "epochs_run": run_epochs, "epochs_budget": budget,
                "epochs_saved": budget - run_epochs,
                "saved_share": round((budget - run_epochs) / budget, 4),
                "wall_s_without_asha": round(t_ray, 2)}
            out["loadavg"]["after_asha"] = _load()
    # the load after a run is mostly the benchmark's own trials (one per core): only the load
    # before it started says whether something else was running
    out["shared_machine"] = out["loadavg"]["start"][0] > 0.5 * (os.cpu_count() or 1)
    path = write_results(out, Path(args.out))
    print(f"results: {path}")
    print(f"ray_overhead: {out['overhead']['ray_overhead']:.2f}x "
          f"(target {out['overhead']['target']:.2f})")
    return 0


def _interval(mean_low_high: list[float] | None) -> str:
    if not mean_low_high or any(x != x for x in mean_low_high):  # NaN: fewer than two pairs
        return "n/a (one pair)"
    mean, low, high = mean_low_high
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def write_results(out: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"ray_overhead-{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    o, a = out["overhead"], out["asha_replay"]
    lines = [
        f"# ray_overhead {out['machine']['date']}",
        "",
        f"Machine: {out['machine']['host']}, {out['machine']['cpus']} CPUs, "
        f"{out['machine']['platform']}; torch {out['machine']['torch']}, ray "
        f"{out['machine']['ray']}. Load average (1/5/15 min) at start "
        f"{out['loadavg']['start']}; after each run below. Shared with other work: "
        f"{'yes' if out['shared_machine'] else 'no'}. {out['note']}",
        "",
        f"- kdtune on Ray: {o['kdtune_wall_s']}s; bare loop: {o['bare_wall_s']}s (means of "
        f"{o['repeats']} runs each, ABBA order; {o['parallel_trials']} trials at a time, "
        f"{o['trials']} trials)",
        f"- **ray_overhead = {o['ray_overhead']:.3f}** (target {o['target']}; pairs "
        f"{', '.join(f'{p:.3f}' for p in o['pairs'])}; their mean and 95 % t-interval "
        f"{_interval(o.get('pairs_mean_ci95'))})",
    ]
    for r in o["runs"]:
        busy = "" if r.get("busy_cpu_s") is None else f", machine busy {r['busy_cpu_s']} CPU-s"
        lines.append(f"  - {r['kind']}: {r['wall_s']}s, load after {r['load']}, time inside "
                     f"trials {r['sum_in_trial_s']}s{busy}, phases {r['phases_s']}")
    lines += [
        "",
        f"ASHA replayed on the ASHA-off curves (grace {a['grace_period']}, rf "
        f"{a['reduction_factor']}, max {a['max_t']} epochs): stopped "
        f"{a['top_quarter_stopped']} of {a['top_quarter']} top-quarter trials; lost the best "
        f"trial in {a['best_lost']} of {len(a['searches'])} searches; epochs "
        f"{a['epochs_asha']} of {a['epochs_full']}.",
    ]
    for s in a["searches"]:
        lines.append(f"- {s['search']}: {s['trials']} trials, Spearman(grace, final) "
                     f"{s['spearman_at_grace']:.2f}, top quarter stopped "
                     f"{s['top_quarter_stopped']}/{s['top_quarter']}, best {s['best_final']:.1f}"
                     f" vs {s['best_final_under_asha']:.1f} under ASHA")
    if "asha_run" in out:
        r = out["asha_run"]
        lines += ["", f"ASHA run: {r['stopped']} of {r['search_trials']} search trials stopped; "
                      f"{r['epochs_run']} of {r['epochs_budget']} search epochs run, "
                      f"{r['epochs_saved']} saved ({r['saved_share']:.0%}); wall {r['wall_s']}s "
                      f"vs {r['wall_s_without_asha']}s without ASHA."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
