"""Which terminal objective and running-cost weighting make AID's optimal guidance *sample the
posterior* — closed forms in the linear–quadratic world (AID.md §5; issue 16, point 1).

The world of :mod:`aid_jax.aid.lq`: x0 ~ N(0, Σ), y = m ⊙ x0, the exact linear denoiser, K Euler
steps x_{k+1} = A_k x_k + Δr u_k from X_0 ~ N(0, σ_0² I), Φ_{K,j} = A_{K−1}⋯A_j. For a
deterministic guidance the control problem given (X_0, y) is

    min_u  Σ_j (β_j/2) Δr ‖u_j‖²/d + ‖W (x_K − t)‖²/d,          Q = WᵀW,

with a per-step weight β_j (:data:`BETA_WEIGHTINGS`: ``"uniform"`` β_j = β; ``"inv_sigma2"``
β_j = β/σ_j², control cheap where the noise is high — the path-KL weighting; steps with
σ_j < ``min_control_sigma`` get no control at all) and a terminal target (:data:`TERMINALS`):

* ``"mse"``: Q = I, t = E[x0 | y] = L y — today's MSE to x0 after the expectation over x0 | y;
* ``"observed"``: Q = diag(m), t = y — consistency on the observed pixels only (needs no x0);
* ``"teacher"``: Q = I, t = T(X_0, y) = L y + (I − L diag m) Σ^{1/2} X_0/σ_0 — an exact posterior
  sample derived from the start (Matheron's rule: a prior sample Σ^{1/2} X_0/σ_0, corrected to
  the observation).

Stationarity gives u_j = −(2/β_j) Φ_{K,j+1}ᵀ Q (x_K − t), hence, with
G = Σ_j (2Δr/β_j) Φ_{K,j+1} Φ_{K,j+1}ᵀ and M = I + G Q,

    x_K − t = M⁻¹ (Φ_{K,0} X_0 − t),     x_K = (I − M⁻¹) t + M⁻¹ Φ_{K,0} X_0

(for ``"observed"`` the hole part of t is irrelevant: M h = h for h in the hole). x_K given y is
Gaussian, N(A y, S) (:class:`TerminalLaw`), and the exact posterior is N(L y, C), so the
distance between the two is exact too (:func:`posterior_distance`): W2 over the hole pixels,
√(E_y ‖(A − L) y‖² + Bures²(S, C)), and the RMSE of the mean. β → 0 is taken as β = 1e-9.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from aid_jax.aid.lq import LQProblem

__all__ = [
    "BETA_WEIGHTINGS",
    "TERMINALS",
    "TerminalLaw",
    "control_weights",
    "optimal_controls",
    "optimal_terminal_law",
    "posterior_distance",
    "terminal_target",
]

TERMINALS = ("mse", "observed", "teacher")
BETA_WEIGHTINGS = ("uniform", "inv_sigma2")


@dataclasses.dataclass(frozen=True)
class TerminalLaw:
    """x_K | y ~ N(mean_map @ y, cov) (y: the full image vector with zeros in the hole)."""

    mean_map: np.ndarray
    cov: np.ndarray


def control_weights(
    problem: LQProblem, beta: float, weighting: str, min_control_sigma: float = 0.0
) -> np.ndarray:
    """1/β_j per step (0 where control is not allowed), float64 ``[K]``."""
    if weighting not in BETA_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {BETA_WEIGHTINGS}, got {weighting!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    sig = problem.sigmas[:-1]
    inv = np.full(problem.num_steps, 1.0 / beta)
    if weighting == "inv_sigma2":
        inv = sig**2 / beta
    return np.where(sig >= min_control_sigma, inv, 0.0)


def _q_matrix(problem: LQProblem, terminal: str) -> np.ndarray:
    if terminal not in TERMINALS:
        raise ValueError(f"terminal must be one of {TERMINALS}, got {terminal!r}")
    return np.diag(problem.mask) if terminal == "observed" else np.eye(problem.dim)


def _teacher_maps(problem: LQProblem) -> tuple[np.ndarray, np.ndarray]:
    """(T_y, T_x) with T = T_y y + T_x X_0, an exact posterior sample given y (Matheron; the one
    definition, :attr:`LQProblem.teacher_maps`, that the learned benchmark trains against)."""
    return problem.teacher_maps


def terminal_target(problem: LQProblem, terminal: str) -> tuple[np.ndarray, np.ndarray]:
    """(T_y, T_x): the target t = T_y y + T_x X_0 of ``terminal``."""
    d = problem.dim
    if terminal == "mse":
        return problem.conditional_mean_map, np.zeros((d, d))
    if terminal == "observed":
        return np.diag(problem.mask), np.zeros((d, d))
    _q_matrix(problem, terminal)  # the name check
    return _teacher_maps(problem)


def _m_inverse(problem: LQProblem, inv_beta: np.ndarray, q: np.ndarray) -> np.ndarray:
    phi = problem.propagators
    g = sum(
        2.0 * problem.dr * inv_beta[j] * phi[j + 1] @ phi[j + 1].T for j in range(problem.num_steps)
    )
    return np.linalg.inv(np.eye(problem.dim) + g @ q)


def optimal_terminal_law(
    problem: LQProblem,
    terminal: str,
    beta: float,
    weighting: str = "uniform",
    min_control_sigma: float = 0.0,
) -> TerminalLaw:
    """The law of x_K given y under the optimal deterministic guidance (module doc)."""
    inv_beta = control_weights(problem, beta, weighting, min_control_sigma)
    m_inv = _m_inverse(problem, inv_beta, _q_matrix(problem, terminal))
    t_y, t_x = terminal_target(problem, terminal)
    eye = np.eye(problem.dim)
    start = (eye - m_inv) @ t_x + m_inv @ problem.propagators[0]  # the map from X_0
    return TerminalLaw((eye - m_inv) @ t_y, problem.sigmas[0] ** 2 * start @ start.T)


def optimal_controls(
    problem: LQProblem,
    x_init: np.ndarray,
    y: np.ndarray,
    terminal: str,
    beta: float,
    weighting: str = "uniform",
    min_control_sigma: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(u ``[K, d]``, x_K ``[d]``): the optimal open-loop controls for one (X_0, y) from the
    closed form u_j = −(2/β_j) Φ_{K,j+1}ᵀ Q (x_K − t)."""
    inv_beta = control_weights(problem, beta, weighting, min_control_sigma)
    q = _q_matrix(problem, terminal)
    t_y, t_x = terminal_target(problem, terminal)
    x0v = np.asarray(x_init, np.float64).reshape(-1)
    yv = np.asarray(y, np.float64).reshape(-1) * problem.mask
    t = t_y @ yv + t_x @ x0v
    e_k = _m_inverse(problem, inv_beta, q) @ (problem.propagators[0] @ x0v - t)
    phi = problem.propagators
    u = np.stack([-2.0 * inv_beta[j] * phi[j + 1].T @ q @ e_k for j in range(problem.num_steps)])
    return u, t + e_k


