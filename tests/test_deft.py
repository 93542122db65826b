"""DEFT (aid_jax.deft; docs/DEFT_DESIGN.md): the closed-form optimum of the Gaussian world against
independent float64 NumPy (identities 1–3 of §5), the combined denoiser's forms and its
initialisation, the loss against a hand computation, the σ distributions, the trainer on the
shared loop (metrics, grids, kill-and-resume bitwise, refused config, sharded == one device),
load/export, the registered method (costs, per-row keys, labels, bad inputs before compiling),
the Gaussian world's training moving toward the optimum, and the main job's smoke run."""

import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smoke_configs import run_main

from aid_jax import backbones, masks, methods, sampling, sharding, train_loop
from aid_jax.deft import api, losses, model, networks, train
from aid_jax.deft import gaussian as dg
from aid_jax.gaussian import GaussianWorld, benchmark_mask
from aid_jax.methods.contract import Resources

ROOT = pathlib.Path(__file__).parent.parent
TESTDATA = ROOT / "tests" / "testdata"


def smoke_config():
    sys.path.insert(0, str(ROOT))
    from configs import deft_fashion_mnist

    config = deft_fashion_mnist.get_config("smoke")
    config.backbone.path = str(ROOT / config.backbone.path)
    return config


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# §5: the closed-form optimum against independent float64 NumPy


@pytest.fixture(scope="module")
def world():
    return GaussianWorld.squared_exponential(4, 4, length_scale=1.5, variance=0.25, mean=0.1)


def _numpy_reference(world, mask, x, y, s):
    """DEFT_DESIGN §5's NumPy: E[x0 | x, y] and Δ* (o = m == 1, h = ~o)."""
    S, mu = world.cov, world.mean
    m = mask.reshape(-1)
    o, h = m == 1, m == 0
    i_h = np.eye(int(h.sum()))
    G = np.linalg.solve(S[o][:, o], S[o][:, h]).T
    c_h = mu[h] + G @ (y[o] - mu[o])
    C_hh = S[h][:, h] - G @ S[o][:, h]
    K = np.linalg.solve(C_hh + s**2 * i_h, C_hh)
    E = np.empty(world.dim)
    E[o] = y[o]
    E[h] = c_h + K @ (x[h] - c_h)
    D = mu + S @ np.linalg.solve(S + s**2 * np.eye(world.dim), x - mu)
    return E, E - D, D


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 80.0])
def test_optimal_correction_against_float64_numpy(world, sigma):
    mask = benchmark_mask("top_half", 4, 4).reshape(-1)
    o = mask == 1
    rng = np.random.default_rng(0)
    x0 = world.sample(rng, 1).reshape(-1)
    y = np.where(o, x0, 0.0)
    x = x0 + sigma * rng.standard_normal(world.dim)
    E, delta, D = _numpy_reference(world, mask, x, y, sigma)

    # The module's affine forms reproduce the reference.
    a_x, a_y, b = dg.conditional_mean_affine(world, mask, sigma)
    np.testing.assert_allclose(a_x @ x + a_y @ y + b, E, atol=1e-10, rtol=1e-9)
    p_x, p_y, q = dg.optimal_correction(world, mask, sigma)
    np.testing.assert_allclose(p_x @ x + p_y @ y + q, delta, atol=1e-10, rtol=1e-9)
    np.testing.assert_allclose(delta[o], (y - D)[o], atol=1e-12)  # Δ*_o = r_o exactly

    # Identity 1: conditioning on (x, y_o) jointly.
    S, mu = world.cov, world.mean
    J = np.block([[S + sigma**2 * np.eye(world.dim), S[:, o]], [S[o, :], S[np.ix_(o, o)]]])
    rhs = np.concatenate([x - mu, y[o] - mu[o]])
    E_joint = mu + np.concatenate([S, S[:, o]], axis=1) @ np.linalg.solve(J, rhs)
    np.testing.assert_allclose(E_joint, E, atol=1e-9)

    # Identity 2: Doob's h-transform, Δ* = σ² ∇_x ln p(y | x_σ = x).
    A = np.linalg.inv(S + sigma**2 * np.eye(world.dim))
    mean_y = mu[o] + S[o, :] @ A @ (x - mu)
    V = S[np.ix_(o, o)] - S[o, :] @ A @ S[:, o]
    grad = (S[o, :] @ A).T @ np.linalg.solve(V, y[o] - mean_y)
    np.testing.assert_allclose(sigma**2 * grad, delta, rtol=1e-6, atol=1e-9)

    # Identity 3: E‖D + Δ − x0‖² = σ² tr K + E‖Δ − Δ*‖² for an arbitrary affine Δ, with the
    # left side computed from (x0, n) ~ N([μ, 0], diag(Σ, I)) directly.
    d = world.dim
    P_x, P_y, c = (0.1 * rng.standard_normal(s) for s in ((d, d), (d, d), (d,)))
    A_D = S @ np.linalg.inv(S + sigma**2 * np.eye(d))
    b_D = mu - A_D @ mu
    M = np.diag(mask)
    lin = np.concatenate([(A_D + P_x) + P_y @ M - np.eye(d), sigma * (A_D + P_x)], axis=1)
    off = (A_D + P_x) @ mu + P_y @ M @ mu + b_D + c - mu
    cov_w = np.block([[S, np.zeros((d, d))], [np.zeros((d, d)), np.eye(d)]])
    lhs = np.trace(lin @ cov_w @ lin.T) + off @ off
    floor = dg.loss_floor(world, mask, sigma)
    rhs = floor + dg.correction_error(world, mask, sigma, P_x, P_y, c)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9)
    K = np.linalg.solve(np.eye(int((~o).sum())) * sigma**2 + _c_hh(world, o), _c_hh(world, o))
    np.testing.assert_allclose(floor, sigma**2 * np.trace(K), rtol=1e-9)
    zero = np.zeros((d, d))
    unguided = dg.loss_floor(world, mask, sigma) + dg.correction_error(
        world, mask, sigma, zero, zero, np.zeros(d)
    )
    np.testing.assert_allclose(unguided, dg.unguided_loss(world, sigma), rtol=1e-8)
    assert dg.gap_closed(world, mask, sigma, p_x, p_y, q) == pytest.approx(1.0, abs=1e-9)
    assert dg.gap_closed(world, mask, sigma, zero, zero, np.zeros(d)) == 0.0


