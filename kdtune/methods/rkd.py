"""``rkd``: response-based KD (Hinton et al. 2015), the core study's eq. 4:
``L = (1-alpha)*CE(y, s) + alpha*tau**2*KL(softmax(t/tau) || softmax(s/tau))``.

The loss is :class:`kdtune.methods.base.Method`'s default; this module only names it.
"""

from __future__ import annotations

from kdtune.methods.base import Method


class RKD(Method):
    name = "rkd"
    summary = "response-based KD, the paper's eq. 4"
    colour = "#1f77b4"


METHOD = RKD()
