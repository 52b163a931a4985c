"""The HTML report, built from small synthetic run directories (no Ray, no training)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdtune.cli import main
from kdtune.report import ReportError, build_report
from kdtune.report.data import compute_summary, load_run
from kdtune.report.surface import fit_surface
from kdtune.results import compute_gains
from tests.synthetic import write_synthetic_run

XSS = "<img src=x onerror=alert(1)>"
TWO = [{"dataset": "mnist", "name": "mnist", "complexity_score": 0.2},
       {"dataset": "cifar10", "name": "cifar10", "complexity_score": 0.7}]


def figures(page: str) -> dict[str, dict]:
    """The page's figures by div id, as plotly JSON."""
    return {m.group(1): json.loads(m.group(2))
            for m in re.finditer(r"kdPlot\('(fig-\d+)', (.*?)\);</script>", page)}


def by_title(page: str, words: str) -> list[dict]:
    return [f for f in figures(page).values() if words in f["layout"]["title"]["text"]]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "run-a", datasets=TWO, search_trials=10)


def test_report_holds_every_section_once_with_the_run_s_numbers(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "r.html")
    page = out.read_text()
    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()

    assert page.count("<script type='text/javascript'>") == 2  # plotly.js + the template
    assert page.count("Copyright") <= 3 and page.count("plotly.js v") == 1  # inlined once
    for anchor in ("overview", "tables", "surfaces", "complexity", "importance", "curves",
                   "trials"):
        assert page.count(f"<section id='{anchor}'>") == 1
    assert "Did distillation pay?" in page
    assert "http://" not in page.split("</head>")[1] and "<script src" not in page

    # 2 datasets: a surface, a hint-layer figure, an importance and a curves figure each,
    # plus one gain-versus-complexity figure
    figs = figures(page)
    assert len(figs) == 10 == page.count("class='plotly-graph-div'")
    (selected,) = by_title(page, "Do the best settings move as datasets get harder?")
    assert {t["name"] for t in selected["data"]} == {"rkd", "ikd"}
    assert len(by_title(page, "where distillation pays")) == 2
    assert len(by_title(page, "effect of the hint layer")) == 2

    # Tables 6 and 7 carry compute_gains' numbers
    for g in compute_gains(trials):
        if g["method"] == "scratch":
            continue
        assert f"{g['gain_pts']:+.2f}</span> [{g['gain_ci_low']:+.2f}, " \
               f"{g['gain_ci_high']:+.2f}]" in page
    assert "Table 5 · teacher versus the scratch student" in page
    assert "Table 6 · scratch student versus rkd" in page
    assert "Table 7 · scratch student versus ikd" in page
    assert "published ikd" in page  # mnist and cifar10 are the paper's datasets

    # overview: status counts and epochs saved by early stopping, from the rows
    stopped = [r for r in trials if r["status"] == "stopped"]
    saved = sum(r["epochs_budget"] - r["epochs_run"] for r in stopped)
    assert stopped and saved > 0
    assert f"{saved} over {len(stopped)} stopped trial(s)" in page
    assert compute_summary(trials)["epochs_saved"] == saved
    n_by = {s: sum(r["status"] == s for r in trials) for s in ("failed", "finished", "stopped")}
    assert f"{len(trials)} ({n_by['failed']} failed, {n_by['finished']} finished, " \
           f"{n_by['stopped']} stopped)" in page
    assert "synthetic run for the report" in page  # the spec's description

    # every trial has a row in the sortable table
    table = page.split("class=\"trials\"")[1].split("</table>")[0]
    assert table.count("<tr>") == len(trials) + 1


