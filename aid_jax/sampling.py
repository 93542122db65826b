"""EDM samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models") for frozen denoisers, written from the paper's equations.

The probability-flow ODE of the EDM formulation (sigma(t) = t, s(t) = 1) is

    dx/dsigma = (x - D(x; sigma)) / sigma,

integrated from sigma_max down to 0 on the rho-schedule of EDM Eq. 5 (:class:`EDMSchedule`).
:func:`sample` implements EDM Algorithm 2 (deterministic Heun for ``S_churn = 0``, Algorithm 1),
with the last step (to sigma = 0) taken as a plain Euler step, so a Heun sampler with N steps
costs 2N - 1 denoiser evaluations.

All samplers share one signature and are jit-friendly: the step loop is a ``lax.scan`` (the
denoiser is traced twice per solver, not once per step), the config is static and nothing syncs
with the host inside the loop.

Precision: the EDM reference implementation keeps the ODE state in float64 and feeds the denoiser
float32. :func:`sample` keeps the state in float32 throughout; on the ``edm_sampler_tiny`` fixture
this changes the result by at most 4e-6 relative to max|x|, far below the 1e-4 port tolerance.
:func:`integrate` keeps whatever floating dtype it is given (float64 under ``jax.enable_x64``).

Clocks. :func:`integrate` steps either in sigma itself (``clock='sigma'``, EDM:
x_{i+1} = x_i + (sigma_{i+1} - sigma_i) dx/dsigma) or on the uniform *step clock* r_i = i/N
(``clock='step'``, AID.md §2: on step i sigma moves linearly in r, dsigma/dr =
N (sigma_{i+1} - sigma_i), and x_{i+1} = x_i + dx/dr / N with dx/dr = (dsigma/dr)(x - D)/sigma).
Both are the same ODE; they differ in what an added drift means (a term of dx/dsigma or of
dx/dr) and in the rounding of the update.

Drift hook: ``extra_drift(k, r, sigma, x, denoised, ds_dr)`` (:data:`DriftFn`) is added to the
derivative of the clock at every derivative evaluation (both Heun stages) and sees the step index,
the step clock, the noise level, the state, D(x; sigma) and the step's dsigma/dr; with
``has_aux=True`` it returns ``(drift, aux)`` and :func:`integrate` stacks each step's first-stage
``aux`` along a leading step axis. AID's guidance and its training rollouts plug in here
(:mod:`aid_jax.aid.control`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CLOCKS",
    "DenoiseFn",
    "DriftFn",
    "EDMSchedule",
    "SCHEDULE_FIELDS",
    "SOLVERS",
    "SampleResult",
    "SamplerConfig",
    "edm_sigmas",
    "euler_update",
    "integrate",
    "make_sampler",
    "nfe",
    "check_churn",
    "ode_slope",
    "sample",
    "schedule_aliases",
    "step_clock",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``denoise(x [B,...], sigma [B]) -> D(x; sigma)`` with the shape of ``x``."""

DriftFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], Any]
"""``extra_drift(k int32 0-d, r 0-d, sigma 0-d, x [B,...], denoised [B,...], ds_dr 0-d)
-> drift [B,...]`` (or ``(drift, aux)`` with ``has_aux=True``): the term added to the clock's
derivative. ``r`` = k/N is the step clock, ``ds_dr`` = N(sigma_{k+1} - sigma_k) the current step's
dsigma/dr (the same at both Heun stages; the second stage sees k + 1, r_{k+1}, sigma_{k+1}).
AID's guidance closures ``mu(k, r, sigma, x, D, ds_dr)`` have exactly this signature."""

SOLVERS = ("heun", "euler")
CLOCKS = ("sigma", "step")

# Largest per-step churn of EDM Alg. 2: gamma_i <= sqrt(2) - 1, i.e. sigma_hat <= sqrt(2) sigma.
_MAX_GAMMA = math.sqrt(2.0) - 1.0


