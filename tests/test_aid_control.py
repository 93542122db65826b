"""Tests for aid_jax.aid.control: the controlled sampler on the step clock (AID.md §2), against
float64 NumPy references on the exact Gaussian denoiser and against aid_jax.sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import sampling
from aid_jax.aid import control
from aid_jax.gaussian import GaussianWorld

SHAPE = (3, 3, 1)
D = 9


@pytest.fixture(scope="module")
def world() -> GaussianWorld:
    return GaussianWorld.squared_exponential(3, 3, length_scale=1.5, variance=0.25)


def _linear_guidance(w: np.ndarray, v: np.ndarray):
    """μ(k, r, σ, x, D, dσ/dr) = w_k ⊙ x + v_k ⊙ D + r + σ/100 + (dσ/dr)/1000 (uses every
    argument), and its NumPy twin."""
    w32, v32 = jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32)

    def mu(k, r, sigma, x, den, ds_dr):
        return w32[k] * x + v32[k] * den + r + 0.01 * sigma + 0.001 * ds_dr

    def mu_np(k, r, sigma, x, den, ds_dr):
        return w[k] * x + v[k] * den + r + 0.01 * sigma + 0.001 * ds_dr

    return mu, mu_np


def _den64(world, x, sigma):
    return world.denoiser_f64(x, sigma)


def test_step_clock_and_policy_std():
    np.testing.assert_allclose(control.step_clock(4), [0, 0.25, 0.5, 0.75, 1.0])
    assert control.gaussian_policy_std(0.1, 0.1) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError, match="lam"):
        control.gaussian_policy_std(0.0, 0.1)
    with pytest.raises(ValueError, match="num_steps"):
        control.step_clock(0)


def test_euler_step_is_edm_euler_plus_dr_u(world):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, *SHAPE)) * 3.0
    u = rng.normal(size=(4, *SHAPE))
    sigma, sigma_next, k = 3.0, 1.7, 7
    den = _den64(world, x, sigma)
    ref = x + (sigma_next - sigma) * (x - den) / sigma + u / k  # EDM Euler + Δr u
    got = control.euler_step(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(den, jnp.float32),
        jnp.asarray(u, jnp.float32),
        jnp.float32(sigma),
        jnp.float32(sigma_next),
        k,
    )
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
    b = control.ode_drift(x, den, sigma, sigma_next, k)
    np.testing.assert_allclose(b, k * (sigma_next - sigma) * (x - den) / sigma, rtol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_unguided_deployment_is_the_edm_sampler(world, solver):
    denoise = world.denoiser()
    latents = jax.random.normal(jax.random.key(1), (5, *SHAPE), jnp.float32)
    config = sampling.SamplerConfig(solver=solver, num_steps=6)
    ref = sampling.sample(denoise, latents, config=config)
    sigmas = config.sigmas()
    x_init = latents * sigmas[0]
    for guidance in (None, lambda k, r, s, x, den, ds_dr: jnp.zeros_like(x)):
        got = control.controlled_sample(denoise, guidance, x_init, sigmas, solver=solver)
        assert got.nfe == ref.nfe == sampling.nfe(config)
        np.testing.assert_allclose(np.asarray(got.x), np.asarray(ref.x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_deployment_without_guidance_is_the_edm_sampler_bitwise(world, solver):
    denoise = world.denoiser()
    latents = jax.random.normal(jax.random.key(2), (5, *SHAPE), jnp.float32)
    config = sampling.SamplerConfig(solver=solver, num_steps=6)
    sigmas = config.sigmas()

    def deploy(latents):
        return control.controlled_sample(denoise, None, latents * sigmas[0], sigmas, solver=solver)

    def edm(latents):
        return sampling.sample(denoise, latents, config=config)

    for run in (lambda f: f(latents), lambda f: jax.jit(f)(latents)):
        got, ref = run(deploy), run(edm)
        assert got.nfe == ref.nfe
        np.testing.assert_array_equal(np.asarray(got.x), np.asarray(ref.x))


def _step_clock_loops(denoise, mu, x, sigmas, key, s, solver):
    """The controlled sampler and the rollout as hand-written scans (their form before they ran
    through sampling.integrate), to pin the step clock's float32 arithmetic op by op."""
    k_steps = sigmas.shape[0] - 1
    r = control.step_clock(k_steps)
    b = x.shape[0]

    def slope(k, r_k, sigma, x_k, ds_dr):
        den = denoise(x_k, jnp.broadcast_to(sigma, (b,)))
        return ds_dr * (x_k - den) / sigma + mu(k, r_k, sigma, x_k, den, ds_dr)

    def deploy_step(x_k, xs):
        k, r_k, r_next, sigma, sigma_next = xs
        ds_dr = k_steps * (sigma_next - sigma)
        f1 = slope(k, r_k, sigma, x_k, ds_dr)
        x_next = x_k + f1 / k_steps
        if solver == "heun" and sigma_next > 0:
            f2 = slope(k + 1, r_next, sigma_next, x_next, ds_dr)
            x_next = x_k + (0.5 * f1 + 0.5 * f2) / k_steps
        return x_next, None

    def rollout_step(x_k, xs):
        k, r_k, _, sigma, sigma_next = xs
        ds_dr = k_steps * (sigma_next - sigma)
        den = denoise(x_k, jnp.broadcast_to(sigma, (b,)))
        m = mu(k, r_k, sigma, x_k, den, ds_dr)
        eps = jax.random.normal(jax.random.fold_in(key, k), x_k.shape, x_k.dtype)
        drift = (k_steps * (sigma_next - sigma)) * (x_k - den) / sigma
        return x_k + (drift + (m + s * eps)) / k_steps, (x_k, den, eps, m)

    xs = (jnp.arange(k_steps, dtype=jnp.int32), r[:-1], r[1:], sigmas[:-1], sigmas[1:])
    deployed, _ = jax.lax.scan(deploy_step, x, xs)
    last, (states, den, eps, means) = jax.lax.scan(rollout_step, x, xs)
    return deployed, jnp.concatenate([states, last[None]]), den, eps, means


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_step_clock_arithmetic_is_unchanged(world, solver):
    # Op by op (no XLA fusion), so "the same operations in the same order" means bitwise equal.
    k_steps, s = 5, jnp.float32(0.7)  # K not a power of 2: x + f/K ≠ x + f·(1/K)
    rng = np.random.default_rng(5)
    mu, _ = _linear_guidance(
        0.3 * rng.normal(size=(k_steps, *SHAPE)), 0.3 * rng.normal(size=(k_steps, *SHAPE))
    )
    sigmas = sampling.edm_sigmas(k_steps, sigma_max=10.0)
    x = jnp.asarray(10.0 * rng.normal(size=(3, *SHAPE)), jnp.float32)
    key = jax.random.key(4)
    with jax.disable_jit():
        deployed, xs, den, eps, means = _step_clock_loops(
            world.denoiser(), mu, x, sigmas, key, s, solver
        )
        got = control.controlled_sample(world.denoiser(), mu, x, sigmas, solver=solver)
        ro = control.rollout(world.denoiser(), mu, x, sigmas, key, policy_std=s)
    np.testing.assert_array_equal(np.asarray(got.x), np.asarray(deployed))
    for name, ref in (("xs", xs), ("denoised", den), ("eps", eps), ("means", means)):
        np.testing.assert_array_equal(np.asarray(getattr(ro, name)), np.asarray(ref), err_msg=name)


