"""EDM2 magnitude-preserving UNet and its ``Precond`` as pure JAX functions.

Written from the description in ``EDM_REFERENCE.md`` (§1 preconditioning, §5 the UNet,
§7 key names and layouts, §12 pitfalls); no NVIDIA code is used. Activations are NHWC, conv
kernels HWIO, linear kernels [in, out], everything float32.

Parameters are a nested dict mirroring the torch module path of NVIDIA's ``Precond`` state dict,
e.g. ``params['unet']['enc']['16x16_block0']['conv_res0']['weight']``. The forced weight
normalisation of MPConv is baked once at load time (``params_from_state``); the learned scalar
gains ``emb_gain`` and ``out_gain`` stay scalar leaves and are applied at run time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import layers

__all__ = [
    "EDM2Config",
    "denoise",
    "init_state",
    "logvar",
    "mp_cat",
    "mp_fourier",
    "mp_silu",
    "mp_sum",
    "mpconv_weight",
    "normalize",
    "num_params",
    "params_from_state",
    "pixel_norm",
    "precond_coeffs",
    "resample",
    "state_shapes",
    "unet",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_EPS = 1e-4  # §5 normalize epsilon


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EDM2Config:
    """Constructor arguments of NVIDIA's EDM2 ``Precond`` and the UNet/Block kwargs it forwards.

    Hashable (tuples only) so it can be a static ``jit`` argument. ``use_fp16`` and ``dropout``
    are accepted for compatibility and ignored: this port always runs in float32 at inference.
    """

    img_resolution: int
    img_channels: int
    label_dim: int = 0
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_noise: int | None = None
    channel_mult_emb: int | None = None
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16, 8)
    label_balance: float = 0.5
    concat_balance: float = 0.5
    sigma_data: float = 0.5
    logvar_channels: int = 128
    use_fp16: bool = True  # ignored (execution dtype only)
    channels_per_head: int = 64
    dropout: float = 0.0  # ignored (inference)
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float | None = 256
    resample_filter: tuple[int, ...] = (1, 1)

    def __post_init__(self) -> None:
        # Accept lists (as stored in _init_kwargs) but keep the dataclass hashable.
        for name in ("channel_mult", "attn_resolutions", "resample_filter"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if tuple(self.resample_filter) != (1, 1):
            raise ValueError(
                f"resample_filter={list(self.resample_filter)} is not supported; EDM2 uses [1, 1] "
                "(2x2 mean pooling / nearest upsampling, §5)"
            )
        if not self.channel_mult:
            raise ValueError("channel_mult must not be empty")
        if self.img_resolution % (1 << (len(self.channel_mult) - 1)) != 0:
            raise ValueError(
                f"img_resolution={self.img_resolution} is not divisible by "
                f"2**{len(self.channel_mult) - 1} (one halving per level)"
            )

    @classmethod
    def from_init_kwargs(cls, kwargs: Mapping[str, Any]) -> EDM2Config:
        """Build from a ``Precond._init_kwargs`` dict; unknown keys raise ``ValueError``."""
        accepted = [f.name for f in dataclasses.fields(cls)]
        for key in kwargs:
            if key not in accepted:
                raise ValueError(
                    f"unknown EDM2 Precond init kwarg {key!r}; accepted: {', '.join(accepted)}"
                )
        for key in ("img_resolution", "img_channels"):
            if key not in kwargs:
                raise ValueError(f"EDM2 Precond init kwargs lack the required key {key!r}")
        return cls(**dict(kwargs))

    # Derived widths (§5 UNet): cblock = mc*mult, cnoise = cblock[0], cemb = max(cblock).
    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def noise_channels(self) -> int:
        if self.channel_mult_noise is not None:
            return self.model_channels * self.channel_mult_noise
        return self.block_channels[0]

    @property
    def emb_channels(self) -> int:
        if self.channel_mult_emb is not None:
            return self.model_channels * self.channel_mult_emb
        return max(self.block_channels)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """One entry of ``enc``/``dec``: either the input MPConv ('conv') or a Block ('enc'/'dec')."""

    name: str
    kind: str  # 'conv' | 'enc' | 'dec'
    cin: int
    cout: int
    resample: str = "keep"  # 'keep' | 'down' | 'up'
    num_heads: int = 0


def _topology(cfg: EDM2Config) -> tuple[list[_Spec], list[_Spec]]:
    """Encoder and decoder modules in torch insertion order (§5 UNet)."""
    cblock = cfg.block_channels

    def heads(res: int, cout: int, attention: bool) -> int:
        # num_heads = out // channels_per_head when attention is on; 0 heads = no attention.
        n = cout // cfg.channels_per_head if attention else 0
        if n and cout % n:
            raise ValueError(f"{cout} channels cannot be split into {n} attention heads")
        return n

    enc: list[_Spec] = []
    cout = cfg.img_channels + 1  # + ones channel
    for level, channels in enumerate(cblock):
        res = cfg.img_resolution >> level
        if level == 0:
            cin, cout = cout, channels
            enc.append(_Spec(f"{res}x{res}_conv", "conv", cin, cout))
        else:
            enc.append(_Spec(f"{res}x{res}_down", "enc", cout, cout, "down"))
        for idx in range(cfg.num_blocks):
            cin, cout = cout, channels
            attn = res in cfg.attn_resolutions
            enc.append(
                _Spec(f"{res}x{res}_block{idx}", "enc", cin, cout, "keep", heads(res, cout, attn))
            )

    skips = [s.cout for s in enc]
    dec: list[_Spec] = []
    for level, channels in reversed(list(enumerate(cblock))):
        res = cfg.img_resolution >> level
        if level == len(cblock) - 1:
            dec.append(_Spec(f"{res}x{res}_in0", "dec", cout, cout, "keep", heads(res, cout, True)))
            dec.append(_Spec(f"{res}x{res}_in1", "dec", cout, cout))
        else:
            dec.append(_Spec(f"{res}x{res}_up", "dec", cout, cout, "up"))
        for idx in range(cfg.num_blocks + 1):
            cin, cout = cout + skips.pop(), channels
            attn = res in cfg.attn_resolutions
            dec.append(
                _Spec(f"{res}x{res}_block{idx}", "dec", cin, cout, "keep", heads(res, cout, attn))
            )
    return enc, dec


def _block_shapes(spec: _Spec, cemb: int) -> list[tuple[str, tuple[int, ...]]]:
    """Block tensors in torch order: own parameter emb_gain, then children in constructor order."""
    conv_res0_in = spec.cout if spec.kind == "enc" else spec.cin
    out = [
        ("emb_gain", ()),
        ("conv_res0.weight", (spec.cout, conv_res0_in, 3, 3)),
        ("emb_linear.weight", (spec.cout, cemb)),
        ("conv_res1.weight", (spec.cout, spec.cout, 3, 3)),
    ]
    if spec.cin != spec.cout:
        out.append(("conv_skip.weight", (spec.cout, spec.cin, 1, 1)))
    if spec.num_heads:
        out.append(("attn_qkv.weight", (3 * spec.cout, spec.cout, 1, 1)))
        out.append(("attn_proj.weight", (spec.cout, spec.cout, 1, 1)))
    return out


def state_shapes(cfg: EDM2Config) -> dict[str, tuple[int, ...]]:
    """Torch state-dict keys of EDM2 ``Precond`` in ``state_dict()`` order, torch shapes (§7)."""
    cemb, cnoise = cfg.emb_channels, cfg.noise_channels
    shapes: dict[str, tuple[int, ...]] = {
        "unet.out_gain": (),
        "unet.emb_fourier.freqs": (cnoise,),
        "unet.emb_fourier.phases": (cnoise,),
        "unet.emb_noise.weight": (cemb, cnoise),
    }
    if cfg.label_dim:
        shapes["unet.emb_label.weight"] = (cemb, cfg.label_dim)
    enc, dec = _topology(cfg)
    for group, specs in (("enc", enc), ("dec", dec)):
        for spec in specs:
            prefix = f"unet.{group}.{spec.name}"
            if spec.kind == "conv":
                shapes[f"{prefix}.weight"] = (spec.cout, spec.cin, 3, 3)
            else:
                for name, shape in _block_shapes(spec, cemb):
                    shapes[f"{prefix}.{name}"] = shape
    shapes["unet.out_conv.weight"] = (cfg.img_channels, cfg.block_channels[0], 3, 3)
    shapes["logvar_fourier.freqs"] = (cfg.logvar_channels,)
    shapes["logvar_fourier.phases"] = (cfg.logvar_channels,)
    shapes["logvar_linear.weight"] = (1, cfg.logvar_channels)
    return shapes


def _is_buffer(key: str) -> bool:
    # MPFourier freqs/phases are buffers, not parameters (§7).
    return key.endswith(".freqs") or key.endswith(".phases")


def num_params(cfg: EDM2Config) -> int:
    """Number of parameters (every tensor except the MPFourier freqs/phases buffers)."""
    return sum(math.prod(s) for k, s in state_shapes(cfg).items() if not _is_buffer(k))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def mpconv_weight(w: np.ndarray) -> np.ndarray:
    """Bake MPConv's forced weight normalisation (§5): normalize(w) / sqrt(fan_in).

    Upcasts to float32 *before* normalising (§7): post-hoc-EMA float16 rows are not exactly unit
    norm, so skipping this changes the output (§12 #8). Returns the JAX layout: OIHW -> HWIO,
    [out, in] -> [in, out].
    """
    w = np.asarray(w).astype(np.float32)
    fan_in = math.prod(w.shape[1:])
    axes = tuple(range(1, w.ndim))
    norm = np.sqrt(np.sum(np.square(w), axis=axes, keepdims=True, dtype=np.float32))
    # normalize(): eps + ||row|| * sqrt(n_norm / n_x) = eps + RMS(row).
    norm = np.float32(_EPS) + norm * np.float32(math.sqrt(1.0 / fan_in))
    w = (w / norm) * np.float32(1.0 / math.sqrt(fan_in))
    if w.ndim == 4:
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    if w.ndim == 2:
        return np.ascontiguousarray(w.T)
    raise ValueError(f"MPConv weight must be 2-D or 4-D, got shape {w.shape}")


def _check_state(state: Mapping[str, Any], cfg: EDM2Config) -> None:
    expected = state_shapes(cfg)
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r}: expected shape {shape}, found none")
        elif tuple(np.shape(state[key])) != shape:
            problems.append(
                f"shape mismatch for {key!r}: expected shape {shape}, "
                f"found shape {tuple(np.shape(state[key]))}"
            )
    for key in state:
        if key not in expected:
            problems.append(
                f"unexpected key {key!r}: expected none, found shape {tuple(np.shape(state[key]))}"
            )
    if problems:
        raise ValueError(
            f"EDM2 state dict does not match the config ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )


def params_from_state(state: Mapping[str, np.ndarray], cfg: EDM2Config) -> dict:
    """Torch state dict (float16/float32 numpy) -> nested float32 params, weights normalised."""
    _check_state(state, cfg)
    params: dict = {}
    for key in state_shapes(cfg):
        *path, leaf = key.split(".")
        value = np.asarray(state[key])
        if leaf == "weight":
            arr = mpconv_weight(value)
        else:  # gains and freqs/phases: upcast only, used as stored (§12 EDM2 extras)
            arr = value.astype(np.float32)
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(arr)
    return params


def init_state(key: jax.Array, cfg: EDM2Config) -> dict[str, np.ndarray]:
    """Random torch-layout float32 state dict: weights N(0, 1), gains 0.5*N(0, 1).

    freqs/phases follow MPFourier's init (2*pi*randn, 2*pi*rand). For benchmarks and smoke tests.
    """
    shapes = state_shapes(cfg)
    sizes = [math.prod(s) for s in shapes.values()]
    # Two flat draws sliced on the host: per-tensor RNG calls compile once per shape (slow on CPU).
    k_normal, k_uniform = jax.random.split(key)
    normal = np.asarray(jax.random.normal(k_normal, (sum(sizes),), jnp.float32))
    n_phases = sum(z for k, z in zip(shapes, sizes, strict=True) if k.endswith(".phases"))
    uniform = np.asarray(jax.random.uniform(k_uniform, (n_phases,), jnp.float32))
    state, offset, u_offset = {}, 0, 0
    for (name, shape), size in zip(shapes.items(), sizes, strict=True):
        if name.endswith(".phases"):
            phases = uniform[u_offset : u_offset + size].reshape(shape)
            state[name] = (phases * np.float32(2 * math.pi)).astype(np.float32)
            u_offset += size
            continue
        if name.endswith(".freqs"):
            scale, src = 2 * math.pi, normal
        elif name.endswith("_gain"):
            scale, src = 0.5, normal
        else:
            scale, src = 1.0, normal
        chunk = src[offset : offset + size].reshape(shape)
        state[name] = (chunk * np.float32(scale)).astype(np.float32)
        offset += size
    return state


# --------------------------------------------------------------------------------------------------
# Magnitude-preserving primitives (§5)
# --------------------------------------------------------------------------------------------------


def normalize(x: jax.Array, axis: int | tuple[int, ...], eps: float = _EPS) -> jax.Array:
    """x / (eps + ||x||_axis * sqrt(n_norm / n_x)) = x / (eps + RMS over ``axis``), float32 norm."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    n = math.prod(x.shape[a] for a in axes)
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=axes, keepdims=True))
    norm = eps + norm * math.sqrt(1.0 / n)
    return x / norm.astype(x.dtype)


