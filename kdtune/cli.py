"""``kdtune``: run, resume, validate and report knowledge-distillation studies.

The entry point. ``run`` and ``resume`` with ``--address ray://HOST:10001`` (or such a
``RAY_ADDRESS``) go through Ray Client (:mod:`kdtune.client`), which runs kdtune's driver on the
cluster; every other command runs here (:mod:`kdtune.commands`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kdtune.commands import dispatch, fail, parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # a string test, not kdtune.cluster: a bad spec is refused before anything heavy loads
    address = (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS") or "")
    if args.command in ("run", "resume") and address.startswith("ray://"):
        from kdtune.cluster import ClusterError, cluster_address

        try:
            return _through_ray_client(args, cluster_address(address))
        except ClusterError as error:
            return fail(str(error))
        except KeyboardInterrupt:
            return fail("interrupted before the run started", 130)
    return dispatch(args)


def _through_ray_client(args: argparse.Namespace, address: str) -> int:
    """``run``/``resume`` with ``--address ray://...``: the spec is checked here, then the
    command runs on the cluster (see :func:`kdtune.client.run_through_ray_client`)."""
    from kdtune.client import check_client_paths, run_through_ray_client
    from kdtune.spec import SpecError, load_spec

    if args.command == "resume":
        check_client_paths(address, {"run directory": args.run_dir})
        return run_through_ray_client(address, ["resume", args.run_dir])
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        return fail(str(error))
    paths = {"--storage" if args.storage else "storage": args.storage or spec.storage,
             "--data-dir": args.data_dir}
    for i, ds in enumerate(spec.datasets):
        paths |= {f"datasets[{i}].data_dir": ds.data_dir, f"datasets[{i}].path": ds.path}
    check_client_paths(address, paths)
    argv = ["run", args.spec]
    for flag, value in (("--storage", args.storage), ("--data-dir", args.data_dir)):
        argv += [flag, value] if value else []
    argv += ["--download"] if args.download else []
    spec_path = Path(args.spec)
    return run_through_ray_client(address, argv,
                                  (spec_path.name, spec_path.read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main())
