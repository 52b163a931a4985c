"""``at``: attention transfer (Zagoruyko & Komodakis 2017) at every aligned stage pair, plus the
RKD loss: ``(1-alpha)*CE + alpha*tau**2*KL + beta/2 * sum_pairs at_loss``.

No regressor: attention maps have no channels, so any teacher/student widths pair up; stages
are paired from the deepest back (:func:`kdtune.losses.aligned_pairs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdtune.methods.base import BuildContext, Losses, Method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdtune.distill import Batch, Distiller


class AT(Method):
    name = "at"
    summary = "attention transfer at every aligned stage pair + the RKD loss"
    searched = ("alpha", "tau", "beta")
    loss_names = ("ce", "kd", "at")

    def build(self, student: nn.Module, teacher: nn.Module | None, hp: dict[str, Any],
              ctx: BuildContext) -> Distiller:
        from torchvision.models.feature_extraction import create_feature_extractor

        from kdtune.distill import Distiller
        from kdtune.losses import aligned_pairs
        from kdtune.models import ARCHS
        from kdtune.models.taps import model_taps
        from kdtune.teacher_outputs import LOGITS

        pairs = aligned_pairs(model_taps(teacher, ctx.teacher_arch),
                              model_taps(student, ctx.student_arch))
        nodes = {s: s for _, s in pairs} | {ARCHS[ctx.student_arch].logits_node: LOGITS}
        d = Distiller(self, student, hp, teacher, ctx.teacher_arch, tuple(t for t, _ in pairs),
                      extra={"tapped": create_feature_extractor(student, return_nodes=nodes)})
        d.pairs = pairs
        return d

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        from kdtune.losses import at_loss, rkd_losses
        from kdtune.teacher_outputs import LOG_PROBS, LOGITS

        alpha, tau = d.hp["alpha"], d.hp["tau"]
        teacher = d.teacher_out(batch, tau)
        student = d.extra["tapped"](batch.images)
        logits = student[LOGITS]
        losses = rkd_losses(logits, None, batch.labels, alpha, tau, teacher[LOG_PROBS])
        losses["at"] = d.hp["beta"] / 2 * sum(at_loss(student[s], teacher[t])
                                              for t, s in d.pairs)
        return logits, losses


METHOD = AT()