def test_gain_versus_complexity_plots_scores_gains_and_seed_intervals(run_dir, tmp_path):
    page = build_report(run_dir, tmp_path / "r.html").read_text()
    (fig,) = by_title(page, "against dataset complexity")
    gains = {(g["dataset"], g["method"]): g
             for g in compute_gains(pq.read_table(run_dir / "trials.parquet").to_pylist())}
    scores = {"mnist": 0.2, "cifar10": 0.7}
    named = {t["name"]: t for t in fig["data"] if t.get("name")}
    series = {k: v for k, v in named.items() if not k.endswith(" fit")}
    assert set(series) == {"rkd", "ikd", "teacher − scratch"}
    # the weighted fit of gain on complexity, drawn over the datasets' range, with its band
    for method in ("rkd", "ikd"):
        line = named[f"{method} fit"]
        assert line["x"][0] == pytest.approx(0.2) and line["x"][-1] == pytest.approx(0.7)
    for method in ("rkd", "ikd"):
        t = series[method]
        assert t["text"] == ["mnist", "cifar10"] or method != "ikd"
        for i, dataset in enumerate(["mnist", "cifar10"]):
            g = gains[(dataset, method)]
            assert t["x"][i] == pytest.approx(scores[dataset], abs=0.02)  # side by side
            assert t["y"][i] == pytest.approx(g["gain_pts"])
            assert t["error_y"]["array"][i] == pytest.approx(g["gain_ci_high"] - g["gain_pts"])
            assert t["error_y"]["arrayminus"][i] == pytest.approx(g["gain_pts"]
                                                                  - g["gain_ci_low"])
    assert "measured complexity score" in fig["layout"]["xaxis"]["title"]["text"]


def test_unmeasured_complexity_is_said_and_datasets_are_categories(tmp_path):
    run = write_synthetic_run(tmp_path / "run", datasets=[
        {"dataset": "mnist"}, {"dataset": "usps"}], search_trials=5)
    page = build_report(run, tmp_path / "r.html").read_text()
    assert "Complexity was not measured in this run" in page
    (fig,) = by_title(page, "against dataset complexity")
    assert fig["data"][0]["x"] == ["mnist", "usps"]
    assert "not measured" in fig["layout"]["xaxis"]["title"]["text"]


def test_knob_sweep_gets_a_gain_against_knob_figure(tmp_path):
    # as knobs-digits writes them: max_train held fixed beside the swept label_noise, so
    # datasets.parquet's single-knob columns say 'max_train+label_noise' and no value
    datasets = [{"dataset": f"mnist[n=300,label_noise={v}]", "name": "mnist",
                 "knob": "max_train+label_noise", "knob_value": None,
                 "knobs_json": json.dumps({"max_train": 300, "label_noise": v}),
                 "complexity_score": 0.2 + v} for v in (0.0, 0.2, 0.4)]
    run = write_synthetic_run(tmp_path / "run", datasets=datasets, search_trials=5)
    page = build_report(run, tmp_path / "r.html").read_text()
    (fig,) = by_title(page, "Gain against the knob label_noise")
    assert {tuple(t["x"]) for t in fig["data"]} == {(0.0, 0.2, 0.4)}
    assert "published" not in page  # a knob variant is not the dataset the paper measured


def test_every_string_from_specs_and_folders_is_escaped(tmp_path):
    run = write_synthetic_run(tmp_path / f"run{XSS}".replace("/", ""), study=f"s{XSS}",
                              datasets=[{"dataset": XSS, "name": "mnist",
                                         "complexity_score": 0.3}], search_trials=6)
    page = build_report(run, tmp_path / "r.html").read_text()
    assert XSS not in page
    assert "<img" not in page
    # in the figures too: plotly renders names, titles, ticks and hover text as HTML
    assert "\\u003cimg" not in page
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    assert page.count(escaped) > 10
    surface = by_title(page, "where distillation pays")[0]
    assert surface["layout"]["title"]["text"].startswith(escaped)
    hover = [h for t in surface["data"] for h in (t.get("text") or [])]
    assert hover and all("&lt;img src" in h for h in hover)  # trial ids name the dataset


def test_importance_comes_from_the_journal_else_from_the_parquet_rows(run_dir):
    run = load_run(run_dir)
    imp = run.importance[("mnist", "ikd")]
    assert imp.source == "Optuna journal" and imp.n_trials == 9  # one trial failed
    assert set(imp.values) == {"alpha", "tau", "lr", "hint_layer"}
    assert sum(imp.values.values()) == pytest.approx(1.0)
    # the same numbers as Optuna's evaluator on the stored study
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="search-mnist-ikd", storage=JournalStorage(
        JournalFileBackend(str(run_dir / "optuna" / "journal.log"))))
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    assert imp.values == pytest.approx(expected)
    # scratch searches only lr: importance 1 by definition, said so
    scratch = run.importance[("mnist", "scratch")]
    assert scratch.values == {"lr": 1.0} and "by definition" in scratch.note

    shutil.rmtree(run_dir / "optuna")
    rebuilt = load_run(run_dir).importance[("cifar10", "rkd")]
    assert rebuilt.source == "trials.parquet"
    assert set(rebuilt.values) == {"alpha", "tau", "lr"}


