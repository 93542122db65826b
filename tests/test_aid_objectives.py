"""AID's terminal objectives and σ-dependent running cost (issue 16, point 1): hand-computed costs,
the per-step policy noise of the rollout, the config's checks, and a smoke training step with the
observed-pixel objective and β_k = β/σ_k²."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.aid import control, losses, model, train
from tests.test_aid_train import smoke_config


def test_running_cost_per_step_beta_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4, 4, 1)).astype(np.float32)
    beta = np.array([0.5, 2.0, 8.0], np.float32)
    got = np.asarray(losses.running_cost(jnp.asarray(a), jnp.asarray(beta), batch_axes=2))
    want = 0.5 * beta[:, None] * (a.astype(np.float64) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="per-step beta"):
        losses.running_cost(jnp.asarray(a[0]), jnp.asarray(beta))


def test_observed_cost_by_hand():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    y = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    m = (rng.uniform(size=(2, 4, 4, 1)) < 0.5).astype(np.float32)
    got = np.asarray(losses.observed_cost(x, y, m))
    want = ((m * (x - y)).astype(np.float64) ** 2).sum(axis=(1, 2, 3)) / (4 * 4 * 3)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    y_hole = np.where(m > 0, y, 123.0).astype(np.float32)  # the hole of y is never read
    np.testing.assert_allclose(losses.observed_cost(x, y_hole, m), got, rtol=1e-6)


def test_config_betas_and_policy_stds():
    cfg = model.AIDConfig(image_shape=(8, 8, 1), num_steps=4, lam=0.01, beta=0.1)
    np.testing.assert_allclose(cfg.betas(), 0.1)
    np.testing.assert_allclose(cfg.policy_stds(), cfg.policy_std, rtol=1e-6)
    inv = model.AIDConfig(image_shape=(8, 8, 1), num_steps=4, beta_weighting="inv_sigma2")
    sig = np.asarray(inv.sigmas(), np.float64)[:-1]
    np.testing.assert_allclose(inv.betas(), inv.beta / sig**2, rtol=1e-5)
    np.testing.assert_allclose(
        inv.policy_stds(), np.sqrt(2 * inv.lam * sig**2 / inv.beta), rtol=1e-5
    )
    for bad, match in [
        (dict(beta_weighting="kl"), "beta_weighting"),
        (dict(psi_mse=0.0), "positive sum"),
        (dict(psi_observed=-1.0), ">= 0 with a positive sum"),
    ]:
        with pytest.raises(model.AIDError, match=match):
            model.AIDConfig(image_shape=(8, 8, 1), **bad)
    # Saved configs round-trip with the new fields; old ones load with the defaults.
    d = inv.to_dict()
    assert model.AIDConfig.from_dict(d) == inv
    old = {k: v for k, v in d.items() if k not in ("psi_mse", "psi_observed", "beta_weighting")}
    assert model.AIDConfig.from_dict(old).beta_weighting == "uniform"


def test_rollout_noise_per_step():
    sig = jnp.asarray([4.0, 2.0, 1.0, 0.0])
    stds = jnp.asarray([3.0, 0.5, 0.01])
    x_init = 4.0 * jax.random.normal(jax.random.key(0), (4, 4, 4, 1))

    def denoise(x, s):
        return 0.1 * x

    def zero(k, r, sigma, x, d, ds):
        return jnp.zeros_like(x)

    ro = control.rollout(
        denoise, zero, x_init, sig, jax.random.key(1), policy_std=stds, per_step=True
    )
    np.testing.assert_allclose(
        np.asarray(ro.actions),
        np.asarray(stds)[:, None, None, None, None] * np.asarray(ro.eps),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="per_step policy_std"):
        control.rollout(
            denoise, zero, x_init, sig, jax.random.key(1), policy_std=stds[:2], per_step=True
        )


def test_training_with_the_observed_objective_and_inv_sigma2(tmp_path):
    import json

    config = smoke_config()
    config.aid.update(psi_mse=0.0, psi_observed=1.0, beta_weighting="inv_sigma2")
    config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, critic_warmup=5)
    train.train(config, str(tmp_path / "obs"))
    lines = (tmp_path / "obs" / "metrics.jsonl").read_text().splitlines()
    (m,) = [json.loads(line) for line in lines if "terminal_loss" in line]
    assert np.isfinite(m["terminal_loss"]) and m["guidance_rms"] == 0.0  # actor still at zero
    # With μ = 0 every step's expected running cost is (β_k/2)·s_k² = λ whatever β_k is, so the
    # realised sum over the K steps (Δr = 1/K each) is λ up to sampling noise.
    assert m["running_cost"] == pytest.approx(config.aid.lam, rel=0.15)


# ---------------------------------------------------------------------------------------------
# Issue 16: the teacher term, the residual running cost (warm start at the projection sampler)


def _gaussian_denoise(x, sigma):
    """The exact denoiser of N(0, 0.25 I) data: D = x·σ_d²/(σ² + σ_d²)."""
    s = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1, 1, 1))
    return x * 0.25 / (s**2 + 0.25)


def _batch(b=3, hw=8):
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, size=(b, hw, hw, 1)).astype(np.float32)
    mask = np.ones((b, hw, hw, 1), np.float32)
    mask[:, 2:6, 2:6] = 0.0
    return jnp.asarray(x0), jnp.asarray(mask)


def test_teacher_starts_where_the_method_starts():
    from aid_jax import sampling
    from aid_jax.aid import teacher as teacher_lib

    x0, mask = _batch()
    t = teacher_lib.make_teacher(
        dict(method="unguided", num_steps=4, options=dict(solver="euler")), sampling.EDMSchedule()
    )
    keys = jax.random.split(jax.random.key(7), 3)
    starts = t.starts(keys, x0.shape[1:])
    out = t(_gaussian_denoise, mask * x0, mask, keys)
    # The unguided Euler sampler from those starts is the teacher's output, row by row.
    sigmas = sampling.EDMSchedule().sigmas(4)
    want = control.controlled_sample(_gaussian_denoise, None, starts, sigmas).x
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert float(jnp.std(starts)) == pytest.approx(80.0, rel=0.1)
    # Rows do not depend on the batch they sit in.
    np.testing.assert_array_equal(
        np.asarray(t(_gaussian_denoise, (mask * x0)[1:], mask[1:], keys[1:])), np.asarray(out[1:])
    )
    assert (t.nfe, t.nfe_backward) == (4, 0)


def test_projection_start_is_ddnm_eta0_and_costs_nothing_with_residual_charge():
    """base='projection' with a zero network and output='denoiser_step' is DDNM with η = 0, step
    for step; with charge='residual' its rollout's running cost is the policy noise's alone."""
    from aid_jax.aid import teacher as teacher_lib

    x0, mask = _batch()
    y = mask * x0
    cfg = model.AIDConfig(
        image_shape=(8, 8, 1),
        num_steps=5,
        base="projection",
        output="denoiser_step",
        charge="residual",
        psi_mse=0.0,
        psi_teacher=1.0,
    )
    t = teacher_lib.make_teacher(
        dict(method="ddnm", num_steps=5, options=dict(eta=0.0)), cfg.schedule
    )
    keys = jax.random.split(jax.random.key(2), 3)
    starts = t.starts(keys, (8, 8, 1))
    actor = jax.tree.map(jnp.zeros_like, model.init_actor(jax.random.key(0), cfg))
    mu = model.guidance_mean_fn(actor, cfg, y, mask)
    ours = control.controlled_sample(_gaussian_denoise, mu, starts, cfg.sigmas()).x
    ddnm = t(_gaussian_denoise, y, mask, keys)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ddnm), atol=2e-5)

    ref = model.reference_fn(cfg, y, mask)
    ro = control.rollout(
        _gaussian_denoise,
        mu,
        starts,
        cfg.sigmas(),
        jax.random.key(4),
        policy_std=cfg.policy_std,
        reference=ref,
    )
    np.testing.assert_allclose(
        np.asarray(ro.charged), cfg.policy_std * np.asarray(ro.eps), rtol=1e-5, atol=1e-6
    )
    total = dataclasses_replace_refs(ro)
    residual_cost = np.asarray(losses.step_costs(ro, cfg.beta))
    total_cost = np.asarray(losses.step_costs(total, cfg.beta))
    want = 0.5 * cfg.beta * (cfg.policy_std * np.asarray(ro.eps)) ** 2
    np.testing.assert_allclose(residual_cost, want.mean(axis=(2, 3, 4)) / cfg.num_steps, rtol=1e-4)
    assert np.all(total_cost.sum(0) > residual_cost.sum(0))  # the projection is charged there


def dataclasses_replace_refs(ro):
    import dataclasses

    return dataclasses.replace(ro, references=None)


def test_teacher_config_errors():
    from aid_jax import sampling
    from aid_jax.aid import teacher as teacher_lib

    sched = sampling.EDMSchedule()
    assert teacher_lib.make_teacher(dict(method=""), sched) is None
    for spec, match in [
        (dict(method="nope", num_steps=5), "train.teacher.method='nope'"),
        (dict(method="aid", num_steps=5), "zero-shot"),
        (dict(method="pigdm", num_steps=5, options=dict(w=-1.0)), "w"),
        (dict(method="ddnm", num_steps=5, options=dict(sigma_max=40.0)), "same X_0"),
        (dict(method="ddnm", steps=5), "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            teacher_lib.make_teacher(spec, sched)
    with pytest.raises(model.AIDError, match="charge"):
        model.AIDConfig(image_shape=(8, 8, 1), charge="all")
    with pytest.raises(model.AIDError, match="lpips_target"):
        model.AIDConfig(image_shape=(8, 8, 1), psi_lpips=1.0, lpips_target="y")
    config = smoke_config()
    cfg = train.aid_config(config, (16, 16, 3))
    config.train.teacher.method = "ddnm"
    with pytest.raises(ValueError, match="nothing uses it"):
        train.make_teacher(config, cfg)
    config.train.teacher.method = ""
    with pytest.raises(ValueError, match="needs a teacher"):
        train.make_teacher(config, cfg.__class__(**{**cfg.__dict__, "psi_teacher": 1.0}))


def test_training_with_a_teacher_and_residual_charge(tmp_path):
    import json

    config = smoke_config()
    config.aid.update(
        psi_mse=0.0,
        psi_observed=1.0,
        psi_teacher=1.0,
        critic_teacher=True,
        base="projection",
        output="denoiser_step",
        charge="residual",
    )
    config.train.teacher.update(method="ddnm", num_steps=3)
    config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, critic_warmup=5)
    train.train(config, str(tmp_path / "teacher"))
    lines = (tmp_path / "teacher" / "metrics.jsonl").read_text().splitlines()
    (m,) = [json.loads(line) for line in lines if "terminal_loss" in line]
    # The actor is still zero: the rollout is DDNM (η = 0, the teacher) plus policy noise, so the
    # terminal is near the teacher's output and the running cost is λ (the noise's) alone.
    assert m["guidance_rms"] > 0  # μ includes the projection
    assert m["running_cost"] == pytest.approx(config.aid.lam, rel=0.15)
    assert np.isfinite(m["teacher_mse_hole"]) and m["terminal_teacher_mse"] < 0.1
    # The best validated actor (the zero network of the start competes) is kept as an export.
    best = json.loads((tmp_path / "teacher" / "best" / "best.json").read_text())
    assert best["select"] == "val_mse_hole" and best["step"] in (0, 2)
    init = [json.loads(s) for s in lines if "val_mse_hole_init" in s][-1]["val_mse_hole_init"]
    assert best["value"] <= init
    from aid_jax.aid import api

    params = api.load(tmp_path / "teacher" / "best")
    assert params.config.charge == "residual" and params.config.psi_teacher == 1.0
    # The export carries how it was trained itself (no reading of the run's config.json).
    manifest = json.loads((tmp_path / "teacher" / "best" / "aid_config.json").read_text())
    assert manifest["training"]["train"]["teacher"]["method"] == "ddnm"
    assert manifest["data"] == config.data.to_dict()


def test_every_recipe_builds_a_valid_problem():
    """configs/aid_recipes.py: each objective and modifier gives an AIDConfig and teacher the
    trainer accepts (checked before anything compiles); unknown words are refused."""
    import sys

    sys.path.insert(0, ".")
    from configs import aid_recipes

    for arg in ["mse", "observed", "teacher", "lpips", "teacher+big+k5", "lpips+huge+long"]:
        config = aid_recipes.get_config(arg)
        cfg = train.aid_config(config, (32, 32, 1))
        teacher = train.make_teacher(config, cfg)
        assert (teacher is not None) == (arg.split("+")[0] == "teacher")
        assert config.methods.aid.options.checkpoint.endswith("/best")
    assert aid_recipes.get_config("teacher+k5").aid.num_steps == 5
    for bad in ["mean", "teacher+fast"]:
        with pytest.raises(ValueError, match="aid_recipes"):
            aid_recipes.get_config(bad)


def test_the_main_job_runs_the_best_recipe():
    """configs/fashion_mnist.py trains configs/aid_recipes.py:lpips+backprop (its objective, warm
    start and estimator; fewer steps) and evaluates the shipped module next to it."""
    import sys

    sys.path.insert(0, ".")
    from configs import aid_recipes, fashion_mnist

    main, recipe = fashion_mnist.get_config(None), aid_recipes.get_config("lpips+backprop")
    assert main.aid.to_dict() == recipe.aid.to_dict()
    for key in ("actor", "batch_size", "antithetic", "critic_warmup", "masks"):
        assert main.train[key] == recipe.train[key], key
    assert main.optim.to_dict() == recipe.optim.to_dict()
    assert main.methods.aid_shipped.options.checkpoint == "ported_weights/aid_fashion_mnist"
    assert "aid_shipped" in main.eval.methods.split(",")
    assert fashion_mnist.trainer_defaults(None).train.actor == "pathwise"
