"""kdtune: hyperparameter studies of knowledge distillation on Ray Tune + Optuna.

From Python: ``kdtune.load_spec``, ``kdtune.validate``, ``kdtune.run``, ``kdtune.resume``,
``kdtune.load`` (see :mod:`kdtune.api`). They are imported on first use, so ``import kdtune``
(and the ``kdtune`` command) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Plan", "Run", "load", "load_spec", "resume", "run", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdtune' has no attribute {name!r}")
