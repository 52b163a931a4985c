"""``mskd``: multiple-stage KD (Xu et al. 2022): a classifier after every student stage, each
exit trained on ``(1-alpha)*CE + alpha*tau**2*KL(teacher || exit)``, in phases
(:func:`active_exits`); the prediction is the ensemble of the exits (the mean of their
probabilities). Rows report the ensemble as ``test_acc`` and every exit in ``exit_acc_json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdtune.methods.base import BuildContext, Losses, Method, StudySpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdtune.distill import Batch, Distiller


def active_exits(epoch: int, epochs: int, n_exits: int) -> int:
    """How many exits (shallowest first) train in 0-based ``epoch`` of ``epochs``.

    The first half of the budget is split evenly into ``n_exits - 1`` phases, phase p training
    exits 1..p (a shallow exit learns first, deeper ones join); the second half trains every
    exit, so the deepest classifier gets at least half the budget.
    """
    warm = epochs // 2
    if n_exits <= 1 or epoch >= warm:
        return n_exits
    return 1 + epoch * (n_exits - 1) // warm


class MSKD(Method):
    name = "mskd"
    summary = "multi-stage KD: an exit per student stage, each taught, trained in phases"

    def check(self, spec: StudySpec) -> None:
        from kdtune.models import arch_taps

        if len(arch_taps(spec.student.arch, spec.student.options)) < 2:
            raise ValueError(f"@methods: {self.name} needs a student with at least two stages "
                             f"({spec.student.label} has one)")

    def build(self, student: nn.Module, teacher: nn.Module | None, hp: dict[str, Any],
              ctx: BuildContext) -> Distiller:
        from kdtune.distill import Distiller
        from kdtune.models.taps import MultiExit

        d = Distiller(self, student, hp, teacher, ctx.teacher_arch)
        d.extra["multi_exit"] = MultiExit(student, ctx.student_arch, ctx.num_classes,
                                          ctx.example)
        d.n_exits = len(d.extra["multi_exit"].taps) + 1
        d.active = d.n_exits
        return d

    def begin_epoch(self, d: Distiller, epoch: int, epochs: int) -> None:
        d.active = active_exits(epoch, epochs, d.n_exits)

    def predictor(self, d: Distiller) -> nn.Module:
        return d.extra["multi_exit"].exit(None)

    def exit_models(self, d: Distiller) -> dict[str, nn.Module]:
        multi_exit = d.extra["multi_exit"]
        exits = {f"exit{i + 1}": multi_exit.exit(i) for i in range(d.n_exits)}
        return exits | {"ensemble": multi_exit.exit(None)}

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        from kdtune.losses import rkd_losses
        from kdtune.teacher_outputs import LOG_PROBS

        alpha, tau = d.hp["alpha"], d.hp["tau"]
        teacher_log_probs = d.teacher_out(batch, tau)[LOG_PROBS]
        exits = d.extra["multi_exit"](batch.images)
        losses: Losses = {}
        for logits in exits[:d.active]:
            for name, value in rkd_losses(logits, None, batch.labels, alpha, tau,
                                          teacher_log_probs).items():
                losses[name] = losses[name] + value if name in losses else value
        return exits[-1], losses


METHOD = MSKD()
