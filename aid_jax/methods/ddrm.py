"""``ddrm`` — DDRM for inpainting in EDM form (VIPAINT.md §11.5; Kawar et al. 2022)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "ddrm"]


def cost(num_steps, eta, eta_b, sigma_y, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_range("eta", eta, 0.0, 1.0)
    prim.check_range("eta_b", eta_b, 0.0, 1.0)
    prim.check_nonneg("sigma_y", sigma_y)
    return num_steps, 0


def ddrm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 20,
    eta: float = 0.85,
    eta_b: float = 1.0,
    sigma_y: float = 0.0,
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """DDRM for inpainting, EDM form (VIPAINT.md §11.5; Kawar et al. 2022).

    For inpainting the SVD of H is the identity on observed pixels (singular value 1) and zero
    on the hole, so every rule is per pixel. Step σ -> σ' with x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ:

    * missing: x' = x̂0 + σ'(η n + sqrt(1 - η²) ε̂);
    * observed, σ' < σ_y: x' = x̂0 + sqrt(1 - η²) σ' (y - x̂0)/σ_y + η σ' n;
    * observed, σ' >= σ_y: x' = (1 - η_b) x̂0 + η_b y + sqrt(σ'² - η_b² σ_y²) n
      (σ_y = 0, η_b = 1: y + σ'·n, exact y at σ' = 0).

    Noise of step i: ``fold_in(k_steps, i)``. Defaults 20 steps, η = 0.85, η_b = 1 (RED-diff's
    ``ddrm.yaml``). NFE N, no gradients.
    """
    nfe, _ = cost(num_steps, eta, eta_b, sigma_y, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def step(x, xs):
        i, s, s_next = xs
        n = prim.noise(k_steps, i, shape)
        x0 = prim.call(denoise, x, s)
        eps = (x - x0) / s
        missing = x0 + s_next * (eta * n + root * eps)
        std_obs = jnp.sqrt(jnp.maximum(s_next**2 - (eta_b * sigma_y) ** 2, 0.0))
        observed = (1.0 - eta_b) * x0 + eta_b * y_obs + std_obs * n
        if sigma_y > 0:
            below = x0 + (root * s_next / sigma_y) * (y_obs - x0) + eta * s_next * n
            observed = jnp.where(s_next < sigma_y, below, observed)
        return jnp.where(known, observed, missing), None

    x = prim.run_steps(step, sigmas, k_init, shape)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)
