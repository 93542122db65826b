"""AID's actor–critic objectives (AID.md §4) as pure functions of a rollout and closures.

Costs, per dimension (AID.md §2), on the step clock r_k = k/K, Δr = 1/K, T = 1:

* running cost ℓ(a) = (β/2)‖a‖²/d (:func:`running_cost`), paid as ℓ(A_k)Δr per step;
* terminal cost Ψ(x) = Σ_i w_i (x_i − x0_i)²/d, w ≡ 1 by default (:func:`terminal_cost`; hole
  weighting through :func:`hole_weights`), and/or the observed-pixel consistency
  ‖m ⊙ (x − y)‖²/d (:func:`observed_cost`); β may differ per step (``running_cost``);
* critic V̂_k = V_ψ(k, r_k, σ_k, X_k) − λ r_k for k < K, with the −λr term explicit and outside the
  network, and V̂_K = Ψ(X_K) − λT, never the network (:func:`value_estimates`). Under the Gaussian
  policy E[ℓ(A)] = ℓ(μ) + λ, so the relaxed problem's value is the original's minus λ r.

Critic (:func:`critic_loss`): ½ Σ_k mean_B (G_k − V̂_k)² with stop-gradient λ-returns
G_k = ℓ(A_k)Δr + (1 − τ) V̂_{k+1} + τ G_{k+1}, G_K = V̂_K (:func:`lambda_returns`); τ =
``td_lambda`` (named apart from the temperature λ): τ = 0 is the paper's semi-gradient TD(0)
target sg[V̂_{k+1}] + ℓ(A_k)Δr, τ = 1 Monte-Carlo returns.

Actor, likelihood ratio (the paper, :func:`lr_actor_loss`): minimise
Σ_k mean_B sg[δ_k]·log π(A_k|X_k) with δ_k = V̂_{k+1} − V̂_k + ℓ(A_k)Δr (:func:`td_errors`).
Since ∇ log π(A|X) = (ε/s)ᵀ∇μ for A = μ + sε held fixed, the surrogate is written
sg[δ_k]·⟨sg[ε_k]/s, μ_k⟩ summed over coordinates, whose gradient is exactly
Σ_k δ_k (ε_k/s)ᵀ∇μ_k. V̂_k inside δ_k is the critic baseline. Options: GAE-style advantages
Σ_j τ_a^{j−k} δ_{k+j} (:func:`advantages`; τ_a = 0 is δ_k, τ_a = 1 the Monte-Carlo advantage),
normalisation (:func:`normalize_advantages`), antithetic pairs (in the rollout,
``control.rollout(antithetic=True)``).

Actor, pathwise (option, not the paper's, :func:`pathwise_actor_loss`): minimise
Σ_k mean_B V̂(r_{k+1}, X_k + Δr(b_k + μ_φ)) + ℓ(μ_φ)Δr, through the critic (and Ψ at the last
step) only; b_k comes from the stored X_k, D_k, the denoiser is never differentiated.

Actor, backprop (option, a diagnostic, :func:`backprop_actor_loss`): the deterministic deployed
sampler (u = μ_φ, the λ → 0 limit of the relaxed problem) differentiated end to end through the
frozen denoiser, no critic: mean_B [Ψ(x_K) + Σ_k ℓ(μ_k)Δr]. Exact gradients of the deployed
objective at K backward passes per rollout — what the actor class can reach when the estimator is
not the limit (docs/AID_DESIGN.md).

Closures: ``guidance_mean(k, r, sigma, x, denoised, ds_dr) -> μ [B, ...]`` (as in
:mod:`aid_jax.aid.control`), ``value_fn(k, r, sigma, x) -> [B]`` (the critic *network*, without
−λr), ``terminal_fn(x) -> [B]`` (Ψ with x0 closed over). Conditioning (y, m, …) and parameters are
closed over; differentiate with respect to them by building the closure inside the loss function.
The networks run on all K steps at once (``jax.vmap`` over the step axis, i.e. a K·B batch) or,
with ``step_map='map'``, one step at a time (``lax.map``, less memory).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.aid.control import GuidanceMeanFn, Rollout

__all__ = [
    "STEP_MAPS",
    "ValueFn",
    "TerminalFn",
    "advantages",
    "critic_loss",
    "hole_weights",
    "lambda_returns",
    "lr_actor_loss",
    "normalize_advantages",
    "observed_cost",
    "backprop_actor_loss",
    "pathwise_actor_loss",
    "running_cost",
    "terminal_cost",
    "td_errors",
    "value_estimates",
]

ValueFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
"""``value_fn(k int32 0-d, r 0-d, sigma 0-d, x [B, ...]) -> [B]``: the critic network (no −λr)."""

TerminalFn = Callable[[jax.Array], jax.Array]
"""``terminal_fn(x [B, ...]) -> [B]``: the terminal cost Ψ (x0 closed over)."""

STEP_MAPS = ("vmap", "map")


# --------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------


def _mean_features(a: jax.Array, batch_axes: int) -> jax.Array:
    return jnp.mean(a, axis=tuple(range(batch_axes, a.ndim)))


def running_cost(a: jax.Array, beta, *, batch_axes: int = 1) -> jax.Array:
    """ℓ(a) = (β/2)‖a‖²/d per sample (d = number of features).

    Args:
        a: Actions ``[B, ...]`` (or ``[K, B, ...]`` with ``batch_axes=2``).
        beta: Control-cost weight β: a number, or with ``batch_axes=2`` one β_k per step
            (``[K]``, a σ-dependent running cost; ``AIDConfig.betas``).
        batch_axes: Number of leading axes kept; the mean runs over the rest.

    Returns:
        ``a.shape[:batch_axes]``.
    """
    beta = jnp.asarray(beta, a.dtype)
    if beta.ndim == 1:
        if batch_axes != 2 or beta.shape[0] != a.shape[0]:
            raise ValueError(
                f"a per-step beta [{beta.shape[0]}] needs actions [K, B, ...] with K = "
                f"{beta.shape[0]} and batch_axes=2, got {a.shape} with batch_axes={batch_axes}"
            )
        beta = beta[:, None]
    return (0.5 * beta) * _mean_features(jnp.square(a), batch_axes)


def hole_weights(mask: jax.Array, hole_weight: float = 1.0) -> jax.Array:
    """Pixel weights for Ψ: 1 on known pixels (mask 1), ``hole_weight`` in the hole (mask 0)."""
    mask = jnp.asarray(mask, jnp.float32)
    return mask + hole_weight * (1.0 - mask)


def terminal_cost(
    x: jax.Array, x0: jax.Array, weight: jax.Array | None = None, *, batch_axes: int = 1
) -> jax.Array:
    """Ψ(x) = Σ_i w_i (x_i − x0_i)²/d per sample (w ≡ 1: the mean squared error).

    Args:
        x: Terminal states ``[B, ...]``.
        x0: Clean targets, same shape.
        weight: Optional weights broadcastable to ``x`` (e.g. :func:`hole_weights`); normalised
            by d, not by their sum, so hole weighting raises the hole's share.
        batch_axes: Leading axes kept.
    """
    if x.shape != x0.shape:
        raise ValueError(f"x {x.shape} and x0 {x0.shape} must have the same shape")
    sq = jnp.square(x - x0)
    if weight is not None:
        sq = sq * weight
    return _mean_features(sq, batch_axes)


def observed_cost(x: jax.Array, y: jax.Array, mask: jax.Array, *, batch_axes: int = 1):
    """‖m ⊙ (x − y)‖²/d per sample: consistency with the observation on the known pixels only
    (no ground truth; docs/AID_DESIGN.md). ``mask`` broadcasts to ``x`` (1 = known)."""
    if x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} must have the same shape")
    m = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
    return _mean_features(jnp.square(m * (x - y)), batch_axes)


# --------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------


def _over_steps(fn, args, step_map: str):
    """Applies ``fn`` to the k-th slice of every array in ``args`` for all k."""
    if step_map == "vmap":
        return jax.vmap(fn)(*args)
    if step_map == "map":
        return jax.lax.map(lambda a: fn(*a), args)
    raise ValueError(f"step_map must be one of {STEP_MAPS}, got {step_map!r}")


def value_estimates(
    value_fn: ValueFn,
    ro: Rollout,
    terminal_values: jax.Array,
    lam: float,
    *,
    step_map: str = "vmap",
) -> jax.Array:
    """V̂ on the rollout: V̂_k = V_ψ(k, r_k, σ_k, X_k) − λ r_k (k < K), V̂_K = Ψ(X_K) − λT.

    Args:
        value_fn: Critic network ``(k, r, sigma, x) -> [B]``.
        ro: The rollout.
        terminal_values: Ψ(X_K), ``[B]``.
        lam: Temperature λ.
        step_map: ``'vmap'`` or ``'map'`` over the K steps.

    Returns:
        ``[K + 1, B]``, differentiable through ``value_fn`` in rows 0..K−1.
    """
    num_steps = ro.num_steps
    r = ro.r.astype(ro.xs.dtype)
    ks = jnp.arange(num_steps, dtype=jnp.int32)
    net = _over_steps(value_fn, (ks, r[:-1], ro.sigmas[:-1], ro.xs[:-1]), step_map)
    batch = ro.xs.shape[1]
    if net.shape != (num_steps, batch):
        raise ValueError(f"value_fn must return [B] = [{batch}] per step, got {net.shape[1:]}")
    v = net - lam * r[:-1, None]
    v_term = jnp.asarray(terminal_values, v.dtype) - lam * r[-1]  # Ψ(X_K) − λT, T = r_K = 1
    return jnp.concatenate([v, v_term[None]], axis=0)


def step_costs(ro: Rollout, beta: float) -> jax.Array:
    """ℓ(A_k)Δr, ``[K, B]`` (of A_k − μ_ref,k when the rollout stored a reference drift)."""
    return running_cost(ro.charged, beta, batch_axes=2) / ro.num_steps


def td_errors(values: jax.Array, costs_dt: jax.Array) -> jax.Array:
    """δ_k = V̂_{k+1} − V̂_k + ℓ(A_k)Δr, ``[K, B]`` from values ``[K + 1, B]``."""
    return values[1:] - values[:-1] + costs_dt


def lambda_returns(costs_dt: jax.Array, values: jax.Array, td_lambda: float) -> jax.Array:
    """λ-returns G_k = c_k + (1 − τ) V̂_{k+1} + τ G_{k+1}, G_K = V̂_K (no discounting).

    τ = 0: the TD(0) target c_k + V̂_{k+1}; τ = 1: the Monte-Carlo return Σ_{j≥k} c_j + V̂_K.

    Args:
        costs_dt: ``[K, B]`` per-step costs ℓ(A_k)Δr.
        values: ``[K + 1, B]`` value estimates (used as given; stop the gradient outside).
        td_lambda: Trace parameter τ in [0, 1].

    Returns:
        ``[K, B]`` targets.
    """
    if not 0.0 <= td_lambda <= 1.0:
        raise ValueError(f"td_lambda must be in [0, 1] (0: TD(0), 1: Monte Carlo), got {td_lambda}")

    def back(g_next, xs):
        c, v_next = xs
        g = c + (1.0 - td_lambda) * v_next + td_lambda * g_next
        return g, g

    _, g = jax.lax.scan(back, values[-1], (costs_dt, values[1:]), reverse=True)
    return g


def critic_loss(
    value_fn: ValueFn,
    ro: Rollout,
    terminal_values: jax.Array,
    *,
    beta: float,
    lam: float,
    td_lambda: float = 0.0,
    step_map: str = "vmap",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Semi-gradient TD loss ½ Σ_k mean_B (sg[G_k] − V̂_k)² (TD(0) for ``td_lambda = 0``).

    Args:
        value_fn: Critic network ``(k, r, sigma, x) -> [B]`` with its parameters closed over.
        ro: The rollout.
        terminal_values: Ψ(X_K) ``[B]``.
        beta: Control-cost weight β.
        lam: Temperature λ.
        td_lambda: Trace parameter (0: TD(0), the paper; 1: Monte-Carlo returns).
        step_map: ``'vmap'`` or ``'map'``.

    Returns:
        ``(loss, aux)`` with ``aux`` = ``values`` [K + 1, B] (no gradient), ``td_errors`` [K, B]
        and ``costs`` [K, B] (ℓ(A_k)Δr).
    """
    values = value_estimates(value_fn, ro, terminal_values, lam, step_map=step_map)
    costs = step_costs(ro, beta)
    v_sg = jax.lax.stop_gradient(values)
    targets = lambda_returns(costs, v_sg, td_lambda)
    loss = 0.5 * jnp.sum(jnp.mean(jnp.square(targets - values[:-1]), axis=1))
    aux = {"values": v_sg, "td_errors": td_errors(v_sg, costs), "costs": costs}
    return loss, aux


