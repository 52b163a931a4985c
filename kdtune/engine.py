"""Plain PyTorch training and evaluation loops: no Ray in here, so tests run them bare.

``train_epochs`` is a generator: it yields one :class:`EpochReport` per epoch and the caller
decides what to do with it (a Ray trainable reports and checkpoints; a test collects).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdtune.augment import augment
from kdtune.data import Splits, batch_indices, normalize
from kdtune.distill import Batch, Distiller


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Budget:
    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    augmentation: str = "none"
    aug_share: float = 1.0  # fraction of each batch the policy augments
    amp: bool = True


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    losses: dict[str, float]
    val_acc: float
    epoch_s: float
    # the state at the end of this epoch, for a checkpoint; not metrics
    optimizer: torch.optim.Optimizer | None = None
    generator_state: torch.Tensor | None = None

    def metrics(self) -> dict[str, Any]:
        out = {"epoch": self.epoch, "train_loss": self.train_loss, "val_acc": self.val_acc,
               "epoch_s": self.epoch_s}
        out.update({f"loss_{name}": value for name, value in self.losses.items()})
        return out


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params: Any, budget: Budget) -> torch.optim.Optimizer:
    if budget.optimizer == "sgd":
        return torch.optim.SGD(params, lr=budget.lr, momentum=budget.momentum,
                               weight_decay=budget.weight_decay)
    if budget.optimizer == "adam":
        return torch.optim.Adam(params, lr=budget.lr, weight_decay=budget.weight_decay)
    raise ValueError(f"unknown optimizer '{budget.optimizer}'")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, splits: Splits,
             batch_size: int = 512, amp: bool = True) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 ``images``."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start:start + batch_size], splits.mean, splits.std)
        with _autocast(x.device, amp):
            logits = model(x)
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(labels))


@torch.no_grad()
def class_accuracies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     splits: Splits, batch_size: int = 512, amp: bool = True) -> dict[int, float]:
    """Top-1 accuracy in percent per class present in ``labels`` (the omit-one-class report)."""
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start:start + batch_size], splits.mean, splits.std)
        with _autocast(x.device, amp):
            predictions.append(model(x).argmax(1))
    model.train(was_training)
    correct = torch.cat(predictions) == labels
    return {int(c): 100.0 * float(correct[labels == c].float().mean())
            for c in torch.unique(labels).tolist()}


def train_step(distiller: Distiller, optimizer: torch.optim.Optimizer, batch: Batch,
               amp: bool = True, where: str = "") -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch``; returns the named losses. A NaN or infinite loss
    raises :class:`TrainingDiverged` before the step touches the weights."""
    with _autocast(batch.images.device, amp):
        _, losses = distiller(*batch)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {float(loss)}{where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses


def train_epochs(distiller: Distiller, splits: Splits, budget: Budget, *, seed: int,
                 start_epoch: int = 0, optimizer: torch.optim.Optimizer | None = None,
                 generator_state: torch.Tensor | None = None) -> Iterator[EpochReport]:
    """Train ``distiller`` for ``budget.epochs`` epochs, yielding a report after each.

    After each yield, ``distiller``, the optimizer (``report.optimizer``) and the batch
    generator's state are those of the end of that epoch, so a caller can checkpoint them and
    pass them back (``start_epoch``, ``optimizer``, ``generator_state``) to resume.
    """
    device = splits.train_x.device
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = optimizer or make_optimizer(params, budget)
    generator = torch.Generator()
    generator.manual_seed(seed)
    if generator_state is not None:
        generator.set_state(generator_state)
    mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)
    distiller.train()
    # row indices go to the distiller only while images are exactly rows of splits.train_x, so a
    # cache of teacher outputs by row can never serve an augmented image
    pass_index = budget.augmentation == "none"
    for epoch in range(start_epoch, budget.epochs):
        started = time.perf_counter()
        distiller.begin_epoch(epoch, budget.epochs)
        sums: dict[str, float] = {}
        seen = 0
        for index in batch_indices(len(splits.train_y), budget.batch_size, generator, device):
            images = splits.train_x[index].float().div_(255.0)
            images, augmented = augment(images, budget.augmentation, generator,
                                        budget.aug_share)
            labels = splits.train_y[index]
            batch = Batch((images - mean) / std, labels, index if pass_index else None,
                          augmented)
            losses = train_step(distiller, optimizer, batch, budget.amp,
                                where=f" in epoch {epoch + 1}")
            n = len(labels)
            seen += n
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
        mean_losses = {name: total / max(1, seen) for name, total in sums.items()}
        train_loss = sum(mean_losses.values())
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"loss became {train_loss} in epoch {epoch + 1}")
        val_acc = evaluate(distiller.predictor, splits.val_x, splits.val_y, splits,
                           amp=budget.amp)
        yield EpochReport(epoch + 1, train_loss, mean_losses, val_acc,
                          time.perf_counter() - started,
                          optimizer=optimizer, generator_state=generator.get_state())
