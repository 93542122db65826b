"""aid_jax.inpaint and the AID parameter bundle: the deployed sampler equals the EDM sampler plus
Δr·μ (float64 reference loop over the real networks), paste-back, jit without retracing, every
bad input refused before anything runs, and the parameter budget (≤ 1% at AFHQ size)."""

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aid_jax
from aid_jax import backbones, masks, sampling
from aid_jax.aid import model, networks

ROOT = pathlib.Path(__file__).parent.parent


def tiny_backbone():
    """A random-weight SongUNet, 8×8×1 (the pretraining smoke network)."""
    sys.path.insert(0, str(ROOT))
    from aid_jax import pretrain
    from configs import pretrain_fashion_mnist

    net = pretrain.backbone_config(pretrain_fashion_mnist.get_config("smoke"))
    return backbones.init_params(jax.random.key(3), net), net


@pytest.fixture(scope="module")
def bundle():
    bparams, net = tiny_backbone()
    cfg = model.AIDConfig(image_shape=(8, 8, 1), num_steps=4, actor_channels=(4, 4))
    actor = model.init_actor(jax.random.key(1), cfg)
    # Make the actor non-zero (its last conv starts at zero) so the guidance matters.
    actor = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape), actor
    )
    return model.AIDParams(bparams, actor, net, cfg, "test")


@pytest.fixture(scope="module")
def data():
    x = np.asarray(jax.random.uniform(jax.random.key(7), (3, 8, 8, 1), minval=-1, maxval=1))
    m = masks.make_masks("center_box", 3, 8, seed=0, fraction=0.5)
    return x.astype(np.float32), m


def _zero_actor(p):
    return model.AIDParams(
        p.backbone, jax.tree.map(jnp.zeros_like, p.actor), p.backbone_config, p.config
    )


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_zero_guidance_is_the_edm_sampler(bundle, data, solver):
    x, m = data
    p = _zero_actor(bundle)
    key = jax.random.key(5)
    out = aid_jax.inpaint(p, x, m, key=key, solver=solver, paste_back=False)
    latents = jax.random.normal(key, x.shape, jnp.float32)
    ref = sampling.sample(
        p.denoise, latents, config=sampling.SamplerConfig(solver=solver, num_steps=4)
    )
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-5, atol=1e-5)
    assert out.nfe == ref.nfe == (4 if solver == "euler" else 7) and out.nfe_backward == 0


def test_guided_euler_matches_float64_loop(bundle, data):
    """x_{k+1} = x_k + (σ_{k+1} − σ_k)(x_k − D)/σ_k + μ_φ(σ_k, x_k, D; y, m)/K, in float64."""
    x, m = data
    key = jax.random.key(11)
    out = aid_jax.inpaint(bundle, x, m, key=key, paste_back=False, num_steps=5)
    y = jnp.asarray(m * x)
    mu = model.guidance_mean_fn(bundle.actor, bundle.config, y, jnp.asarray(m))
    sig = np.asarray(sampling.edm_sigmas(5), np.float64)
    xs = 80.0 * np.asarray(jax.random.normal(key, x.shape, jnp.float32), np.float64)
    for k in range(5):
        xk = jnp.asarray(xs, jnp.float32)
        den = np.asarray(bundle.denoise(xk, jnp.full((3,), sig[k], jnp.float32)), np.float64)
        ds_dr = jnp.float32(5 * (sig[k + 1] - sig[k]))
        g = np.asarray(mu(k, k / 5, jnp.float32(sig[k]), xk, jnp.asarray(den, jnp.float32), ds_dr))
        xs = xs + (sig[k + 1] - sig[k]) * (xs - den) / sig[k] + g.astype(np.float64) / 5
    np.testing.assert_allclose(out.x, xs, rtol=2e-4, atol=2e-4)
    # The guidance changed the result (the check above is not the unguided sampler's).
    plain = aid_jax.inpaint(_zero_actor(bundle), x, m, key=key, paste_back=False, num_steps=5)
    assert float(jnp.abs(plain.x - out.x).max()) > 1e-2