# --------------------------------------------------------------------------------------------
# Actor
# --------------------------------------------------------------------------------------------


def advantages(deltas: jax.Array, adv_lambda: float = 0.0) -> jax.Array:
    """Σ_{j≥k} τ_a^{j−k} δ_j (GAE without discounting), ``[K, B]``; τ_a = 0 gives δ_k."""
    if not 0.0 <= adv_lambda <= 1.0:
        raise ValueError(f"adv_lambda must be in [0, 1], got {adv_lambda}")
    if adv_lambda == 0.0:
        return deltas

    def back(a_next, d):
        a = d + adv_lambda * a_next
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[0]), deltas, reverse=True)
    return adv


def normalize_advantages(
    adv: jax.Array, mode: str | None = None, *, center: bool = False, eps: float = 1e-8
) -> jax.Array:
    """Scales advantages ``[K, B]`` by their batch std (``'per_step'``: one std per step k;
    ``'global'``: one for all), optionally subtracting the mean first; ``None`` returns them."""
    if mode is None or mode == "none":
        return adv
    if mode not in ("per_step", "global"):
        raise ValueError(f"mode must be None, 'per_step' or 'global', got {mode!r}")
    axes = (1,) if mode == "per_step" else (0, 1)
    if center:
        adv = adv - jnp.mean(adv, axis=axes, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(adv), axis=axes, keepdims=True))
    return adv / (std + eps)


