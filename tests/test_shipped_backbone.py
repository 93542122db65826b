"""The embedded default backbone in ported_weights/fashion_mnist_32: manifest, integrity, size,
and that it denoises real Fashion-MNIST images (which random weights would not)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import load_backbone
from aid_jax.data.pipeline import to_model_range

ROOT = pathlib.Path(__file__).parent.parent
SHIPPED = ROOT / "ported_weights" / "fashion_mnist_32"


def test_manifest_records_config_steps_data_hash_and_quality():
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["class_name"] == "EDMPrecond"
    assert manifest["init_kwargs"]["model_type"] == "SongUNet"
    # The shipped weights are the final step of configs/pretrain_fashion_mnist.py.
    from configs import pretrain_fashion_mnist

    assert manifest["training"]["steps"] == pretrain_fashion_mnist.get_config().train.num_steps
    assert manifest["training"]["data"]["name"] == "fashion_mnist"
    assert len(manifest["params_sha256"]) == 64
    quality = manifest["quality"]
    assert quality["num_samples"] >= 10_000 and quality["fid_lenet"] > 0  # issue 3, item 5
    assert quality["floor_fid_lenet"] < quality["fid_lenet"]
    # The whole folder (weights and manifest).
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


def test_shipped_backbone_denoises_real_images(testdata):
    backbone = load_backbone(SHIPPED)  # also checks params_sha256 against the manifest
    assert backbone.image_shape == (32, 32, 1)
    y = to_model_range(np.load(testdata / "fashion_mnist_test64.npz")["images"])
    fn = jax.jit(backbone.denoise)
    for sigma in (0.2, 0.5, 2.0):
        noise = np.asarray(jax.random.normal(jax.random.key(0), y.shape))
        noisy = y + sigma * noise
        d = np.asarray(fn(noisy, jnp.full((64,), sigma)))
        err_denoised = np.mean((d - y) ** 2)
        # The best constant-shrinkage of the input (a linear denoiser for pixels with the data's
        # mean and variance) is a strong baseline that an untrained network cannot beat.
        mean, var = y.mean(), y.var()
        linear = mean + var / (var + sigma**2) * (noisy - mean)
        assert err_denoised < 0.5 * np.mean((linear - y) ** 2), (sigma, err_denoised)
