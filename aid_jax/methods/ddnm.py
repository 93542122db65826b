"""``ddnm`` — DDNM in EDM form (VIPAINT.md §11.6; Wang et al. 2023)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "ddnm"]


def cost(num_steps, eta, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_range("eta", eta, 0.0, 1.0)
    return num_steps, 0


def ddnm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.85,
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """DDNM, EDM form (VIPAINT.md §11.6; Wang et al. 2023).

    Step σ -> σ': x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ (from the uncorrected x̂0); range-null-space
    correction x̂0' = A⁺y + (I - A⁺A) x̂0 = m ⊙ y + (1 - m) ⊙ x̂0; then
    x' = x̂0' + σ'(η n + sqrt(1 - η²) ε̂) (exact y at σ' = 0). Noise of step i:
    ``fold_in(k_steps, i)``. Default 100 steps, η = 0.85. NFE N, no gradients.
    """
    nfe, _ = cost(num_steps, eta, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def step(x, xs):
        i, s, s_next = xs
        x0 = prim.call(denoise, x, s)
        eps = (x - x0) / s
        x0c = jnp.where(known, y_obs, x0)
        return x0c + s_next * (eta * prim.noise(k_steps, i, shape) + root * eps), None

    x = prim.run_steps(step, sigmas, k_init, shape)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)