def pixel_norm(x: jax.Array) -> jax.Array:
    """Normalise every pixel over its channels (NHWC: last axis)."""
    return normalize(x, axis=-1 % x.ndim)


def mp_silu(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x) / 0.596


def _lerp(a: jax.Array, b: jax.Array, t: float) -> jax.Array:
    # Same two-branch formula as torch.lerp, so the rounding matches at t = 0.5.
    return a + t * (b - a) if t < 0.5 else b - (b - a) * (1.0 - t)


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
    """((1-t)a + tb) / sqrt((1-t)^2 + t^2)."""
    return _lerp(a, b, t) / math.sqrt((1.0 - t) ** 2 + t**2)


def mp_cat(a: jax.Array, b: jax.Array, t: float = 0.5, axis: int = -1) -> jax.Array:
    """Magnitude-preserving concat along ``axis``; ``a`` first (§12 #9: the skip goes second)."""
    na, nb = a.shape[axis], b.shape[axis]
    c = math.sqrt((na + nb) / ((1.0 - t) ** 2 + t**2))
    wa = c / math.sqrt(na) * (1.0 - t)
    wb = c / math.sqrt(nb) * t
    return jnp.concatenate([wa * a, wb * b], axis=axis)


def mp_fourier(x: jax.Array, freqs: jax.Array, phases: jax.Array) -> jax.Array:
    """MPFourier: sqrt(2) * cos(outer(x, freqs) + phases), float32; x [B] -> [B, N]."""
    y = x.astype(jnp.float32)[:, None] * freqs.astype(jnp.float32)[None, :]
    y = y + phases.astype(jnp.float32)[None, :]
    return jnp.cos(y) * math.sqrt(2.0)


