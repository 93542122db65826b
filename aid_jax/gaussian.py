"""The Gaussian world: data with a known density, an exact denoiser and an exact posterior.

For data x0 ~ N(mu, Sigma) (here a single-channel H x W image flattened row-major to d = H·W
pixels) every quantity that inpainting methods approximate is available in closed form
(AID.md §5, VIPAINT.md §14 item 7):

* the exact EDM denoiser, linear in x:  D(x; sigma) = mu + Sigma (Sigma + sigma² I)⁻¹ (x - mu);
* the exact posterior of the image given the observed pixels y = m ⊙ x0 (Gaussian conditioning):
  c_h = mu_h + S_ho S_oo⁻¹ (y_o - mu_o),  C_hh = S_hh - S_ho S_oo⁻¹ S_oh  on the hole h, with
  c_o = y_o and zero (co)variance on the observed pixels o;
* the 2-Wasserstein distance between Gaussians, to compare a method's samples (through the
  Gaussian fitted to them) with the exact posterior.

Exact quantities are float64 NumPy; the denoiser handed to samplers is a float32 JAX function
(two matmuls per call through an eigendecomposition computed once).

Conventions: a flat vector of length d is the image ``[H, W, 1]`` in row-major order, i.e.
``image.reshape(d)``; masks use 1 = known pixel, 0 = hole, as everywhere in aid_jax.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.sampling import DenoiseFn

__all__ = [
    "GaussianWorld",
    "empirical_w2_to_posterior",
    "posterior_mean_rmse",
    "se_covariance",
    "w2_gaussian",
]

# Relative diagonal jitter of se_covariance: the squared-exponential kernel on a grid is
# numerically singular (eigenvalues far below float64 resolution for length scales >= 1 px);
# variance·1e-6 keeps every covariance positive definite while changing D and the posterior by a
# relative O(1e-6).
SE_JITTER = 1e-6


def se_covariance(
    height: int,
    width: int,
    length_scale: float = 2.0,
    variance: float = 0.25,
    jitter: float = SE_JITTER,
) -> np.ndarray:
    """Stationary squared-exponential covariance over the pixel grid of an H x W image.

    K[i, j] = variance · exp(-|p_i - p_j|² / (2 length_scale²)) + jitter · variance · [i == j],
    with p_i the (row, column) of pixel i in row-major order.

    Args:
        height: Image height H (>= 1).
        width: Image width W (>= 1).
        length_scale: Correlation length in pixels (> 0).
        variance: Marginal variance of every pixel (> 0); 0.25 is EDM's sigma_data².
        jitter: Relative diagonal jitter (>= 0), see ``SE_JITTER``.

    Returns:
        float64 ``[d, d]`` symmetric positive-definite matrix, d = H·W.

    Raises:
        ValueError: On non-positive sizes, length scale or variance, or a negative jitter.
    """
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not length_scale > 0 or not variance > 0:
        raise ValueError(
            f"length_scale and variance must be > 0, got {length_scale!r} and {variance!r}"
        )
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0, got {jitter!r}")
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    p = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)  # [d, 2]
    sq = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    cov = variance * np.exp(-sq / (2.0 * length_scale**2))
    return cov + (jitter * variance) * np.eye(height * width)


def _flat(a, d: int, name: str) -> np.ndarray:
    """An image-like array with d elements ([d], [H, W, 1], [1, H, W, 1] ...) -> float64 [d]."""
    a = np.asarray(a, dtype=np.float64)
    if a.size != d:
        raise ValueError(f"{name} has shape {a.shape} ({a.size} values); expected {d} values")
    return a.reshape(d)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh (negative rounding eigenvalues clipped to 0)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianWorld:
    """Gaussian data x0 ~ N(mean, cov) on single-channel images of shape ``image_shape``.

    Attributes:
        mean: float64 ``[d]`` mean (row-major image).
        cov: float64 ``[d, d]`` symmetric positive-definite covariance.
        image_shape: ``(H, W, 1)`` with H·W = d.
    """

    mean: np.ndarray
    cov: np.ndarray
    image_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or shape[2] != 1 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, 1), got {self.image_shape!r}")
        d = shape[0] * shape[1]
        mean = np.asarray(self.mean, np.float64).reshape(-1)
        cov = np.asarray(self.cov, np.float64)
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(
                f"mean {mean.shape} / cov {cov.shape} do not fit image_shape {shape} (d = {d})"
            )
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise ValueError("mean and cov must be finite")
        if not np.allclose(cov, cov.T, rtol=0, atol=1e-12 * max(1.0, np.abs(cov).max())):
            raise ValueError("cov must be symmetric")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", 0.5 * (cov + cov.T))
        object.__setattr__(self, "image_shape", shape)
        if self.eigenvalues[0] <= 0:
            raise ValueError(
                f"cov must be positive definite (smallest eigenvalue {self.eigenvalues[0]:.3g}); "
                "add a diagonal jitter"
            )

    @classmethod
    def squared_exponential(
        cls,
        height: int = 8,
        width: int = 8,
        length_scale: float = 2.0,
        variance: float = 0.25,
        mean: float = 0.0,
        jitter: float = SE_JITTER,
    ) -> GaussianWorld:
        """The stationary world of :func:`se_covariance` with a constant mean."""
        cov = se_covariance(height, width, length_scale, variance, jitter)
        return cls(np.full(height * width, float(mean)), cov, (height, width, 1))

    @property
    def dim(self) -> int:
        """Number of pixels d = H·W."""
        return self.mean.shape[0]

    @functools.cached_property
    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(self.cov)

    @property
    def eigenvalues(self) -> np.ndarray:
        """Ascending float64 eigenvalues of ``cov``."""
        return self._eigh[0]

    @property
    def eigenvectors(self) -> np.ndarray:
        """Orthonormal float64 eigenvectors of ``cov`` (columns), ``cov = U diag(lam) Uᵀ``."""
        return self._eigh[1]

    def sample(self, key_or_rng, n: int) -> np.ndarray:
        """Draws ``n`` images x0 = mean + U diag(sqrt(lam)) z, z ~ N(0, I).

        Args:
            key_or_rng: A JAX PRNG key (z drawn with ``jax.random.normal`` in float32), a
                ``np.random.Generator`` or an int seed (z drawn in float64 NumPy).
            n: Number of samples (>= 1).

        Returns:
            float64 ``[n, H, W, 1]``.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        d = self.dim
        if isinstance(key_or_rng, np.random.Generator):
            z = key_or_rng.standard_normal((n, d))
        elif isinstance(key_or_rng, int | np.integer) and not isinstance(key_or_rng, bool):
            z = np.random.default_rng(int(key_or_rng)).standard_normal((n, d))
        else:
            z = np.asarray(jax.random.normal(key_or_rng, (n, d), jnp.float32), np.float64)
        lam, u = self._eigh
        x = self.mean + (z * np.sqrt(lam)) @ u.T
        return x.reshape(n, *self.image_shape)

    def denoiser_f64(self, x, sigma) -> np.ndarray:
        """Float64 NumPy reference D(x; sigma) = mu + Sigma (Sigma + sigma² I)⁻¹ (x - mu).

        Computed with a linear solve (independent of the eigendecomposition used by
        :meth:`denoiser`). ``x`` is ``[B, H, W, 1]`` (or ``[B, d]``), ``sigma`` a scalar or ``[B]``.
        """
        x = np.asarray(x, np.float64)
        b = x.shape[0]
        xf = x.reshape(b, self.dim)
        sig = np.broadcast_to(np.asarray(sigma, np.float64).reshape(-1), (b,))
        out = np.empty_like(xf)
        eye = np.eye(self.dim)
        for i in range(b):
            a = self.cov + sig[i] ** 2 * eye
            out[i] = self.mean + self.cov @ np.linalg.solve(a, xf[i] - self.mean)
        return out.reshape(x.shape)

    def denoiser(self) -> DenoiseFn:
        """The exact denoiser as a float32 JAX function for samplers and inpainting methods.

        ``D(x [B, H, W, 1], sigma [B] or scalar) -> [B, H, W, 1]`` float32 with
        D = mu + U diag(lam / (lam + sigma²)) Uᵀ (x - mu): two ``[B, d] x [d, d]`` matmuls at
        HIGHEST precision. Pure and jit-able; the constants (U, lam, mu) are closed over.
        """
        lam, u = self._eigh
        u32 = jnp.asarray(u, jnp.float32)
        lam32 = jnp.asarray(np.clip(lam, 0.0, None), jnp.float32)
        mu32 = jnp.asarray(self.mean, jnp.float32)
        d, shape = self.dim, self.image_shape
        hi = jax.lax.Precision.HIGHEST

        def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
            if x.ndim != 4 or tuple(x.shape[1:]) != shape:
                raise ValueError(f"x has shape {x.shape}; expected [B, {shape[0]}, {shape[1]}, 1]")
            b = x.shape[0]
            xf = x.astype(jnp.float32).reshape(b, d) - mu32
            s2 = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (b,))[:, None] ** 2
            z = jnp.matmul(xf, u32, precision=hi) * (lam32 / (lam32 + s2))  # eigen-coordinates
            return (mu32 + jnp.matmul(z, u32.T, precision=hi)).reshape(x.shape)

        return denoise

    def posterior(self, y, mask) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior N(c, C) of the full image given the observed pixels of ``y``.

        Gaussian conditioning on the pixels where ``mask == 1``: on the hole
        c_h = mu_h + S_ho S_oo⁻¹ (y_o - mu_o) and C_hh = S_hh - S_ho S_oo⁻¹ S_oh; on the observed
        pixels c_o = y_o and C has zero rows and columns. Values of ``y`` in the hole are ignored.

        Args:
            y: One image with d values (``[H, W, 1]``, ``[1, H, W, 1]`` or ``[d]``).
            mask: Binary mask with d values, 1 = known.

        Returns:
            ``(c, C)``: float64 ``[d]`` and ``[d, d]`` (flat, row-major image order).
        """
        d = self.dim
        m = _flat(mask, d, "mask")
        if not np.isin(m, (0.0, 1.0)).all():
            raise ValueError("mask must contain only 0 (hole) and 1 (known)")
        obs = m == 1.0
        hole = ~obs
        yv = np.where(obs, _flat(y, d, "y"), 0.0)  # hole values (even NaN) are ignored
        if not np.isfinite(yv[obs]).all():
            raise ValueError("y has non-finite observed values")
        c = np.where(obs, yv, self.mean)
        cov = np.zeros((d, d))
        s = self.cov
        if obs.any():
            s_oo = s[np.ix_(obs, obs)]
            s_ho = s[np.ix_(hole, obs)]
            gain = np.linalg.solve(s_oo, s_ho.T).T  # S_ho S_oo⁻¹  [h, o]
            c[hole] = self.mean[hole] + gain @ (yv[obs] - self.mean[obs])
            c_hh = s[np.ix_(hole, hole)] - gain @ s_ho.T
        else:
            c_hh = s.copy()
        cov[np.ix_(hole, hole)] = 0.5 * (c_hh + c_hh.T)
        return c, cov


def w2_gaussian(mean1, cov1, mean2, cov2) -> float:
    """2-Wasserstein distance between N(mean1, cov1) and N(mean2, cov2), in float64.

    W2² = |mean1 - mean2|² + tr(cov1 + cov2 - 2 (cov2^½ cov1 cov2^½)^½), with both square roots
    of symmetric PSD matrices taken through ``eigh`` (negative rounding eigenvalues clipped), so
    singular covariances are handled.

    Returns:
        W2 (not squared), a float >= 0.
    """
    m1 = np.atleast_1d(np.asarray(mean1, np.float64))
    m2 = np.atleast_1d(np.asarray(mean2, np.float64))
    c1 = np.atleast_2d(np.asarray(cov1, np.float64))
    c2 = np.atleast_2d(np.asarray(cov2, np.float64))
    k = m1.shape[0]
    if m1.shape != (k,) or m2.shape != (k,) or c1.shape != (k, k) or c2.shape != (k, k):
        raise ValueError(
            f"shape mismatch: means {m1.shape}, {m2.shape}; covariances {c1.shape}, {c2.shape}"
        )
    c1 = 0.5 * (c1 + c1.T)
    r2 = _psd_sqrt(c2)
    cross = np.trace(_psd_sqrt(r2 @ c1 @ r2))
    w2sq = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross
    return float(np.sqrt(max(w2sq, 0.0)))


def _hole_index(d: int, cov: np.ndarray, mask) -> np.ndarray:
    if mask is None:
        return np.diag(cov) > 0  # posterior() gives the observed pixels exactly zero variance
    return _flat(mask, d, "mask") == 0.0


def _flat_samples(samples, d: int) -> np.ndarray:
    s = np.asarray(samples, np.float64)
    if s.ndim < 2 or s[0].size != d:
        raise ValueError(f"samples have shape {s.shape}; expected [n, ...] with {d} values each")
    return s.reshape(s.shape[0], d)


def empirical_w2_to_posterior(samples, mean, cov, mask=None) -> float:
    """W2 between the Gaussian fitted to ``samples`` and N(mean, cov), on the hole pixels.

    The fit uses the sample mean and the unbiased (n - 1) sample covariance. Even exact posterior
    samples give a positive value (finite-sample bias, roughly sqrt(tr C / n) for the mean part
    plus the covariance estimation error): compare methods at the same n, against that floor.

    Args:
        samples: ``[n, H, W, 1]`` or ``[n, d]`` (n >= 2).
        mean: Posterior mean ``[d]`` (flat), e.g. from :meth:`GaussianWorld.posterior`.
        cov: Posterior covariance ``[d, d]``.
        mask: Optional mask with d values (1 = known); the hole is where it is 0. Default: the
            pixels with positive posterior variance (the hole, for ``posterior``'s output).

    Returns:
        W2 over the hole pixels (float).
    """
    cov = np.asarray(cov, np.float64)
    d = cov.shape[0]
    s = _flat_samples(samples, d)
    if s.shape[0] < 2:
        raise ValueError("need at least 2 samples to fit a covariance")
    h = _hole_index(d, cov, mask)
    sh = s[:, h]
    mu_hat = sh.mean(axis=0)
    cov_hat = np.atleast_2d(np.cov(sh, rowvar=False, ddof=1))
    mean_h = _flat(mean, d, "mean")[h]
    return w2_gaussian(mu_hat, cov_hat, mean_h, cov[np.ix_(h, h)])


def posterior_mean_rmse(samples, mean, mask) -> float:
    """RMSE over the hole pixels between the sample mean and the posterior mean.

    Args:
        samples: ``[n, H, W, 1]`` or ``[n, d]``.
        mean: Posterior mean with d values.
        mask: Mask with d values, 1 = known; the RMSE is over the pixels where it is 0.
    """
    mean = np.asarray(mean, np.float64).reshape(-1)
    d = mean.shape[0]
    s = _flat_samples(samples, d)
    h = _flat(mask, d, "mask") == 0.0
    return float(np.sqrt(np.mean((s[:, h].mean(axis=0) - mean[h]) ** 2)))


BENCHMARK_MASKS = (
    "top_half",
    "bottom_half",
    "left_half",
    "center_box",
    "random_pixels",
    "random_boxes",
)


def benchmark_mask(kind: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed mask float32 ``[H, W, 1]`` (1 = known) for the Gaussian benchmarks.

    ``top_half``: the top half known, the bottom half missing (the AID.md §5 reference run);
    ``bottom_half`` / ``left_half`` name the known half likewise; ``center_box`` (half the side),
    ``random_pixels`` (50 % dropout) and ``random_boxes`` are :mod:`aid_jax.masks` families drawn
    with ``seed``.
    """
    from aid_jax import masks

    hw = (height, width)
    if kind in ("top_half", "bottom_half", "left_half"):
        hole_side = {"top_half": "bottom", "bottom_half": "top", "left_half": "right"}[kind]
        m = masks.make_masks("half", 1, hw, seed=seed, side=hole_side)
    elif kind == "center_box":
        m = masks.make_masks("center_box", 1, hw, seed=seed, fraction=0.5)
    elif kind == "random_pixels":
        m = masks.make_masks("pixel_dropout", 1, hw, seed=seed, p=0.5)
    elif kind == "random_boxes":
        m = masks.make_masks("random_boxes", 1, hw, seed=seed)
    else:
        raise ValueError(f"unknown mask {kind!r}; choose from {BENCHMARK_MASKS}")
    return m[0]
