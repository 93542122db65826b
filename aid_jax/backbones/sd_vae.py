"""Stability's SD VAE (diffusers ``AutoencoderKL``, the ``sd-vae-ft-mse`` layout) in pure JAX,
and EDM2's latent scaling (NVlabs/edm2 ``training/encoders.py``, ``StabilityVAEEncoder``).

Written from the description in ``EDM_REFERENCE.md`` §6 and ``docs/LATENT.md``; no diffusers or
NVIDIA code is used. Activations are NHWC float32, conv kernels HWIO, linear kernels [in, out].
Parameters are a nested dict mirroring diffusers' state-dict keys, e.g.
``params['encoder']['down_blocks']['0']['resnets']['1']['conv1']['weight']`` is torch's
``encoder.down_blocks.0.resnets.1.conv1.weight`` in HWIO (torch: OIHW); every leaf keeps torch's
name (``weight``/``bias``), so a params path is its state-dict key.

Pure functions (``config`` static, jit-able): ``encode_moments`` (quant_conv(encoder(x)):
[mean | logvar] on the channels), ``mean_std``, ``decode`` (decoder(post_quant_conv(z))), and the
EDM2 scaling ``LatentScaling`` (``to_final`` / ``to_raw``). ``VAE`` bundles params, config,
scaling and the provenance manifest, with jitted ``encode`` / ``decode``. Reading diffusers
folders and ported folders: ``vae_loader.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import layers
from aid_jax.backbones.loader import BackboneError, describe_key_mismatch

__all__ = [
    "EDM2_LATENT_SCALING",
    "VAE",
    "LatentScaling",
    "VAEConfig",
    "VAEError",
    "canonical_state",
    "check_images",
    "check_latents",
    "check_params",
    "decode",
    "encode_moments",
    "init_params",
    "init_state",
    "mean_std",
    "num_params",
    "param_shapes",
    "params_from_state",
    "pixels_from_uint8",
    "state_shapes",
    "uint8_from_pixels",
    "validate_state",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_NHWC = ("NHWC", "HWIO", "NHWC")
NORM_EPS = 1e-6  # diffusers' Encoder/Decoder pass eps=1e-6 to every GroupNorm (§6)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamps logvar to this


class VAEError(BackboneError):
    """A VAE folder, config, parameter tree or input that does not fit; says what to do."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

