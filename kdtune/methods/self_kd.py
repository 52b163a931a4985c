"""``self``: self-distillation (the Duke poster; born-again networks): the response loss of RKD,
taught by a pretrained model of the student's own architecture (trained once per dataset with
the teacher's recipe and stored like a teacher)."""

from __future__ import annotations

from kdtune.methods.base import Method


class SelfKD(Method):
    name = "self"
    summary = "self-distillation: a pretrained copy of the student's architecture teaches it"
    taught_by = "student"


METHOD = SelfKD()
