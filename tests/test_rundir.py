"""The run directory's row store: one part per finished trial, one dataset to every reader,
compaction that never shows a row twice, old single-file runs carried on."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from kdtune.rundir import (
    EPOCH_SCHEMA,
    EPOCHS_FILE,
    TRIAL_SCHEMA,
    TRIALS_FILE,
    PartsTable,
    ResultsStore,
    RunFileError,
    compact_run,
    read_rows,
    write_table_atomic,
)


def _trial(i: int, **kw) -> dict:
    return {"trial_id": f"t{i}", "stage": "s", "method": "rkd", "role": "search", "seed": 0,
            "status": "finished", "val_acc": float(i), **kw}


def test_each_finished_trial_adds_one_part_and_readers_see_one_dataset(tmp_path):
    written = []
    store = ResultsStore(tmp_path, after_flush=written.extend)
    for i in range(3):
        store.add_epoch({"trial_id": f"t{i}", "epoch": 1, "val_acc": 1.0})
        store.finish_trial(_trial(i))
    link = tmp_path / TRIALS_FILE
    assert link.is_symlink() and len(PartsTable(link, TRIAL_SCHEMA).parts()) == 3
    assert len(written) == 6 and all(p.name.startswith("part-") for p in written)
    # pandas (and pyarrow, polars, DuckDB) read the link as one table
    assert list(pd.read_parquet(link)["trial_id"]) == ["t0", "t1", "t2"]
    assert pq.read_table(tmp_path / EPOCHS_FILE).num_rows == 3
    # a reopened store (a resumed run) has every row and writes on after the last part
    again = ResultsStore(tmp_path)
    assert [r["trial_id"] for r in again.trials] == ["t0", "t1", "t2"]
    again.finish_trial(_trial(3))
    assert [p.name for p in PartsTable(link, TRIAL_SCHEMA).parts()][-1] == "part-00000003.parquet"


def test_a_trial_recorded_twice_is_one_row_to_kdtune_and_after_compaction(tmp_path):
    store = ResultsStore(tmp_path)
    store.finish_trial(_trial(0, val_acc=1.0))
    store.finish_trial(_trial(0, val_acc=2.0))
    assert [r["val_acc"] for r in store.trials] == [2.0]
    assert [r["val_acc"] for r in read_rows(tmp_path / TRIALS_FILE, ("trial_id",))] == [2.0]
    store.compact()
    assert pq.read_table(tmp_path / TRIALS_FILE).to_pylist()[0]["val_acc"] == 2.0
    assert pq.read_table(tmp_path / TRIALS_FILE).num_rows == 1


def test_compaction_swaps_the_whole_folder_at_once(tmp_path):
    store = ResultsStore(tmp_path)
    for i in range(5):
        store.finish_trial(_trial(i))
    link = tmp_path / TRIALS_FILE
    before = link.resolve()
    store.compact()
    after = link.resolve()
    assert before != after and not before.exists()
    # one part, named after every earlier one (a URI copy tells it from the old parts)
    assert [p.name for p in PartsTable(link, TRIAL_SCHEMA).parts()] == ["part-00000005.parquet"]
    assert list(pd.read_parquet(link)["trial_id"]) == [f"t{i}" for i in range(5)]
    store.finish_trial(_trial(5))  # the run goes on after a compaction (kdtune report)
    assert len(read_rows(link)) == 6


def test_a_run_written_as_one_file_carries_on_as_parts(tmp_path):
    path = tmp_path / TRIALS_FILE
    write_table_atomic([_trial(0), _trial(1)], TRIAL_SCHEMA, path)
    assert path.is_file()
    compact_run(tmp_path)  # kdtune report on an older run
    store = ResultsStore(tmp_path)
    store.finish_trial(_trial(2))
    assert path.is_symlink()
    assert [r["trial_id"] for r in read_rows(path)] == ["t0", "t1", "t2"]


def test_a_part_half_written_at_a_kill_is_never_read(tmp_path):
    store = ResultsStore(tmp_path)
    store.finish_trial(_trial(0))
    folder = (tmp_path / TRIALS_FILE).resolve()
    (folder / ".part-00000001.parquet.abc.tmp").write_bytes(b"PAR1 half a file")
    assert [r["trial_id"] for r in read_rows(tmp_path / TRIALS_FILE)] == ["t0"]
    assert len(pd.read_parquet(tmp_path / TRIALS_FILE)) == 1


def test_a_damaged_part_says_what_moving_it_away_costs(tmp_path):
    trials = PartsTable(tmp_path / TRIALS_FILE, TRIAL_SCHEMA)
    first = trials.append([_trial(0)])
    trials.append([_trial(1)])
    first.write_bytes(b"not parquet")
    with pytest.raises(RunFileError) as one_of_two:
        read_rows(tmp_path / TRIALS_FILE)
    assert str(one_of_two.value).startswith(f"{first}: damaged, cannot read it (")
    assert str(one_of_two.value).endswith("move it away: kdtune resume then runs the trials it "
                                          "held again (a search trial as a new Optuna trial)")
    first.unlink()
    compacted = trials.compact() or trials.parts()[0]  # one part left: nothing to merge
    compacted.write_bytes(b"")
    with pytest.raises(RunFileError) as the_only:
        read_rows(tmp_path / TRIALS_FILE)
    assert str(the_only.value).endswith("kdtune resume then runs every trial again (it is the "
                                        "only part)")
    epochs = PartsTable(tmp_path / EPOCHS_FILE, EPOCH_SCHEMA)
    epochs.append([{"trial_id": "t0", "epoch": 1}])
    epochs.append([{"trial_id": "t1", "epoch": 1}])
    epochs.parts()[0].write_bytes(b"x")
    with pytest.raises(RunFileError) as curves:
        read_rows(tmp_path / EPOCHS_FILE)
    assert str(curves.value).endswith("(the report then shows no learning curves for the trials "
                                      "it held)")
