"""Tests for aid_jax.aid.losses (AID.md §4): each objective on a hand-computed tiny case, the
likelihood-ratio and pathwise gradients against hand-derived formulas in float64 NumPy, the
critic's stop-gradient, the terminal value Ψ − λT and the relaxed-problem identity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.aid import control, losses
from aid_jax.aid.control import Rollout


def _rollout(xs, eps, means, sigmas, s, denoised=None) -> Rollout:
    xs = jnp.asarray(xs, jnp.float32)
    eps = jnp.asarray(eps, jnp.float32)
    return Rollout(
        xs=xs,
        denoised=jnp.zeros_like(eps) if denoised is None else jnp.asarray(denoised, jnp.float32),
        eps=eps,
        means=jnp.asarray(means, jnp.float32),
        sigmas=jnp.asarray(sigmas, jnp.float32),
        policy_std=jnp.asarray(s, jnp.float32),
    )


# The tiny case worked by hand: K = 2, B = 2, d = 1, λ = 0.5, β = 2 (so ℓ(a) = a²), s = 0.5,
# critic network w_k · x, Ψ(X_K) given.
TINY = dict(
    xs=np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 1.0]])[..., None],
    means=np.array([[0.0, 1.0], [1.0, 0.0]])[..., None],
    eps=np.array([[1.0, 0.0], [0.0, 2.0]])[..., None],
    sigmas=[2.0, 1.0, 0.0],
    s=0.5,
)
TERM = jnp.asarray([0.25, 1.0], jnp.float32)
LAM, BETA = 0.5, 2.0


def _tiny():
    return _rollout(TINY["xs"], TINY["eps"], TINY["means"], TINY["sigmas"], TINY["s"])


def _linear_value(w):
    return lambda k, r, sigma, x: w[k] * x[:, 0]


def test_costs_by_hand():
    a = jnp.asarray([[1.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(losses.running_cost(a, 0.5), [0.625, 1.125])
    x, x0 = jnp.asarray([[1.0, 1.0]]), jnp.asarray([[0.0, 3.0]])
    np.testing.assert_allclose(losses.terminal_cost(x, x0), [2.5])
    w = losses.hole_weights(jnp.asarray([[1.0, 0.0]]), 3.0)
    np.testing.assert_allclose(w, [[1.0, 3.0]])
    np.testing.assert_allclose(losses.terminal_cost(x, x0, w), [6.5])
    with pytest.raises(ValueError, match="same shape"):
        losses.terminal_cost(x, x0[:, :1])


def test_value_estimates_terminal_is_psi_minus_lambda_T():
    ro = _tiny()
    v = losses.value_estimates(_linear_value(jnp.asarray([2.0, -1.0])), ro, TERM, LAM)
    # V̂_0 = 2·x − 0, V̂_1 = −x − λ/2, V̂_2 = Ψ − λ·1 (never the network).
    np.testing.assert_allclose(v, [[2.0, 4.0], [-3.25, 0.75], [-0.25, 0.5]])


def test_td0_critic_loss_and_semi_gradient_by_hand():
    ro = _tiny()
    w = jnp.asarray([2.0, -1.0])

    def loss(w_):
        return losses.critic_loss(_linear_value(w_), ro, TERM, beta=BETA, lam=LAM)

    (value, aux), grad = jax.value_and_grad(loss, has_aux=True)(w)
    assert float(value) == pytest.approx(11.53515625, rel=1e-6)
    np.testing.assert_allclose(aux["costs"], [[0.125, 0.5], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(aux["td_errors"], [[-5.125, -2.75], [3.5, 0.25]], rtol=1e-6)
    # Semi-gradient: the target sg[V̂_1] contributes nothing to ∂/∂w_1 (the full gradient
    # would be -11.4375).
    np.testing.assert_allclose(grad, [5.3125, -5.125], rtol=1e-6)


def test_monte_carlo_and_lambda_returns():
    ro = _tiny()
    w = jnp.asarray([2.0, -1.0])
    mc, _ = losses.critic_loss(_linear_value(w), ro, TERM, beta=BETA, lam=LAM, td_lambda=1.0)
    # G_0 = c_0 + c_1 + V̂_2 = [0.375, 1.5], G_1 = [0.25, 1.0]; V̂_0 = [2, 4], V̂_1 = [-3.25, 0.75].
    ref = 0.5 * (np.mean([(0.375 - 2) ** 2, (1.5 - 4) ** 2]) + np.mean([3.5**2, 0.25**2]))
    assert float(mc) == pytest.approx(ref, rel=1e-6)

    rng = np.random.default_rng(0)
    k_steps, b, tau = 5, 3, 0.7
    c = rng.normal(size=(k_steps, b))
    v = rng.normal(size=(k_steps + 1, b))
    got = np.asarray(losses.lambda_returns(jnp.asarray(c), jnp.asarray(v), tau))
    # Reference: G^λ_k = (1 − τ) Σ_{n<N} τ^{n−1} G^(n)_k + τ^{N−1} G^(N)_k, N = K − k.
    ref = np.zeros((k_steps, b))
    for k in range(k_steps):
        n_max = k_steps - k
        nstep = [c[k : k + n].sum(0) + v[k + n] for n in range(1, n_max + 1)]
        ref[k] = sum((1 - tau) * tau ** (n - 1) * nstep[n - 1] for n in range(1, n_max))
        ref[k] += tau ** (n_max - 1) * nstep[-1]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="td_lambda"):
        losses.lambda_returns(jnp.asarray(c), jnp.asarray(v), 1.5)


def test_advantages():
    rng = np.random.default_rng(1)
    deltas = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    np.testing.assert_array_equal(losses.advantages(deltas, 0.0), deltas)
    # τ_a = 1: the Monte-Carlo advantage Σ_{j≥k} δ_j = (Σ_{j≥k} c_j + V̂_K) − V̂_k.
    np.testing.assert_allclose(
        losses.advantages(deltas, 1.0), np.cumsum(np.asarray(deltas)[::-1], 0)[::-1], rtol=1e-6
    )
    a = losses.advantages(deltas, 0.5)
    np.testing.assert_allclose(a[2], deltas[2] + 0.5 * deltas[3], rtol=1e-6)
    n = losses.normalize_advantages(deltas, "per_step")
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(n), axis=1)), 1.0, rtol=1e-5)
    g = losses.normalize_advantages(deltas, "global", center=True)
    assert abs(float(jnp.mean(g))) < 1e-6 and float(jnp.sqrt(jnp.mean(g**2))) == pytest.approx(1.0)
    assert losses.normalize_advantages(deltas, None) is deltas


def test_lr_surrogate_gradient_is_the_score_function_formula():
    rng = np.random.default_rng(2)
    k_steps, b, d, s = 3, 5, 4, 0.8
    xs = rng.normal(size=(k_steps + 1, b, d))
    den = rng.normal(size=(k_steps, b, d))
    eps = rng.normal(size=(k_steps, b, d))
    adv = rng.normal(size=(k_steps, b))
    w = rng.normal(size=(k_steps, d, d)) * 0.5
    v = rng.normal(size=(k_steps, d, d)) * 0.5
    ro = _rollout(xs, eps, np.zeros_like(eps), np.linspace(3.0, 0.0, k_steps + 1), s, den)

    def loss(w_):
        def mu(k, r, sigma, x, dn, ds_dr):
            return jnp.tanh(x @ w_[k].T + dn @ jnp.asarray(v, jnp.float32)[k].T)

        return losses.lr_actor_loss(mu, ro, jnp.asarray(adv, jnp.float32))

    grad = np.asarray(jax.grad(loss)(jnp.asarray(w, jnp.float32)), np.float64)
    # Hand: Σ_k mean_b δ_kb (ε_kb/s)ᵀ ∂μ_kb/∂W_k with ∂μ_i/∂W_ij = (1 − μ_i²) x_j.
    ref = np.zeros_like(w)
    for k in range(k_steps):
        mu = np.tanh(xs[k] @ w[k].T + den[k] @ v[k].T)  # [b, d]
        ref[k] = np.einsum("b,bi,bj->ij", adv[k], (eps[k] / s) * (1 - mu**2), xs[k]) / b
    np.testing.assert_allclose(grad, ref, rtol=2e-4, atol=2e-5)
    # The advantage is under stop-gradient: a differentiable advantage changes nothing.
    g2 = jax.grad(lambda a: losses.lr_actor_loss(lambda *z: z[3], ro, a))(jnp.ones((k_steps, b)))
    assert float(jnp.abs(g2).max()) == 0.0


def test_lr_surrogate_is_the_log_likelihood_gradient():
    """∇ Σ δ log π(A|X) with A = μ + sε held fixed equals the surrogate's gradient."""
    rng = np.random.default_rng(3)
    k_steps, b, d, s = 2, 3, 3, 1.3
    xs = jnp.asarray(rng.normal(size=(k_steps + 1, b, d)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=(k_steps, b, d)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(k_steps, b)), jnp.float32)
    theta0 = jnp.asarray(rng.normal(size=(k_steps, d)), jnp.float32)
    means = jnp.stack([theta0[k] * xs[k] for k in range(k_steps)])
    ro = _rollout(xs, eps, means, [2.0, 1.0, 0.0], s)
    actions = ro.actions

    def logpi_loss(theta):
        mu = jnp.stack([theta[k] * xs[k] for k in range(k_steps)])
        logp = -0.5 * jnp.sum(jnp.square(actions - mu), axis=-1) / s**2
        return jnp.sum(jnp.mean(adv * logp, axis=1))

    def surrogate(theta):
        return losses.lr_actor_loss(lambda k, r, sg, x, dn, ds_dr: theta[k] * x, ro, adv)

    np.testing.assert_allclose(
        jax.grad(surrogate)(theta0), jax.grad(logpi_loss)(theta0), rtol=1e-5, atol=1e-6
    )


