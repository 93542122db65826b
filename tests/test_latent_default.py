"""The embedded latent default (issue 18, point 4; docs/LATENT.md): the shipped VAE
(ported_weights/vae_fashion_mnist) and the EDM2 trained in its latent space
(ported_weights/edm2_fashion_mnist_latent) — sizes, manifests, what they were trained on, and
that they do what their manifests claim on held-out images."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import backbones, latent
from aid_jax.backbones import vae_loader
from aid_jax.data import pipeline, sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
VAE = ROOT / "ported_weights" / "vae_fashion_mnist"
EDM2 = ROOT / "ported_weights" / "edm2_fashion_mnist_latent"


def _folder_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def space():
    return latent.LatentSpace.from_vae(vae_loader.load_vae(VAE))


@pytest.fixture(scope="module")
def test_images():
    """32 images of the validation block of the test split (never a training image), [-1, 1]."""
    source = sources.make_source(dict(name="fashion_mnist_bundled", split="test", pad_to=32))
    idx = pipeline.eval_indices(len(source), 32, 0, subset="validation")
    images, labels = source.get(idx)
    return pipeline.to_model_range(images), labels


def test_the_two_networks_fit_the_budget_and_record_their_training():
    assert _folder_bytes(VAE) + _folder_bytes(EDM2) <= 15 * 2**20  # issue 18: ≤ 15 MB
    vae = json.loads((VAE / "manifest.json").read_text())
    assert vae["training"]["data"]["split"] == "train"
    assert vae["training"]["steps"] == vae["training"]["config"]["train"]["num_steps"]
    edm2 = json.loads((EDM2 / "manifest.json").read_text())
    assert edm2["training"]["data"]["split"] == "train"
    # The EDM2 network names the VAE whose latents it learnt.
    assert edm2["latent"]["vae_params_sha256"] == vae["params_sha256"]
    quality = edm2["quality"]
    assert quality["fid_lenet"] > quality["floor_fid_lenet"] and quality["num_samples"] >= 1000


def test_vae_reconstructs_held_out_images_as_its_manifest_says(space, test_images):
    x, _ = test_images
    recon = np.clip(np.asarray(space.decode(space.params, space.encode(space.params, x))), -1, 1)
    psnr = np.mean(10 * np.log10(4.0 / np.mean((recon - x) ** 2, axis=(1, 2, 3))))
    claimed = json.loads((VAE / "manifest.json").read_text())["quality"]["reconstruction"]
    assert psnr > 25.0 and abs(psnr - claimed["psnr"]) < 1.5


def test_latents_are_whitened_as_edm2_expects(space, test_images):
    """EDM2's scaling: per channel, the final latents have mean ≈ 0 and std ≈ 0.5 (measured on
    training images at export; held-out images come close)."""
    z = np.asarray(space.encode(space.params, test_images[0]))
    assert z.shape == (32, 8, 8, 4)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=0.15)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 0.5, atol=0.15)


def test_edm2_denoises_held_out_latents(space, test_images):
    """The trained network removes noise from latents of unseen images with their class: at
    each σ its RMS error is well below that of the best linear denoiser for data of the same
    per-coordinate variance v (Wiener: σ·√v / √(σ² + v), what knowing only the latents' scale
    achieves), and the true class helps."""
    bb = backbones.load_backbone(EDM2)
    latent.check_pipeline(bb.image_shape, space, (32, 32, 1))
    assert bb.config.label_dim == 10
    x, labels = test_images
    z = space.encode(space.params, x)
    onehot = jnp.eye(10, dtype=jnp.float32)[labels]
    wrong = jnp.eye(10, dtype=jnp.float32)[(labels + 5) % 10]
    n = jax.random.normal(jax.random.key(0), z.shape)
    var = float(jnp.var(z))
    for sigma in (0.2, 0.5, 1.0):
        s = jnp.full((z.shape[0],), sigma, jnp.float32)
        d = backbones.denoise(bb.params, z + sigma * n, s, onehot, config=bb.config)
        err = float(jnp.sqrt(jnp.mean(jnp.square(d - z))))
        wiener = sigma * np.sqrt(var / (sigma**2 + var))
        assert err < 0.75 * wiener, (sigma, err, wiener)
        d_wrong = backbones.denoise(bb.params, z + sigma * n, s, wrong, config=bb.config)
        if sigma == 1.0:
            assert err < float(jnp.sqrt(jnp.mean(jnp.square(d_wrong - z))))