def resample(x: jax.Array, mode: str) -> jax.Array:
    """[1, 1] filter (§2, §5), NHWC: 'down' = 2x2 mean, 'up' = nearest x2, 'keep' = identity."""
    if mode == "keep":
        return x
    if mode == "down":
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4)) * 0.25
    if mode == "up":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    raise ValueError(f"unknown resample mode {mode!r}")


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    # Cross-correlation as in torch (no flip), padding kernel//2 (§5 MPConv); layers.conv's
    # input gradient stays fast inside the samplers' loops.
    return layers.conv(x, w, w.shape[0] // 2)


def _linear(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w.astype(x.dtype), precision=_HIGHEST)


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


def _attention(p: Mapping, x: jax.Array, num_heads: int, cfg: EDM2Config) -> jax.Array:
    b, h, w, c = x.shape
    c_head = c // num_heads
    y = _conv(x, p["attn_qkv"]["weight"])
    # qkv channels are interleaved as (head, c_head, 3) (§5 step 8, §7), not [q|k|v] blocks.
    y = y.reshape(b, h * w, num_heads, c_head, 3).astype(jnp.float32)
    y = normalize(y, axis=3)  # pixel norm of q, k, v per head
    q, k, v = y[..., 0], y[..., 1], y[..., 2]
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k / math.sqrt(c_head), precision=_HIGHEST)
    weights = jax.nn.softmax(logits, axis=-1)
    a = jnp.einsum("bhqk,bkhc->bqhc", weights, v, precision=_HIGHEST)
    y = _conv(a.reshape(b, h, w, c).astype(x.dtype), p["attn_proj"]["weight"])
    return mp_sum(x, y, cfg.attn_balance)


