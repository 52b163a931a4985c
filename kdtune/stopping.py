"""Early-stopping rules for one search, as small objects fed one result at a time.

The same object decides live (behind Ray Tune's scheduler API, :class:`kdtune.multisearch.
PerStageRule`) and offline (replayed on recorded curves, :mod:`kdtune.early_stopping`): each
gets ``on_result(trial, epoch, value)`` in arrival order and answers whether to stop the trial
now, and ``on_complete(trial)`` when a trial ran its whole budget. A rule sees only its own
search's results: a search's trials are judged against each other (same dataset, same method).

Registered rules (``RULES``; ``scheduler.kind`` in a spec names one):

- ``asha``: Ray Tune's asynchronous successive halving, one bracket (Li et al., *A System for
  Massively Parallel Hyperparameter Tuning*, MLSys 2020), grace period and reduction factor
  from the spec. What ``scheduler.asha: true`` has always run.
- ``asha_late``: the same with a grace of a quarter of the budget and halving (rf 2): the
  "Hyperband bracket with a longer grace" that lets distillation's late gains show.
- ``median``: Ray Tune's median stopping rule (Golovin et al., *Google Vizier*, KDD 2017): past
  the grace period, a trial whose best value so far is below the median of the other trials'
  running means at the same epoch stops.
- ``percentile``, ``patient``, ``wilcoxon``: Optuna's pruners (``PercentilePruner`` at the 25th
  percentile, ``PatientPruner`` around ``MedianPruner`` with a patience of 5 epochs,
  ``WilcoxonPruner`` at p < 0.1: a signed-rank test of the trial's curve against the best
  trial's, paired by epoch), driven by an in-memory Optuna study of the search's trials.
- ``extrapolate``: learning-curve extrapolation: a line through the last ``k`` epochs (slope
  clipped at 0 from below) projected to the budget, plus ``z`` standard errors of the fit;
  a trial whose optimistic projection is below the best finished trial's final value stops.
- ``trails_leader``: paired by epoch with the search's leader (the best finished trial's
  curve, which shares the dataset's learning trend): a trial that trails it by more than
  ``margin`` points at every one of its last ``k`` epochs stops. Curves that cross late
  (distillation's gain shows late) are kept as long as they are within the margin.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

Curve = dict[int, float]  # epoch -> validation accuracy (points)


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class StoppingRule:
    """One search's rule. Subclasses decide in ``judge``; the history is kept here."""

    name = "none"

    def __init__(self, max_t: int) -> None:
        self.max_t = max_t
        self.curves: dict[str, Curve] = {}
        self.finished: list[str] = []  # trials that ran their whole budget, in order

    def on_result(self, trial: str, epoch: int, value: float) -> bool:
        """Record one epoch's result; True: stop the trial now."""
        self.curves.setdefault(trial, {})[epoch] = value
        if epoch >= self.max_t:
            return False
        return self.judge(trial, epoch, value)

    def on_complete(self, trial: str) -> None:
        if trial in self.curves and trial not in self.finished:
            self.finished.append(trial)

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        return False

    def best_finished(self) -> str | None:
        done = [t for t in self.finished if self.curves[t]]
        return max(done, key=lambda t: self.curves[t][max(self.curves[t])]) if done else None


class Asha(StoppingRule):
    """Ray's ``_Bracket.on_result``: at the first result at or past a rung's milestone, a
    trial stops if its value is below the ``1 - 1/rf`` quantile of the values earlier trials
    recorded at that rung."""

    name = "asha"

    def __init__(self, max_t: int, grace_period: int = 2, reduction_factor: float = 3) -> None:
        super().__init__(max_t)
        self.rf = reduction_factor
        grace = min(grace_period, max_t)
        rungs = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
        self.rungs: dict[float, dict[str, float]] = {
            grace * reduction_factor ** k: {} for k in range(rungs)}

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        for milestone in sorted(self.rungs, reverse=True):
            recorded = self.rungs[milestone]
            if epoch < milestone or trial in recorded:
                continue
            stop = bool(recorded) and value < _percentile(list(recorded.values()),
                                                          (1 - 1 / self.rf) * 100)
            recorded[trial] = value
            return stop
        return False