# diffusers AutoencoderKL config keys that do not change the encoder/decoder computation.
_INFORMATIONAL_KEYS = (
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
    "force_upcast",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "sample_size",
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The architecture arguments of diffusers' ``AutoencoderKL`` (defaults: ``sd-vae-ft-mse``).

    Hashable (tuples only), so it can be a static ``jit`` argument. ``sample_size`` and
    ``scaling_factor`` are recorded but unused: images of any size that is a multiple of
    ``downsample_factor`` are accepted, and EDM2 scales latents with ``LatentScaling`` instead of
    diffusers' single 0.18215.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 256
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215

    def __post_init__(self) -> None:
        if not isinstance(self.block_out_channels, tuple):
            object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        ints = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
        }
        for i, c in enumerate(self.block_out_channels):
            ints[f"block_out_channels[{i}]"] = c
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.block_out_channels:
            raise ValueError("block_out_channels must not be empty")
        for name in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("sample_size", "scaling_factor"):  # recorded only, but must be numbers
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {list(self.block_out_channels)} are not all divisible "
                    f"by norm_num_groups={self.norm_num_groups} (GroupNorm groups)"
                )

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along each axis: one ×2 downsampler per level but the last."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any], source: str = "") -> VAEConfig:
        """From a diffusers ``config.json`` dict; anything but an ``AutoencoderKL`` of
        DownEncoderBlock2D/UpDecoderBlock2D levels with SiLU raises ``VAEError``."""
        where = f"{source}: " if source else ""

        def refuse(what: str) -> VAEError:
            return VAEError(
                f"{where}{what}. Expected the config.json of a diffusers AutoencoderKL of the "
                "sd-vae-ft-mse family (e.g. stabilityai/sd-vae-ft-mse)."
            )

        if not isinstance(config, Mapping):
            raise refuse(f"the config is a {type(config).__name__}, not a JSON object")
        name = config.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise refuse(f"_class_name is {name!r}, another architecture than AutoencoderKL")
        kwargs: dict[str, Any] = {}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in config if k not in fields and k not in _INFORMATIONAL_KEYS]
        unknown = [k for k in unknown if k not in ("down_block_types", "up_block_types", "act_fn")]
        if unknown:
            raise refuse(f"unsupported AutoencoderKL option(s) {sorted(unknown)}")
        for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types"):
            if key not in config:
                raise refuse(f"the config lacks the required key {key!r}")
        channels = config["block_out_channels"]
        if not isinstance(channels, list | tuple) or not channels:
            raise refuse(f"block_out_channels is {channels!r}, expected a non-empty list")
        for key, block in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            types = config[key]
            if not isinstance(types, list | tuple) or list(types) != [block] * len(channels):
                raise refuse(
                    f"{key} is {types!r}; this port supports {len(channels)} x {block!r} "
                    "(one per block_out_channels entry)"
                )
        if config.get("act_fn", "silu") != "silu":
            raise refuse(f"act_fn is {config['act_fn']!r}; only 'silu' is supported")
        for key in fields:
            if key in config and config[key] is not None:
                kwargs[key] = config[key]
        # diffusers' own defaults for keys older configs (sd-vae-ft-mse, diffusers 0.4) lack.
        kwargs.setdefault("latent_channels", 4)
        kwargs.setdefault("norm_num_groups", 32)
        kwargs.setdefault("sample_size", 32)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise refuse(str(e)) from None

    def to_diffusers_config(self) -> dict[str, Any]:
        """The equivalent diffusers config dict (architecture keys only)."""
        n = len(self.block_out_channels)
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["block_out_channels"] = list(self.block_out_channels)
        out["down_block_types"] = ["DownEncoderBlock2D"] * n
        out["up_block_types"] = ["UpDecoderBlock2D"] * n
        out["act_fn"] = "silu"
        return {"_class_name": "AutoencoderKL", **dict(sorted(out.items()))}


# --------------------------------------------------------------------------------------------------
# State-dict layout (diffusers key names, torch shapes, state_dict() order)
# --------------------------------------------------------------------------------------------------


def _resnet_shapes(prefix: str, cin: int, cout: int) -> list[tuple[str, tuple[int, ...]]]:
    # ResnetBlock2D registers norm1, conv1, norm2, conv2, then conv_shortcut (1x1) when in != out.
    out = [
        (f"{prefix}.norm1.weight", (cin,)),
        (f"{prefix}.norm1.bias", (cin,)),
        (f"{prefix}.conv1.weight", (cout, cin, 3, 3)),
        (f"{prefix}.conv1.bias", (cout,)),
        (f"{prefix}.norm2.weight", (cout,)),
        (f"{prefix}.norm2.bias", (cout,)),
        (f"{prefix}.conv2.weight", (cout, cout, 3, 3)),
        (f"{prefix}.conv2.bias", (cout,)),
    ]
    if cin != cout:
        out += [(f"{prefix}.conv_shortcut.weight", (cout, cin, 1, 1))]
        out += [(f"{prefix}.conv_shortcut.bias", (cout,))]
    return out


def _mid_block_shapes(prefix: str, c: int, attention: bool) -> list[tuple[str, tuple[int, ...]]]:
    # UNetMidBlock2D registers its attentions before its resnets (run order: r0, a0, r1).
    out: list[tuple[str, tuple[int, ...]]] = []
    if attention:
        a = f"{prefix}.attentions.0"
        out += [(f"{a}.group_norm.weight", (c,)), (f"{a}.group_norm.bias", (c,))]
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            out += [(f"{a}.{proj}.weight", (c, c)), (f"{a}.{proj}.bias", (c,))]
    out += _resnet_shapes(f"{prefix}.resnets.0", c, c)
    out += _resnet_shapes(f"{prefix}.resnets.1", c, c)
    return out