def test_churn_keeps_the_start_and_goes_through_the_registry(bundle, data):
    """EDM's churn at deployment: the same initial noise (the churn's comes from fold_in(key,
    1)), a window holding no σ_k is the deterministic result, a real one changes it; bad churn
    options are refused by aid_jax.inpaint and by the registry's "aid" method (whose NFE is
    unchanged)."""
    from aid_jax import methods

    x, m = data
    key = jax.random.key(8)
    det = aid_jax.inpaint(bundle, x, m, key=key, paste_back=False).x
    empty = aid_jax.inpaint(bundle, x, m, key=key, paste_back=False, S_churn=9.0, S_min=500.0).x
    np.testing.assert_array_equal(np.asarray(empty), np.asarray(det))
    churned = aid_jax.inpaint(bundle, x, m, key=key, paste_back=False, S_churn=9.0, S_noise=1.01).x
    assert float(jnp.abs(churned - det).max()) > 1e-2
    for bad, match in [(dict(S_churn=-1.0), "S_churn"), (dict(S_min=2.0, S_max=1.0), "S_min")]:
        with pytest.raises(ValueError, match=match):
            aid_jax.inpaint(bundle, x, m, **bad)
        with pytest.raises(ValueError, match=match):
            methods.make_inpainter("aid", checkpoint=bundle, num_steps=4, **bad)
    fn = methods.make_inpainter("aid", checkpoint=bundle, num_steps=4, S_churn=9.0, S_noise=1.01)
    assert fn.nfe == 4 and fn.options["S_churn"] == 9.0
    keys = jax.random.split(key, 3)
    via = fn(fn.params, jnp.asarray(m * x), jnp.asarray(m), keys).x
    one = [
        aid_jax.inpaint(
            bundle,
            x[i : i + 1],
            m[i : i + 1],
            key=keys[i],
            paste_back=False,
            S_churn=9.0,
            S_noise=1.01,
        ).x
        for i in range(3)
    ]
    np.testing.assert_allclose(np.asarray(via), np.concatenate(one), rtol=1e-4, atol=1e-4)


def test_paste_back_keeps_known_pixels(bundle, data):
    x, m = data
    raw = aid_jax.inpaint(bundle, x, m, paste_back=False).x
    out = aid_jax.inpaint(bundle, x, m).x
    np.testing.assert_array_equal(np.asarray(out)[m == 1], x[m == 1])
    np.testing.assert_array_equal(np.asarray(out)[m == 0], np.asarray(raw)[m == 0])
    # Hole values of x are never read.
    x_nan = np.where(m == 1, x, np.nan).astype(np.float32)
    np.testing.assert_array_equal(aid_jax.inpaint(bundle, x_nan, m).x, out)


def test_jit_compiles_once_and_matches_eager(bundle, data):
    x, m = data
    traces = []

    def fn(p, x, m, key):
        traces.append(1)
        return aid_jax.inpaint(p, x, m, key=key, solver="heun", num_steps=3).x

    jitted = jax.jit(fn)
    a = jitted(bundle, x, m, jax.random.key(0))
    b = jitted(bundle, x * 0.5, m, jax.random.key(1))
    assert len(traces) == 1 and not np.allclose(a, b)
    eager = aid_jax.inpaint(bundle, x, m, key=jax.random.key(0), solver="heun", num_steps=3).x
    np.testing.assert_allclose(a, eager, rtol=1e-4, atol=2e-4)  # XLA fusion order
    # Eager calls run one cached program: a second call with new values compiles nothing.
    compiled = model._sample._cache_size()
    aid_jax.inpaint(bundle, x * 0.5, m, key=jax.random.key(4), solver="heun", num_steps=3)
    assert model._sample._cache_size() == compiled