def _block(p: Mapping, x: jax.Array, emb: jax.Array, spec: _Spec, cfg: EDM2Config) -> jax.Array:
    """EDM2 Block (§5): residual branch, optional attention, activation clip."""
    x = resample(x, spec.resample)
    if spec.kind == "enc":
        if spec.cin != spec.cout:
            x = _conv(x, p["conv_skip"]["weight"])
        x = pixel_norm(x)
    y = _conv(mp_silu(x), p["conv_res0"]["weight"])
    c = _linear(emb, p["emb_linear"]["weight"] * p["emb_gain"]) + 1.0
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    y = _conv(y, p["conv_res1"]["weight"])
    if spec.kind == "dec" and spec.cin != spec.cout:
        x = _conv(x, p["conv_skip"]["weight"])
    x = mp_sum(x, y, cfg.res_balance)
    if spec.num_heads:
        x = _attention(p, x, spec.num_heads, cfg)
    if cfg.clip_act is not None:
        x = jnp.clip(x, -cfg.clip_act, cfg.clip_act)
    return x


def unet(
    params_unet: Mapping,
    x: jax.Array,
    c_noise: jax.Array,
    labels: jax.Array | None,
    cfg: EDM2Config,
) -> jax.Array:
    """The raw network F (§5 UNet): x [B,H,W,C] (already times c_in), c_noise [B] -> NHWC."""
    p = params_unet
    emb = _linear(
        mp_fourier(c_noise, p["emb_fourier"]["freqs"], p["emb_fourier"]["phases"]),
        p["emb_noise"]["weight"],
    )
    if cfg.label_dim:
        scaled = labels.astype(jnp.float32) * math.sqrt(labels.shape[1])
        emb = mp_sum(emb, _linear(scaled, p["emb_label"]["weight"]), cfg.label_balance)
    emb = mp_silu(emb)

    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)  # ones channel last (§5)
    enc, dec = _topology(cfg)
    skips = []
    for spec in enc:
        pb = p["enc"][spec.name]
        x = _conv(x, pb["weight"]) if spec.kind == "conv" else _block(pb, x, emb, spec, cfg)
        skips.append(x)
    for spec in dec:
        if "block" in spec.name:
            x = mp_cat(x, skips.pop(), cfg.concat_balance)  # x first (§12 #9)
        x = _block(p["dec"][spec.name], x, emb, spec, cfg)
    return _conv(x, p["out_conv"]["weight"] * p["out_gain"])


