"""Shared EDM primitives of the zero-shot methods (VIPAINT.md §8.1, VE form in data units) and
their host-side option checks.

x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ; :func:`ddim_step` (η = 1 is the ancestral step), :func:`go_up`
(forward noising σ' -> σ), RePaint's :func:`time_travel_schedule` and :func:`run_schedule` (one
``lax.scan`` over it).

Noise rules every method follows: ``k_init, k_steps = split(key)`` (:func:`setup`); the start is
x = sigma_max·n with n = normal(k_init); step (or schedule entry) i draws its noises from
``fold_in(k_steps, i)`` (:func:`noise`). The σ grid is ``schedule.sigmas(num_steps)`` of the
method's ``schedule`` option, a ``sampling.EDMSchedule`` (sigma_0 = sigma_max, ...,
sigma_{N-1} = sigma_min, sigma_N = 0); :data:`SCHEDULE` (EDM's) is every method's default.

Size limits: every count option (:data:`SIZE_OPTIONS`: step counts, jump lengths and repeats,
samples, iterations) is at most :data:`MAX_COUNT` (10,000), and a time-travel schedule has at
most :data:`MAX_SCHEDULE` (1,000,000) entries (its length in closed form,
:func:`time_travel_size`). Both are checked in O(1), before any schedule, grid or buffer is built
(``registry.merge_options`` for every method, and each method's own option checks).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import sampling
from aid_jax.methods.contract import DenoiseFn, check_labels, with_labels

__all__ = [
    "MAX_COUNT",
    "MAX_SCHEDULE",
    "SCHEDULE",
    "SIZE_OPTIONS",
    "call",
    "check_bool",
    "check_grid",
    "check_int",
    "check_max",
    "check_nonneg",
    "check_range",
    "check_schedule",
    "check_sizes",
    "clip_data",
    "ddim_coeffs",
    "ddim_step",
    "go_up",
    "noise",
    "prepare",
    "run_schedule",
    "run_steps",
    "sampler_config",
    "sampler_cost",
    "schedule_cost",
    "setup",
    "step_xs",
    "time_travel_schedule",
    "time_travel_size",
]

# Every method's default ``schedule`` option: EDM's (sigma_min 0.002, sigma_max 80, rho 7).
SCHEDULE = sampling.EDMSchedule()

# The documented maxima of the size options (see the module docstring).
MAX_COUNT = 10_000  # any count option: num_steps, jump lengths and repeats, samples, ...
MAX_SCHEDULE = 1_000_000  # entries of a time-travel schedule (RePaint, DDNM+)
SIZE_OPTIONS = (
    "num_steps",
    "jump_length",
    "jump_n_sample",
    "travel_length",
    "travel_repeat",
    "samples_per_fit",
    "num_iters",
    "num_mc",
    "lr_decay_every",
    "prior_grid_intervals",
)


# ---------------------------------------------------------------------------------------------
# Steps (VIPAINT.md §8.1)


def ddim_step(
    x: jax.Array,
    denoised: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    eta: float,
    noise: jax.Array,
) -> jax.Array:
    """DDIM(η) step σ -> σ' < σ in VE form (VIPAINT.md §8.1).

    x' = x̂0 + sqrt(σ'² - c²)·ε̂ + c·n with ε̂ = (x - x̂0)/σ and c = η σ' sqrt(1 - σ'²/σ²).
    η = 0 is the Euler step of the probability-flow ODE, x' = x̂0 + (σ'/σ)(x - x̂0); η = 1 the
    ancestral (DDPM posterior) step with mean x̂0 + (σ'²/σ)·ε̂ and std σ' sqrt(1 - σ'²/σ²).
    σ' = 0 returns x̂0.
    """
    keep, c = ddim_coeffs(sigma, sigma_next, eta)
    eps = (x - denoised) / sigma
    return denoised + keep * eps + c * noise


def ddim_coeffs(sigma: jax.Array, sigma_next: jax.Array, eta: float):
    """``(sqrt(σ'² - c²), c)`` of the DDIM(η) step σ -> σ' (:func:`ddim_step`): the weight of ε̂
    and the std of the fresh noise, c = η σ' sqrt(1 - σ'²/σ²)."""
    ratio2 = (sigma_next / sigma) ** 2
    c = eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - ratio2, 0.0))
    # sqrt(σ'² - c²) = σ' sqrt(1 - η²(1 - σ'²/σ²)), clipped against rounding.
    keep = sigma_next * jnp.sqrt(jnp.maximum(1.0 - eta**2 * (1.0 - ratio2), 0.0))
    return keep, c


def clip_data(x: jax.Array) -> jax.Array:
    """x clamped to the data range [-1, 1] (the official codes' ``clip_denoised`` of x̂0); its
    derivative is 0 where x was clipped."""
    return jnp.clip(x, -1.0, 1.0)


def go_up(x: jax.Array, sigma: jax.Array, sigma_up: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward noising from σ to σ_up > σ: x + sqrt(σ_up² - σ²)·n (VIPAINT.md §8.1)."""
    return x + jnp.sqrt(jnp.maximum(sigma_up**2 - sigma**2, 0.0)) * noise


def time_travel_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
    """RePaint's resampling ("time travel") schedule as grid indices, built on the host.

    In VP time t = N-1, ..., 0, -1 (-1 = clean): descend one step at a time; on arriving at a
    jump point t ∈ {0, L, 2L, ...} < N - L that still has resamplings left (``jump_n_sample - 1``
    each), go back up L steps one at a time and descend again (Lugmayr et al. 2022; the same
    schedule drives DDNM's time travel). Returned as indices i = N-1-t into
    ``schedule.sigmas(num_steps)`` (0 = sigma_max, N = sigma 0): consecutive entries differ by ±1,
    +1 is a down-step (one denoiser call), -1 an up-step. With N = 250, L = 10, r = 10: 4,571
    entries, 2,410 down-steps and 2,160 up-steps.

    Args:
        num_steps: N, the number of grid steps.
        jump_length: L (>= 1).
        jump_n_sample: r, visits per jump point (>= 1; 1 = no time travel).

    Returns:
        int32 NumPy array ``[E + 1]`` from 0 to ``num_steps``.

    Raises:
        ValueError: an argument is not an int in [1, :data:`MAX_COUNT`], or the schedule would
            have more than :data:`MAX_SCHEDULE` entries (checked in O(1) before it is built).
    """
    time_travel_size(num_steps, jump_length, jump_n_sample)
    remaining = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t = num_steps - 1
    ts = [t]
    while t >= 0:
        t -= 1
        ts.append(t)
        if remaining.get(t, 0) > 0:
            remaining[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return (num_steps - 1 - np.asarray(ts)).astype(np.int32)


def time_travel_size(num_steps: int, jump_length: int, jump_n_sample: int) -> tuple[int, int]:
    """``(entries, down_steps)`` of :func:`time_travel_schedule` in O(1), after checking its
    arguments and the limits (``ValueError``).

    With J = #jump points = len(range(0, N - L, L)) and U = J (r - 1) L up-steps (each jump
    point is revisited r - 1 times, L steps up and L down): entries = N + 2U + 1, down-steps
    = N + U (the NFE).
    """
    for name, v in (
        ("num_steps", num_steps),
        ("jump_length", jump_length),
        ("jump_n_sample", jump_n_sample),
    ):
        check_int(name, v, hi=MAX_COUNT)
    n, length, r = int(num_steps), int(jump_length), int(jump_n_sample)
    up = len(range(0, n - length, length)) * (r - 1) * length
    entries = n + 2 * up + 1
    if entries > MAX_SCHEDULE:
        raise ValueError(
            f"a time-travel schedule with num_steps={n}, jump length {length} and {r} visits per "
            f"jump point has {entries:,} entries, above the maximum {MAX_SCHEDULE:,} "
            "(aid_jax.methods.primitives.MAX_SCHEDULE); use fewer steps, jumps or repeats"
        )
    return entries, n + up


# ---------------------------------------------------------------------------------------------
# Option checks and costs (host side, static)


def check_int(name: str, v, lo: int = 1, hi: int | None = None) -> None:
    """An int (not bool) >= ``lo`` and, if ``hi`` is given, <= ``hi``; else ``ValueError``."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if hi is not None:
        check_max(name, v, hi)


def check_max(name: str, v, hi: int = MAX_COUNT) -> None:
    """O(1) upper bound of a size option: an int (not bool) above ``hi`` is a ``ValueError``
    naming the option and the limit; other values are left to the option's own checks."""
    if isinstance(v, int | np.integer) and not isinstance(v, bool) and v > hi:
        limit = " (aid_jax.methods.primitives.MAX_COUNT)" if hi == MAX_COUNT else ""
        raise ValueError(
            f"{name} must be at most {hi:,}{limit}, got {v!r}; the limit is checked before any "
            "schedule or buffer is built"
        )


def check_sizes(options) -> None:
    """:func:`check_max` of every size option (:data:`SIZE_OPTIONS`) in the mapping
    ``options``: the O(1) guard ``registry.merge_options`` runs for every method."""
    for name in SIZE_OPTIONS:
        if name in options:
            check_max(name, options[name])


def check_range(name: str, v, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")


def check_nonneg(name: str, v) -> None:
    check_range(name, v, 0.0, math.inf)


def check_bool(name: str, v) -> None:
    if not isinstance(v, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {v!r}")


def check_schedule(schedule) -> None:
    """An ``EDMSchedule`` (its values were checked when it was made), else ``ValueError``."""
    if not isinstance(schedule, sampling.EDMSchedule):
        raise ValueError(
            f"schedule must be a sampling.EDMSchedule (or pass sigma_min, sigma_max, rho), got "
            f"{schedule!r}"
        )


def check_grid(num_steps, schedule) -> None:
    """``num_steps`` (an int in [1, :data:`MAX_COUNT`]) and ``schedule`` of a σ grid
    ``schedule.sigmas(num_steps)``."""
    check_int("num_steps", num_steps, hi=MAX_COUNT)
    check_schedule(schedule)


def sampler_config(
    num_steps, solver, schedule, S_churn, S_min, S_max, S_noise
) -> sampling.SamplerConfig:
    check_max("num_steps", num_steps)  # the rest of num_steps's rules are SamplerConfig's
    check_schedule(schedule)
    return sampling.SamplerConfig(
        solver=solver,
        num_steps=num_steps,
        schedule=schedule,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
    )


def sampler_cost(num_steps, solver, schedule, S_churn, S_min, S_max, S_noise):
    """``(nfe, 0)`` of the EDM sampler with these options (checked by ``SamplerConfig``)."""
    cfg = sampler_config(num_steps, solver, schedule, S_churn, S_min, S_max, S_noise)
    return sampling.nfe(cfg), 0


def schedule_cost(num_steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Denoiser calls of a time-travel schedule: its number of down-steps (O(1), without
    building it; :func:`time_travel_size`, which also checks the limits)."""
    return time_travel_size(num_steps, jump_length, jump_n_sample)[1]


# ---------------------------------------------------------------------------------------------
# Shared plumbing (trace time)


def prepare(y, mask) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y_obs float32 [B,H,W,C] with zeros in the hole, known bool [B,H,W,1|C], mask float32)."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask)
    if y.ndim != 4:
        raise ValueError(f"y must be [B, H, W, C] (NHWC), got shape {y.shape}")
    b, h, w, c = y.shape
    if (
        mask.ndim != 4
        or mask.shape[1:3] != (h, w)
        or mask.shape[0] not in (1, b)
        or mask.shape[3] not in (1, c)
    ):
        raise ValueError(
            f"mask has shape {mask.shape}; expected [{b}, {h}, {w}, 1] or [{b}, {h}, {w}, {c}] "
            f"for y of shape {y.shape}"
        )
    mask = jnp.broadcast_to(mask.astype(jnp.float32), (b, h, w, mask.shape[3]))
    known = mask > 0.5
    y_obs = jnp.where(known, y.astype(jnp.float32), 0.0)  # hole values (even NaN) never used
    return y_obs, known, mask


def setup(denoise: DenoiseFn, y, mask, key, labels):
    """The start of every method: ``(denoise, y_obs, known, k_init, k_steps)`` — the denoiser
    bound to the batch's labels (:func:`contract.with_labels`), the observed pixels and the known
    set (:func:`prepare`), and the key split ``k_init, k_steps = split(key)``."""
    y_obs, known, _ = prepare(y, mask)
    denoise = with_labels(denoise, check_labels(labels, y_obs.shape[0]))
    k_init, k_steps = jax.random.split(key)
    return denoise, y_obs, known, k_init, k_steps


def noise(key, i, shape, count: int | None = None) -> jax.Array:
    """Standard normal noise of step i: ``normal(fold_in(key, i), [count,] *shape)``."""
    full = shape if count is None else (count, *shape)
    return jax.random.normal(jax.random.fold_in(key, i), full, jnp.float32)


def call(denoise: DenoiseFn, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """D(x; σ) in float32 with σ broadcast to the batch."""
    return denoise(x, jnp.broadcast_to(sigma, (x.shape[0],))).astype(jnp.float32)


def step_xs(sigmas: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The scan inputs ``(i, σ_i, σ_{i+1})`` of a walk down ``sigmas``."""
    n = sigmas.shape[0] - 1
    return jnp.arange(n, dtype=jnp.int32), sigmas[:-1], sigmas[1:]


def run_steps(step, sigmas: jax.Array, k_init, shape) -> jax.Array:
    """x = σ_0·normal(k_init), then one ``lax.scan`` of ``step(x, (i, σ_i, σ_{i+1}))`` down
    ``sigmas``; returns the final x."""
    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, step_xs(sigmas))
    return x


def run_schedule(down, up, carry, sigmas, schedule: np.ndarray, key):
    """One ``lax.scan`` over a time-travel schedule; ``lax.cond`` picks the down/up branch.

    ``down(carry, sigma, sigma_next, key)`` (sigma_next < sigma, one denoiser call) and
    ``up(carry, sigma, sigma_up, key)`` (no call). Under ``vmap`` the cond would evaluate both
    branches; here it does not, so the NFE is the number of down-steps.
    """
    frm = jnp.asarray(schedule[:-1], jnp.int32)
    to = jnp.asarray(schedule[1:], jnp.int32)
    is_down = jnp.asarray(schedule[1:] > schedule[:-1])
    idx = jnp.arange(len(schedule) - 1, dtype=jnp.int32)

    def body(c, xs):
        e, i_from, i_to, d = xs
        k = jax.random.fold_in(key, e)
        return jax.lax.cond(d, down, up, c, sigmas[i_from], sigmas[i_to], k), None

    carry, _ = jax.lax.scan(body, carry, (idx, frm, to, is_down))
    return carry