def test_same_key_same_result_and_keys_differ(bundle, data):
    x, m = data
    a = aid_jax.inpaint(bundle, x, m, key=jax.random.key(2)).x
    b = aid_jax.inpaint(bundle, x, m, key=jax.random.key(2)).x
    c = aid_jax.inpaint(bundle, x, m, key=jax.random.key(3)).x
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_inputs_are_refused_with_a_message(bundle, data):
    x, m = data
    cases = [
        (x[0], m, "NHWC"),
        (np.zeros((3, 16, 16, 1), np.float32), m, "shape"),
        (x, m[:, :4], "mask"),
        (x, m * 0.5 + 0.25, "binary"),
        (x, np.ones_like(m), "no hole"),
        (x, np.zeros_like(m), "no observed"),
        (x * 3.0, m, r"\[-1, 1\]"),
        (np.where(m == 1, np.nan, x).astype(np.float32), m, "NaN"),
    ]
    for xi, mi, msg in cases:
        with pytest.raises(ValueError, match=msg):
            aid_jax.inpaint(bundle, xi, mi)
    with pytest.raises(ValueError, match="solver"):
        aid_jax.inpaint(bundle, x, m, solver="rk4")
    with pytest.raises(ValueError, match="num_steps"):
        aid_jax.inpaint(bundle, x, m, num_steps=0)
    # Images of another shape than the module was trained for.
    x3 = np.repeat(x, 3, axis=-1)
    with pytest.raises(ValueError, match="shape"):
        aid_jax.inpaint(bundle, x3, m)
    with pytest.raises(ValueError, match="AIDParams"):
        aid_jax.inpaint({"actor": bundle.actor}, x, m)


def test_params_of_another_backbone_or_config_are_refused(bundle, data):
    x, m = data
    other = model.AIDConfig(image_shape=(16, 16, 1), num_steps=4, actor_channels=(4, 4))
    p = model.AIDParams(bundle.backbone, bundle.actor, bundle.backbone_config, other)
    with pytest.raises(model.AIDError, match="trained for images"):
        aid_jax.inpaint(p, x, m)
    wider = model.AIDConfig(image_shape=(8, 8, 1), num_steps=4, actor_channels=(8, 8))
    p = model.AIDParams(bundle.backbone, bundle.actor, bundle.backbone_config, wider)
    with pytest.raises(model.AIDError, match="do not match"):
        aid_jax.inpaint(p, x, m)


def test_config_round_trip_and_validation():
    cfg = model.AIDConfig(image_shape=(32, 32, 1), actor_channels=[8, 16], lam=0.1)
    assert model.AIDConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(model.AIDConfig.from_dict(cfg.to_dict()))
    assert cfg.policy_std == pytest.approx(np.sqrt(2 * 0.1 / 0.1))
    with pytest.raises(model.AIDError, match="divide"):
        model.AIDConfig(image_shape=(30, 30, 1), actor_channels=(8, 8, 8))
    with pytest.raises(model.AIDError, match="lam"):
        model.AIDConfig(image_shape=(32, 32, 1), lam=0.0)
    with pytest.raises(model.AIDError, match="unknown"):
        model.AIDConfig.from_dict({"image_shape": [8, 8, 1], "bogus": 1})


# aid_config.json as written before the schedule was nested (flat sigma_min/sigma_max/rho).
FLAT_AID_CONFIG = (
    '{"image_shape": [32, 32, 1], "num_steps": 6, "sigma_min": 0.002, "sigma_max": 20.0, '
    '"rho": 7.0, "sigma_data": 0.5, "lam": 0.01, "beta": 0.1, "hole_weight": 1.0, '
    '"actor_channels": [8, 8, 8], "actor_emb_dim": 16, "critic_channels": [8, 16, 32], '
    '"critic_hidden": 32, "critic_emb_dim": 16, "critic_x0": false, "output": "denoiser_step", '
    '"base": "none"}'
)


def test_config_schedule_nested_and_old_flat_files_load():
    schedule = sampling.EDMSchedule(sigma_max=20.0)
    cfg = model.AIDConfig(image_shape=(32, 32, 1), num_steps=6, schedule=schedule)
    cfg = dataclasses.replace(cfg, output="denoiser_step")
    # An old flat file loads into the same config (and the same jit cache entry: equal hash).
    old = model.AIDConfig.from_dict(json.loads(FLAT_AID_CONFIG))
    assert old == cfg and hash(old) == hash(cfg)
    # New files nest the schedule, and read back.
    d = cfg.to_dict()
    assert d["schedule"] == {"sigma_min": 0.002, "sigma_max": 20.0, "rho": 7.0}
    assert not {"sigma_min", "sigma_max", "rho"} & set(d)
    assert model.AIDConfig.from_dict(json.loads(json.dumps(d))) == cfg
    # The flat names stay readable and constructible (ml-collections configs use them).
    assert (cfg.sigma_min, cfg.sigma_max, cfg.rho) == (0.002, 20.0, 7.0)
    flat = model.AIDConfig(image_shape=(32, 32, 1), num_steps=6, sigma_max=20.0)
    assert flat.schedule == schedule
    np.testing.assert_array_equal(np.asarray(cfg.sigmas(4)), np.asarray(schedule.sigmas(4)))
    np.testing.assert_array_equal(
        np.asarray(cfg.sigmas()), np.asarray(sampling.edm_sigmas(6, 0.002, 20.0, 7.0))
    )
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        model.AIDConfig(image_shape=(32, 32, 1), sigma_min=30.0, sigma_max=20.0)
    with pytest.raises(ValueError, match="EDMSchedule"):
        model.AIDConfig(image_shape=(32, 32, 1), schedule={"sigma_max": 20.0})


