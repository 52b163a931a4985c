"""A smooth surface through scattered trials: Gaussian-process regression on a grid.

A search tries a few dozen (alpha, tau) points at most, while the other searched parameters
(learning rate, hint layer, ...) vary too. A GP with an anisotropic RBF kernel and a noise
term fits the trend and treats the rest as noise. Its hyperparameters (one length scale per
input, the noise share) maximise the marginal likelihood over a fixed grid, so the fit is
deterministic and a flat response gives a flat surface rather than a bumpy interpolation.
Length scales below 0.15 of a parameter's range are not considered: a few dozen trials cannot
resolve finer structure and would only draw stripes through single outliers.

numpy and scipy.linalg (144 Cholesky factorisations of at most 120 x 120 matrices): tens of
milliseconds per surface, so a report with dozens of surfaces builds in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_POINTS = 4
MAX_FIT_POINTS = 120  # the cost is cubic in the points; more adds little to a 2-D trend
LENGTH_SCALES = np.geomspace(0.15, 3.0, 6)  # in units of each input's observed range
NOISE_SHARES = np.array([0.01, 0.05, 0.2, 0.5])  # noise variance / total variance


@dataclass
class Surface:
    x: np.ndarray  # grid along the first input (n,)
    y: np.ndarray  # grid along the second input (m,)
    z: np.ndarray  # fitted mean, shape (m, n): z[j, i] at (x[i], y[j])
    sd: np.ndarray  # posterior standard deviation, same shape
    length_scales: tuple[float, float]  # chosen, in units of each input's range
    noise_share: float


def _sq_dists(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    d = (a[:, None, :] - b[None, :, :]) / scale
    return (d * d).sum(axis=2)


def fit_surface(x: list[float], y: list[float], z: list[float], n: int = 40,
                seed: int = 0) -> Surface | None:
    """Fit z over (x, y) and evaluate on an n x n grid spanning the points' range.

    Returns None when the points cannot carry a surface: fewer than ``MIN_POINTS``, or fewer
    than two distinct values along an input.
    """
    pts = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    values = np.asarray(z, float)
    keep = np.isfinite(pts).all(axis=1) & np.isfinite(values)
    pts, values = pts[keep], values[keep]
    if len(values) < MIN_POINTS or len(np.unique(pts[:, 0])) < 2 or len(np.unique(pts[:, 1])) < 2:
        return None
    low, high = pts.min(axis=0), pts.max(axis=0)
    unit = (pts - low) / (high - low)
    if len(values) > MAX_FIT_POINTS:
        pick = np.random.default_rng(seed).choice(len(values), MAX_FIT_POINTS, replace=False)
        unit, values = unit[pick], values[pick]
    mean, spread = float(values.mean()), float(values.std()) or 1.0
    t = (values - mean) / spread
    with _one_blas_thread():
        return _fit(unit, t, low, high, mean, spread, n)


def _one_blas_thread():
    """Small matrices: one BLAS thread beats several fighting over shared cores (by 100x
    on a loaded 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings threadpoolctl; without it, run as configured
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def _fit(unit: np.ndarray, t: np.ndarray, low: np.ndarray, high: np.ndarray, mean: float,
         spread: float, n: int) -> Surface | None:
    from scipy.linalg import solve_triangular

    k = len(t)
    eye = np.eye(k)
    dx2 = (unit[:, None, 0] - unit[None, :, 0]) ** 2
    dy2 = (unit[:, None, 1] - unit[None, :, 1]) ** 2
    best = None
    for lx in LENGTH_SCALES:
        for ly in LENGTH_SCALES:
            rbf = np.exp(-0.5 * (dx2 / lx**2 + dy2 / ly**2))
            for share in NOISE_SHARES:
                try:
                    chol = np.linalg.cholesky((1 - share) * rbf + share * eye)
                except np.linalg.LinAlgError:
                    continue
                w = solve_triangular(chol, t, lower=True, check_finite=False)
                lml = -0.5 * w @ w - np.log(np.diag(chol)).sum()
                if best is None or lml > best[0]:
                    best = (lml, lx, ly, share, chol)
    if best is None:
        return None
    _, lx, ly, share, chol = best
    alpha = solve_triangular(chol.T, solve_triangular(chol, t, lower=True), lower=False)
    gx, gy = np.linspace(low[0], high[0], n), np.linspace(low[1], high[1], n)
    mx, my = np.meshgrid(gx, gy)
    grid = (np.column_stack([mx.ravel(), my.ravel()]) - low) / (high - low)
    cross = (1 - share) * np.exp(-0.5 * _sq_dists(grid, unit, np.array([lx, ly])))
    fitted = cross @ alpha
    v = solve_triangular(chol, cross.T, lower=True, check_finite=False)
    var = np.clip((1 - share) - (v * v).sum(axis=0), 0.0, None)
    return Surface(gx, gy, (mean + spread * fitted).reshape(n, n),
                   (spread * np.sqrt(var)).reshape(n, n), (float(lx), float(ly)), float(share))
