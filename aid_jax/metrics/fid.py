"""Fréchet distance (FID) and kernel inception distance (KID) on feature arrays, in float64 NumPy.

The features come from any frozen network; in this project from the Fashion-MNIST classifier of
`aid_jax.metrics.classifier` (128-d penultimate layer), so the numbers are "FID_LeNet" /
"KID_LeNet" and are NOT comparable with Inception FID.

* FID (Heusel et al. 2017): ||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^{1/2}), with the
  unbiased covariances (n - 1) and `scipy.linalg.sqrtm` in float64 (real part), as pytorch-fid.
* KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, averaged over random subsets; returns (mean, std) over subsets.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

# pytorch-fid's offset for a singular covariance product.
SQRTM_EPS = 1e-6
# Tolerance on the imaginary part of the diagonal of sqrtm (pytorch-fid uses 1e-3).
IMAG_ATOL = 1e-3


def _as_features(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D] float64, covariance [D, D] float64 with the unbiased n - 1 normalisation)."""
    x = _as_features(features)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False, ddof=1)
    return mu, np.atleast_2d(sigma)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # A singular product makes sqrtm warn; the caller checks finiteness and falls back.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def fid_from_stats(mu1, sigma1, mu2, sigma2, eps: float = SQRTM_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"inconsistent statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular product: pytorch-fid's fallback, offset both covariances by eps * I.
        offset = np.eye(d) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
        if not np.isfinite(covmean).all():
            raise FloatingPointError("sqrtm of the covariance product is not finite")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > IMAG_ATOL:
            raise FloatingPointError(f"sqrtm has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid(features_a, features_b) -> float:
    """FID between two feature sets [N_a, D] and [N_b, D]."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return fid_from_stats(*feature_stats(a), *feature_stats(b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)³ for all pairs: [n, d] x [m, d] -> [n, m] (float64)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² estimate between two equally sized samples with the cubic kernel."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two samples of the same size >= 2, got {x.shape[0]}, {y.shape[0]}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off_diag - 2.0 * kxy.mean())


def kid_subsets(
    n_a: int, n_b: int, num_subsets: int, subset_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (indices into a, indices into b) of each KID subset, drawn without replacement."""
    m = min(subset_size, n_a, n_b)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n_a} and {n_b}")
    rng = np.random.default_rng(seed)
    return [
        (rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False))
        for _ in range(num_subsets)
    ]


def kid(
    features_a, features_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over `num_subsets` random subsets.

    `subset_size` is clipped to the smaller set; std is the population std (ddof 0) over the
    subsets, as torch-fidelity reports it. Each subset's MMD² is symmetric in (a, b), so KID is
    symmetric up to which subsets are drawn (exactly when the subsets cover both sets). Its scale
    follows the feature magnitude.
    """
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    values = np.array(
        [
            mmd2_unbiased(a[ia], b[ib])
            for ia, ib in kid_subsets(len(a), len(b), num_subsets, subset_size, seed)
        ]
    )
    return float(values.mean()), float(values.std())