def _c_hh(world, o):
    S = world.cov
    h = ~o
    return S[np.ix_(h, h)] - S[np.ix_(h, o)] @ np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, h)])


def test_linear_class_contains_the_optimum_at_its_nodes(world):
    """The evaluation path (network → affine map → closed-form gap) gives 1 at the nodes for the
    class's optimum, and the exact h-transform's sampler reaches the posterior's floor."""
    mask = benchmark_mask("top_half", 4, 4)
    for scale in model.OUTPUT_SCALES:
        cfg = model.DEFTConfig(image_shape=(4, 4, 1), output_scale=scale, channels=(1,))
        params = dg.optimal_linear_hnet(world, mask, cfg, 6)
        gaps = dg.gaps(world, mask, cfg, params, dg.nodes(cfg, 6)[1::2])
        np.testing.assert_allclose(gaps, 1.0, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# The combined denoiser, the network and the loss


def _toy(b=3, hw=8, c=2, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (b, hw, hw, c)).astype(np.float32)
    m = masks.make_masks("half", b, hw, seed=seed)
    sigma = np.array([0.05, 1.3, 40.0][:b], np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    return x0, m, sigma, noise


def _toy_denoise(x, sigma):
    s = jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1)
    return 0.25 * x / (0.25 + s**2) + 0.1 * jnp.tanh(x)


@pytest.mark.parametrize("units", model.GATE_UNITS)
@pytest.mark.parametrize("scale", model.OUTPUT_SCALES)
def test_combine_forms(units, scale):
    cfg = model.DEFTConfig(image_shape=(8, 8, 2), output_scale=scale, gate_units=units)
    x0, m, sigma, noise = _toy()
    rng = np.random.default_rng(1)
    d = rng.standard_normal(x0.shape).astype(np.float32)
    u = rng.standard_normal(x0.shape).astype(np.float32)
    g = np.array([0.3, -1.0, 2.0], np.float32)
    y = m * x0
    out = np.asarray(model.combine(cfg, d, u, g, y, m, sigma), np.float64)
    s = sigma.astype(np.float64)
    if scale == "c_out":
        s = s * 0.5 / np.sqrt(s**2 + 0.25)
    s, gg = s[:, None, None, None], g[:, None, None, None].astype(np.float64)
    r = m * (y - d)
    want = d + s * (u + gg * r) if units == "scaled" else d + s * u + gg * r
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_initialisation_is_exactly_the_backbone_and_gate_init():
    x0, m, sigma, noise = _toy()
    y = m * x0
    x = x0 + sigma[:, None, None, None] * noise
    for gate_init, units in (
        (0.0, "denoiser"),
        (0.0, "scaled"),
        (-0.01, "scaled"),
        (-0.01, "denoiser"),
    ):
        cfg = model.DEFTConfig(
            image_shape=(8, 8, 2),
            channels=(4, 4),
            emb_dim=8,
            gate_init=gate_init,
            gate_units=units,
        )
        hnet = model.init_hnet(jax.random.key(3), cfg)
        inputs = networks.actor_inputs(x, _toy_denoise(x, sigma), y, m, sigma)
        u, gamma = model.hnet_apply_fn(hnet, cfg)(inputs, sigma)
        assert not np.any(np.asarray(u))  # zero last conv: U ≡ 0
        np.testing.assert_array_equal(gamma, np.full(3, gate_init, np.float32))
        d_total = model.total_denoiser(_toy_denoise, model.hnet_apply_fn(hnet, cfg), cfg, y, m)
        got = np.asarray(d_total(x, sigma))
        den = np.asarray(_toy_denoise(x, sigma))
        r = m * (y - den)
        if gate_init == 0.0:
            np.testing.assert_array_equal(got, den)  # exactly the backbone
        elif units == "scaled":  # the official gate's start, in our sign convention
            np.testing.assert_allclose(got, den - 0.01 * sigma[:, None, None, None] * r, atol=1e-6)
        else:
            np.testing.assert_allclose(got, den - 0.01 * r, atol=1e-6)
    # Parameter budgets of the two image configs against the 1,029,905-parameter backbone.
    sys.path.insert(0, str(ROOT))
    from configs import deft_fashion_mnist

    for arg, lo, hi in (("small", 0.0, 0.01), ("", 0.045, 0.055)):
        c = deft_fashion_mnist.get_config(arg)
        cfg = model.DEFTConfig(image_shape=(32, 32, 1), **c.deft.to_dict())
        n = networks.param_count(
            jax.eval_shape(lambda cfg=cfg: model.init_hnet(jax.random.key(0), cfg))
        )
        assert lo < n / 1_029_905 <= hi, (arg, n)


@pytest.mark.parametrize("units", model.GATE_UNITS)
@pytest.mark.parametrize("scale", model.OUTPUT_SCALES)
def test_loss_equals_a_hand_computation(units, scale):
    cfg = model.DEFTConfig(
        image_shape=(8, 8, 2), channels=(4, 4), emb_dim=8, output_scale=scale, gate_units=units
    )
    x0, m, sigma, noise = _toy()
    hnet = model.init_hnet(jax.random.key(0), cfg)
    rng = np.random.default_rng(2)
    hnet = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), hnet)
    apply = model.hnet_apply_fn(hnet, cfg)
    x, den = losses.noisy_batch(_toy_denoise, x0, sigma, noise)
    per, aux = losses.deft_loss(apply, cfg, x0, x, den, m, sigma)
    # By hand: λ(σ)‖D_total − x0‖²/d in float64 from the network's (U, γ).
    u, gamma = apply(networks.actor_inputs(x, den, m * x0, m, sigma), sigma)
    u, gamma, den = (np.asarray(a, np.float64) for a in (u, gamma, den))
    s = sigma.astype(np.float64) if scale == "sigma" else sigma * 0.5 / np.sqrt(sigma**2 + 0.25)
    s4, g4 = np.asarray(s, np.float64)[:, None, None, None], gamma[:, None, None, None]
    r = m * (m * x0 - den)
    d_total = den + s4 * (u + g4 * r) if units == "scaled" else den + s4 * u + g4 * r
    want = np.mean(((d_total - x0) / s4) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(per, want, rtol=2e-4)
    np.testing.assert_allclose(aux["unguided"], np.mean(((den - x0) / s4) ** 2, (1, 2, 3)), 1e-5)

    # No gradient reaches the backbone: its parameter's derivative through the loss is 0.
    def through_backbone(a):
        def den_a(x_, s_):
            return a * _toy_denoise(x_, s_)

        xb, db = losses.noisy_batch(den_a, x0, sigma, noise)
        return jnp.mean(losses.deft_loss(apply, cfg, x0, xb, db, m, sigma)[0])

    assert float(jax.grad(through_backbone)(1.0)) == 0.0


def test_sigma_distributions_and_grids():
    vp = model.vp_sigmas()
    assert vp.shape == (1000,) and vp[0] == pytest.approx(0.0100, abs=1e-4)
    assert vp[-1] == pytest.approx(157.4, abs=0.1) and np.all(np.diff(vp) > 0)
    key = jax.random.key(0)
    cfg = model.DEFTConfig(image_shape=(8, 8, 1), num_steps=5)
    s = np.asarray(model.sample_sigmas(cfg, key, 4000))
    assert s.min() >= 0.0100 - 1e-6 and s.max() <= 80.0
    assert np.all(np.isin(s, vp.astype(np.float32)))
    s_all = np.asarray(
        model.sample_sigmas(model.DEFTConfig((8, 8, 1), sigma_clip=False), key, 4000)
    )
    assert 0.04 < np.mean(s_all > 80.0) < 0.10  # the official range: 7 % above 80
    grid = cfg.schedule.sigmas(5)[:-1]
    s_grid = model.sample_sigmas(
        model.DEFTConfig((8, 8, 1), num_steps=5, sigma_dist="sampler_grid"), key, 500
    )
    assert set(np.unique(np.asarray(s_grid))) == set(np.asarray(grid))
    s_edm = np.asarray(
        model.sample_sigmas(model.DEFTConfig((8, 8, 1), sigma_dist="edm"), key, 4000)
    )
    assert abs(np.median(np.log(s_edm)) + 1.2) < 0.1 and s_edm.min() >= 0.002
    ddim = np.asarray(model.deployment_sigmas(cfg, 100, "vp_ddim"))
    assert ddim[0] == pytest.approx(143.8, abs=0.1) and ddim[-2] == pytest.approx(0.0100, 1e-3)
    assert ddim[-1] == 0 and ddim.shape == (101,)
    np.testing.assert_array_equal(model.deployment_sigmas(cfg, 7), cfg.schedule.sigmas(7))
    with pytest.raises(model.DEFTError, match="sigma_dist"):
        model.DEFTConfig((8, 8, 1), sigma_dist="uniform")
    with pytest.raises(model.DEFTError, match="gate_units"):
        model.DEFTConfig((8, 8, 1), gate_units="eps")


# ---------------------------------------------------------------------------------------------
# The trainer on the shared loop


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train.train(smoke_config(), str(tmp_path_factory.mktemp("deft") / "full"))


def _checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


def test_training_logs_metrics_grids_and_a_manifest(full_run):
    workdir = pathlib.Path(full_run["workdir"])
    assert full_run["step"] == 4 and full_run["train_step"]._cache_size() == 1
    assert _checkpoint_steps(workdir) == [2, 4]
    table = (workdir / "parameters.txt").read_text()
    n = sum(int(np.size(a)) for a in jax.tree.leaves(full_run["state"]["hnet"]))
    assert table.startswith("## hnet") and f"Total: {n:,}" in table
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for r in train_rows:
        for k in ("loss", "loss_unguided", "gain", "u_rms", "gamma_mean", "grad_norm", "lr"):
            assert np.isfinite(r[k]), k
    val = [r for r in rows if "val_mse_hole" in r]
    assert len(val) == 2 and val[-1]["val_mse_hole_init"] > 0 and val[-1]["val_loss"] > 0
    assert (workdir / "samples" / "step_0000004.png").exists()
    manifest = json.loads((workdir / api.STATE_FILE).read_text())
    assert manifest["format"] == api.FORMAT and manifest["hnet_params"] == n
    assert manifest["deft_config"]["image_shape"] == [16, 16, 3]
    # The UNet's last conv started at zero and has moved; the EMA differs from the raw params.
    last = full_run["state"]["hnet"]["unet"]["Conv_1"]["kernel"]
    assert float(np.abs(np.asarray(last)).max()) > 0
    assert not _leaves_equal(full_run["state"]["hnet"], full_run["state"]["ema"])


def test_killed_run_resumes_bitwise(full_run, tmp_path):
    """Stopped after step 3 (Ctrl-C saves it), the step-3 checkpoint then lost as in a hard kill:
    the rerun resumes from step 2 and ends bitwise at the uninterrupted run's state."""
    config = smoke_config()
    trainer = train.make_trainer(config, sharding.make_mesh())
    on_step = trainer.on_step

    def interrupt(step, state, writer):
        on_step(step, state, writer)
        if step == 3:
            raise KeyboardInterrupt

    trainer.on_step = interrupt
    stopped = train_loop.run(trainer, tmp_path)
    assert stopped["step"] == 3 and _checkpoint_steps(tmp_path) == [2, 3]
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    resumed = train.train(config, str(tmp_path))
    assert resumed["step"] == 4
    assert _leaves_equal(resumed["state"], full_run["state"])  # h-net, Adam, EMA, step
    # Another run-defining value is refused, the workdir untouched.
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    config.deft.sigma_dist = "edm"
    with pytest.raises(train.ResumeError, match="deft"):
        train.train(config, str(tmp_path))
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_sharded_step_equals_single_device(full_run):
    config = smoke_config()
    one = train.make_trainer(config, sharding.make_mesh(jax.devices()[:1]))
    eight = train.make_trainer(config, sharding.make_mesh())
    state = one.init_state()
    single_state, single_metrics = jax.device_get(jax.jit(one.step_fn)(state, *one.inputs_at(1)))
    inputs = eight.inputs_at(1)
    assert any(
        a.sharding.num_devices == 8 and not a.sharding.is_fully_replicated
        for a in jax.tree.leaves(inputs)
    )
    out_state, out_metrics = full_run["train_step"](sharding.replicate(state, eight.mesh), *inputs)
    assert full_run["train_step"]._cache_size() == 1
    np.testing.assert_allclose(out_metrics["loss"], single_metrics["loss"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(out_state["hnet"]), jax.tree.leaves(single_state["hnet"]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_load_export_and_bad_folders(full_run, tmp_path):
    params = api.load(full_run["workdir"])
    assert _leaves_equal(params.hnet, full_run["state"]["ema"])
    out = train.export(full_run["workdir"], str(tmp_path / "export"))
    exported = api.load(out)
    assert _leaves_equal(exported.hnet, params.hnet)
    x = np.zeros((2, 16, 16, 3), np.float32)
    m = masks.make_masks("half", 2, 16, seed=1)
    a = model.inpaint(params, x, m, num_steps=2).x
    np.testing.assert_array_equal(a, model.inpaint(exported, x, m, num_steps=2).x)
    with pytest.raises(FileExistsError):
        train.export(full_run["workdir"], str(out))
    with pytest.raises(FileNotFoundError, match="no such"):
        api.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=api.STATE_FILE):
        api.load(tmp_path / "empty")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(pathlib.Path(full_run["workdir"]) / api.STATE_FILE, fresh)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        api.load(fresh)
    other = backbones.load_backbone(TESTDATA / "edm_ddpmpp_tiny.pkl")
    other = backbones.Backbone(
        params=jax.tree.map(lambda p: p * 1.01, other.params), config=other.config, manifest={}
    )
    with pytest.raises(model.DEFTError, match="params_sha256"):
        api.load(full_run["workdir"], backbone=other)


def test_export_command_writes_a_movable_folder(full_run, tmp_path, monkeypatch):
    """``python -m aid_jax.guidance_module export`` from another working directory: the
    manifest records the step, the data, the last validation metrics, the parameter counts and
    the backbone without machine paths; the folder, moved, loads to the workdir's EMA."""
    from aid_jax import guidance_module

    workdir = pathlib.Path(full_run["workdir"])
    monkeypatch.chdir(tmp_path)
    argv = ["export", "--workdir", str(workdir), "--out", "exports/deft"]
    assert guidance_module.main(argv) == 0
    out = tmp_path / "exports" / "deft"
    text = (out / api.STATE_FILE).read_text()
    manifest = json.loads(text)
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert manifest["step"] == 4
    assert manifest["validation"] == [r for r in rows if "val_loss" in r][-1]
    assert manifest["data"] == smoke_config().data.to_dict()
    n = sum(int(np.size(a)) for a in jax.tree.leaves(full_run["state"]["ema"]))
    assert manifest["hnet_params"] == n and manifest["backbone_params"] > n
    assert manifest["params_fraction"] == pytest.approx(n / manifest["backbone_params"])
    assert manifest["backbone"]["path"] == "tests/testdata/edm_ddpmpp_tiny.pkl"
    assert str(tmp_path) not in text and str(ROOT) not in text
    assert "--method deft --deft" in (out / "README.md").read_text()
    moved = tmp_path / "elsewhere" / "deft"
    moved.parent.mkdir()
    out.rename(moved)
    monkeypatch.chdir(moved.parent)
    assert _leaves_equal(api.load("deft").hnet, full_run["state"]["ema"])


# ---------------------------------------------------------------------------------------------
# The registered method


def test_registered_method_costs_and_options():
    assert "deft" in methods.REGISTRY and not methods.get("deft").zero_shot
    assert methods.method_cost("deft", checkpoint="runs/deft", num_steps=5) == (5, 0)
    assert methods.method_cost("deft", checkpoint="x", num_steps=5, solver="heun") == (9, 0)
    assert methods.method_cost("deft", checkpoint="x", num_steps=7, S_churn=10.0) == (7, 0)
    for bad, match in [
        (dict(checkpoint="", num_steps=5), "needs options.checkpoint"),
        (dict(checkpoint="x", num_steps=None), "num_steps"),
        (dict(checkpoint="x", num_steps=5, solver="rk4"), "solver"),
        (dict(checkpoint="x", num_steps=5, grid="linear"), "grid"),
        (dict(checkpoint="x", num_steps=5, S_churn=-1.0), "S_churn"),
        (dict(checkpoint="x", num_steps=5, paste_back=1), "paste_back"),
        (dict(checkpoint="x", num_steps=5, bogus=1), "unknown option"),
    ]:
        with pytest.raises(ValueError, match=match):
            methods.method_cost("deft", **bad)


@pytest.fixture(scope="module")
def bundle():
    bb = backbones.load_backbone(TESTDATA / "edm_ddpmpp_tiny.pkl")
    cfg = model.DEFTConfig(
        image_shape=bb.image_shape,
        num_steps=3,
        channels=(4, 4),
        emb_dim=8,
        gate_hidden=4,
        gate_layers=1,
    )
    hnet = model.init_hnet(jax.random.key(1), cfg)
    rng = np.random.default_rng(0)
    hnet = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype), hnet)
    return model.DEFTParams(bb.params, hnet, bb.config, cfg, bb.params_sha256)


def test_method_per_row_keys_and_the_sampler(bundle):
    fn = methods.make_inpainter("deft", checkpoint=bundle, solver="heun", resources=Resources())
    assert (fn.method, fn.nfe, fn.nfe_backward, fn.options["num_steps"]) == ("deft", 5, 0, 3)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    m = masks.make_masks("center_box", 2, 16, seed=0)
    y = (x * m).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 2)
    both = np.asarray(fn(fn.params, y, m, keys).x)
    one = np.asarray(fn(fn.params, y[1:], m[1:], keys[1:]).x)
    # A row depends on its own key only (the random tiny backbone's samples reach ~100).
    np.testing.assert_allclose(both[1:], one, atol=1e-5 * float(np.abs(one).max()))
    # One key: exactly inpaint, which is integrate with D_total.
    ref = model.inpaint(bundle, y, m, key=keys[0], solver="heun", paste_back=False).x
    np.testing.assert_array_equal(fn(fn.params, y, m, keys[0]).x, ref)
    cfg = bundle.config
    d_total = model.total_denoiser(bundle.denoise, model.hnet_apply_fn(bundle.hnet, cfg), cfg, y, m)
    k_init, _ = jax.random.split(keys[0])
    sig = cfg.schedule.sigmas(3)
    x_init = sig[0] * jax.random.normal(k_init, y.shape)
    want, _ = sampling.integrate(d_total, x_init, sig, solver="heun")
    np.testing.assert_allclose(ref, want, atol=1e-5 * float(np.abs(want).max()))
    # Churn and the official grid run, with the unguided sampler's NFE.
    churn = methods.make_inpainter(
        "deft", checkpoint=bundle, num_steps=2, S_churn=5.0, grid="vp_ddim"
    )
    out = churn(churn.params, y, m, keys)
    assert out.nfe == 2 and np.isfinite(np.asarray(out.x)).all()


