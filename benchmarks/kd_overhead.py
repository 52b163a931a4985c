"""What one training step of each distillation method costs, relative to the scratch student's.

One step = forward, the method's losses, backward and an SGD update, on the same batch, on this
machine, in one run, with one torch thread (as a study trial with ``cpus: 1`` has). Methods are
timed interleaved, one short measurement each per round in a shuffled order, for many rounds,
so load from other processes hits every method alike. The headline ``ratio`` divides median
**CPU time** per step (``time.thread_time``: the one thread does all the work), which other
processes on a shared machine barely move; ``wall`` divides the 25th percentiles of wall time
(what the quiet moments saw). ``self cached`` and ``rkd cached`` do identical work (same
student, cached soft targets), so their gap shows the noise that is left. ``cached``: the teacher's logits/features come from rows of a
precomputed cache (augmentation off); ``live``: the teacher runs on every batch.

Two workloads: ``resnet`` (ResNet-20 teacher -> ResNet-8 student, 3x32x32, batch 128; the headline
ratio) and ``quickstart`` (the quickstart's small CNNs, 32/64 -> 4/8 channels, 1x8x8, batch 64).
``reversed`` trains the teacher architecture, so its ratio is against ``reversed_scratch``.

    python benchmarks/kd_overhead.py [--seconds 120] [--threads 1]

Writes benchmarks/results/kd_overhead.json and .md; the last line printed is
``kd_overhead: <RKD cached ratio>x (target 1.10)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune import methods  # noqa: E402
from kdtune.models import build_model  # noqa: E402
from kdtune.teacher_outputs import CachedTeacher  # noqa: E402
from kdtune.trial import build_distiller  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.10

WORKLOADS = {
    "resnet": {"teacher": ("resnet20", {}), "student": ("resnet8", {}), "channels": 3,
               "size": 32, "batch": 128, "hint": "layer2:layer2"},
    "quickstart": {"teacher": ("small_cnn", {"widths": [32, 64]}),
                   "student": ("small_cnn", {"widths": [4, 8]}), "channels": 1, "size": 8,
                   "batch": 64, "hint": "stage2"},
}
# (label, method, teacher outputs, which baseline the ratio divides by)
VARIANTS = [
    ("scratch", "scratch", None, "scratch"),
    ("rkd cached", "rkd", "cached", "scratch"),
    ("rkd live", "rkd", "live", "scratch"),
    ("ikd cached", "ikd", "cached", "scratch"),
    ("ikd live", "ikd", "live", "scratch"),
    ("at cached", "at", "cached", "scratch"),
    ("at live", "at", "live", "scratch"),
    ("mskd cached", "mskd", "cached", "scratch"),
    ("self cached", "self", "cached", "scratch"),
    ("self live", "self", "live", "scratch"),
    ("reversed_scratch", "reversed_scratch", None, "reversed_scratch"),
    ("reversed cached", "reversed", "cached", "reversed_scratch"),
    ("reversed live", "reversed", "live", "reversed_scratch"),
]


class Step:
    """One method ready to take training steps on a fixed batch."""

    def __init__(self, workload: dict, method: str, outputs: str | None, images: torch.Tensor,
                 labels: torch.Tensor, pool: torch.Tensor) -> None:
        arch = {"teacher": workload["teacher"], "student": workload["student"]}
        info = methods.get(method)
        trains = arch[info.trains]
        teaches = arch[info.taught_by] if info.taught_by else None
        torch.manual_seed(0)
        shape = (workload["channels"], 10, workload["size"])
        model = build_model(trains[0], shape[0], shape[1], shape[2], trains[1])
        teacher = build_model(teaches[0], *shape, teaches[1]) if teaches else None
        config = {"alpha": 0.7, "tau": 4.0, "beta": 1.0, "hint_layer": workload["hint"]}
        self.distiller = build_distiller(method, model, teacher, config, student_arch=trains[0],
                                         teacher_arch=teaches[0] if teaches else "",
                                         example=images[:2], num_classes=10)
        self.index = None
        if outputs == "cached":
            # the batch is rows 0..B-1 of a larger "training tensor", as in a real epoch
            with torch.inference_mode():
                cache = self.distiller.live_teacher(pool)
            self.distiller.use_cached_teacher(CachedTeacher(cache))
            self.index = torch.randperm(len(pool))[:len(labels)]
            images = pool[self.index]
        self.distiller.train()
        self.images, self.labels = images, labels
        params = [p for p in self.distiller.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def __call__(self, steps: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this thread) per step over ``steps`` steps."""
        started, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            _, losses = self.distiller(self.images, self.labels, self.index)
            loss = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return (time.perf_counter() - started) / steps, (time.thread_time() - cpu) / steps


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_workload(name: str, seconds: float, warmup: int, min_seconds: float) -> dict:
    workload = WORKLOADS[name]
    torch.manual_seed(1)
    shape = (workload["channels"], workload["size"], workload["size"])
    pool = torch.randn(workload["batch"] * 4, *shape)
    images, labels = pool[:workload["batch"]], torch.randint(0, 10, (workload["batch"],))
    steppers = {label: Step(workload, method, outputs, images, labels, pool)
                for label, method, outputs, _ in VARIANTS}
    for step in steppers.values():
        step(warmup)
    # a measurement of the scratch step lasts at least min_seconds (a 4 ms step timed once is
    # scheduler noise); as many rounds as fit in `seconds`, at least 15
    scratch_s = min(steppers["scratch"](1)[1] for _ in range(3))
    steps = max(1, math.ceil(min_seconds / scratch_s))
    # rounds until the deadline (at least 15): an estimate from the first steps' minimum ran
    # the two workloads past 10 minutes where 2 x 240 s were asked for
    deadline = time.perf_counter() + seconds
    wall: dict[str, list[float]] = {label: [] for label in steppers}
    cpu: dict[str, list[float]] = {label: [] for label in steppers}
    rng = random.Random(0)
    rounds = 0
    while rounds < 15 or time.perf_counter() < deadline:
        rounds += 1
        order = list(steppers)
        rng.shuffle(order)
        for label in order:
            w, c = steppers[label](steps)
            wall[label].append(w)
            cpu[label].append(c)
    out = {}
    for label, _, _, baseline in VARIANTS:
        cpu_ratios = [t / b for t, b in zip(cpu[label], cpu[baseline])]
        quartiles = statistics.quantiles(cpu_ratios, n=4) if len(cpu_ratios) > 1 else [1.0] * 3
        out[label] = {"cpu_ms_per_step": 1000 * statistics.median(cpu[label]),
                      "wall_ms_per_step_p25": 1000 * _quantile(wall[label], 0.25),
                      "ratio": statistics.median(cpu[label]) / statistics.median(cpu[baseline]),
                      "ratio_q1": quartiles[0], "ratio_q3": quartiles[-1],
                      "wall": _quantile(wall[label], 0.25) / _quantile(wall[baseline], 0.25),
                      "baseline": baseline}
    return {"workload": {k: v for k, v in workload.items()}, "steps": steps, "rounds": rounds,
            "variants": out}


