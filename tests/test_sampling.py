"""Tests for aid_jax.sampling: EDM time steps, EDM Alg. 2 samplers, guidance-drift hook."""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import sampling
from aid_jax.sampling import (
    EDMSchedule,
    SamplerConfig,
    SampleResult,
    edm_sigmas,
    integrate,
    make_sampler,
    nfe,
    sample,
)

SHAPE = (2, 4, 4, 3)  # [B, H, W, C]


def _latents(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _toy_denoiser(x: jax.Array, sigma: jax.Array) -> jax.Array:
    """A smooth nonlinear sigma-dependent denoiser (not an exact one; any D works for plumbing)."""
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = 0.25 / (0.25 + s**2)
    return c_skip * x + (1 - c_skip) * 0.3 * jnp.tanh(x / (1 + s))


def _fast_key(seed: int) -> jax.Array:
    """An 'rbg' key: compiles several times faster than threefry on CPU (keeps the suite fast).

    The default threefry keys are exercised in test_stochastic_sampler_key_dependence.
    """
    return jax.random.key(seed, impl="rbg")


def _rho_grid(num_steps: int, sigma_lo: float, sigma_hi: float, rho: float = 7.0) -> np.ndarray:
    """EDM Eq. 5 grid with num_steps intervals from sigma_hi down to sigma_lo > 0 (no zero)."""
    frac = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    return (sigma_hi ** (1 / rho) + frac * (sigma_lo ** (1 / rho) - sigma_hi ** (1 / rho))) ** rho


# ---------------------------------------------------------------------------------------------
# 1. Time steps (EDM_REFERENCE.md §9.1)
# ---------------------------------------------------------------------------------------------

# N -> (leading values, trailing positive values), as printed (rounded) in §9.1.
SIGMA_TABLE = {
    4: (["80", "9.7232", "0.46998", "0.002"], []),
    8: (["80", "34.992", "13.699", "4.6371"], ["1.2866", "0.26748", "0.035187", "0.002"]),
    18: (["80", "57.586", "40.786", "28.375"], ["0.02293", "0.00753", "0.002"]),
    32: (["80", "66.931", "55.736", "46.186"], ["0.00845", "0.00427", "0.002"]),
    40: (["80", "69.451", "60.117", "51.880"], ["0.00644", "0.00368", "0.002"]),
    256: (["80", "78.303", "76.637", "75.001"], ["0.00242", "0.00220", "0.002"]),
}


def _half_ulp_of_print(s: str) -> float:
    """Rounding bound of a printed decimal: half a unit of its last printed digit."""
    decimals = len(s.split(".")[1]) if "." in s else 0
    return 0.5 * 10.0**-decimals


@pytest.mark.parametrize("n", sorted(SIGMA_TABLE))
def test_edm_sigmas_table(n):
    sig = edm_sigmas(n)
    assert sig.shape == (n + 1,) and sig.dtype == jnp.float32
    s = np.asarray(sig, np.float64)
    assert s[-1] == 0.0
    assert np.all(np.diff(s) < 0)
    # Exact endpoints (float32 rounding only).
    np.testing.assert_allclose(s[0], 80.0, rtol=1e-7)
    np.testing.assert_allclose(s[-2], 0.002, rtol=1e-6)
    # Printed table values agree to their last printed digit (e.g. 0.00753 has only 3 digits,
    # so this is as tight as the table allows).
    head, tail = SIGMA_TABLE[n]
    for k, text in enumerate(head):
        assert abs(s[k] - float(text)) <= _half_ulp_of_print(text) * 1.0001, (n, k, s[k], text)
    for k, text in enumerate(tail):
        j = n - len(tail) + k
        assert abs(s[j] - float(text)) <= _half_ulp_of_print(text) * 1.0001, (n, j, s[j], text)
    # All values to ~1e-7 relative against an independent float64 evaluation of EDM Eq. 5.
    ref = _rho_grid(n - 1, 0.002, 80.0) if n > 1 else np.array([80.0])
    np.testing.assert_allclose(s[:-1], ref, rtol=2e-7)


def test_edm_sigmas_one_step_and_validation():
    np.testing.assert_array_equal(np.asarray(edm_sigmas(1)), np.array([80.0, 0.0], np.float32))
    np.testing.assert_allclose(
        np.asarray(edm_sigmas(3, sigma_min=0.02, sigma_max=10.0, rho=1.0)),
        [10.0, 5.01, 0.02, 0.0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="num_steps"):
        edm_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        edm_sigmas(4, sigma_min=1.0, sigma_max=0.5)


def _edm_sigmas_before_schedule(num_steps, sigma_min, sigma_max, rho):
    """``sampling.edm_sigmas`` as written before EDMSchedule existed (float64 NumPy, cast)."""
    i = np.arange(num_steps, dtype=np.float64)
    frac = i / (num_steps - 1) if num_steps > 1 else np.zeros_like(i)
    inv_rho = 1.0 / rho
    steps = (sigma_max**inv_rho + frac * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return np.concatenate([steps, np.zeros(1)]).astype(np.float32)


@pytest.mark.parametrize(
    "schedule",
    [EDMSchedule(), EDMSchedule(0.02, 10.0, 1.0), EDMSchedule(sigma_max=1.6, rho=3.0)],
)
def test_edm_schedule_is_the_old_edm_sigmas(schedule):
    for n in (1, 2, 5, 18, 40):
        got = schedule.sigmas(n)
        assert got.dtype == jnp.float32 and got.shape == (n + 1,)
        old = _edm_sigmas_before_schedule(n, schedule.sigma_min, schedule.sigma_max, schedule.rho)
        np.testing.assert_array_equal(np.asarray(got), old)
        np.testing.assert_array_equal(
            np.asarray(got),
            np.asarray(edm_sigmas(n, schedule.sigma_min, schedule.sigma_max, schedule.rho)),
        )
        np.testing.assert_array_equal(schedule.sigmas_f64(n).astype(np.float32), old)


def test_edm_schedule_validation_and_hashable():
    assert EDMSchedule() == EDMSchedule(0.002, 80.0, 7.0)
    assert hash(EDMSchedule()) == hash(EDMSchedule(0.002, 80.0, 7.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        EDMSchedule().rho = 3.0  # type: ignore[misc]
    for kwargs, msg in [
        (dict(sigma_min=0.0), "0 < sigma_min < sigma_max"),
        (dict(sigma_min=90.0), "0 < sigma_min < sigma_max"),
        (dict(sigma_max=math.inf), "sigma_max < inf"),
        (dict(sigma_max=math.nan), "0 < sigma_min < sigma_max"),
        (dict(rho=0.0), "rho must be > 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            EDMSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_validation_and_hashable():
    cfg = SamplerConfig()
    assert hash(cfg) == hash(SamplerConfig())
    assert cfg.num_steps == 18 and cfg.solver == "heun" and not cfg.stochastic
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_steps = 3  # type: ignore[misc]
    bad = [
        (dict(num_steps=0), "num_steps must be >= 1"),
        (dict(num_steps=2.5), "num_steps must be an int"),
        (dict(solver="rk4"), "solver must be one of"),
        (dict(sigma_min=0.0), "0 < sigma_min < sigma_max"),
        (dict(sigma_min=90.0), "0 < sigma_min < sigma_max"),
        (dict(rho=0.0), "rho must be > 0"),
        (dict(S_churn=-1.0), "S_churn must be >= 0"),
        (dict(S_min=2.0, S_max=1.0), "S_min <= S_max"),
        (dict(S_noise=-1.0), "S_noise must be >= 0"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(ValueError, match=msg):
            SamplerConfig(**kwargs)


def test_config_takes_the_schedule_or_its_flat_fields():
    schedule = EDMSchedule(sigma_min=0.01, sigma_max=10.0, rho=5.0)
    nested = SamplerConfig(num_steps=4, schedule=schedule)
    flat = SamplerConfig(num_steps=4, sigma_min=0.01, sigma_max=10.0, rho=5.0)
    assert nested == flat and hash(nested) == hash(flat)
    assert flat.schedule == schedule and (flat.sigma_min, flat.sigma_max, flat.rho) == (0.01, 10, 5)
    np.testing.assert_array_equal(np.asarray(flat.sigmas()), np.asarray(schedule.sigmas(4)))
    # Flat keywords override those fields of a given schedule.
    assert SamplerConfig(schedule=schedule, sigma_max=20.0).schedule == EDMSchedule(0.01, 20.0, 5.0)
    assert dataclasses.replace(flat, sigma_max=20.0).schedule == EDMSchedule(0.01, 20.0, 5.0)
    # The stored record stays flat (config.sampler, generate's summary.json).
    assert {"sigma_min", "sigma_max", "rho"} <= set(flat.__dict__)
    assert "schedule" not in {f.name for f in dataclasses.fields(SamplerConfig)}
    assert SamplerConfig(**{**flat.__dict__, "rho": 7.0}).schedule == EDMSchedule(0.01, 10.0)
    with pytest.raises(ValueError, match="schedule must be an EDMSchedule"):
        SamplerConfig(schedule=(0.002, 80.0, 7.0))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SamplerConfig(schedule=schedule, sigma_min=20.0)


def test_nfe_formula():
    for n in (1, 4, 8, 18, 32, 40, 256):
        assert nfe(SamplerConfig(num_steps=n)) == 2 * n - 1
        assert nfe(SamplerConfig(num_steps=n, solver="euler")) == n
    # EDM_REFERENCE.md §9.1 table.
    assert [nfe(SamplerConfig(num_steps=n)) for n in (4, 8, 18, 32, 40, 256)] == [
        7,
        15,
        35,
        63,
        79,
        511,
    ]


# ---------------------------------------------------------------------------------------------
# Hand-checkable single step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_single_step_returns_denoised(solver):
    latents = _latents(1)
    cfg = SamplerConfig(solver=solver, num_steps=1)
    res = sample(_toy_denoiser, latents, config=cfg)
    assert res.nfe == 1
    x0 = latents * jnp.float32(80.0)
    expected = _toy_denoiser(x0, jnp.full((SHAPE[0],), 80.0, jnp.float32))
    # x_1 = x_0 + (0 - 80) (x_0 - D)/80 = D up to float32 rounding of x_0 (|x_0| ~ 80).
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(expected), rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# 2. Order of convergence on Gaussian data (exact denoiser, exact ODE solution)
# ---------------------------------------------------------------------------------------------

STEP_COUNTS = (8, 16, 32, 64, 128)


def _gaussian_errors(solver: str, sigma_end: float) -> list[float]:
    """Global relative error at sigma_end of integrating the PF-ODE from 80 for each step count."""
    # Data ~ N(0, diag(s^2)) with several variances (one per channel).
    s2 = jnp.asarray([0.05, 0.25, 1.0, 4.0], jnp.float64).reshape(1, 1, 1, 4)

    def denoise(x, sigma):
        # Exact denoiser for Gaussian data: D(x; sigma) = s^2 x / (s^2 + sigma^2).
        return s2 * x / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2)

    sigma_max = 80.0
    x0 = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 3, 4)) * sigma_max)
    # Exact PF-ODE solution: x(sigma) = x(sigma_0) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)).
    exact = x0 * jnp.sqrt((s2 + sigma_end**2) / (s2 + sigma_max**2))
    errs = []
    for n in STEP_COUNTS:
        x, _ = integrate(denoise, x0, _rho_grid(n, sigma_end, sigma_max), solver=solver)
        assert x.dtype == jnp.float64
        errs.append(float(jnp.max(jnp.abs(x - exact)) / jnp.max(jnp.abs(exact))))
    return errs


@pytest.mark.parametrize(("solver", "order"), [("euler", 1.0), ("heun", 2.0)])
def test_order_of_convergence(solver, order):
    # To sigma_end = sigma_min = 0.002 on EDM's rho = 7 grid (the final step to 0 is excluded:
    # it is Euler by design, and D(x; sigma_min) is not the exact x(0)).
    with jax.enable_x64(True):
        errs = _gaussian_errors(solver, sigma_end=0.002)
    slope = -np.polyfit(np.log(STEP_COUNTS), np.log(errs), 1)[0]
    # Measured: Euler 0.954, Heun 2.068; successive halvings tend to 1 and 2 (0.987 and 2.020
    # for 64 -> 128). (sigma_end = 0.05 or 0.5 gives the same picture.)
    assert abs(slope - order) < 0.15, (solver, slope, errs)
    last_pair = math.log2(errs[-2] / errs[-1])
    assert abs(last_pair - order) < 0.05, (solver, last_pair, errs)
    assert np.all(np.diff(errs) < 0)


def test_float32_state_close_to_float64():
    """The float32 sampler state changes the result negligibly vs a float64 state (EDM's)."""
    latents = _latents(2)
    sigmas = np.concatenate([_rho_grid(7, 0.002, 80.0), [0.0]])
    x32, _ = integrate(_toy_denoiser, latents * jnp.float32(80.0), sigmas.astype(np.float32))
    with jax.enable_x64(True):
        x64, _ = integrate(
            _toy_denoiser, jnp.asarray(latents, jnp.float64) * 80.0, sigmas.astype(np.float64)
        )
        x64 = np.asarray(x64)
    err = np.max(np.abs(np.asarray(x32, np.float64) - x64)) / np.max(np.abs(x64))
    assert err < 4e-6, err


# ---------------------------------------------------------------------------------------------
# 3. NFE counts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["heun", "euler"])
@pytest.mark.parametrize("num_steps", [1, 4, 18])
def test_nfe_counts_match_calls(solver, num_steps):
    calls = []

    def denoise(x, sigma):
        calls.append((x.shape, x.dtype, sigma.shape, sigma.dtype, float(sigma[0])))
        return _toy_denoiser(x, sigma)

    cfg = SamplerConfig(solver=solver, num_steps=num_steps)
    with jax.disable_jit():  # lax.scan / lax.cond run as Python loops: one call per evaluation
        res = sample(denoise, _latents(), config=cfg)
    assert res.nfe == nfe(cfg) == len(calls)
    for x_shape, x_dtype, s_shape, s_dtype, _ in calls:
        assert x_shape == SHAPE and x_dtype == jnp.float32
        assert s_shape == (SHAPE[0],) and s_dtype == jnp.float32
    # Evaluation points: sigma_0, then (Heun) sigma_1, sigma_1, sigma_2, ... never sigma = 0.
    sig = np.asarray(cfg.sigmas())
    seen = np.array([c[-1] for c in calls], np.float32)
    if solver == "euler":
        expected = sig[:-1]
    else:
        expected = np.concatenate([[sig[0]], np.repeat(sig[1:-1], 2)])
    np.testing.assert_array_equal(seen, expected)


# ---------------------------------------------------------------------------------------------
# 4. Stochastic sampler (churn)
# ---------------------------------------------------------------------------------------------


def test_deterministic_sampler_ignores_key():
    latents = _latents(3)
    fn = make_sampler(_toy_denoiser, SamplerConfig(num_steps=6))
    a = fn(latents)
    b = fn(latents, jax.random.key(0))
    c = fn(latents, jax.random.key(123))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_stochastic_sampler_key_dependence():
    latents = _latents(4)
    # One compiled sampler per config (threefry compiles slowly on CPU); keys are traced inputs.
    stoch = make_sampler(_toy_denoiser, SamplerConfig(num_steps=6, S_churn=10.0, S_noise=1.003))
    a = stoch(latents, jax.random.key(0))
    a2 = stoch(latents, jax.random.key(0))
    b = stoch(latents, jax.random.key(1))
    det = make_sampler(_toy_denoiser, SamplerConfig(num_steps=6))(latents)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3
    assert np.max(np.abs(np.asarray(a) - np.asarray(det))) > 1e-3
    assert bool(jnp.all(jnp.isfinite(a))) and bool(jnp.all(jnp.isfinite(b)))


def test_stochastic_without_key_raises():
    cfg = SamplerConfig(num_steps=4, S_churn=1.0)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        sample(_toy_denoiser, _latents(), config=cfg)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        integrate(_toy_denoiser, _latents(), edm_sigmas(4), S_churn=1.0)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        make_sampler(_toy_denoiser, cfg)(_latents())


def test_churn_gammas_window_and_clamp():
    sig = edm_sigmas(8)  # 80, 34.99, 13.70, 4.64, 1.29, 0.267, 0.0352, 0.002, 0
    g = np.asarray(sampling._churn_gammas(sig, 2.0, 1.0, 20.0, jnp.float32))
    np.testing.assert_allclose(g, [0, 0, 0.25, 0.25, 0.25, 0, 0, 0], rtol=1e-7)
    # gamma_i = min(S_churn / N, sqrt(2) - 1).
    g = np.asarray(sampling._churn_gammas(sig, 80.0, 0.0, math.inf, jnp.float32))
    np.testing.assert_allclose(g, np.full(8, math.sqrt(2) - 1), rtol=1e-7)


def test_churn_only_inside_window():
    latents = _latents(5)
    det_cfg = SamplerConfig(num_steps=8)
    det = sample(_toy_denoiser, latents, config=det_cfg, return_trajectory=True).trajectory
    key = _fast_key(7)

    # Window containing no sigma_i: gamma = 0 everywhere, result equals the deterministic one.
    empty = dataclasses.replace(det_cfg, S_churn=40.0, S_min=100.0, S_max=200.0)
    out = sample(_toy_denoiser, latents, key, config=empty, return_trajectory=True).trajectory
    np.testing.assert_allclose(np.asarray(out), np.asarray(det), rtol=1e-6, atol=1e-6)

    # Window [1, 20] holds sigma_2..sigma_4: states up to sigma_2 untouched, sigma_3 onward differ.
    win = dataclasses.replace(det_cfg, S_churn=40.0, S_min=1.0, S_max=20.0)
    out = sample(_toy_denoiser, latents, key, config=win, return_trajectory=True).trajectory
    diff = np.max(np.abs(np.asarray(out) - np.asarray(det)), axis=(1, 2, 3, 4))
    assert np.all(diff[:3] <= 1e-5), diff
    assert np.all(diff[3:] > 1e-3), diff


# ---------------------------------------------------------------------------------------------
# 5. extra_drift hook
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_constant_drift_shifts_by_c_times_sigma_span(solver):
    latents = _latents(6)
    c = jnp.asarray([0.1, -0.2, 0.3], jnp.float32)  # per channel

    def identity(x, sigma):
        return x  # D = x makes (x - D)/sigma vanish: only the drift moves the state

    def drift(k, r, sigma, x, denoised, ds_dr):
        assert sigma.shape == () and denoised.shape == x.shape
        return jnp.broadcast_to(c, x.shape)

    cfg = SamplerConfig(solver=solver, num_steps=5)
    res = sample(identity, latents, config=cfg, extra_drift=drift, return_trajectory=True)
    sig = np.asarray(cfg.sigmas(), np.float64)
    x0 = latents * jnp.float32(80.0)
    # x_N = x_0 + c * sum_i (sigma_{i+1} - sigma_i) = x_0 - c * sigma_max (both solvers).
    span = float(np.sum(np.diff(sig)))
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(x0 + c * span), rtol=0, atol=2e-5)
    for i in range(len(sig)):
        expected = x0 + c * jnp.float32(sig[i] - sig[0])
        np.testing.assert_allclose(
            np.asarray(res.trajectory[i]), np.asarray(expected), rtol=0, atol=2e-5
        )
    # Without the drift the identity denoiser leaves the state unchanged.
    np.testing.assert_array_equal(np.asarray(sample(identity, latents, config=cfg).x), x0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_drift_none_equals_zero_drift(solver):
    latents = _latents(7)
    cfg = SamplerConfig(solver=solver, num_steps=6)
    a = sample(_toy_denoiser, latents, config=cfg).x
    zero = lambda k, r, s, x, d, ds_dr: jnp.zeros_like(x)  # noqa: E731
    b = sample(_toy_denoiser, latents, config=cfg, extra_drift=zero).x
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_drift_evaluated_at_both_heun_stages():
    seen = []

    def drift(k, r, sigma, x, denoised, ds_dr):
        seen.append(float(sigma))
        return 0.01 * denoised

    cfg = SamplerConfig(num_steps=4)
    with jax.disable_jit():
        sample(_toy_denoiser, _latents(), config=cfg, extra_drift=drift)
    sig = np.asarray(cfg.sigmas())
    assert len(seen) == nfe(cfg)
    np.testing.assert_array_equal(
        np.array(seen, np.float32), np.concatenate([[sig[0]], np.repeat(sig[1:-1], 2)])
    )


@pytest.mark.parametrize("clock", ["sigma", "step"])
def test_drift_hook_sees_step_index_clock_rate_and_denoised(clock):
    seen = []

    def drift(k, r, sigma, x, denoised, ds_dr):
        assert k.dtype == jnp.int32 and k.shape == r.shape == ds_dr.shape == ()
        np.testing.assert_array_equal(np.asarray(denoised), np.asarray(_toy_denoiser(x, sigma)))
        seen.append((int(k), float(r), float(sigma), float(ds_dr)))
        return 0.01 * denoised

    n = 4
    sig = np.asarray(edm_sigmas(n))
    with jax.disable_jit():
        integrate(_toy_denoiser, 80.0 * _latents(), sig, extra_drift=drift, clock=clock)
    # Heun: stage 1 of step k at (k, r_k, σ_k), stage 2 at (k + 1, r_{k+1}, σ_{k+1}), both with
    # step k's dσ/dr = N(σ_{k+1} − σ_k); the last step (to σ = 0) has one stage.
    want = []
    for k in range(n):
        ds_dr = np.float32(n * (sig[k + 1] - sig[k]))
        want.append((k, k / n, sig[k], ds_dr))
        if k < n - 1:
            want.append((k + 1, (k + 1) / n, sig[k + 1], ds_dr))
    np.testing.assert_allclose(np.array(seen), np.array(want, np.float64), rtol=1e-6)
    assert [s[0] for s in seen] == [w[0] for w in want]


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_has_aux_stacks_the_first_stage_aux(solver):
    latents = _latents(20)
    sig = edm_sigmas(5, sigma_max=10.0)

    def drift(k, r, sigma, x, denoised, ds_dr):
        return 0.01 * denoised, {"k": k, "sigma": sigma, "x": x, "denoised": denoised}

    x, traj, aux = integrate(
        _toy_denoiser,
        10.0 * latents,
        sig,
        solver=solver,
        extra_drift=drift,
        has_aux=True,
        return_trajectory=True,
    )
    plain = integrate(
        _toy_denoiser,
        10.0 * latents,
        sig,
        solver=solver,
        extra_drift=lambda k, r, s, x, d, ds_dr: 0.01 * d,
    )[0]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(plain))  # the aux changes nothing
    np.testing.assert_array_equal(np.asarray(aux["k"]), np.arange(5))
    np.testing.assert_array_equal(np.asarray(aux["sigma"]), np.asarray(sig[:-1]))
    np.testing.assert_array_equal(np.asarray(aux["x"]), np.asarray(traj[:-1]))
    for k in range(5):
        np.testing.assert_allclose(
            np.asarray(aux["denoised"][k]),
            np.asarray(_toy_denoiser(traj[k], jnp.full((SHAPE[0],), sig[k]))),
            rtol=1e-6,
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="has_aux"):
        integrate(_toy_denoiser, latents, sig, has_aux=True)
    with pytest.raises(ValueError, match="clock"):
        integrate(_toy_denoiser, latents, sig, clock="time")


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_step_clock_is_the_same_ode(solver):
    """On the step clock a drift u is a term of dx/dr; u·(dσ/dr)⁻¹ on the σ clock is the same
    ODE term, and without drift both clocks are EDM's sampler (up to float32 rounding)."""
    latents = _latents(21)
    sig = edm_sigmas(6, sigma_max=10.0)
    x0 = 10.0 * latents

    def u(k, r, sigma, x, denoised, ds_dr):
        return 0.3 * ds_dr * (denoised - jnp.tanh(x)) / sigma

    def u_sigma(k, r, sigma, x, denoised, ds_dr):
        return u(k, r, sigma, x, denoised, ds_dr) / ds_dr

    for step_drift, sigma_drift in ((None, None), (u, u_sigma)):
        a = integrate(_toy_denoiser, x0, sig, solver=solver, clock="step", extra_drift=step_drift)
        b = integrate(_toy_denoiser, x0, sig, solver=solver, extra_drift=sigma_drift)
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
    # Step clock, Euler, by hand: x + (N(σ' − σ)(x − D)/σ + u)/N.
    x = np.asarray(x0, np.float64)
    s64 = np.asarray(sig, np.float64)
    for k in range(6):
        d = np.asarray(_toy_denoiser(jnp.asarray(x, jnp.float32), jnp.full((2,), sig[k])))
        ds_dr = 6 * (s64[k + 1] - s64[k])
        drift = 0.3 * ds_dr * (d - np.tanh(x)) / s64[k]
        x = x + (ds_dr * (x - d) / s64[k] + drift) / 6
    got = integrate(_toy_denoiser, x0, sig, solver="euler", clock="step", extra_drift=u)[0]
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-4)


def test_step_arithmetic_helpers():
    x, f = jnp.float32(1.5), jnp.float32(-0.25)
    assert float(sampling.euler_update(x, f, h=jnp.float32(2.0))) == 1.0
    assert float(sampling.euler_update(x, f, num_steps=4)) == 1.5 - 0.0625
    with pytest.raises(ValueError, match="exactly one"):
        sampling.euler_update(x, f)
    with pytest.raises(ValueError, match="exactly one"):
        sampling.euler_update(x, f, h=1.0, num_steps=2)
    assert float(sampling.ode_slope(jnp.float32(3.0), jnp.float32(1.0), 2.0)) == 1.0
    assert float(sampling.ode_slope(jnp.float32(3.0), jnp.float32(1.0), 2.0, -4.0)) == -4.0
    np.testing.assert_allclose(np.asarray(sampling.step_clock(4)), [0, 0.25, 0.5, 0.75, 1.0])


def test_drift_matches_modified_denoiser():
    """A drift g equals running with D' = D - sigma * g (same ODE), checked on Heun."""
    latents = _latents(8)

    def g(x, sigma, denoised):
        return 0.05 * jnp.sin(denoised)

    def denoise_mod(x, sigma):
        d = _toy_denoiser(x, sigma)
        return d - sigma.reshape(-1, 1, 1, 1) * g(x, sigma, d)

    cfg = SamplerConfig(num_steps=6)
    drift = lambda k, r, s, x, d, ds_dr: g(x, s, d)  # noqa: E731
    a = sample(_toy_denoiser, latents, config=cfg, extra_drift=drift).x
    b = sample(denoise_mod, latents, config=cfg).x
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 6. No retracing, 7. jit == eager, result pytree
# ---------------------------------------------------------------------------------------------


def test_make_sampler_traces_once():
    traces = [0]

    def denoise(x, sigma):
        traces[0] += 1  # runs only while tracing
        return _toy_denoiser(x, sigma)

    fn = make_sampler(denoise, SamplerConfig(num_steps=5))
    y1 = fn(_latents(10))
    after_first = traces[0]
    assert after_first == 2  # Heun: Euler stage + correction, each traced once (not per step)
    y2 = fn(_latents(11))
    y3 = fn(_latents(12), None)
    assert traces[0] == after_first
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    assert y3.shape == SHAPE and y3.dtype == jnp.float32

    # Stochastic sampler: the key is a traced argument, new keys do not retrace either.
    traces[0] = 0
    fn = make_sampler(denoise, SamplerConfig(num_steps=5, S_churn=5.0))
    fn(_latents(10), _fast_key(0))
    n = traces[0]
    fn(_latents(11), _fast_key(1))
    assert traces[0] == n


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(num_steps=6),
        SamplerConfig(num_steps=6, solver="euler"),
        SamplerConfig(num_steps=6, S_churn=20.0, S_min=0.05, S_max=50.0, S_noise=1.003),
    ],
)
def test_jit_equals_eager(cfg):
    latents = _latents(13)
    key = _fast_key(3)

    def drift(k, r, sigma, x, denoised, ds_dr):
        return 0.01 * (x - denoised)

    eager = sample(_toy_denoiser, latents, key, config=cfg, extra_drift=drift)
    assert isinstance(eager, SampleResult) and eager.nfe == nfe(cfg) and eager.trajectory is None
    ref = np.asarray(eager.x)
    assert np.all(np.isfinite(ref))
    via_make = make_sampler(_toy_denoiser, cfg, extra_drift=drift)(latents, key)
    others = [via_make]
    # Random draws are slow op by op, so the churn config is checked eager vs make_sampler only.
    if not cfg.stochastic:

        @functools.partial(jax.jit, static_argnames="config")
        def jitted(latents, key, config):
            return sample(_toy_denoiser, latents, key, config=config, extra_drift=drift)

        res = jitted(latents, key, cfg)
        assert isinstance(res, SampleResult) and res.nfe == nfe(cfg) and res.trajectory is None
        others.append(res.x)
        with jax.disable_jit():  # plain Python loop, op by op
            others.append(sample(_toy_denoiser, latents, key, config=cfg, extra_drift=drift).x)
    for other in others:
        np.testing.assert_allclose(np.asarray(other), ref, rtol=1e-5, atol=1e-5)


def test_trajectory():
    latents = _latents(14)
    cfg = SamplerConfig(num_steps=5)
    res = sample(_toy_denoiser, latents, config=cfg, return_trajectory=True)
    assert res.trajectory.shape == (6, *SHAPE)
    np.testing.assert_array_equal(np.asarray(res.trajectory[0]), np.asarray(latents * 80.0))
    np.testing.assert_array_equal(np.asarray(res.trajectory[-1]), np.asarray(res.x))
    assert sample(_toy_denoiser, latents, config=cfg).trajectory is None


# ---------------------------------------------------------------------------------------------
# chex: the same numbers with and without jit; one trace for repeated calls
# ---------------------------------------------------------------------------------------------


class JitVariantsTest(chex.TestCase):
    """`sample` is pure: jitted and eager runs agree (chex variants), and a jitted wrapper is
    traced once for repeated calls of the same shapes (chex.assert_max_traces)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_heun_sampler_same_with_and_without_jit(self):
        config = SamplerConfig(solver="heun", num_steps=4)
        run = self.variant(lambda z: sample(_toy_denoiser, z, config=config).x)
        out = run(_latents(3))
        ref = jax.jit(lambda z: sample(_toy_denoiser, z, config=config).x)(_latents(3))
        chex.assert_shape(out, SHAPE)
        chex.assert_tree_all_finite(out)
        chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)

    def test_repeated_calls_trace_once(self):
        chex.clear_trace_counter()
        config = SamplerConfig(solver="euler", num_steps=3)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def run(z):
            return sample(_toy_denoiser, z, config=config).x

        for seed in range(3):  # a retrace would raise AssertionError
            run(_latents(seed))