def _conv_shapes(name: str, cout: int, cin: int, k: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.weight", (cout, cin, k, k)), (f"{name}.bias", (cout,))]


def state_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """diffusers ``AutoencoderKL.state_dict()`` keys in order, with torch shapes (§6)."""
    chans, n, lat = cfg.block_out_channels, len(cfg.block_out_channels), cfg.latent_channels
    out = _conv_shapes("encoder.conv_in", chans[0], cfg.in_channels, 3)
    cin = chans[0]
    for i, cout in enumerate(chans):
        for j in range(cfg.layers_per_block):
            out += _resnet_shapes(f"encoder.down_blocks.{i}.resnets.{j}", cin, cout)
            cin = cout
        if i < n - 1:
            out += _conv_shapes(f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
    out += _mid_block_shapes("encoder.mid_block", chans[-1], cfg.mid_block_add_attention)
    out += [("encoder.conv_norm_out.weight", (chans[-1],))]
    out += [("encoder.conv_norm_out.bias", (chans[-1],))]
    out += _conv_shapes("encoder.conv_out", 2 * lat, chans[-1], 3)  # double_z: mean | logvar

    out += _conv_shapes("decoder.conv_in", chans[-1], lat, 3)
    cin = chans[-1]
    for i, cout in enumerate(reversed(chans)):
        for j in range(cfg.layers_per_block + 1):
            out += _resnet_shapes(f"decoder.up_blocks.{i}.resnets.{j}", cin, cout)
            cin = cout
        if i < n - 1:
            out += _conv_shapes(f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    out += _mid_block_shapes("decoder.mid_block", chans[-1], cfg.mid_block_add_attention)
    out += [("decoder.conv_norm_out.weight", (chans[0],))]
    out += [("decoder.conv_norm_out.bias", (chans[0],))]
    out += _conv_shapes("decoder.conv_out", cfg.out_channels, chans[0], 3)
    if cfg.use_quant_conv:
        out += _conv_shapes("quant_conv", 2 * lat, 2 * lat, 1)
    if cfg.use_post_quant_conv:
        out += _conv_shapes("post_quant_conv", lat, lat, 1)
    return dict(out)


def num_params(cfg: VAEConfig) -> int:
    """Number of parameters (the VAE has no buffers): 83,653,863 for sd-vae-ft-mse."""
    return sum(math.prod(s) for s in state_shapes(cfg).values())


def _jax_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # OIHW -> HWIO
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:  # [out, in] -> [in, out]
        return (shape[1], shape[0])
    return tuple(shape)


def param_shapes(cfg: VAEConfig) -> dict:
    """Nested dict of the params' shapes (JAX layouts), keyed like the state dict."""
    tree: dict = {}
    for key, shape in state_shapes(cfg).items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = _jax_shape(shape)
    return tree


# Checkpoints written by diffusers < 0.15 (sd-vae-ft-mse among them) name the mid-block attention
# projections query/key/value/proj_attn; current diffusers renames them on load (§6).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def canonical_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename legacy attention keys to current diffusers names and squeeze their [C, C, 1, 1]
    1x1-conv form to [C, C]. Returns the new dict (same order) and the renamed source keys."""
    out: dict[str, np.ndarray] = {}
    renamed = []
    for key, value in state.items():
        parts = key.split(".")
        new = key
        if len(parts) >= 5 and parts[-4] == "attentions" and parts[-2] in _LEGACY_ATTENTION:
            new = ".".join([*parts[:-2], _LEGACY_ATTENTION[parts[-2]], parts[-1]])
            renamed.append(key)
        if ".attentions." in new and new.endswith(".weight") and np.ndim(value) == 4:
            if tuple(np.shape(value)[2:]) == (1, 1):
                value = np.asarray(value).reshape(np.shape(value)[:2])
        if new in out:
            raise VAEError(f"the state dict holds both {new!r} and its legacy name {key!r}")
        out[new] = value
    return out, renamed


def validate_state(state: Mapping[str, Any], cfg: VAEConfig, source: str = "") -> None:
    """Missing keys, unexpected keys, shapes and dtypes, each named (``VAEError``)."""
    where = f"{source}: " if source else ""
    expected = state_shapes(cfg)
    arch = (
        f"AutoencoderKL block_out_channels={list(cfg.block_out_channels)}, "
        f"layers_per_block={cfg.layers_per_block}, latent_channels={cfg.latent_channels}"
    )
    mismatch = describe_key_mismatch(expected, state)
    if mismatch:
        raise VAEError(
            f"{where}the weights do not fit the config's architecture ({arch}): "
            f"{mismatch}. Use the config.json and weights of the same VAE folder."
        )
    for key, shape in expected.items():
        got = tuple(np.shape(state[key]))
        if got != shape:
            raise VAEError(
                f"{where}tensor {key} has shape {got}, expected {shape} for {arch}. Use the "
                "config.json and weights of the same VAE folder."
            )
        dtype = np.asarray(state[key]).dtype
        if not np.issubdtype(dtype, np.floating):
            raise VAEError(f"{where}tensor {key} has dtype {dtype}, expected floating point")


def params_from_state(state: Mapping[str, np.ndarray], cfg: VAEConfig, source: str = "") -> dict:
    """diffusers state dict (torch layouts, any float dtype, current or legacy attention names)
    -> nested float32 params in JAX layouts."""
    state, _ = canonical_state(state)
    validate_state(state, cfg, source)
    params: dict = {}
    for key, shape in state_shapes(cfg).items():
        value = np.asarray(state[key]).astype(np.float32, copy=False)
        if len(shape) == 4:
            value = value.transpose(2, 3, 1, 0)
        elif len(shape) == 2:
            value = value.T
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(value)
    return params


def init_state(key: jax.Array, cfg: VAEConfig) -> dict[str, np.ndarray]:
    """Random torch-layout float32 state dict for smoke tests and benchmarks: kernels
    N(0, 1/fan_in), biases N(0, 0.02²), GroupNorm scales 1 + N(0, 0.02²).

    Drawn by NumPy's generator seeded from ``key``: for the 84M values of sd-vae-ft-mse it is
    ~5x faster on the CPU than jax.random (measured 2 s against 10 s on a busy core)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    state = {}
    for name, shape in state_shapes(cfg).items():
        value = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) > 1:
            value *= np.float32(1.0 / math.sqrt(math.prod(shape[1:])))
        else:
            value *= np.float32(0.02)
            if name.endswith(".weight"):  # the only 1-D weights are GroupNorm scales
                value += np.float32(1.0)
        state[name] = value
    return state


def init_params(key: jax.Array, cfg: VAEConfig) -> dict:
    """Random params of the right structure (``init_state`` converted)."""
    return params_from_state(init_state(key, cfg), cfg)


# --------------------------------------------------------------------------------------------------
# Input and parameter checks (static: they run at trace time, before anything compiles)
# --------------------------------------------------------------------------------------------------


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_params(params, cfg: VAEConfig, name: str = "VAE params") -> None:
    """``params`` must have exactly the names and shapes ``cfg`` implies (first mismatch named)."""
    problem = None
    if not isinstance(params, Mapping) or not params:
        problem = f"got {type(params).__name__}, expected a non-empty nested dict of arrays"
    else:
        expected = dict(_flatten(param_shapes(cfg)))
        found = dict(_flatten(params))
        for key, shape in expected.items():
            if key not in found:
                problem = f"parameter {key} is missing"
                break
            if tuple(np.shape(found[key])) != shape:
                problem = f"parameter {key} has shape {tuple(np.shape(found[key]))}, want {shape}"
                break
        else:
            extra = [k for k in found if k not in expected]
            if extra:
                problem = f"parameter {extra[0]} is not part of this architecture"
    if problem:
        raise VAEError(
            f"{name} do not fit the VAE config (block_out_channels="
            f"{list(cfg.block_out_channels)}, layers_per_block={cfg.layers_per_block}): "
            f"{problem}. Pass the params of the VAE the config describes."
        )


def check_images(x, cfg: VAEConfig) -> None:
    """Images for the encoder: [B, H, W, in_channels] with H and W multiples of the factor."""
    check_image_shape(tuple(np.shape(x)), cfg)


def check_image_shape(shape: tuple[int, ...], cfg: VAEConfig) -> None:
    """``check_images`` on a shape alone."""
    f, c = cfg.downsample_factor, cfg.in_channels
    if len(shape) != 4 or shape[-1] != c:
        raise VAEError(
            f"images have shape {tuple(shape)}; the VAE encoder takes [B, H, W, {c}] "
            "(NHWC; transpose NCHW arrays with x.transpose(0, 2, 3, 1))"
        )
    _, h, w, _ = shape
    if h % f or w % f or h == 0 or w == 0:
        raise VAEError(
            f"images are {h}x{w}, not a multiple of the VAE's downsampling factor {f} "
            f"(one x2 per level of block_out_channels but the last). Resize, crop or pad them to "
            f"a multiple of {f}, e.g. {max(f, h // f * f)}x{max(f, w // f * f)}."
        )


def check_latents(z, cfg: VAEConfig) -> None:
    """Latents for the decoder: [B, h, w, latent_channels]."""
    c = cfg.latent_channels
    if np.ndim(z) != 4 or np.shape(z)[-1] != c or 0 in np.shape(z)[1:3]:
        raise VAEError(
            f"latents have shape {tuple(np.shape(z))}; the VAE decoder takes [B, h, w, {c}] "
            "(NHWC; transpose NCHW arrays with z.transpose(0, 2, 3, 1))"
        )


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


def group_norm(p: Mapping, x: jax.Array, groups: int, eps: float = NORM_EPS) -> jax.Array:
    """torch GroupNorm: two-pass biased variance per (sample, group), then the affine map."""
    b, h, w, c = x.shape
    xg = x.reshape(b, h, w, groups, c // groups)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
    y = ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(b, h, w, c)
    return y * p["weight"] + p["bias"]


def conv2d(p: Mapping, x: jax.Array, *, stride: int = 1, padding=None) -> jax.Array:
    """Cross-correlation (torch Conv2d) + bias; ``padding`` defaults to kernel // 2 each side."""
    k = p["weight"].shape[0]
    if padding is None:
        if stride == 1:  # layers.conv: an input gradient that stays fast in the samplers' loops
            return layers.conv(x, p["weight"], k // 2) + p["bias"]
        padding = ((k // 2, k // 2), (k // 2, k // 2))
    y = jax.lax.conv_general_dilated(
        x,
        p["weight"],
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=_NHWC,
        precision=_HIGHEST,
    )
    return y + p["bias"]


def silu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def resnet_block(p: Mapping, x: jax.Array, groups: int) -> jax.Array:
    """diffusers ResnetBlock2D without time embedding, output_scale_factor 1:
    shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))."""
    h = conv2d(p["conv1"], silu(group_norm(p["norm1"], x, groups)))
    h = conv2d(p["conv2"], silu(group_norm(p["norm2"], h, groups)))
    if "conv_shortcut" in p:  # 1x1 when in_channels != out_channels
        x = conv2d(p["conv_shortcut"], x)
    return x + h


def _linear(p: Mapping, x: jax.Array) -> jax.Array:
    return jnp.matmul(x, p["weight"], precision=_HIGHEST) + p["bias"]


def attention_block(p: Mapping, x: jax.Array, groups: int) -> jax.Array:
    """diffusers' VAE mid-block Attention: one head of width C, GroupNorm first, q/k/v/out linear
    per pixel, softmax(q kᵀ/√C) over all H·W positions, residual add, rescale 1."""
    b, h, w, c = x.shape
    y = group_norm(p["group_norm"], x, groups).reshape(b, h * w, c)
    q, k, v = (_linear(p[name], y) for name in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k, precision=_HIGHEST) / math.sqrt(c)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("bqk,bkc->bqc", weights, v, precision=_HIGHEST)
    return x + _linear(p["to_out"]["0"], y).reshape(b, h, w, c)


def mid_block(p: Mapping, x: jax.Array, groups: int) -> jax.Array:
    """UNetMidBlock2D: resnets.0 -> attentions.0 (if present) -> resnets.1."""
    x = resnet_block(p["resnets"]["0"], x, groups)
    if "attentions" in p:
        x = attention_block(p["attentions"]["0"], x, groups)
    return resnet_block(p["resnets"]["1"], x, groups)


def downsample(p: Mapping, x: jax.Array) -> jax.Array:
    """diffusers Downsample2D(padding=0): zero-pad right and bottom by 1 (asymmetric), then a 3x3
    stride-2 conv without padding. Symmetric padding is a different function (§12 #10)."""
    return conv2d(p, x, stride=2, padding=((0, 1), (0, 1)))


def upsample(p: Mapping, x: jax.Array) -> jax.Array:
    """diffusers Upsample2D: nearest-neighbour x2, then a 3x3 conv with padding 1."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv2d(p, x)


# --------------------------------------------------------------------------------------------------
# Encoder, decoder
# --------------------------------------------------------------------------------------------------


def encoder(p: Mapping, x: jax.Array, cfg: VAEConfig) -> jax.Array:
    """diffusers Encoder: [B, H, W, in] -> [B, H/f, W/f, 2·latent] (before quant_conv)."""
    g, n = cfg.norm_num_groups, len(cfg.block_out_channels)
    x = conv2d(p["conv_in"], x)
    for i in range(n):
        block = p["down_blocks"][str(i)]
        for j in range(cfg.layers_per_block):
            x = resnet_block(block["resnets"][str(j)], x, g)
        if i < n - 1:
            x = downsample(block["downsamplers"]["0"]["conv"], x)
    x = mid_block(p["mid_block"], x, g)
    return conv2d(p["conv_out"], silu(group_norm(p["conv_norm_out"], x, g)))


def decoder(p: Mapping, z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """diffusers Decoder: [B, h, w, latent] -> [B, h·f, w·f, out] (after post_quant_conv)."""
    g, n = cfg.norm_num_groups, len(cfg.block_out_channels)
    x = conv2d(p["conv_in"], z)
    x = mid_block(p["mid_block"], x, g)
    for i in range(n):
        block = p["up_blocks"][str(i)]
        for j in range(cfg.layers_per_block + 1):
            x = resnet_block(block["resnets"][str(j)], x, g)
        if i < n - 1:
            x = upsample(block["upsamplers"]["0"]["conv"], x)
    return conv2d(p["conv_out"], silu(group_norm(p["conv_norm_out"], x, g)))


def encode_moments(params: Mapping, x: jax.Array, cfg: VAEConfig) -> jax.Array:
    """quant_conv(encoder(x)): [B, H, W, in] float32 -> [B, H/f, W/f, 2·latent] with the mean on
    the first ``latent_channels`` channels and the (unclamped) logvar on the rest.

    ``x`` is in whatever range the VAE is fed: diffusers' convention is [-1, 1], EDM2 feeds
    x/255 ∈ [0, 1] (docs/LATENT.md).
    """
    check_params(params, cfg)
    check_images(x, cfg)
    h = encoder(params["encoder"], jnp.asarray(x, jnp.float32), cfg)
    return conv2d(params["quant_conv"], h) if cfg.use_quant_conv else h


def mean_std(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """diffusers DiagonalGaussianDistribution: mean, std = exp(½·clip(logvar, -30, 20))."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    return mean, jnp.exp(0.5 * logvar)


def decode(params: Mapping, z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """decoder(post_quant_conv(z)): raw latents [B, h, w, latent] -> [B, h·f, w·f, out],
    unclamped."""
    check_params(params, cfg)
    check_latents(z, cfg)
    z = jnp.asarray(z, jnp.float32)
    if cfg.use_post_quant_conv:
        z = conv2d(params["post_quant_conv"], z)
    return decoder(params["decoder"], z, cfg)


# --------------------------------------------------------------------------------------------------
# EDM2's latent scaling and pixel conventions (NVlabs/edm2 training/encoders.py)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentScaling:
    """Per-channel affine map between raw VAE latents and the "final" latents a network sees.

    EDM2's ``StabilityVAEEncoder`` forms, in float32, ``scale = final_std / raw_std`` and
    ``bias = final_mean - raw_mean·scale`` (so z = (z_raw - raw_mean)·final_std/raw_std +
    final_mean) and stores only these two arrays in its pickles. This class holds them as the
    exact float32 values (tuples, hashable); build it with ``from_statistics`` or
    ``from_encoder_record`` (the ``encoder`` entry of an EDM2 pickle).
    """

    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, np.float32).reshape(-1)
        bias = np.asarray(self.bias, np.float32).reshape(-1)
        if scale.shape != bias.shape or scale.size == 0:
            raise VAEError(f"scale {scale.shape} and bias {bias.shape} must be equal, non-empty")
        if not (np.isfinite(scale).all() and np.isfinite(bias).all()) or (scale == 0).any():
            raise VAEError("latent scale must be finite and non-zero, bias finite")
        object.__setattr__(self, "scale", tuple(float(v) for v in scale))
        object.__setattr__(self, "bias", tuple(float(v) for v in bias))

    @classmethod
    def from_statistics(cls, raw_mean, raw_std, final_mean=0.0, final_std=0.5) -> LatentScaling:
        """scale = float32(final_std) / float32(raw_std); bias = float32(final_mean) -
        float32(raw_mean)·scale — StabilityVAEEncoder.__init__'s float32 arithmetic."""
        scale = np.float32(final_std) / np.asarray(raw_std, np.float32)
        bias = np.float32(final_mean) - np.asarray(raw_mean, np.float32) * scale
        return cls(tuple(scale.tolist()), tuple(bias.tolist()))

    @classmethod
    def from_encoder_record(cls, record: Mapping) -> LatentScaling:
        """From the ``encoder`` entry that ``read_checkpoint`` returns for an EDM2 latent pickle
        (``extras['encoder']``: class_name StabilityVAEEncoder, float32 ``scale`` and ``bias``)."""
        name = record.get("class_name") if isinstance(record, Mapping) else None
        if name != "StabilityVAEEncoder" or "scale" not in record or "bias" not in record:
            raise VAEError(
                f"expected the StabilityVAEEncoder record of an EDM2 latent pickle (with scale "
                f"and bias), got {name or type(record).__name__!r}; pixel-space pickles "
                "(StandardRGBEncoder) need no VAE"
            )
        scale = np.asarray(record["scale"], np.float32).reshape(-1)
        bias = np.asarray(record["bias"], np.float32).reshape(-1)
        return cls(tuple(scale.tolist()), tuple(bias.tolist()))

    @classmethod
    def identity(cls, channels: int) -> LatentScaling:
        """scale 1, bias 0: the network sees the raw latents."""
        return cls((1.0,) * channels, (0.0,) * channels)

    @property
    def channels(self) -> int:
        return len(self.scale)

    def to_json(self) -> dict[str, list[float]]:
        """{'scale': [...], 'bias': [...]} (exact: float32 values round-trip through JSON)."""
        return {"scale": list(self.scale), "bias": list(self.bias)}

    def _arrays(self, like: jax.Array) -> tuple[jax.Array, jax.Array]:
        if like.shape[-1] != self.channels:
            raise VAEError(
                f"latents have {like.shape[-1]} channels (last axis, NHWC), the scaling has "
                f"{self.channels}"
            )
        return jnp.asarray(self.scale, jnp.float32), jnp.asarray(self.bias, jnp.float32)

    def to_final(self, z_raw: jax.Array) -> jax.Array:
        """Raw latents -> final latents: z·scale + bias (encode_latents, in this order)."""
        scale, bias = self._arrays(z_raw)
        return z_raw * scale + bias

    def to_raw(self, z: jax.Array) -> jax.Array:
        """Final latents -> raw latents: (z - bias) / scale (``decode``'s first two lines)."""
        scale, bias = self._arrays(z)
        return (z - bias) / scale


# sd-vae-ft-mse latent statistics: StabilityVAEEncoder's constructor defaults (EDM_REFERENCE §6).
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_LATENT_SCALING = LatentScaling.from_statistics(EDM2_RAW_MEAN, EDM2_RAW_STD, 0.0, 0.5)


def pixels_from_uint8(images) -> jax.Array:
    """EDM2's VAE input: uint8 (or 0..255 float) RGB -> x/255 ∈ [0, 1] float32 (not [-1, 1]:
    NVlabs/edm2 issue #9; the latent statistics were computed this way)."""
    return jnp.asarray(images).astype(jnp.float32) / 255.0


def uint8_from_pixels(x: jax.Array) -> jax.Array:
    """EDM2's decode output: clamp(0, 1)·255, truncated to uint8 (torch's .to(torch.uint8))."""
    return jnp.floor(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


# --------------------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------------------


_moments = jax.jit(encode_moments, static_argnums=2)


@functools.partial(jax.jit, static_argnames=("cfg", "scaling", "sample"))
def _encode_final(params, x, key, *, cfg: VAEConfig, scaling: LatentScaling, sample: bool):
    mean, std = mean_std(encode_moments(params, x, cfg))
    z = mean + std * jax.random.normal(key, mean.shape, mean.dtype) if sample else mean
    return scaling.to_final(z)


@functools.partial(jax.jit, static_argnames=("cfg", "scaling"))
def _decode_final(params, z, *, cfg: VAEConfig, scaling: LatentScaling):
    return decode(params, scaling.to_raw(jnp.asarray(z, jnp.float32)), cfg)


@dataclasses.dataclass
class VAE:
    """A frozen VAE: ``params`` (float32 pytree), static ``config``, the latent ``scaling`` and
    the provenance ``manifest``. Parameters are jit arguments, never baked-in constants.

    ``scaling=None`` means EDM2's sd-vae-ft-mse statistics (``EDM2_LATENT_SCALING``) for a
    4-channel VAE and the identity for other latent widths; give a VAE trained here its own
    statistics with ``LatentScaling.from_statistics``."""

    params: dict
    config: VAEConfig
    manifest: dict
    scaling: LatentScaling | None = None

    def __post_init__(self) -> None:
        if self.scaling is None:
            channels = self.config.latent_channels
            edm2 = channels == EDM2_LATENT_SCALING.channels
            self.scaling = EDM2_LATENT_SCALING if edm2 else LatentScaling.identity(channels)
        if self.scaling.channels != self.config.latent_channels:
            raise VAEError(
                f"the latent scaling has {self.scaling.channels} channels, the VAE "
                f"{self.config.latent_channels} latent channels"
            )

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """[H, W, C] images -> [H/f, W/f, latent_channels] (with the image checks)."""
        check_image_shape((1, *image_shape), self.config)
        f = self.downsample_factor
        return image_shape[0] // f, image_shape[1] // f, self.config.latent_channels

    def moments(self, x) -> jax.Array:
        """quant_conv(encoder(x)), [B, H/f, W/f, 2·latent] (mean | unclamped logvar)."""
        return _moments(self.params, x, self.config)

    def encode(self, x, key: jax.Array | None = None) -> jax.Array:
        """Images in the VAE's input range (EDM2: [0, 1], see ``pixels_from_uint8``) -> final
        latents: the posterior mean, or mean + std·ε with ε ~ N(0, I) when ``key`` is given,
        then ``scaling.to_final`` (StabilityVAEEncoder.encode_pixels + encode_latents)."""
        sample = key is not None
        key = jax.random.key(0) if key is None else key
        return _encode_final(
            self.params, x, key, cfg=self.config, scaling=self.scaling, sample=sample
        )

    def decode(self, z) -> jax.Array:
        """Final latents -> images in the VAE's output range, unclamped (EDM2 then applies
        ``uint8_from_pixels``)."""
        return _decode_final(self.params, z, cfg=self.config, scaling=self.scaling)
