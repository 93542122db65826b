"""``replacement`` — the score-SDE replacement inpainter in EDM form (VIPAINT.md §11.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "replacement"]

cost = prim.sampler_cost


def replacement(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 18,
    solver: str = "heun",
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> InpaintResult:
    """Replacement / score-SDE inpainter, EDM form (VIPAINT.md §11.1).

    x_0 = sigma_max·n; for each step i: x <- EDM step σ_i -> σ_{i+1} (Euler or Heun, with churn
    gamma_i = min(S_churn/N, sqrt2 - 1) inside [S_min, S_max]; ``sampling.integrate`` on the
    pair of levels), then x <- m ⊙ (y + σ_{i+1}·n) + (1 - m) ⊙ x with fresh n. The last step
    lands on σ_N = 0, so the known pixels equal y exactly. Noise of step i: key
    ``fold_in(k_steps, i)`` split into (solver churn key, replacement key). NFE as the sampler
    (2N - 1 for Heun), no gradients.
    """
    cfg = prim.sampler_config(num_steps, solver, schedule, S_churn, S_min, S_max, S_noise)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = cfg.sigmas()
    churn = cfg.S_churn / cfg.num_steps  # integrate on 2 levels: gamma = min(churn / 1, ...)

    def step(x, xs):
        i, s, s_next = xs
        k_solver, k_rep = jax.random.split(jax.random.fold_in(k_steps, i))
        x, _ = sampling.integrate(
            denoise,
            x,
            jnp.stack([s, s_next]),
            k_solver,
            solver=cfg.solver,
            S_churn=churn,
            S_min=cfg.S_min,
            S_max=cfg.S_max,
            S_noise=cfg.S_noise,
        )
        n = jax.random.normal(k_rep, x.shape, jnp.float32)
        return jnp.where(known, y_obs + s_next * n, x), None  # §11.1: noise to the level reached

    x = prim.run_steps(step, sigmas, k_init, y_obs.shape)
    return InpaintResult(x=x, nfe=sampling.nfe(cfg), nfe_backward=0)