def test_bad_inputs_raise_before_compiling(bundle, tmp_path, monkeypatch):
    traced = []
    monkeypatch.setattr(model, "sample", lambda *a, **k: traced.append(1))
    other_res = dict(bundle.config.to_dict(), image_shape=[8, 8, 3])
    wrong_res = model.DEFTParams(
        bundle.backbone,
        bundle.hnet,
        bundle.backbone_config,
        model.DEFTConfig.from_dict(other_res),
        "x",
    )
    with pytest.raises(ValueError, match="trained for images"):
        methods.make_inpainter("deft", checkpoint=wrong_res)
    wider = model.DEFTConfig.from_dict(dict(bundle.config.to_dict(), channels=[8, 8]))
    wrong_net = model.DEFTParams(bundle.backbone, bundle.hnet, bundle.backbone_config, wider, "x")
    with pytest.raises(ValueError, match="do not match DEFTConfig"):
        model.inpaint(wrong_net, np.zeros((1, 16, 16, 3), np.float32), np.ones((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="no such DEFT workdir"):
        methods.make_inpainter("deft", checkpoint=str(tmp_path / "missing"), num_steps=2)
    (tmp_path / "empty").mkdir()  # a folder without deft_config.json
    with pytest.raises(FileNotFoundError, match="deft_config.json"):
        methods.make_inpainter("deft", checkpoint=str(tmp_path / "empty"), num_steps=2)
    fn = methods.make_inpainter("deft", checkpoint=bundle)
    m = masks.make_masks("half", 1, 16, seed=0)
    with pytest.raises(ValueError, match="shape"):
        fn(fn.params, np.zeros((1, 8, 8, 3), np.float32), m, jax.random.key(0))
    with pytest.raises(ValueError, match="labels"):
        fn(fn.params, np.zeros((1, 16, 16, 3), np.float32), m, jax.random.key(0), labels=[1])
    assert not traced


def test_labels_reach_the_backbone_only():
    meta = json.loads((TESTDATA / "edm_adm_tiny_cond.json").read_text())
    kwargs = dict(meta["init_kwargs"], model_channels=8, channel_mult=[1], attn_resolutions=[])
    bcfg = backbones.config_from_checkpoint(meta["precond"], kwargs)
    bparams = backbones.init_params(jax.random.key(0), bcfg)
    cfg = model.DEFTConfig(image_shape=(8, 8, 3), num_steps=2, channels=(4,), emb_dim=8)
    hnet = jax.tree.map(lambda a: a + 0.01, model.init_hnet(jax.random.key(1), cfg))
    p = model.DEFTParams(bparams, hnet, bcfg, cfg, "t")
    fn = methods.make_inpainter("deft", checkpoint=p, label_dim=10)
    assert fn.label_dim == 10
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    m = masks.make_masks("center_box", 2, 8, seed=0)
    y = (x * m).astype(np.float32)
    key = jax.random.key(2)
    a = np.asarray(fn(fn.params, y, m, key, labels=[1, 7]).x)
    b = np.asarray(fn(fn.params, y, m, key, labels=[4, 2]).x)
    assert not np.allclose(a, b)
    labels = backbones.prepare_labels(np.array([1, 7]), 10, 2)

    def denoise(x_, s_):
        return p.denoise(x_, s_, labels)

    ref = model.sample(denoise, model.hnet_apply_fn(hnet, cfg), cfg, y, m, key, num_steps=2).x
    np.testing.assert_allclose(a, ref, atol=1e-5 * float(np.abs(a).max()))
    with pytest.raises(ValueError, match="labels|class"):
        fn(fn.params, y, m, key)


# ---------------------------------------------------------------------------------------------
# The Gaussian world: training approaches the optimum


def test_gaussian_training_closes_the_gap_and_moves_w2(world):
    """A small, fast version of benchmarks/deft_gaussian.py: 300 iterations of the linear
    h-network on the 4×4 world close most of the loss gap at the sampler's middle noise levels,
    and its sampler's samples move to the exact posterior (W2 and the mean's RMSE)."""
    mask = benchmark_mask("top_half", 4, 4)
    cfg = model.DEFTConfig(
        image_shape=(4, 4, 1), num_steps=8, channels=(1,), sigma_dist="sampler_grid"
    )
    tcfg = dg.GaussianTrainConfig(
        iterations=300, batch=128, lr=1e-2, num_nodes=8, checkpoints=(0, 300)
    )
    snaps, curve, _ = dg.train(world, mask, cfg, tcfg)
    assert curve[-1]["loss"] < curve[-1]["loss_unguided"]
    grid = np.asarray(cfg.schedule.sigmas(8))[1:5]
    assert dg.gaps(world, mask, cfg, snaps[0], grid) == [0.0] * 4
    assert min(dg.gaps(world, mask, cfg, snaps[300], grid)) > 0.8
    x0 = world.sample(np.random.default_rng(0), 1)[0]
    key = jax.random.key(0)
    start = dg.sampler_scores(world, mask, mask * x0, cfg, snaps[0], key, 256, 8)
    end = dg.sampler_scores(world, mask, mask * x0, cfg, snaps[300], key, 256, 8)
    exact = dg.sampler_scores(world, mask, mask * x0, cfg, None, key, 256, 8)
    assert end["w2"] < 0.5 * start["w2"] and end["rmse_mean"] < 0.2 * start["rmse_mean"]
    assert abs(end["w2"] - exact["w2"]) < 0.1  # as close as the exact h-transform's sampler


# ---------------------------------------------------------------------------------------------
# The main job


def test_main_smoke_trains_and_evaluates(tmp_path):
    """python -m aid_jax.main --config=configs/deft_fashion_mnist.py:smoke: train, evaluate."""
    workdir = tmp_path / "run"
    run_main(
        "configs/deft_fashion_mnist.py:smoke", workdir, env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    )
    rows = json.loads((workdir / "eval" / "results.json").read_text())["rows"]
    deft_rows = [r for r in rows if r["method"] == "deft"]
    assert deft_rows and all(r["nfe"] == 3 and r["nfe_backward"] == 0 for r in deft_rows)
    assert (workdir / "eval" / "results.md").exists()


@pytest.mark.parametrize(
    "name, num_params", [("deft_fashion_mnist", 51514), ("deft_fashion_mnist_small", 10234)]
)
def test_the_shipped_module_loads_from_anywhere_and_inpaints(
    tmp_path, monkeypatch, name, num_params
):
    """ported_weights/deft_fashion_mnist (5 %) and _small (≤ 1 %): the manifest's backbone
    sha256 matches the shipped backbone, it loads from another working directory, and it fills
    a hole better than the unguided start on a validation image (the h-network does something)."""
    import json

    from aid_jax.deft import api as deft_api
    from aid_jax.deft import model as deft_model

    root = pathlib.Path(__file__).resolve().parents[1]
    folder = root / "ported_weights" / name
    manifest = json.loads((folder / "deft_config.json").read_text())
    assert manifest["step"] == 5000 and manifest["hnet_params"] == num_params
    monkeypatch.chdir(tmp_path)
    params = deft_api.load(f"ported_weights/{name}")
    assert params.backbone_sha256 == manifest["backbone"]["params_sha256"]
    from aid_jax.data import pipeline, sources

    source = sources.make_source(
        dict(name="fashion_mnist_bundled", split="test", path="", pad_to=32)
    )
    x0 = pipeline.to_model_range(source.get(np.arange(4))[0])
    mask = np.ones_like(x0[..., :1])
    mask[:, 8:24, 8:24] = 0.0
    out = deft_model.inpaint(params, x0, mask, key=jax.random.key(0), num_steps=5).x
    hole = 1.0 - mask
    mse = float(np.sum((np.asarray(out) - x0) ** 2 * hole) / np.sum(hole))
    assert np.isfinite(mse) and mse < 0.3  # unguided samples score ~0.6 on such holes
