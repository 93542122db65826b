"""Training losses for backbones (EDM_REFERENCE.md §1.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def edm_loss(
    denoise,  # D(x, sigma) -> denoised, float32
    images: jax.Array,  # [B, H, W, C] clean images y in [-1, 1]
    key: jax.Array,
    *,
    P_mean: float = -1.2,  # ln σ ~ N(P_mean, P_std²) (EDM Eq. 8 / Table 1)
    P_std: float = 1.2,
    sigma_data: float = 0.5,
) -> tuple[jax.Array, dict]:
    """EDMLoss: λ(σ)·‖D(y + σε; σ) − y‖², λ(σ) = (σ² + σ_d²)/(σ·σ_d)², averaged over pixels
    and the batch. Returns (loss, metrics)."""
    sigma_key, noise_key = jax.random.split(key)
    b = images.shape[0]
    sigma = jnp.exp(P_mean + P_std * jax.random.normal(sigma_key, (b,), jnp.float32))
    noise = jax.random.normal(noise_key, images.shape, jnp.float32)
    s = sigma[:, None, None, None]
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    denoised = denoise(images + s * noise, sigma)
    per_pixel = weight * jnp.square(denoised - images)
    loss = per_pixel.mean()
    # Loss by noise level, for monitoring: low (σ < 0.2), mid, high (σ > 2).
    per_image = per_pixel.mean(axis=(1, 2, 3))
    metrics = {"loss": loss}
    for name, lo, hi in (("low", 0.0, 0.2), ("mid", 0.2, 2.0), ("high", 2.0, jnp.inf)):
        sel = ((sigma >= lo) & (sigma < hi)).astype(jnp.float32)
        metrics[f"loss_sigma_{name}"] = jnp.sum(per_image * sel) / jnp.maximum(jnp.sum(sel), 1)
    return loss, metrics