def test_importance_failures_are_notes_not_crashes(tmp_path):
    run = write_synthetic_run(tmp_path / "run", datasets=[{"dataset": "mnist"}],
                              search_trials=1, journal=False, failed=0)
    page = build_report(run, tmp_path / "r.html").read_text()
    assert "1 completed trial(s): importance needs at least 2" in page
    assert not by_title(page, "which searched parameters mattered")


def test_surface_fit_recovers_a_known_optimum_and_refuses_too_few_points():
    rng = np.random.default_rng(0)
    alpha, tau = rng.uniform(0.1, 0.95, 40), rng.uniform(1, 10, 40)

    def true(a, t):
        return 90 - 30 * (a - 0.6) ** 2 - 0.4 * (t - 4) ** 2

    s = fit_surface(alpha, tau, true(alpha, tau) + rng.normal(0, 0.3, 40))
    j, i = np.unravel_index(s.z.argmax(), s.z.shape)
    assert abs(s.x[i] - 0.6) < 0.1 and abs(s.y[j] - 4) < 0.8
    truth = true(s.x[None, :], s.y[:, None])
    assert np.sqrt(((s.z - truth) ** 2).mean()) < 1.0
    assert s.z.shape == s.sd.shape == (40, 40)
    # noise around a constant: a flat surface, not an interpolation of the noise
    flat = fit_surface(alpha, tau, 80 + rng.normal(0, 0.5, 40))
    assert np.ptp(flat.z) < 1.0
    assert fit_surface([0.1, 0.5, 0.9], [1, 2, 3], [1, 2, 3]) is None
    assert fit_surface([0.5] * 6, [1, 2, 3, 4, 5, 6], list(range(6))) is None


def test_comparison_mode_overlays_runs_and_needs_out(tmp_path, capsys):
    a = write_synthetic_run(tmp_path / "a" / "run", datasets=TWO, search_trials=5)
    b = write_synthetic_run(tmp_path / "b" / "run", datasets=[
        {"dataset": "usps", "name": "usps", "complexity_score": 0.45}], search_trials=5,
        methods=("scratch", "rkd", "at"), seed=1)
    assert main(["report", str(a), str(b)]) == 2
    assert "needs --out" in capsys.readouterr().err
    out = tmp_path / "cmp.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text()
    assert "comparison of 2 runs" in page
    assert "run run</h3>" in page and "run run (2)</h3>" in page  # same folder names, told apart
    (fig,) = by_title(page, "against dataset complexity")
    names = {t["name"] for t in fig["data"] if t.get("name")}
    assert {"rkd · run", "ikd · run", "rkd · run (2)", "at · run (2)"} <= names
    table = page.split("class=\"trials\"")[1].split("</table>")[0]
    n = sum(pq.read_table(d / "trials.parquet").num_rows for d in (a, b))
    assert table.count("<tr>") == n + 1 and "<th>run</th>" in table
    assert not (a / "report.html").exists()  # a comparison never overwrites a run's report


def test_a_bare_run_directory_still_reports_and_new_columns_show(tmp_path):
    run = write_synthetic_run(tmp_path / "run", datasets=[{"dataset": "digits"}],
                              search_trials=4, journal=False)
    for name in ("epochs.parquet", "datasets.parquet", "run.json", "spec.yaml"):
        (run / name).unlink()
    table = pq.read_table(run / "trials.parquet")
    table = table.append_column("a_newer_column", pa.array([0.5] * table.num_rows))
    pq.write_table(table, run / "trials.parquet")
    page = build_report(run).read_text()
    assert (run / "report.html").exists()
    for said in ("No spec.yaml", "No datasets.parquet", "hardware unknown", "No epoch rows"):
        assert said in page
    assert "<th>a_newer_column</th>" in page
    with pytest.raises(ReportError):
        build_report(tmp_path / "nothing-here")


def test_gain_cells_are_green_only_when_the_interval_excludes_zero(run_dir, tmp_path):
    page = build_report(run_dir, tmp_path / "r.html").read_text()
    gains = compute_gains(pq.read_table(run_dir / "trials.parquet").to_pylist())
    for g in gains:
        if g["method"] == "scratch" or math.isnan(g["gain_ci_low"]):
            continue
        cls = "pos" if g["gain_ci_low"] > 0 else "neg" if g["gain_ci_high"] < 0 else ""
        assert f"<span class='{cls}'>{g['gain_pts']:+.2f}</span>" in page