def markdown(result: dict) -> str:
    lines = [f"# kd_overhead: {result['date']}", "",
             f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} "
             f"thread(s); loadavg before {result['loadavg_before']}, after "
             f"{result['loadavg_after']} (ratios are taken within interleaved "
             "rounds, so load from other processes hits every method alike; absolute times "
             "move with it).", "",
             "ratio = median CPU time per step / the baseline's (the headline), with the "
             "quartiles of the within-round CPU-time ratios; wall = 25th-percentile wall time "
             "ratio. `self cached` and `rkd cached` do identical work: their gap is the noise.",
             ""]
    for name, data in result["workloads"].items():
        w = data["workload"]
        lines += [f"## {name}: {w['teacher'][0]} -> {w['student'][0]}, "
                  f"{w['channels']}x{w['size']}x{w['size']}, batch {w['batch']}, "
                  f"{data['rounds']} rounds of {data['steps']} step(s) per measurement", "",
                  "| variant | CPU ms/step | ratio [q1, q3] | wall ms/step (p25) | wall ratio | vs |",
                  "|---|---|---|---|---|---|"]
        for label, v in data["variants"].items():
            lines.append(f"| {label} | {v['cpu_ms_per_step']:.2f} | **{v['ratio']:.3f}** "
                         f"[{v['ratio_q1']:.3f}, {v['ratio_q3']:.3f}] | "
                         f"{v['wall_ms_per_step_p25']:.2f} | {v['wall']:.3f} | "
                         f"{v['baseline']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120,
                        help="time budget of the timed rounds, per workload")
    parser.add_argument("--min-seconds", type=float, default=0.02,
                        help="least seconds per measurement of the scratch step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a study trial with cpus: 1 uses one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = [round(v, 2) for v in os.getloadavg()]
    workloads = {}
    for name in WORKLOADS:
        workloads[name] = run_workload(name, args.seconds, args.warmup, args.min_seconds)
        for label, v in workloads[name]["variants"].items():
            print(f"{name:<10} {label:<17} {v['cpu_ms_per_step']:8.2f} CPU ms/step  "
                  f"x{v['ratio']:.3f} (wall x{v['wall']:.3f}) vs {v['baseline']}", flush=True)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
                         f"{platform.platform()}",
              "torch": torch.__version__, "threads": args.threads, "loadavg_before": before,
              "loadavg_after": [round(v, 2) for v in os.getloadavg()],
              "target": {"rkd cached": TARGET}, "workloads": workloads}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kd_overhead.json").write_text(json.dumps(result, indent=2))
    (args.out / "kd_overhead.md").write_text(markdown(result))
    print(f"results: {args.out / 'kd_overhead.md'}")
    ratio = workloads["resnet"]["variants"]["rkd cached"]["ratio"]
    print(f"kd_overhead: {ratio:.2f}x (target {TARGET:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