# --------------------------------------------------------------------------------------------
# Time steps
# --------------------------------------------------------------------------------------------


def _check_schedule(sigma_min: float, sigma_max: float, rho: float) -> None:
    if not 0.0 < sigma_min < sigma_max < math.inf:
        raise ValueError(
            "expected 0 < sigma_min < sigma_max < inf, got "
            f"sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if not rho > 0.0:
        raise ValueError(f"rho must be > 0, got {rho}")


def _edm_sigmas_f64(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """EDM Eq. 5 time steps in float64 NumPy, with the trailing sigma_N = 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    _check_schedule(sigma_min, sigma_max, rho)
    i = np.arange(num_steps, dtype=np.float64)
    # With a single step the schedule is just [sigma_max] (EDM's i / (N - 1) would be 0 / 0).
    frac = i / (num_steps - 1) if num_steps > 1 else np.zeros_like(i)
    inv_rho = 1.0 / rho
    steps = (sigma_max**inv_rho + frac * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return np.concatenate([steps, np.zeros(1)])


def edm_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> jax.Array:
    """Noise levels of the EDM rho-schedule (EDM Eq. 5) with a trailing zero.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..N-1 and sigma_N = 0. Computed in float64 NumPy (as EDM does) and cast to float32. For
    ``num_steps == 1`` the schedule is ``[sigma_max, 0]``. ``EDMSchedule(...).sigmas(N)`` is the
    same with the three constants kept together.

    Args:
        num_steps: Number of sampler steps N (>= 1).
        sigma_min: Smallest positive noise level sigma_{N-1}.
        sigma_max: Largest noise level sigma_0.
        rho: Schedule exponent (7 in EDM).

    Returns:
        Float32 array of shape ``[num_steps + 1]``, decreasing, ending with 0.

    Raises:
        ValueError: If ``num_steps < 1``, ``not 0 < sigma_min < sigma_max < inf`` or
            ``rho <= 0``.
    """
    return jnp.asarray(_edm_sigmas_f64(num_steps, sigma_min, sigma_max, rho), dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class EDMSchedule:
    """The EDM rho-schedule (EDM Eq. 5): the noise levels a sampler visits.

    Hashable, so configs holding it stay static ``jax.jit`` arguments. Validated on construction.

    Attributes:
        sigma_min: Smallest positive noise level sigma_{N-1}.
        sigma_max: Largest noise level sigma_0, where sampling starts.
        rho: Schedule exponent (7 in EDM).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        _check_schedule(self.sigma_min, self.sigma_max, self.rho)

    def sigmas(self, num_steps: int) -> jax.Array:
        """The float32 time steps ``[num_steps + 1]`` ending with 0 (:func:`edm_sigmas`)."""
        return edm_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho)

    def sigmas_f64(self, num_steps: int) -> np.ndarray:
        """The same time steps in float64 NumPy (before the cast to float32)."""
        return _edm_sigmas_f64(num_steps, self.sigma_min, self.sigma_max, self.rho)


SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(EDMSchedule))


