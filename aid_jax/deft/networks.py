"""DEFT's h-network for images (docs/DEFT_DESIGN.md §1, §4), a Flax module whose ``apply`` is a
pure function of its params pytree.

Inputs: exactly AID's actor inputs (:func:`aid_jax.aid.networks.actor_inputs`),
u = [c_in(σ)·x, D(x; σ), y, m, m⊙(y − D)] on 4C + 1 channels — the official code's
[x_t, x̂0, y, m, g] with EDM's input scaling. Noise enters as an embedding of c_noise = ln(σ)/4.

Two parts, one module (:class:`HNet`), params ``{"unet": ..., "gate": ...}``:

* ``unet`` U_φ(u, σ): :class:`aid_jax.aid.networks.GuidanceUNet` (FiLM on σ, zero-initialised
  last conv, so U ≡ 0 at initialisation);
* ``gate`` γ_φ(σ): an MLP on the raw σ-embedding (the official NN_φ(t): Linear–SiLU–…–Linear to
  one scalar), last layer with zero weight and bias ``gate_init`` (default 0: γ ≡ 0 at
  initialisation, so DEFT starts exactly at the backbone).

How (U, γ) become the combined denoiser is :func:`aid_jax.deft.model.combine`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aid_jax.aid.networks import GuidanceUNet, actor_inputs, noise_embedding, param_count

__all__ = ["Gate", "HNet", "actor_inputs", "param_count"]


class Gate(nn.Module):
    """γ_φ(σ) -> [B]: MLP on the sinusoidal embedding of ln(σ)/4; constant ``init`` at start."""

    emb_dim: int = 16
    hidden: int = 32
    layers: int = 2  # hidden layers (the official NN_φ has 2)
    init: float = 0.0

    @nn.compact
    def __call__(self, sigma, batch: int):
        h = noise_embedding(sigma, batch, self.emb_dim)
        for _ in range(self.layers):
            h = nn.silu(nn.Dense(self.hidden)(h))
        out = nn.Dense(
            1,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.init),
        )(h)
        return out[:, 0]


class HNet(nn.Module):
    """(U_φ(u, σ) [B, H, W, C], γ_φ(σ) [B]) from the inputs u ``[B, H, W, 4C + 1]``."""

    out_channels: int
    channels: Sequence[int] = (8, 8, 8)
    emb_dim: int = 16
    gate_emb_dim: int = 16
    gate_hidden: int = 32
    gate_layers: int = 2
    gate_init: float = 0.0

    @nn.compact
    def __call__(self, inputs, sigma):
        batch = inputs.shape[0]
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (batch,))
        u = GuidanceUNet(
            out_channels=self.out_channels,
            channels=tuple(self.channels),
            emb_dim=self.emb_dim,
            name="unet",
        )(inputs, sigma)
        gamma = Gate(
            emb_dim=self.gate_emb_dim,
            hidden=self.gate_hidden,
            layers=self.gate_layers,
            init=self.gate_init,
            name="gate",
        )(sigma, batch)
        return u, gamma
