"""``scratch``: the spec's student on labels alone, the baseline of every student method."""

from __future__ import annotations

from kdtune.methods.base import Baseline


class Scratch(Baseline):
    name = "scratch"
    summary = "the student on labels alone (baseline)"
    colour = "#7f7f7f"


METHOD = Scratch()
