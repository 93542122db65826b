"""DEFT on images: the static configuration, the combined denoiser, the σ distributions, the
parameter bundle and the deployed inpainter (docs/DEFT_DESIGN.md §4).

* :class:`DEFTConfig` — everything static about an h-network: image shape, the sampler's
  ``sampling.EDMSchedule`` and default step count, the options of DEFT_DESIGN §4
  (``output_scale``, ``gate_units``, ``gate_init``, ``sigma_dist``, ``sigma_clip``) and the
  widths. Hashable (a ``jax.jit`` static argument).
* :func:`combine` — the combined denoiser as a pure function of (D, U, γ, y, m, σ):

      "denoiser" (default):  D_total = D + s(σ)·U + γ·r,        r = m⊙(y − D),
      "scaled"   (official): D_total = D + s(σ)·[U + γ·r]

  with s(σ) = σ (``output_scale="sigma"``, the official ε-form) or
  s(σ) = σσ_d/√(σ² + σ_d²) (``"c_out"``). :func:`total_denoiser` wraps a backbone denoiser and
  an h-network into the ``DenoiseFn`` every EDM sampler takes.
* :func:`sample_sigmas` — the training noise levels: ``"deft_vp"`` (the official VP-linear
  index i ~ U{0…999}, restricted to the sampler's [σ_min, σ_max] unless ``sigma_clip=False``),
  ``"edm"`` (ln σ ~ N(P_mean, P_std²)) or ``"sampler_grid"`` (uniform over the deployment grid).
* :func:`sample` — any EDM sampler (Euler, Heun, churn; the ρ-grid or the official ``"vp_ddim"``
  grid) with D_total in place of D; pure, jit-able, generic in the denoiser (the Gaussian world
  runs the same function).
* :class:`DEFTParams` — frozen backbone + h-network params and both static configs (a pytree);
  :func:`inpaint` and :func:`make_inpainter` (the registry's ``"deft"``).

The h-network sees σ, never a step index, so a trained module runs at any step count and with
any solver.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import backbones, guidance_module, sampling
from aid_jax.deft import networks
from aid_jax.methods.contract import Inpainter, InpaintResult, per_row_keys, validate_inputs
from aid_jax.methods.primitives import MAX_COUNT

__all__ = [
    "GATE_UNITS",
    "GRIDS",
    "OUTPUT_SCALES",
    "SIGMA_DISTS",
    "DEFTConfig",
    "DEFTError",
    "DEFTParams",
    "combine",
    "deployment_sigmas",
    "hnet_apply_fn",
    "hnet_module",
    "init_hnet",
    "inpaint",
    "make_inpainter",
    "output_scale",
    "sample",
    "sample_nfe",
    "sample_sigmas",
    "total_denoiser",
    "validate_params",
    "vp_sigmas",
]

OUTPUT_SCALES = ("sigma", "c_out")
GATE_UNITS = ("scaled", "denoiser")
SIGMA_DISTS = ("deft_vp", "edm", "sampler_grid")
GRIDS = ("edm", "vp_ddim")

# The official VP schedule: β linear from 1e-4 to 0.02 over 1000 steps (DEFT_DESIGN §2).
VP_STEPS = 1000
VP_BETA = (1e-4, 0.02)

HNetApply = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""``hnet(inputs [B, H, W, 4C + 1], sigma [B]) -> (U [B, H, W, C], gamma [B])``."""


class DEFTError(ValueError):
    """Bad input to DEFT (shapes, ranges, masks, options, or parameters of another backbone)."""