def _reference_deploy(world, mu_np, x_init, sigmas, solver, churn=None):
    """Float64 NumPy controlled Euler / Heun on the step clock (module docstring formulas);
    ``churn = (S_churn, S_min, S_max, S_noise, eps)`` adds EDM's churn before each step with the
    given noises ``eps[k]`` (σ_k raised to σ̂, the step taken from σ̂)."""
    x = np.asarray(x_init, np.float64)
    sig = np.asarray(sigmas, np.float64)
    k_steps = sig.size - 1
    for k in range(k_steps):
        s0, s1 = sig[k], sig[k + 1]
        if churn is not None:
            s_churn, s_min, s_max, s_noise, eps = churn
            gamma = min(s_churn / k_steps, np.sqrt(2) - 1) if s_min <= s0 <= s_max else 0.0
            s_hat = s0 * (1 + gamma)
            x = x + np.sqrt(s_hat**2 - s0**2) * s_noise * eps[k]
            s0 = s_hat
        ds_dr = k_steps * (s1 - s0)
        den = _den64(world, x, s0)
        f1 = ds_dr * (x - den) / s0 + mu_np(k, k / k_steps, s0, x, den, ds_dr)
        x_e = x + f1 / k_steps
        if solver == "heun" and s1 > 0:
            den2 = _den64(world, x_e, s1)
            f2 = ds_dr * (x_e - den2) / s1 + mu_np(k + 1, (k + 1) / k_steps, s1, x_e, den2, ds_dr)
            x = x + 0.5 * (f1 + f2) / k_steps
        else:
            x = x_e
    return x


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_guided_deployment_with_churn_matches_float64_reference(world, solver):
    """EDM's churn around the guided steps: σ_k raised to σ̂ = σ_k(1 + γ) inside [S_min, S_max]
    with noise from ``fold_in(key, k)`` (sampling.integrate's rule), the guided step from σ̂."""
    k_steps, churn = 5, (4.0, 0.5, 8.0, 1.007)
    rng = np.random.default_rng(2)
    mu, mu_np = _linear_guidance(
        0.3 * rng.normal(size=(k_steps, *SHAPE)), 0.3 * rng.normal(size=(k_steps, *SHAPE))
    )
    sigmas = sampling.edm_sigmas(k_steps, sigma_max=10.0)
    x_init = 10.0 * rng.normal(size=(4, *SHAPE))
    key = jax.random.key(9)
    got = control.controlled_sample(
        world.denoiser(),
        mu,
        jnp.asarray(x_init, jnp.float32),
        sigmas,
        solver=solver,
        key=key,
        churn=churn,
    )
    eps = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, k), x_init.shape), np.float64)
        for k in range(k_steps)
    ]
    ref = _reference_deploy(world, mu_np, x_init, np.asarray(sigmas), solver, (*churn, eps))
    assert got.nfe == (2 * k_steps - 1 if solver == "heun" else k_steps)  # churn costs no NFE
    np.testing.assert_allclose(np.asarray(got.x), ref, rtol=1e-4, atol=1e-4)
    plain = _reference_deploy(world, mu_np, x_init, np.asarray(sigmas), solver)
    assert np.abs(ref - plain).max() > 0.1  # the churn window holds σ_1..σ_3: it matters


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_guided_deployment_matches_float64_reference(world, solver):
    k_steps = 5
    rng = np.random.default_rng(1)
    mu, mu_np = _linear_guidance(
        0.3 * rng.normal(size=(k_steps, D)).reshape(k_steps, *SHAPE),
        0.3 * rng.normal(size=(k_steps, D)).reshape(k_steps, *SHAPE),
    )
    sigmas = sampling.edm_sigmas(k_steps, sigma_max=10.0)
    x_init = 10.0 * rng.normal(size=(4, *SHAPE))
    got = control.controlled_sample(
        world.denoiser(), mu, jnp.asarray(x_init, jnp.float32), sigmas, solver=solver
    )
    ref = _reference_deploy(world, mu_np, x_init, np.asarray(sigmas), solver)
    assert got.nfe == (2 * k_steps - 1 if solver == "heun" else k_steps)
    np.testing.assert_allclose(np.asarray(got.x), ref, rtol=1e-4, atol=1e-4)
    # The guidance matters (the test would not notice a dropped term otherwise).
    plain = _reference_deploy(world, lambda *a: 0.0, x_init, np.asarray(sigmas), solver)
    assert np.abs(ref - plain).max() > 0.1


