"""``reversed_scratch``: the spec's teacher architecture on labels alone, with the student's
budget: the baseline of ``reversed``, so that its gain compares two models of one architecture."""

from __future__ import annotations

from kdtune.methods.base import Baseline


class ReversedScratch(Baseline):
    name = "reversed_scratch"
    summary = "the teacher architecture on labels alone, student budget (reversed's baseline)"
    trains = "teacher"


METHOD = ReversedScratch()
