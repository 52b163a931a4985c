"""The core study's published numbers (Belinga et al. 2024, Tables 5-7; ResNet50 teacher,
ResNet18 student, alpha = 0.7, tau = 4, full datasets), keyed by dataset, then by method (the
teacher and the scratch student under the names kdtune's rows give them). The one place in the
report that names methods: what the paper published for each."""

from __future__ import annotations

PUBLISHED: dict[str, dict[str, float]] = {
    "mnist": {"teacher": 98.33, "scratch": 97.90, "rkd": 98.00, "ikd": 98.43},
    "fashion_mnist": {"teacher": 89.90, "scratch": 88.47, "rkd": 87.60, "ikd": 89.97},
    "usps": {"teacher": 90.22, "scratch": 86.07, "rkd": 88.72, "ikd": 88.72},
    "cifar10": {"teacher": 75.23, "scratch": 63.47, "rkd": 64.13, "ikd": 74.70},
    "cifar100": {"teacher": 48.70, "scratch": 34.60, "rkd": 35.03, "ikd": 49.83},
}
# the paper's table for each method's comparison with the scratch student
TABLES = {"teacher": "Table 5", "rkd": "Table 6", "ikd": "Table 7"}
NOTE = ("Published: Belinga et al. 2024 (ResNet50 teacher → ResNet18 student, α = 0.7, τ = 4, "
        "full datasets): a reference for the direction of the effect, not a like-for-like "
        "comparison.")


def published(dataset: str, method: str) -> float | None:
    return PUBLISHED.get(dataset, {}).get(method)


def table_of(method: str) -> str | None:
    return TABLES.get(method)