@sampling.schedule_aliases
@dataclasses.dataclass(frozen=True)
class DEFTConfig:
    """Static description of a DEFT h-network and the problem it was trained on.

    Attributes:
        image_shape: (H, W, C) of the backbone's images.
        num_steps: The deployment's default step count (``inpaint`` without ``num_steps``) and
            the grid of ``sigma_dist="sampler_grid"``.
        schedule: The EDM ρ-schedule of the sampler (a ``sampling.EDMSchedule``; the flat
            ``sigma_min``/``sigma_max``/``rho`` keywords work too); [σ_min, σ_max] is also the
            training range when ``sigma_clip``.
        sigma_data: EDM's σ_data (input scaling c_in, and s(σ) for ``output_scale="c_out"``).
        output_scale: s(σ) of :func:`combine`: ``"sigma"`` (the official ε-form) or ``"c_out"``.
        gate_units: ``"denoiser"`` (default: γ·r added in denoised-image units, optimum γ ≡ 1
            at every σ, DEFT_DESIGN §5; the Gaussian study's choice, §7) or ``"scaled"`` (γ
            inside the scaled correction, the official form; optimum γ = 1/s(σ)).
        gate_init: The gate's initial value (bias of its zero-weight last layer). 0: training
            starts exactly at the backbone. The official +0.01 corresponds to −0.01 here
            (with ``gate_units="scaled"``).
        sigma_dist: Training noise levels (:func:`sample_sigmas`).
        sigma_clip: Restrict ``"deft_vp"`` / ``"edm"`` to [σ_min, σ_max] (the network is never
            queried outside); False: the official VP range [0.0100, 157.4] / unclipped EDM.
        P_mean, P_std: ln σ ~ N(P_mean, P_std²) of ``sigma_dist="edm"``.
        channels, emb_dim: Widths of the UNet U_φ (one entry per resolution level).
        gate_hidden, gate_layers: Width and depth of the gate MLP γ_φ (on the σ-embedding of
            width ``emb_dim``).
    """

    image_shape: tuple[int, int, int]
    num_steps: int = 18
    schedule: sampling.EDMSchedule = sampling.EDMSchedule()
    sigma_data: float = 0.5
    output_scale: str = "sigma"
    gate_units: str = "denoiser"
    gate_init: float = 0.0
    sigma_dist: str = "deft_vp"
    sigma_clip: bool = True
    P_mean: float = -1.2
    P_std: float = 1.2
    channels: tuple[int, ...] = (16, 20, 20)
    emb_dim: int = 32
    gate_hidden: int = 32
    gate_layers: int = 2

    def __post_init__(self):
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DEFTError(f"image_shape must be (H, W, C), got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if isinstance(self.num_steps, bool) or int(self.num_steps) < 1:
            raise DEFTError(f"num_steps must be >= 1, got {self.num_steps}")
        for name, value, allowed in (
            ("output_scale", self.output_scale, OUTPUT_SCALES),
            ("gate_units", self.gate_units, GATE_UNITS),
            ("sigma_dist", self.sigma_dist, SIGMA_DISTS),
        ):
            if value not in allowed:
                raise DEFTError(f"{name} must be one of {allowed}, got {value!r}")
        if not math.isfinite(float(self.gate_init)):
            raise DEFTError(f"gate_init must be finite, got {self.gate_init}")
        if not self.sigma_data > 0 or not self.P_std > 0:
            raise DEFTError("sigma_data and P_std must be > 0")
        if not self.channels or min(self.channels) < 1 or self.emb_dim < 2:
            raise DEFTError(f"bad widths channels={self.channels}, emb_dim={self.emb_dim}")
        if self.gate_hidden < 1 or self.gate_layers < 0:
            raise DEFTError("gate_hidden must be >= 1 and gate_layers >= 0")
        levels = len(self.channels)
        h, w, _ = shape
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise DEFTError(
                f"channels has {levels} levels, so H and W must divide by "
                f"{2 ** (levels - 1)}; got {h}x{w}"
            )

    def to_dict(self) -> dict:
        """Plain JSON values (``deft_config.json``); the schedule as a nested dict."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> DEFTConfig:
        known = {f.name for f in dataclasses.fields(cls)} | set(sampling.SCHEDULE_FIELDS)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DEFTError(f"unknown DEFTConfig field(s) {unknown}; known: {sorted(known)}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(fields.get("schedule"), dict):
            fields["schedule"] = sampling.EDMSchedule(**fields["schedule"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------
# The combined denoiser


def _per_row(v, ndim: int) -> jax.Array:
    """A scalar stays a scalar; ``[B]`` becomes ``[B, 1, …]`` for broadcasting over images."""
    v = jnp.asarray(v, jnp.float32)
    return v if v.ndim == 0 else v.reshape((-1,) + (1,) * (ndim - 1))


def output_scale(config: DEFTConfig, sigma) -> jax.Array:
    """s(σ): σ (``"sigma"``) or c_out = σσ_d/√(σ² + σ_d²) (``"c_out"``); the shape of σ."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if config.output_scale == "sigma":
        return sigma
    sd = config.sigma_data
    return sigma * sd * jax.lax.rsqrt(sigma**2 + sd**2)


def combine(config: DEFTConfig, denoised, u, gamma, y, mask, sigma) -> jax.Array:
    """D_total from the backbone's D, the h-network's (U, γ) and the observation (y, m).

    ``"denoiser"``: D + s(σ)·U + γ·r; ``"scaled"``: D + s(σ)·(U + γ·r), with r = m⊙(y − D).
    ``gamma`` and ``sigma`` are scalars or ``[B]``; ``mask`` ``[B|1, H, W, 1|C]``.
    """
    nd = denoised.ndim
    s = _per_row(output_scale(config, sigma), nd)
    g = _per_row(gamma, nd)
    mask = mask.astype(denoised.dtype)
    r = mask * (mask * y - denoised)
    if config.gate_units == "scaled":
        return denoised + s * (u + g * r)
    return denoised + s * u + g * r


def hnet_module(config: DEFTConfig) -> networks.HNet:
    return networks.HNet(
        out_channels=config.image_shape[2],
        channels=config.channels,
        emb_dim=config.emb_dim,
        gate_emb_dim=config.emb_dim,
        gate_hidden=config.gate_hidden,
        gate_layers=config.gate_layers,
        gate_init=float(config.gate_init),
    )


def init_hnet(key: jax.Array, config: DEFTConfig):
    """Fresh h-network params ``{"unet": …, "gate": …}`` (U ≡ 0, γ ≡ gate_init)."""
    h, w, c = config.image_shape
    dummy = jnp.zeros((1, h, w, 4 * c + 1), jnp.float32)
    return hnet_module(config).init(key, dummy, jnp.ones((1,), jnp.float32))["params"]


def hnet_apply_fn(hnet_params, config: DEFTConfig) -> HNetApply:
    """The h-network as a closure ``(inputs, sigma [B]) -> (U, γ)``."""
    net = hnet_module(config)

    def apply(inputs, sigma):
        return net.apply({"params": hnet_params}, inputs, sigma)

    return apply


def total_denoiser(
    denoise: sampling.DenoiseFn, hnet: HNetApply, config: DEFTConfig, y, mask
) -> sampling.DenoiseFn:
    """D_total(x, σ) of a backbone denoiser and an h-network, with (y, m) closed over: the
    ``DenoiseFn`` every EDM sampler takes (one backbone and one h-network forward per call)."""

    def d_total(x, sigma):
        sigma_b = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
        denoised = denoise(x, sigma_b).astype(jnp.float32)
        inputs = networks.actor_inputs(x, denoised, y, mask, sigma_b, config.sigma_data)
        u, gamma = hnet(inputs, sigma_b)
        return combine(config, denoised, u, gamma, y, mask, sigma_b)

    return d_total


# ---------------------------------------------------------------------------------------------
# Noise levels: training distributions and deployment grids


@functools.lru_cache(maxsize=1)
def vp_sigmas() -> np.ndarray:
    """The official noise levels σ_i = √((1 − ᾱ_i)/ᾱ_i), ᾱ_i = ∏_{j≤i}(1 − β_j), i = 0…999
    (β linear 1e-4 … 0.02), float64 ``[1000]``: 0.0100 … 157.4."""
    betas = np.linspace(VP_BETA[0], VP_BETA[1], VP_STEPS, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


def _training_table(config: DEFTConfig) -> np.ndarray | None:
    """The discrete σ's a training distribution draws uniformly from (None for ``"edm"``)."""
    if config.sigma_dist == "deft_vp":
        table = vp_sigmas()
        if config.sigma_clip:
            s = config.schedule
            table = table[(table >= s.sigma_min) & (table <= s.sigma_max)]
        return table
    if config.sigma_dist == "sampler_grid":
        return config.schedule.sigmas_f64(int(config.num_steps))[:-1]
    return None


def sample_sigmas(config: DEFTConfig, key: jax.Array, num: int) -> jax.Array:
    """``num`` training noise levels float32 ``[num]`` from ``config.sigma_dist``.

    ``"deft_vp"``: σ_VP(i) with i uniform over the official 1000 levels (restricted to
    [σ_min, σ_max] with ``sigma_clip``: i uniform over the levels inside, 7 % of them are above
    80); ``"edm"``: ln σ ~ N(P_mean, P_std²) (clipped to [σ_min, σ_max] with ``sigma_clip``);
    ``"sampler_grid"``: uniform over the positive levels of ``schedule.sigmas(num_steps)``.
    """
    table = _training_table(config)
    if table is not None:
        idx = jax.random.randint(key, (num,), 0, table.shape[0])
        return jnp.asarray(table, jnp.float32)[idx]
    ln = config.P_mean + config.P_std * jax.random.normal(key, (num,), jnp.float32)
    sigma = jnp.exp(ln)
    if config.sigma_clip:
        s = config.schedule
        sigma = jnp.clip(sigma, s.sigma_min, s.sigma_max)
    return sigma


def deployment_sigmas(config: DEFTConfig, num_steps: int, grid: str = "edm") -> jax.Array:
    """The sampler's float32 noise levels ``[num_steps + 1]`` ending with 0.

    ``"edm"``: ``config.schedule.sigmas(num_steps)``. ``"vp_ddim"``: the official DDIM grid,
    σ_VP at indices (K − 1)·⌊1000/K⌋, …, ⌊1000/K⌋, 0 (K = 100: 990, 980, …, 0, i.e.
    143.8 … 0.0100), then 0 — DDIM(η = 0) on it is exactly Euler with D_total (DEFT_DESIGN §4).
    """
    if grid not in GRIDS:
        raise DEFTError(f"grid must be one of {GRIDS}, got {grid!r}")
    if grid == "edm":
        return config.schedule.sigmas(int(num_steps))
    k = int(num_steps)
    if k > VP_STEPS:
        raise DEFTError(f"grid 'vp_ddim' has at most {VP_STEPS} steps, got {k}")
    idx = np.arange(k)[::-1] * (VP_STEPS // k)
    return jnp.asarray(np.concatenate([vp_sigmas()[idx], [0.0]]), jnp.float32)


# ---------------------------------------------------------------------------------------------
# The sampler (generic in the denoiser) and its cost


def _check_sampler(solver, num_steps, grid, S_churn, S_min, S_max, S_noise) -> tuple:
    """The churn options as floats (``sampling.check_churn``); DEFTError on any bad option."""
    if solver not in sampling.SOLVERS:
        raise DEFTError(f"solver must be one of {sampling.SOLVERS}, got {solver!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise DEFTError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps > MAX_COUNT:  # O(1), before any schedule is built
        raise DEFTError(f"num_steps must be at most {MAX_COUNT:,}, got {num_steps}")
    if grid not in GRIDS:
        raise DEFTError(f"grid must be one of {GRIDS}, got {grid!r}")
    try:  # the churn options' rules are SamplerConfig's
        return sampling.check_churn(solver, int(num_steps), S_churn, S_min, S_max, S_noise)
    except (TypeError, ValueError) as e:
        raise DEFTError(str(e)) from e


def sample_nfe(num_steps: int, solver: str = "euler") -> int:
    """Denoiser (and h-network) evaluations of :func:`sample`: K (Euler) or 2K − 1 (Heun) —
    the unguided sampler's; every grid ends at σ = 0, whose step is Euler."""
    if solver not in sampling.SOLVERS:
        raise DEFTError(f"solver must be one of {sampling.SOLVERS}, got {solver!r}")
    return 2 * int(num_steps) - 1 if solver == "heun" else int(num_steps)


def sample(
    denoise: sampling.DenoiseFn,
    hnet: HNetApply,
    config: DEFTConfig,
    y,
    mask,
    key: jax.Array,
    *,
    num_steps: int | None = None,
    solver: str = "euler",
    grid: str = "edm",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> InpaintResult:
    """DEFT's sampler: the EDM sampler with D_total (:func:`total_denoiser`) at every evaluation.

    x = σ_0·n, n from ``split(key)[0]``; then ``sampling.integrate`` (Euler, Heun, churn with
    noise from ``split(key)[1]``) down the grid of :func:`deployment_sigmas`. Pure and jit-able;
    ``denoise`` is any ``DenoiseFn`` (a backbone bound to its params and labels, the Gaussian
    world's exact denoiser). Returns the raw sample (no paste-back) and the NFE.
    """
    steps = int(config.num_steps if num_steps is None else num_steps)
    S_churn, S_min, S_max, S_noise = _check_sampler(
        solver, steps, grid, S_churn, S_min, S_max, S_noise
    )
    y = jnp.asarray(y, jnp.float32)
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), y.shape[:3] + (1,))
    y = jnp.where(mask > 0.5, y, 0.0)  # the hole is never read
    k_init, k_steps = jax.random.split(key)
    sigmas = deployment_sigmas(config, steps, grid)
    x = sigmas[0] * jax.random.normal(k_init, y.shape, jnp.float32)
    d_total = total_denoiser(denoise, hnet, config, y, mask)
    x, _ = sampling.integrate(
        d_total,
        x,
        sigmas,
        k_steps,
        solver=solver,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
    )
    return InpaintResult(x=x, nfe=sample_nfe(steps, solver), nfe_backward=0)


# ---------------------------------------------------------------------------------------------
# The deployable bundle and the inpainter


@guidance_module.register_bundle
@dataclasses.dataclass(frozen=True)
class DEFTParams(guidance_module.GuidanceBundle):
    """``params`` of :func:`inpaint`: frozen backbone + trained h-network, with static configs
    (a pytree; ``denoise`` and ``label_dim`` from ``guidance_module.GuidanceBundle``).

    Attributes:
        backbone: The backbone's parameter pytree.
        hnet: The h-network's parameter pytree (``{"unet": …, "gate": …}``).
        backbone_config: The backbone's static config (``Backbone.config``).
        config: The :class:`DEFTConfig` the h-network was trained with.
        backbone_sha256: ``params_sha256`` of the backbone it was trained against (checked by
            ``aid_jax.deft.api.load``).
    """

    backbone: Any
    hnet: Any
    backbone_config: Any
    config: DEFTConfig
    backbone_sha256: str = ""

    SPEC = guidance_module.BundleSpec(
        field="hnet",
        noun="h-network",
        what="DEFT h-network",
        load_call="aid_jax.deft.api.load",
        config_fields="channels / emb_dim / gate widths / image channels",
        error=DEFTError,
    )


@functools.lru_cache(maxsize=32)
def _hnet_shapes(config: DEFTConfig):
    return jax.tree.map(
        lambda a: a.shape, jax.eval_shape(lambda: init_hnet(jax.random.key(0), config))
    )


def validate_params(params: DEFTParams) -> None:
    """The h-network fits the backbone (image shape) and its config (widths); else
    :class:`DEFTError`. Host-side, before anything compiles."""
    guidance_module.validate_bundle(params, DEFTParams, _hnet_shapes)


_is_traced = guidance_module.is_traced


def _one_mask_channel(mask, channels: int):
    return guidance_module.one_mask_channel(mask, channels, DEFTError, "DEFT")


def inpaint(
    params: DEFTParams,
    x,
    mask,
    *,
    key: jax.Array | None = None,
    num_steps: int | None = None,
    solver: str = "euler",
    grid: str = "edm",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    paste_back: bool = True,
    labels=None,
) -> InpaintResult:
    """Inpaint with a trained DEFT h-network. Pure and jit-able.

    Host-side checks (inputs, options, params against the backbone), then one jitted program
    per input shapes and static options: :func:`sample` with the backbone's denoiser.

    Args:
        params: :class:`DEFTParams` (``aid_jax.deft.api.load(path)``).
        x: Images ``[B, H, W, C]`` in [-1, 1]; only the known pixels are read.
        mask: ``[B|1, H, W, 1|C]``, 1 = known pixel.
        key: PRNG key of the initial noise and the churn (default ``jax.random.key(0)``).
        num_steps: Sampler steps (default ``params.config.num_steps``).
        solver: ``'euler'`` (NFE K) or ``'heun'`` (NFE 2K − 1).
        grid: ``'edm'`` (the config's ρ-schedule) or ``'vp_ddim'`` (the official DDIM grid).
        S_churn, S_min, S_max, S_noise: EDM's stochastic sampler (churn); 0 = deterministic.
        paste_back: Return m⊙x + (1 − m)⊙x̂ (the official code does not paste back).
        labels: Class labels for a class-conditional backbone (the backbone sees them, the
            h-network does not); ``backbones.prepare_labels``' rules.

    Returns:
        ``InpaintResult`` (``x``, ``nfe``, ``nfe_backward = 0``).

    Raises:
        DEFTError (a ValueError): bad shapes, dtypes, ranges, masks, options or params of
            another backbone/resolution, before anything compiles.
    """
    validate_params(params)
    steps = params.config.num_steps if num_steps is None else num_steps
    churn = _check_sampler(solver, steps, grid, S_churn, S_min, S_max, S_noise)
    if not isinstance(paste_back, bool):
        raise DEFTError(f"paste_back must be True or False, got {paste_back!r}")
    validate_inputs(x, mask, params.config.image_shape, host_only=False, error=DEFTError, name="x")
    x = jnp.asarray(x)
    mask = jnp.asarray(mask)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DEFTError(f"x must be a float array in [-1, 1], got dtype {x.dtype}")
    mask = _one_mask_channel(mask, x.shape[-1])
    if not (labels is None and params.label_dim and _is_traced(x, mask)):
        labels = backbones.prepare_labels(labels, params.label_dim, x.shape[0])
    key = jax.random.key(0) if key is None else key
    return _sample(
        params,
        x,
        mask,
        key,
        labels,
        num_steps=int(steps),
        solver=solver,
        grid=grid,
        churn=churn,
        paste_back=paste_back,
    )


@functools.partial(jax.jit, static_argnames=("num_steps", "solver", "grid", "churn", "paste_back"))
def _sample(
    params: DEFTParams, x, mask, key, labels, *, num_steps, solver, grid, churn, paste_back
):
    """The jitted core of :func:`inpaint` (inputs checked; ``mask`` one channel)."""
    mask = jnp.broadcast_to(mask.astype(jnp.float32), x.shape[:3] + (1,))
    y = jnp.where(mask > 0.5, x.astype(jnp.float32), 0.0)
    if labels is None:
        denoise = params.denoise
    else:

        def denoise(x_, sigma):
            return params.denoise(x_, sigma, labels)

    S_churn, S_min, S_max, S_noise = churn
    res = sample(
        denoise,
        hnet_apply_fn(params.hnet, params.config),
        params.config,
        y,
        mask,
        key,
        num_steps=num_steps,
        solver=solver,
        grid=grid,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
    )
    out = res.x
    if paste_back:
        out = mask * y + (1.0 - mask) * out
    return InpaintResult(x=out, nfe=res.nfe, nfe_backward=0)


def make_inpainter(
    deft_params: DEFTParams,
    *,
    num_steps: int | None = None,
    solver: str = "euler",
    grid: str = "edm",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    paste_back: bool = False,
) -> Inpainter:
    """The :class:`~aid_jax.methods.Inpainter` of a trained h-network (the registry's
    ``"deft"``): ``fn(fn.params, y, mask, key, labels=None)``; the jitted core takes one key or
    one key per row (``contract.per_row_keys``)."""
    validate_params(deft_params)
    steps = int(deft_params.config.num_steps if num_steps is None else num_steps)
    options = dict(
        num_steps=steps,
        solver=solver,
        grid=grid,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
        paste_back=paste_back,
    )
    _check_sampler(solver, steps, grid, S_churn, S_min, S_max, S_noise)

    def core(params, y, mask, key, labels=None):
        return inpaint(params, y, mask, key=key, labels=labels, **options)

    return Inpainter(
        jitted=jax.jit(per_row_keys(core)),
        method="deft",
        options=options,
        nfe=sample_nfe(steps, solver),
        nfe_backward=0,
        label_dim=deft_params.label_dim,
        params=deft_params,
        image_shape=tuple(deft_params.config.image_shape),
    )
