"""EDM building blocks (NVlabs/edm `training/networks.py`) as pure JAX functions.

Every layer is described by a small frozen *spec* dataclass (what the PyTorch constructor was given)
that knows the torch state-dict entries it owns (`state_shapes`) and how to run itself on a params
sub-dict (`__call__`). Networks are ordered lists of named specs, so the torch key order, the shape
validation at load time and the forward pass all come from one description.

Layouts: activations NHWC; conv kernels HWIO; linear kernels [in, out]. The torch names are kept
(`weight`, `bias`), so a params path mirrors its state-dict key. Facts: docs/EDM_REFERENCE.md §2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

Params = dict
HIGHEST = jax.lax.Precision.HIGHEST
_NHWC = ("NHWC", "HWIO", "NHWC")


def silu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def resample_kernel(resample_filter: tuple[int, ...]) -> np.ndarray:
    """The K×K FIR kernel f = outer(r, r) / (Σr)² stored by EDM as `resample_filter`."""
    r = np.asarray(resample_filter, dtype=np.float32)
    return np.outer(r, r) / np.square(r.sum())


def _depthwise(x, kernel, *, stride=1, padding=0, lhs_dilation=1):
    channels = x.shape[-1]
    k = jnp.broadcast_to(
        jnp.asarray(kernel, x.dtype)[:, :, None, None], (*kernel.shape, 1, channels)
    )
    return jax.lax.conv_general_dilated(
        x,
        k,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        lhs_dilation=(lhs_dilation, lhs_dilation),
        dimension_numbers=_NHWC,
        feature_group_count=channels,
        precision=HIGHEST,
    )


def downsample(
    x: jax.Array, resample_filter: tuple[int, ...], padding: int | None = None
) -> jax.Array:
    """Depthwise correlation with f, stride 2 (EDM Conv2d `down`)."""
    if tuple(resample_filter) == (1, 1) and not padding:
        # f = 0.25 on 2×2 without padding: exactly a 2×2 mean.
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    f = resample_kernel(resample_filter)
    pad = (f.shape[0] - 1) // 2 if padding is None else padding
    return _depthwise(x, f, stride=2, padding=pad)


def upsample(
    x: jax.Array, resample_filter: tuple[int, ...], padding: int | None = None
) -> jax.Array:
    """Depthwise transposed convolution with 4f, stride 2 (EDM Conv2d `up`)."""
    if tuple(resample_filter) == (1, 1) and not padding:
        # 4f = ones on 2×2 with stride 2: exactly nearest-neighbour ×2.
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    f = 4.0 * resample_kernel(resample_filter)
    pad = (f.shape[0] - 1) // 2 if padding is None else padding
    # A transposed convolution with padding p = dilate the input by 2, pad K-1-p, correlate
    # (f is symmetric, so no flip is needed).
    return _depthwise(x, f, padding=f.shape[0] - 1 - pad, lhs_dilation=2)


def _correlate(x: jax.Array, weight: jax.Array, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        weight.astype(x.dtype),
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=_NHWC,
        precision=HIGHEST,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, weight: jax.Array, padding: int) -> jax.Array:
    """Stride-1 cross-correlation (torch's Conv2d), HWIO kernel, ``padding`` on every side.

    Its input gradient is written as a plain correlation with the kernel flipped in space and
    its in/out channels swapped (:func:`conv_input_grad`). JAX's own transpose rule gives XLA a
    convolution that XLA:CPU runs ~4× slower inside a ``lax.scan`` body than outside (measured:
    docs/BENCHMARKS.md, "The input gradient of a convolution in a loop"); every gradient through
    the sampler loop (DPS, ΠGDM, VIPaint, AID's backprop actor) pays it at each step.
    """
    return _correlate(x, weight, padding)


def conv_input_grad(g: jax.Array, weight: jax.Array, padding: int) -> jax.Array:
    """The adjoint of ``conv(·, weight, padding)`` applied to ``g``: correlation of ``g`` padded
    by K − 1 − padding with the flipped, channel-swapped kernel (the same size as the input)."""
    k = weight.shape[0]
    flipped = jnp.flip(weight, (0, 1)).transpose(0, 1, 3, 2)
    return _correlate(g, flipped, k - 1 - padding)


def _conv_fwd(x, weight, padding):
    return _correlate(x, weight, padding), (x, weight)


def _conv_bwd(padding, residuals, g):
    x, weight = residuals
    dx = conv_input_grad(g, weight.astype(g.dtype), padding).astype(x.dtype)
    # The kernel's gradient (only pretraining needs it; XLA drops it when the kernel is frozen).
    _, weight_vjp = jax.vjp(lambda w: _correlate(x, w, padding), weight)
    return dx, weight_vjp(g)[0]


conv.defvjp(_conv_fwd, _conv_bwd)


# ---------------------------------------------------------------------------------------------
# Layer specs.


@dataclasses.dataclass(frozen=True)
class Linear:
    in_features: int
    out_features: int
    bias: bool = True

    def state_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield "weight", (self.out_features, self.in_features)
        if self.bias:
            yield "bias", (self.out_features,)

    def __call__(self, p: Params, x: jax.Array) -> jax.Array:
        y = jnp.matmul(x, p["weight"].astype(x.dtype), precision=HIGHEST)
        return y + p["bias"].astype(x.dtype) if self.bias else y


@dataclasses.dataclass(frozen=True)
class Conv2d:
    in_channels: int
    out_channels: int
    kernel: int  # 0 = resample only (no weight, no bias)
    bias: bool = True
    up: bool = False
    down: bool = False
    resample_filter: tuple[int, ...] = (1, 1)
    fused_resample: bool = False

    def state_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        if self.kernel:
            yield "weight", (self.out_channels, self.in_channels, self.kernel, self.kernel)
            if self.bias:
                yield "bias", (self.out_channels,)
        if self.up or self.down:
            k = len(self.resample_filter)
            yield "resample_filter", (1, 1, k, k)

    def __call__(self, p: Params, x: jax.Array) -> jax.Array:
        w = p["weight"] if self.kernel else None
        w_pad = self.kernel // 2
        f_pad = (len(self.resample_filter) - 1) // 2
        r = self.resample_filter
        if self.fused_resample and self.up and w is not None:
            x = upsample(x, r, padding=max(f_pad - w_pad, 0))
            x = conv(x, w, max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            # Used by NCSN++'s aux_residual: convolve first (wider padding), then filter and stride.
            x = conv(x, w, w_pad + f_pad)
            x = downsample(x, r, padding=0)
        else:
            if self.up:
                x = upsample(x, r)
            if self.down:
                x = downsample(x, r)
            if w is not None:
                x = conv(x, w, w_pad)
        if w is not None and self.bias:
            x = x + p["bias"].astype(x.dtype)
        return x


@dataclasses.dataclass(frozen=True)
class GroupNorm:
    num_channels: int
    eps: float = 1e-5
    num_groups: int = 32
    min_channels_per_group: int = 4

    @property
    def groups(self) -> int:
        return min(self.num_groups, self.num_channels // self.min_channels_per_group)

    def state_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield "weight", (self.num_channels,)
        yield "bias", (self.num_channels,)

    def __call__(self, p: Params, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        g = self.groups
        xg = x.astype(jnp.float32).reshape(b, h, w, g, c // g)
        # Two-pass (biased) variance as torch's group_norm; the one-pass E[x²]-E[x]² cancels badly.
        mean = xg.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c).astype(x.dtype)
        return y * p["weight"].astype(x.dtype) + p["bias"].astype(x.dtype)


def positional_embedding(c: jax.Array, num_channels: int, *, endpoint: bool, max_positions=10000):
    """[cos(c·f), sin(c·f)] with f_i = (1/max_positions)^(i/(N/2 - endpoint)); c is [B]."""
    half = num_channels // 2
    freqs = np.arange(half, dtype=np.float32) / np.float32(half - (1 if endpoint else 0))
    freqs = (np.float32(1.0 / max_positions) ** freqs).astype(np.float32)
    arg = c.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=1)


def fourier_embedding(c: jax.Array, freqs: jax.Array) -> jax.Array:
    """[cos(2π·c·freqs), sin(2π·c·freqs)] with the stored random `freqs` buffer (NCSN++)."""
    arg = c.astype(jnp.float32)[:, None] * (2 * np.pi * freqs.astype(jnp.float32))[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=1)


def attention(qkv: jax.Array, num_heads: int) -> jax.Array:
    """Multi-head self-attention on a fused qkv activation [B, H, W, 3C].

    EDM lays the qkv channels out as (head, c, j) with j ∈ {q, k, v} interleaved — not three
    blocks. Logits and softmax are computed in float32 (EDM's AttentionOp).
    """
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    ch = c // num_heads
    t = qkv.reshape(b, h * w, num_heads, ch, 3).astype(jnp.float32)
    q, k, v = t[..., 0], t[..., 1], t[..., 2]  # [B, HW, heads, Ch]
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k / np.sqrt(ch), precision=HIGHEST)
    weights = jax.nn.softmax(logits, axis=-1)
    a = jnp.einsum("bhqk,bkhc->bqhc", weights, v, precision=HIGHEST)
    return a.reshape(b, h, w, c).astype(qkv.dtype)


@dataclasses.dataclass(frozen=True)
class UNetBlock:
    """EDM's UNetBlock (SongUNet and DhariwalUNet flavours; EDM_REFERENCE.md §2)."""

    in_channels: int
    out_channels: int
    emb_channels: int
    up: bool = False
    down: bool = False
    num_heads: int = 0  # 0 = no attention
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: tuple[int, ...] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True

    def children(self) -> Iterator[tuple[str, object]]:
        ci, co = self.in_channels, self.out_channels
        r = self.resample_filter
        yield "norm0", GroupNorm(ci, eps=self.eps)
        yield "conv0", Conv2d(ci, co, 3, up=self.up, down=self.down, resample_filter=r)
        yield "affine", Linear(self.emb_channels, co * (2 if self.adaptive_scale else 1))
        yield "norm1", GroupNorm(co, eps=self.eps)
        yield "conv1", Conv2d(co, co, 3)
        if co != ci or self.up or self.down:
            kernel = 1 if self.resample_proj or co != ci else 0
            yield "skip", Conv2d(ci, co, kernel, up=self.up, down=self.down, resample_filter=r)
        if self.num_heads:
            yield "norm2", GroupNorm(co, eps=self.eps)
            yield "qkv", Conv2d(co, co * 3, 1)
            yield "proj", Conv2d(co, co, 1)

    def state_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from module_state_shapes(self.children())

    def __call__(self, p: Params, x: jax.Array, emb: jax.Array) -> jax.Array:
        m = dict(self.children())
        orig = x
        x = m["conv0"](p.get("conv0", {}), silu(m["norm0"](p["norm0"], x)))
        params = m["affine"](p["affine"], emb)[:, None, None, :].astype(x.dtype)
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            x = silu(shift + m["norm1"](p["norm1"], x) * (scale + 1))
        else:
            x = silu(m["norm1"](p["norm1"], x + params))
        x = m["conv1"](p["conv1"], x)  # dropout is off at inference
        x = x + (m["skip"](p.get("skip", {}), orig) if "skip" in m else orig)
        x = x * self.skip_scale
        if self.num_heads:
            qkv = m["qkv"](p["qkv"], m["norm2"](p["norm2"], x))
            x = m["proj"](p["proj"], attention(qkv, self.num_heads)) + x
            x = x * self.skip_scale
        return x


def module_state_shapes(children) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Flatten (name, spec) children into dotted torch keys, in torch's state_dict order."""
    for name, spec in children:
        for key, shape in spec.state_shapes():
            yield f"{name}.{key}", shape


def num_params_from_shapes(shapes: dict[str, tuple[int, ...]], buffers=("resample_filter",)) -> int:
    """Number of parameters (buffers such as resample filters and Fourier freqs excluded)."""
    return sum(math.prod(s) for k, s in shapes.items() if k.rsplit(".", 1)[-1] not in buffers)
