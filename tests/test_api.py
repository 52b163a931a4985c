"""The Python API (kdtune.load_spec / validate / run / resume / load, kdtune.Run): a tiny study
run from a dict and read back as DataFrames, the same one-line errors as the command line, and
the README's query examples (pandas, DuckDB) run against a real run directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kdtune
from kdtune.spec import SpecError
from kdtune.storage import StorageError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_kdtune_is_light():
    """The API is imported on first use: ``import kdtune`` (and so the command) loads neither
    torch, Ray, pyarrow nor pandas."""
    code = ("import sys, kdtune; print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(kdtune.run) and kdtune.Run.__name__ == "Run"
    with pytest.raises(AttributeError):
        kdtune.no_such_thing  # noqa: B018


def test_load_spec_takes_a_dict_a_file_or_a_spec(tiny_spec_dict, write_spec):
    from_dict = kdtune.load_spec(tiny_spec_dict)
    from_file = kdtune.load_spec(write_spec(tiny_spec_dict))
    assert from_dict == from_file and kdtune.load_spec(from_dict) is from_dict


def test_a_bad_spec_raises_the_command_lines_one_line_error(tiny_spec_dict, tmp_path):
    tiny_spec_dict["datasets"][0]["name"] = "digitz"
    with pytest.raises(SpecError) as error:
        kdtune.load_spec(tiny_spec_dict)
    assert "digitz" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SpecError, match="cannot read spec"):
        kdtune.load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="expected a file path, a dict"):
        kdtune.load_spec(42)


def test_validate_counts_what_the_spec_will_run(tiny_spec_dict):
    tiny_spec_dict["final"] = {"seeds": [0, 1, 2, 3, 4], "target_halfwidth": 1.0,
                               "max_seeds": 8}
    plan = kdtune.validate(tiny_spec_dict, compute=False)
    # 1 dataset: 1 teacher; scratch searches lr only if a range is given (none: 1 trial),
    # rkd and ikd 2 trials each; 3 methods x 5 seeds, at most 8 seeds each
    assert (plan.teachers, plan.search_trials) == (1, 1 + 2 + 2)
    assert (plan.final_trainings, plan.max_final_trainings) == (15, 24)
    assert plan.max_epochs == 1 * 3 + (5 + 24) * 2
    assert plan.methods == ("scratch", "rkd", "ikd")
    text = str(plan)
    assert text.splitlines()[0].startswith("study tiny: 1 dataset(s)")
    assert "until the gain's 95% interval is +-1.0 points (at most 8 seeds)" in text


def test_load_of_a_folder_that_is_no_run_says_so(tmp_path):
    with pytest.raises(StorageError, match="not a kdtune run directory"):
        kdtune.load(tmp_path)


def _readme_blocks(language: str, containing: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if containing in b]


@pytest.mark.slow
def test_a_tiny_study_from_a_dict_runs_and_reads_back(tiny_spec_dict, tmp_path):
    import pandas as pd

    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0, 1]})
    lines: list[str] = []
    run = kdtune.run(tiny_spec_dict, storage=str(tmp_path / "runs"), progress=lines.append)
    assert run.status == "finished" and run.path.parent == tmp_path / "runs"
    assert any(line.startswith("study tiny:") for line in lines)  # the plan, first
    assert any("[search-digits_n300-rkd]" in line for line in lines)

    trials, epochs, gains = run.trials, run.epochs, run.gains
    assert isinstance(trials, pd.DataFrame)
    # 1 teacher, 1 scratch + 2 rkd search trials, 2 methods x 2 seeds
    assert len(trials) == 1 + 1 + 2 + 4 and trials.trial_id.is_unique
    assert set(trials.status) == {"finished"}
    assert set(epochs.trial_id) == set(trials.trial_id)
    assert set(gains.method) == {"scratch", "rkd"}  # the baseline has its row too
    (gain,) = gains[gains.method == "rkd"].itertuples()
    assert gain.n_seeds == 2 and gain.verdict in ("pays", "hurts", "equivalent", "inconclusive")
    assert len(run.datasets) == 1 and run.spec.study == "tiny"

    # the spec the run kept is the dict, as YAML
    again = kdtune.load(run.path)
    assert again.spec == kdtune.load_spec(tiny_spec_dict)
    pd.testing.assert_frame_equal(again.trials, trials)
    report = again.report(tmp_path / "copy.html")
    assert report == tmp_path / "copy.html" and report.stat().st_size > 100_000

    # resumed: nothing left to run, the same trials
    resumed = kdtune.resume(run.path, progress=lines.append)
    assert any("nothing left to run" in line for line in lines)
    assert sorted(resumed.trials.trial_id) == sorted(trials.trial_id)

    # the README's query examples, on this run (pandas and DuckDB)
    blocks = _readme_blocks("python", "read_parquet")
    assert any("duckdb" in b for b in blocks) and any("pd.read_parquet" in b for b in blocks)
    for block in blocks:
        code = block.replace("runs/quickstart-...", str(run.path))
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
        assert scope.get("answer") is not None, block
        assert len(scope["answer"]) > 0
