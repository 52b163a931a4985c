"""The package's structure holds: no import cycle anywhere in kdtune/, the science layer never
imports Ray or Optuna, and a spec is checked without torch or Ray (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdtune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (function-level imports count), except
    those under ``if TYPE_CHECKING:``, which never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports that module (and, implicitly, its
            # package, as every submodule does: not an edge of its own)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = {resolve(n) for n in _imports(path) if n.startswith("kdtune")}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def test_no_import_cycle_in_the_package():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 40  # the walk saw the package


SCIENCE = ("kdtune.spec", "kdtune.hparams", "kdtune.sources", "kdtune.data", "kdtune.knobs",
           "kdtune.complexity", "kdtune.models", "kdtune.augment", "kdtune.methods",
           "kdtune.engine", "kdtune.trial", "kdtune.distill", "kdtune.losses",
           "kdtune.teacher_outputs", "kdtune.job", "kdtune.devices")


def test_the_science_layer_imports_neither_ray_nor_optuna():
    offenders = []
    for name, path in _modules().items():
        if name.startswith(SCIENCE):
            offenders += [f"{name} imports {n}" for n in _imports(path)
                          if n.split(".")[0] in ("ray", "optuna")]
    assert not offenders, offenders


def test_a_spec_is_checked_without_torch_or_ray(tmp_path, tiny_spec_dict):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec_dict | {"datasets": [{"name": "digitz"}]}))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_spec_dict))
    probe = ("import sys\nfrom kdtune.cli import main\n"
             "rc = main({cmd!r})\n"
             "print(rc, 'torch' in sys.modules, 'ray' in sys.modules, 'numpy' in sys.modules)")
    for argv, expected in ((["validate", str(bad)], "2 False False False"),
                           (["run", str(bad)], "2 False False False")):
        result = subprocess.run([sys.executable, "-c", probe.replace("{cmd!r}", repr(argv))],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.stdout.strip().splitlines()[-1] == expected, result.stdout + result.stderr
        assert "unknown dataset 'digitz'" in result.stderr
    # a good spec parses without them too (its compute estimate may then import torch)
    result = subprocess.run([sys.executable, "-c", "import sys\nfrom kdtune.spec import "
                             f"load_spec\nload_spec({str(good)!r})\n"
                             "print('torch' in sys.modules, 'ray' in sys.modules)"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "False False", result.stdout + result.stderr


def test_a_trial_worker_does_not_import_torchvision_models():
    # every trial worker imports kdtune.trainables when it starts; torchvision.models would cost
    # each ~1.1 s of CPU (measured 2026-12-03) though only a trial tapping features needs it
    result = subprocess.run([sys.executable, "-c", "import sys, kdtune.trainables\n"
                             "print('torchvision.models' in sys.modules)"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr
