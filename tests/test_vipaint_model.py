"""VIPaint's fit and sampling (aid_jax.vipaint.model) on the Gaussian world with its exact
linear denoiser: initialisation (§8.3), the hierarchical chain's KL against a float64 loop,
finite gradients that match finite differences (§14.6), determinism, the fit's cost accounting,
no retracing, configuration errors (the LPIPS options included; the LPIPS term itself is in
tests/test_vipaint_lpips.py) and the official 400-step refinement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.gaussian import GaussianWorld, benchmark_mask
from aid_jax.vipaint import losses, model

H = W = 4


@pytest.fixture(scope="module")
def world():
    return GaussianWorld.squared_exponential(H, W, length_scale=1.5, variance=0.25)


@pytest.fixture(scope="module")
def data(world):
    x0 = world.sample(np.random.default_rng(0), 2).reshape(2, H, W, 1).astype(np.float32)
    m = np.stack([benchmark_mask("top_half", H, W), benchmark_mask("center_box", H, W)])
    m = m.reshape(2, H, W, 1).astype(np.float32)
    return x0 * m, m


def small(**kw):
    base = dict(num_iters=3, num_mc=2, refine_steps=3, sigmas=(1.6, 1.0, 0.6), remat=False)
    base.update(kw)
    return model.VIPaintConfig(**base)


def test_init_params(data):
    y, m = data
    cfg = small(init_top_noise=0.0)
    p = model.init_params(y, m, jax.random.key(0), cfg)
    assert p["mu_top"].shape == (2, H, W, 1) and p["mu"].shape == (2, 2, H, W, 1)
    # e₀: observed pixels kept, holes filled with the image's mean observed value.
    for b in range(2):
        obs = m[b] == 1
        np.testing.assert_allclose(np.asarray(p["mu_top"][b])[obs], y[b][obs], atol=1e-6)
        np.testing.assert_allclose(np.asarray(p["mu_top"][b])[~obs], y[b][obs].mean(), atol=1e-6)
    np.testing.assert_allclose(np.exp(0.5 * np.asarray(p["logvar_top"])), 1.6, rtol=1e-6)
    s = np.exp(0.5 * np.asarray(p["logvar"][0, :, 0, 0, 0]))
    want = [0.7 * 1.0 * math.sqrt(1 - (1.0 / 1.6) ** 2), 0.7 * 0.6 * math.sqrt(1 - 0.36)]
    np.testing.assert_allclose(s, want, rtol=1e-5)
    np.testing.assert_allclose(p["gate"], 4.0)


def test_chain_kl_matches_a_float64_loop(world, data):
    y, m = data
    cfg = small()
    p = model.init_params(y, m, jax.random.key(1), cfg)
    p["gate"] = p["gate"] - 3.0  # the free means matter
    key = jax.random.key(2)
    x1, x_top, s_top, kl = model.sample_chain(world.denoiser(), p, key, cfg)
    # Rebuild with the same noises in float64.
    keys = jax.random.split(key, 3)
    sig = cfg.sigmas
    x = np.asarray(p["mu_top"], np.float64) + np.exp(
        0.5 * np.asarray(p["logvar_top"])
    ) * np.asarray(jax.random.normal(keys[0], x_top.shape), np.float64)
    np.testing.assert_allclose(x_top, x, rtol=1e-5, atol=1e-5)
    total = np.zeros(2)
    for j in (1, 2):
        d = world.denoiser_f64(x.reshape(2, -1), sig[j - 1]).reshape(x.shape)
        eps = (x - d) / sig[j - 1]
        c = math.sqrt(0.2) * sig[j] * math.sqrt(1 - sig[j] ** 2 / sig[j - 1] ** 2)
        mp = d + math.sqrt(sig[j] ** 2 - c**2) * eps
        w = 1 / (1 + np.exp(-np.asarray(p["gate"][:, j - 1], np.float64)))
        mean = w * mp + (1 - w) * np.asarray(p["mu"][:, j - 1], np.float64)
        s = np.exp(0.5 * np.asarray(p["logvar"][:, j - 1], np.float64))
        kl_el = np.log(c / s) + (s**2 + (mean - mp) ** 2) / (2 * c**2) - 0.5
        total += kl_el.reshape(2, -1).mean(axis=1)
        x = mean + s * np.asarray(jax.random.normal(keys[j], x.shape), np.float64)
    np.testing.assert_allclose(kl, total, rtol=1e-4)
    np.testing.assert_allclose(x1, x, rtol=1e-4, atol=1e-4)


def test_gradients_are_finite_and_match_finite_differences(world, data):
    y, m = data
    cfg = small(num_mc=3)
    p = model.init_params(y, m, jax.random.key(3), cfg)
    key, u0 = jax.random.key(4), jnp.asarray([0.3, 0.7], jnp.float32)

    def f(params):
        return model.objective(params, world.denoiser(), y, m, key, u0, cfg)[0]

    grads = jax.grad(f)(p)
    for name, g in grads.items():
        assert np.isfinite(np.asarray(g)).all(), name
        assert float(jnp.abs(g).max()) > 0, name
    # Directional finite difference in float32 along a random unit direction per group. A unit
    # direction keeps the step small enough that the central difference's O(h²) error is below
    # 1 % (an unnormalised direction, |v| ≈ 4–6, was off by 25 % on some CPUs' arithmetic), and
    # the absolute floor covers float32 round-off of an objective of ~84 (ulp/h ≈ 1e-3).
    for i, name in enumerate(("mu_top", "logvar_top", "mu", "logvar", "gate")):
        v = jax.random.normal(jax.random.key(100 + i), p[name].shape)
        v = v / jnp.linalg.norm(v)
        h = 1e-2
        plus = dict(p, **{name: p[name] + h * v})
        minus = dict(p, **{name: p[name] - h * v})
        fd = (float(f(plus)) - float(f(minus))) / (2 * h)
        an = float(jnp.sum(grads[name] * v))
        assert an == pytest.approx(fd, rel=0.05, abs=2e-3), name


def test_fit_and_sample_shapes_determinism_and_costs(world, data):
    y, m = data
    cfg = small()
    run = jax.jit(lambda y, m, k: model.fit_and_sample(world.denoiser(), y, m, k, cfg, 3))
    s1, p1, hist = run(y, m, jax.random.key(5))
    s2, _, _ = run(y, m, jax.random.key(5))
    s3, _, _ = run(y, m, jax.random.key(6))
    assert s1.shape == (2, 3, H, W, 1) and hist["loss"].shape == (3, 2)
    np.testing.assert_array_equal(s1, s2)
    assert float(jnp.abs(s1 - s3).max()) > 1e-3
    assert np.isfinite(np.asarray(s1)).all()
    # Samples of one image differ (the posterior and the refinement noise).
    assert float(jnp.abs(s1[:, 0] - s1[:, 1]).max()) > 1e-3
    c = model.costs(cfg)
    assert c == dict(
        fit_forward=3 * 2 * 4, fit_backward=3 * 2 * 4, sample_forward=2 + 3 + 1, sample_backward=3
    )
    # The fit moved the parameters and clamped the log-variances.
    assert (
        float(jnp.abs(p1["mu"] - model.init_params(y, m, jax.random.key(0), cfg)["mu"]).max()) > 0
    )
    assert float(p1["logvar_top"].max()) <= 2 * math.log(2 * 1.6) + 1e-6


def test_official_kl_changes_the_fit(world, data):
    y, m = data
    a = model.fit(world.denoiser(), y, m, jax.random.key(7), small())[1]["hier"]
    b = model.fit(world.denoiser(), y, m, jax.random.key(7), small(kl_form="official"))[1]["hier"]
    assert not np.allclose(a, b)


def test_config_errors():
    with pytest.raises(ValueError, match="decreasing"):
        model.VIPaintConfig(sigmas=(0.8, 1.6))
    with pytest.raises(ValueError, match="sigma_min, sigma_max"):
        model.VIPaintConfig(sigmas=(100.0, 1.0))
    with pytest.raises(ValueError, match="eta_keypoints"):
        model.VIPaintConfig(eta_keypoints=0.0)
    with pytest.raises(ValueError, match="kl_form"):
        model.VIPaintConfig(kl_form="slip")
    with pytest.raises(ValueError, match="num_iters"):
        model.VIPaintConfig(num_iters=0)
    with pytest.raises(ValueError, match=r"num_iters must be an int >= 1, got 2\.5"):
        model.VIPaintConfig(num_iters=2.5)  # e.g. a tuning extension 5 · (5 / 10)
    with pytest.raises(ValueError, match="refine_steps must be an int"):
        model.VIPaintConfig(refine_steps=True)
    assert losses.KL_FORMS == ("exact", "official")


def test_harness_method_shares_one_fit_per_image(world, data):
    """baselines.make_inpainter('vipaint', ...): rows b·k … b·k + k − 1 share image b's posterior;
    the per-sample NFE counts the fit divided by k; inputs are checked before tracing."""
    from aid_jax import baselines

    y, m = data
    k = 3
    yr, mr = np.repeat(np.clip(y, -1, 1), k, axis=0), np.repeat(m, k, axis=0)
    opts = dict(num_steps=3, samples_per_fit=k, num_iters=2, num_mc=2, sigmas=(1.6, 0.85))
    fn = baselines.make_inpainter("vipaint", lambda p, x, s: world.denoiser()(x, s), **opts)
    res = fn(None, yr, mr, jax.random.key(0))
    assert res.x.shape == yr.shape
    assert (fn.nfe, fn.nfe_backward) == (2 * 2 * 3 // k + (1 + 3 + 1), 2 * 2 * 3 // k + 3)
    # The same posterior drawn directly: identical rows.
    cfg = model.VIPaintConfig(refine_steps=3, num_iters=2, num_mc=2, sigmas=(1.6, 0.85))
    direct, _, _ = model.fit_and_sample(
        world.denoiser(), jnp.asarray(yr[::k]), jnp.asarray(mr[::k]), jax.random.key(0), cfg, k
    )
    np.testing.assert_allclose(res.x, np.asarray(direct).reshape(yr.shape), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of samples_per_fit"):
        fn(None, yr[:4], mr[:4], jax.random.key(0))
    with pytest.raises(ValueError, match="mask"):
        fn(None, yr, np.full_like(mr, 0.5), jax.random.key(0))


def test_fitted_posterior_mean_approaches_the_exact_one():
    """Gaussian world (6×6, top half known, four images), the exact linear denoiser: the mean
    of D(x_1; σ_1) under the fitted q (256 draws) gets closer to the exact posterior mean on the
    hole as the fit runs longer (VIPAINT.md §14.7, issue 6 item 5). The official β = 100, whose
    slower fit shows the trend over 25 → 300 iterations (β = 10 gets there within 100)."""
    from aid_jax.gaussian import posterior_mean_rmse

    world = GaussianWorld.squared_exponential(6, 6, length_scale=2.0, variance=0.25)
    den = world.denoiser()
    b = 4
    x0 = world.sample(np.random.default_rng(0), b).reshape(b, 6, 6, 1).astype(np.float32)
    m = np.stack([benchmark_mask("top_half", 6, 6)] * b).reshape(b, 6, 6, 1).astype(np.float32)
    y = x0 * m
    exact = [world.posterior(y[i], m[i])[0] for i in range(b)]

    def error(params, cfg):
        rows = model._rows(params, 256)
        x1, *_ = model.sample_chain(den, rows, jax.random.key(9), cfg)
        d = np.asarray(den(x1, jnp.full((x1.shape[0],), cfg.sigmas[-1]))).reshape(b, 256, 6, 6, 1)
        return np.mean([posterior_mean_rmse(d[i], exact[i], m[i]) for i in range(b)])

    errors = []
    for iters in (25, 100, 300):
        cfg = model.VIPaintConfig(num_iters=iters, beta_prior=100.0, beta_hier=100.0)
        params, _ = jax.jit(lambda y_, m_, k, cfg=cfg: model.fit(den, y_, m_, k, cfg))(
            jnp.asarray(y), jnp.asarray(m), jax.random.key(0)
        )
        errors.append(error(params, cfg))
    start = error(model.init_params(jnp.asarray(y), jnp.asarray(m), jax.random.key(0), cfg), cfg)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.85 * start, (start, errors)


def test_bad_inputs_are_refused_with_a_message(world, data):
    y, m = data
    den = world.denoiser()
    cfg = small()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="NHWC"):
        model.fit(den, y[0], m, key, cfg)
    with pytest.raises(ValueError, match="mask has shape"):
        model.fit(den, y, m[:, :2], key, cfg)
    with pytest.raises(ValueError, match="only 0 .hole. and 1"):
        model.fit(den, y, m * 0.5, key, cfg)
    bad = y.copy()
    bad[m[..., 0] == 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(den, bad, m, key, cfg)
    nan_hole = np.where(m == 1, y, np.nan).astype(np.float32)  # hole values are never read
    np.testing.assert_array_equal(
        model.fit(den, nan_hole, m, key, cfg)[0]["mu_top"],
        model.fit(den, y, m, key, cfg)[0]["mu_top"],
    )
    params, _ = model.fit(den, y, m, key, cfg)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(den, params, y, m, key, cfg, 0)


def test_host_entry_point_reports_costs_and_times(world, data):
    y, m = data
    cfg = small()
    den = world.denoiser()
    res = model.inpaint(den, y, m, jax.random.key(3), cfg, num_samples=2)
    direct, _, _ = jax.jit(lambda y_, m_, k: model.fit_and_sample(den, y_, m_, k, cfg, 2))(
        y, m, jax.random.key(3)
    )
    np.testing.assert_allclose(res.x, direct, rtol=1e-5, atol=1e-5)
    c = model.costs(cfg)
    assert (res.fit_nfe, res.fit_nfe_backward) == (c["fit_forward"], c["fit_backward"])
    assert res.nfe == c["fit_forward"] // 2 + c["sample_forward"]
    assert res.nfe_backward == c["fit_backward"] // 2 + c["sample_backward"]
    assert res.fit_seconds > 0 and res.sample_seconds > 0 and res.history["loss"].shape == (3, 2)
    with pytest.raises(ValueError, match="mask"):
        model.inpaint(den, y, m * 0.5, jax.random.key(3), cfg)


def test_lpips_options_are_checked():
    """rec_lpips_weight (default 0, official 100) and rec_lpips_net (default 'vgg', or 'alex'):
    bad values raise ValueError naming the option, in the config and in the registered method's
    cost (its option check). No weights are read here (tests/test_vipaint_lpips.py runs them)."""
    from aid_jax import methods

    for bad in (-1.0, float("nan"), float("inf"), "a lot", None):
        with pytest.raises(ValueError, match="rec_lpips_weight"):
            model.VIPaintConfig(rec_lpips_weight=bad)
    for bad in ("squeeze", "VGG", None):
        with pytest.raises(ValueError, match="rec_lpips_net"):
            model.VIPaintConfig(rec_lpips_net=bad)
    default = model.VIPaintConfig()
    assert (default.rec_lpips_weight, default.rec_lpips_net) == (0.0, "vgg")
    cfg = model.VIPaintConfig(rec_lpips_weight=100, rec_lpips_net="alex")
    assert cfg.rec_lpips_weight == 100.0 and isinstance(cfg.rec_lpips_weight, float)
    assert hash(cfg) == hash(model.VIPaintConfig(rec_lpips_weight=100.0, rec_lpips_net="alex"))
    assert model.LPIPS_NETS == ("alex", "vgg")
    opts = methods.method_options("vipaint")
    assert (opts["rec_lpips_weight"], opts["rec_lpips_net"]) == (0.0, "vgg")
    # LPIPS passes are not denoiser passes: the cost is unchanged.
    assert methods.method_cost(
        "vipaint", rec_lpips_weight=100.0, rec_lpips_net="alex"
    ) == methods.method_cost("vipaint")
    with pytest.raises(ValueError, match="rec_lpips_weight"):
        methods.method_cost("vipaint", rec_lpips_weight=-1.0)
    with pytest.raises(ValueError, match="rec_lpips_net"):
        methods.method_cost("vipaint", rec_lpips_net="squeeze")


def test_official_refinement_length_400(world, data):
    """VIPAINT.md §6.1: 400 refinement steps (every integer VP step from t = 400 to 1); the
    preset of the official lengths and loss weights, its costs, and 400 steps running."""
    from aid_jax import methods

    paper = model.VIPaintConfig(**model.PAPER_SETTINGS)
    assert model.OFFICIAL_REFINE_STEPS == 400
    assert (paper.refine_steps, paper.num_iters, paper.num_mc) == (400, 50, 5)
    assert (paper.rec_l1_weight, paper.rec_lpips_weight, paper.rec_lpips_net) == (100, 100, "vgg")
    assert model.costs(paper) == dict(
        fit_forward=50 * 5 * 3,
        fit_backward=50 * 5 * 3,
        sample_forward=1 + 400 + 1,
        sample_backward=400,
    )
    assert methods.method_cost("vipaint", num_steps=400, samples_per_fit=10) == (75 + 402, 75 + 400)
    y, m = data
    den = world.denoiser()
    cfg = small(refine_steps=400)
    params = model.init_params(y, m, jax.random.key(0), cfg)
    out = jax.jit(lambda p: model.sample(den, p, y, m, jax.random.key(1), cfg, 2))(params)
    assert out.shape == (2, 2, H, W, 1) and np.isfinite(np.asarray(out)).all()


def test_known_pixels_are_respected():
    """VIPaint is a gradient method: its raw samples match the observed pixels approximately, not
    exactly (VIPAINT.md §10.6). On the Gaussian world their RMSE there is under 0.3× the
    unguided sampler's (measured 0.14 vs 0.67); the harness pastes y back for the composite."""
    from aid_jax import baselines

    world = GaussianWorld.squared_exponential(6, 6, length_scale=2.0, variance=0.25)
    den = world.denoiser()
    b, s = 4, 8
    x0 = world.sample(np.random.default_rng(0), b).reshape(b, 6, 6, 1).astype(np.float32)
    m = np.stack([benchmark_mask("top_half", 6, 6)] * b).reshape(b, 6, 6, 1).astype(np.float32)
    y = x0 * m
    cfg = model.VIPaintConfig(num_iters=20, refine_steps=20)
    xs = np.asarray(model.inpaint(den, y, m, jax.random.key(0), cfg, num_samples=s).x)
    obs = np.broadcast_to(m[:, None], xs.shape) == 1
    err = np.sqrt(np.mean((xs - x0[:, None])[obs] ** 2))
    yr, mr = jnp.repeat(jnp.asarray(y), s, 0), jnp.repeat(jnp.asarray(m), s, 0)
    plain = np.asarray(baselines.unguided(den, yr, mr, jax.random.key(1), num_steps=18).x)
    err_plain = np.sqrt(np.mean((plain.reshape(xs.shape) - x0[:, None])[obs] ** 2))
    assert err < 0.3 * err_plain, (err, err_plain)