def _means(guidance_mean: GuidanceMeanFn, ro: Rollout, step_map: str) -> jax.Array:
    num_steps = ro.num_steps
    r = ro.r.astype(ro.xs.dtype)
    ks = jnp.arange(num_steps, dtype=jnp.int32)
    ds_dr = num_steps * (ro.sigmas[1:] - ro.sigmas[:-1])
    args = (ks, r[:-1], ro.sigmas[:-1], ro.xs[:-1], ro.denoised, ds_dr)
    mu = _over_steps(guidance_mean, args, step_map)
    if mu.shape != ro.means.shape:
        raise ValueError(f"guidance_mean must return x's shape per step, got {mu.shape[1:]}")
    return mu


def lr_actor_loss(
    guidance_mean: GuidanceMeanFn,
    ro: Rollout,
    advantage: jax.Array,
    *,
    step_map: str = "vmap",
) -> jax.Array:
    """Likelihood-ratio surrogate Σ_k mean_B sg[δ_k] ⟨sg[ε_k]/s, μ_φ(k, X_k)⟩ (the paper).

    Its gradient is Σ_k mean_B δ_k (ε_k/s)ᵀ ∇_φ μ_k = Σ_k mean_B δ_k ∇_φ log π_φ(A_k | X_k), the
    policy gradient of the expected cost with the critic as baseline. The value of the surrogate
    is meaningless; only its gradient is.

    Args:
        guidance_mean: μ_φ with the actor parameters closed over.
        ro: The rollout (X_k, D_k, ε_k, s are read; all under stop-gradient).
        advantage: ``[K, B]`` per-step weights: :func:`td_errors` (the paper), or
            :func:`advantages` / :func:`normalize_advantages` of them.
        step_map: ``'vmap'`` or ``'map'``.
    """
    mu = _means(guidance_mean, ro, step_map)
    score = jax.lax.stop_gradient(ro.eps / ro.policy_std)  # ∇_μ log π = (A − μ)/s² = ε/s
    per_sample = jnp.sum((score * mu).reshape(mu.shape[:2] + (-1,)), axis=-1)  # [K, B]
    adv = jax.lax.stop_gradient(advantage)
    return jnp.sum(jnp.mean(adv * per_sample, axis=1))


