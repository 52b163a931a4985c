"""The commands of ``kdtune``, run on this machine: the argument parser and what each command
does. :mod:`kdtune.cli` is the entry point; it sends ``run``/``resume`` with a ``ray://``
address through :mod:`kdtune.client`, which runs :func:`main` on the cluster."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = """\
examples:
  kdtune validate studies/quickstart.yaml     check a spec and print its trial plan
  kdtune run studies/quickstart.yaml          run it on an embedded Ray (this machine)
  kdtune run spec.yaml --address auto         run it on the Ray cluster this node belongs to
  kdtune run spec.yaml --address ray://head:10001 --storage s3://bucket/kdtune
                                              the same from a laptop, through Ray Client
  kdtune resume runs/quickstart-20261121-101500
  kdtune report runs/quickstart-20261121-101500 --out reports/quickstart.html
  kdtune report runs/quickstart-... runs/knobs-... --out reports/compare.html
  kdtune complexity fashion_mnist --knob label_noise=0.2 --json
  kdtune models --image-size 28 --channels 1  architectures with parameters and FLOPs

A run directory holds spec.yaml, run.json, trials.parquet (one row per trial),
epochs.parquet (one row per trial and epoch), gains.parquet, datasets.parquet, report.html,
the Optuna journal (optuna/) and Ray Tune's experiment folders (tune/).
Teachers are stored once per (dataset, architecture, seed, budget) under STORAGE/teachers/
and reused by every later run with the same storage. STORAGE may be object storage
(s3://bucket/prefix, gs://...): the run's files are then staged locally (KDTUNE_STAGING) and
copied there after every trial, and 'kdtune resume' takes the run's URI.
"""


def parser() -> argparse.ArgumentParser:
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
                     help="where run directories and teachers go: a path, or object storage "
                          "such as s3://bucket/prefix (default: the spec's storage)")
    run.add_argument("--address", metavar="ADDR",
                     help="join an existing Ray cluster ('auto' or HOST:6379 on one of its "
                          "nodes; ray://HOST:10001 from outside it, through Ray Client, where "
                          "kdtune's driver then runs on the cluster) instead of starting an "
                          "embedded Ray; RAY_ADDRESS (set by 'ray job submit') does the same")
    run.add_argument("--data-dir", metavar="DIR",
                     help="local datasets in torchvision's layout, for datasets without data_dir")
    run.add_argument("--download", action="store_true",
                     help="let torchvision download missing datasets (needs internet)")
    run.add_argument("--quiet", action="store_true",
                     help="print only errors and the closing summary (on a terminal, a status "
                          "line under the trial lines shows progress and time left)")

    resume = sub.add_parser("resume", help="continue an interrupted run where it stopped",
                            description="Continue a run directory: finished trials are kept and "
                            "not rerun; searches continue the same Optuna study.")
    resume.add_argument("run_dir", help="a run directory (or its s3:// / gs:// URI) printed by "
                        "'kdtune run'")
    resume.add_argument("--address", metavar="ADDR", help="as for run")
    resume.add_argument("--quiet", action="store_true", help="as for run")

    validate = sub.add_parser("validate", help="check a spec without running it",
                              description="Validate a spec and print the trial plan. Exit 0 if "
                              "it is valid, 2 with a one-line message naming the field if not.")
    validate.add_argument("spec")

    cx = sub.add_parser("complexity", help="measure a dataset's complexity (score in [0, 1])",
                        description="Load a dataset (optionally a knob variant of it) and print "
                        "its descriptors, measured properties and complexity score; the formula "
                        "is in kdtune/complexity.py and the README.")
    cx.add_argument("dataset", help="a dataset name (digits, mnist, fashion_mnist, usps, "
                    "cifar10, cifar100, imagefolder)")
    cx.add_argument("--data-dir", metavar="DIR", help="a local copy in torchvision's layout")
    cx.add_argument("--path", metavar="DIR", help="the folder of an imagefolder dataset")
    cx.add_argument("--download", action="store_true", help="let torchvision download it")
    cx.add_argument("--knob", metavar="KEY=VALUE", action="append", default=[],
                    help="a knob or dataset field, e.g. label_noise=0.2, max_train=300, "
                         "classes=[0,1,2], split_seed=1 (repeatable)")
    cx.add_argument("--json", action="store_true", help="print JSON with a top-level 'score'")

    report = sub.add_parser("report", help="(re)build the HTML report of a run directory",
                            description="Build a self-contained HTML report (opens offline) "
                            "from a run directory's files alone: overview, the core study's "
                            "tables, gain surfaces over (alpha, tau), gain against dataset "
                            "complexity, parameter importance, learning curves and every "
                            "trial. Several run directories are overlaid in one page "
                            "(comparison mode; needs --out).")
    report.add_argument("run_dir", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", metavar="FILE",
                        help="output file (default RUN_DIR/report.html; required for several)")

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


def fail(message: str, code: int = 2) -> int:
    print(f"kdtune: error: {message}", file=sys.stderr)
    return code


def _plan(spec, compute: bool = False) -> str:
    from kdtune.plan import validate

    return str(validate(spec, compute=compute))


def _complexity(args: argparse.Namespace) -> int:
    import json

    import yaml
    from pydantic import ValidationError

    from kdtune.complexity import format_table, measure
    from kdtune.data import DatasetError
    from kdtune.spec import DatasetSpec, _format_validation_error

    fields: dict = {"name": args.dataset, "path": args.path, "data_dir": args.data_dir,
                    "download": args.download}
    for item in args.knob:
        key, sep, value = item.partition("=")
        if not sep:
            return fail(f"--knob {item}: expected KEY=VALUE")
        fields[key.strip()] = yaml.safe_load(value)
    try:
        ds = DatasetSpec.model_validate(fields)
        cx = measure(ds.load(), ds.label)
    except ValidationError as error:
        return fail(_format_validation_error(error))
    except DatasetError as error:
        return fail(str(error))
    print(json.dumps(cx.to_dict(), indent=2) if args.json else format_table(cx))
    return 0


def _report(run_dirs: list[str], out: str | None) -> int:
    from kdtune.report import ReportError, build_report
    from kdtune.storage import StorageError

    try:
        started = time.perf_counter()
        path = build_report(run_dirs, out, log=lambda line: print(line, file=sys.stderr))
    except (ReportError, StorageError) as error:  # StorageError: a damaged run file
        return fail(str(error))
    print(path)  # alone on stdout, for scripts
    print(f"report: {path.stat().st_size / 1e6:.1f} MB, built in "
          f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command on this machine (a ray:// address is refused here:
    :func:`kdtune.cli.main` sends those through Ray Client)."""
    return dispatch(parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run one parsed command on this machine."""
    if args.command == "report":
        return _report(args.run_dir, args.out)
    from kdtune.spec import SpecError, load_spec

    if args.command == "validate":
        try:
            spec = load_spec(args.spec)
        except SpecError as error:
            return fail(str(error))
        print(f"{args.spec}: valid")
        print(_plan(spec, compute=True))
        return 0

    if args.command == "complexity":
        return _complexity(args)

    if args.command == "models":
        from kdtune.models.taps import format_model_table, model_table

        if min(args.image_size, args.channels, args.classes) < 1:
            return fail("--image-size, --channels and --classes must be positive")
        print(format_model_table(model_table(args.image_size, args.channels, args.classes),
                                 args.image_size, args.channels, args.classes))
        return 0

    spec = None
    if args.command == "run":  # a bad spec is refused before torch or Ray are imported
        try:
            spec = load_spec(args.spec)
        except SpecError as error:
            return fail(str(error))

    from kdtune.cluster import ClusterError, cluster_address, is_ray_client
    from kdtune.data import DatasetError
    from kdtune.preflight import resolve_paths
    from kdtune.progress import Progress
    from kdtune.resources import ResourceError
    from kdtune.session import stop_on_sigterm
    from kdtune.storage import StorageError, as_location
    from kdtune.study import Study, StudyError
    from kdtune.tracking import TrackingError

    stop_on_sigterm(fresh=True)
    study = None
    progress = Progress("quiet" if args.quiet else "auto")
    try:
        if is_ray_client(cluster_address(args.address)):
            return fail(f"--address {args.address}: Ray Client runs through the kdtune "
                         "command (kdtune.cli.main), not kdtune.commands")
        if spec is not None:
            spec = resolve_paths(spec, args.storage, args.data_dir, args.download or None)
            progress.log(_plan(spec))
            study = Study.create(spec, Path(args.spec).read_text(encoding="utf-8"),
                                 address=args.address, progress=progress)
        else:
            study = Study.open(as_location(args.run_dir), progress=progress)
        study.run(address=args.address)
        progress.close()
        print(study.location)  # a URI for object storage: what `kdtune resume` takes
        return 0
    except (SpecError, StorageError, DatasetError, ResourceError, ClusterError,
            TrackingError) as error:
        progress.close()
        return fail(str(error))
    except StudyError as error:
        progress.close()
        return fail(str(error), 1)
    except KeyboardInterrupt:
        progress.close()
        if study is None:
            return fail("interrupted before the run started", 130)
        kept = len(study.store.trials)
        return fail(f"interrupted: {kept} finished trial(s) kept in {study.location}; "
                     f"continue with: kdtune resume {study.location}", 130)