def test_rollout_records_a_consistent_trajectory(world):
    k_steps, b, s = 4, 6, 0.7
    rng = np.random.default_rng(2)
    mu, mu_np = _linear_guidance(
        0.2 * rng.normal(size=(k_steps, *SHAPE)), 0.2 * rng.normal(size=(k_steps, *SHAPE))
    )
    sigmas = sampling.edm_sigmas(k_steps, sigma_max=20.0)
    x_init = jnp.asarray(20.0 * rng.normal(size=(b, *SHAPE)), jnp.float32)
    ro = control.rollout(world.denoiser(), mu, x_init, sigmas, jax.random.key(3), policy_std=s)
    assert ro.xs.shape == (k_steps + 1, b, *SHAPE)
    for name in ("denoised", "eps", "means"):
        assert getattr(ro, name).shape == (k_steps, b, *SHAPE)
    assert ro.num_steps == k_steps
    np.testing.assert_array_equal(np.asarray(ro.xs[0]), np.asarray(x_init))
    # Rebuild every stored quantity in float64 from the stored states and noises.
    sig = np.asarray(sigmas, np.float64)
    xs = np.asarray(ro.xs, np.float64)
    for k in range(k_steps):
        den = _den64(world, xs[k], sig[k])
        np.testing.assert_allclose(np.asarray(ro.denoised[k]), den, rtol=1e-4, atol=1e-5)
        m = mu_np(k, k / k_steps, sig[k], xs[k], den, k_steps * (sig[k + 1] - sig[k]))
        np.testing.assert_allclose(np.asarray(ro.means[k]), m, rtol=1e-4, atol=1e-5)
        a = m + s * np.asarray(ro.eps[k], np.float64)
        np.testing.assert_allclose(np.asarray(ro.actions[k]), a, rtol=1e-4, atol=1e-5)
        x_next = xs[k] + (k_steps * (sig[k + 1] - sig[k]) * (xs[k] - den) / sig[k] + a) / k_steps
        np.testing.assert_allclose(xs[k + 1], x_next, rtol=1e-4, atol=1e-4)
        b_ref = k_steps * (sig[k + 1] - sig[k]) * (xs[k] - den) / sig[k]
        np.testing.assert_allclose(np.asarray(ro.drifts[k]), b_ref, rtol=1e-4, atol=1e-4)
    eps = np.asarray(ro.eps)
    assert abs(eps.mean()) < 0.3 and 0.7 < eps.std() < 1.3


