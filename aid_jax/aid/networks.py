"""AID's guidance module (actor) and critic for images (AID.md §3), as Flax modules whose
``apply`` is a pure function of a params pytree.

Both see the same per-step inputs, NHWC, concatenated on channels:

    c_in(σ)·x,  D(x; σ),  y = m⊙x0,  m,  m⊙(y − D)

(c_in = 1/√(σ² + σ_data²), EDM's input scaling, so x enters at unit scale; D is free — the
sampler computes it for the drift anyway). The noise level enters through FiLM: an embedding of
c_noise = ln(σ)/4 (EDM's) modulates every residual block (scale and shift after GroupNorm).

* :class:`GuidanceUNet` μ_φ — a small conv UNet (GroupNorm + SiLU, FiLM, average-pool down,
  nearest up, skip concatenation), output of the image's shape from a **zero-initialised** last
  conv, so training starts exactly at the unguided sampler.
* :class:`Critic` V̂_ψ — a strided conv encoder, global average pool, an MLP with the σ-embedding,
  one scalar per image. The explicit −λr term of the relaxed value lives outside the network
  (aid_jax.aid.losses), and the terminal value is never the network.

Parameter counts are reported against the backbone (`param_count`, `overhead`); at the default
widths the actor is ~1% of the 1.03M-parameter Fashion-MNIST backbone and ~0.03% of AFHQ's
DDPM++ (61.8M) — see docs/AID_DESIGN.md for the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SIGMA_DATA = 0.5


def actor_inputs(x, denoised, y, mask, sigma, sigma_data: float = SIGMA_DATA) -> jax.Array:
    """[c_in(σ)·x, D, y, m, m⊙(y − D)] on channels: [B, H, W, 4C + Cm]."""
    sigma = jnp.asarray(sigma, jnp.float32)
    c_in = jax.lax.rsqrt(sigma**2 + sigma_data**2)
    c_in = jnp.reshape(c_in, (-1,) + (1,) * (x.ndim - 1)) if c_in.ndim else c_in
    mask = jnp.broadcast_to(mask, x.shape[:-1] + mask.shape[-1:]).astype(x.dtype)
    y = mask * y
    return jnp.concatenate([c_in * x, denoised, y, mask, mask * (y - denoised)], axis=-1)


def noise_embedding(sigma, batch: int, dim: int) -> jax.Array:
    """Sinusoidal embedding of EDM's c_noise = ln(σ)/4, [B, dim] (σ scalar or [B])."""
    c_noise = jnp.broadcast_to(jnp.log(jnp.asarray(sigma, jnp.float32)) / 4.0, (batch,))
    half = dim // 2
    freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = c_noise[:, None] * freqs[None, :] * 100.0  # c_noise ∈ ~[-1.6, 1.1]: spread it
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _avg_pool2(h: jax.Array) -> jax.Array:
    """2×2 average pooling (flax's avg_pool divides by an int, which strict promotion rejects)."""
    b, hh, ww, c = h.shape
    return h.reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class FiLMBlock(nn.Module):
    """GroupNorm → FiLM(σ) → SiLU → conv3×3 → GroupNorm → SiLU → conv3×3, plus a residual."""

    channels: int

    @nn.compact
    def __call__(self, h, emb):
        skip = h if h.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1))(h)
        h = nn.GroupNorm(num_groups=_groups(h.shape[-1]))(h)
        scale_shift = nn.Dense(2 * h.shape[-1], kernel_init=nn.initializers.zeros)(emb)
        scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
        h = nn.silu(h * (1.0 + scale) + shift)
        h = nn.Conv(self.channels, (3, 3))(h)
        h = nn.silu(nn.GroupNorm(num_groups=_groups(self.channels))(h))
        h = nn.Conv(self.channels, (3, 3))(h)
        return skip + h


class GuidanceUNet(nn.Module):
    """μ_φ(σ, inputs) -> [B, H, W, out_channels]; zero output at initialisation."""

    out_channels: int
    channels: Sequence[int] = (8, 16, 16)  # per resolution level (each level halves H, W)
    emb_dim: int = 16

    @nn.compact
    def __call__(self, inputs, sigma):
        batch = inputs.shape[0]
        emb = noise_embedding(sigma, batch, self.emb_dim)
        emb = nn.silu(nn.Dense(self.emb_dim)(emb))
        h = nn.Conv(self.channels[0], (3, 3))(inputs)
        skips = []
        for level, ch in enumerate(self.channels):
            h = FiLMBlock(ch)(h, emb)
            if level < len(self.channels) - 1:
                skips.append(h)
                h = _avg_pool2(h)
        for ch, skip in zip(reversed(self.channels[:-1]), reversed(skips), strict=True):
            b, hh, ww, c = h.shape
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
            h = FiLMBlock(ch)(jnp.concatenate([h, skip], axis=-1), emb)
        h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1]))(h))
        return nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)


class Critic(nn.Module):
    """V̂_ψ(σ, inputs) -> [B] (the −λr term is added outside)."""

    channels: Sequence[int] = (8, 16, 32)
    emb_dim: int = 16
    hidden: int = 32

    @nn.compact
    def __call__(self, inputs, sigma):
        batch = inputs.shape[0]
        emb = noise_embedding(sigma, batch, self.emb_dim)
        h = inputs
        for ch in self.channels:
            h = nn.silu(nn.Conv(ch, (3, 3), strides=(2, 2))(h))
        h = h.mean(axis=(1, 2))
        h = jnp.concatenate([h, emb], axis=-1)
        h = nn.silu(nn.Dense(self.hidden)(h))
        h = nn.silu(nn.Dense(self.hidden)(h))
        return nn.Dense(1)(h)[:, 0]


def param_count(params) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(params)))


def overhead(module_params, backbone_params) -> float:
    """Parameters of a module as a fraction of the backbone's."""
    return param_count(module_params) / param_count(backbone_params)
