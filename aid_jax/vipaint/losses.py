"""VIPaint's loss terms as pure functions in VE / EDM variables (VIPAINT.md §3.4, §4).

Notation: the keypoint chain runs top-down over noise levels σ_K > … > σ_1; node i holds x_i at
level σ_i. Every function is elementwise or a per-sample reduction over the non-batch axes, in
float32, with no host syncs, so all of it jits and vmaps.

* :func:`gauss_kl` — KL(N(m, s²) ‖ N(m_p, c²)) per element, exact (default) or the official
  code's form with the mean term (c²/2)Δμ² (defect D1, ``form="official"``).
* :func:`keypoint_prior` — the model's DDIM(η̃) jump between keypoints: mean D + √(σ_i² − c_i²)·ε̂,
  std c_i = η̃·σ_i·√(1 − σ_i²/σ_{i+1}²) (§3.4).
* :func:`q_bridge`, :func:`p_bridge` — the Gaussian bridges of the prior loss (§4.3 steps 5–6).
* :func:`prior_grid`, :func:`prior_interval` — the σ-grid above σ_K and the stratified choice of
  one interval per sample among the valid candidates (§4.3 steps 1–3, the global validity rule).
* :func:`reconstruction_loss` — masked L1 (+ an optional LPIPS term) on the rendered estimate
  (§4.4).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from aid_jax import sampling

__all__ = [
    "KL_FORMS",
    "PRIOR_ENDPOINTS",
    "REC_NORMALISATIONS",
    "gauss_kl",
    "keypoint_prior",
    "p_bridge",
    "prior_grid",
    "prior_interval",
    "q_bridge",
    "reconstruction_loss",
]

KL_FORMS = ("exact", "official")
PRIOR_ENDPOINTS = ("tweedie", "official")
REC_NORMALISATIONS = ("all", "observed")
# Floor of bridge variances near σ_K, where v'(v − v')/v is tiny (§4.3 step 8).
VAR_FLOOR = 1e-12


def gauss_kl(m, s, m_p, c, form: str = "exact") -> jax.Array:
    """KL(N(m, s²) ‖ N(m_p, c²)) elementwise, with stds s, c > 0.

    ``'exact'``: log(c/s) + (s² + (m − m_p)²)/(2c²) − ½.
    ``'official'``: log(c/s) + s²/(2c²) + (c²/2)(m − m_p)² − ½ — the VIPaint code's precedence
    slip (VIPAINT.md §7, D1), kept to reproduce its numbers.
    """
    if form not in KL_FORMS:
        raise ValueError(f"form must be one of {KL_FORMS}, got {form!r}")
    m, s, m_p, c = (jnp.asarray(a, jnp.float32) for a in (m, s, m_p, c))
    d2 = jnp.square(m - m_p)
    mean_term = d2 / (2.0 * c * c) if form == "exact" else 0.5 * c * c * d2
    return jnp.log(c / s) + jnp.square(s) / (2.0 * c * c) + mean_term - 0.5


def keypoint_prior(denoised, x_above, sigma_above, sigma_here, eta_tilde: float):
    """p(x_i | x_{i+1}) = N(D + √(σ_i² − c²)·ε̂, c²) with ε̂ = (x_{i+1} − D)/σ_{i+1} and
    c = η̃·σ_i·√(1 − σ_i²/σ_{i+1}²) (VIPAINT.md §3.4). η̃ = √0.2 reproduces the official "η inside
    the root"; η̃ = 0 is the deterministic DDIM (Euler) step, η̃ = 1 the ancestral step.

    Returns:
        (mean, std c) — c is a scalar (it depends on the levels only).
    """
    sigma_above = jnp.asarray(sigma_above, jnp.float32)
    sigma_here = jnp.asarray(sigma_here, jnp.float32)
    eps = (x_above - denoised) / sigma_above
    c = eta_tilde * sigma_here * jnp.sqrt(1.0 - jnp.square(sigma_here / sigma_above))
    mean = denoised + jnp.sqrt(jnp.square(sigma_here) - jnp.square(c)) * eps
    return mean, c


def q_bridge(x_top, s_top, x_sigma, sigma, sigma_lo):
    """q(x_{σ'} | x_σ, x_K) for the VE forward process started at x_K with per-element level s_K:
    v = σ² − s_K², v' = σ'² − s_K², mean x_K + (v'/v)(x_σ − x_K), variance v'(v − v')/v."""
    v = jnp.square(sigma) - jnp.square(s_top)
    v_lo = jnp.maximum(jnp.square(sigma_lo) - jnp.square(s_top), VAR_FLOOR)
    mean = x_top + (v_lo / v) * (x_sigma - x_top)
    var = jnp.maximum(v_lo * (v - v_lo) / v, VAR_FLOOR)
    return mean, var


def p_bridge(x_sigma, denoised, sigma, sigma_lo, sigma_top, endpoint: str = "tweedie"):
    """The model's bridge: the same formulas as :func:`q_bridge` with the scheduled top level σ_K
    and a predicted endpoint x̃_K from ε̂ = (x_σ − D(x_σ; σ))/σ:
    ``'tweedie'`` x̃_K = x_σ − ((σ² − σ_K²)/σ)·ε̂ = E[x_K | x_σ] (default);
    ``'official'`` x̃_K = x_σ − √(σ² − σ_K²)·ε̂ (defect D5)."""
    if endpoint not in PRIOR_ENDPOINTS:
        raise ValueError(f"endpoint must be one of {PRIOR_ENDPOINTS}, got {endpoint!r}")
    eps = (x_sigma - denoised) / sigma
    big_v = jnp.square(sigma) - jnp.square(sigma_top)
    big_v_lo = jnp.maximum(jnp.square(sigma_lo) - jnp.square(sigma_top), VAR_FLOOR)
    if endpoint == "tweedie":
        x_end = x_sigma - (big_v / sigma) * eps
    else:
        x_end = x_sigma - jnp.sqrt(big_v) * eps
    mean = x_end + (big_v_lo / big_v) * (x_sigma - x_end)
    var = jnp.maximum(big_v_lo * (big_v - big_v_lo) / big_v, VAR_FLOOR)
    return mean, var


def prior_grid(sigma_top: float, sigma_max: float = 80.0, intervals: int = 140, rho: float = 7.0):
    """g_0 = σ_K < g_1 < … < g_M = σ_max with EDM ρ-spacing (VIPAINT.md §4.3 step 1)."""
    if not 0 < sigma_top < sigma_max:
        raise ValueError(f"need 0 < sigma_top < sigma_max, got {sigma_top}, {sigma_max}")
    if intervals < 2:
        raise ValueError(f"intervals must be >= 2, got {intervals}")
    # sampling.edm_sigmas runs high → low and appends 0; drop the 0 and reverse.
    grid = sampling.edm_sigmas(intervals + 1, sigma_top, sigma_max, rho)[:-1]
    return grid[::-1].astype(jnp.float32)


def prior_interval(grid, s_top_max, u):
    """Stratified interval choice (§4.3 steps 2–3). An interval (g_{j−1}, g_j] is valid when
    g_{j−1} > max(s_K) (one global maximum); the candidates are the valid intervals except the
    lowest; with L of them, sample b takes j = j_first + ⌊u_b·L⌋.

    Args:
        grid: ``[M + 1]`` increasing levels from :func:`prior_grid`.
        s_top_max: Scalar max of the top node's std over elements and samples.
        u: ``[B]`` stratified offsets in [0, 1).

    Returns:
        (σ [B], σ' [B], L) — L (int32, ≥ 0) weights the per-interval KL (W = L, §4.3 step 7);
        if no interval is valid, L = 0 and the returned levels are the top interval's.
    """
    m = grid.shape[0] - 1
    # First j with g_{j−1} > s_max, i.e. 1 + (number of grid points ≤ s_max); +1 skips it.
    first_valid = 1 + jnp.searchsorted(grid, s_top_max, side="right")
    j_first = first_valid + 1
    count = jnp.maximum(m - j_first + 1, 0)
    offset = jnp.floor(jnp.asarray(u, jnp.float32) * count.astype(jnp.float32))
    j = j_first + offset.astype(j_first.dtype)
    j = jnp.clip(j, 1, m)
    return grid[j], grid[j - 1], count.astype(jnp.int32)


def reconstruction_loss(
    rendered,
    y,
    mask,
    *,
    l1_weight: float = 100.0,
    kappa: float = 1.0,
    lpips_weight: float = 0.0,
    lpips_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    normalise: str = "all",
) -> jax.Array:
    """L_rec per sample (VIPAINT.md §4.4): w_L1·κ·mean|m⊙(y − p̂)| + w_LP·LPIPS(m⊙y, m⊙p̂).

    ``normalise='all'`` (official) averages the L1 over every element, holes included;
    ``'observed'`` divides by the number of observed elements. ``lpips_fn(a, b) -> [B]`` is
    needed when ``lpips_weight > 0``.
    """
    if normalise not in REC_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {REC_NORMALISATIONS}, got {normalise!r}")
    mask = jnp.broadcast_to(mask, rendered.shape).astype(jnp.float32)
    axes = tuple(range(1, rendered.ndim))
    abs_err = jnp.sum(jnp.abs(mask * (y - rendered)), axis=axes)
    if normalise == "all":
        denom = jnp.asarray(rendered[0].size, jnp.float32)
    else:
        denom = jnp.maximum(jnp.sum(mask, axis=axes), 1.0)
    loss = l1_weight * kappa * abs_err / denom
    if lpips_weight:
        if lpips_fn is None:
            raise ValueError("lpips_weight > 0 needs lpips_fn")
        loss = loss + lpips_weight * lpips_fn(mask * y, mask * rendered)
    return loss
