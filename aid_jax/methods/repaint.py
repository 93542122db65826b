"""``repaint`` — RePaint in EDM form (VIPAINT.md §11.2; Lugmayr et al. 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["cost", "repaint"]


def cost(num_steps, jump_length, jump_n_sample, clamp, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    prim.check_int("jump_length", jump_length)
    prim.check_int("jump_n_sample", jump_n_sample)
    if jump_n_sample > 1 and jump_length >= num_steps:
        # No jump point t ∈ {0, L, ...} < N - L exists: the time travel asked for would silently
        # not happen (RePaint's own guided_diffusion/scheduler.py get_schedule likewise raises
        # for a no-op setting, n_steplength > 1 with n_sample = 1).
        raise ValueError(
            f"jump_length must satisfy 1 <= jump_length < num_steps ({num_steps}) when "
            f"jump_n_sample > 1 (no jump point exists otherwise), got jump_length={jump_length}"
        )
    prim.check_bool("clamp", clamp)
    return prim.schedule_cost(num_steps, jump_length, jump_n_sample), 0


def repaint(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 250,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    clamp: bool = True,
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """RePaint, EDM form (VIPAINT.md §11.2; Lugmayr et al. 2022).

    On the time-travel schedule of :func:`primitives.time_travel_schedule` over
    ``schedule.sigmas(num_steps)``:

    * down-step σ -> σ': x̂0 = D(x; σ), clamped to [-1, 1] when ``clamp`` (default True, the
      official ``clip_denoised: true`` of andreas128/RePaint ``confs/*.yml``, applied in
      ``p_mean_variance`` of ``guided_diffusion/gaussian_diffusion.py``; False = no clamp);
      unknown part = ancestral step (``ddim_step``, η = 1) from (x, x̂0); known part y + σ'·n;
      x' = m ⊙ known + (1 - m) ⊙ unknown (exact y at σ' = 0);
    * up-step σ' -> σ: x + sqrt(σ² - σ'²)·n on the whole image.

    Entry e draws from ``fold_in(k_steps, e)``: 2 noises (ancestral, known) for a down-step, 1
    for an up-step. NFE = number of down-steps = N + (#jump points)(r - 1)L: 2,410 at the
    defaults (N = 250, L = 10, r = 10); up-steps cost nothing. No gradients. With
    ``jump_n_sample > 1`` the jump length must satisfy 1 <= ``jump_length`` < ``num_steps``
    (``ValueError`` otherwise: no jump point would exist).
    """
    nfe, _ = cost(num_steps, jump_length, jump_n_sample, clamp, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    schedule = prim.time_travel_schedule(num_steps, jump_length, jump_n_sample)
    shape = y_obs.shape

    def down(x, s, s_next, k):
        n = jax.random.normal(k, (2, *shape), jnp.float32)
        x0 = prim.call(denoise, x, s)
        if clamp:
            x0 = prim.clip_data(x0)
        x_unknown = prim.ddim_step(x, x0, s, s_next, 1.0, n[0])
        return jnp.where(known, y_obs + s_next * n[1], x_unknown)

    def up(x, s, s_up, k):
        return prim.go_up(x, s, s_up, jax.random.normal(k, shape, jnp.float32))

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x = prim.run_schedule(down, up, x, sigmas, schedule, k_steps)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)