class AshaLate(Asha):
    name = "asha_late"

    def __init__(self, max_t: int, **_: Any) -> None:
        super().__init__(max_t, grace_period=max(1, max_t // 4), reduction_factor=2)


class Median(StoppingRule):
    """Ray's ``MedianStoppingRule`` (per epoch, min_samples_required 3): past the grace period
    (a quarter of the budget), stop a trial whose best value so far is below the median of the
    other trials' mean values up to the same epoch."""

    name = "median"

    def __init__(self, max_t: int, min_samples: int = 3, **_: Any) -> None:
        super().__init__(max_t)
        self.grace = max(1, max_t // 4)
        self.min_samples = min_samples

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        if epoch < self.grace:
            return False
        means = []
        for other, curve in self.curves.items():
            upto = [v for e, v in curve.items() if e <= epoch]
            if other != trial and max(curve) >= epoch and upto:
                means.append(sum(upto) / len(upto))
        if len(means) < self.min_samples:
            return False
        best_so_far = max(v for e, v in self.curves[trial].items() if e <= epoch)
        return best_so_far < _percentile(means, 50)


class OptunaPruner(StoppingRule):
    """An Optuna pruner judging the search's trials in an in-memory study (maximising)."""

    name = "optuna"

    def __init__(self, max_t: int, make_pruner: Callable[[int], Any], **_: Any) -> None:
        import optuna

        super().__init__(max_t)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        with warnings.catch_warnings():  # Patient and Wilcoxon are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = make_pruner(max_t)
        self.study = optuna.create_study(direction="maximize", pruner=pruner)
        self.trials: dict[str, Any] = {}

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        live = self.trials.get(trial) or self.trials.setdefault(trial, self.study.ask())
        live.report(value, epoch)
        if live.should_prune():
            self.study.tell(live, state=self._optuna.trial.TrialState.PRUNED)
            return True
        return False

    def on_result(self, trial: str, epoch: int, value: float) -> bool:
        stop = super().on_result(trial, epoch, value)
        if epoch >= self.max_t:  # the last epoch is reported too (Wilcoxon pairs on it)
            live = self.trials.get(trial) or self.trials.setdefault(trial, self.study.ask())
            live.report(value, epoch)
        return stop

    def on_complete(self, trial: str) -> None:
        super().on_complete(trial)
        live = self.trials.get(trial)
        if live is not None and self.curves.get(trial):
            self.study.tell(live, self.curves[trial][max(self.curves[trial])])


def _percentile_pruner(max_t: int) -> Any:
    from optuna.pruners import PercentilePruner

    return PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=max(1, max_t // 4))


def _patient_pruner(max_t: int) -> Any:
    from optuna.pruners import MedianPruner, PatientPruner

    return PatientPruner(MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, max_t // 4)),
                         patience=5)


def _wilcoxon_pruner(max_t: int) -> Any:
    from optuna.pruners import WilcoxonPruner

    return WilcoxonPruner(p_threshold=0.1, n_startup_steps=max(1, max_t // 4))


class Extrapolate(StoppingRule):
    """Stop when even an optimistic straight-line projection cannot reach the best finished
    trial: fit the last ``k`` epochs by least squares, clip the slope at 0 from below, project
    to the budget and add ``z`` standard errors of the fitted value there."""

    name = "extrapolate"

    def __init__(self, max_t: int, k: int = 5, z: float = 2.0, **_: Any) -> None:
        super().__init__(max_t)
        self.k, self.z = k, z
        self.grace = max(k, max_t // 4)

    def projection(self, curve: Curve, epoch: int) -> float:
        points = sorted((e, v) for e, v in curve.items() if e <= epoch)[-self.k:]
        xs, ys = [e for e, _ in points], [v for _, v in points]
        n = len(points)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
        residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys)]
        s2 = sum(r * r for r in residuals) / (n - 2) if n > 2 else 0.0
        at = self.max_t
        se = math.sqrt(s2 * (1 / n + ((at - mx) ** 2 / sxx if sxx else 0.0)))
        return my + max(slope, 0.0) * (at - mx) + self.z * se

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        leader = self.best_finished()
        if epoch < self.grace or leader is None:
            return False
        target = self.curves[leader][max(self.curves[leader])]
        return self.projection(self.curves[trial], epoch) < target


class TrailsLeader(StoppingRule):
    """Paired by epoch with the best finished trial: stop a trial that trails it by more than
    ``margin`` points at each of its last ``k`` epochs (past a quarter of the budget)."""

    name = "trails_leader"

    def __init__(self, max_t: int, k: int = 5, margin: float = 3.0, **_: Any) -> None:
        super().__init__(max_t)
        self.k, self.margin = k, margin
        self.grace = max(k, max_t // 4)

    def judge(self, trial: str, epoch: int, value: float) -> bool:
        leader = self.best_finished()
        if epoch < self.grace or leader is None or leader == trial:
            return False
        mine, best = self.curves[trial], self.curves[leader]
        recent = [e for e in sorted(mine) if e <= epoch][-self.k:]
        return len(recent) == self.k and all(
            e in best and best[e] - mine[e] > self.margin for e in recent)


RULES: dict[str, Callable[..., StoppingRule]] = {
    "asha": Asha,
    "asha_late": AshaLate,
    "median": Median,
    "percentile": lambda max_t, **kw: OptunaPruner(max_t, _percentile_pruner),
    "patient": lambda max_t, **kw: OptunaPruner(max_t, _patient_pruner),
    "wilcoxon": lambda max_t, **kw: OptunaPruner(max_t, _wilcoxon_pruner),
    "extrapolate": Extrapolate,
    "trails_leader": TrailsLeader,
}


def make_rule(kind: str, max_t: int, **options: Any) -> StoppingRule:
    """A fresh rule for one search; ``options`` (e.g. ``grace_period``) go to rules that take
    them."""
    try:
        factory = RULES[kind]
    except KeyError:
        raise ValueError(f"unknown early-stopping rule {kind!r}; known: "
                         f"{', '.join(sorted(RULES))}") from None
    return factory(max_t, **options)
