"""``kdtune``: run, resume, validate and report knowledge-distillation studies."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  kdtune validate studies/quickstart.yaml     check a spec and print its trial plan
  kdtune run studies/quickstart.yaml          run it on an embedded Ray (this machine)
  kdtune run spec.yaml --address auto         run it on the Ray cluster this node belongs to
  kdtune resume runs/quickstart-20261121-101500
  kdtune report runs/quickstart-20261121-101500 --out reports/quickstart.html
  kdtune models --image-size 28 --channels 1  architectures with parameters and FLOPs

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
                     help="join an existing Ray cluster ('auto' or ray://HOST:10001) instead "
                          "of starting an embedded Ray")
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

    models = sub.add_parser("models", help="list the teacher/student architectures",
                            description="List every architecture a spec can name, with its "
                            "parameter count, forward FLOPs per image and hint-layer taps, at a "
                            "given input size (default options).")
    models.add_argument("--image-size", type=int, default=32, metavar="N",
                        help="input height and width in pixels (default 32)")
    models.add_argument("--channels", type=int, default=3, metavar="C",
                        help="input channels (default 3)")
    models.add_argument("--classes", type=int, default=10, metavar="K",
                        help="number of classes (default 10)")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"kdtune: error: {message}", file=sys.stderr)
    return code


def _plan(spec) -> str:
    from kdtune.methods import teacher_sources
    from kdtune.search import searched_dimensions

    lines = [f"study {spec.study}: {len(spec.datasets)} dataset(s), methods "
             f"{', '.join(spec.methods)}; teacher {spec.teacher.label} "
             f"({spec.training.teacher_epochs} epochs) -> student {spec.student.label} "
             f"({spec.training.student_epochs} epochs)"]
    # the spec's teacher, plus a pretrained student-architecture model for self/reversed
    n_teachers = len(spec.datasets) * len(teacher_sources(spec))
    n_search = len(spec.datasets) * len(spec.methods) * spec.search.trials
    n_final = len(spec.datasets) * len(spec.methods) * len(spec.final.seeds)
    for method in spec.methods:
        dims = searched_dimensions(spec, method)
        lines.append(f"  {method}: {spec.search.trials} Optuna trials per dataset over "
                     f"{', '.join(dims) if dims else 'no dimension (fixed config, repeated)'}")
    if spec.distillation.omit_class is not None:
        lines.append(f"  omit-one-class: students train and validate without class "
                     f"{spec.distillation.omit_class}; test accuracy on it is reported")
    epochs = (n_teachers * spec.training.teacher_epochs
              + (n_search + n_final) * spec.training.student_epochs)
    lines.append(f"  plan: {n_teachers} teacher(s) (reused if already stored), {n_search} search "
                 f"trials, {n_final} final trainings (seeds {spec.final.seeds}); at most "
                 f"{epochs} training epochs; ASHA {'on' if spec.scheduler.asha else 'off'}")
    return "\n".join(lines)


def _interrupt_on_sigterm() -> None:
    def handler(signum, frame):  # noqa: ARG001 - signal API
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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

    if args.command == "models":
        from kdtune.models import format_model_table, model_table

        if min(args.image_size, args.channels, args.classes) < 1:
            return _fail("--image-size, --channels and --classes must be positive")
        print(format_model_table(model_table(args.image_size, args.channels, args.classes),
                                 args.image_size, args.channels, args.classes))
        return 0

    if args.command == "report":
        from kdtune.report import ReportError, build_report

        try:
            print(build_report(args.run_dir, args.out))
        except ReportError as error:
            return _fail(str(error))
        return 0

    from kdtune.data import DatasetUnavailable
    from kdtune.study import StorageError, Study, resolve_paths

    _interrupt_on_sigterm()
    study = None
    try:
        if args.command == "run":
            spec = load_spec(args.spec)
            spec = resolve_paths(spec, args.storage, args.data_dir, args.download or None)
            print(_plan(spec), flush=True)
            study = Study.create(spec, Path(args.spec).read_text(encoding="utf-8"))
        else:
            study = Study.open(Path(args.run_dir))
        study.run(address=args.address)
        print(study.run_dir)
        return 0
    except (SpecError, StorageError, DatasetUnavailable) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        if study is None:
            return _fail("interrupted before the run started", 130)
        kept = len(study.store.trials)
        return _fail(f"interrupted: {kept} finished trial(s) kept in {study.run_dir}; "
                     f"continue with: kdtune resume {study.run_dir}", 130)


if __name__ == "__main__":
    sys.exit(main())
