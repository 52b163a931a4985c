"""``ikd``: intermediate KD, FitNets hints (Romero et al. 2015) at one (teacher, student) layer
pair plus the RKD loss: ``RKD + beta * MSE(regressor(student tap), teacher tap)``.

The regressor is a learned 1x1 conv + BN from the student's channels to the teacher's,
resampled when their spatial sizes differ; one probe batch tells it the channel counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdtune.hparams import parse_hint
from kdtune.methods.base import BuildContext, Losses, Method, StudySpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdtune.distill import Batch, Distiller


class IKD(Method):
    name = "ikd"
    summary = "FitNets hints at one layer pair + the RKD loss"
    searched = ("alpha", "tau", "hint_layer", "beta")
    loss_names = ("ce", "kd", "hint")
    colour = "#d62728"

    def check(self, spec: StudySpec) -> None:
        if not (spec.search.hint_layers or spec.distillation.hint_layer):
            raise ValueError(f"@search.hint_layers: method {self.name} needs a hint layer "
                             "(search.hint_layers or distillation.hint_layer)")

    def memory_variants(self, spec: StudySpec) -> list[str | None]:
        return list(spec.hint_choices())

    def build(self, student: nn.Module, teacher: nn.Module | None, hp: dict[str, Any],
              ctx: BuildContext) -> Distiller:
        import torch

        from kdtune.distill import Distiller
        from kdtune.losses import HintRegressor
        from kdtune.models.taps import Tapped

        teacher_layer, student_layer = parse_hint(hp["hint_layer"])
        tapped = Tapped(student, ctx.student_arch, student_layer)
        d = Distiller(self, student, hp, teacher, ctx.teacher_arch, (teacher_layer,),
                      extra={"tapped": tapped})
        with torch.no_grad():  # one probe batch tells the regressor its channel counts
            was_training = student.training
            student.eval()
            t_feat = d.live_teacher(ctx.example[:2])[teacher_layer]
            _, s_feat = tapped(ctx.example[:2])
            student.train(was_training)
        d.extra["regressor"] = HintRegressor(s_feat.shape[1], t_feat.shape[1])
        d.teacher_layer = teacher_layer
        return d

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        from kdtune.losses import hint_loss, rkd_losses
        from kdtune.teacher_outputs import LOG_PROBS

        alpha, tau = d.hp["alpha"], d.hp["tau"]
        out = d.teacher_out(batch, tau)
        teacher_features = out[d.teacher_layer]
        logits, student_features = d.extra["tapped"](batch.images)
        losses = rkd_losses(logits, None, batch.labels, alpha, tau, out[LOG_PROBS])
        regressed = d.extra["regressor"](student_features, teacher_features.shape[-2:])
        losses["hint"] = d.hp["beta"] * hint_loss(regressed.float(), teacher_features.float())
        return logits, losses


METHOD = IKD()
