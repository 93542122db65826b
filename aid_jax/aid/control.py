"""AID's controlled sampler (AID.md §2): the frozen EDM sampler with an additive guidance drift.

Clock. A uniform *step clock* r_k = k/K on [0, 1] (Δr = 1/K, horizon T = 1) over the EDM
schedule σ_0 = σ_max > … > σ_{K-1} = σ_min, σ_K = 0 (:func:`aid_jax.sampling.edm_sigmas`). On step
k the noise level moves linearly in r, dσ/dr = K (σ_{k+1} − σ_k), so the probability-flow ODE
dx/dσ = (x − D(x; σ))/σ reads, on the clock,

    dx/dr = b_k(x) + u,    b_k(x) = K (σ_{k+1} − σ_k) (x − D(x; σ_k)) / σ_k,

with the guidance u *added to the drift* (AID.md §1). The Euler step

    x_{k+1} = x_k + Δr (b_k + u_k)

is exactly EDM's Euler step plus Δr·u_k.

Training rollouts (:func:`rollout`). The action is drawn from the Gaussian policy
A_k = μ_k + s ε_k, ε_k ~ N(0, I), with s = √(2λ/β) per coordinate for the per-dimension costs of
AID.md §2 (:func:`gaussian_policy_std`), and advances the Euler step, u_k = A_k. Randomness comes
only from X_0 and ε; the denoiser runs forward only, under ``stop_gradient``. Everything the losses
need is stored (``Rollout``): X_0..X_K, D_0..D_{K-1}, ε_k and μ_k (the action is μ_k + s ε_k).
Memory: (K + 1) + 3K states of the batch's shape; fine for images at K ≤ 18.

Deployment (:func:`controlled_sample`). The noise is dropped (u = μ). Euler as above (NFE K) or
Heun on the step clock (NFE 2K − 1): for a step ending at σ_{k+1} > 0,

    f_1 = b(σ_k, x_k) + μ(k, r_k, σ_k, x_k, D(x_k; σ_k), dσ/dr),      x̃ = x_k + Δr f_1,
    f_2 = K (σ_{k+1} − σ_k) (x̃ − D(x̃; σ_{k+1})) / σ_{k+1}
          + μ(k+1, r_{k+1}, σ_{k+1}, x̃, D(x̃; σ_{k+1}), dσ/dr),
    x_{k+1} = x_k + Δr (f_1 + f_2) / 2,

i.e. the trapezoidal rule with dσ/dr of the current step in both stages, so that for μ = 0 it is
EDM's Heun step x_k + (σ_{k+1} − σ_k)(d + d')/2 exactly; the last step (to σ_K = 0) is Euler, as
in EDM. The guidance is evaluated at both stages and added to both drifts (the second stage at
step index k + 1 ≤ K − 1, so a per-step guidance trained with K steps is used at its own steps).

The guidance is any closure ``guidance_mean(k, r, sigma, x, denoised, ds_dr) -> μ`` (``k``
int32 0-d; ``r``, ``sigma`` and the step's dσ/dr = K(σ_{k+1} − σ_k) float 0-d, the same at both
Heun stages; ``x``/``denoised`` ``[B, ...]``): for images a conv net of (x, D, y, m) with its
parameters and the batch's (y, m) closed over; for the linear–quadratic
benchmark a per-step linear map (``aid_jax.aid.lq``).

One integrator. Both loops are :func:`aid_jax.sampling.integrate` on its step clock
(``clock='step'``): the guidance closure *is* the sampler's drift hook (same signature), and the
rollout's hook adds the policy noise and returns (D_k, ε_k, μ_k) as the hook's auxiliary output,
which the scan stacks; X_0..X_K are the trajectory. Each is one ``lax.scan``, so the denoiser and
the guidance are traced once per solver stage, not once per step. Without guidance
(``guidance_mean=None``) :func:`controlled_sample` is the EDM sampler itself (``clock='sigma'``,
bitwise :func:`aid_jax.sampling.sample` from ``x_init = σ_max·latents``); a guidance that returns
zeros runs on the step clock and differs from it by float32 rounding only (the step clock
computes x + (K(σ_{k+1} − σ_k)(x − D)/σ_k)/K instead of x + (σ_{k+1} − σ_k)(x − D)/σ_k).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import sampling
from aid_jax.sampling import SOLVERS, DenoiseFn, step_clock

__all__ = [
    "GuidanceMeanFn",
    "Rollout",
    "ControlledSample",
    "controlled_nfe",
    "controlled_sample",
    "euler_step",
    "ode_drift",
    "pair_up",
    "gaussian_policy_std",
    "rollout",
    "step_clock",
]

GuidanceMeanFn = sampling.DriftFn
"""``guidance_mean(k int32 0-d, r 0-d, sigma 0-d, x [B,...], denoised [B,...], ds_dr 0-d)
-> mu [B,...]``; ``ds_dr`` = K(σ_{k+1} − σ_k), the current step's dσ/dr, so a guidance can be
expressed in units of the denoised estimate at any step count and solver stage. The same signature
as :data:`aid_jax.sampling.DriftFn`: a guidance is the sampler's drift hook as is."""


