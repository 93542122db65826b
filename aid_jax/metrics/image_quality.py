"""Paired image-quality metrics in pure JAX: PSNR and SSIM, on the full image or on a region.

Images are NHWC in [-1, 1] with any number of channels; `region` is float32 [B, H, W, 1] and
selects (weights) the pixels to average over, e.g. the hole of an inpainting mask,
``region = 1 - mask``. Both functions are jitted and return float32 [B] (one value per image);
average over a data set on the host.

PSNR (dB): 10·log10(R² / MSE), MSE over the region's pixels and all channels; R = `data_range`
(2 for [-1, 1], which equals PSNR on [0, 1] images with R = 1 because PSNR is shift-invariant).
An exact match (MSE = 0) gives +inf, as scikit-image does; a data-set mean over images then is
+inf too, so report such images separately (or clip) rather than hiding them behind a cap.

SSIM (Wang et al. 2004, "Image quality assessment: from error visibility to structural
similarity"), exactly scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``: 11×11 Gaussian window (σ = 1.5, truncated at 3.5σ, separable,
border mode scipy 'reflect' = NumPy 'symmetric'), K1 = 0.01, K2 = 0.03, population covariances.
SSIM is NOT shift-invariant (its luminance term depends on the mean), so the images are mapped to
[0, 1] first and R = 1: the value equals scikit-image on ``(x + 1) / 2`` with ``data_range=1``,
i.e. on uint8 images with ``data_range=255`` — the convention papers report. Channels are
averaged, as scikit-image's ``channel_axis=-1`` does. Computed in float32: image means agree with
scikit-image's float64 to ~2e-6 and the map to ~1e-4 per pixel (near-flat windows amplify the
rounding of E[x²] - E[x]²) on the Fashion-MNIST test images.

Border convention of SSIM:
* ``region=None``: the mean of the SSIM map over the image *without* a border strip of width
  (11 - 1) / 2 = 5 on every side (scikit-image's crop), so the number matches scikit-image.
* with a region: the region-weighted mean of the SSIM map over *all* pixels, border included; near
  the border the map uses the reflected window (scikit-image's full map, ``full=True``). Cropping
  would drop most of a hole touching the image edge (on 32×32 images the strip is 53 % of the
  pixels). Hence ``ssim(a, b, region=ones)`` differs slightly from ``ssim(a, b)``.

An empty region (all weights 0) gives NaN for both metrics (this cannot raise inside `jax.jit`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SSIM_K1", "SSIM_K2", "SSIM_SIGMA", "SSIM_WIN", "psnr", "ssim", "ssim_map"]

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# scikit-image's gaussian_weights window: radius int(3.5 σ + 0.5) = 5 as in scipy.ndimage.
_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
SSIM_WIN = 2 * _RADIUS + 1


def _gaussian_taps() -> np.ndarray:
    """The normalised 1-D Gaussian of scipy.ndimage.gaussian_filter (σ = 1.5, 11 taps)."""
    k = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * k**2 / SSIM_SIGMA**2)
    return (w / w.sum()).astype(np.float32)


def _check_pair(a, b, region, name: str) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"{name}: expected two NHWC images [B, H, W, C] of the same shape, got "
            f"{a.shape} and {b.shape}"
        )
    for x, what in ((a, "a"), (b, "b")):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{name}: {what} has dtype {x.dtype}; pass float images in [-1, 1] "
                "(aid_jax.data.pipeline.to_model_range converts uint8)"
            )
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if region is not None:
        region = jnp.asarray(region)
        if region.shape != (*a.shape[:3], 1):
            raise ValueError(
                f"{name}: region must be [B, H, W, 1] = {(*a.shape[:3], 1)} (1 = pixel counted, "
                f"e.g. 1 - mask for the hole), got {region.shape}"
            )
        region = region.astype(jnp.float32)
    return a, b, region


def _weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-image weighted mean over all non-batch axes (weights broadcast to x)."""
    weights = jnp.broadcast_to(weights, x.shape)
    axes = tuple(range(1, x.ndim))
    return jnp.sum(x * weights, axis=axes) / jnp.sum(weights, axis=axes)


