"""EDM2 latent training (aid_jax/edm2_train.py): the baked parameters equal the port's, forced
weight normalisation, the loss against float64 NumPy, a few steps on a tiny VAE's latents, the
export loading as a backbone, and clear errors."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import edm2_train, sharding, train_loop
from aid_jax.backbones import edm2, load_backbone, loader, sd_vae, vae_loader

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config(vae_path=""):
    sys.path.insert(0, str(ROOT))
    from configs import edm2_fashion_mnist

    config = edm2_fashion_mnist.get_config("smoke")
    config.vae.path = str(vae_path)
    return config


def tiny_vae(folder: pathlib.Path) -> pathlib.Path:
    """A random VAE for 8×8×1 images (factor 2: 4×4×4 latents) written as a ported folder."""
    cfg = sd_vae.VAEConfig(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    )
    manifest = dict(
        format_version=loader.FORMAT_VERSION,
        class_name=vae_loader.CLASS_NAME,
        init_kwargs=cfg.to_diffusers_config(),
    )
    params = sd_vae.init_params(jax.random.key(3), cfg)
    scaling = sd_vae.LatentScaling.from_statistics([0.0] * 4, [2.0] * 4, 0.0, 0.5)
    vae = sd_vae.VAE(params=params, config=cfg, manifest=manifest, scaling=scaling)
    return vae_loader.save_vae(vae, folder)


def test_baked_parameters_are_the_ports():
    cfg = edm2_train.network_config(smoke_config())
    key = jax.random.key(0)
    baked = edm2_train.bake(edm2_train.init_raw(key, cfg))
    ported = edm2.params_from_state(edm2.init_state(key, cfg), cfg)
    # Equal up to normalize()'s ε = 1e-4 against unit-RMS rows (applied once more here).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7), baked, ported)


def test_forced_weight_normalisation():
    cfg = edm2_train.network_config(smoke_config())
    raw = edm2_train.init_raw(jax.random.key(1), cfg)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, w: 3.0 * w if path[-1].key == "weight" else w, raw
    )
    normed = edm2_train.force_normalize(scaled)
    for (path, w), r in zip(
        jax.tree_util.tree_leaves_with_path(normed), jax.tree.leaves(raw), strict=True
    ):
        if path[-1].key == "weight":  # unit RMS per output channel (the last axis)
            rms = np.sqrt(np.mean(np.square(np.asarray(w)), axis=tuple(range(w.ndim - 1))))
            np.testing.assert_allclose(rms, 1.0, rtol=1e-3)
        else:  # gains and Fourier features untouched
            np.testing.assert_array_equal(w, r)
    # The forward sees the same network whatever the stored rows' scale.
    a, b = edm2_train.bake(raw), edm2_train.bake(scaled)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7), a, b)


def test_loss_matches_float64_numpy():
    cfg = edm2_train.network_config(smoke_config())
    raw = edm2_train.init_raw(jax.random.key(2), cfg)
    y = jax.random.normal(jax.random.key(4), (3, 4, 4, 4), jnp.float32) * 0.5
    key = jax.random.key(5)
    loss, metrics = edm2_train.edm2_loss(raw, y, None, key, cfg, P_mean=-0.4, P_std=0.0)
    sigma = np.exp(-0.4)  # P_std = 0: σ fixed
    _, k_noise = jax.random.split(key)
    n = np.asarray(jax.random.normal(k_noise, y.shape, jnp.float32), np.float64)
    params = edm2_train.bake(raw)
    x = jnp.asarray(np.asarray(y, np.float64) + sigma * n, jnp.float32)
    d = np.asarray(
        edm2.denoise(params, x, jnp.full((3,), sigma, jnp.float32), None, cfg), np.float64
    )
    u = float(edm2.logvar(params, jnp.full((1,), sigma, jnp.float32), cfg)[0])
    lam = (sigma**2 + 0.25) / (sigma**2 * 0.25)
    err = np.square(d - np.asarray(y, np.float64))
    np.testing.assert_allclose(float(loss), np.mean(lam / np.exp(u) * err + u), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["edm_loss"]), lam * err.mean(), rtol=1e-4)


def test_training_steps_and_export(tmp_path, monkeypatch):
    config = smoke_config(tiny_vae(tmp_path / "vae"))
    seen = []  # the sample grids' starting latents: unit noise (the sampler scales by σ_max)
    make_sampler = loader.make_sampler

    def spy(*args, **kwargs):
        draw = make_sampler(*args, **kwargs)
        return lambda params, latents: seen.append(float(jnp.std(latents))) or draw(params, latents)

    monkeypatch.setattr(loader, "make_sampler", spy)
    out = train_loop.run(edm2_train.make_trainer(config, sharding.make_mesh()), tmp_path / "run")
    assert seen and all(0.7 < s < 1.3 for s in seen), seen
    assert out["step"] == 4
    for path, w in jax.tree_util.tree_leaves_with_path(out["state"]["params"]):
        if path[-1].key == "weight":
            rms = np.sqrt(np.mean(np.square(np.asarray(w)), axis=tuple(range(w.ndim - 1))))
            np.testing.assert_allclose(rms, 1.0, rtol=1e-3)
    logs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in logs if "loss" in r)
    assert (tmp_path / "run/samples").is_dir()  # decoded sample grids
    folder = edm2_train.export_backbone(config, str(tmp_path / "run"), str(tmp_path / "edm2"))
    backbone = load_backbone(folder)
    assert backbone.image_shape == (4, 4, 4)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 4
    assert (
        manifest["latent"]["vae_params_sha256"]
        == vae_loader.load_vae(tmp_path / "vae").manifest["params_sha256"]
    )
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    assert np.isfinite(np.asarray(backbone.denoise(z, jnp.full((2,), 1.0)))).all()


def test_clear_errors(tmp_path):
    vae = tiny_vae(tmp_path / "vae")
    config = smoke_config(vae)
    config.model.img_resolution = 8
    with pytest.raises(ValueError, match="set model.img_resolution=4"):
        edm2_train.make_trainer(config, sharding.make_mesh())
    config = smoke_config(vae)
    config.model.label_dim = 10
    with pytest.raises(ValueError, match="the data has 0 classes"):
        edm2_train.make_trainer(config, sharding.make_mesh())
