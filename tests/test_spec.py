"""Spec validation: good specs load, bad ones give one line naming the field, exit 2, no files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtune.cli import main
from kdtune.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")))
def test_shipped_studies_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "plan:" in capsys.readouterr().out


def _mutate(spec: dict, dotted: str, value) -> dict:
    node = spec
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return spec


@pytest.mark.parametrize("dotted,value,expected", [
    ("datasets.0.name", "cifar1000", "datasets[0].name: unknown dataset 'cifar1000' (known:"),
    ("methods.1", "magic", "methods[1]: unknown method 'magic'"),
    ("search.alpha", [0.2, 1.5], "search.alpha: alpha must be <= 1.0"),
    ("search.alpha", [-0.1, 0.5], "search.alpha: alpha must be >= 0.0"),
    ("search.tau", [0.0, 4.0], "search.tau: tau must be > 0.0"),
    ("search.hint_layers", ["stage1", "layer9"], "search.hint_layers: teacher small_cnn has no layer 'layer9' (valid: stage1, stage2)"),
    ("search.hint_layers", ["stage2:stage7"], "search.hint_layers: student small_cnn has no layer 'stage7'"),
    ("teacher.arch", "vgg99", "teacher.arch: unknown architecture 'vgg99'"),
    ("training.augmentation", "mixup9", "training.augmentation: unknown augmentation 'mixup9'"),
    ("training.epochs", 3, "training.epochs: unknown field"),
    ("resources.gpus", -1, "resources.gpus: Input should be greater than or equal to 0"),
    ("distillation.tau", 0, "distillation.tau: Input should be greater than 0"),
])
def test_bad_field_is_named(tiny_spec_dict, dotted, value, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(_mutate(tiny_spec_dict, dotted, value))
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("study: x\ndatasets:\n  - name: digits\n   bad: [1, 2\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}:4:")
    assert "YAML syntax error" in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: cannot read spec"):
        load_spec(tmp_path / "nope.yaml")


def test_ikd_without_hint_layer_is_rejected(tiny_spec_dict):
    tiny_spec_dict["search"].pop("hint_layers")
    with pytest.raises(SpecError, match=r"^search.hint_layers: method ikd needs a hint layer"):
        parse_spec(tiny_spec_dict)


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("dotted,value", [("datasets.0.name", "cifar1000"),
                                          ("methods.0", "nope"),
                                          ("search.alpha", [0.0, 2.0]),
                                          ("search.tau", [-1.0, 2.0]),
                                          ("search.hint_layers", ["layer4"])])
def test_cli_bad_spec_exits_2_without_writing(tiny_spec_dict, write_spec, tmp_path, capsys,
                                              command, dotted, value):
    storage = tmp_path / "storage"
    spec_path = write_spec(_mutate(tiny_spec_dict, dotted, value))
    argv = [command, str(spec_path)] + (["--storage", str(storage)] if command == "run" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: ") and "\n" not in err
    assert not storage.exists()


def test_cli_yaml_error_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("study: [unclosed\n")
    assert main(["run", str(path), "--storage", str(tmp_path / "s")]) == 2
    assert "YAML syntax error" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_teacher_id_changes_with_what_changes_the_teacher(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    same = parse_spec(tiny_spec_dict | {"search": {**tiny_spec_dict["search"], "trials": 9}})
    assert spec.teacher_id(spec.datasets[0]) == same.teacher_id(same.datasets[0])
    tiny_spec_dict["training"]["teacher_epochs"] = 7
    other = parse_spec(tiny_spec_dict)
    assert spec.teacher_id(spec.datasets[0]) != other.teacher_id(other.datasets[0])


def test_teacher_ids_are_pinned_literally(tiny_spec_dict):
    """A change to what a teacher id hashes orphans every teacher users have stored: these are
    literal ids of 2026-12-02 (the tiny spec's teacher and pretrained student, the quickstart's
    three datasets, the paper study's ResNets, a resplit seed, a partly augmented batch, Adam
    with another teacher seed), computed by the code before the recipe moved to
    :func:`kdtune.teacher_recipe.recipe`, not recomputed from it. ``training.amp`` stays out of
    the id (the reason: a comment in ``StudySpec.teacher_id``)."""
    tiny = parse_spec(tiny_spec_dict)
    assert tiny.teacher_id(tiny.datasets[0]) == "digits-small_cnn-s0-9c98e5c5be40"
    assert tiny.teacher_id(tiny.datasets[0], "student") == "digits-small_cnn-s0-8d7d20856156"
    studies = Path(__file__).resolve().parents[1] / "studies"
    quick = load_spec(studies / "quickstart.yaml")
    assert [quick.teacher_id(d) for d in quick.datasets] == [
        "digits-small_cnn-s0-7a6e66bd0ac2", "digits-small_cnn-s0-43d87d131908",
        "digits-small_cnn-s0-e898384abb6b"]  # clean, pixel_noise, label_noise
    paper = load_spec(studies / "belinga2024.yaml")  # ResNet-50 teacher, ResNet-18 student
    assert [paper.teacher_id(d) for d in paper.datasets[:2]] == [
        "mnist-resnet50-s0-792abce73b77", "fashion_mnist-resnet50-s0-af5a2c9e50e3"]
    assert paper.teacher_id(paper.datasets[0], "student") == "mnist-resnet18-s0-248784e24269"
    # a final.resplit seed's split has a teacher of its own
    assert tiny.teacher_id(tiny.datasets[0].resplit(1)) == "digits-small_cnn-s0-a18f796fb3ac"
    training = tiny_spec_dict["training"]
    for change, pinned in (
            ({"aug_share": 0.5, "augmentation": "paper"}, "digits-small_cnn-s0-39f54bcb0fca"),
            ({"amp": False}, "digits-small_cnn-s0-9c98e5c5be40"),  # the same as with amp on
            ({"optimizer": "adam", "lr": 0.001, "seed": 3}, "digits-small_cnn-s3-cb63c10d327c")):
        seed = change.pop("seed", 0)
        other = parse_spec(tiny_spec_dict | {"training": training | change, "teacher_seed": seed})
        assert other.teacher_id(other.datasets[0]) == pinned
