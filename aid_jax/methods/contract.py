"""The inpainting contract every method honours: what a method returns, what it is given, how
inputs are checked, and what a built (jitted) inpainter is.

* :class:`InpaintResult` — raw samples plus static costs (NFE forward / backward per sample).
* :data:`DenoiseFn` (``sampling.DenoiseFn``) — ``denoise(x [B,H,W,C], sigma [B]) -> [B,H,W,C]``,
  any EDM denoiser D(x; σ); with class labels the three-argument form
  ``denoise(x, sigma, labels_rows)``.
* :func:`validate_inputs` — the one host-side check of an inpainting call's ``y`` and ``mask``
  (shapes, dtypes, finite observed values, the value range); the mask's values are checked by
  :func:`aid_jax.masks.validate_mask`. Used by ``make_inpainter``, ``aid_jax.inpaint`` and VIPaint.
* :func:`check_labels` / :func:`with_labels` — method-level labels (float rows) and the
  labels-bound denoiser, for every method.
* :func:`check_key` — one PRNG key, or one per row; :func:`per_row_keys` runs a core with
  per-row keys (each row's output independent of its batch).
* :class:`Inpainter` — ``fn(params, y, mask, key, labels=None) -> InpaintResult`` with the jitted
  core, method name, options, costs, label count and the parameters it brings (if any).
* :class:`Resources` — what a method that loads its own parameters (AID) may use.

Conventions: NHWC images in [-1, 1] (σ_data = 0.5), masks ``[B|1, H, W, 1|C]`` with 1 = known
pixel; values in the hole are never read; a batch holds at least one image (B = 0 is refused).

The dtype policy, the same for every method and entry point (enforced by :func:`validate_inputs`):

* images ``y``: float32, float16, bfloat16 or float64 are accepted and converted to float32 (by
  :class:`Inpainter` before its jitted core, and by every method's own ``prepare``); integer
  images (uint8, int32, ...) are refused — scale them to [-1, 1] first (uint8:
  ``x / 127.5 - 1``); bool, complex and other float formats (float8, ...) are refused;
* masks: bool, any integer, or one of the float dtypes above, with values exactly 0 or 1;
* outputs (``InpaintResult.x``) are float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import backbones
from aid_jax import masks as mask_lib
from aid_jax.sampling import DenoiseFn

__all__ = [
    "IMAGE_DTYPES",
    "RANGE_TOL",
    "DenoiseFn",
    "InpaintResult",
    "Inpainter",
    "Resources",
    "check_key",
    "check_labels",
    "float32_images",
    "key_rows",
    "per_row_keys",
    "validate_inputs",
    "with_labels",
]

# Tolerance of validate_inputs on the value range.
RANGE_TOL = 1e-3

# The image dtypes every method accepts (converted to float32); see the module docstring.
IMAGE_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float16, jnp.bfloat16, np.float64))


@dataclasses.dataclass(frozen=True)
class InpaintResult:
    """Output of an inpainting method (a pytree; the costs are static metadata).

    Attributes:
        x: Raw samples ``[B, H, W, C]`` float32 (observed pixels not pasted back).
        nfe: Denoiser forward evaluations per sample (Python int).
        nfe_backward: Vector-Jacobian products through the denoiser per sample (Python int).
        encoder_calls: VAE encoder passes per sample (latent methods, ``aid_jax.latent``; 0 in
            pixel space).
        decoder_calls: VAE decoder forward passes per sample (latent methods; 0 in pixel space).
        decoder_backward: Vector-Jacobian products through the VAE decoder per sample (latent
            methods with ``likelihood="pixel"``).
    """

    x: jax.Array
    nfe: int
    nfe_backward: int = 0
    encoder_calls: int = 0
    decoder_calls: int = 0
    decoder_backward: int = 0


jax.tree_util.register_dataclass(
    InpaintResult,
    data_fields=["x"],
    meta_fields=["nfe", "nfe_backward", "encoder_calls", "decoder_calls", "decoder_backward"],
)


# ---------------------------------------------------------------------------------------------
# Inputs


def _check_structure(y, mask, image_shape, single_mask: bool, name: str, error) -> None:
    """Shapes and dtypes only: they are static, so traced arrays get these checks too."""
    y_dtype, m_dtype = np.dtype(y.dtype), np.dtype(mask.dtype)
    if y_dtype not in IMAGE_DTYPES:
        accepted = ", ".join(map(str, IMAGE_DTYPES))
        if y_dtype.kind in "iu":
            raise error(
                f"{name} has integer dtype {y_dtype}; images must be floats in [-1, 1] "
                f"({accepted}): scale them first, e.g. uint8 -> x / 127.5 - 1"
            )
        raise error(
            f"{name} must be a real-valued image array of a float dtype ({accepted}; converted "
            f"to float32), got dtype {y_dtype}"
        )
    if y.ndim != 4:
        raise error(
            f"{name} must be a batch of NHWC images [B, H, W, C], got shape {tuple(y.shape)}; "
            f"add a batch axis ({name}[None]) for a single image"
        )
    b, h, w, c = y.shape
    if b == 0:
        raise error(f"{name} is an empty batch (shape {tuple(y.shape)}); give at least one image")
    if image_shape is not None:
        want = tuple(int(s) for s in image_shape)
        if (h, w, c) != want:
            raise error(
                f"{name} has images of shape {(h, w, c)} but this backbone expects {want} (H, W, C)"
            )
    batches = (1, b) if single_mask else (b,)
    if mask.ndim != 4 or tuple(mask.shape[1:3]) != (h, w) or mask.shape[0] not in batches:
        single = f", or [1, {h}, {w}, 1] for all images" if single_mask else ""
        raise error(
            f"mask has shape {tuple(mask.shape)}; expected [{b}, {h}, {w}, 1] (or "
            f"[{b}, {h}, {w}, {c}]){single} matching {name} of shape {tuple(y.shape)}, "
            "1 = known pixel"
        )
    if mask.shape[3] not in (1, c):
        raise error(
            f"mask has {mask.shape[3]} channels; expected 1 (shared by all channels) or {c}"
        )
    if not (m_dtype.kind == "b" or m_dtype in IMAGE_DTYPES or np.issubdtype(m_dtype, np.integer)):
        raise error(
            f"mask must be numeric or bool (an integer dtype or "
            f"{', '.join(map(str, IMAGE_DTYPES))}), got dtype {m_dtype}"
        )


def validate_inputs(
    y,
    mask,
    image_shape=None,
    *,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    single_mask: bool = True,
    host_only: bool = True,
    error: type[Exception] = ValueError,
    name: str = "y",
) -> None:
    """Checks an inpainting call's inputs; raises ``error`` (a ``ValueError``) saying what to fix.

    The rules, in order: ``y`` (called ``name`` in messages) is a ``[B, H, W, C]`` array of a
    float dtype of :data:`IMAGE_DTYPES` (integer images are refused: the dtype policy of the
    module docstring) with B >= 1; its images have shape ``image_shape`` (H, W, C) if given;
    ``mask`` is ``[B, H, W, 1|C]`` (or ``[1, H, W, 1|C]`` for all images when ``single_mask``)
    and numeric or bool; then, on concrete values: the mask is finite, binary (0 = hole,
    1 = known) and every image has at least one hole pixel and one observed pixel
    (:func:`aid_jax.masks.validate_mask`); ``y``'s observed pixels are finite and, unless
    ``value_range`` is None (e.g. latents), inside it (tolerance ``RANGE_TOL``). Values in the
    hole are never read.

    Args:
        y: The observed images.
        mask: The masks, 1 = known pixel.
        image_shape: (H, W, C) the images must have, or None.
        value_range: (lo, hi) of the observed pixels, or None for no range check.
        single_mask: Whether one mask ``[1, H, W, ·]`` may serve the whole batch.
        host_only: True: traced values (inside ``jax.jit``) are an error, the check belongs
            outside the jitted function. False: traced values get the shape/dtype checks only.
        error: The exception class raised (``ValueError`` or a subclass).
        name: What ``y`` is called in messages.
    """
    traced = [n for n, a in ((name, y), ("mask", mask)) if isinstance(a, jax.core.Tracer)]
    if traced and host_only:
        raise error(
            f"{traced[0]} is a traced value: validate_inputs checks values on the host; call it "
            "(or the function from make_inpainter) outside jit/vmap"
        )
    yv = y if isinstance(y, jax.core.Tracer) else np.asarray(y)
    mv = mask if isinstance(mask, jax.core.Tracer) else np.asarray(mask)
    _check_structure(yv, mv, image_shape, single_mask, name, error)
    if traced:
        return
    if mv.dtype == jnp.bfloat16:  # a float of the policy NumPy's checks do not know; 0/1 exact
        mv = mv.astype(np.float32)
    try:
        mv = mask_lib.validate_mask(mv, yv.shape, name="mask", per_channel=True)
    except ValueError as e:
        if error is ValueError:
            raise
        raise error(str(e)) from e
    known = np.broadcast_to(mv, yv.shape) == 1
    obs = yv[known].astype(np.float64)
    if not np.isfinite(obs).all():
        raise error(
            f"{name} has {int((~np.isfinite(obs)).sum())} NaN/inf values at observed pixels"
        )
    if value_range is None:
        return
    lo_ok, hi_ok = value_range
    lo, hi = (float(obs.min()), float(obs.max())) if obs.size else (0.0, 0.0)
    if lo < lo_ok - RANGE_TOL or hi > hi_ok + RANGE_TOL:
        raise error(
            f"observed pixels of {name} span [{lo:.4g}, {hi:.4g}]; images must be in "
            f"[{lo_ok:g}, {hi_ok:g}] (e.g. uint8 -> x / 127.5 - 1)"
        )


def float32_images(y):
    """``y`` (checked by :func:`validate_inputs`) as float32: the dtype policy's conversion.
    A ``jax.Array`` stays one (its sharding kept), anything else becomes a NumPy array; float32
    inputs are returned as they are."""
    if isinstance(y, jax.Array):
        return y if y.dtype == jnp.float32 else y.astype(jnp.float32)
    return np.asarray(y, np.float32)


def key_rows(key) -> int | None:
    """None for one PRNG key (typed scalar ``jax.random.key`` or raw uint32 ``[2]``); the number
    of keys for a batch of per-row keys (typed ``[B]`` or raw uint32 ``[B, 2]``). Static (shape
    and dtype only), so it works on traced keys."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed:
        return None if key.ndim == 0 else int(key.shape[0])
    return None if key.ndim == 1 else int(key.shape[0])


