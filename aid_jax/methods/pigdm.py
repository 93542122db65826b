"""``pigdm`` — pseudoinverse-guided diffusion (ΠGDM) in EDM form (VIPAINT.md §11.4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["FORMS", "cost", "pigdm"]

FORMS = ("paper", "reddiff")


def cost(num_steps, eta, w, sigma_y, sigma_data, form, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_range("eta", eta, 0.0, 1.0)
    prim.check_range("w", w, -math.inf, math.inf)
    prim.check_nonneg("sigma_y", sigma_y)
    prim.check_range("sigma_data", sigma_data, 1e-12, math.inf)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return num_steps, num_steps


def pigdm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.0,
    w: float = 1.0,
    sigma_y: float = 0.0,
    sigma_data: float = 0.5,
    form: str = "paper",
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """Pseudoinverse-guided diffusion (ΠGDM), EDM form (VIPAINT.md §11.4; Song et al. 2023).

    Per step σ -> σ': (x̂0, vjp) = jax.vjp(D(·; σ), x); g = J_Dᵀ (m ⊙ (y - x̂0)) (one VJP);
    ``form="paper"``: x' = DDIM_η(x; σ -> σ') + w·σ(σ - σ')·g/(r² + σ_y²) with
    r² = σ²σ_d²/(σ² + σ_d²) (posterior variance of Gaussian data of std σ_d);
    ``form="reddiff"``: x' = DDIM_η + w·g (RED-diff's update moved to VE units, no 1/(r² + σ_y²)).
    Noise (only when η > 0) of step i: ``fold_in(k_steps, i)``. NFE N forward + N backward.
    Observed pixels are only approximately reproduced.
    """
    nfe, nfe_b = cost(num_steps, eta, w, sigma_y, sigma_data, form, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    shape = y_obs.shape

    def step(x, xs):
        i, s, s_next = xs
        x0, vjp = jax.vjp(lambda v: prim.call(denoise, v, s), x)
        (g,) = vjp(jnp.where(known, y_obs - x0, 0.0))
        noise = prim.noise(k_steps, i, shape) if eta > 0 else jnp.zeros_like(x)
        x_next = prim.ddim_step(x, x0, s, s_next, eta, noise)
        if form == "paper":
            r2 = s**2 * sigma_data**2 / (s**2 + sigma_data**2)
            guide = (w * s * (s - s_next) / (r2 + sigma_y**2)) * g
        else:
            guide = w * g
        return x_next + guide, None

    x = prim.run_steps(step, sigmas, k_init, shape)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_b)
