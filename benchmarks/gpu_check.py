"""The GPU path, checked on a real GPU (issue 16), with torch alone: no Ray, no Optuna.

    bash benchmarks/gpu_check.sh            # on a machine with one CUDA GPU (~5 min)
    python benchmarks/gpu_check.py --cpu    # the same code paths on the CPU, nothing measured

Three parts, on synthetic class-dependent images (3 x 32 x 32, 10 classes; learnable, so losses
fall), a ResNet-20 teacher and a ResNet-8 student, batch 128:

1. **Every method on CUDA** through kdtune's own trial builder and loop: bf16 autocast on
   (``training.amp``), data and cached teacher outputs on the device, 4 epochs each; the first
   and last epoch's loss, and whether any training step synchronised with the host
   (``torch.cuda.set_sync_debug_mode("error")`` around steps taken with
   :func:`kdtune.engine.train_step`: a sync raises).
2. **``gpus: fit``'s probe against real training**: :func:`kdtune.resources.step_peak_bytes`
   (what ``fit`` measures) beside the peak memory of one real epoch of the same trial, and the
   share :func:`kdtune.resources.fit_fraction` gives.
3. **Packing**: the same student trial (rkd, cached teacher outputs, 30 epochs) run by 1, 2, 4
   and 8 processes at once on the one GPU: trials per GPU-hour and each process's peak memory,
   what ``gpus: 0.25`` and ``fit`` rest on.

Results go to ``$OUT`` when set (the device tool returns what is written there), else to
``benchmarks/results/``: ``gpu_check-STAMP.{json,md}``, with the GPU, its driver, torch and the
date. The last line printed is ``gpu_check: <trials per GPU-hour at the best packing / at 1>x
(target 1.00)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune import methods  # noqa: E402
from kdtune.data import Splits  # noqa: E402
from kdtune.distill import Batch  # noqa: E402
from kdtune.engine import train_epochs, train_step  # noqa: E402
from kdtune.job import TrialJob  # noqa: E402
from kdtune.methods.mskd import active_exits  # noqa: E402
from kdtune.models import build_model  # noqa: E402
from kdtune.resources import MemoryProbe, Shape, fit_fraction, step_peak_bytes  # noqa: E402
from kdtune.spec import parse_spec  # noqa: E402
from kdtune.teacher_outputs import CachedTeacher, precompute  # noqa: E402
from kdtune.trial import build_trial  # noqa: E402

# every registered method, baselines included; ccd weights augmented images, so it runs with
# augmentation on (its teacher then runs live on every batch: augmented images are new)
AUGMENTED = ["ccd"]
METHODS = [m for m in methods.REGISTRY if m not in AUGMENTED]
SPEC = {
    "study": "gpu-check", "storage": "/tmp/kdtune-gpu-check",
    "datasets": [{"name": "digits"}],  # a name only: the images below are built here
    "teacher": {"arch": "resnet20"}, "student": {"arch": "resnet8"},
    "methods": METHODS,
    "training": {"teacher_epochs": 1, "student_epochs": 4, "batch_size": 128, "lr": 0.05,
                 "optimizer": "sgd", "momentum": 0.9, "augmentation": "none", "amp": True},
    "distillation": {"hint_layer": "layer2:layer2"},
    "search": {"trials": 1}, "final": {"seeds": [0]},
}


def synthetic_splits(n_train: int, device: torch.device, seed: int = 0) -> Splits:
    """Class-dependent images: each class its own mean pattern plus noise (uint8, on device)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(10, 3, 32, 32, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = (0.6 * patterns[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g)) * 255
        return x.to(torch.uint8).to(device), y.to(device)

    (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(1024), draw(1024)
    return Splits("synthetic", tx, ty, vx, vy, sx, sy, 10, (0.5,) * 3, (0.25,) * 3)


def build(spec: Any, method: str, splits: Splits, device: torch.device, epochs: int):
    """A trial as the trainable builds it, with the teacher's outputs cached on the device."""
    _, teacher_arch = methods.trial_models(spec, method)
    teacher = None
    if teacher_arch is not None:
        torch.manual_seed(1)
        teacher = build_model(teacher_arch.arch, 3, 10, 32, teacher_arch.options).to(device)
        teacher.eval()

    def cache(distiller, budget) -> str:
        if distiller.live_teacher is None or budget.augmentation != "none":
            return "live"  # as kdtune.trainables.use_cached_teacher: augmented images are new
        distiller.use_cached_teacher(CachedTeacher(precompute(
            distiller.live_teacher, splits.train_x, splits.mean, splits.std, amp=budget.amp)))
        return "cached"

    job = TrialJob("check", "final", 0, method, 0)
    trial = build_trial(spec, job, splits, device, teacher, cache)
    trial.budget.epochs = epochs
    return trial


def check_methods(spec: Any, device: torch.device, n_train: int, cuda: bool) -> list[dict]:
    """Part 1: every method, a few epochs on the device; losses, syncs inside steps."""
    rows = []
    splits = synthetic_splits(n_train, device)
    augmented = parse_spec(SPEC | {"methods": ["scratch", *AUGMENTED],
                                   "training": SPEC["training"] | {"augmentation": "paper"}})
    for method in METHODS + AUGMENTED:
        if method in AUGMENTED:
            spec = augmented
        trial = build(spec, method, splits, device, spec.training.student_epochs)
        started = time.perf_counter()
        losses = [r.train_loss for r in train_epochs(trial.distiller, splits, trial.budget,
                                                      seed=0, optimizer=trial.optimizer)]
        epochs_s = time.perf_counter() - started
        # steps alone, with any host synchronisation turned into an error
        sync_error = None
        x = splits.train_x[:128].float().div(255)
        mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)
        batch = Batch((x - mean) / std, splits.train_y[:128],
                      torch.arange(128, device=device))
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                train_step(trial.distiller, trial.optimizer, batch, spec.training.amp)
        except RuntimeError as error:
            sync_error = str(error).splitlines()[0][:200]
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
        # mskd's loss is a sum over the exits that train, and exits join in phases
        # (kdtune.methods.mskd.active_exits): its total rises by design until every exit
        # trains, so it is compared from there
        first = 0
        n_exits = getattr(trial.distiller, "n_exits", None)  # mskd's distillers alone
        if n_exits:
            first = next(e for e in range(len(losses))
                         if active_exits(e, len(losses), n_exits) == n_exits)
        rows.append({"method": method, "teacher_outputs": trial.teacher_outputs,
                     "first_loss": losses[first], "first_epoch": first + 1,
                     "last_loss": losses[-1], "loss_fell": losses[-1] < losses[first],
                     "epochs_s": round(epochs_s, 2), "sync_in_step": sync_error})
        print(f"methods  {method:<9} loss {losses[first]:.3f} -> {losses[-1]:.3f}"
              f"{f' (from epoch {first + 1}: every exit trains)' if first else ''}  "
              f"{trial.teacher_outputs:<6} {epochs_s:6.1f} s  sync in a step: "
              f"{sync_error or 'none'}", flush=True)
        del trial
    return rows


def check_fit(spec: Any, device: torch.device, n_train: int, cuda: bool) -> list[dict]:
    """Part 2: the probe's peak against a real epoch's peak, per method."""
    rows = []
    splits = synthetic_splits(n_train, device)
    total = torch.cuda.get_device_properties(device).total_memory if cuda else 0
    for method in ("scratch", "rkd", "ikd", "at"):
        probe = MemoryProbe("student", method, 0,
                            methods.get(method).memory_variants(spec)[0])
        probed = step_peak_bytes(spec, probe, Shape(3, 32, 10), device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        trial = build(spec, method, splits, device, 1)
        for _ in train_epochs(trial.distiller, splits, trial.budget, seed=0,
                              optimizer=trial.optimizer):
            pass
        real = int(torch.cuda.max_memory_allocated(device) - base) if cuda else 0
        share = fit_fraction(probed, total) if cuda else None
        rows.append({"method": method, "probe_peak_bytes": probed, "real_peak_bytes": real,
                     "probe_over_real": round(probed / real, 3) if real else None,
                     "fit_share": share})
        print(f"fit      {method:<9} probe {probed / 2**20:8.1f} MiB  real epoch "
              f"{real / 2**20:8.1f} MiB  gpus: fit -> {share}", flush=True)
        del trial
    return rows


def worker(args: argparse.Namespace) -> None:
    """Part 3's trial, in a process of its own: prints one JSON line."""
    device = torch.device("cpu" if args.cpu else "cuda")
    spec = parse_spec(SPEC)
    splits = synthetic_splits(args.n_train, device, seed=args.worker)
    trial = build(spec, "rkd", splits, device, args.epochs)
    if not args.cpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in train_epochs(trial.distiller, splits, trial.budget, seed=args.worker,
                          optimizer=trial.optimizer):
        pass
    if not args.cpu:
        torch.cuda.synchronize()
    print(json.dumps({"train_s": time.perf_counter() - started,
                      "peak_bytes": int(torch.cuda.max_memory_allocated()) if not args.cpu
                      else 0,
                      "reserved_bytes": int(torch.cuda.max_memory_reserved()) if not args.cpu
                      else 0}), flush=True)


def check_packing(args: argparse.Namespace, counts: list[int]) -> list[dict]:
    """Part 3: k processes train the same trial at once; trials per GPU-hour and memory."""
    rows = []
    for k in counts:
        command = [sys.executable, __file__, "--worker", "0", "--epochs", str(args.epochs),
                   "--n-train", str(args.n_train)] + (["--cpu"] if args.cpu else [])
        started = time.perf_counter()
        procs = [subprocess.Popen(command[:3] + [str(i)] + command[4:], stdout=subprocess.PIPE,
                                  text=True) for i in range(k)]
        outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1])
                for p in procs]
        wall = time.perf_counter() - started
        train = max(o["train_s"] for o in outs)
        rows.append({"processes": k, "wall_s": round(wall, 2), "train_s": round(train, 2),
                     "trials_per_gpu_hour": round(k * 3600 / train, 1),
                     "peak_mib_each": [round(o["peak_bytes"] / 2**20, 1) for o in outs],
                     "reserved_mib_each": [round(o["reserved_bytes"] / 2**20, 1) for o in outs]})
        print(f"packing  {k} process(es): {train:6.1f} s of training (wall {wall:6.1f} s), "
              f"{rows[-1]['trials_per_gpu_hour']:8.1f} trials per GPU-hour, peak "
              f"{max(rows[-1]['peak_mib_each'])} MiB each", flush=True)
    return rows