def test_config_from_the_ml_collections_config_keeps_its_flat_keys():
    sys.path.insert(0, str(ROOT))
    from configs import fashion_mnist

    c = fashion_mnist.get_config(None)
    cfg = model.AIDConfig(image_shape=(32, 32, 1), **c.aid.to_dict())
    assert cfg.schedule == sampling.EDMSchedule(c.aid.sigma_min, c.aid.sigma_max, c.aid.rho)
    assert cfg.sigma_data == c.aid.sigma_data


def test_actor_starts_at_zero_and_parameter_budget():
    cfg = model.AIDConfig(image_shape=(32, 32, 1))
    actor = model.init_actor(jax.random.key(0), cfg)
    inputs = jax.random.normal(jax.random.key(1), (2, 32, 32, 5))
    out = model.actor_module(cfg).apply({"params": actor}, inputs, jnp.ones((2,)))
    assert out.shape == (2, 32, 32, 1) and float(jnp.abs(out).max()) == 0.0
    # Embedded default: the shipped 1,029,905-parameter backbone.
    assert networks.param_count(actor) / 1_029_905 <= 0.01
    # AFHQv2/FFHQ-64 DDPM++ (61,805,571 parameters; docs/BENCHMARKS.md): ≤ 1% (issue 5, item 6).
    sys.path.insert(0, str(ROOT))
    from configs import afhq

    c = afhq.get_config()
    big = model.AIDConfig(image_shape=(64, 64, 3), **c.aid.to_dict())
    n = networks.param_count(jax.eval_shape(lambda: model.init_actor(jax.random.key(0), big)))
    assert n / 61_805_571 <= 0.01


def test_denoiser_rate_is_the_schedules_log_derivative():
    """c(σ) = −(dσ/dr)/σ on σ(r) = (a + r(b − a))^ρ, by central differences in float64."""
    cfg = model.AIDConfig(image_shape=(8, 8, 1), actor_channels=(4, 4))
    a, b, rho = 80.0 ** (1 / 7), 0.002 ** (1 / 7), 7.0

    def sigma(r):
        return (a + r * (b - a)) ** rho

    for r in (0.0, 0.3, 0.77, 1.0):
        h = 1e-6
        dsdr = (sigma(r + h) - sigma(r - h)) / (2 * h)
        want = -dsdr / sigma(r)
        got = float(model.denoiser_rate(cfg, jnp.float32(sigma(r))))
        assert got == pytest.approx(want, rel=1e-5)
    # The 'drift' output leaves the network's output as it is.
    x = jnp.zeros((1, 8, 8, 1))
    actor = jax.tree.map(lambda p: p + 0.1, model.init_actor(jax.random.key(0), cfg))
    drift = model.AIDConfig(image_shape=(8, 8, 1), actor_channels=(4, 4), output="drift")
    step = model.AIDConfig(image_shape=(8, 8, 1), actor_channels=(4, 4), output="denoiser_step")
    args = (0, 0.0, 2.0, x, x, -3.0)  # σ = 2, dσ/dr = −3
    mu_d = model.guidance_mean_fn(actor, cfg, x, jnp.ones_like(x))(*args)
    mu_s = model.guidance_mean_fn(actor, step, x, jnp.ones_like(x))(*args)
    mu_n = model.guidance_mean_fn(actor, drift, x, jnp.ones_like(x))(*args)
    assert float(jnp.abs(mu_n).max()) > 1e-3
    np.testing.assert_allclose(mu_d, model.denoiser_rate(cfg, 2.0) * mu_n, rtol=1e-6)
    np.testing.assert_allclose(mu_s, 1.5 * mu_n, rtol=1e-6)  # −(dσ/dr)/σ = 3/2
    with pytest.raises(model.AIDError, match="output"):
        model.AIDConfig(image_shape=(8, 8, 1), output="score")
    # output_scale='sigma' multiplies the network's output by σ/σ_data before the rate.
    scaled = model.AIDConfig(image_shape=(8, 8, 1), actor_channels=(4, 4), output_scale="sigma")
    mu_sc = model.guidance_mean_fn(actor, scaled, x, jnp.ones_like(x))(*args)
    np.testing.assert_allclose(mu_sc, (2.0 / 0.5) * mu_d, rtol=1e-6)
    with pytest.raises(model.AIDError, match="output_scale"):
        model.AIDConfig(image_shape=(8, 8, 1), output_scale="cost")
    # control_sigma_min gates the network's output by σ.
    gated = model.AIDConfig(image_shape=(8, 8, 1), actor_channels=(4, 4), control_sigma_min=2.5)
    mu_off = model.guidance_mean_fn(actor, gated, x, jnp.ones_like(x))(*args)  # σ = 2 < 2.5
    assert float(jnp.abs(mu_off).max()) == 0.0
    mu_on = model.guidance_mean_fn(actor, gated, x, jnp.ones_like(x))(0, 0.0, 3.0, x, x, -3.0)
    ungated = model.guidance_mean_fn(actor, cfg, x, jnp.ones_like(x))(0, 0.0, 3.0, x, x, -3.0)
    np.testing.assert_allclose(mu_on, ungated, rtol=1e-6)
    with pytest.raises(model.AIDError, match="control_sigma_min"):
        model.AIDConfig(image_shape=(8, 8, 1), control_sigma_min=-1.0)


