"""``kdtune``: run, resume, validate and report knowledge-distillation studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  kdtune validate studies/quickstart.yaml     check a spec and print its trial plan
  kdtune run studies/quickstart.yaml          run it on an embedded Ray (this machine)
  kdtune run spec.yaml --address auto         run it on the Ray cluster this node belongs to
  kdtune resume runs/quickstart-20261121-101500
  kdtune report runs/quickstart-20261121-101500 --out reports/quickstart.html

A run directory holds spec.yaml, run.json, trials.parquet (one row per trial),
epochs.parquet (one row per trial and epoch), gains.parquet, datasets.parquet, report.html,
the Optuna journal (optuna/) and Ray Tune's experiment folders (tune/).
Teachers are stored once per (dataset, architecture, seed, budget) under STORAGE/teachers/
and reused by every later run with the same storage.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdtune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter studies of knowledge distillation on Ray Tune + Optuna: "
                    "does distillation pay on a dataset, with which alpha, temperature and "
                    "hint layer?", epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a study spec (teachers, Optuna searches, final seeds)",
                         description="Run a study: pretrain (or reuse) each dataset's teacher, "
                         "run one Optuna search per dataset and method on Ray Tune, retrain each "
                         "best config (chosen on validation) over the spec's seeds, and write "
                         "Parquet results and report.html to a new run directory.")
    run.add_argument("spec", help="study spec (YAML), e.g. studies/quickstart.yaml")
    run.add_argument("--storage", metavar="DIR",
                     help="where run directories and teachers go (default: the spec's storage)")
    run.add_argument("--address", metavar="ADDR",
                     help="join an existing Ray cluster ('auto' or HOST:6379) instead of "
                          "starting an embedded Ray; RAY_ADDRESS (set by 'ray job submit') "
                          "does the same")
    run.add_argument("--data-dir", metavar="DIR",
                     help="local datasets in torchvision's layout, for datasets without data_dir")
    run.add_argument("--download", action="store_true",
                     help="let torchvision download missing datasets (needs internet)")

    resume = sub.add_parser("resume", help="continue an interrupted run where it stopped",
                            description="Continue a run directory: finished trials are kept and "
                            "not rerun; searches continue the same Optuna study.")
    resume.add_argument("run_dir", help="a run directory printed by 'kdtune run'")
    resume.add_argument("--address", metavar="ADDR", help="as for run")

    validate = sub.add_parser("validate", help="check a spec without running it",
                              description="Validate a spec and print the trial plan. Exit 0 if "
                              "it is valid, 2 with a one-line message naming the field if not.")
    validate.add_argument("spec")

    report = sub.add_parser("report", help="(re)build the HTML report of a run directory",
                            description="Build a self-contained HTML report (opens offline) "
                            "from a run directory's Parquet files alone.")
    report.add_argument("run_dir")
    report.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/report.html)")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"kdtune: error: {message}", file=sys.stderr)
    return code


def _plan(spec) -> str:
    from kdtune.resources import requested
    from kdtune.search import searched_dimensions

    lines = [f"study {spec.study}: {len(spec.datasets)} dataset(s), methods "
             f"{', '.join(spec.methods)}; teacher {spec.teacher.label} "
             f"({spec.training.teacher_epochs} epochs) -> student {spec.student.label} "
             f"({spec.training.student_epochs} epochs)"]
    n_teachers = len(spec.datasets) if any(m != "scratch" for m in spec.methods) else 0
    n_search = len(spec.datasets) * len(spec.methods) * spec.search.trials
    n_final = len(spec.datasets) * len(spec.methods) * len(spec.final.seeds)
    for method in spec.methods:
        dims = searched_dimensions(spec, method)
        lines.append(f"  {method}: {spec.search.trials} Optuna trials per dataset over "
                     f"{', '.join(dims) if dims else 'no dimension (fixed config, repeated)'}")
    epochs = (n_teachers * spec.training.teacher_epochs
              + (n_search + n_final) * spec.training.student_epochs)
    lines.append(f"  plan: {n_teachers} teacher(s) (reused if already stored), {n_search} search "
                 f"trials, {n_final} final trainings (seeds {spec.final.seeds}); at most "
                 f"{epochs} training epochs; ASHA {'on' if spec.scheduler.asha else 'off'}")
    lines.append(f"  resources per trial: {requested(spec)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kdtune.spec import SpecError, load_spec

    if args.command == "validate":
        try:
            spec = load_spec(args.spec)
        except SpecError as error:
            return _fail(str(error))
        print(f"{args.spec}: valid")
        print(_plan(spec))
        return 0

    if args.command == "report":
        from kdtune.report import ReportError, build_report

        try:
            print(build_report(args.run_dir, args.out))
        except ReportError as error:
            return _fail(str(error))
        return 0

    from kdtune.cluster import ClusterError, cluster_address
    from kdtune.data import DatasetUnavailable
    from kdtune.resources import ResourceError
    from kdtune.study import StorageError, Study, StudyError, resolve_paths, stop_on_sigterm

    stop_on_sigterm(fresh=True)
    study = None
    try:
        cluster_address(args.address)  # a cluster kdtune cannot use fails before any work
        if args.command == "run":
            spec = load_spec(args.spec)
            spec = resolve_paths(spec, args.storage, args.data_dir, args.download or None)
            print(_plan(spec), flush=True)
            study = Study.create(spec, Path(args.spec).read_text(encoding="utf-8"),
                                 address=args.address)
        else:
            study = Study.open(Path(args.run_dir))
        study.run(address=args.address)
        print(study.run_dir)
        return 0
    except (SpecError, StorageError, DatasetUnavailable, ResourceError, ClusterError) as error:
        return _fail(str(error))
    except StudyError as error:
        return _fail(str(error), 1)
    except KeyboardInterrupt:
        if study is None:
            return _fail("interrupted before the run started", 130)
        kept = len(study.store.trials)
        return _fail(f"interrupted: {kept} finished trial(s) kept in {study.run_dir}; "
                     f"continue with: kdtune resume {study.run_dir}", 130)


if __name__ == "__main__":
    sys.exit(main())
