"""``ccd``: cosine confidence distillation, after "What Role Does Data Augmentation Play in
Knowledge Distillation?" (liwei-group/CCD; ../shared/SEEDS.md section 3), whose abstract says
only that CCD weights augmented samples by the teacher's confidence. The definition kdtune
implements:

    L = (1 - alpha) * CE(y, s) + alpha * tau**2 * mean_i w_i * KL_i(softmax(t/tau) || softmax(s/tau))
    w_i = cos(softmax(t_i), onehot(y_i)) = p_t,i[y_i] / ||p_t,i||_2   if image i was augmented
    w_i = 1                                                         otherwise

``softmax(t_i)`` is the teacher's plain (tau = 1) softmax on the image the student sees, so an
augmentation that took an image away from its class (a digit rotated out of recognition, a crop
that cut the object off) teaches less: the teacher is unsure of it, or sure of another class
(a weight near 0). A confident, correct teacher weighs ~1, so without augmentation CCD is RKD.
``w`` carries no gradient (the teacher is frozen). The loop tells a method which images the
policy changed (``Batch.augmented``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdtune.methods.base import Losses, Method, StudySpec

if TYPE_CHECKING:
    import torch

    from kdtune.distill import Batch, Distiller


def confidence_weights(teacher_logits: torch.Tensor, labels: torch.Tensor,
                       augmented: torch.Tensor | None) -> torch.Tensor:
    """``w_i``: the cosine between the teacher's softmax and the one-hot label for augmented
    images, 1 for the others (all of them when ``augmented`` is None)."""
    import torch

    probs = teacher_logits.float().softmax(1)
    cosine = probs.gather(1, labels.view(-1, 1)).squeeze(1) / probs.norm(dim=1)
    if augmented is None:
        return torch.ones_like(cosine)
    return torch.where(augmented, cosine, torch.ones_like(cosine))


class CCD(Method):
    name = "ccd"
    summary = "RKD with each augmented image's KD term weighted by the teacher's confidence"

    def check(self, spec: StudySpec) -> None:
        policies = {spec.training.augmentation, *(spec.search.augmentation or [])}
        if policies == {"none"}:
            raise ValueError(f"@training.augmentation: method {self.name} weights augmented "
                             "images by the teacher's confidence; with no augmentation it is "
                             "rkd (set training.augmentation or search.augmentation)")

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        import torch.nn.functional as F

        from kdtune.teacher_outputs import LOG_PROBS, LOGITS

        alpha, tau = d.hp["alpha"], d.hp["tau"]
        teacher = d.teacher_out(batch, tau)
        logits = d.student(batch.images)
        if batch.augmented is None:  # nothing augmented: every weight is 1 (a cache has no
            weights = None           # logits, only soft targets; it never sees augmented rows)
        else:
            weights = confidence_weights(teacher[LOGITS], batch.labels, batch.augmented)
        log_p_student = F.log_softmax(logits / tau, dim=1)
        kl = F.kl_div(log_p_student, teacher[LOG_PROBS], reduction="none",
                      log_target=True).sum(1)
        kd = (kl if weights is None else weights * kl).mean() * (alpha * tau * tau)
        return logits, {"ce": (1.0 - alpha) * F.cross_entropy(logits, batch.labels), "kd": kd}


METHOD = CCD()
