"""``ddnm_plus`` — DDNM⁺: DDNM with noise-aware scaling and time travel (VIPAINT.md §11.6)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "ddnm_plus"]


def cost(num_steps, eta, sigma_y, travel_length, travel_repeat, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_range("eta", eta, 0.0, 1.0)
    prim.check_nonneg("sigma_y", sigma_y)
    return prim.schedule_cost(num_steps, travel_length, travel_repeat), 0


def ddnm_plus(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    travel_length: int = 10,
    travel_repeat: int = 3,
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """DDNM⁺: DDNM with noise-aware scaling and time travel (VIPAINT.md §11.6).

    What is implemented (the official DDNM⁺ rules for the inpainting operator, in VE units; a
    VP level t maps to σ = sqrt(1 - ᾱ)/sqrt(ᾱ)):

    * schedule: :func:`primitives.time_travel_schedule` (``travel_length`` L,
      ``travel_repeat`` s); ``travel_repeat=1`` switches time travel off;
    * down-step σ -> σ' with x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ:
      - σ_y = 0: the DDNM update of :func:`ddnm.ddnm` (so
        ``ddnm_plus(sigma_y=0, travel_repeat=1)`` equals ``ddnm`` with the same key);
      - σ_y > 0, per pixel: missing x' = x̂0 + σ'(η n + sqrt(1 - η²) ε̂); observed with σ' < σ_y:
        x' = x̂0 + λ(y - x̂0) + η σ' n with λ = sqrt(1 - η²) σ'/σ_y (the correction scaled so its
        noise stays below the step's noise budget, no ε̂ term); observed with σ' >= σ_y:
        x' = y + sqrt(σ'² - σ_y²)·n (λ = 1, fresh noise reduced by the noise already in y);
    * up-step to σ_up: x = x̂0_last + σ_up·n, with x̂0_last the (uncorrected) x̂0 of the latest
      down-step — DDNM's time travel re-noises its last clean estimate rather than the state.

    Entry e draws from ``fold_in(k_steps, e)``. NFE = number of down-steps: N + (#jump points)·
    (s - 1)·L = 280 at the defaults (N = 100, L = 10, s = 3). No gradients.
    """
    nfe, _ = cost(num_steps, eta, sigma_y, travel_length, travel_repeat, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    schedule = prim.time_travel_schedule(num_steps, travel_length, travel_repeat)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def down(carry, s, s_next, k):
        x, _ = carry
        n = jax.random.normal(k, shape, jnp.float32)
        x0 = prim.call(denoise, x, s)
        eps = (x - x0) / s
        missing = x0 + s_next * (eta * n + root * eps)
        if sigma_y == 0:
            observed = y_obs + s_next * (eta * n + root * eps)
        else:
            lam = root * s_next / sigma_y
            below = x0 + lam * (y_obs - x0) + eta * s_next * n
            above = y_obs + jnp.sqrt(jnp.maximum(s_next**2 - sigma_y**2, 0.0)) * n
            observed = jnp.where(s_next < sigma_y, below, above)
        return jnp.where(known, observed, missing), x0

    def up(carry, s, s_up, k):
        _, x0_last = carry
        return x0_last + s_up * jax.random.normal(k, shape, jnp.float32), x0_last

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = prim.run_schedule(down, up, (x, jnp.zeros_like(x)), sigmas, schedule, k_steps)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)
