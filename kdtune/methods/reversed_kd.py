"""``reversed``: reversed KD (the Duke poster): the response loss of RKD with the roles swapped.
The model trained has the spec's **teacher** architecture and the student budget; it is taught
by a pretrained model of the spec's student architecture. Its baseline is ``reversed_scratch``
(the teacher architecture on labels alone), never ``scratch``: a gain compares two models of one
architecture. Rows carry ``arch`` (trained) and ``teacher_arch`` (teaching)."""

from __future__ import annotations

from kdtune.methods.base import Method, StudySpec


class ReversedKD(Method):
    name = "reversed"
    summary = ("reversed KD: a pretrained student-architecture model teaches the teacher "
               "architecture")
    trains = "teacher"
    taught_by = "student"
    baseline = "reversed_scratch"

    def check(self, spec: StudySpec) -> None:
        if self.baseline not in spec.methods:
            raise ValueError(f"@methods: method {self.name} needs its baseline {self.baseline} "
                             "(the teacher architecture on labels alone) in methods")


METHOD = ReversedKD()