def check_key(key, rows: int | None = None) -> None:
    """One PRNG key (typed ``jax.random.key`` or a raw uint32 ``[2]``) or, when ``rows`` is given,
    also one key per row (typed ``[rows]`` or raw uint32 ``[rows, 2]``); else ``ValueError``."""
    k = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
    one = (typed and k.ndim == 0) or (k.dtype == jnp.uint32 and k.shape == (2,))
    batch = rows is not None and (
        (typed and k.shape == (rows,)) or (k.dtype == jnp.uint32 and k.shape == (rows, 2))
    )
    if not (one or batch):
        also = f", or one key per row ({rows} keys)" if rows is not None else ""
        raise ValueError(
            f"key must be one PRNG key (jax.random.key(seed)){also}, got dtype {k.dtype}, "
            f"shape {k.shape}"
        )


def per_row_keys(
    core: Callable[..., InpaintResult], group: int = 1
) -> Callable[..., InpaintResult]:
    """``core(params, y, mask, key, labels=None)`` that also takes one key per row.

    With one key the call is ``core`` itself. With keys ``[B]`` (typed) or ``[B, 2]`` (raw) the
    rows are run in groups of ``group`` consecutive rows (1, or a method's rows that share work,
    e.g. VIPaint's samples of one image), each group under ``jax.vmap`` with its first row's key:
    a row's output then depends only on its own inputs and key, not on the batch it sits in (the
    evaluation protocol: results independent of batch size and device count). The batched
    denoiser calls are the same ones, so the cost is unchanged.
    """

    def wrapped(params, y, mask, key, labels=None) -> InpaintResult:
        b = y.shape[0]
        if key_rows(key) is None:
            return core(params, y, mask, key, labels)
        if key_rows(key) != b or b % group:
            raise ValueError(
                f"{key_rows(key)} keys for {b} rows (groups of {group}): give one key per row"
            )
        shape = (b // group, group)
        mask = jnp.broadcast_to(mask, (b, *mask.shape[1:]))
        split = lambda a: None if a is None else a.reshape(shape + a.shape[1:])  # noqa: E731

        def one(y_g, mask_g, key_g, labels_g):
            return core(params, y_g, mask_g, key_g, labels_g)

        res = jax.vmap(one)(split(y), split(mask), key[::group], split(labels))
        return dataclasses.replace(res, x=res.x.reshape((b, *res.x.shape[2:])))

    return wrapped


# ---------------------------------------------------------------------------------------------
# Class labels inside a method (trace time)


def check_labels(labels, num_images: int) -> jax.Array | None:
    """Method-level labels: None stays None; else float32 ``[num_images, label_dim]`` rows, one
    per image (shape checked at trace time; ``backbones.prepare_labels`` makes them)."""
    if labels is None:
        return None
    labels = jnp.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != num_images:
        raise ValueError(
            f"labels have shape {labels.shape}; expected one-hot rows, one per image "
            f"[{num_images}, label_dim] (aid_jax.backbones.prepare_labels turns class ids into "
            "them)"
        )
    return labels.astype(jnp.float32)


def with_labels(denoise, labels) -> DenoiseFn:
    """``denoise`` itself without labels; with labels ``[N, L]`` (one row per image, from
    :func:`check_labels`) the closure ``(x, sigma) -> denoise(x, sigma, rows)``, where a denoiser
    batch of N·r rows holds image n on rows n·r … n·r + r − 1 (a method's Monte Carlo or sample
    rows) and gets each image's labels on its rows; a batch of N rows gets ``labels`` itself."""
    if labels is None:
        return denoise
    num_images = labels.shape[0]

    def labelled(x, sigma):
        if x.shape[0] == num_images:
            return denoise(x, sigma, labels)
        if x.shape[0] % num_images:
            raise ValueError(
                f"a denoiser batch of {x.shape[0]} rows does not split into {num_images} images"
            )
        return denoise(x, sigma, jnp.repeat(labels, x.shape[0] // num_images, axis=0))

    return labelled


# ---------------------------------------------------------------------------------------------
# A built inpainter


@dataclasses.dataclass(frozen=True, eq=False)
class Inpainter:
    """A method built for one backbone and one set of options (``registry.make_inpainter``).

    Calling it, ``fn(params, y, mask, key, labels=None) -> InpaintResult``, runs the host checks
    (:func:`validate_inputs` with ``image_shape``, then ``y`` as float32, :func:`check_key`,
    ``backbones.prepare_labels``: labels as class ids ``[B]`` or one int, or one-hot rows
    ``[B, label_dim]``) and then the jitted core, which compiles once per input
    shapes/dtypes/shardings (labels are traced: new labels never recompile). ``key`` is one PRNG
    key, or one per row (``[B]``; :func:`per_row_keys`: each row's output then depends on its own
    key only, whatever batch it sits in).

    Attributes:
        jitted: The ``jax.jit`` core ``(params, y, mask, key, labels=None)``, labels float32
            ``[B, label_dim]`` or None; ``jitted.lower(...)`` compiles ahead of time.
        method: The registry name.
        options: Every option of the method (defaults filled in).
        nfe: Denoiser forward evaluations per sample.
        nfe_backward: Vector-Jacobian products through the denoiser per sample.
        label_dim: The backbone's number of classes (labels required when > 0).
        params: The parameters to call it with when the method brings its own (AID: its
            ``AIDParams``, placed where the builder's ``Resources.place`` put them); None: the
            caller's backbone parameters (see :meth:`call_params`).
        image_shape: (H, W, C) the inputs must have, when the method fixes it; else None.
        encoder_calls, decoder_calls, decoder_backward: VAE passes per sample (latent methods,
            ``aid_jax.latent``; 0 in pixel space), as in :class:`InpaintResult`.
    """

    jitted: Callable[..., InpaintResult] = dataclasses.field(repr=False)
    method: str
    options: Mapping[str, Any]
    nfe: int
    nfe_backward: int = 0
    label_dim: int = 0
    params: Any = dataclasses.field(default=None, repr=False)
    image_shape: tuple[int, int, int] | None = None
    encoder_calls: int = 0
    decoder_calls: int = 0
    decoder_backward: int = 0

    @property
    def needs_backbone_params(self) -> bool:
        """Whether the call takes the backbone's parameters (False: :attr:`params`)."""
        return self.params is None

    def call_params(self, backbone_params):
        """The first argument of a call: :attr:`params` if the method brings its own, else
        ``backbone_params``."""
        return backbone_params if self.params is None else self.params

    def __call__(self, params, y, mask, key, labels=None) -> InpaintResult:
        validate_inputs(y, mask, self.image_shape)
        y = float32_images(y)  # the dtype policy: one compiled program for every float dtype
        check_key(key, rows=np.shape(y)[0])
        labels = backbones.prepare_labels(labels, self.label_dim, np.shape(y)[0])
        return self.jitted(params, y, mask, key, labels)


@dataclasses.dataclass
class Resources:
    """What a method that loads its own parameters (AID) may use when it is built.

    Attributes:
        backbone: The loaded ``Backbone`` (a checkpoint is then checked against it instead of
            loading its recorded backbone again), or None.
        place: Puts loaded parameters where the caller runs (the harness: replicated on its
            mesh); identity by default.
        cache: Loaded, placed bundles shared by the inpainters of one caller (e.g. one AID
            checkpoint at several step counts is loaded once).
        vae: The latent space of a ``"latent/<method>"`` (an ``aid_jax.latent.LatentSpace``, or
            an ``sd_vae.VAE`` taken with EDM2's [0, 1] pixel convention); None in pixel space.
    """

    backbone: Any = None
    place: Callable[[Any], Any] = lambda params: params
    cache: dict = dataclasses.field(default_factory=dict)
    vae: Any = None