def gpu_facts(cuda: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                             "python": platform.python_version(), "host": platform.node(),
                             "date": dt.datetime.now().isoformat(timespec="seconds"),
                             "loadavg": os.getloadavg()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        try:
            facts["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            facts["driver"] = "unknown (no nvidia-smi)"
    return facts


def _from(row: dict[str, Any]) -> str:
    """Where a method's first loss is not the first epoch's (mskd): which epoch it is."""
    epoch = row.get("first_epoch", 1)
    return f" (epoch {epoch})" if epoch > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the code paths on the CPU")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the packing trial")
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--packing", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    cuda = not args.cpu
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (run with --cpu to check the code paths)")
    device = torch.device("cuda" if cuda else "cpu")
    spec = parse_spec(SPEC)
    started = time.perf_counter()
    result = {"machine": gpu_facts(cuda), "methods": check_methods(spec, device, args.n_train,
                                                                  cuda)}
    result["fit"] = check_fit(spec, device, args.n_train, cuda)
    result["packing"] = check_packing(args, args.packing)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    per_hour = {r["processes"]: r["trials_per_gpu_hour"] for r in result["packing"]}
    best = max(per_hour, key=per_hour.get)
    ratio = per_hour[best] / per_hour[min(per_hour)]
    headline = (f"gpu_check: {ratio:.2f}x trials per GPU-hour with {best} processes sharing "
                f"the GPU against {min(per_hour)} (target 1.00)")
    result["headline"] = headline
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"gpu_check{'-cpu' if args.cpu else ''}-{stamp}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    m = result["machine"]
    lines = [f"# gpu_check {m['date']}", "",
             f"{m.get('gpu', 'CPU (code paths only)')}, driver {m.get('driver', '-')}, torch "
             f"{m['torch']} (CUDA {m['cuda']}), Python {m['python']}, host {m['host']}; "
             f"{result['wall_s']} s in all.", "",
             "| method | teacher outputs | loss, first epoch | last epoch | fell | 4 epochs | "
             "host sync in a step |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['teacher_outputs']} | {r['first_loss']:.3f}{_from(r)} | "
              f"{r['last_loss']:.3f} | {'yes' if r['loss_fell'] else 'NO'} | {r['epochs_s']} s "
              f"| {r['sync_in_step'] or 'none'} |" for r in result["methods"]]
    lines += ["", "| method | `fit` probe peak | real epoch peak | probe / real | `gpus: fit` |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['probe_peak_bytes'] / 2**20:.1f} MiB | "
              f"{r['real_peak_bytes'] / 2**20:.1f} MiB | {r['probe_over_real']} | "
              f"{r['fit_share']} |" for r in result["fit"]]
    lines += ["", "| processes | training s (slowest) | wall s | trials per GPU-hour | "
              "peak MiB each | reserved MiB each |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['train_s']} | {r['wall_s']} | "
              f"{r['trials_per_gpu_hour']} | {max(r['peak_mib_each'])} | "
              f"{max(r['reserved_mib_each'])} |" for r in result["packing"]]
    (out / f"{name}.md").write_text("\n".join(lines + ["", headline, ""]), encoding="utf-8")
    print(f"results: {out / name}.md")
    print(headline)


if __name__ == "__main__":
    main()
