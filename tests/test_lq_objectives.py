"""Closed-form optimal guidance for each terminal objective in the linear–quadratic world
(issue 16, point 1): against a brute-force least-squares solve, a Monte-Carlo check of the
terminal law, and the W2 table of issue 16 (computed there independently)."""

from __future__ import annotations

import numpy as np
import pytest

from aid_jax.aid import lq_objectives as obj
from aid_jax.aid.lq import LQProblem


@pytest.fixture(scope="module")
def small() -> LQProblem:
    return LQProblem.create(4, 4, mask="top_half", num_steps=5)


def _brute_force(problem, x_init, y, terminal, beta, weighting, min_sigma):
    """Stack every control into one vector and solve the regularised least squares directly."""
    d, k_steps, dr = problem.dim, problem.num_steps, problem.dr
    inv_beta = obj.control_weights(problem, beta, weighting, min_sigma)
    active = np.flatnonzero(inv_beta > 0)
    phi = problem.propagators
    q = np.diag(problem.mask) if terminal == "observed" else np.eye(d)
    w = q  # Q is a projector or I: W = Q
    t_y, t_x = obj.terminal_target(problem, terminal)
    yv = y * problem.mask
    t = t_y @ yv + t_x @ x_init
    a = phi[0] @ x_init
    b = np.concatenate([dr * phi[j + 1] for j in active], axis=1)  # x_K = a + b U
    reg = np.diag(np.repeat(np.sqrt(0.5 * dr / inv_beta[active]), d))
    lhs = np.concatenate([reg, w @ b])
    rhs = np.concatenate([np.zeros(len(active) * d), w @ (t - a)])
    sol = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    u = np.zeros((k_steps, d))
    u[active] = sol.reshape(len(active), d)
    return u, a + b @ sol


