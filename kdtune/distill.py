"""Distillation methods: one small module per method, each returning a dict of named losses.

The training loop calls ``distiller(images, labels, index)`` and sums the returned losses; it
never knows which method runs (mdistiller's design). A method is a loss plus the teacher outputs
it needs: ``scratch`` needs none, ``rkd``/``self``/``reversed`` the teacher's logits, ``ikd`` its
logits and one hint layer's features, ``at`` its logits and the features of every stage it
pairs, ``mskd`` its logits for every exit of a multi-exit student. Teacher outputs come from a
:mod:`kdtune.teacher_outputs` provider: the live teacher, or rows of a cache looked up by
``index`` (the batch's rows in the training tensor, given only for un-augmented batches).
"""


from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.models import MultiExit, Tapped, model_taps
from kdtune.teacher_outputs import LOG_PROBS, LOGITS, CachedTeacher, LiveTeacher


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, tau: float,
            teacher_log_probs: torch.Tensor | None = None, weight: float = 1.0) -> torch.Tensor:
    """Hinton's soft-target term: ``tau**2 * KL(softmax(t/tau) || softmax(s/tau))``, batch mean.

    The KL runs from the teacher's distribution to the student's (the paper's eq. 4); the
    ``tau**2`` keeps its gradients on the scale of the cross-entropy as ``tau`` grows.
    ``teacher_log_probs`` (``log_softmax(t/tau)``, precomputed by a cached teacher) replaces
    ``teacher_logits``: on a tiny student that saves a tenth of the step. ``weight`` multiplies
    the result in the same (single) operation as ``tau**2``.
    """
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = (teacher_log_probs if teacher_log_probs is not None
                     else F.log_softmax(teacher_logits.float() / tau, dim=1))
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (weight * tau * tau)


def rkd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
               labels: torch.Tensor, alpha: float, tau: float,
               teacher_log_probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The paper's eq. 4 as named terms: ``(1-alpha)*CE + alpha*tau**2*KL``."""
    return {"ce": (1.0 - alpha) * F.cross_entropy(student_logits, labels),
            "kd": kd_loss(student_logits, teacher_logits, tau, teacher_log_probs, weight=alpha)}


