"""What a study stores about its datasets, per-role resources, and the validate compute estimate."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdtune.cli import main
from kdtune.estimate import dataset_shape
from kdtune.spec import DatasetSpec, parse_spec
from kdtune.study import Study, resolve_paths, stage_name

ROOT = Path(__file__).resolve().parents[1]


def test_study_stores_complexity_and_knobs_per_dataset(tiny_spec_dict, tmp_path):
    tiny_spec_dict["datasets"] = [{"name": "digits", "label_noise": 0.0},
                                  {"name": "digits", "label_noise": 0.3},
                                  {"name": "digits", "max_train": 300, "resolution": 4}]
    spec = resolve_paths(parse_spec(tiny_spec_dict), str(tmp_path / "s"), None)
    study = Study.create(spec, "spec text", log=lambda _: None)  # no Ray: only the checks
    rows = pq.read_table(study.run_dir / "datasets.parquet").to_pylist()
    assert [r["dataset"] for r in rows] == [ds.label for ds in spec.datasets]
    assert [(r["knob"], r["knob_value"]) for r in rows] == [
        ("label_noise", 0.0), ("label_noise", 0.3), ("max_train+resolution", None)]
    assert all(0.0 <= r["complexity_score"] <= 1.0 for r in rows)
    assert rows[1]["complexity_score"] > rows[0]["complexity_score"]
    assert rows[2]["n_train"] == 300 and rows[2]["image_size"] == 4
    assert rows[1]["knn_error"] > rows[0]["knn_error"]


def test_stage_names_are_path_safe():
    assert stage_name("search", "digits[n=300]", "rkd") == "search-digits_n300-rkd"
    name = stage_name("search", "imagefolder:a b<c>[n=3,label_noise=0.1]", "ikd")
    assert name == "search-imagefolder_a_b_c__n3_label_noise0.1-ikd"


def test_resources_per_role(tiny_spec_dict):
    tiny_spec_dict["resources"] = {"cpus": 2, "gpus": 0.5, "teacher": {"gpus": 1},
                                   "student": {"gpus": 0.25}}
    resources = parse_spec(tiny_spec_dict).resources
    assert resources.for_role("teacher") == (2, 1)
    assert resources.for_role("search") == (2, 0.25)
    assert parse_spec(tiny_spec_dict | {"resources": {"gpus": 0.5}}).resources.for_role(
        "teacher") == (1, 0.5)


@pytest.mark.parametrize("fields,expected", [
    ({"name": "mnist"}, (1, 28, 10, 60_000, 7_000, 3_000)),
    ({"name": "usps"}, (1, 16, 10, 7_291, 1_404, 603)),
    ({"name": "cifar100", "max_train": 1000, "channels": 1}, (1, 32, 100, 1000, 7_000, 3_000)),
    ({"name": "cifar10", "classes": 2, "resolution": 16}, (3, 16, 2, 10_000, 1_400, 600)),
])
def test_dataset_shapes_without_loading(fields, expected):
    shape = dataset_shape(DatasetSpec(**fields))
    assert (shape.channels, shape.side, shape.classes, shape.n_train, shape.n_val,
            shape.n_test) == expected


def test_validate_prints_the_plan_and_a_compute_estimate(capsys):
    assert main(["validate", str(ROOT / "studies" / "belinga2024.yaml")]) == 0
    out = capsys.readouterr().out
    assert "plan:" in out and "compute:" in out and "GPU-hours" in out