def gaussian_policy_std(lam: float, beta: float) -> float:
    """Per-coordinate std s = √(2λ/β) of the Gaussian policy for per-dimension costs (AID.md §2).

    With running cost (β/2)‖a‖²/d the paper's policy variance 2λ/(βd) on the unnormalised cost
    becomes 2λ/β per coordinate, and E[(β/2)‖A‖²/d] = (β/2)‖μ‖²/d + λ.
    """
    if not lam > 0 or not beta > 0:
        raise ValueError(f"lam (temperature) and beta must be > 0, got lam={lam!r}, beta={beta!r}")
    return float(np.sqrt(2.0 * lam / beta))


def ode_drift(
    x: jax.Array, denoised: jax.Array, sigma: jax.Array, sigma_next: jax.Array, num_steps: int
) -> jax.Array:
    """Probability-flow drift on the step clock, b_k = K (σ_{k+1} − σ_k)(x − D)/σ_k (AID.md §2):
    :func:`aid_jax.sampling.ode_slope` on the step clock, the integrator's own arithmetic.

    Args:
        x: State ``[B, ...]`` at noise level ``sigma``.
        denoised: D(x; sigma), same shape.
        sigma: σ_k > 0 (0-d).
        sigma_next: σ_{k+1} (0-d), may be 0.
        num_steps: K.
    """
    return sampling.ode_slope(x, denoised, sigma, num_steps * (sigma_next - sigma))


def euler_step(
    x: jax.Array,
    denoised: jax.Array,
    u: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    num_steps: int,
) -> jax.Array:
    """One Euler step on the step clock, x + Δr (b_k + u) (= EDM Euler + Δr·u): the step
    :func:`aid_jax.sampling.integrate` takes with ``clock='step'`` and drift u."""
    slope = ode_drift(x, denoised, sigma, sigma_next, num_steps) + u
    return sampling.euler_update(x, slope, num_steps=num_steps)


def pair_up(tree):
    """Duplicates every array of a pytree along axis 0: ``a -> concatenate([a, a])``.

    Builds an antithetic batch for :func:`rollout` (``antithetic=True``): sample ``i`` and
    ``i + B/2`` share X_0 and their conditioning (y, m, x0, ...) and receive noises ε and −ε.
    """
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a], axis=0), tree)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """The arrays of one training rollout under the Gaussian policy (a pytree).

    Attributes:
        xs: ``[K + 1, B, ...]`` states X_0..X_K (``xs[0]`` the start, ``xs[-1]`` the terminal).
        denoised: ``[K, B, ...]`` D(X_k; σ_k).
        eps: ``[K, B, ...]`` policy noise ε_k (antithetic: ``eps[:, B/2:] = -eps[:, :B/2]``).
        means: ``[K, B, ...]`` policy means μ_k (no gradient).
        sigmas: ``[K + 1]`` noise levels (σ_K = 0).
        policy_std: s, a 0-d array or one broadcastable to ``[B, ...]`` (per coordinate), or
            ``[K, 1, ...]`` (one per step).
        references: ``[K, B, ...]`` the reference drift μ_ref,k the running cost is measured
            from (``rollout(reference=...)``), or None (the cost charges the whole action).
    """

    xs: jax.Array
    denoised: jax.Array
    eps: jax.Array
    means: jax.Array
    sigmas: jax.Array
    policy_std: jax.Array
    references: jax.Array | None = None

    @property
    def num_steps(self) -> int:
        """K (static)."""
        return self.sigmas.shape[0] - 1

    @property
    def r(self) -> jax.Array:
        """Step clock r_k = k/K, ``[K + 1]``."""
        return step_clock(self.num_steps)

    @property
    def actions(self) -> jax.Array:
        """A_k = μ_k + s ε_k, ``[K, B, ...]``."""
        return self.means + self.policy_std * self.eps

    @property
    def charged(self) -> jax.Array:
        """What the running cost charges: A_k − μ_ref,k, or A_k without a reference."""
        if self.references is None:
            return self.actions
        return self.actions - self.references

    @property
    def drifts(self) -> jax.Array:
        """b_k from the stored X_k and D_k, ``[K, B, ...]`` (no denoiser call)."""
        k = self.num_steps
        shape = (k,) + (1,) * (self.xs.ndim - 1)
        s0 = self.sigmas[:-1].reshape(shape)
        s1 = self.sigmas[1:].reshape(shape)
        return ode_drift(self.xs[:-1], self.denoised, s0, s1, k)


