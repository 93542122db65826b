"""VAE training (aid_jax/vae_train.py): the objective against float64 NumPy, learning on tiny
data, resume, export -> load_vae with the measured whitening, and clear errors."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import sharding, train_loop, vae_train
from aid_jax.backbones import sd_vae, vae_loader
from aid_jax.data import sources

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config():
    sys.path.insert(0, str(ROOT))
    from configs import vae_fashion_mnist

    return vae_fashion_mnist.get_config("smoke")


def test_objective_matches_float64_numpy():
    config = smoke_config()
    config.loss.update(l2_weight=0.3, kl_weight=0.01)
    cfg = vae_train.vae_config(config)
    params = sd_vae.init_params(jax.random.key(0), cfg)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), jnp.float32, -1.0, 1.0)
    key = jax.random.key(2)
    loss, metrics = vae_train.make_loss(config, cfg)(params, x, key)
    # The same sample by hand: posterior moments, z = μ + σ ε with the same ε, the decoder.
    target = 0.5 * (np.asarray(x, np.float64) + 1.0)
    moments = np.asarray(sd_vae.encode_moments(params, jnp.asarray(target, jnp.float32), cfg))
    mean, logvar = np.split(moments.astype(np.float64), 2, axis=-1)
    logvar = np.clip(logvar, -30.0, 20.0)
    std = np.exp(0.5 * logvar)
    eps = np.asarray(jax.random.normal(key, mean.shape, jnp.float32), np.float64)
    z = (mean + std * eps).astype(np.float32)
    recon = np.asarray(sd_vae.decode(params, jnp.asarray(z), cfg), np.float64)
    d = 64.0
    l1 = np.abs(recon - target).sum(axis=(1, 2, 3)) / d
    l2 = np.square(recon - target).sum(axis=(1, 2, 3)) / d
    kl = 0.5 * (mean**2 + std**2 - 1.0 - logvar).sum(axis=(1, 2, 3))
    expected = np.mean(l1 + 0.3 * l2 + 0.01 * kl / d)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["kl"]), kl.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["l1"]), l1.mean(), rtol=1e-4)


def test_training_learns_resumes_and_exports(tmp_path):
    config = smoke_config()
    config.train.update(num_steps=30, checkpoint_every=10, log_every=10, sample_every=0)
    config.optim.lr = 3e-3
    mesh = sharding.make_mesh()
    cfg = vae_train.vae_config(config)
    x = train_loop.host_images(
        sources.make_source(config.eval_data),
        0,
        16,
        1,
    )
    params0 = sd_vae.init_params(jax.random.key(int(config.seed)), cfg)
    before, _ = vae_train.reconstruction_quality(params0, cfg, x)
    config.train.num_steps = 20
    out = train_loop.run(vae_train.make_trainer(config, mesh), tmp_path / "run")
    assert out["step"] == 20
    config.train.num_steps = 30  # not run-defining: the run continues from step 20
    out = train_loop.run(vae_train.make_trainer(config, mesh), tmp_path / "run")
    assert out["step"] == 30
    after, _ = vae_train.reconstruction_quality(out["state"]["params"], cfg, x)
    assert after["mse"] < 0.5 * before["mse"]
    logs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in logs if "loss" in r)

    folder = vae_train.export_vae(config, str(tmp_path / "run"), str(tmp_path / "vae"))
    vae = vae_loader.load_vae(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 30
    assert manifest["quality"]["reconstruction"]["num_images"] == 8
    assert vae.config == cfg
    # The whitening is measured on the export's training images: their posterior means become
    # final latents with per-channel mean 0 and std 0.5 (EDM2's final statistics).
    source = sources.make_source(config.data)
    x_stat = train_loop.host_images(source, 0, 16, config.seed + 2)
    z = np.asarray(vae.encode(vae_train.to_vae_range(jnp.asarray(x_stat))), np.float64)
    np.testing.assert_allclose(z.reshape(-1, 4).mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.reshape(-1, 4).std(axis=0), 0.5, rtol=1e-4)
    # Decoding the final latents gives the reconstructions the quality was measured on.
    recon = 2.0 * np.asarray(vae.decode(jnp.asarray(z, jnp.float32))) - 1.0
    direct = np.asarray(vae_train.reconstruct(vae.params, jnp.asarray(x_stat), cfg))
    np.testing.assert_allclose(recon, direct, atol=1e-4)


def test_clear_errors(tmp_path):
    config = smoke_config()
    config.vae.update(in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="vae.in_channels and vae.out_channels to 1"):
        vae_train.make_trainer(config, sharding.make_mesh())
    config = smoke_config()
    with pytest.raises(FileNotFoundError, match="no checkpoint to export; train first"):
        vae_train.export_vae(config, str(tmp_path / "empty"), str(tmp_path / "out"))