def schedule_aliases(cls: type) -> type:
    """Class decorator for a frozen dataclass config that holds an :class:`EDMSchedule`, either
    nested (a ``schedule`` field) or flat (``sigma_min``, ``sigma_max``, ``rho`` fields).

    Either way the constructor takes both spellings, ``schedule=EDMSchedule(...)`` and the flat
    keywords, which replace those fields of the given schedule (else of the default one); and
    both read back: the flat names are properties of a nested config, ``schedule`` a property of
    a flat one. So ``Config(**config_dict.to_dict())`` with the flat keys of an ml-collections
    config (``--config.aid.sigma_min=...``), ``dataclasses.replace(cfg, sigma_max=...)`` and
    ``Config(schedule=...)`` all work; equality, hashing and ``dataclasses.fields`` see the
    stored layout only. The schedule is validated on construction.
    """
    nested = "schedule" in {f.name for f in dataclasses.fields(cls)}
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {name: kwargs.pop(name) for name in SCHEDULE_FIELDS if name in kwargs}
        schedule = kwargs.pop("schedule", None)
        if schedule is not None and not isinstance(schedule, EDMSchedule):
            raise ValueError(f"schedule must be an EDMSchedule, got {schedule!r}")
        if flat or schedule is not None:
            schedule = dataclasses.replace(schedule or EDMSchedule(), **flat)
            if nested:
                kwargs["schedule"] = schedule
            else:
                kwargs.update(dataclasses.asdict(schedule))
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    if nested:
        for name in SCHEDULE_FIELDS:
            getter = operator.attrgetter(f"schedule.{name}")
            setattr(cls, name, property(getter, doc=f"``schedule.{name}`` (read-only)."))
    else:

        def schedule_of(self) -> EDMSchedule:
            return EDMSchedule(**{name: getattr(self, name) for name in SCHEDULE_FIELDS})

        cls.schedule = property(schedule_of, doc="The flat fields as an :class:`EDMSchedule`.")
    return cls


