"""The precision-targeted final evaluation: which seeds each comparison runs, round by round,
from the rows alone (so a resumed run carries on mid-round)."""

from __future__ import annotations

import numpy as np
import pytest

from kdtune.finals import comparison, required_seeds
from kdtune.spec import FinalSpec, SpecError, parse_spec
from kdtune.stats import halfwidth


def _rows(method, accs, dataset="d", status="finished"):
    return [{"role": "final", "dataset": dataset, "method": method, "seed": s,
             "status": status, "test_acc": a} for s, a in accs.items()]


def test_without_a_target_the_first_round_is_all():
    final = FinalSpec(seeds=[0, 1, 2])
    rows = _rows("rkd", {0: 80.0, 1: 95.0, 2: 70.0}) + _rows("scratch", {0: 79.0, 1: 60.0,
                                                                         2: 90.0})
    p = comparison(final, "d", "rkd", "scratch", rows)
    assert p.seeds == (0, 1, 2) and p.complete and p.reached_target is None


def test_a_wide_comparison_asks_for_more_seeds_and_its_baseline_runs_them_too(tiny_spec_dict):
    final = FinalSpec(seeds=[0, 1, 2], target_halfwidth=3.0, max_seeds=10)
    round1 = _rows("rkd", {0: 80.0, 1: 95.0, 2: 70.0}) + _rows("scratch", {0: 79.0, 1: 60.0,
                                                                           2: 90.0})
    p = comparison(final, "d", "rkd", "scratch", round1)
    assert p.seeds[:3] == (0, 1, 2) and len(p.seeds) > 3 and not p.complete
    assert p.seeds[3:] == tuple(range(3, len(p.seeds)))  # the next seeds, in order
    tiny_spec_dict["final"] = {"seeds": [0, 1, 2], "target_halfwidth": 3.0, "max_seeds": 10}
    tiny_spec_dict["methods"] = ["scratch", "rkd", "ikd"]
    spec = parse_spec(tiny_spec_dict)
    label = spec.datasets[0].label
    rows = [dict(r, dataset=label) for r in round1]
    needed = required_seeds(spec, rows)
    assert needed[(label, "rkd")] == list(p.seeds)
    assert needed[(label, "scratch")] == list(p.seeds)  # the baseline pairs every seed
    assert needed[(label, "ikd")] == [0, 1, 2]  # its first round is not done yet


def test_a_narrow_comparison_stops_at_min_seeds_and_says_it_reached_the_target():
    final = FinalSpec(seeds=[0, 1, 2], target_halfwidth=3.0, max_seeds=10)
    rows = (_rows("rkd", {s: 80.0 + 0.1 * s for s in range(5)})
            + _rows("scratch", {s: 79.0 + 0.05 * s for s in range(5)}))
    p = comparison(final, "d", "rkd", "scratch", rows)
    assert p.seeds == (0, 1, 2, 3, 4) and p.complete and p.reached_target
    assert p.halfwidth <= 3.0 and p.n_paired == 5


def test_max_seeds_ends_a_comparison_that_never_narrows():
    final = FinalSpec(seeds=[0, 1, 2], target_halfwidth=0.5, max_seeds=6)
    rng = np.random.default_rng(0)
    rows = (_rows("rkd", {s: float(rng.normal(80, 10)) for s in range(6)})
            + _rows("scratch", {s: float(rng.normal(80, 10)) for s in range(6)}))
    p = comparison(final, "d", "rkd", "scratch", rows)
    assert p.seeds == tuple(range(6)) and p.complete and p.reached_target is False


def test_the_rule_never_looks_at_the_sign_of_the_gain():
    final = FinalSpec(seeds=[0, 1, 2], target_halfwidth=2.0, max_seeds=12)
    base = {s: 80.0 for s in range(3)}
    up = {0: 84.0, 1: 80.5, 2: 86.0}
    down = {s: 160.0 - v for s, v in up.items()}  # the same spread, the gain mirrored
    a = comparison(final, "d", "m", "b", _rows("m", up) + _rows("b", base))
    b = comparison(final, "d", "m", "b", _rows("m", down) + _rows("b", base))
    assert a.seeds == b.seeds and a.halfwidth == pytest.approx(halfwidth([4.0, 0.5, 6.0]))