def pathwise_actor_loss(
    guidance_mean: GuidanceMeanFn,
    value_fn: ValueFn,
    ro: Rollout,
    terminal_fn: TerminalFn,
    *,
    beta: float,
    lam: float,
    step_map: str = "vmap",
) -> jax.Array:
    """Pathwise actor loss Σ_k mean_B [V̂(r_{k+1}, X_k + Δr(b_k + μ_φ)) + ℓ(μ_φ)Δr] (option).

    V̂_{k+1} is the critic network minus λ r_{k+1} for k + 1 < K and Ψ − λT at the last step.
    Gradients reach the actor through the critic (and Ψ) only: b_k is rebuilt from the stored X_k
    and D_k, the denoiser is not called.

    Args:
        guidance_mean: μ_φ with the actor parameters closed over.
        value_fn: Critic network (its parameters are constants here).
        ro: The rollout.
        terminal_fn: Ψ, ``x [B, ...] -> [B]``.
        beta: Control-cost weight β.
        lam: Temperature λ.
        step_map: ``'vmap'`` or ``'map'``.
    """
    num_steps = ro.num_steps
    r = ro.r.astype(ro.xs.dtype)
    mu = _means(guidance_mean, ro, step_map)
    # The rollout's Euler step on the step clock, X_k + Δr (b_k + μ_φ), from the stored b_k.
    slope = jax.lax.stop_gradient(ro.drifts) + mu
    x_next = sampling.euler_update(ro.xs[:-1], slope, num_steps=num_steps)
    ks = jnp.arange(1, num_steps, dtype=jnp.int32)
    if num_steps > 1:
        v_mid = _over_steps(value_fn, (ks, r[1:-1], ro.sigmas[1:-1], x_next[:-1]), step_map)
        v_mid = v_mid - lam * r[1:-1, None]
    else:
        v_mid = jnp.zeros((0, ro.xs.shape[1]), ro.xs.dtype)
    v_last = terminal_fn(x_next[-1]) - lam * r[-1]
    v_next = jnp.concatenate([v_mid, v_last[None]], axis=0)
    charged = mu if ro.references is None else mu - ro.references
    cost = running_cost(charged, beta, batch_axes=2) / num_steps
    return jnp.sum(jnp.mean(v_next + cost, axis=1))


