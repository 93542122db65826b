"""VIPaint's loss terms against hand-computed cases, float64 NumPy and Monte Carlo
(VIPAINT.md §14.1, §14.3, §14.4): the Gaussian KL in both forms, the keypoint prior, the two
bridges, the Tweedie endpoint on Gaussian data, the prior-loss grid and interval choice, and the
reconstruction loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.vipaint import losses


def test_gauss_kl_exact_and_official():
    m, s, mp, c = 0.3, 0.7, -0.2, 1.3
    exact = np.log(c / s) + (s**2 + (m - mp) ** 2) / (2 * c**2) - 0.5
    official = np.log(c / s) + s**2 / (2 * c**2) + (c**2 / 2) * (m - mp) ** 2 - 0.5
    assert float(losses.gauss_kl(m, s, mp, c)) == pytest.approx(exact, rel=1e-6)
    assert float(losses.gauss_kl(m, s, mp, c, form="official")) == pytest.approx(official, rel=1e-6)
    # Monte Carlo: E_q[log q − log p] with 400k draws.
    rng = np.random.default_rng(0)
    x = m + s * rng.standard_normal(400_000)
    logq = -0.5 * ((x - m) / s) ** 2 - np.log(s)
    logp = -0.5 * ((x - mp) / c) ** 2 - np.log(c)
    assert np.mean(logq - logp) == pytest.approx(exact, abs=5e-3)
    # Zero for equal Gaussians; elementwise on arrays.
    np.testing.assert_allclose(losses.gauss_kl(np.ones(3), 2.0, np.ones(3), 2.0), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="form"):
        losses.gauss_kl(m, s, mp, c, form="slip")


def test_keypoint_prior_limits():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 4, 1)).astype(np.float32) * 2
    den = rng.standard_normal((2, 4, 4, 1)).astype(np.float32) * 0.5
    sa, sh = 1.6, 0.85
    # η̃ = 0: the deterministic DDIM / Euler step x̂0 + (σ'/σ)(x − x̂0), std 0.
    mean, c = losses.keypoint_prior(den, x, sa, sh, 0.0)
    np.testing.assert_allclose(mean, den + (sh / sa) * (x - den), rtol=1e-5, atol=1e-6)
    assert float(c) == 0.0
    # η̃ = 1: the ancestral step, mean x̂0 + (σ'²/σ)ε̂, std σ'√(1 − σ'²/σ²).
    mean, c = losses.keypoint_prior(den, x, sa, sh, 1.0)
    eps = (x - den) / sa
    np.testing.assert_allclose(mean, den + (sh**2 / sa) * eps, rtol=1e-5, atol=1e-6)
    assert float(c) == pytest.approx(sh * np.sqrt(1 - sh**2 / sa**2), rel=1e-6)
    # η̃ = √0.2 (official): c = √0.2 · the ancestral std.
    _, c = losses.keypoint_prior(den, x, sa, sh, np.sqrt(0.2))
    assert float(c) == pytest.approx(np.sqrt(0.2) * sh * np.sqrt(1 - sh**2 / sa**2), rel=1e-6)


def test_q_bridge_matches_simulation():
    """x_σ' = x_K + √(σ'² − s²)n₁, x_σ = x_σ' + √(σ² − σ'²)n₂; regress x_σ' on x_σ."""
    x_top, s_top, sigma, sigma_lo = 0.4, 0.9, 3.0, 1.7
    rng = np.random.default_rng(2)
    n = 400_000
    x_lo = x_top + np.sqrt(sigma_lo**2 - s_top**2) * rng.standard_normal(n)
    x_hi = x_lo + np.sqrt(sigma**2 - sigma_lo**2) * rng.standard_normal(n)
    slope, icpt = np.polyfit(x_hi - x_top, x_lo - x_top, 1)
    resid = np.var(x_lo - x_top - slope * (x_hi - x_top) - icpt)
    probe = np.array([-2.0, 0.5, 3.0])
    mean, var = losses.q_bridge(x_top, s_top, probe, sigma, sigma_lo)
    np.testing.assert_allclose(mean, x_top + slope * (probe - x_top) + icpt, atol=0.02)
    assert float(var) == pytest.approx(resid, rel=0.01)


