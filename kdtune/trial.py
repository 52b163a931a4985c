"""One trial, built in one place: the model trained, its loss module (the method's
:class:`~kdtune.distill.Distiller`, with the teacher live or cached), the optimizer and the
budget. The Ray trainable and ``gpus: fit``'s memory probe both build their trials here, so the
probe measures the training step a trial really runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdtune import methods
from kdtune.data import Splits
from kdtune.distill import Distiller
from kdtune.engine import Budget, make_optimizer
from kdtune.job import TrialJob
from kdtune.methods.base import BuildContext
from kdtune.models import build_model
from kdtune.spec import StudySpec

# serves a distiller's teacher outputs from a cache where that is exact; returns "cached" or
# "live" (see kdtune.trainables.use_cached_teacher)
TeacherCache = Callable[[Distiller, Budget], str]


@dataclass
class Trial:
    job: TrialJob
    model: nn.Module  # the model trained (a teacher's weights are saved from it)
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    budget: Budget
    teacher_outputs: str  # none (nobody teaches it), cached or live


def budget_for(spec: StudySpec, job: TrialJob) -> Budget:
    """Epochs and optimiser settings of ``job``: the teacher's or the students' budget; a
    search may set the student's lr, augmentation policy and augmented share per trial."""
    t, hp = spec.training, job.hp
    epochs = t.teacher_epochs if job.role == "teacher" else t.student_epochs
    return Budget(epochs=epochs, batch_size=t.batch_size, optimizer=t.optimizer,
                  lr=hp.lr if hp.lr is not None else t.lr, momentum=t.momentum,
                  weight_decay=t.weight_decay,
                  augmentation=hp.augmentation if hp.augmentation is not None
                  else t.augmentation,
                  aug_share=hp.aug_share if hp.aug_share is not None else t.aug_share,
                  amp=t.amp)


def method_hparams(spec: StudySpec, job: TrialJob) -> dict[str, Any]:
    """The distillation hyperparameters the loss module runs with: the trial's, and the
    spec's fixed values for those it does not set."""
    d, hp = spec.distillation, job.hp
    return {"alpha": hp.alpha if hp.alpha is not None else d.alpha,
            "tau": hp.tau if hp.tau is not None else d.tau,
            "beta": hp.beta if hp.beta is not None else d.beta,
            "hint_layer": hp.hint_layer or (spec.hint_choices() or [None])[0]}


def build_distiller(method: str, student: nn.Module, teacher: nn.Module | None,
                    hp: dict[str, Any], *, student_arch: str, teacher_arch: str | None = None,
                    example: torch.Tensor, num_classes: int | None = None) -> Distiller:
    """The loss module of ``method`` (a registry name) for ``student``, taught by ``teacher``
    (None for a baseline), with hyperparameters ``hp`` (alpha, tau, beta, hint_layer as the
    method needs them). ``example``: a float batch of two images, on the models' device.
    For use outside a study (a notebook, a test); a study's trials go through
    :func:`build_trial`."""
    info = methods.get(method)
    if info.distils and teacher is None:
        raise ValueError(f"method {method} needs a teacher")
    if num_classes is None:
        with torch.no_grad():
            was_training = student.training
            num_classes = int(student.eval()(example[:1]).shape[1])
            student.train(was_training)
    hp = {"beta": 1.0} | dict(hp)
    return info.build(student, teacher if info.distils else None, hp,
                      BuildContext(student_arch, teacher_arch, example, num_classes))


def build_trial(spec: StudySpec, job: TrialJob, splits: Splits, device: torch.device,
                teacher: nn.Module | None = None, cache: TeacherCache | None = None) -> Trial:
    """Build ``job`` on ``device``: seed, model, loss module, teacher outputs, optimizer.

    ``teacher`` (the frozen model teaching it, already on ``device``) must be loaded *before*
    this call: building it draws random numbers, which would otherwise shift the student's
    initialisation from worker to worker. The model is built right after seeding, then the
    method's extra parts (a hint regressor, exit heads), always in this order.
    """
    trained, teacher_spec = methods.trial_models(spec, job.method)
    method = methods.trainer_of(job.method)
    budget = budget_for(spec, job)
    torch.manual_seed(job.seed)
    model = build_model(trained.arch, splits.channels, splits.num_classes, splits.image_size,
                        trained.options).to(device)
    taught = method.distils and teacher is not None
    ctx = BuildContext(trained.arch, teacher_spec.arch if teacher_spec else None,
                       splits.train_x[:2].float().to(device), splits.num_classes)
    distiller = method.build(model, teacher if taught else None, method_hparams(spec, job),
                             ctx).to(device)
    teacher_outputs = "none"
    if taught:
        teacher_outputs = cache(distiller, budget) if cache is not None else "live"
    optimizer = make_optimizer([p for p in distiller.parameters() if p.requires_grad], budget)
    return Trial(job, model, distiller, optimizer, budget, teacher_outputs)
