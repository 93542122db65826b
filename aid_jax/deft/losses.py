"""DEFT's loss in EDM units (docs/DEFT_DESIGN.md §4).

    L(φ) = E_{x0, m, σ, n} λ(σ)·‖D_total(x0 + σn; σ, m⊙x0, m) − x0‖² / d,    λ(σ) = 1/s(σ)²

With s = σ this is the official ε-matching loss exactly ((x − D_total)/σ − n = (x0 − D_total)/σ),
averaged over pixels instead of summed. It is computed in the rearranged form

    "scaled":    ‖U + γ·r − (x0 − D)/s‖² / d
    "denoiser":  ‖U + γ·r/s − (x0 − D)/s‖² / d

(the same number, without forming D_total − x0 at small σ). The backbone's D and every network
input are computed outside the differentiated function (:func:`noisy_batch`) and enter under
``stop_gradient``: there is no backward pass through the backbone, only through the h-network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aid_jax.deft import model, networks

__all__ = ["deft_loss", "noisy_batch"]


def noisy_batch(denoise, x0, sigma, noise):
    """(x = x0 + σ·n, D(x; σ)), the backbone forward only, gradients stopped. σ ``[B]``."""
    sigma = jnp.asarray(sigma, jnp.float32)
    x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * noise
    return x, jax.lax.stop_gradient(denoise(x, sigma).astype(jnp.float32))


def deft_loss(hnet: model.HNetApply, config: model.DEFTConfig, x0, x, denoised, mask, sigma):
    """Per-example losses ``[B]`` and aux (``unguided`` ``[B]``: the same loss with U = γ = 0,
    i.e. of the backbone alone; ``u_rms``, ``gamma`` ``[B]``).

    Args:
        hnet: The h-network closure ``(inputs, sigma [B]) -> (U, γ)`` (the only differentiable
            part).
        config: The :class:`~aid_jax.deft.model.DEFTConfig` (``output_scale``, ``gate_units``).
        x0: Clean images ``[B, H, W, C]``.
        x, denoised: :func:`noisy_batch`'s noisy images and backbone outputs.
        mask: ``[B, H, W, 1]``, 1 = known; y = m⊙x0.
        sigma: ``[B]``.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    y = mask * x0
    inputs = jax.lax.stop_gradient(
        networks.actor_inputs(x, denoised, y, mask, sigma, config.sigma_data)
    )
    u, gamma = hnet(inputs, sigma)
    nd = x0.ndim
    s = model._per_row(model.output_scale(config, sigma), nd)
    g = model._per_row(gamma, nd)
    r = jax.lax.stop_gradient(mask * (y - denoised))
    target = jax.lax.stop_gradient((x0 - denoised) / s)
    pred = u + g * r if config.gate_units == "scaled" else u + g * r / s
    axes = tuple(range(1, nd))
    per_example = jnp.mean(jnp.square(pred - target), axis=axes)
    aux = dict(
        unguided=jnp.mean(jnp.square(target), axis=axes),
        u_rms=jnp.sqrt(jnp.mean(jnp.square(u), axis=axes)),
        gamma=gamma,
    )
    return per_example, aux