def test_p_bridge_tweedie_endpoint_on_gaussian_data():
    """Data x0 ~ N(μ0, s0²): D(x; σ) = μ0 + s0²(x − μ0)/(s0² + σ²). The Tweedie endpoint is
    E[x_K | x_σ] = μ0 + (s0² + σ_K²)/(s0² + σ²)(x_σ − μ0), and the p-bridge is then the q-bridge
    towards it at the scheduled level σ_K."""
    mu0, s0, sigma_top, sigma, sigma_lo = 0.2, 0.5, 1.6, 5.0, 3.0
    x = np.linspace(-6, 6, 7)
    den = mu0 + s0**2 * (x - mu0) / (s0**2 + sigma**2)
    x_end = mu0 + (s0**2 + sigma_top**2) / (s0**2 + sigma**2) * (x - mu0)
    mean, var = losses.p_bridge(x, den, sigma, sigma_lo, sigma_top)
    want_mean, want_var = losses.q_bridge(x_end, sigma_top, x, sigma, sigma_lo)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    # The DDPM-posterior form: mean = x_σ − ((σ² − σ'²)/σ)·ε̂.
    eps = (x - den) / sigma
    np.testing.assert_allclose(mean, x - (sigma**2 - sigma_lo**2) / sigma * eps, rtol=1e-5)
    # The official endpoint differs (x_σ − √(σ² − σ_K²)·ε̂).
    mean_o, _ = losses.p_bridge(x, den, sigma, sigma_lo, sigma_top, endpoint="official")
    x_end_o = x - np.sqrt(sigma**2 - sigma_top**2) * eps
    big_v, big_v_lo = sigma**2 - sigma_top**2, sigma_lo**2 - sigma_top**2
    np.testing.assert_allclose(
        mean_o, x_end_o + big_v_lo / big_v * (x - x_end_o), rtol=1e-5, atol=1e-5
    )


def test_prior_grid_and_interval_choice():
    grid = np.asarray(losses.prior_grid(1.6, 80.0, intervals=140))
    assert grid.shape == (141,) and grid[0] == pytest.approx(1.6) and grid[-1] == pytest.approx(80)
    assert np.all(np.diff(grid) > 0)
    # ρ-spacing: g_j^{1/7} is linear in j.
    np.testing.assert_allclose(np.diff(grid ** (1 / 7)), np.diff(grid ** (1 / 7))[0], rtol=1e-4)
    g = jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], jnp.float32)  # M = 5 intervals
    # s_max = 1.0: g_0 = 1.0 is not > 1.0, so interval 1 (g_0, g_1] is invalid; valid j ∈ {2..5};
    # the lowest valid (2) is skipped: candidates j ∈ {3, 4, 5}, L = 3.
    u = jnp.asarray([0.0, 0.34, 0.99])
    hi, lo, count = losses.prior_interval(g, 1.0, u)
    assert int(count) == 3
    np.testing.assert_array_equal(hi, [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(lo, [3.0, 4.0, 5.0])
    # s_max = 0.5: all five valid, skip j = 1: L = 4.
    assert int(losses.prior_interval(g, 0.5, u)[2]) == 4
    # s_max above everything: no candidate.
    assert int(losses.prior_interval(g, 7.0, u)[2]) == 0
    # jit-able with a traced s_max.
    jax.jit(losses.prior_interval)(g, jnp.float32(2.5), u)


def test_reconstruction_loss_hand_case():
    y = np.zeros((1, 2, 2, 1), np.float32)
    p = np.array([[[[1.0], [-2.0]], [[3.0], [0.5]]]], np.float32)
    m = np.array([[[[1.0], [1.0]], [[0.0], [1.0]]]], np.float32)
    # observed errors 1 + 2 + 0.5 = 3.5 over 4 elements (all) or 3 (observed)
    assert float(losses.reconstruction_loss(p, y, m, l1_weight=1.0)[0]) == pytest.approx(3.5 / 4)
    got = losses.reconstruction_loss(p, y, m, l1_weight=2.0, kappa=1.5, normalise="observed")
    assert float(got[0]) == pytest.approx(2.0 * 1.5 * 3.5 / 3)
    lp = losses.reconstruction_loss(
        p, y, m, l1_weight=0.0, lpips_weight=3.0, lpips_fn=lambda a, b: jnp.sum(a - b, (1, 2, 3))
    )
    assert float(lp[0]) == pytest.approx(3.0 * -(1.0 - 2.0 + 0.5))  # holes masked out
    with pytest.raises(ValueError, match="lpips_fn"):
        losses.reconstruction_loss(p, y, m, lpips_weight=1.0)
