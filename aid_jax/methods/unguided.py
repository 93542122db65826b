"""``unguided`` — the plain EDM sampler, no conditioning: the reference point of every method."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "unguided"]

cost = prim.sampler_cost


def unguided(
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
    """The unconditional EDM sampler (EDM Alg. 2; :func:`sampling.sample`); ``y``/``mask`` only
    fix the shape. The reference point of every conditioned method; a harness pastes the
    observed pixels back itself.

    x = sigma_max·n(k_init), then ``integrate`` with churn noise from ``k_steps``. NFE 2N - 1
    (Heun) or N (Euler). Default 18 steps (EDM's setting for 32x32 images).
    """
    cfg = prim.sampler_config(num_steps, solver, schedule, S_churn, S_min, S_max, S_noise)
    denoise, y_obs, _, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    latents = jax.random.normal(k_init, y_obs.shape, jnp.float32)
    res = sampling.sample(denoise, latents, k_steps, config=cfg)
    return InpaintResult(x=res.x, nfe=res.nfe, nfe_backward=0)
