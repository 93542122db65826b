"""Latent inpainting: any registered method run on the latents of a VAE (docs/LATENT.md).

``"latent/<name>"`` (``methods.get`` derives it from ``<name>``; nothing is listed twice) runs
method ``<name>`` on a latent denoiser (EDM2 on sd-vae-ft-mse latents) behind the same contract
as in pixel space: ``fn(fn.call_params(backbone_params), y, mask, key, labels=None)`` with
**pixel** images ``y`` in [-1, 1] and a **pixel** mask, returning pixel samples.

Per call, per image row:

1. the pixel mask is reduced to one value per pixel (known only where every channel is) and
   mapped to the latent grid by :func:`latent_mask` — a latent cell is known only if **all**
   f×f pixels of its patch are known (a min-pool; f = the VAE's downsampling factor), then the
   hole is grown by ``dilate`` latent cells (a (2·dilate + 1)² min-filter, outside the grid
   counting as known);
2. the observation is encoded **once**: hole pixels set to 0 (mid-grey; their values are never
   read), mapped to the VAE's pixel range (EDM2: [0, 1]), posterior **mean** of the encoder,
   whitened with the VAE's ``LatentScaling`` (:meth:`LatentSpace.encode`);
3. the method runs in latent space on (encoded observation, latent mask) with its own options —
   any registered method, AID and DEFT included (their modules are built for the latent
   backbone's [h, w, 4] state, and AID's Ψ is the latent one);
4. the result is decoded **once** (:meth:`LatentSpace.decode`, back to [-1, 1], unclamped) and,
   with ``paste_pixels=True``, the known pixels of ``y`` are pasted back.

``likelihood="pixel"`` (DPS and ΠGDM): the guidance gradient is taken on the decoded pixels
instead, g = J_Dᵀ J_decᵀ (m ⊙ (y − dec(x̂0))) with the pixel mask, the decoder called and
differentiated once per step (counted in ``decoder_calls`` / ``decoder_backward``); the rest of
the step (and ΠGDM's paste of the encoded observation) stays in latent space. VIPaint with
``likelihood="pixel"`` (its own latent setting) takes its reconstruction loss on decoded pixels
in the fit and the refinement (``vipaint.model``'s ``render``/``target``). AID's pixel-space Ψ
is a training option (``aid.psi_space``, ``aid_jax.aid.train.pixel_view``); its deployment is
the same latent sampler.

Costs per sample (:func:`latent_costs`): the method's NFE forward/backward, 1 encoder call,
1 decoder call (+ N forward and N backward for ``likelihood="pixel"`` with N steps; VIPaint
also its fit's iterations × Monte Carlo samples, shared by an image's samples).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from aid_jax.backbones import sd_vae
from aid_jax.methods import contract
from aid_jax.methods import dps as dps_lib
from aid_jax.methods import pigdm as pigdm_lib
from aid_jax.methods import primitives as prim

__all__ = [
    "LIKELIHOODS",
    "OPTIONS",
    "PIXEL_LIKELIHOOD_METHODS",
    "PIXEL_RANGES",
    "LatentError",
    "LatentInpainter",
    "LatentSpace",
    "build",
    "check_pipeline",
    "latent_costs",
    "latent_mask",
    "latent_method",
    "pixel_data_config",
    "pixel_known",
    "space_from_config",
]

# The options a latent method adds to its base method's (names no method uses).
OPTIONS = MappingProxyType({"dilate": 0, "paste_pixels": False, "likelihood": "latent"})
LIKELIHOODS = ("latent", "pixel")
PIXEL_LIKELIHOOD_METHODS = ("dps", "pigdm", "vipaint")
PIXEL_RANGES = ("0_1", "-1_1")  # what the VAE is fed: EDM2's x/255 or diffusers' [-1, 1]


class LatentError(ValueError):
    """A latent pipeline that cannot work (shapes, channels, a missing VAE, bad options)."""


# ---------------------------------------------------------------------------------------------
# Masks


def pixel_known(mask, batch: int | None = None) -> jax.Array:
    """[B|1, H, W, 1|C] 0/1 mask -> float32 [B, H, W, 1]: 1 where every channel is known."""
    m = jnp.min(jnp.asarray(mask, jnp.float32), axis=-1, keepdims=True)
    m = (m > 0.5).astype(jnp.float32)
    return m if batch is None else jnp.broadcast_to(m, (batch, *m.shape[1:]))


def latent_mask(mask, factor: int, dilate: int = 0) -> jax.Array:
    """The latent-grid mask of a pixel mask (float32 [B, H/f, W/f, 1], 1 = known).

    A latent cell is known only if **all** f×f pixels of its patch (and all channels) are
    known: a min-pool with window and stride f. ``dilate`` d > 0 then grows the hole by d cells
    (a (2d+1)×(2d+1) min-filter; cells outside the grid count as known). Works on NumPy and
    traced arrays alike.
    """
    prim.check_int("factor", factor, lo=1)
    prim.check_int("dilate", dilate, lo=0, hi=prim.MAX_COUNT)
    m = pixel_known(mask)
    b, h, w, _ = m.shape
    if h % factor or w % factor:
        raise LatentError(
            f"a {h}x{w} mask does not tile into {factor}x{factor} patches (the VAE's factor)"
        )
    m = m.reshape(b, h // factor, factor, w // factor, factor, 1).min(axis=(2, 4))
    if dilate:
        m = jax.lax.reduce_window(
            m,
            jnp.float32(1.0),
            jax.lax.min,
            (1, 2 * dilate + 1, 2 * dilate + 1, 1),
            (1, 1, 1, 1),
            "SAME",
        )
    return m


# ---------------------------------------------------------------------------------------------
# The latent space: a VAE (or any codec) with its pixel convention


def _check_range(pixel_range: str) -> None:
    if pixel_range not in PIXEL_RANGES:
        raise LatentError(
            f"pixel_range={pixel_range!r}; expected one of {PIXEL_RANGES} ('0_1': EDM2 feeds "
            "the VAE x/255, '-1_1': diffusers' convention)"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSpace:
    """A frozen encoder/decoder pair and its conventions (:meth:`from_vae` for an SD VAE).

    Attributes:
        params: The codec's parameters (a pytree; jit arguments, never baked in).
        encode_fn: ``(params, x [B, H, W, image_channels] in the codec's pixel range) -> final
            latents [B, H/f, W/f, latent_channels]`` (for a VAE: posterior mean, then
            ``LatentScaling.to_final``).
        decode_fn: ``(params, z) -> images in the codec's pixel range`` (unclamped).
        factor: Pixels per latent cell along each axis.
        latent_channels, image_channels: The two channel counts.
        pixel_range: What the codec takes and gives: ``"0_1"`` (EDM2) or ``"-1_1"``.
        manifest: Provenance (the VAE's manifest), for records.
    """

    params: Any
    encode_fn: Callable[[Any, jax.Array], jax.Array]
    decode_fn: Callable[[Any, jax.Array], jax.Array]
    factor: int
    latent_channels: int
    image_channels: int = 3
    pixel_range: str = "0_1"
    manifest: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_range(self.pixel_range)
        prim.check_int("factor", self.factor, lo=1)

    @classmethod
    def from_vae(cls, vae: sd_vae.VAE, pixel_range: str = "0_1") -> LatentSpace:
        """An ``sd_vae.VAE``: encode = posterior mean then ``vae.scaling.to_final``; decode =
        ``to_raw`` then the decoder. EDM2 feeds the VAE [0, 1] (``pixel_range="0_1"``)."""
        cfg, scaling = vae.config, vae.scaling

        def encode_fn(params, x):
            mean, _ = sd_vae.mean_std(sd_vae.encode_moments(params, x, cfg))
            return scaling.to_final(mean)

        def decode_fn(params, z):
            return sd_vae.decode(params, scaling.to_raw(z), cfg)

        return cls(
            params=vae.params,
            encode_fn=encode_fn,
            decode_fn=decode_fn,
            factor=cfg.downsample_factor,
            latent_channels=cfg.latent_channels,
            image_channels=cfg.in_channels,
            pixel_range=pixel_range,
            manifest=dict(vae.manifest, latent_scaling=scaling.to_json()),
        )

    def to_codec(self, x: jax.Array) -> jax.Array:
        """[-1, 1] images -> the codec's pixel range."""
        return (x + 1.0) * 0.5 if self.pixel_range == "0_1" else x

    def from_codec(self, x: jax.Array) -> jax.Array:
        """The codec's pixel range -> [-1, 1] (unclamped)."""
        return x * 2.0 - 1.0 if self.pixel_range == "0_1" else x

    def encode(self, params, y: jax.Array, known: jax.Array | None = None) -> jax.Array:
        """Images in [-1, 1] -> final latents; with ``known`` ([B, H, W, 1], 1 = known) the hole
        pixels are set to 0 (mid-grey) first, so their values are never read."""
        y = jnp.asarray(y, jnp.float32)
        if known is not None:
            y = jnp.where(known > 0.5, y, 0.0)
        return self.encode_fn(params, self.to_codec(y)).astype(jnp.float32)

    def decode(self, params, z: jax.Array) -> jax.Array:
        """Final latents -> images in [-1, 1] (unclamped)."""
        return self.from_codec(self.decode_fn(params, z).astype(jnp.float32))

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        """(H, W, C) images -> (H/f, W/f, latent_channels), with the size checks."""
        check_image_shape(image_shape, self)
        return image_shape[0] // self.factor, image_shape[1] // self.factor, self.latent_channels

    def image_shape(self, latent_shape) -> tuple[int, int, int]:
        """(h, w, c) latents -> (h·f, w·f, image_channels)."""
        return latent_shape[0] * self.factor, latent_shape[1] * self.factor, self.image_channels


def as_space(vae) -> LatentSpace:
    """A ``LatentSpace`` as it is, an ``sd_vae.VAE`` with EDM2's [0, 1] convention."""
    if isinstance(vae, LatentSpace):
        return vae
    if isinstance(vae, sd_vae.VAE):
        return LatentSpace.from_vae(vae)
    raise LatentError(
        f"a latent method needs Resources(vae=...) to be an aid_jax.latent.LatentSpace or an "
        f"sd_vae.VAE, got {type(vae).__name__} (config: set config.vae.path)"
    )


def check_image_shape(image_shape, space: LatentSpace) -> None:
    """Images (H, W, C) the space can encode: C = its image channels, H and W multiples of f."""
    h, w, c = (int(v) for v in image_shape)
    f = space.factor
    if c != space.image_channels:
        raise LatentError(
            f"images have {c} channels; the VAE encodes {space.image_channels}-channel images"
        )
    if h % f or w % f or not h or not w:
        raise LatentError(
            f"images are {h}x{w}, not a multiple of the VAE's downsampling factor {f}: resize, "
            f"crop or pad them (e.g. data.resize_to={max(f, h // f * f)})"
        )


def check_pipeline(latent_shape, space: LatentSpace, image_shape=None) -> None:
    """The clear errors, before anything compiles, of a denoiser on latents ``latent_shape``
    (h, w, c) with this VAE and (optionally) images ``image_shape`` (H, W, C): channel counts,
    the VAE's factor, and H/f × W/f = h × w."""
    h, w, c = (int(v) for v in latent_shape)
    if c != space.latent_channels:
        raise LatentError(
            f"the denoiser takes {c}-channel latents [{h}, {w}, {c}] but the VAE makes "
            f"{space.latent_channels}-channel latents: use the VAE the network was trained on "
            "(EDM2 ImageNet-512: sd-vae-ft-mse, 4 channels)"
        )
    if image_shape is None:
        return
    check_image_shape(image_shape, space)
    hh, ww = int(image_shape[0]) // space.factor, int(image_shape[1]) // space.factor
    if (hh, ww) != (h, w):
        want = space.image_shape(latent_shape)
        raise LatentError(
            f"images of {image_shape[0]}x{image_shape[1]} encode to {hh}x{ww} latents but the "
            f"denoiser takes {h}x{w}: resize the images to {want[0]}x{want[1]} "
            f"(data.resize_to={want[0]})"
        )


def space_from_config(vae_config) -> LatentSpace:
    """The latent space a run config names (``config.vae``): ``path`` (a diffusers VAE folder or
    a ported one, ``vae_loader.load_vae``) or ``random = {config: {VAEConfig fields}, seed}`` (a
    randomly initialised VAE, for smoke tests), with ``pixel_range`` (default ``"0_1"``)."""
    cfg = vae_config.to_dict() if hasattr(vae_config, "to_dict") else dict(vae_config)
    pixel_range = cfg.get("pixel_range") or "0_1"
    if cfg.get("path"):
        from aid_jax.backbones import vae_loader

        vae = vae_loader.load_vae(cfg["path"])
    elif cfg.get("random"):
        spec = dict(cfg["random"])
        vcfg = sd_vae.VAEConfig(**dict(spec.get("config") or {}))
        seed = int(spec.get("seed", 0))
        params = sd_vae.init_params(jax.random.key(seed), vcfg)
        manifest = dict(source_name=f"random AutoencoderKL (seed {seed})", random=spec)
        vae = sd_vae.VAE(params=params, config=vcfg, manifest=manifest)
    else:
        raise LatentError(
            "config.vae needs a path (a diffusers VAE folder such as sd-vae-ft-mse, or one "
            "ported with python -m aid_jax.port) or a random={config, seed} recipe"
        )
    return LatentSpace.from_vae(vae, pixel_range)


def pixel_data_config(data_config):
    """The pixel images of a data config: a ``vae_latents`` source (training data encoded by the
    VAE, ``aid_jax.data.sources``) is unwrapped to its ``images`` source; others are returned as
    they are. The evaluation harness scores pixels."""
    name = data_config.get("name") if hasattr(data_config, "get") else None
    return data_config["images"] if name == "vae_latents" else data_config


# ---------------------------------------------------------------------------------------------
# Options and costs


def _split(options: Mapping[str, Any]) -> tuple[dict, dict]:
    base = {k: v for k, v in options.items() if k not in OPTIONS}
    lat = {k: options.get(k, v) for k, v in OPTIONS.items()}
    return base, lat


def _check_latent_options(base_name: str, lat: Mapping[str, Any]) -> None:
    prim.check_int("dilate", lat["dilate"], lo=0, hi=prim.MAX_COUNT)
    prim.check_bool("paste_pixels", lat["paste_pixels"])
    if lat["likelihood"] not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {lat['likelihood']!r}")
    if lat["likelihood"] == "pixel" and base_name not in PIXEL_LIKELIHOOD_METHODS:
        raise ValueError(
            f"likelihood='pixel' (gradients through the decoder) is implemented for "
            f"{', '.join(PIXEL_LIKELIHOOD_METHODS)}; {base_name!r} runs with likelihood='latent'"
        )


def latent_costs(name: str, **options) -> dict[str, int]:
    """Per-sample costs of ``"latent/<name>"`` with ``options`` (host only; checks them):
    ``nfe``, ``nfe_backward`` (denoiser), ``encoder_calls``, ``decoder_calls``,
    ``decoder_backward`` (VAE)."""
    from aid_jax.methods import registry

    base_name = name.removeprefix(registry.LATENT_PREFIX)
    opts = registry.merge_options(registry.LATENT_PREFIX + base_name, options)
    base, lat = _split(opts)
    _check_latent_options(base_name, lat)
    nfe, nfe_b = registry.get(base_name).cost(**base)
    pixel_passes = _pixel_passes(base_name, base) if lat["likelihood"] == "pixel" else 0
    return dict(
        nfe=nfe,
        nfe_backward=nfe_b,
        encoder_calls=1,
        decoder_calls=1 + pixel_passes,
        decoder_backward=pixel_passes,
    )


def _pixel_passes(base_name: str, base: Mapping[str, Any]) -> int:
    """Decoder forward (= backward) passes per sample of a pixel-likelihood method: one per
    step; VIPaint also one per fit iteration and Monte Carlo sample, shared by the
    ``samples_per_fit`` samples of an image (as its NFE)."""
    steps = int(base["num_steps"])
    if base_name != "vipaint":
        return steps
    fit = int(base["num_iters"]) * int(base["num_mc"])
    return steps - (-fit // int(base["samples_per_fit"]))


@functools.cache
def _derived(base_name: str):
    from aid_jax.methods import registry

    base = registry.get(base_name)
    if base.wraps is not None:
        raise ValueError(f"{base.name!r} already runs in latent space")
    clash = sorted(set(OPTIONS) & set(base.options))
    if clash:  # a method with an option of the same name cannot be wrapped
        raise ValueError(f"method {base.name!r} has option(s) {clash} of the latent pipeline")

    def cost(**options):
        base_opts, lat = _split(options)
        _check_latent_options(base.name, lat)
        return base.cost(**base_opts)

    def build_fn(options, *, label_dim, resources, denoise_with_params):
        return build(base.name, options, label_dim, resources, denoise_with_params)

    return registry.Method(
        name=registry.LATENT_PREFIX + base.name,
        options=MappingProxyType({**base.options, **OPTIONS}),
        cost=cost,
        build=build_fn,
        samples_option=base.samples_option,
        wraps=base.name,
    )


def latent_method(base) -> Any:
    """The ``registry.Method`` of ``"latent/<base.name>"`` (cached): ``base``'s options plus
    :data:`OPTIONS`, its cost (option checks included), a ``build`` that wraps it."""
    return _derived(base.name)


# ---------------------------------------------------------------------------------------------
# Pixel likelihood: DPS and ΠGDM with the guidance gradient through the decoder


def _dps_pixel(
    denoise, decode, y_px, known_px, z_obs, m_lat, key, labels, *, num_steps, zeta, step_form,
    sigma_data, clamp, sigma_y, schedule,
):  # fmt: skip
    """``dps`` (aid_jax/methods/dps.py) with the residual on decoded pixels:
    f(z) = clip(dec(D(z; σ))) (``clamp``: in pixel space) or dec(D(z; σ)); r = m ⊙ (y − f(z));
    z' = DDIM_1(z, D(z)) − ζ_i ∇_z ||r||_floor. Same noise rules as ``dps``."""
    denoise, _, _, k_init, k_steps = prim.setup(denoise, z_obs, m_lat, key, labels)
    y_obs = jnp.where(known_px > 0.5, y_px, 0.0)
    known = jnp.broadcast_to(known_px > 0.5, y_obs.shape)
    sigmas = schedule.sigmas(num_steps)
    shape = z_obs.shape
    n_obs = jnp.sum(known, axis=(1, 2, 3), keepdims=True).astype(jnp.float32)
    floor2 = n_obs * jnp.float32(sigma_y) ** 2

    def step(z, xs):
        i, s, s_next = xs

        def f(v):
            z0 = prim.call(denoise, v, s)
            px = decode(z0)
            return (prim.clip_data(px) if clamp else px), z0

        px, vjp, z0 = jax.vjp(f, z, has_aux=True)
        r = jnp.where(known, y_obs - px, 0.0)
        norm = jnp.sqrt(jnp.sum(r**2, axis=(1, 2, 3), keepdims=True) + floor2)
        (grad,) = vjp(-r / jnp.maximum(norm, 1e-30))
        z_next = prim.ddim_step(z, z0, s, s_next, 1.0, prim.noise(k_steps, i, shape))
        return z_next - dps_lib._step_size(zeta, step_form, sigma_data, s, s_next) * grad, None

    return prim.run_steps(step, sigmas, k_init, shape)


def _pigdm_pixel(
    denoise, decode, y_px, known_px, z_obs, m_lat, key, labels, *, num_steps, eta, w, sigma_y,
    sigma_data, form, schedule,
):  # fmt: skip
    """``pigdm`` (aid_jax/methods/pigdm.py) with g = J_Dᵀ J_decᵀ (m ⊙ (y − dec(x̂0))) on decoded
    pixels; the ``reddiff_inpaint`` paste and hole restriction use the encoded observation and
    the latent mask. Same noise rules as ``pigdm``."""
    denoise, z_ref, known_lat, k_init, k_steps = prim.setup(denoise, z_obs, m_lat, key, labels)
    y_obs = jnp.where(known_px > 0.5, y_px, 0.0)
    known = jnp.broadcast_to(known_px > 0.5, y_obs.shape)
    sigmas = schedule.sigmas(num_steps)
    shape = z_obs.shape

    def step(z, xs):
        i, s, s_next = xs

        def f(v):
            z0 = prim.call(denoise, v, s)
            return decode(z0), z0

        px, vjp, z0 = jax.vjp(f, z, has_aux=True)
        (g,) = vjp(jnp.where(known, y_obs - px, 0.0))
        noise = prim.noise(k_steps, i, shape) if eta > 0 else jnp.zeros_like(z)
        update = dict(eta=eta, w=w, sigma_y=sigma_y, sigma_data=sigma_data, form=form)
        return pigdm_lib.guided_step(z, z0, g, known_lat, z_ref, s, s_next, noise, **update), None

    return prim.run_steps(step, sigmas, k_init, shape)


def _vipaint_pixel(
    denoise, decode, y_px, known_px, z_obs, m_lat, key, labels, *, samples_per_fit, num_steps,
    **fields,
):  # fmt: skip
    """``vipaint`` (aid_jax/methods/vipaint.py) with the reconstruction loss on decoded pixels,
    VIPaint's own latent setting: the posterior is initialised from the encoded observation and
    the latent mask; L_rec(dec(x̂0)) is taken against the pixel observation and pixel mask in the
    fit and the refinement, its gradient through the decoder. Rows grouped by
    ``samples_per_fit`` as in pixel space."""
    from aid_jax.methods import vipaint as vipaint_lib

    cfg = vipaint_lib.config(num_steps, samples_per_fit, **fields)
    target = (y_px, known_px)
    return vipaint_lib.run_rows(
        denoise, z_obs, m_lat, key, labels, cfg, samples_per_fit, decode, target
    )


_PIXEL_RUNS = {"dps": _dps_pixel, "pigdm": _pigdm_pixel, "vipaint": _vipaint_pixel}


# ---------------------------------------------------------------------------------------------
# The built inpainter


@dataclasses.dataclass(frozen=True, eq=False)
class LatentInpainter(contract.Inpainter):
    """An :class:`~aid_jax.methods.Inpainter` on pixels whose method runs in latent space.

    ``jitted(params, y, mask, key, labels)`` takes ``params = (inner, vae)``:
    :meth:`call_params` makes it from the backbone's parameters (the latent denoiser's, or the
    bundle a method such as AID brings, ``params``) and the VAE's. ``image_shape`` is the pixel
    shape when the latent shape is known. ``space`` is the :class:`LatentSpace`; ``inner`` the
    latent-space inpainter (None for ``likelihood="pixel"``).
    """

    space: LatentSpace | None = dataclasses.field(default=None, repr=False)
    inner: contract.Inpainter | None = dataclasses.field(default=None, repr=False)

    def call_params(self, backbone_params):
        own = backbone_params if self.params is None else self.params
        return own, self.space.params


def _latent_shape_of(resources, inner) -> tuple[int, int, int] | None:
    if inner is not None and inner.image_shape is not None:
        return tuple(inner.image_shape)
    backbone = getattr(resources, "backbone", None)
    return tuple(backbone.image_shape) if backbone is not None else None


def build(
    base_name: str,
    options: Mapping[str, Any],
    label_dim: int,
    resources: contract.Resources,
    denoise_with_params: Callable[..., jax.Array] | None,
) -> LatentInpainter:
    """The :class:`LatentInpainter` of ``"latent/<base_name>"`` (``registry.make_inpainter``
    calls it with every option merged and checked). The VAE is ``resources.vae``; the latent
    denoiser ``denoise_with_params`` (the base method's own parameters for AID/DEFT)."""
    from aid_jax.methods import registry

    if resources.vae is None:
        raise LatentError(
            f"method 'latent/{base_name}' needs a VAE: Resources(vae=LatentSpace or sd_vae.VAE) "
            "(the harness: config.vae.path)"
        )
    space = as_space(resources.vae)
    base_opts, lat = _split(options)
    costs = latent_costs(base_name, **options)
    pixel = lat["likelihood"] == "pixel"
    inner = None
    if pixel:
        if denoise_with_params is None:
            raise ValueError(f"method 'latent/{base_name}' needs denoise_with_params")
        # The options exactly as the pixel-space method checks them (cost above).
        run = functools.partial(_PIXEL_RUNS[base_name], **base_opts)
    else:
        inner = registry.make_inpainter(
            base_name,
            denoise_with_params,
            label_dim=label_dim,
            resources=resources,
            **base_opts,
        )
    latent_shape = _latent_shape_of(resources, inner)
    if latent_shape is not None:
        check_pipeline(latent_shape, space)
    f, dilate, paste = space.factor, int(lat["dilate"]), bool(lat["paste_pixels"])

    def encode(vae_params, y, mask):
        y = jnp.asarray(y, jnp.float32)
        known_px = pixel_known(mask, y.shape[0])
        return y, known_px, space.encode(vae_params, y, known_px), latent_mask(known_px, f, dilate)

    def finish(vae_params, y, mask, z) -> contract.InpaintResult:
        x = space.decode(vae_params, z)
        if paste:
            x = jnp.where(jnp.broadcast_to(jnp.asarray(mask) > 0.5, x.shape), y, x)
        return contract.InpaintResult(x=x, **costs)

    if pixel:

        def pixel_core(params, y, mask, key, labels=None):
            bb_params, vae_params = params
            y, known_px, z_obs, m_lat = encode(vae_params, y, mask)

            if labels is None:

                def den(z, sigma):
                    return denoise_with_params(bb_params, z, sigma)
            else:

                def den(z, sigma, rows):
                    return denoise_with_params(bb_params, z, sigma, rows)

            def decode(z):
                return space.decode(vae_params, z)

            z = run(den, decode, y, known_px, z_obs, m_lat, key, labels)
            return finish(vae_params, y, mask, z)

        core = contract.per_row_keys(pixel_core, group=int(base_opts.get("samples_per_fit", 1)))
    else:

        def core(params, y, mask, key, labels=None):
            inner_params, vae_params = params
            y, _, z_obs, m_lat = encode(vae_params, y, mask)
            z = inner.jitted(inner_params, z_obs, m_lat, key, labels).x
            return finish(vae_params, y, mask, z)

    # Per-row keys: the inner inpainter takes them (grouping an image's rows, e.g. VIPaint's,
    # itself); encoding and decoding are per row anyway.
    image_shape = None if latent_shape is None else space.image_shape(latent_shape)
    return LatentInpainter(
        jitted=jax.jit(core),
        method=registry.LATENT_PREFIX + base_name,
        options=dict(options),
        nfe=costs["nfe"],
        nfe_backward=costs["nfe_backward"],
        label_dim=label_dim if inner is None else inner.label_dim,
        params=None if inner is None else inner.params,
        image_shape=image_shape,
        encoder_calls=costs["encoder_calls"],
        decoder_calls=costs["decoder_calls"],
        decoder_backward=costs["decoder_backward"],
        space=space,
        inner=inner,
    )