class HintRegressor(nn.Module):
    """FitNets regressor: 1x1 conv + BN from student to teacher channels, resampled to match."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                                  nn.BatchNorm2d(teacher_channels))

    def forward(self, student_features: torch.Tensor, teacher_size: torch.Size) -> torch.Tensor:
        out = self.proj(student_features)
        if out.shape[-2:] != teacher_size:
            out = F.interpolate(out, size=teacher_size, mode="bilinear", align_corners=False)
        return out


def hint_loss(regressed: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(regressed, teacher_features)


def attention_map(features: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squared activations, flattened
    and L2-normalised per image (N x H*W), resampled to ``size`` when given.

    Channels are averaged away, so a teacher and a student of any widths compare directly; the
    map (not the features) is resampled when their spatial sizes differ.
    """
    amap = features.float().pow(2).mean(1, keepdim=True)
    if size is not None and amap.shape[-2:] != size:
        amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    return F.normalize(amap.flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between the normalised attention maps, batch mean.

    ``beta / 2`` times this, summed over layer pairs, is the paper's AT term. Its reference code
    averages over the map's H*W cells instead and uses beta = 1000: at 32x32 maps that is
    1000 / 1024 ~ our beta = 1.
    """
    teacher_map = attention_map(teacher_features)
    student_map = attention_map(student_features, teacher_features.shape[-2:])
    return (student_map - teacher_map).pow(2).sum(1).mean()


def aligned_pairs(teacher_taps: tuple[str, ...],
                  student_taps: tuple[str, ...]) -> list[tuple[str, str]]:
    """(teacher tap, student tap) pairs matched from the deepest stage back, as AT pairs them."""
    n = min(len(teacher_taps), len(student_taps))
    return list(zip(teacher_taps[len(teacher_taps) - n:], student_taps[len(student_taps) - n:]))


def mskd_active_exits(epoch: int, epochs: int, n_exits: int) -> int:
    """How many exits (shallowest first) train in 0-based ``epoch`` of ``epochs``.

    The first half of the budget is split evenly into ``n_exits - 1`` phases, phase p training
    exits 1..p (a shallow exit learns first, deeper ones join); the second half trains every
    exit, so the deepest classifier gets at least half the budget.
    """
    warm = epochs // 2
    if n_exits <= 1 or epoch >= warm:
        return n_exits
    return 1 + epoch * (n_exits - 1) // warm


class Distiller(nn.Module):
    """Base: holds the student; ``forward`` returns ``(student_logits, {loss_name: loss})``.

    ``index`` holds the batch's row indices in the training tensor when the images are exactly
    those rows (no augmentation); a cached teacher needs it, every other part ignores it.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predictor(images)

    @property
    def predictor(self) -> nn.Module:
        """The model that validation and test accuracy measure (the student, for most methods)."""
        return self.student

    def exit_models(self) -> dict[str, nn.Module]:
        """Further models worth a test accuracy of their own (MSKD's exits); name -> model."""
        return {}

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the loop before each 0-based ``epoch`` (phased methods switch here)."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class Scratch(Distiller):
    """The baseline: the student on labels alone."""

    def forward(self, images, labels, index=None):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


class WithTeacher(Distiller):
    """Base of the methods with a frozen teacher, read through a live or cached provider."""

    def __init__(self, student: nn.Module, teacher: nn.Module, teacher_arch: str | None = None,
                 teacher_taps: tuple[str, ...] = ()) -> None:
        super().__init__(student)
        live = LiveTeacher(teacher, teacher_arch, teacher_taps)
        # kept out of the module tree so .parameters() and state_dict() are the student's alone
        self.__dict__["live_teacher"] = live
        self.__dict__["teacher"] = live

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        """The teacher features this method reads (beside the logits)."""
        return self.live_teacher.taps

    def use_cached_teacher(self, cached: CachedTeacher) -> None:
        """Read teacher outputs from ``cached`` rows instead of running the teacher."""
        missing = {LOGITS, *self.teacher_taps} - set(cached.outputs)
        if missing:
            raise ValueError(f"the cache lacks teacher outputs {sorted(missing)}")
        self.__dict__["teacher"] = cached

    def teacher_out(self, images: torch.Tensor, index: torch.Tensor | None,
                    tau: float | None = None) -> dict[str, torch.Tensor]:
        """Teacher logits, tapped features and, given ``tau``, ``log_softmax(logits/tau)``."""
        return self.teacher(images, index, tau)

    def train(self, mode: bool = True) -> WithTeacher:
        super().train(mode)
        self.teacher.eval()  # a teacher's BatchNorm statistics never move
        return self


class RKD(WithTeacher):
    """Response-based KD (Hinton 2015; the paper's eq. 4)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float, tau: float,
                 teacher_arch: str | None = None) -> None:
        super().__init__(student, teacher, teacher_arch)
        self.alpha, self.tau = float(alpha), float(tau)

    def forward(self, images, labels, index=None):
        teacher = self.teacher_out(images, index, self.tau)
        logits = self.student(images)
        return logits, rkd_losses(logits, None, labels, self.alpha, self.tau, teacher[LOG_PROBS])


class SelfKD(RKD):
    """Self-distillation (the Duke poster; born-again networks): the response loss of RKD, taught
    by a pretrained model of the student's own architecture."""


class ReversedKD(RKD):
    """Reversed KD (the Duke poster): the response loss of RKD with the roles swapped. The model
    trained has the spec's teacher architecture; its teacher is a pretrained model of the
    spec's student architecture."""


class IKD(WithTeacher):
    """Intermediate KD: FitNets hints at one (teacher, student) layer pair plus the RKD loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_arch: str,
                 teacher_arch: str, teacher_layer: str, student_layer: str, alpha: float,
                 tau: float, beta: float, example: torch.Tensor) -> None:
        super().__init__(student, teacher, teacher_arch, (teacher_layer,))
        self.teacher_layer = teacher_layer
        self.tapped_student = Tapped(student, student_arch, student_layer)
        self.alpha, self.tau, self.beta = float(alpha), float(tau), float(beta)
        with torch.no_grad():  # one probe batch tells the regressor its channel counts
            was_training = student.training
            student.eval()
            t_feat = self.live_teacher(example[:2])[teacher_layer]
            _, s_feat = self.tapped_student(example[:2])
            student.train(was_training)
        self.regressor = HintRegressor(s_feat.shape[1], t_feat.shape[1])

    def forward(self, images, labels, index=None):
        out = self.teacher_out(images, index, self.tau)
        teacher_features = out[self.teacher_layer]
        logits, student_features = self.tapped_student(images)
        losses = rkd_losses(logits, None, labels, self.alpha, self.tau, out[LOG_PROBS])
        regressed = self.regressor(student_features, teacher_features.shape[-2:])
        losses["hint"] = self.beta * hint_loss(regressed.float(), teacher_features.float())
        return logits, losses


class AT(WithTeacher):
    """Attention transfer (Zagoruyko & Komodakis 2017) at every aligned stage pair, plus the RKD
    loss: ``(1-alpha)*CE + alpha*tau**2*KL + beta/2 * sum_pairs at_loss``.

    No regressor: attention maps have no channels, so any teacher/student widths pair up.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_arch: str,
                 teacher_arch: str, alpha: float, tau: float, beta: float) -> None:
        self.pairs = aligned_pairs(model_taps(teacher, teacher_arch),
                                   model_taps(student, student_arch))
        super().__init__(student, teacher, teacher_arch, tuple(t for t, _ in self.pairs))
        from torchvision.models.feature_extraction import create_feature_extractor

        from kdtune.models import ARCHS

        nodes = {s: s for _, s in self.pairs} | {ARCHS[student_arch].logits_node: LOGITS}
        self.tapped_student = create_feature_extractor(student, return_nodes=nodes)
        self.alpha, self.tau, self.beta = float(alpha), float(tau), float(beta)

    def forward(self, images, labels, index=None):
        teacher = self.teacher_out(images, index, self.tau)
        student = self.tapped_student(images)
        logits = student[LOGITS]
        losses = rkd_losses(logits, None, labels, self.alpha, self.tau, teacher[LOG_PROBS])
        losses["at"] = self.beta / 2 * sum(at_loss(student[s], teacher[t]) for t, s in self.pairs)
        return logits, losses


