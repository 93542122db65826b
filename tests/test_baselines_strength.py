"""Strength options of ΠGDM, DPS and RePaint against hand-computed steps (issue 14, point 1).

Every expected value is written out here in float64 NumPy from the update equations (VIPAINT.md
§8.1, §11.2-§11.4), on a linear denoiser D(x; σ) = A·k(σ)·(x_flat M) with k(σ) = s²/(s² + σ²),
s = 0.5, whose Jacobian is known in closed form: J_Dᵀ v = A·k(σ)·(v_flat Mᵀ). The methods' noise
draws follow the documented key rule (``k_init, k_steps = split(key)``; start σ_0·normal(k_init);
step i from ``fold_in(k_steps, i)``). Tiny images (4×4, batch 2) and one or two steps.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import baselines, sampling
from aid_jax.methods import dps as dps_mod
from aid_jax.methods import make_inpainter, method_cost, method_options
from aid_jax.methods import pigdm as pigdm_mod
from aid_jax.methods import primitives as prim
from aid_jax.methods import repaint as repaint_mod

S = 0.5
B, H, W = 2, 4, 4
KEY = jax.random.key(3)
ONE_STEP = sampling.EDMSchedule(sigma_max=2.0)  # sigmas(1) = [2, 0]
TWO_STEPS = sampling.EDMSchedule(sigma_min=0.5, sigma_max=2.0)  # sigmas(2) = [2, 0.5, 0]


def test_schedules_of_these_tests():
    np.testing.assert_allclose(ONE_STEP.sigmas(1), [2.0, 0.0])
    np.testing.assert_allclose(TWO_STEPS.sigmas(2), [2.0, 0.5, 0.0])


def _k(sigma):
    return S**2 / (S**2 + sigma**2)


class Linear:
    """D(x; σ) = A k(σ) (x_flat M): the JAX denoiser and its float64 value and VJP."""

    def __init__(self, channels=1, amp=1.0, diagonal=False, seed=0):
        n = H * W * channels
        rng = np.random.default_rng(seed)
        self.M = np.eye(n) if diagonal else np.eye(n) + 0.3 * rng.standard_normal((n, n))
        self.amp = amp
        self.shape = (B, H, W, channels)

    def jax(self):
        m = jnp.asarray(self.M, jnp.float32)

        def denoise(x, sigma):
            flat = jnp.matmul(x.reshape(x.shape[0], -1), m, precision=jax.lax.Precision.HIGHEST)
            return (self.amp * _k(sigma)[:, None] * flat).reshape(x.shape)

        return denoise

    def D(self, x, sigma):
        return (self.amp * _k(sigma) * (x.reshape(B, -1) @ self.M)).reshape(x.shape)

    def JT(self, v, sigma):
        return (self.amp * _k(sigma) * (v.reshape(B, -1) @ self.M.T)).reshape(v.shape)


def _data(channels=1):
    """y float32 (garbage in the hole), mask [B, H, W, 1] (8 and 5 known pixels), both float64."""
    rng = np.random.default_rng(1)
    m = np.zeros((B, H, W, 1), np.float32)
    m[0, 2:] = 1.0
    m[1].flat[[0, 3, 6, 9, 15]] = 1.0
    y = rng.uniform(-0.9, 0.9, (B, H, W, channels)).astype(np.float32)
    y = np.where(m == 1, y, 5.0).astype(np.float32)  # hole values must be ignored
    mb = np.broadcast_to(m, y.shape).astype(np.float64)
    return y, m, mb * y.astype(np.float64), mb


def _normal(key, shape):
    return np.asarray(jax.random.normal(key, shape, jnp.float32), np.float64)


def _start_and_step_keys(sigma0, shape):
    k_init, k_steps = jax.random.split(KEY)
    return sigma0 * _normal(k_init, shape), k_steps


def _run(method, den, y, m, **opts):
    return np.asarray(baselines.METHODS[method](den, jnp.asarray(y), jnp.asarray(m), KEY, **opts).x)


# ---------------------------------------------------------------------------------------------
# ΠGDM


def test_pigdm_reddiff_inpaint_is_the_default_one_step():
    """σ 2 -> 0: known pixels exactly y; hole x̂0 + w (1 - m) J_Dᵀ(m ⊙ (y - x̂0))."""
    assert method_options("pigdm")["form"] == "reddiff_inpaint"
    lin = Linear()
    y, m, y64, m64 = _data()
    out = _run("pigdm", lin.jax(), y, m, num_steps=1, w=0.7, schedule=ONE_STEP)
    x, _ = _start_and_step_keys(2.0, y.shape)
    x0 = lin.D(x, 2.0)
    g = lin.JT(m64 * (y64 - x0), 2.0)
    known = m64 == 1
    assert np.abs(g[~known]).max() > 1e-2  # the hole guidance is not trivially zero here
    np.testing.assert_array_equal(out[known], y[known])  # exact, not approximately
    np.testing.assert_allclose(out[~known], (x0 + 0.7 * g)[~known], rtol=1e-5, atol=1e-6)


def _ref_pigdm(lin, y64, m64, sig, *, form, eta, w, sigma_y=0.0, sigma_data=0.5, old=False):
    x, k_steps = _start_and_step_keys(sig[0], y64.shape)
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        x0 = lin.D(x, s)
        g = lin.JT(m64 * (y64 - x0), s)
        c = eta * sn * np.sqrt(1 - sn**2 / s**2)
        keep = np.sqrt(sn**2 - c**2)
        n = _normal(jax.random.fold_in(k_steps, i), y64.shape) if eta > 0 else 0.0
        eps = (x - x0) / s
        if form == "reddiff_inpaint":  # paste y into x̂0, ε̂ from the uncorrected x̂0
            x = np.where(m64 == 1, y64, x0) + keep * eps + c * n + (1 - m64) * w * g
        elif form == "paper":
            r2 = s**2 * sigma_data**2 / (s**2 + sigma_data**2)
            factor = s * (s - sn) if old else s * (s - keep)
            x = x0 + keep * eps + c * n + w * factor * g / (r2 + sigma_y**2)
        else:
            x = x0 + keep * eps + c * n + w * g
    return x


@pytest.mark.parametrize("form", pigdm_mod.FORMS)
def test_pigdm_forms_two_steps_with_eta(form):
    """σ 2 -> 0.5 -> 0 with η = 0.6 (a noisy first step) for every form."""
    lin = Linear()
    y, m, y64, m64 = _data()
    opts = dict(form=form, eta=0.6, w=0.8, sigma_y=0.1 if form == "paper" else 0.0)
    out = _run("pigdm", lin.jax(), y, m, num_steps=2, schedule=TWO_STEPS, **opts)
    expected = _ref_pigdm(lin, y64, m64, [2.0, 0.5, 0.0], **opts)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    if form == "reddiff_inpaint":
        np.testing.assert_array_equal(out[m64 == 1], np.broadcast_to(y, out.shape)[m64 == 1])


def test_pigdm_paper_eta_factor():
    """The guidance factor at η > 0 is σ(σ - sqrt(σ'² - c²)), not σ(σ - σ')."""
    s, sn, eta = 2.0, 0.5, 0.6
    c = eta * sn * np.sqrt(1 - sn**2 / s**2)
    keep, c_lib = prim.ddim_coeffs(jnp.float32(s), jnp.float32(sn), eta)
    np.testing.assert_allclose([float(keep), float(c_lib)], [np.sqrt(sn**2 - c**2), c], rtol=1e-6)
    lin = Linear()
    y, m, y64, m64 = _data()
    opts = dict(form="paper", eta=eta, w=1.0, sigma_y=0.05)
    out = _run("pigdm", lin.jax(), y, m, num_steps=2, schedule=TWO_STEPS, **opts)
    new = _ref_pigdm(lin, y64, m64, [s, sn, 0.0], **opts)
    old = _ref_pigdm(lin, y64, m64, [s, sn, 0.0], old=True, **opts)
    np.testing.assert_allclose(out, new, rtol=1e-5, atol=1e-5)
    assert np.abs(new - old).max() > 1e-2  # the test tells the two factors apart


def test_pigdm_reddiff_inpaint_without_guidance_is_ddnm_eta0():
    """w = 0: x' = x̂0' + σ' ε̂ with x̂0' = m y + (1 - m) x̂0 — DDNM at η = 0."""
    den = Linear().jax()
    y, m, _, _ = _data()
    a = _run("pigdm", den, y, m, num_steps=3, w=0.0)
    b = _run("ddnm", den, y, m, num_steps=3, eta=0.0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DPS


def _ref_dps(lin, y64, m64, sig, *, zeta, step_form, clamp, sigma_y=0.0, n_obs=None):
    x, k_steps = _start_and_step_keys(sig[0], y64.shape)
    n_obs = m64.sum(axis=(1, 2, 3), keepdims=True) if n_obs is None else n_obs
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        x0 = lin.D(x, s)
        inside = (np.abs(x0) < 1).astype(np.float64) if clamp else 1.0
        x0 = np.clip(x0, -1, 1) if clamp else x0
        r = m64 * (y64 - x0)
        norm = np.sqrt((r**2).sum(axis=(1, 2, 3), keepdims=True) + n_obs * sigma_y**2)
        grad = -lin.JT(inside * r / norm, s)
        n = _normal(jax.random.fold_in(k_steps, i), y64.shape)
        x_next = x0 + (sn**2 / s**2) * (x - x0) + sn * np.sqrt(1 - sn**2 / s**2) * n
        step = zeta * np.sqrt((1 + s**2) * (1 + sn**2)) if step_form == "vp_exact" else None
        step = zeta * (1 + s**2) if step_form == "vp" else step
        x = x_next - step * grad
    return x


def test_dps_defaults():
    opts = method_options("dps")
    assert opts["step_form"] == "vp_exact" and opts["clamp"] is True and opts["sigma_y"] == 0.0


@pytest.mark.parametrize("step_form", ["vp_exact", "vp"])
def test_dps_step_factor_two_steps(step_form):
    """ζ/(a_i a_{i+1}) = ζ sqrt((1 + σ_i²)(1 + σ_{i+1}²)) (``vp_exact``) vs ζ(1 + σ_i²)."""
    lin = Linear()
    y, m, y64, m64 = _data()
    opts = dict(zeta=0.3, step_form=step_form, clamp=False)
    out = _run("dps", lin.jax(), y, m, num_steps=2, schedule=TWO_STEPS, **opts)
    expected = _ref_dps(lin, y64, m64, [2.0, 0.5, 0.0], **opts)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_dps_clamp_zeroes_the_gradient_at_clipped_pixels():
    """Diagonal D with values past ±1, σ 2 -> 0: x̂0 clamped; the gradient is 0 where x̂0 was
    clipped (those known pixels stay exactly ±1); clamp=False is the unclamped step."""
    lin = Linear(amp=10.0, diagonal=True)
    y, m, y64, m64 = _data()
    x, _ = _start_and_step_keys(2.0, y.shape)
    x0 = lin.D(x, 2.0)
    known = m64 == 1
    clipped = known & (np.abs(x0) > 1)
    assert clipped.sum() >= 2 and (known & (np.abs(x0) < 1)).sum() >= 2  # both kinds present
    out = _run("dps", lin.jax(), y, m, num_steps=1, zeta=0.4, schedule=ONE_STEP)  # clamp=True
    expected = _ref_dps(lin, y64, m64, [2.0, 0.0], zeta=0.4, step_form="vp_exact", clamp=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[clipped], np.sign(x0[clipped]))  # no gradient step there
    # In the hole (diagonal J_D, r = 0 there) the result is the clamped x̂0.
    np.testing.assert_allclose(out[~known], np.clip(x0, -1, 1)[~known], rtol=1e-6)
    off = _run("dps", lin.jax(), y, m, num_steps=1, zeta=0.4, clamp=False, schedule=ONE_STEP)
    expected_off = _ref_dps(lin, y64, m64, [2.0, 0.0], zeta=0.4, step_form="vp_exact", clamp=False)
    np.testing.assert_allclose(off, expected_off, rtol=1e-5, atol=1e-5)
    assert np.abs(off).max() > 1.5


def test_dps_sigma_y_floor():
    """||r||_floor = sqrt(||r||² + n_obs σ_y²), n_obs the observed elements of each image (here
    2 channels under a 1-channel mask: 16 and 10)."""
    lin = Linear(channels=2)
    y, m, y64, m64 = _data(channels=2)
    assert m64.sum(axis=(1, 2, 3)).tolist() == [16.0, 10.0]
    opts = dict(zeta=2.0, step_form="vp_exact", clamp=False, sigma_y=0.3)
    out = _run("dps", lin.jax(), y, m, num_steps=1, schedule=ONE_STEP, **opts)
    expected = _ref_dps(lin, y64, m64, [2.0, 0.0], **opts)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    plain = _ref_dps(lin, y64, m64, [2.0, 0.0], **{**opts, "sigma_y": 0.0})
    assert np.abs(expected - plain).max() > 1e-2  # the floor changes the step ...
    pixels = m64[..., :1].sum(axis=(1, 2, 3), keepdims=True)  # ... and counts elements, not pixels
    assert np.abs(expected - _ref_dps(lin, y64, m64, [2.0, 0.0], n_obs=pixels, **opts)).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# RePaint


def _ref_repaint_descent(lin, y64, m64, sig, *, clamp):
    """Plain descent (jump_n_sample = 1): schedule entry e draws normal(fold_in(k_steps, e),
    (2, ...)): n[0] the ancestral noise, n[1] the known part's."""
    x, k_steps = _start_and_step_keys(sig[0], y64.shape)
    for e in range(len(sig) - 1):
        s, sn = sig[e], sig[e + 1]
        n = _normal(jax.random.fold_in(k_steps, e), (2, *y64.shape))
        x0 = np.clip(lin.D(x, s), -1, 1) if clamp else lin.D(x, s)
        x_un = x0 + (sn**2 / s**2) * (x - x0) + sn * np.sqrt(1 - sn**2 / s**2) * n[0]
        x = np.where(m64 == 1, y64 + sn * n[1], x_un)
    return x


def test_repaint_clamp():
    assert method_options("repaint")["clamp"] is True
    lin = Linear(amp=10.0, diagonal=True)
    y, m, y64, m64 = _data()
    assert np.abs(lin.D(_start_and_step_keys(2.0, y.shape)[0], 2.0)).max() > 1.5
    # jump_length 10 >= num_steps 2 is allowed with jump_n_sample = 1 (no time travel asked).
    opts = dict(num_steps=2, jump_length=10, jump_n_sample=1, schedule=TWO_STEPS)
    sig = [2.0, 0.5, 0.0]
    on = _run("repaint", lin.jax(), y, m, **opts)
    np.testing.assert_allclose(on, _ref_repaint_descent(lin, y64, m64, sig, clamp=True), 1e-5, 1e-5)
    off = _run("repaint", lin.jax(), y, m, clamp=False, **opts)
    expected_off = _ref_repaint_descent(lin, y64, m64, sig, clamp=False)
    np.testing.assert_allclose(off, expected_off, rtol=1e-5, atol=1e-5)
    assert np.abs(on - off).max() > 1e-2
    np.testing.assert_array_equal(on[m64 == 1], y[m64 == 1])


# ---------------------------------------------------------------------------------------------
# Option checks (cost is the option check)


@pytest.mark.parametrize("mod", [dps_mod, pigdm_mod, repaint_mod], ids=lambda m: m.__name__)
def test_cost_takes_every_option(mod):
    name = mod.__name__.rsplit(".", 1)[1]
    assert set(inspect.signature(mod.cost).parameters) == set(method_options(name))


BAD_OPTIONS = [
    ("dps", dict(zeta=-0.1), r"zeta must be a number in \[0\.0, inf\]"),
    ("dps", dict(step_form="vp_approx"), r"step_form must be one of \('vp_exact', 'vp'"),
    ("dps", dict(clamp="yes"), "clamp must be True or False"),
    ("dps", dict(sigma_y=-0.05), r"sigma_y must be a number in \[0\.0, inf\]"),
    ("pigdm", dict(form="official"), r"form must be one of \('reddiff_inpaint', 'paper'"),
    ("pigdm", dict(sigma_y=0.05), "sigma_y is used only by form='paper'"),
    ("pigdm", dict(eta=1.5), r"eta must be a number in \[0\.0, 1\.0\]"),
    ("repaint", dict(num_steps=5, jump_length=5, jump_n_sample=2), "1 <= jump_length < num_steps"),
    ("repaint", dict(num_steps=5, jump_length=9), r"jump_length.*num_steps \(5\)"),
    ("repaint", dict(num_steps=5, jump_length=0), "jump_length must be an int >= 1"),
    ("repaint", dict(clamp=1), "clamp must be True or False"),
]


@pytest.mark.parametrize("name,opts,match", BAD_OPTIONS)
def test_bad_options_raise_before_compiling(name, opts, match):
    with pytest.raises(ValueError, match=match):
        method_cost(name, **opts)
    traces = []

    def backbone(params, x, sigma):
        traces.append(1)
        return x

    with pytest.raises(ValueError, match=match):
        make_inpainter(name, backbone, **opts)
    assert traces == []


def test_good_edge_options():
    assert method_cost("repaint", num_steps=5, jump_length=10, jump_n_sample=1) == (5, 0)
    assert method_cost("repaint", num_steps=5, jump_length=4, jump_n_sample=2)[0] > 5
    assert method_cost("pigdm", form="paper", sigma_y=0.05) == (100, 100)
    assert method_cost("dps", sigma_y=0.05, clamp=False, step_form="vp") == (250, 250)