def test_a_failed_seed_ends_its_round_without_a_pair():
    final = FinalSpec(seeds=[0, 1, 2], target_halfwidth=3.0, max_seeds=5)
    rows = (_rows("rkd", {0: 80.0, 2: 81.0}) + _rows("rkd", {1: None}, status="failed")
            + _rows("scratch", {0: 79.0, 1: 70.0, 2: 80.0}))
    p = comparison(final, "d", "rkd", "scratch", rows)
    assert p.n_paired == 2 and len(p.seeds) > 3  # the round is over: more seeds, two pairs


@pytest.mark.parametrize("final,message", [
    ({"target_halfwidth": 3.0}, "final.max_seeds: final.target_halfwidth needs final.max_seeds"),
    ({"equivalence_margin": 0.0}, "final.equivalence_margin: Input should be greater than 0"),
    ({"equivalence_margin": -1.0}, "final.equivalence_margin: Input should be greater than 0"),
    ({"target_halfwidth": 0}, "final.target_halfwidth: Input should be greater than 0"),
    ({"seeds": [0, 1, 2], "target_halfwidth": 3, "max_seeds": 2},
     "final.max_seeds: 2 is fewer than the 3 seeds of the first round"),
    ({"seeds": [0, 0]}, "final.seeds: a seed is listed twice"),
])
def test_bad_final_sections_are_one_line_naming_the_field(tiny_spec_dict, final, message):
    tiny_spec_dict["final"] = final
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_spec_dict)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.slow
def test_rounds_and_resplit_through_ray_tune_and_a_resume_mid_round(tiny_spec_dict, write_spec,
                                                                   tmp_path, embedded_ray):
    import shutil

    import pyarrow.parquet as pq

    from kdtune.cli import main
    from kdtune.rundir import TRIAL_SCHEMA, write_table_atomic

    tiny_spec_dict.update(methods=["scratch", "rkd"], final={
        "seeds": [0, 1, 2], "target_halfwidth": 0.5, "max_seeds": 6, "min_seeds": 3,
        "resplit": True})
    tiny_spec_dict["search"] |= {"trials": 1, "hint_layers": None}
    storage = tmp_path / "storage"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 0
    (run_dir,) = [p for p in storage.iterdir() if p.name != "teachers"]
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    finals = {m: sorted(r["seed"] for r in rows if r["role"] == "final"
                        and r["method"] == m) for m in ("scratch", "rkd")}
    # a 0.5-point target on 90 test images is out of reach: both run to max_seeds
    assert finals == {"scratch": list(range(6)), "rkd": list(range(6))}
    split_teachers = [r for r in rows if r["stage"] == "teachers-resplit"]
    assert sorted(r["split_seed"] for r in split_teachers) == sorted(
        {r["split_seed"] for r in rows if r["role"] == "final"})  # one teacher a split
    rkd = [r for r in rows if r["role"] == "final" and r["method"] == "rkd"]
    assert len({r["teacher_id"] for r in rkd}) == 6 and len({r["split_seed"]
                                                            for r in rkd}) == 6
    gains = {g["method"]: g for g in pq.read_table(run_dir / "gains.parquet").to_pylist()}
    assert gains["rkd"]["n_seeds"] == 6 and gains["rkd"]["reached_target"] is False
    assert gains["rkd"]["verdict"] in ("pays", "hurts", "equivalent", "inconclusive")
    # a copy of the run stopped mid-round (after round one and two more seeds of scratch)
    copy = storage / "copy"
    shutil.copytree(run_dir, copy)
    kept = [r for r in rows if r["role"] != "final" or r["seed"] < 3
            or (r["method"] == "scratch" and r["seed"] < 5)]
    # copytree made the parts link a plain folder; a single file, as a user's pandas
    # would write it, takes its place (the store makes it the first part)
    shutil.rmtree(copy / "trials.parquet")
    write_table_atomic(kept, TRIAL_SCHEMA, copy / "trials.parquet")
    (copy / "gains.parquet").unlink()
    assert main(["resume", str(copy)]) == 0
    resumed = pq.read_table(copy / "trials.parquet").to_pylist()
    again = {m: sorted(r["seed"] for r in resumed if r["role"] == "final"
                       and r["method"] == m) for m in ("scratch", "rkd")}
    assert again == finals  # the same seeds, none run twice
    kept_ids = {r["trial_id"] for r in kept}
    assert kept_ids <= {r["trial_id"] for r in resumed}