class _Exit(nn.Module):
    """One exit of a multi-exit model, as a plain classifier (for evaluation)."""

    def __init__(self, multi_exit: MultiExit, exit_index: int | None) -> None:
        super().__init__()
        self.multi_exit, self.exit_index = multi_exit, exit_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exits = self.multi_exit(x)
        if self.exit_index is not None:
            return exits[self.exit_index]
        # the ensemble: the mean of the exits' probabilities (log, so argmax and CE both work)
        probs = torch.stack([e.float().softmax(1) for e in exits]).mean(0)
        return probs.clamp_min(1e-12).log()


class MSKD(WithTeacher):
    """Multiple-stage KD (Xu et al. 2022): a classifier after every student stage, each exit
    trained on ``(1-alpha)*CE + alpha*tau**2*KL(teacher || exit)``, in phases
    (:func:`mskd_active_exits`); the prediction is the ensemble of the exits.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_arch: str,
                 alpha: float, tau: float, num_classes: int, example: torch.Tensor) -> None:
        super().__init__(student, teacher)
        self.multi_exit = MultiExit(student, student_arch, num_classes, example)
        self.n_exits = len(self.multi_exit.taps) + 1
        self.active = self.n_exits
        self.alpha, self.tau = float(alpha), float(tau)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.active = mskd_active_exits(epoch, epochs, self.n_exits)

    @property
    def predictor(self) -> nn.Module:
        return _Exit(self.multi_exit, None)

    def exit_models(self) -> dict[str, nn.Module]:
        exits = {f"exit{i + 1}": _Exit(self.multi_exit, i) for i in range(self.n_exits)}
        return exits | {"ensemble": self.predictor}

    def forward(self, images, labels, index=None):
        teacher_log_probs = self.teacher_out(images, index, self.tau)[LOG_PROBS]
        exits = self.multi_exit(images)
        losses: dict[str, torch.Tensor] = {}
        for logits in exits[:self.active]:
            for name, value in rkd_losses(logits, None, labels, self.alpha, self.tau,
                                          teacher_log_probs).items():
                losses[name] = losses[name] + value if name in losses else value
        return exits[-1], losses


def build_distiller(method: str, student: nn.Module, teacher: nn.Module | None, config: dict,
                    *, student_arch: str, teacher_arch: str, example: torch.Tensor,
                    num_classes: int | None = None) -> Distiller:
    """The distiller for ``method`` with its hyperparameters from a trial ``config``.

    ``student`` is the model trained and ``teacher`` the frozen model teaching it, whatever the
    method: for ``reversed`` the caller passes a model of the spec's teacher architecture as
    ``student`` (see :mod:`kdtune.methods`).
    """
    if method in ("scratch", "reversed_scratch"):
        return Scratch(student)
    if teacher is None:
        raise ValueError(f"method {method} needs a teacher")
    if method in ("rkd", "self", "reversed"):
        cls = {"rkd": RKD, "self": SelfKD, "reversed": ReversedKD}[method]
        return cls(student, teacher, config["alpha"], config["tau"], teacher_arch=teacher_arch)
    if method == "ikd":
        from kdtune.spec import parse_hint

        teacher_layer, student_layer = parse_hint(config["hint_layer"])
        return IKD(student, teacher, student_arch=student_arch, teacher_arch=teacher_arch,
                   teacher_layer=teacher_layer, student_layer=student_layer,
                   alpha=config["alpha"], tau=config["tau"], beta=config.get("beta", 1.0),
                   example=example)
    if method == "at":
        return AT(student, teacher, student_arch=student_arch, teacher_arch=teacher_arch,
                  alpha=config["alpha"], tau=config["tau"], beta=config.get("beta", 1.0))
    if method == "mskd":
        if num_classes is None:
            with torch.no_grad():
                was_training = student.training
                num_classes = int(student.eval()(example[:1]).shape[1])
                student.train(was_training)
        return MSKD(student, teacher, student_arch=student_arch, alpha=config["alpha"],
                    tau=config["tau"], num_classes=num_classes, example=example)
    raise ValueError(f"unknown method '{method}'")
