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
        (dict(psi_observed=-1.0), "psi_mse and psi_observed"),
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