def test_tied_trials_give_a_note_not_equal_importances():
    from optuna.distributions import FloatDistribution

    from kdtune.report.data import _importance

    study = optuna.create_study(direction="maximize")
    for i in range(2):  # equal validation accuracy: PED-ANOVA cannot tell best from rest
        study.add_trial(optuna.trial.create_trial(
            params={"alpha": 0.1 + 0.3 * i, "tau": 1.0 + i}, value=90.0,
            distributions={"alpha": FloatDistribution(0, 1), "tau": FloatDistribution(1, 10)}))
    imp = _importance(study, "Optuna journal")
    assert imp.values is None and "too few for PED-ANOVA" in imp.note


def test_a_baseline_is_never_the_best_distilled_method_nor_gets_a_gain_table(tmp_path):
    run = write_synthetic_run(tmp_path / "run", datasets=TWO, search_trials=4,
                              methods=("scratch", "reversed_scratch", "reversed", "rkd"))
    table = pq.read_table(run / "trials.parquet")
    rows = table.to_pylist()
    for r in rows:  # the reversed baseline is the most accurate model of every dataset
        if r["method"] == "reversed_scratch" and r["val_acc"] is not None:
            r["val_acc"], r["test_acc"] = r["val_acc"] + 30.0, r["test_acc"] + 30.0
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), run / "trials.parquet")
    page = build_report(run).read_text()
    assert "student versus reversed_scratch" not in page
    assert "reversed_scratch student versus reversed" in page  # reversed's own baseline
    assert "scratch student versus rkd" in page
    for fig in by_title(page, "learning curves"):
        names = [t.get("name") or "" for t in fig["data"]]
        best = [n for n in names if "(best distilled)" in n]
        assert best and not any(n.startswith("reversed_scratch") for n in best)
    answer = page.split("id='answer'")[1].split("</div>")[0]
    assert "reversed_scratch</b>" not in answer


def test_the_answer_gives_each_verdict_and_the_surfaces_say_how_sure_they_are(run_dir,
                                                                             tmp_path):
    page = build_report(run_dir, tmp_path / "r.html").read_text()
    answer = page.split("id='answer'")[1].split("</div>")[0]
    gains = [g for g in compute_gains(pq.read_table(run_dir / "trials.parquet").to_pylist())
             if g.get("baseline")]
    verdicts = answer.split("class=\"verdicts\"")[1].split("</table>")[0]
    assert verdicts.count("<tr>") == len(gains) + 1
    for g in gains:
        assert f"<b>{g['verdict']}</b>" in verdicts
    assert "Holm-adjusted" in answer and "Does the gain grow with complexity?" in answer
    for fig in by_title(page, "where distillation pays"):
        titles = [a["text"] for a in fig["layout"]["annotations"]]
        assert all("one trial ±" in t for t in titles), titles



def _faded_share(page: str) -> float:
    cells = [v is not None for fig in by_title(page, "where distillation pays")
             for t in fig["data"] if t.get("type") == "heatmap" for row in t["z"] for v in row]
    return sum(cells) / max(1, len(cells)) if cells else 0.0


def test_a_surface_fitted_to_noise_is_faded_where_the_gp_is_unsure(tmp_path):
    clean = write_synthetic_run(tmp_path / "clean", datasets=TWO[:1], search_trials=30)
    noisy = write_synthetic_run(tmp_path / "noisy", datasets=TWO[:1], search_trials=6)
    table = pq.read_table(noisy / "trials.parquet")
    rows, rng = table.to_pylist(), np.random.default_rng(0)
    for r in rows:  # the search trials' accuracies carry no signal at all
        if r["role"] == "search" and r["val_acc"] is not None and r["method"] != "scratch":
            r["val_acc"] = 80 + float(rng.normal(0, 5))
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), noisy / "trials.parquet")
    shares = [_faded_share(build_report(d).read_text()) for d in (clean, noisy)]
    # six noise-only trials: the band is wider than the surface's range over half the plane
    # (all but near the trials); thirty trials of a clear signal: almost nowhere
    assert shares[1] > 0.4 and shares[0] < 0.05