@pytest.mark.parametrize(
    "terminal, weighting, min_sigma",
    [
        ("mse", "uniform", 0.0),
        ("observed", "uniform", 0.0),
        ("observed", "inv_sigma2", 0.0),
        ("observed", "inv_sigma2", 5.0),
        ("teacher", "inv_sigma2", 0.0),
    ],
)
def test_closed_form_equals_a_brute_force_solve(small, terminal, weighting, min_sigma):
    rng = np.random.default_rng(0)
    for _ in range(3):
        x_init = small.sigmas[0] * rng.normal(size=small.dim)
        y = rng.multivariate_normal(np.zeros(small.dim), small.world.cov)
        u, x_k = obj.optimal_controls(small, x_init, y, terminal, 0.05, weighting, min_sigma)
        u_ref, x_ref = _brute_force(small, x_init, y, terminal, 0.05, weighting, min_sigma)
        np.testing.assert_allclose(u, u_ref, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(x_k, x_ref, rtol=1e-6, atol=1e-8)
        if min_sigma:
            assert np.all(u[small.sigmas[:-1] < min_sigma] == 0)


@pytest.mark.parametrize("terminal", obj.TERMINALS)
def test_terminal_law_by_monte_carlo(small, terminal):
    rng = np.random.default_rng(1)
    n = 4000
    x0 = rng.multivariate_normal(np.zeros(small.dim), small.world.cov, size=n)
    starts = small.sigmas[0] * rng.normal(size=(n, small.dim))
    xk = np.stack(
        [
            obj.optimal_controls(small, s, y, terminal, 0.1, "inv_sigma2")[1]
            for s, y in zip(starts, x0, strict=True)
        ]
    )
    law = obj.optimal_terminal_law(small, terminal, 0.1, "inv_sigma2")
    ys = x0 * small.mask
    resid = xk - ys @ law.mean_map.T  # ~ N(0, S), independent of y
    # The mean map through the cross-covariance Cov(x_K, y) = A Cov(y) (a regression on the
    # strongly correlated y would be ill-conditioned).
    cov_y = np.diag(small.mask) @ small.world.cov @ np.diag(small.mask)
    np.testing.assert_allclose(xk.T @ ys / n, law.mean_map @ cov_y, atol=0.02)
    scale = np.sqrt(np.diag(law.cov)).max()
    np.testing.assert_allclose(np.cov(resid.T), law.cov, atol=0.08 * scale**2)


def test_the_w2_table_of_issue_16():
    """8×8, top half known, K = 10: the numbers issue 16 reports (computed independently)."""
    p = LQProblem.create(8, 8, mask="top_half", num_steps=10)

    def w2(terminal, beta, weighting="uniform", min_sigma=0.0):
        return obj.posterior_distance(
            p, obj.optimal_terminal_law(p, terminal, beta, weighting, min_sigma)
        )["w2"]

    assert w2("mse", 1.0, min_sigma=np.inf) == pytest.approx(2.30, abs=0.005)  # unguided
    for beta, want in ((1.0, 1.49), (0.1, 1.76), (0.01, 1.90), (1e-9, 1.92)):
        assert w2("mse", beta) == pytest.approx(want, abs=0.005)
    assert w2("observed", 1e-9) == pytest.approx(2.04, abs=0.005)
    for beta, want in ((0.1, 1.09), (0.01, 0.74), (0.001, 0.58), (1e-9, 0.55)):
        assert w2("observed", beta, "inv_sigma2") == pytest.approx(want, abs=0.005)
    assert w2("observed", 1e-9, "inv_sigma2", min_sigma=5.0) == pytest.approx(0.52, abs=0.005)
    # The teacher (an exact posterior sample from the same start) reaches the posterior.
    assert w2("teacher", 1e-9) < 0.01 < w2("teacher", 0.01, "inv_sigma2")


def test_observed_target_ignores_the_hole_and_names_are_checked(small):
    law = obj.optimal_terminal_law(small, "observed", 0.1, "inv_sigma2")
    assert np.all(law.mean_map[:, small.mask == 0] == 0)  # reads only observed pixels
    with pytest.raises(ValueError, match="terminal must be one of"):
        obj.optimal_terminal_law(small, "lpips", 0.1)
    with pytest.raises(ValueError, match="weighting must be one of"):
        obj.control_weights(small, 0.1, "inv_sigma")
    with pytest.raises(ValueError, match="beta must be > 0"):
        obj.control_weights(small, 0.0, "uniform")


@pytest.mark.parametrize(
    "terminal, weighting",
    [("observed", "inv_sigma2"), ("mse", "inv_sigma2"), ("observed", "uniform")],
)
def test_feedback_gains_cost_equals_the_open_loop_optimum(terminal, weighting):
    """LQProblem's optimal feedback (closed loop, from step k's M_k) costs exactly the expected
    cost of lq_objectives' open-loop optimum per (X_0, y) — two derivations of one optimum —
    and perturbing the gains costs more."""
    p = LQProblem.create(
        4, 4, mask="top_half", num_steps=5, beta=0.05, terminal=terminal, beta_weighting=weighting
    )
    d = p.dim
    # The open-loop optimum is linear in z = (X_0, x0): build its maps column by column.
    cols_u, cols_e = [], []
    for i in range(2 * d):
        z = np.zeros(2 * d)
        z[i] = 1.0
        u, x_k = obj.optimal_controls(p, z[:d], z[d:], terminal, 0.05, weighting)
        cols_u.append(u.reshape(-1))
        cols_e.append(x_k - z[d:])
    u_map, e_map = np.stack(cols_u, 1), np.stack(cols_e, 1)
    cov = np.diag(np.concatenate([np.full(d, p.sigmas[0] ** 2), np.zeros(d)]))
    cov[d:, d:] = p.world.cov
    betas = np.repeat(p.betas, d)
    running = 0.5 * p.dr * np.sum(betas[:, None] * (u_map @ cov) * u_map) / d
    q = p.terminal_weight
    terminal_cost = np.trace(q @ e_map @ cov @ e_map.T) / d
    f, g = p.optimal_gains()
    assert p.policy_cost(f, g) == pytest.approx(running + terminal_cost, rel=1e-8)
    assert p.optimal_cost() == pytest.approx(running + terminal_cost, rel=1e-8)
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert p.policy_cost(f + 1e-3 * rng.normal(size=f.shape), g) > p.optimal_cost()
    assert p.unguided_cost() > p.optimal_cost()


@pytest.mark.parametrize("features", ["xy", "whitened"])
def test_the_learners_classes_contain_the_new_optimum(features):
    """With Ψ on the observed pixels and β_k = β/σ_k² the actor (output in units of s_k) written
    with the optimal parameters costs J*: the function class the LQ benchmark trains contains
    the optimum it is scored against."""
    from aid_jax.aid import lq

    p = LQProblem.create(
        4,
        4,
        mask="top_half",
        num_steps=5,
        beta=0.01,
        lam=0.001,
        terminal="observed",
        beta_weighting="inv_sigma2",
    )
    params = lq.optimal_actor_params(p, features)
    fn = lq.make_actor_fn(p, features)
    f, g, h = lq.linearize_actor(lambda k, x, y: fn(params, k, x, y), p)
    assert p.policy_cost(f, g, h) == pytest.approx(p.optimal_cost(), rel=2e-3)
    assert p.unguided_cost() > 10 * p.optimal_cost()