@pytest.mark.parametrize("output", ["denoiser_step", "denoiser", "drift"])
def test_projection_base_starts_at_the_projection_sampler(bundle, data, output):
    """``base='projection'`` with a zero network, in float64: x_{k+1} = x_k + (σ_{k+1} − σ_k)
    (x_k − D)/σ_k + rate·m⊙(y − D)/K. With ``denoiser_step`` the rate is the step's own,
    K(σ_k − σ_{k+1})/σ_k, which is the projection sampler (D replaced by m⊙y + (1 − m)⊙D) and
    lands on y at the known pixels; otherwise it is c(σ) = ρ(a − b)σ^{−1/ρ}."""
    x, m = data
    cfg = model.AIDConfig(
        image_shape=(8, 8, 1), num_steps=4, actor_channels=(4, 4), base="projection", output=output
    )
    p = model.AIDParams(
        bundle.backbone,
        jax.tree.map(jnp.zeros_like, bundle.actor),
        bundle.backbone_config,
        cfg,
    )
    key = jax.random.key(2)
    out = aid_jax.inpaint(p, x, m, key=key, paste_back=False, num_steps=6)
    sig = np.asarray(sampling.edm_sigmas(6), np.float64)
    y = m * x.astype(np.float64)
    xs = 80.0 * np.asarray(jax.random.normal(key, x.shape, jnp.float32), np.float64)
    for k in range(6):
        xk = jnp.asarray(xs, jnp.float32)
        den = np.asarray(bundle.denoise(xk, jnp.full((3,), sig[k], jnp.float32)), np.float64)
        if output == "denoiser_step":
            rate = 6 * (sig[k] - sig[k + 1]) / sig[k]
        else:
            a, b = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
            rate = 7.0 * (a - b) * sig[k] ** (-1 / 7)
        xs = xs + (sig[k + 1] - sig[k]) * (xs - den) / sig[k] + rate * m * (y - den) / 6
    np.testing.assert_allclose(out.x, xs, rtol=2e-4, atol=2e-4)
    if output == "denoiser_step":
        np.testing.assert_allclose(np.asarray(out.x)[m == 1], x[m == 1], atol=1e-5)
    plain = aid_jax.inpaint(_zero_actor(bundle), x, m, key=key, paste_back=False, num_steps=6)
    assert float(np.abs((np.asarray(plain.x) - x) * m).max()) > 0.1
    with pytest.raises(model.AIDError, match="base"):
        model.AIDConfig(image_shape=(8, 8, 1), base="ddnm")
