"""Distances between two sets of image features (numpy / scipy): FID and KID.

The features are the ``(N, 2048)`` Inception pool features of ``ddnm.perceptual.load_inception``;
these functions take any ``(N, D)`` arrays. FID compares the Gaussian fits of the two sets (Heusel et
al. 2017); KID is the unbiased MMD^2 with the cubic polynomial kernel ``k(a, b) = (a.b / D + 1)^3``,
averaged over random subsets (Binkowski et al. 2018).
"""

from __future__ import annotations

import numpy as np


def _features(f, name: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be (N, D) features with N >= 2, got shape {f.shape}")
    return f


class FeatureMoments:
    """Running mean and covariance of ``(N, D)`` feature batches, for FID without keeping the features.

    ``update(f)`` adds rows (merged in float64 by Chan et al.'s pairwise update, stable for any N);
    ``a.merge(b)`` adds another accumulator. ``mean`` ``(D,)``; ``cov`` ``(D, D)``, unbiased (ddof = 1)
    like ``np.cov(f, rowvar=False)``.
    """

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self._m2 = np.zeros((dim, dim))  # sum of outer products of deviations from the mean

    def update(self, f) -> FeatureMoments:
        f = np.asarray(f, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (N, {self.mean.shape[0]}), got shape {f.shape}")
        if len(f):
            other = FeatureMoments(f.shape[1])
            other.n, other.mean = len(f), f.mean(axis=0)
            d = f - other.mean
            other._m2 = d.T @ d
            self.merge(other)
        return self

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        n = self.n + other.n
        if other.n:
            delta = other.mean - self.mean
            self._m2 = self._m2 + other._m2 + np.outer(delta, delta) * (self.n * other.n / n)
            self.mean = self.mean + delta * (other.n / n)
            self.n = n
        return self

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        return self._m2 / (self.n - 1)


def _psd_eig(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix; eigenvalues under the numerical-rank tolerance
    (``max * D * eps``, as ``np.linalg.matrix_rank``) are set to 0, so rounding noise on the null space
    of a singular covariance does not add ``sqrt(noise)`` terms."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    tol = max(w.max(), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0), v


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = _psd_eig(s)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` (Heusel et al. 2017, eq. 6).

    The trace term is computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``, the square root of a
    symmetric PSD matrix (same eigenvalues as ``S_a S_b``), so no complex parts and no ``sqrtm`` failures
    on the singular covariances of fewer than D images.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mu_a.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu_a.shape} / {mu_b.shape}, "
                         f"cov {cov_a.shape} / {cov_b.shape}")
    ra = _psd_sqrt(cov_a)
    m = ra @ cov_b @ ra
    tr_covmean = np.sqrt(_psd_eig(m)[0]).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


def fid(feats_a, feats_b) -> float:
    """FID between two feature sets ``(N_a, D)`` and ``(N_b, D)`` (N >= 2 each; the standard FID wants
    thousands of images, since the covariance of N < D rows is singular and the estimate biased)."""
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b must have the same width, got {a.shape[1]} and {b.shape[1]}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples with the cubic polynomial kernel (Binkowski 2018, eq. 3)."""
    m, d = x.shape

    def k(p, q):
        return (p @ q.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kid(feats_a, feats_b, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID ``(mean, std)`` over ``subsets`` random subsets of ``subset_size`` rows of each set.

    Each subset draws ``subset_size`` rows of ``feats_a`` and then of ``feats_b`` without replacement from
    ``np.random.RandomState(seed)`` (the draws torch-fidelity makes, so the same seed gives the same
    number); std is over the subsets (ddof = 0). ``subset_size`` must be 2..min(N_a, N_b).
    """
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b must have the same width, got {a.shape[1]} and {b.shape[1]}")
    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(f"subset_size={subset_size}: must be 2..{min(len(a), len(b))} "
                         f"(the smaller set has {min(len(a), len(b))} rows)")
    if subsets < 1:
        raise ValueError(f"subsets={subsets}: must be >= 1")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), subset_size, replace=False)]
        y = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())
