"""PSNR / SSIM (full image and region) against scikit-image and float64 NumPy references."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from aid_jax import masks as mask_lib
from aid_jax.metrics import image_quality as iq


def _sk_ssim(a, b, full=False):
    """scikit-image's Gaussian SSIM on (x + 1) / 2 with R = 1 (float64), channel_axis=-1."""
    return sk_ssim(
        (a.astype(np.float64) + 1) / 2,
        (b.astype(np.float64) + 1) / 2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
        full=full,
    )


def _pairs():
    """(name, a, b) float32 pairs in [-1, 1]: Fashion-MNIST + noise, blur, random RGB."""
    rng = np.random.default_rng(0)
    z = np.load(pathlib.Path(__file__).parent / "testdata" / "fashion_mnist_test64.npz")
    x = z["images"][:24].astype(np.float32) / 127.5 - 1.0
    noisy = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
    blur = ((x + np.roll(x, 1, 1) + np.roll(x, 1, 2) + np.roll(x, (1, 1), (1, 2))) / 4).astype(
        np.float32
    )
    ra = rng.uniform(-1, 1, (3, 23, 17, 3)).astype(np.float32)
    rb = np.clip(ra + rng.normal(0, 0.5, ra.shape), -1, 1).astype(np.float32)
    return [("fmnist_noise", x, noisy), ("fmnist_blur", x, blur), ("random_rgb", ra, rb)]


@pytest.fixture(scope="module")
def pairs():
    return _pairs()


def test_ssim_matches_skimage(pairs):
    for name, a, b in pairs:
        got = np.asarray(iq.ssim(a, b))
        ref = np.array([_sk_ssim(ai, bi) for ai, bi in zip(a, b, strict=True)])
        assert got.shape == (a.shape[0],) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=name)
    # The random-RGB case is far from 1: the test would see a wrong constant or window.
    assert ref.max() < 0.9


def test_ssim_convention_equals_skimage_on_uint8(testdata):
    # [-1, 1] images <-> uint8 with data_range=255 (SSIM is scale- but not shift-invariant).
    u8 = np.load(testdata / "fashion_mnist_test64.npz")["images"][:8]
    v8 = np.flip(u8, axis=2)
    got = np.asarray(iq.ssim(u8 / np.float32(127.5) - 1, v8 / np.float32(127.5) - 1))
    ref = [
        sk_ssim(p, q, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=255, channel_axis=-1)
        for p, q in zip(u8, v8, strict=True)
    ]  # fmt: skip
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # ... and it is NOT skimage on the raw [-1, 1] values with data_range=2.
    shifted = sk_ssim(
        u8[0] / 127.5 - 1, v8[0] / 127.5 - 1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=2.0, channel_axis=-1,
    )  # fmt: skip
    assert abs(shifted - got[0]) > 1e-3


def test_ssim_map_and_region_match_skimage_full_map(pairs):
    name, a, b = pairs[0]
    a, b = a[:6], b[:6]
    hole = 1.0 - mask_lib.make_masks("random_boxes", 6, a.shape[1:3], seed=3)
    hole[1] = 0.0
    hole[1, :3, :8] = 1.0  # a hole entirely inside the 5-pixel border strip
    soft = np.random.default_rng(1).uniform(0, 1, hole.shape).astype(np.float32)
    got_map = np.asarray(iq.ssim_map(a, b))
    got_hole, got_soft = np.asarray(iq.ssim(a, b, hole)), np.asarray(iq.ssim(a, b, soft))
    for i in range(6):
        _, s = _sk_ssim(a[i], b[i], full=True)  # [H, W, C], reflected windows at the border
        # float32 map: within 1e-4 per pixel (flat areas amplify E[x²] - E[x]² rounding).
        np.testing.assert_allclose(got_map[i], s, atol=1e-4)
        s = s.mean(-1)
        for got, r in ((got_hole, hole[i, ..., 0]), (got_soft, soft[i, ..., 0])):
            np.testing.assert_allclose(got[i], (s * r).sum() / r.sum(), atol=1e-5)
    # region = ones keeps the border, region = None crops it (scikit-image's mean).
    ones = np.ones_like(hole)
    full = np.asarray(iq.ssim(a, b, ones))
    np.testing.assert_allclose(full, got_map.mean(axis=(1, 2, 3)), atol=1e-6)
    assert np.all(np.abs(full - np.asarray(iq.ssim(a, b))) > 1e-4)


def test_psnr_matches_skimage_and_region_reference(pairs):
    for name, a, b in pairs:
        got = np.asarray(iq.psnr(a, b))
        ref = [sk_psnr(ai, bi, data_range=2.0) for ai, bi in zip(a, b, strict=True)]
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=name)
        # Same number on [0, 1] with R = 1 (PSNR is shift-invariant).
        np.testing.assert_allclose(got, np.asarray(iq.psnr((a + 1) / 2, (b + 1) / 2, None, 1.0)),
                                   rtol=1e-5)  # fmt: skip
        hole = 1.0 - mask_lib.make_masks("center_box", a.shape[0], a.shape[1:3], seed=0)
        err = (a.astype(np.float64) - b) ** 2
        w = np.broadcast_to(hole, err.shape)
        mse = (err * w).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
        np.testing.assert_allclose(iq.psnr(a, b, hole), 10 * np.log10(4 / mse), rtol=1e-6)


def test_identical_images_and_empty_region():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
    b = a.copy()
    b[1, 3, 3, 0] += 0.5  # one changed pixel inside the region of image 1
    p = np.asarray(iq.psnr(a, b))
    assert p[0] == np.inf and np.isfinite(p[1])
    s = np.asarray(iq.ssim(a, a))
    np.testing.assert_allclose(s, 1.0, atol=1e-6)
    empty = np.zeros((2, 16, 16, 1), np.float32)
    assert np.isnan(np.asarray(iq.psnr(a, b, empty))).all()
    assert np.isnan(np.asarray(iq.ssim(a, b, empty))).all()
    # A region that excludes the only differing pixel gives +inf.
    region = np.ones_like(empty)
    region[1, 3, 3] = 0.0
    assert np.all(np.asarray(iq.psnr(a, b, region)) == np.inf)


def test_jit_vmap_and_grad_compose():
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.uniform(-1, 1, (3, 12, 12, 2)), jnp.float32)
    b = jnp.asarray(rng.uniform(-1, 1, (3, 12, 12, 2)), jnp.float32)
    r = jnp.ones((3, 12, 12, 1), jnp.float32)
    both = jax.jit(lambda a, b, r: (iq.psnr(a, b, r), iq.ssim(a, b, r)))(a, b, r)
    np.testing.assert_allclose(both[1], iq.ssim(a, b, r), atol=1e-7)
    g = jax.grad(lambda x: iq.ssim(x, b).sum())(a)  # SSIM as a differentiable loss
    assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))


def test_bad_inputs_are_refused():
    a = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        iq.psnr(a, a[:, :8])
    with pytest.raises(ValueError, match="region must be"):
        iq.ssim(a, a, np.ones((2, 16, 16, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        iq.psnr(a.astype(np.uint8), a.astype(np.uint8))
    with pytest.raises(ValueError, match="at least 11"):
        iq.ssim(a[:, :10], a[:, :10])
