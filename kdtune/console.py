"""What a study prints: one line per finished trial, teacher progress, the closing summary.

Pure formatting: the study and its recorder print these lines through a ``log`` callable.
"""

from __future__ import annotations

from typing import Any

from kdtune import methods


def log(message: str) -> None:
    print(message, flush=True)


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else f"{value}"


def trial_line(row: dict[str, Any], done: int, total: int | str, best: float | None,
               hp_shown: list[str]) -> str:
    """``[stage] 3/8 digits rkd seed 0: val 90.5% (best 92.9%) after 10 epochs, 1s alpha=...``"""
    status, failure = row["status"], row.get("failure")
    hp = " ".join(f"{k}={_value(row[k])}" for k in hp_shown if row.get(k) is not None)
    val = f"val {row['val_acc']:.1f}%" if row["val_acc"] is not None else "no val"
    best_text = f" (best {best:.1f}%)" if best is not None and row["role"] == "search" else ""
    why = (f" [{status}: {failure}]" if failure
           else " [stopped early]" if status == "stopped" else "")
    why += f" [restarted {row['restarts']}x from its checkpoint]" if row.get("restarts") else ""
    return (f"  [{row['stage']}] {done}/{total} {row['dataset']} {row['method']} seed "
            f"{row['seed']}: {val}{best_text} after {row['epochs_run']} epochs, "
            f"{row['wall_s'] or 0:.0f}s {hp}{why}")


def teacher_epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (f"  [{row['stage']}] {row['dataset']} teacher epoch {row['epoch']}/{epochs}: "
            f"val {row['val_acc']:.1f}%")


def summary(trials: list[dict[str, Any]], gains: list[dict[str, Any]], wall_s: float) -> str:
    counts: dict[str, int] = {}
    for r in trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"done in {wall_s:.0f}s: {len(trials)} trials ("
             + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
    student_baseline = methods.student_baseline()
    for g in gains:
        if not g.get("baseline"):
            lines.append(f"  {g['dataset']:<16} {g['method']:<8} test {g['test_acc_mean']:.2f}% "
                         f"over {g['n_seeds']} seeds")
        else:
            vs = "" if g["baseline"] == student_baseline else f" vs {g['baseline']}"
            lines.append(f"  {g['dataset']:<16} {g['method']:<8} test {g['test_acc_mean']:.2f}%"
                         f"  gain {g['gain_pts']:+.2f} pts  95% CI [{g['gain_ci_low']:+.2f}, "
                         f"{g['gain_ci_high']:+.2f}]{vs}")
        if g.get("omitted_class_acc_mean") is not None:
            lines[-1] += f"  (class {g['omitted_class']}: {g['omitted_class_acc_mean']:.1f}%)"
    return "\n".join(lines)
