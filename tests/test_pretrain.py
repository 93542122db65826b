"""EDM training: the loss on hand-computable cases, export -> load_backbone, resume from a saved
step folder. Resume, config mismatch, sharded == single device and no retracing:
tests/test_train_loop.py."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import losses, pretrain
from aid_jax.backbones import load_backbone

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config():
    sys.path.insert(0, str(ROOT))
    from configs import pretrain_fashion_mnist

    return pretrain_fashion_mnist.get_config("smoke")


def test_edm_loss_hand_computed():
    y = jnp.array([0.5, -1.0, 0.25, 0.0], jnp.float32).reshape(1, 2, 2, 1)
    # P_std = 0 makes σ = exp(P_mean) exactly; λ(σ) = (σ² + σd²)/(σ σd)².
    sigma = np.exp(-1.2)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    zero = lambda x, s: jnp.zeros_like(x)  # noqa: E731
    loss, metrics = losses.edm_loss(zero, y, jax.random.key(0), P_mean=-1.2, P_std=0.0)
    np.testing.assert_allclose(loss, lam * np.mean(np.square(np.asarray(y))), rtol=1e-6)
    # A denoiser off by a constant c everywhere costs exactly λ c², whatever the noise.
    off = lambda x, s: jnp.broadcast_to(y + 0.1, x.shape)  # noqa: E731
    loss, _ = losses.edm_loss(off, y, jax.random.key(1), P_mean=-1.2, P_std=0.0)
    np.testing.assert_allclose(loss, lam * 0.01, rtol=1e-5)
    assert set(metrics) >= {"loss", "loss_sigma_low", "loss_sigma_mid", "loss_sigma_high"}
    # σ in the 'mid' band here (0.30): the other bands are empty and report 0.
    assert float(metrics["loss_sigma_mid"]) == pytest.approx(float(metrics["loss"]), rel=1e-6)
    assert float(metrics["loss_sigma_low"]) == 0.0


def test_edm_loss_sigma_distribution():
    """ln σ ~ N(P_mean, P_std²): recover the mean and std from the λ-weighted loss of D = 0."""
    y = jnp.ones((4096, 1, 1, 1), jnp.float32)
    seen = []

    def spy(x, s):
        seen.append(s)
        return jnp.zeros_like(x)

    losses.edm_loss(spy, y, jax.random.key(2), P_mean=-1.2, P_std=1.2)
    log_sigma = np.log(np.asarray(seen[0]))
    assert abs(log_sigma.mean() + 1.2) < 0.06 and abs(log_sigma.std() - 1.2) < 0.05


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_export_loads_as_backbone(tmp_path):
    config = smoke_config()
    config.train.num_steps = 2
    result = pretrain.train_and_evaluate(config, str(tmp_path / "run"))
    out = pretrain.export_backbone(config, str(tmp_path / "run"), str(tmp_path / "ported"))
    backbone = load_backbone(out)
    assert backbone.manifest["training"]["steps"] == 2
    assert _leaves_equal(backbone.params, result["state"]["ema"])
    table = (tmp_path / "run" / "parameters.txt").read_text()  # clu's parameter table
    assert f"Total: {backbone.manifest['num_params']:,}" in table
    d = backbone.denoise(np.zeros((2, 8, 8, 1), np.float32), jnp.ones(2))
    assert d.shape == (2, 8, 8, 1) and bool(jnp.isfinite(d).all())


def test_resume_from_a_saved_step_folder(tmp_path):
    """A fresh workdir seeded from a committed step folder continues that run exactly."""
    config = smoke_config()
    config.train.num_steps = 2
    pretrain.train_and_evaluate(config, str(tmp_path / "first"))
    shipped = tmp_path / "train_state"
    import shutil

    shutil.copytree(tmp_path / "first" / "checkpoints" / "2", shipped / "2")
    config.train.num_steps = 4
    config.train.resume_from = str(shipped)
    seeded = pretrain.train_and_evaluate(config, str(tmp_path / "second"))
    config.train.resume_from = ""
    straight = pretrain.train_and_evaluate(config, str(tmp_path / "straight"))
    assert seeded["step"] == 4
    assert _leaves_equal(seeded["state"]["params"], straight["state"]["params"])
    config.train.resume_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="resume_from"):
        pretrain.train_and_evaluate(config, str(tmp_path / "third"))
