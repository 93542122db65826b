"""AID's backprop actor (train.actor='backprop', a diagnostic of issue 16): the loss of the
deterministic controlled sampler against a float64 NumPy loop, its gradient against central
differences of that loop, and a smoke training run that moves the actor."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import sampling
from aid_jax.aid import losses, train
from tests.test_aid_train import smoke_config

SD = 0.5  # σ_data of the toy Gaussian world


def _numpy_loss(theta, x_init, sigmas, target, beta, ref_scale):
    """Float64 reference: Euler on the step clock with μ_k = θ_k + 0.1·D_k, D(x; σ) =
    σ_d²/(σ² + σ_d²)·x (the exact denoiser of N(0, σ_d² I)), reference drift ref_scale·D_k."""
    x = np.asarray(x_init, np.float64)
    k_steps = len(sigmas) - 1
    cost = np.zeros(x.shape[0])
    for k in range(k_steps):
        s, s_next = sigmas[k], sigmas[k + 1]
        d = SD**2 / (s**2 + SD**2) * x
        mu = theta[k] + 0.1 * d
        charged = mu - ref_scale * d
        cost += 0.5 * beta[k] * np.mean(charged**2, axis=(1, 2, 3)) / k_steps
        x = x + (k_steps * (s_next - s) * (x - d) / s + mu) / k_steps
    psi = np.mean((x - target) ** 2, axis=(1, 2, 3))
    return float(np.mean(psi + cost))


@pytest.mark.parametrize("ref_scale", [0.0, 0.3])
def test_backprop_loss_and_gradient_match_a_float64_loop(ref_scale):
    k_steps = 4
    sigmas = np.asarray(sampling.edm_sigmas(k_steps, sigma_min=0.05, sigma_max=5.0), np.float64)
    rng = np.random.default_rng(0)
    x_init = 5.0 * rng.standard_normal((3, 4, 4, 1))
    target = 0.3 * rng.standard_normal((3, 4, 4, 1))
    theta = 0.2 * rng.standard_normal((k_steps, 1, 4, 4, 1))
    beta = np.array([0.5, 1.0, 2.0, 4.0])

    def denoise(x, sigma):
        s = jnp.reshape(sigma, (-1, 1, 1, 1))
        return SD**2 / (s**2 + SD**2) * x

    def loss(th):
        def mu(k, r, sigma, x, denoised, ds_dr):
            return th[k] + 0.1 * denoised

        ref = None if ref_scale == 0.0 else (lambda k, r, s, x, d, dsdr: ref_scale * d)
        return losses.backprop_actor_loss(
            denoise,
            mu,
            jnp.asarray(x_init, jnp.float32),
            jnp.asarray(sigmas, jnp.float32),
            lambda x: jnp.mean(jnp.square(x - target), axis=(1, 2, 3)),
            beta=jnp.asarray(beta, jnp.float32),
            reference=ref,
        )

    th32 = jnp.asarray(theta, jnp.float32)
    want = _numpy_loss(theta, x_init, sigmas, target, beta, ref_scale)
    assert float(jax.jit(loss)(th32)) == pytest.approx(want, rel=1e-5)
    grad = np.asarray(jax.jit(jax.grad(loss))(th32))
    # Central differences of the float64 loop on a few coordinates (the loss is quadratic in θ,
    # so they are exact up to rounding).
    for idx in [(0, 0, 0, 0, 0), (1, 0, 2, 3, 0), (3, 0, 1, 1, 0)]:
        e = np.zeros_like(theta)
        e[idx] = 1e-4
        fd = (
            _numpy_loss(theta + e, x_init, sigmas, target, beta, ref_scale)
            - _numpy_loss(theta - e, x_init, sigmas, target, beta, ref_scale)
        ) / 2e-4
        assert grad[idx] == pytest.approx(fd, rel=2e-3, abs=1e-7)


def test_backprop_training_moves_the_actor(tmp_path):
    config = smoke_config()
    config.aid.update(base="projection", output="denoiser_step", charge="residual")
    config.train.update(
        actor="backprop", antithetic=False, num_steps=3, eval_every=3, checkpoint_every=3
    )
    config.train.critic_warmup = 0
    out = train.train(config, str(tmp_path / "bp"))
    lines = (tmp_path / "bp" / "metrics.jsonl").read_text().splitlines()
    m = [json.loads(line) for line in lines if "actor_grad_norm" in line]
    assert m and all(np.isfinite(r["actor_loss"]) and r["actor_grad_norm"] > 0 for r in m)
    leaves = jax.tree.leaves(out["state"]["actor"])
    assert any(float(jnp.max(jnp.abs(a))) > 0 for a in leaves)  # the zero-init output moved
    assert "critic_loss" not in m[0] and "critic" not in out["state"]  # no critic in this mode
    config.train.antithetic = True
    with pytest.raises(ValueError, match="antithetic=False"):
        train.train(config, str(tmp_path / "pairs"))
    config.train.update(antithetic=False, actor="backpropagation")
    with pytest.raises(ValueError, match="train.actor"):
        train.train(config, str(tmp_path / "bad"))