def test_pathwise_loss_value_and_gradient_by_hand():
    rng = np.random.default_rng(4)
    k_steps, b, d, lam, beta = 3, 4, 2, 0.3, 0.7
    sig = np.array([4.0, 2.0, 0.5, 0.0])
    xs = rng.normal(size=(k_steps + 1, b, d))
    den = rng.normal(size=(k_steps, b, d))
    x0 = rng.normal(size=(b, d))
    w = np.array([0.0, 0.4, -0.2])  # critic network w_k Σ x²
    theta = np.array([0.5, -0.3, 0.2])  # actor μ_k = θ_k x
    ro = _rollout(xs, rng.normal(size=(k_steps, b, d)), np.zeros((k_steps, b, d)), sig, 1.0, den)
    x0j = jnp.asarray(x0, jnp.float32)

    def loss(th):
        return losses.pathwise_actor_loss(
            lambda k, r, sg, x, dn, ds_dr: th[k] * x,
            lambda k, r, sg, x: jnp.asarray(w, jnp.float32)[k] * jnp.sum(x**2, axis=1),
            ro,
            lambda x: losses.terminal_cost(x, x0j),
            beta=beta,
            lam=lam,
        )

    value, grad = jax.value_and_grad(loss)(jnp.asarray(theta, jnp.float32))
    dr = 1.0 / k_steps
    ref, ref_grad = 0.0, np.zeros(k_steps)
    for k in range(k_steps):
        b_k = k_steps * (sig[k + 1] - sig[k]) * (xs[k] - den[k]) / sig[k]
        x_next = xs[k] + dr * (b_k + theta[k] * xs[k])
        dx = dr * xs[k]  # ∂x_next/∂θ_k
        if k + 1 < k_steps:
            v = w[k + 1] * np.sum(x_next**2, 1) - lam * (k + 1) / k_steps
            dv = w[k + 1] * 2 * np.sum(x_next * dx, 1)
        else:
            v = np.mean((x_next - x0) ** 2, 1) - lam
            dv = 2 * np.mean((x_next - x0) * dx, 1)
        cost = 0.5 * beta * np.mean((theta[k] * xs[k]) ** 2, 1) * dr
        dcost = beta * theta[k] * np.mean(xs[k] ** 2, 1) * dr
        ref += np.mean(v + cost)
        ref_grad[k] = np.mean(dv + dcost)
    assert float(value) == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_relaxed_problem_identity_by_monte_carlo():
    """E[(β/2)‖A‖²/d] = (β/2)‖μ‖²/d + λ for A = μ + sε, s = √(2λ/β)."""
    lam, beta, d, n = 0.1, 0.3, 16, 200_000
    s = control.gaussian_policy_std(lam, beta)
    mu = jax.random.normal(jax.random.key(0), (d,), jnp.float32)
    eps = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
    costs = np.asarray(losses.running_cost(mu + s * eps, beta), np.float64)
    expected = float(losses.running_cost(mu[None], beta)[0]) + lam
    se = costs.std(ddof=1) / np.sqrt(n)
    assert abs(costs.mean() - expected) < 4 * se
    assert se < 0.01 * lam  # the check resolves λ to 1 %