def precond_coeffs(
    sigma: jax.Array, sigma_data: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise) of EDM2 Precond (§1), each shaped like ``sigma``."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sd2)
    c_in = 1.0 / jnp.sqrt(sd2 + sigma**2)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def denoise(
    params: Mapping,
    x: jax.Array,
    sigma: jax.Array,
    labels: jax.Array | None,
    cfg: EDM2Config,
    compute_dtype=jnp.float32,
) -> jax.Array:
    """D(x; sigma) of EDM2 Precond. x [B,H,W,C] NHWC, sigma [B], labels [B,label_dim] or None.

    `compute_dtype` (e.g. bfloat16) is the activation dtype inside the UNet; the embedding,
    norms, softmax, preconditioning and D stay float32.
    """
    x = jnp.asarray(x).astype(jnp.float32)
    sigma = jnp.asarray(sigma).astype(jnp.float32).reshape(-1)
    if cfg.label_dim:
        if labels is None:  # NVIDIA uses a zero vector, broadcast over the batch (§1)
            labels = jnp.zeros((1, cfg.label_dim), jnp.float32)
        else:
            labels = jnp.asarray(labels).astype(jnp.float32).reshape(-1, cfg.label_dim)
    else:
        labels = None
    c_skip, c_out, c_in, c_noise = precond_coeffs(sigma, cfg.sigma_data)
    bc = (slice(None), None, None, None)
    f = unet(params["unet"], (c_in[bc] * x).astype(compute_dtype), c_noise, labels, cfg)
    return c_skip[bc] * x + c_out[bc] * f.astype(jnp.float32)


def logvar(params: Mapping, sigma: jax.Array, cfg: EDM2Config) -> jax.Array:
    """Uncertainty head logvar(sigma) = logvar_linear(logvar_fourier(c_noise)), shape [B] (§1)."""
    del cfg  # kept for a uniform signature
    sigma = jnp.asarray(sigma).astype(jnp.float32).reshape(-1)
    c_noise = jnp.log(sigma) / 4.0
    y = mp_fourier(c_noise, params["logvar_fourier"]["freqs"], params["logvar_fourier"]["phases"])
    return _linear(y, params["logvar_linear"]["weight"])[:, 0]