def test_rollout_is_deterministic_and_antithetic(world):
    k_steps, b = 5, 8
    denoise = world.denoiser()
    sigmas = sampling.edm_sigmas(k_steps, sigma_max=20.0)
    half = 20.0 * jax.random.normal(jax.random.key(0), (b // 2, *SHAPE), jnp.float32)
    x_init = control.pair_up(half)
    zero = lambda k, r, s, x, den, ds_dr: jnp.zeros_like(x)  # noqa: E731
    ro1 = control.rollout(
        denoise, zero, x_init, sigmas, jax.random.key(1), policy_std=1.0, antithetic=True
    )
    ro2 = control.rollout(
        denoise, zero, x_init, sigmas, jax.random.key(1), policy_std=1.0, antithetic=True
    )
    ro3 = control.rollout(
        denoise, zero, x_init, sigmas, jax.random.key(2), policy_std=1.0, antithetic=True
    )
    for a, c in zip(jax.tree_util.tree_leaves(ro1), jax.tree_util.tree_leaves(ro2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(ro1.xs[-1]), np.asarray(ro3.xs[-1]))
    eps = np.asarray(ro1.eps)
    np.testing.assert_array_equal(eps[:, b // 2 :], -eps[:, : b // 2])
    # Linear dynamics and μ = 0: the pair's mean is the unguided ODE path exactly (the noise
    # cancels), and the halves differ.
    xs = np.asarray(ro1.xs, np.float64)
    plain = sampling.integrate(denoise, half, sigmas, solver="euler", return_trajectory=True)[1]
    np.testing.assert_allclose(
        0.5 * (xs[:, : b // 2] + xs[:, b // 2 :]), np.asarray(plain), rtol=1e-4, atol=1e-4
    )
    assert np.abs(xs[-1, : b // 2] - xs[-1, b // 2 :]).max() > 0.1
    with pytest.raises(ValueError, match="even batch"):
        control.rollout(
            denoise, zero, x_init[:3], sigmas, jax.random.key(1), policy_std=1.0, antithetic=True
        )


def test_rollout_carries_no_gradient(world):
    sigmas = sampling.edm_sigmas(3, sigma_max=5.0)
    x_init = 5.0 * jax.random.normal(jax.random.key(0), (2, *SHAPE), jnp.float32)

    def f(theta):
        mu = lambda k, r, s, x, den, ds_dr: theta * x  # noqa: E731
        ro = control.rollout(
            world.denoiser(), mu, x_init, sigmas, jax.random.key(1), policy_std=0.5
        )
        return jnp.sum(ro.xs[-1]) + jnp.sum(ro.means)

    assert float(jax.grad(f)(jnp.float32(0.3))) == 0.0


def test_per_coordinate_policy_std(world):
    sigmas = sampling.edm_sigmas(2, sigma_max=5.0)
    x_init = jnp.ones((4, *SHAPE), jnp.float32)
    s = jnp.linspace(0.0, 2.0, D).reshape(SHAPE)
    zero = lambda k, r, sg, x, den, ds_dr: jnp.zeros_like(x)  # noqa: E731
    ro = control.rollout(world.denoiser(), zero, x_init, sigmas, jax.random.key(0), policy_std=s)
    np.testing.assert_allclose(np.asarray(ro.actions), np.asarray(s * ro.eps), rtol=1e-6)
    assert float(jnp.abs(ro.actions[..., 0, 0, 0]).max()) == 0.0


def test_traced_once_and_no_retracing(world):
    calls = {"denoise": 0, "trace": 0}
    base = world.denoiser()

    def denoise(x, sigma):
        calls["denoise"] += 1
        return base(x, sigma)

    mu = lambda k, r, s, x, den, ds_dr: 0.1 * den  # noqa: E731
    sigmas = sampling.edm_sigmas(7, sigma_max=10.0)

    @jax.jit
    def roll(x, key):
        calls["trace"] += 1
        return control.rollout(denoise, mu, x, sigmas, key, policy_std=1.0).xs

    x = jnp.ones((2, *SHAPE), jnp.float32)
    roll(x, jax.random.key(0))
    roll(2.0 * x, jax.random.key(1))
    assert calls == {"denoise": 1, "trace": 1}  # one trace, the step body traced once

    calls.update(denoise=0, trace=0)

    @jax.jit
    def deploy(x):
        calls["trace"] += 1
        return control.controlled_sample(denoise, mu, x, sigmas, solver="heun").x

    deploy(x)
    deploy(3.0 * x)
    assert calls == {"denoise": 2, "trace": 1}  # Heun: two stages


def test_bad_inputs_raise(world):
    zero = lambda k, r, s, x, den, ds_dr: jnp.zeros_like(x)  # noqa: E731
    x = jnp.ones((2, *SHAPE), jnp.float32)
    with pytest.raises(ValueError, match="sigmas"):
        control.controlled_sample(world.denoiser(), zero, x, jnp.ones((1,)))
    with pytest.raises(ValueError, match="solver"):
        control.controlled_sample(world.denoiser(), zero, x, sampling.edm_sigmas(2), solver="rk4")
    with pytest.raises(ValueError, match="floating"):
        control.controlled_sample(
            world.denoiser(), zero, jnp.ones((2, 3), jnp.int32), sampling.edm_sigmas(2)
        )
    assert control.controlled_nfe(10, "heun") == 19 and control.controlled_nfe(10) == 10
