"""What a distiller asks of its teacher: logits and tapped features, run live or cached.

A frozen teacher gives the same outputs for the same image every epoch. When augmentation is
off, the images of a batch are exactly rows of the training tensor, so the teacher's outputs for
the whole training split are computed once (:func:`precompute`) and every trial of the worker
process reuses them by row index (:class:`CachedTeacher`). With augmentation on, every batch is
new and the teacher runs on it (:class:`LiveTeacher`, under ``no_grad``; the training loop's bf16
autocast covers it on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.data import normalize
from kdtune.models import ARCHS

LOGITS = "logits"
LOG_PROBS = "log_probs"  # log_softmax(logits / tau), present when a distiller asks with its tau


def _log_probs(logits: torch.Tensor, tau: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / tau, dim=1)


class LiveTeacher:
    """The frozen teacher run on each batch; returns ``{"logits": ..., tap: features, ...}``.

    Not an ``nn.Module`` on purpose: a distiller holding it keeps the teacher out of its
    parameters and its ``state_dict``.
    """

    def __init__(self, teacher: nn.Module, arch: str | None = None,
                 taps: Sequence[str] = ()) -> None:
        teacher.eval()
        teacher.requires_grad_(False)
        self.model = teacher
        self.taps = tuple(dict.fromkeys(taps))  # unique, in order
        self.net: nn.Module | None = None
        if self.taps:
            if arch is None:
                raise ValueError("tapping teacher features needs the teacher's architecture")
            # imported here: torchvision.models costs every trial worker ~1.1 s of CPU at
            # start (measured 2026-12-03), and only trials that tap features need it
            from torchvision.models.feature_extraction import create_feature_extractor

            nodes = {tap: tap for tap in self.taps} | {ARCHS[arch].logits_node: LOGITS}
            self.net = create_feature_extractor(teacher, return_nodes=nodes).eval()

    def __call__(self, images: torch.Tensor, index: torch.Tensor | None = None,
                 tau: float | None = None) -> dict[str, torch.Tensor]:
        # no_grad, not inference_mode: inference tensors cannot be saved for backward, and an
        # MSE against teacher features saves its target
        with torch.no_grad():
            out = {LOGITS: self.model(images)} if self.net is None else dict(self.net(images))
            if tau is not None:
                out[LOG_PROBS] = _log_probs(out[LOGITS], tau)
        return out

    def eval(self) -> None:
        self.model.eval()
        if self.net is not None:
            self.net.eval()


class CachedTeacher:
    """Teacher outputs for every row of an un-augmented training tensor, looked up by index."""

    KEEP_TAUS = 4  # soft targets kept per temperature (trials of one search differ in tau)

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        self.outputs = outputs
        self._log_probs: dict[float, torch.Tensor] = {}

    def log_probs(self, tau: float) -> torch.Tensor:
        """``log_softmax(logits / tau)`` of every row, computed once per temperature."""
        if tau not in self._log_probs:
            while len(self._log_probs) >= self.KEEP_TAUS:
                self._log_probs.pop(next(iter(self._log_probs)))
            with torch.no_grad():
                self._log_probs[tau] = _log_probs(self.outputs[LOGITS], tau)
        return self._log_probs[tau]

    def __call__(self, images: torch.Tensor, index: torch.Tensor | None = None,
                 tau: float | None = None) -> dict[str, torch.Tensor]:
        if index is None:
            raise ValueError("cached teacher outputs need the batch's row indices; the loop "
                             "passes them only for un-augmented batches")
        # with tau the caller reads soft targets, not logits: one gather fewer per step
        out = {name: values[index] for name, values in self.outputs.items()
               if tau is None or name != LOGITS}
        if tau is not None:
            out[LOG_PROBS] = self.log_probs(tau)[index]
        return out

    def eval(self) -> None:  # nothing to switch: the outputs are fixed
        pass

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.outputs.values())


@torch.inference_mode()
def precompute(teacher: LiveTeacher, train_x: torch.Tensor, mean: tuple[float, ...],
               std: tuple[float, ...], batch_size: int = 256,
               amp: bool = True) -> dict[str, torch.Tensor]:
    """The teacher's outputs for every row of uint8 ``train_x``, normalised as the loop does.

    Indexing a cached tensor outside inference mode gives an ordinary tensor, so the rows can
    enter any loss.
    """
    teacher.eval()
    from kdtune.devices import autocast

    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(train_x), batch_size):
        with autocast(train_x.device, amp):
            out = teacher(normalize(train_x[start:start + batch_size], mean, std))
        for name, value in out.items():
            chunks.setdefault(name, []).append(value)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def feature_bytes(teacher: LiveTeacher, example: torch.Tensor, n_rows: int) -> int:
    """Bytes the cached features (not logits) of ``n_rows`` images would take."""
    out = teacher(example[:1])
    return sum(v[0].numel() * v.element_size() for k, v in out.items() if k != LOGITS) * n_rows
