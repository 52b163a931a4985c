"""kdtune: hyperparameter studies of knowledge distillation on Ray Tune + Optuna."""

__version__ = "0.1.0"