@jax.jit
def psnr(a, b, region=None, data_range=2.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB, per image.

    Args:
      a, b: images [B, H, W, C] (float, [-1, 1]).
      region: optional float [B, H, W, 1]; the MSE is the region-weighted mean of the squared
        error over pixels and channels (None = every pixel).
      data_range: R, the extent of the value range (2 for [-1, 1]).

    Returns:
      float32 [B]: 10·log10(R² / MSE); +inf where MSE = 0, NaN for an empty region.
    """
    a, b, region = _check_pair(a, b, region, "psnr")
    err = jnp.square(a - b)
    if region is None:
        mse = jnp.mean(err, axis=(1, 2, 3))
    else:
        mse = _weighted_mean(err, region)
    data_range = jnp.asarray(data_range, jnp.float32)
    return 10.0 * jnp.log10(jnp.square(data_range) / mse)


def _gaussian_filter(x: jax.Array) -> jax.Array:
    """Separable 11-tap Gaussian over axes 1 and 2 of [..., H, W, ...] with symmetric padding."""
    taps = _gaussian_taps()
    h, w = x.shape[1], x.shape[2]
    pad = [(0, 0)] * x.ndim
    pad[1] = pad[2] = (_RADIUS, _RADIUS)
    # NumPy 'symmetric' (edge repeated) is scipy.ndimage's 'reflect' used by scikit-image.
    xp = jnp.pad(x, pad, mode="symmetric")
    rows = sum(float(t) * xp[:, k : k + h] for k, t in enumerate(taps))
    return sum(float(t) * rows[:, :, k : k + w] for k, t in enumerate(taps))


@jax.jit
def ssim_map(a, b) -> jax.Array:
    """The SSIM map [B, H, W, C] of scikit-image (``full=True``), for images in [-1, 1].

    Every pixel has a value (reflected windows at the border); see the module docstring.
    """
    a, b, _ = _check_pair(a, b, None, "ssim")
    if min(a.shape[1:3]) < SSIM_WIN:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WIN}×{SSIM_WIN} (the Gaussian window), got "
            f"{a.shape[1]}×{a.shape[2]}"
        )
    # SSIM is defined on [0, 1] images here (R = 1): see the module docstring. The moments are
    # taken of x - 1/2 = a / 2 (variances are shift-invariant), which quarters the float32
    # cancellation error of E[x²] - E[x]² on bright pixels; the means are shifted back.
    x, y = a * 0.5, b * 0.5
    # Local moments of Wang et al. Eqs. 14-16, with Gaussian weights w (Σw = 1).
    m_x, m_y, e_xx, e_yy, e_xy = jnp.unstack(
        _gaussian_filter(jnp.stack([x, y, x * x, y * y, x * y], axis=-1)), axis=-1
    )
    var_x = e_xx - m_x * m_x
    var_y = e_yy - m_y * m_y
    cov = e_xy - m_x * m_y
    mu_x, mu_y = m_x + 0.5, m_y + 0.5
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K·R)² with R = 1
    # Wang et al. Eq. 13.
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


@jax.jit
def ssim(a, b, region=None) -> jax.Array:
    """Mean structural similarity, per image (scikit-image's Gaussian SSIM; see module docstring).

    Args:
      a, b: images [B, H, W, C] (float, [-1, 1]), H and W >= 11.
      region: optional float [B, H, W, 1]: the region-weighted mean of the channel-averaged SSIM
        map over all pixels (border included). None: the plain mean over the image without the
        5-pixel border strip, which is what scikit-image returns.

    Returns:
      float32 [B]; NaN for an empty region.
    """
    s = jnp.mean(ssim_map(a, b), axis=-1)
    if region is None:
        r = _RADIUS
        return jnp.mean(s[:, r:-r, r:-r], axis=(1, 2))
    _, _, region = _check_pair(a, b, region, "ssim")
    return _weighted_mean(s, region[..., 0])