def step_clock(num_steps: int) -> jax.Array:
    """The step clock r_k = k/K, k = 0..K, float32 ``[K + 1]`` (r_0 = 0, r_K = T = 1)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    return jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


# --------------------------------------------------------------------------------------------
# Configuration and result types
# --------------------------------------------------------------------------------------------


@schedule_aliases
@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampler settings (hashable, so usable as a static ``jax.jit`` argument).

    The schedule is stored flat, like the sampler's record (``config.sampler`` and the
    ``summary.json`` of ``generate``); ``schedule`` is its :class:`EDMSchedule`, and
    ``SamplerConfig(schedule=...)`` works too (:func:`schedule_aliases`).

    Attributes:
        solver: ``'heun'`` (EDM Alg. 2, 2nd order) or ``'euler'`` (1st order).
        num_steps: Number of steps N; the schedule has N + 1 noise levels ending with 0.
        sigma_min, sigma_max, rho: The :class:`EDMSchedule` (smallest positive noise level,
            initial noise level sigma_0, exponent).
        S_churn: Total stochasticity; per-step gamma = min(S_churn / N, sqrt(2) - 1). 0 gives the
            deterministic sampler.
        S_min: Churn is applied only where S_min <= sigma_i ...
        S_max: ... <= S_max.
        S_noise: Scale of the fresh noise added by the churn (slightly > 1 in EDM's tuned settings).
    """

    solver: str = "heun"
    num_steps: int = 18
    sigma_min: float = EDMSchedule.sigma_min
    sigma_max: float = EDMSchedule.sigma_max
    rho: float = EDMSchedule.rho
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int | np.integer):
            raise ValueError(f"num_steps must be an int >= 1, got {self.num_steps!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        _check_schedule(self.sigma_min, self.sigma_max, self.rho)
        if not self.S_churn >= 0.0:
            raise ValueError(f"S_churn must be >= 0 (0 = deterministic), got {self.S_churn}")
        if not self.S_min <= self.S_max:
            raise ValueError(
                "expected S_min <= S_max (the churn window), got "
                f"S_min={self.S_min}, S_max={self.S_max}"
            )
        if not self.S_noise >= 0.0:
            raise ValueError(f"S_noise must be >= 0, got {self.S_noise}")

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise (``S_churn > 0``) and therefore needs a key."""
        return self.S_churn > 0.0

    def sigmas(self) -> jax.Array:
        """The float32 time steps of this config, ``[num_steps + 1]`` (see :func:`edm_sigmas`)."""
        return self.schedule.sigmas(self.num_steps)


def nfe(config: SamplerConfig) -> int:
    """Number of denoiser evaluations of :func:`sample` with ``config``.

    Args:
        config: Sampler settings.

    Returns:
        ``2N - 1`` for Heun (the last step, to sigma = 0, is Euler; EDM Alg. 2) and ``N`` for Euler.
    """
    n = config.num_steps
    return 2 * n - 1 if config.solver == "heun" else n


def check_churn(solver, num_steps, S_churn, S_min, S_max, S_noise) -> tuple:
    """``(S_churn, S_min, S_max, S_noise)`` as floats once :class:`SamplerConfig` accepts them
    with ``solver`` and ``num_steps`` (its ValueError otherwise): the one check of every
    method that exposes EDM's churn."""
    cfg = SamplerConfig(
        solver=solver,
        num_steps=num_steps,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
    )
    return (float(cfg.S_churn), float(cfg.S_min), float(cfg.S_max), float(cfg.S_noise))


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """Output of :func:`sample` (a pytree; ``nfe`` is static metadata).

    Attributes:
        x: Final sample, same shape as the latents, float32.
        nfe: Number of denoiser evaluations (Python int).
        trajectory: ``[N + 1, *x.shape]`` states at every sigma_i (``trajectory[0] = x_0``,
            ``trajectory[-1] = x``) if requested, else None.
    """

    x: jax.Array
    nfe: int
    trajectory: jax.Array | None = None


jax.tree_util.register_dataclass(SampleResult, data_fields=["x", "trajectory"], meta_fields=["nfe"])


# --------------------------------------------------------------------------------------------
# Solver core
# --------------------------------------------------------------------------------------------


def _churn_gammas(
    sigmas: jax.Array, S_churn: float, S_min: float, S_max: float, dtype: Any
) -> jax.Array:
    """Per-step churn gamma_i of EDM Alg. 2 for the N steps of ``sigmas`` ([N + 1])."""
    num_steps = sigmas.shape[0] - 1
    gamma = min(S_churn / num_steps, _MAX_GAMMA)
    sig = sigmas[:-1]
    inside = (sig >= S_min) & (sig <= S_max)
    return jnp.where(inside, jnp.asarray(gamma, dtype), jnp.zeros((), dtype))


def ode_slope(
    x: jax.Array, denoised: jax.Array, sigma: jax.Array, ds_dr: jax.Array | None = None
) -> jax.Array:
    """The probability-flow derivative on a clock (EDM Alg. 2, lines 7 and 10; AID.md §2).

    Args:
        x: State ``[B, ...]`` at noise level ``sigma``.
        denoised: D(x; sigma), same shape.
        sigma: Noise level (> 0), 0-d or broadcastable to ``x``.
        ds_dr: None for the sigma clock; dsigma/dr of the step for the step clock.

    Returns:
        dx/dsigma = (x - D)/sigma, or dx/dr = (dsigma/dr)(x - D)/sigma.
    """
    if ds_dr is None:
        return (x - denoised) / sigma
    return ds_dr * (x - denoised) / sigma


def euler_update(
    x: jax.Array, slope: jax.Array, *, h: jax.Array | None = None, num_steps: int | None = None
) -> jax.Array:
    """x + (clock increment)·slope: ``x + h·slope`` on the sigma clock (h = sigma_next - sigma),
    ``x + slope / N`` on the step clock (Δr = 1/N). Pass exactly one of ``h`` and ``num_steps``.

    The Euler step takes the slope at the start; Heun's correction takes the mean of both
    stages' slopes (EDM Alg. 2, line 11).
    """
    if (h is None) == (num_steps is None):
        raise ValueError("pass exactly one of h (sigma clock) and num_steps (step clock)")
    if h is None:
        return x + slope / num_steps
    return x + h * slope


def integrate(
    denoise: DenoiseFn,
    x: jax.Array,
    sigmas: jax.Array | np.ndarray,
    key: jax.Array | None = None,
    *,
    solver: str = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    extra_drift: DriftFn | None = None,
    has_aux: bool = False,
    clock: str = "sigma",
    return_trajectory: bool = False,
) -> tuple[jax.Array, jax.Array | None] | tuple[jax.Array, jax.Array | None, Any]:
    """Integrates the probability-flow ODE from ``sigmas[0]`` to ``sigmas[-1]`` (EDM Alg. 2).

    Runs on the given grid as is: ``x`` is the state at ``sigmas[0]`` (not rescaled). Each step
    i (sigma_i -> sigma_{i+1}) does

    1. churn (EDM Alg. 2, lines 4-6): sigma_hat = sigma_i (1 + gamma_i),
       x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps, eps ~ N(0, I) from
       ``fold_in(key, i)``; skipped entirely (no noise drawn) when ``S_churn == 0``;
    2. Euler step (lines 7-8): f = slope of the clock at (x_hat, sigma_hat) [+ extra_drift],
       x_{i+1} = x_hat + Δt f with Δt = sigma_{i+1} - sigma_hat (sigma clock, f = dx/dsigma) or
       Δr = 1/N (step clock, f = dx/dr = (dsigma/dr)(x - D)/sigma, dsigma/dr =
       N (sigma_{i+1} - sigma_hat));
    3. for ``solver='heun'`` and sigma_{i+1} > 0, the 2nd-order correction (lines 9-11):
       f' = slope at (x_{i+1}, sigma_{i+1}) with the same Δt (and dsigma/dr),
       x_{i+1} = x_hat + Δt (f + f') / 2.
       A step ending at sigma = 0 stays Euler (the derivative is undefined there), which is EDM's
       last step; on a grid ending at a positive sigma every step is Heun.

    The state keeps the floating dtype of ``x`` (float32, or float64 under ``jax.enable_x64``);
    the denoiser receives the state dtype and sigma broadcast to ``[B]``; its output and the drift
    are cast to the state dtype.

    Args:
        denoise: Denoiser ``D(x [B,...], sigma [B]) -> [B,...]``.
        x: State at ``sigmas[0]``, shape ``[B, ...]`` (NHWC images in this project).
        sigmas: Decreasing noise levels ``[N + 1]`` (N >= 1), positive except possibly a final 0.
        key: PRNG key; required when ``S_churn > 0``, ignored otherwise.
        solver: ``'heun'`` or ``'euler'``.
        S_churn: Total churn; per-step gamma = min(S_churn / N, sqrt(2) - 1).
        S_min: Lower end of the sigma window where churn is applied.
        S_max: Upper end of that window.
        S_noise: Noise inflation of the churn.
        extra_drift: Optional :data:`DriftFn` ``f(k, r, sigma, x, D, ds_dr)`` added to the
            clock's derivative at every derivative evaluation. None adds nothing (and traces
            nothing extra).
        has_aux: ``extra_drift`` returns ``(drift, aux)``; each step's first-stage ``aux`` (at
            (x_hat, sigma_hat), the state the step starts from) is stacked along a new leading
            axis of length N and returned. The Heun stage's aux is discarded.
        clock: ``'sigma'`` (EDM) or ``'step'`` (the uniform step clock r = i/N of AID.md §2).
        return_trajectory: Also return the ``[N + 1, B, ...]`` states at every ``sigmas[i]``.

    Returns:
        ``(x_final, trajectory_or_None)``, or ``(x_final, trajectory_or_None, aux)`` with
        ``has_aux``.

    Raises:
        ValueError: On an unknown solver or clock, a bad ``sigmas`` shape, ``x`` without a batch
            axis, ``S_churn > 0`` without a key, or ``has_aux`` without ``extra_drift``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if has_aux and extra_drift is None:
        raise ValueError("has_aux=True needs an extra_drift returning (drift, aux)")
    if S_churn < 0.0:
        raise ValueError(f"S_churn must be >= 0, got {S_churn}")
    stochastic = S_churn > 0.0
    if stochastic and key is None:
        raise ValueError(
            f"S_churn={S_churn} > 0 makes the sampler stochastic: pass a PRNG key "
            "(e.g. jax.random.key(0)), or set S_churn=0 for the deterministic sampler"
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis [B, ...], got shape {x.shape}")
    dtype = x.dtype
    sigmas = jnp.asarray(sigmas, dtype=dtype)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must have shape [N + 1] with N >= 1, got {sigmas.shape}")
    num_steps = sigmas.shape[0] - 1
    batch = x.shape[0]
    heun = solver == "heun"
    on_step_clock = clock == "step"

    def slope(k, r, sigma, x_, ds_dr):
        # The clock's derivative (EDM Alg. 2, lines 7 and 10) plus the optional drift.
        denoised = denoise(x_, jnp.broadcast_to(sigma, (batch,))).astype(dtype)
        f = ode_slope(x_, denoised, sigma, ds_dr if on_step_clock else None)
        aux = None
        if extra_drift is not None:
            drift = extra_drift(k, r, sigma, x_, denoised, ds_dr)
            if has_aux:
                drift, aux = drift
            f = f + jnp.asarray(drift).astype(dtype)
        return f, aux

    gammas = (
        _churn_gammas(sigmas, S_churn, S_min, S_max, dtype)
        if stochastic
        else jnp.zeros((num_steps,), dtype)
    )
    s_noise = jnp.asarray(S_noise, dtype)
    r = step_clock(num_steps).astype(dtype)

    def step(x_cur: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, Any]:
        i, r_cur, r_next, sigma_cur, sigma_next, gamma = xs
        if stochastic:
            # EDM Alg. 2, lines 4-6: temporarily raise the noise level to sigma_hat.
            sigma_hat = sigma_cur * (1 + gamma)
            eps = jax.random.normal(jax.random.fold_in(key, i), x_cur.shape, dtype)
            # sqrt(sigma_hat^2 - sigma_i^2) written as sigma_i sqrt(gamma (2 + gamma)): exactly 0
            # for gamma = 0 (the difference of squares can round to a tiny negative -> NaN).
            noise_std = sigma_cur * jnp.sqrt(gamma * (2 + gamma))
            x_hat = x_cur + noise_std * s_noise * eps
        else:
            sigma_hat, x_hat = sigma_cur, x_cur
        # EDM Alg. 2, lines 7-8: Euler step from sigma_hat to sigma_next.
        h = sigma_next - sigma_hat
        ds_dr = num_steps * h if (on_step_clock or extra_drift is not None) else None

        def advance(x_: jax.Array, f: jax.Array) -> jax.Array:  # x + Δt·f on the clock
            if on_step_clock:
                return euler_update(x_, f, num_steps=num_steps)
            return euler_update(x_, f, h=h)

        d, aux = slope(i, r_cur, sigma_hat, x_hat, ds_dr)
        x_next = advance(x_hat, d)
        if heun:
            # EDM Alg. 2, lines 9-11: Heun correction unless sigma_next == 0 (the last EDM step).
            def correct(x_e: jax.Array) -> jax.Array:
                # Safe denominator in case both branches get evaluated (e.g. under vmap).
                sigma_safe = jnp.where(sigma_next > 0, sigma_next, jnp.ones((), dtype))
                d_prime, _ = slope(i + 1, r_next, sigma_safe, x_e, ds_dr)
                return advance(x_hat, 0.5 * d + 0.5 * d_prime)

            x_next = jax.lax.cond(sigma_next > 0, correct, lambda x_e: x_e, x_next)
        return x_next, (x_next if return_trajectory else None, aux)

    ks = jnp.arange(num_steps, dtype=jnp.int32)
    xs = (ks, r[:-1], r[1:], sigmas[:-1], sigmas[1:], gammas)
    x_final, (traj, aux) = jax.lax.scan(step, x, xs)
    if return_trajectory:
        traj = jnp.concatenate([x[None], traj], axis=0)
    if has_aux:
        return x_final, traj, aux
    return x_final, traj


# --------------------------------------------------------------------------------------------
# Public samplers
# --------------------------------------------------------------------------------------------


def sample(
    denoise: DenoiseFn,
    latents: jax.Array,
    key: jax.Array | None = None,
    *,
    config: SamplerConfig = SamplerConfig(),  # noqa: B008 (frozen, hashable)
    extra_drift: DriftFn | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Draws samples with the EDM sampler (EDM Alg. 2; deterministic Heun = Alg. 1).

    x_0 = latents * sigma_0 on the schedule of :func:`edm_sigmas`, then :func:`integrate` down to
    sigma_N = 0 (the last step is Euler, so Heun costs ``2N - 1`` evaluations). The state is
    float32 (EDM uses float64; the difference is <= 4e-6 relative on the EDM fixture). Works under
    ``jax.jit`` with ``denoise``/``extra_drift`` as closures and ``config`` static; see also
    :func:`make_sampler`.

    Args:
        denoise: Denoiser ``D(x [B,H,W,C] float32, sigma [B] float32) -> [B,H,W,C]``.
        latents: Standard-normal latents ``[B, H, W, C]`` (any ``[B, ...]`` works).
        key: PRNG key for the churn noise; required iff ``config.S_churn > 0``, else ignored.
        config: Sampler settings.
        extra_drift: Optional guidance term, a :data:`DriftFn`
            ``f(k, r, sigma (0-d), x, D, ds_dr)`` added to dx/dsigma at every derivative
            evaluation (both Heun stages).
        return_trajectory: Also return the states at all N + 1 noise levels.

    Returns:
        :class:`SampleResult` with the final ``x`` (float32), the static ``nfe`` and the optional
        ``[N + 1, B, H, W, C]`` trajectory.

    Raises:
        ValueError: If ``config.S_churn > 0`` and no key is given.
    """
    if config.stochastic and key is None:
        raise ValueError(
            f"config.S_churn={config.S_churn} > 0 makes the sampler stochastic: pass a PRNG key "
            "(e.g. jax.random.key(0)), or use S_churn=0 for the deterministic sampler"
        )
    sigmas = config.sigmas()
    x0 = jnp.asarray(latents).astype(jnp.float32) * sigmas[0]  # EDM Alg. 2, line 2
    x, traj = integrate(
        denoise,
        x0,
        sigmas,
        key,
        solver=config.solver,
        S_churn=config.S_churn,
        S_min=config.S_min,
        S_max=config.S_max,
        S_noise=config.S_noise,
        extra_drift=extra_drift,
        return_trajectory=return_trajectory,
    )
    return SampleResult(x=x, nfe=nfe(config), trajectory=traj)


def make_sampler(
    denoise: DenoiseFn,
    config: SamplerConfig = SamplerConfig(),  # noqa: B008 (frozen, hashable)
    extra_drift: DriftFn | None = None,
) -> Callable[..., jax.Array]:
    """Builds a jitted ``fn(latents, key=None) -> x`` for repeated sampling.

    The function is traced once per latents shape/dtype (and key presence), so calling it again
    with new latents of the same shape reuses the compiled program.

    Args:
        denoise: Denoiser, as for :func:`sample`.
        config: Sampler settings (baked in).
        extra_drift: Optional guidance drift, as for :func:`sample`.

    Returns:
        ``fn(latents [B,H,W,C], key=None) -> x`` running a jitted sampler; the underlying
        ``jax.jit`` function (positional ``(latents, key)``) is ``fn.jitted``.
    """

    @jax.jit
    def run(latents: jax.Array, key: jax.Array | None) -> jax.Array:
        return sample(denoise, latents, key, config=config, extra_drift=extra_drift).x

    def fn(latents: jax.Array, key: jax.Array | None = None) -> jax.Array:
        # Always pass the key positionally so fn(x) and fn(x, None) share one cache entry.
        return run(latents, key)

    fn.jitted = run  # the underlying jax.jit function (e.g. for .lower(...))
    return fn