jax.tree_util.register_dataclass(
    Rollout,
    data_fields=["xs", "denoised", "eps", "means", "sigmas", "policy_std", "references"],
    meta_fields=[],
)


def _check_inputs(x: jax.Array, sigmas) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x_init must be a floating array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x_init must be [B, ...] with at least one feature axis, got {x.shape}")
    sigmas = jnp.asarray(sigmas, x.dtype)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(
            f"sigmas must have shape [K + 1] with K >= 1 (e.g. sampling.edm_sigmas(K)), got "
            f"{sigmas.shape}"
        )
    return x, sigmas


def rollout(
    denoise: DenoiseFn,
    guidance_mean: GuidanceMeanFn,
    x_init: jax.Array,
    sigmas: jax.Array,
    key: jax.Array,
    *,
    policy_std: float | jax.Array,
    antithetic: bool = False,
    per_step: bool = False,
    reference: GuidanceMeanFn | None = None,
) -> Rollout:
    """Rolls out K Euler steps of the controlled sampler under the Gaussian policy (AID.md §4).

    For k = 0..K−1 (one ``lax.scan``): D_k = sg[D(X_k; σ_k)], μ_k = sg[μ(k, r_k, σ_k, X_k, D_k)],
    ε_k ~ N(0, I) from ``fold_in(key, k)``, A_k = μ_k + s ε_k and
    X_{k+1} = X_k + Δr (b_k + A_k): :func:`aid_jax.sampling.integrate` (Euler, step clock) with
    A_k as its drift and (D_k, ε_k, μ_k) as the drift's auxiliary output. Nothing in the result
    carries a gradient: the losses re-evaluate the networks on the stored arrays.

    Args:
        denoise: Frozen denoiser ``D(x [B,...], sigma [B]) -> [B,...]``.
        guidance_mean: Policy mean ``μ(k, r, sigma, x, denoised, ds_dr) -> [B,...]``.
        x_init: X_0 at ``sigmas[0]`` (e.g. σ_max·n, n ~ N(0, I)), ``[B, ...]``; used as is.
        sigmas: ``[K + 1]`` decreasing noise levels ending with 0 (``sampling.edm_sigmas(K)``).
        key: PRNG key of the policy noise.
        policy_std: s, a float or an array broadcastable to ``x_init.shape[1:]`` (or to
            ``x_init.shape``); :func:`gaussian_policy_std` gives √(2λ/β). With
            ``per_step=True``: one std per step, ``[K]`` (a σ-dependent running cost).
        antithetic: Draw ε for the first half of the batch and use −ε for the second; sample i
            pairs with i + B/2. The caller makes the pairs share X_0 and their conditioning
            (:func:`pair_up`). Needs an even batch.
        per_step: ``policy_std`` holds one std per step.
        reference: Optional reference drift ``μ_ref(k, r, sigma, x, denoised, ds_dr)`` (same
            signature as the guidance), stored per step so that the running cost can charge
            A_k − μ_ref,k (``Rollout.charged``; AIDConfig ``charge='residual'``).

    Returns:
        :class:`Rollout`.

    Raises:
        ValueError: On bad shapes, or ``antithetic`` with an odd batch.
    """
    x, sigmas = _check_inputs(x_init, sigmas)
    dtype = x.dtype
    batch = x.shape[0]
    if antithetic and batch % 2:
        raise ValueError(f"antithetic=True needs an even batch (pairs i, i + B/2); got B = {batch}")
    s = jnp.asarray(policy_std, dtype)
    if per_step and s.shape != (sigmas.shape[0] - 1,):
        raise ValueError(
            f"per_step policy_std must be [K] = [{sigmas.shape[0] - 1}], got {s.shape}"
        )
    noise_shape = ((batch // 2) if antithetic else batch,) + x.shape[1:]

    def forward_only(x_, sigma_b):
        return jax.lax.stop_gradient(denoise(x_, sigma_b))

    def policy_drift(k, r_k, sigma, x_k, denoised, ds_dr):
        # The action A_k = μ_k + s ε_k is the drift; (D_k, ε_k, μ_k) ride along as the aux.
        mu = jax.lax.stop_gradient(
            jnp.asarray(guidance_mean(k, r_k, sigma, x_k, denoised, ds_dr)).astype(dtype)
        )
        eps = jax.random.normal(jax.random.fold_in(key, k), noise_shape, dtype)
        if antithetic:
            eps = jnp.concatenate([eps, -eps], axis=0)
        s_k = s[k] if per_step else s
        if reference is None:
            ref = jnp.zeros((), dtype)
        else:
            ref = jnp.asarray(reference(k, r_k, sigma, x_k, denoised, ds_dr)).astype(dtype)
            ref = jax.lax.stop_gradient(ref)
        return mu + s_k * eps, (denoised, eps, mu, ref)

    _, xs, (den, eps, mus, refs) = sampling.integrate(
        forward_only,
        x,
        sigmas,
        solver="euler",
        clock="step",
        extra_drift=policy_drift,
        has_aux=True,
        return_trajectory=True,
    )
    if per_step:  # broadcast against the stored ε [K, B, ...]
        s = s.reshape((-1,) + (1,) * x.ndim)
    return Rollout(
        xs=xs,
        denoised=den,
        eps=eps,
        means=mus,
        sigmas=sigmas,
        policy_std=s,
        references=None if reference is None else refs,
    )


@dataclasses.dataclass(frozen=True)
class ControlledSample:
    """Output of :func:`controlled_sample` (a pytree; ``nfe`` is static).

    Attributes:
        x: Final state x_K, float.
        nfe: Denoiser evaluations per sample (K for Euler, 2K − 1 for Heun).
    """

    x: jax.Array
    nfe: int


jax.tree_util.register_dataclass(ControlledSample, data_fields=["x"], meta_fields=["nfe"])


def controlled_nfe(num_steps: int, solver: str = "euler") -> int:
    """Denoiser evaluations of :func:`controlled_sample`: K (Euler) or 2K − 1 (Heun)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return 2 * num_steps - 1 if solver == "heun" else num_steps


def controlled_sample(
    denoise: DenoiseFn,
    guidance_mean: GuidanceMeanFn | None,
    x_init: jax.Array,
    sigmas: jax.Array,
    *,
    solver: str = "euler",
    key: jax.Array | None = None,
    churn: tuple[float, float, float, float] = (0.0, 0.0, float("inf"), 1.0),
) -> ControlledSample:
    """Deployment: the controlled ODE with u = μ (no policy noise); optionally EDM's churn.

    Euler: x_{k+1} = x_k + Δr (b_k + μ_k). Heun: the step-clock trapezoidal rule of the module
    docstring, μ evaluated and added at both stages, the last step (to σ = 0) Euler. Any K.
    :func:`aid_jax.sampling.integrate` on the step clock with the guidance as its drift hook;
    with ``guidance_mean=None`` the plain EDM Euler / Heun sampler on the σ clock (bitwise
    :func:`aid_jax.sampling.sample` for the same start).

    Args:
        denoise: Frozen denoiser.
        guidance_mean: ``μ(k, r, sigma, x, denoised, ds_dr)``, or None for no guidance.
        x_init: State at ``sigmas[0]``, ``[B, ...]``.
        sigmas: ``[K + 1]`` decreasing noise levels (ending with 0 for a full sampler).
        solver: ``'euler'`` or ``'heun'``.
        key: PRNG key of the churn noise (needed when ``churn[0] > 0``).
        churn: ``(S_churn, S_min, S_max, S_noise)`` of EDM's stochastic sampler (Alg. 2): each
            step first raises σ_k to σ̂ = σ_k(1 + γ) with fresh noise, then takes the guided step
            from σ̂ (the module sees σ̂; on the step clock dσ/dr = K(σ_{k+1} − σ̂)). No extra NFE.
            ``S_churn = 0``: deterministic, no noise drawn.

    Returns:
        :class:`ControlledSample` with x_K and the static NFE.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    x, sigmas = _check_inputs(x_init, sigmas)
    S_churn, S_min, S_max, S_noise = churn
    x_last, _ = sampling.integrate(
        denoise,
        x,
        sigmas,
        key,
        solver=solver,
        S_churn=float(S_churn),
        S_min=float(S_min),
        S_max=float(S_max),
        S_noise=float(S_noise),
        clock="sigma" if guidance_mean is None else "step",
        extra_drift=guidance_mean,
    )
    return ControlledSample(x=x_last, nfe=controlled_nfe(sigmas.shape[0] - 1, solver))
