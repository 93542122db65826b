"""FID / KID maths against closed forms and an independent O(n²) float64 reference."""

import itertools

import numpy as np
import pytest

from aid_jax.metrics import fid as F


def _closed_form_diag(mu1, a, mu2, b):
    """FID of N(mu1, diag a) and N(mu2, diag b): ||mu1 - mu2||² + Σ(√a − √b)²."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_feature_stats_matches_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = F.feature_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.sum(0) / 50, rtol=1e-12)
    centred = x64 - x64.mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)  # unbiased (n - 1)


def test_fid_from_stats_diagonal_closed_form():
    rng = np.random.default_rng(1)
    for d in (1, 3, 16):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
        got = F.fid_from_stats(mu1, np.diag(a), mu2, np.diag(b))
        assert got == pytest.approx(_closed_form_diag(mu1, a, mu2, b), rel=1e-10, abs=1e-12)


def test_fid_from_stats_commuting_covariances_closed_form():
    # Q diag(a) Qᵀ and Q diag(b) Qᵀ commute, so the trace term is still Σ(√a − √b)².
    rng = np.random.default_rng(2)
    d = 8
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = F.fid_from_stats(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(_closed_form_diag(mu1, a, mu2, b), rel=1e-9)


def test_fid_from_stats_identical_and_mean_shift_only():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(5, 5))
    sigma = m @ m.T + np.eye(5)
    mu = rng.normal(size=5)
    assert F.fid_from_stats(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-10)
    shift = np.arange(5.0)
    assert F.fid_from_stats(mu, sigma, mu + shift, sigma) == pytest.approx(30.0, rel=1e-10)


def test_fid_of_sampled_gaussians_close_to_closed_form():
    rng = np.random.default_rng(4)
    n = 200_000
    mu1, mu2 = np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, -0.5, 0.0, 0.0])
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 1.0, 2.0])
    x = mu1 + rng.normal(size=(n, 4)) * np.sqrt(a)
    y = mu2 + rng.normal(size=(n, 4)) * np.sqrt(b)
    expected = _closed_form_diag(mu1, a, mu2, b)  # 1.25 + 2.05
    assert F.fid(x, y) == pytest.approx(expected, abs=0.03)


def test_fid_same_features_is_zero_and_symmetric():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(400, 32)), 0)  # ReLU-like, as the classifier's
    y = np.maximum(rng.normal(size=(300, 32)) + 0.2, 0)
    assert abs(F.fid(x, x)) < 1e-8
    assert F.fid(x, y) > 0.1
    assert F.fid(x, y) == pytest.approx(F.fid(y, x), rel=1e-9)


def test_fid_singular_covariance_falls_back():
    # Fewer samples than dimensions and a dead unit: both covariances are singular.
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(10, 20)), rng.normal(size=(10, 20)) + 1
    x[:, 0] = y[:, 0] = 0
    value = F.fid(x, y)
    assert np.isfinite(value) and value > 0
    assert F.fid_from_stats(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == (
        pytest.approx(3.0, abs=1e-5)
    )


def test_fid_input_errors():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="dimensions differ"):
        F.fid(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        F.fid(np.zeros(5), x)
    with pytest.raises(ValueError, match="NaN"):
        F.fid(np.full((5, 3), np.nan), x)
    with pytest.raises(ValueError, match="at least 2"):
        F.feature_stats(np.zeros((1, 3)))


# ---------------------------------------------------------------------------------------------
# KID


def _reference_mmd2(x, y):
    """Unbiased MMD² with k(u, v) = (u·v / d + 1)³, one pair at a time in Python floats."""
    m, d = len(x), x.shape[1]

    def k(u, v):
        return (sum(float(p) * float(q) for p, q in zip(u, v, strict=True)) / d + 1.0) ** 3

    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (m * m)


def test_kid_matches_direct_reference_full_subset():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
    mean, std = F.kid(x, y, num_subsets=3, subset_size=100)  # clipped to 12: the whole sets
    assert mean == pytest.approx(_reference_mmd2(x, y), rel=1e-12, abs=1e-14)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_matches_direct_reference_random_subsets():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) * 1.5
    mean, std = F.kid(x, y, num_subsets=6, subset_size=8, seed=3)
    subsets = F.kid_subsets(30, 25, 6, 8, 3)
    assert all(len(ia) == len(ib) == 8 and len(set(ia)) == 8 for ia, ib in subsets)
    ref = np.array([_reference_mmd2(x[ia], y[ib]) for ia, ib in subsets])
    assert mean == pytest.approx(ref.mean(), rel=1e-12)
    assert std == pytest.approx(ref.std(), rel=1e-10)


def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    mean, std = F.kid(a, b, num_subsets=50, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-3
    shifted_mean, shifted_std = F.kid(a, b + 0.5, num_subsets=50, subset_size=500)
    assert shifted_mean > 0.05 and shifted_mean > 10 * shifted_std / np.sqrt(50)
    assert shifted_mean > 10 * abs(mean)


def test_kid_symmetry():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.2
    # Subsets covering both sets: exactly symmetric.
    assert F.kid(a, b, subset_size=40, num_subsets=2)[0] == pytest.approx(
        F.kid(b, a, subset_size=40, num_subsets=2)[0], rel=1e-12
    )
    # Random subsets: symmetric per subset; swapping the arguments only changes which are drawn.
    for ia, ib in F.kid_subsets(40, 40, 3, 10, 0):
        assert F.mmd2_unbiased(a[ia], b[ib]) == pytest.approx(
            F.mmd2_unbiased(b[ib], a[ia]), rel=1e-12
        )


def test_kid_input_errors_and_clipping():
    x = np.random.default_rng(11).normal(size=(5, 3))
    with pytest.raises(ValueError, match="dimensions differ"):
        F.kid(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        F.kid(x[:1], x)
    mean, _ = F.kid(x, np.concatenate([x, x]), num_subsets=4, subset_size=1000)
    assert np.isfinite(mean)