def _bures2(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.real(scipy.linalg.sqrtm(a))
    cross = np.real(scipy.linalg.sqrtm(ra @ b @ ra))
    return float(max(np.trace(a) + np.trace(b) - 2.0 * np.trace(cross), 0.0))


def posterior_distance(problem: LQProblem, law: TerminalLaw) -> dict[str, float]:
    """Distances of ``law`` to the exact posterior N(L y, C) on the hole pixels, averaged over y:
    ``w2`` = √(E_y‖(A − L) y‖²_hole + Bures²(S_hh, C_hh)) and ``mean_rmse`` =
    √(E_y‖(A − L) y‖²_hole / n_hole)."""
    hole = problem.mask == 0.0
    cov_y = np.diag(problem.mask) @ problem.world.cov @ np.diag(problem.mask)
    err = (law.mean_map - problem.conditional_mean_map)[hole]
    mean_sq = float(np.trace(err @ cov_y @ err.T))
    jitter = 1e-12 * np.eye(int(hole.sum()))
    b2 = _bures2(
        law.cov[np.ix_(hole, hole)] + jitter, problem.posterior_cov[np.ix_(hole, hole)] + jitter
    )
    return {"w2": float(np.sqrt(mean_sq + b2)), "mean_rmse": float(np.sqrt(mean_sq / hole.sum()))}
