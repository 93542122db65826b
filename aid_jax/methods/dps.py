"""``dps`` — diffusion posterior sampling in EDM form (VIPAINT.md §11.3; Chung et al. 2023)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["STEP_FORMS", "cost", "dps"]

STEP_FORMS = ("vp", "vp_exact", "vipaint")


def cost(num_steps, zeta, step_form, sigma_data, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_nonneg("zeta", zeta)
    if step_form not in STEP_FORMS:
        raise ValueError(f"step_form must be one of {STEP_FORMS}, got {step_form!r}")
    prim.check_range("sigma_data", sigma_data, 1e-12, math.inf)
    return num_steps, num_steps


def _step_size(zeta, step_form, sigma_data, s, s_next):
    if step_form == "vp":  # ζ/(a_i a_{i+1}) ≈ ζ(1 + σ_i²), VIPAINT.md §8.1 / §11.3
        return zeta * (1.0 + s**2)
    if step_form == "vp_exact":  # ζ/(a_i a_{i+1}) with a = 1/sqrt(1 + σ²)
        return zeta * jnp.sqrt((1.0 + s**2) * (1.0 + s_next**2))
    return zeta * (sigma_data**2 + s**2)  # "vipaint": ζ_eff (σ_data² + σ²), VIPAINT.md §12.9


def dps(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 250,
    zeta: float = 0.5,
    step_form: str = "vp",
    sigma_data: float = 0.5,
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """Diffusion posterior sampling, EDM form (VIPAINT.md §11.3; Chung et al. 2023).

    Per step σ = σ_i -> σ' = σ_{i+1}: (x̂0, vjp) = jax.vjp(D(·; σ), x); x' = ``ddim_step``
    (η = 1, ancestral) from (x, x̂0); x <- x' - ζ_i ∇_x ||m ⊙ (y - D(x; σ))||₂ — the norm, not
    its square, per sample (cotangent -r/||r|| with r = m ⊙ (y - x̂0)). Step sizes ``step_form``:
    ``"vp"`` ζ_i = ζ(1 + σ_i²) (the official VP step ζ = 0.5 moved to VE, default);
    ``"vp_exact"`` ζ sqrt((1 + σ_i²)(1 + σ_{i+1}²)); ``"vipaint"`` ζ(σ_data² + σ_i²).
    Noise of step i: ``fold_in(k_steps, i)``. NFE N forward + N backward. Default N = 250 (the
    CoPaint benchmark); the official DPS setting is N = 1000 (faithful preset). Observed pixels
    are only approximately reproduced.
    """
    nfe, nfe_b = cost(num_steps, zeta, step_form, sigma_data, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    shape = y_obs.shape

    def step(x, xs):
        i, s, s_next = xs
        x0, vjp = jax.vjp(lambda v: prim.call(denoise, v, s), x)
        r = jnp.where(known, y_obs - x0, 0.0)
        norm = jnp.sqrt(jnp.sum(r**2, axis=(1, 2, 3), keepdims=True))
        # d||r||/dx = -J_Dᵀ r / ||r||; at r = 0 the (sub)gradient is taken as 0.
        (grad,) = vjp(-r / jnp.maximum(norm, 1e-30))
        x_next = prim.ddim_step(x, x0, s, s_next, 1.0, prim.noise(k_steps, i, shape))
        return x_next - _step_size(zeta, step_form, sigma_data, s, s_next) * grad, None

    x = prim.run_steps(step, sigmas, k_init, shape)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_b)