def backprop_actor_loss(
    denoise,
    guidance_mean: GuidanceMeanFn,
    x_init: jax.Array,
    sigmas: jax.Array,
    terminal_fn: TerminalFn,
    *,
    beta,
    reference: GuidanceMeanFn | None = None,
    has_aux: bool = False,
) -> jax.Array | tuple[jax.Array, dict]:
    """mean_B [Ψ(x_K) + Σ_k ℓ(μ_k − μ_ref,k)Δr] of the deterministic controlled Euler sampler
    (u = μ) from ``x_init``, differentiable end to end: through the denoiser (its parameters
    stay constants of the caller), the guidance and Ψ (option ``train.actor='backprop'``).

    Args:
        denoise: ``D(x [B,...], sigma [B]) -> [B,...]``, differentiable in x.
        guidance_mean: μ_φ with the actor parameters closed over.
        x_init: X_0 ``[B, ...]`` at ``sigmas[0]``.
        sigmas: ``[K + 1]`` decreasing, ending with 0.
        terminal_fn: Ψ, ``x [B, ...] -> [B]``.
        beta: β, a number or one per step ``[K]``.
        reference: Optional reference drift; the running cost charges μ − μ_ref, differentiated
            along the trajectory like everything else (the exact gradient of the objective).
        has_aux: Also return ``dict(x=x_K, terminal=Ψ [B], running=Σ_k ℓΔr [B],
            charged_rms=rms of μ − μ_ref)`` (for metrics).
    """
    num_steps = int(sigmas.shape[0]) - 1
    dtype = x_init.dtype

    def drift(k, r_k, sigma, x_k, denoised, ds_dr):
        mu = jnp.asarray(guidance_mean(k, r_k, sigma, x_k, denoised, ds_dr)).astype(dtype)
        charged = mu
        if reference is not None:
            ref = reference(k, r_k, sigma, x_k, denoised, ds_dr)
            charged = mu - jnp.asarray(ref).astype(dtype)
        return mu, charged

    x_last, _, charged = sampling.integrate(
        jax.checkpoint(denoise),  # keep K activations of the denoiser's inputs, not its insides
        x_init,
        sigmas,
        solver="euler",
        clock="step",
        extra_drift=drift,
        has_aux=True,
    )
    running = jnp.sum(running_cost(charged, beta, batch_axes=2), axis=0) / num_steps  # [B]
    terminal = terminal_fn(x_last)
    loss = jnp.mean(terminal + running)
    if not has_aux:
        return loss
    rms = jnp.sqrt(jnp.mean(jnp.square(charged)))
    return loss, dict(x=x_last, terminal=terminal, running=running, charged_rms=rms)
