"""AID on images: the static configuration, the actor and critic as closures, the parameter bundle
and the deployed inpainter (AID.md §3, §6).

* :class:`AIDConfig` — everything static about a trained guidance module: the image shape, the
  training schedule (K and the ``sampling.EDMSchedule`` σ_min, σ_max, ρ), the relaxed problem
  (λ, β), the terminal cost and the network widths. Hashable, so it is a ``jax.jit`` static
  argument.
* :func:`guidance_mean_fn` / :func:`value_fn` — the actor μ_φ and the critic V̂_ψ as the closures
  :mod:`aid_jax.aid.control` and :mod:`aid_jax.aid.losses` take, with (y, m) closed over.
* :class:`AIDParams` — the frozen backbone's parameters and the actor's, plus both static configs:
  the ``params`` of ``aid_jax.inpaint(params, x, mask)``. A registered pytree, so it passes through
  ``jax.jit`` and ``jax.device_put`` (replicated on a mesh) like any params tree.
* :func:`inpaint` — the deterministic controlled sampler (Euler or Heun, any step count) with the
  guidance added to the drift, optional paste-back. On a class-conditional backbone
  (``backbone_config.label_dim > 0``) it needs ``labels=`` (class ids or one-hot rows,
  ``aid_jax.backbones.prepare_labels``); the backbone's denoiser inside the controlled sampler
  sees them, the guidance network does not.

The guidance module is indexed by σ, not by the step number: on another step count or with Heun
it is evaluated at that sampler's noise levels (the transfer the paper claims; first measurements
in docs/AID_DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import backbones, guidance_module, sampling
from aid_jax.aid import control, networks
from aid_jax.methods.contract import Inpainter, InpaintResult, per_row_keys, validate_inputs
from aid_jax.methods.primitives import MAX_COUNT

__all__ = [
    "AIDConfig",
    "AIDParams",
    "AIDError",
    "actor_module",
    "critic_inputs",
    "critic_module",
    "guidance_mean_fn",
    "init_actor",
    "init_critic",
    "inpaint",
    "validate_params",
    "value_fn",
]

BETA_WEIGHTINGS = ("uniform", "inv_sigma2")
OUTPUTS = ("denoiser", "denoiser_step", "drift")
BASES = ("none", "projection")
CHARGES = ("total", "residual")
OUTPUT_SCALES = ("none", "sigma")
LPIPS_TARGETS = ("x0", "teacher")
PSI_SPACES = ("latent", "pixel")  # where Ψ compares (pixel: on the VAE's decoded images)


class AIDError(ValueError):
    """Bad input to AID (shapes, ranges, masks, or parameters of another backbone)."""


@sampling.schedule_aliases
@dataclasses.dataclass(frozen=True)
class AIDConfig:
    """Static description of a guidance module and the problem it was trained on.

    Attributes:
        image_shape: (H, W, C) of the backbone's images.
        num_steps: K, the training sampler's step count (deployment may use any other).
        schedule: The EDM ρ-schedule of the sampler (AID.md §2), a ``sampling.EDMSchedule``;
            the flat ``sigma_min``, ``sigma_max``, ``rho`` keywords (ml-collections configs,
            ``config.aid.sigma_min``) are accepted too and read back as properties.
        sigma_data: EDM's σ_data (the actor's input scaling c_in).
        lam: Temperature λ of the Gaussian policy (per-coordinate std √(2λ/β)).
        beta: Weight β of the running cost (β/2)‖u‖²/d.
        hole_weight: Weight of the hole's pixels in Ψ's MSE term (1 = plain mean squared error).
        psi_mse, psi_observed: Weights of the terminal cost's terms (docs/AID_DESIGN.md, "Objectives
            that sample the posterior"): Ψ = psi_mse·Σ w_i (x_i − x0_i)²/d (today's MSE to x0,
            whose optimum is the conditional mean) + psi_observed·‖m ⊙ (x − y)‖²/d (consistency
            on the observed pixels only: needs no x0 and keeps the output's dependence on X_0).
        beta_weighting: The running cost per step: ``'uniform'`` β_k = β; ``'inv_sigma2'``
            β_k = β/σ_k², control cheap where the noise is high (the path-KL weighting). The
            policy std follows, s_k = √(2λ/β_k), so E[ℓ_k(A)] = ℓ_k(μ) + λ at every step.
        actor_channels, actor_emb_dim: Widths of the guidance UNet.
        critic_channels, critic_hidden, critic_emb_dim: Widths of the critic.
        critic_x0: Whether the critic also sees the ground truth x0 (never the deployed actor).
        output: How the network's output n becomes the drift guidance μ
            (docs/AID_DESIGN.md). ``'drift'``: μ = n, the literal form. ``'denoiser'`` (default):
            μ = c(σ)·n with c(σ) = −(dσ/dr)/σ of the continuous ρ-schedule
            (:func:`denoiser_rate`), so the probability-flow ODE's drift becomes the drift with
            D replaced by D + n: the network outputs a correction of the denoised estimate in
            image units, and n = m⊙(y − D) (one of its inputs) is DDNM's projection. μ is a
            function of (σ, x) only, like the continuous-time control it approximates; a
            discrete step realises D + n only approximately (the last of K = 10 Euler steps
            scales n by c(σ_min)/K ≈ 2.5). ``'denoiser_step'``: the rate of the sampler's own
            step, −K(σ_{k+1} − σ_k)/σ (:func:`step_rate`), which makes every step of every K
            and both Heun stages exactly the step with D + n.
        base: A fixed guidance the network's output is added to (docs/AID_DESIGN.md).
            ``'none'`` (default): μ is the network alone, so a zero-initialised module starts at
            the unguided sampler (AID.md §3). ``'projection'``: the denoised estimate is first
            corrected by the measurement projection b = m⊙(y − D), i.e. μ = c(σ)·(b + n)
            (``'drift'``: μ = c(σ)·b + n), so training starts at the deterministic
            projection sampler (DDNM with η = 0) and the module learns what it misses.
        output_scale: ``'none'`` (default): the network's output n is used as it is.
            ``'sigma'``: n is multiplied by σ/σ_data first, so a unit of output moves the final
            image by about the same amount at every noise level (the probability-flow map
            contracts a change of x at σ by ~σ_data/σ) and, with ``beta_weighting='inv_sigma2'``,
            costs about the same at every step (the LQ actor's output in units of the policy
            std, docs/AID_DESIGN.md): without it the last steps' β_k = β/σ_k², 10⁶ times the
            first's, swamp the actor's gradient.
        control_sigma_min: The learned guidance acts only at σ ≥ this (0, the default: at every
            step); below it the network's output is zeroed (a ``base`` still acts). The LQ
            world's observed-pixel objective with β/σ² gets closest to the posterior with
            control only at σ ≥ 5 (docs/AID_DESIGN.md), which also stops an optimiser from
            fixing the observed pixels at the last, cheapest steps.
        charge: What the running cost charges (docs/AID_DESIGN.md, "Warm start"). ``'total'``
            (default): the whole action, (β/2)‖A‖²/d (AID.md §2). ``'residual'``: only the
            learned part, (β/2)‖A − μ_ref‖²/d with μ_ref the ``base`` drift — the base is a
            reference drift the control is measured from, so starting at the projection sampler
            costs nothing. This changes the control problem (its optimum is the reference plus
            the cheapest correction, not the cheapest drift); with ``base='none'`` the two agree.
        psi_teacher: Weight of the teacher term of Ψ, ‖x − T‖²/d with T a strong sampler's output
            started from the same X_0 (its noise derived from X_0's key; ``config.train.teacher``
            names the sampler). A function of X_0, so its optimum keeps the dependence on X_0.
        psi_lpips: Weight of a perceptual term of Ψ, LPIPS(x, target) on the hole
            (``aid_jax.metrics.lpips``, net ``lpips_net``) with target ``lpips_target``
            (``'x0'`` or ``'teacher'``).
        psi_space: Where Ψ compares, for a latent backbone (docs/LATENT.md): ``'latent'``
            (default; also the only choice in pixel space) or ``'pixel'`` — every Ψ term is
            taken on the VAE's decoded x_K against the decoded x0 (and T), with the latent mask
            upsampled to pixels; the gradient passes through the decoder. Needs latent
            training data (``data.name='vae_latents'``), whose VAE decodes.
        critic_teacher: Whether the critic also sees the teacher's output T (privileged, like
            ``critic_x0``; the value of a state depends on T, which the state alone does not
            show late in the rollout). Never the deployed actor.
    """

    image_shape: tuple[int, int, int]
    num_steps: int = 10
    schedule: sampling.EDMSchedule = sampling.EDMSchedule()
    sigma_data: float = 0.5
    lam: float = 0.01
    beta: float = 0.1
    hole_weight: float = 1.0
    psi_mse: float = 1.0
    psi_observed: float = 0.0
    beta_weighting: str = "uniform"
    actor_channels: tuple[int, ...] = (8, 8, 8)
    actor_emb_dim: int = 16
    critic_channels: tuple[int, ...] = (8, 16, 32)
    critic_hidden: int = 32
    critic_emb_dim: int = 16
    critic_x0: bool = False
    output: str = "denoiser"
    base: str = "none"
    charge: str = "total"
    output_scale: str = "none"
    control_sigma_min: float = 0.0
    psi_teacher: float = 0.0
    psi_lpips: float = 0.0
    lpips_target: str = "x0"
    lpips_net: str = "alex"
    critic_teacher: bool = False
    psi_space: str = "latent"

    def __post_init__(self):
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise AIDError(f"image_shape must be (H, W, C), got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "actor_channels", tuple(int(c) for c in self.actor_channels))
        object.__setattr__(self, "critic_channels", tuple(int(c) for c in self.critic_channels))
        if int(self.num_steps) < 1:
            raise AIDError(f"num_steps must be >= 1, got {self.num_steps}")
        if not self.lam > 0 or not self.beta > 0:
            raise AIDError(f"lam and beta must be > 0, got lam={self.lam}, beta={self.beta}")
        if self.output not in OUTPUTS:
            raise AIDError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.base not in BASES:
            raise AIDError(f"base must be one of {BASES}, got {self.base!r}")
        if self.output_scale not in OUTPUT_SCALES:
            raise AIDError(
                f"output_scale must be one of {OUTPUT_SCALES}, got {self.output_scale!r}"
            )
        if not self.control_sigma_min >= 0:
            raise AIDError(f"control_sigma_min must be >= 0, got {self.control_sigma_min}")
        if self.hole_weight < 0:
            raise AIDError(f"hole_weight must be >= 0, got {self.hole_weight}")
        weights = dict(
            psi_mse=self.psi_mse,
            psi_observed=self.psi_observed,
            psi_teacher=self.psi_teacher,
            psi_lpips=self.psi_lpips,
        )
        if min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise AIDError(
                "the terminal cost's weights must be >= 0 with a positive sum (Ψ needs a term), "
                f"got {weights}"
            )
        if self.charge not in CHARGES:
            raise AIDError(f"charge must be one of {CHARGES}, got {self.charge!r}")
        if self.lpips_target not in LPIPS_TARGETS:
            raise AIDError(
                f"lpips_target must be one of {LPIPS_TARGETS}, got {self.lpips_target!r}"
            )
        if self.psi_space not in PSI_SPACES:
            raise AIDError(f"psi_space must be one of {PSI_SPACES}, got {self.psi_space!r}")
        if self.lpips_net not in ("alex", "vgg"):
            raise AIDError(f"lpips_net must be 'alex' or 'vgg', got {self.lpips_net!r}")
        if self.beta_weighting not in BETA_WEIGHTINGS:
            raise AIDError(
                f"beta_weighting must be one of {BETA_WEIGHTINGS}, got {self.beta_weighting!r}"
            )
        levels = len(self.actor_channels)
        h, w, _ = shape
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise AIDError(
                f"actor_channels has {levels} levels, so H and W must divide by "
                f"{2 ** (levels - 1)}; got {h}x{w}"
            )

    @property
    def uses_teacher(self) -> bool:
        """Whether training needs the teacher's output T (a Ψ term or the critic reads it)."""
        lpips_teacher = self.psi_lpips > 0 and self.lpips_target == "teacher"
        return self.psi_teacher > 0 or lpips_teacher or self.critic_teacher

    @property
    def policy_std(self) -> float:
        """s = √(2λ/β), the per-coordinate std of the training policy (AID.md §2) for the
        uniform weighting (per step: :meth:`policy_stds`)."""
        return control.gaussian_policy_std(self.lam, self.beta)

    def betas(self, num_steps: int | None = None) -> np.ndarray:
        """β_k of the running cost per step, float32 ``[K]`` (``beta_weighting``)."""
        sig = np.asarray(self.sigmas(num_steps), np.float64)[:-1]
        scale = 1.0 / sig**2 if self.beta_weighting == "inv_sigma2" else np.ones_like(sig)
        return (self.beta * scale).astype(np.float32)

    def policy_stds(self, num_steps: int | None = None) -> np.ndarray:
        """s_k = √(2λ/β_k), float32 ``[K]``."""
        return np.sqrt(2.0 * self.lam / self.betas(num_steps).astype(np.float64)).astype(np.float32)

    def sigmas(self, num_steps: int | None = None) -> jax.Array:
        """The float32 noise levels ``[N + 1]`` of ``num_steps`` (default K) steps."""
        return self.schedule.sigmas(int(num_steps or self.num_steps))

    def to_dict(self) -> dict:
        """Plain JSON values (``aid_config.json``); the schedule as a nested dict."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> AIDConfig:
        """Inverse of :meth:`to_dict`; also reads the flat ``sigma_min`` / ``sigma_max`` /
        ``rho`` keys of aid_config.json files written before the schedule was nested."""
        known = {f.name for f in dataclasses.fields(cls)} | set(sampling.SCHEDULE_FIELDS)
        unknown = sorted(set(d) - known)
        if unknown:
            raise AIDError(f"unknown AIDConfig field(s) {unknown}; known: {sorted(known)}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(fields.get("schedule"), dict):
            fields["schedule"] = sampling.EDMSchedule(**fields["schedule"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------
# Networks as closures


def actor_module(config: AIDConfig) -> networks.GuidanceUNet:
    return networks.GuidanceUNet(
        out_channels=config.image_shape[2],
        channels=config.actor_channels,
        emb_dim=config.actor_emb_dim,
    )


def critic_module(config: AIDConfig) -> networks.Critic:
    return networks.Critic(
        channels=config.critic_channels,
        emb_dim=config.critic_emb_dim,
        hidden=config.critic_hidden,
    )


def critic_inputs(
    x, y, mask, sigma, x0=None, sigma_data: float = networks.SIGMA_DATA, teacher=None
):
    """[c_in(σ)·x, y, m, m⊙(y − x) (, x0) (, T)] on channels.

    No D(x; σ): the pathwise actor evaluates the critic at states the denoiser never saw, and
    calling the backbone there would cost a forward pass per step (AID.md §4 keeps the backbone
    out of every gradient).
    """
    c_in = jax.lax.rsqrt(jnp.asarray(sigma, jnp.float32) ** 2 + sigma_data**2)
    mask = jnp.broadcast_to(mask, x.shape[:-1] + mask.shape[-1:]).astype(x.dtype)
    y = mask * y
    parts = [c_in * x, y, mask, mask * (y - x)]
    if x0 is not None:
        parts.append(x0)
    if teacher is not None:
        parts.append(teacher)
    return jnp.concatenate(parts, axis=-1)


def _dummy(config: AIDConfig, channels: int) -> jax.Array:
    h, w, _ = config.image_shape
    return jnp.zeros((1, h, w, channels), jnp.float32)


def init_actor(key: jax.Array, config: AIDConfig):
    c = config.image_shape[2]
    return actor_module(config).init(key, _dummy(config, 4 * c + 1), jnp.ones((1,)))["params"]


def init_critic(key: jax.Array, config: AIDConfig):
    c = config.image_shape[2]
    channels = 3 * c + 1 + (c if config.critic_x0 else 0) + (c if config.critic_teacher else 0)
    return critic_module(config).init(key, _dummy(config, channels), jnp.ones((1,)))["params"]


def denoiser_rate(config: AIDConfig, sigma) -> jax.Array:
    """c(σ) = −(dσ/dr)/σ of the continuous ρ-schedule on r ∈ [0, 1]:
    σ(r) = (a + r(b − a))^ρ, a = σ_max^{1/ρ}, b = σ_min^{1/ρ}  ⇒  c(σ) = ρ (a − b) σ^{−1/ρ}.

    With μ = c(σ)·n the probability-flow drift (dσ/dr)(x − D)/σ + μ equals
    (dσ/dr)(x − (D + n))/σ: the network's output n corrects the denoised estimate. c depends on σ
    only (not on K or the solver), so the module means the same thing at any step count.
    """
    schedule = config.schedule
    rho = schedule.rho
    a, b = schedule.sigma_max ** (1 / rho), schedule.sigma_min ** (1 / rho)
    return rho * (a - b) * jnp.asarray(sigma, jnp.float32) ** (-1.0 / rho)


def step_rate(sigma, ds_dr) -> jax.Array:
    """−(dσ/dr)/σ of the sampler's current step: the drift (dσ/dr)(x − D)/σ + rate·n equals
    (dσ/dr)(x − (D + n))/σ exactly, at every step count and Heun stage."""
    return -jnp.asarray(ds_dr, jnp.float32) / jnp.asarray(sigma, jnp.float32)


def reference_fn(config: AIDConfig, y, mask) -> control.GuidanceMeanFn:
    """μ_ref(k, r, σ, x, D, dσ/dr): the fixed part of the guidance (``config.base``), what
    ``charge='residual'`` measures the control from; zeros for ``base='none'``."""

    def ref(k, r, sigma, x, denoised, ds_dr):
        del k, r, x
        if config.base == "none":
            return jnp.zeros_like(denoised)
        projection = mask * (y - denoised)
        if config.output == "denoiser_step":
            return step_rate(sigma, ds_dr) * projection
        return denoiser_rate(config, sigma) * projection

    return ref


def guidance_mean_fn(actor_params, config: AIDConfig, y, mask) -> control.GuidanceMeanFn:
    """μ_φ(k, r, σ, x, D, dσ/dr) with (y, m) closed over; m is ``[B, H, W, 1]``.

    The network sees σ, not k or r, so the module transfers to other step counts and solvers.
    ``config.output`` says how its output becomes μ (:class:`AIDConfig`).
    """
    net = actor_module(config)

    def mu(k, r, sigma, x, denoised, ds_dr):
        del k, r
        inputs = networks.actor_inputs(x, denoised, y, mask, sigma, config.sigma_data)
        sigma_b = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        out = net.apply({"params": actor_params}, inputs, sigma_b)
        if config.output_scale == "sigma":
            out = out * (jnp.asarray(sigma, jnp.float32) / config.sigma_data).astype(out.dtype)
        if config.control_sigma_min > 0:
            out = jnp.where(jnp.asarray(sigma) >= config.control_sigma_min, out, 0.0)
        if config.output == "denoiser_step":
            rate = step_rate(sigma, ds_dr)
        else:
            rate = denoiser_rate(config, sigma)
        if config.base == "projection":
            projection = mask * (y - denoised)
            if config.output == "drift":
                return rate * projection + out
            out = projection + out
        if config.output == "drift":
            return out
        return rate * out

    return mu


def value_fn(critic_params, config: AIDConfig, y, mask, x0=None, teacher=None):
    """V_ψ(k, r, σ, x) -> [B] (the network, without the −λr term of losses.value_estimates)."""
    net = critic_module(config)
    if config.critic_x0 and x0 is None:
        raise AIDError("this critic sees the ground truth (critic_x0=True): pass x0")
    if config.critic_teacher and teacher is None:
        raise AIDError("this critic sees the teacher's output (critic_teacher=True): pass teacher")

    def v(k, r, sigma, x):
        del k, r
        x0_in = x0 if config.critic_x0 else None
        t_in = teacher if config.critic_teacher else None
        inputs = critic_inputs(x, y, mask, sigma, x0_in, config.sigma_data, t_in)
        sigma_b = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        return net.apply({"params": critic_params}, inputs, sigma_b)

    return v


# ---------------------------------------------------------------------------------------------
# The deployable bundle and the inpainter


@guidance_module.register_bundle
@dataclasses.dataclass(frozen=True)
class AIDParams(guidance_module.GuidanceBundle):
    """``params`` of :func:`inpaint`: frozen backbone + trained actor, with their static configs
    (a pytree; ``denoise`` and ``label_dim`` from ``guidance_module.GuidanceBundle``).

    Attributes:
        backbone: The backbone's parameter pytree (``aid_jax.load_backbone(...).params``).
        actor: The guidance module's parameter pytree.
        backbone_config: The backbone's static config (``Backbone.config``).
        config: The :class:`AIDConfig` the actor was trained with.
        backbone_sha256: ``params_sha256`` of the backbone the actor was trained against
            (static; checked by ``aid_jax.load``).
    """

    backbone: Any
    actor: Any
    backbone_config: Any
    config: AIDConfig
    backbone_sha256: str = ""

    SPEC = guidance_module.BundleSpec(
        field="actor",
        noun="actor",
        what="guidance module",
        load_call="aid_jax.load",
        config_fields="actor_channels / image channels",
        error=AIDError,
    )


_is_traced = guidance_module.is_traced


@functools.lru_cache(maxsize=32)
def _actor_shapes(config: AIDConfig):
    """The actor's parameter shapes for ``config`` (traced once per config, not per call)."""
    return jax.tree.map(
        lambda a: a.shape, jax.eval_shape(lambda: init_actor(jax.random.key(0), config))
    )


def validate_params(params: AIDParams) -> None:
    """Checks that the actor fits the backbone (image shape, channels); raises :class:`AIDError`."""
    guidance_module.validate_bundle(params, AIDParams, _actor_shapes)


def _check_mask_channels(mask, channels: int):
    return guidance_module.one_mask_channel(mask, channels, AIDError, "AID's guidance")


def inpaint(
    params: AIDParams,
    x,
    mask,
    *,
    key: jax.Array | None = None,
    solver: str = "euler",
    num_steps: int | None = None,
    paste_back: bool = True,
    labels=None,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
):
    """Inpaint with a trained AID guidance module (AID.md §6). Pure and jit-able.

    Host-side checks, then one jitted program (compiled once per input shapes, solver, step count
    and paste-back), so eager calls do not retrace; inside a user's ``jax.jit`` it inlines.

    x_0 = σ_max·n (n from ``key``), then the controlled probability-flow ODE dx/dr = b + μ_φ on
    the EDM schedule with ``num_steps`` steps (default: the training K), Euler (NFE K) or Heun
    (NFE 2K − 1, μ added at both stages); no per-image optimisation, no backward pass.

    Args:
        params: :class:`AIDParams` (``aid_jax.load(path)``).
        x: Images ``[B, H, W, C]`` in [-1, 1]; only the known pixels are read.
        mask: ``[B|1, H, W, 1|C]``, 1 = known pixel, 0 = hole.
        key: PRNG key of the initial noise (default ``jax.random.key(0)``).
        solver: ``'euler'`` or ``'heun'``.
        num_steps: Sampler steps (default ``params.config.num_steps``).
        paste_back: Return m⊙x + (1 − m)⊙x̂ (the known pixels exactly) instead of the raw
            sample.
        labels: Class labels for a class-conditional backbone (``label_dim > 0``): integer ids
            ``[B]`` (or one int) or one-hot/soft rows ``[B, label_dim]``
            (``aid_jax.backbones.prepare_labels``; zero rows = the backbone's unconditional zero
            class vector). Required there, refused for an unconditional backbone. The backbone's
            denoiser sees them at every step; the guidance network does not take labels.
        S_churn, S_min, S_max, S_noise: EDM's stochastic sampler (Alg. 2) around the guided
            steps, the guidance evaluated at the raised σ̂ (``control.controlled_sample``);
            ``S_churn = 0`` (the default) is the deterministic deployment. The churn noise comes
            from ``fold_in(key, 1)``, so the initial noise is the same with and without it.

    Returns:
        ``aid_jax.methods.InpaintResult`` (``x``, ``nfe``, ``nfe_backward = 0``).

    Raises:
        AIDError / ValueError: Before anything runs, for wrong shapes, dtypes, ranges, masks that
            are not 0/1 or lack a hole or a known pixel, params of another backbone, and missing
            or bad labels (``BackboneError``). (Value checks need concrete arrays; under
            ``jax.jit`` only the shapes are checked, and a conditional backbone called without
            labels inside a traced caller, as the AID trainer's validation, gets its zero class
            vector, the vector it was trained with.)
    """
    validate_params(params)
    if solver not in control.SOLVERS:
        raise AIDError(f"solver must be one of {control.SOLVERS}, got {solver!r}")
    steps = params.config.num_steps if num_steps is None else num_steps
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise AIDError(f"num_steps must be a positive int, got {num_steps!r}")
    if steps > MAX_COUNT:  # O(1), before any schedule is built
        raise AIDError(f"num_steps must be at most {MAX_COUNT:,}, got {steps}")
    churn = check_churn(solver, int(steps), S_churn, S_min, S_max, S_noise)
    # The contract's checks (shapes only under an outer jit), then AID's own: float images.
    validate_inputs(x, mask, params.config.image_shape, host_only=False, error=AIDError, name="x")
    x = jnp.asarray(x)
    mask = jnp.asarray(mask)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise AIDError(f"x must be a float array in [-1, 1], got dtype {x.dtype}")
    mask = _check_mask_channels(mask, x.shape[-1])
    if not (labels is None and params.label_dim and _is_traced(x, mask)):
        labels = backbones.prepare_labels(labels, params.label_dim, x.shape[0])
    key = jax.random.key(0) if key is None else key
    return _sample(
        params,
        x,
        mask,
        key,
        labels,
        solver=solver,
        num_steps=int(steps),
        paste_back=paste_back,
        churn=churn,
    )


def check_churn(solver, num_steps, S_churn, S_min, S_max, S_noise) -> tuple:
    """``sampling.check_churn`` with its errors as AIDError."""
    try:
        return sampling.check_churn(solver, num_steps, S_churn, S_min, S_max, S_noise)
    except (TypeError, ValueError) as e:
        raise AIDError(str(e)) from e


@functools.partial(jax.jit, static_argnames=("solver", "num_steps", "paste_back", "churn"))
def _sample(
    params: AIDParams,
    x,
    mask,
    key,
    labels,
    *,
    solver: str,
    num_steps: int,
    paste_back: bool,
    churn: tuple = (0.0, 0.0, float("inf"), 1.0),
):
    """The jitted core of :func:`inpaint` (inputs already checked; ``mask`` has one channel;
    ``labels`` float32 ``[B, label_dim]`` or None)."""
    mask = jnp.broadcast_to(mask.astype(jnp.float32), x.shape[:3] + (1,))
    y = jnp.where(mask > 0.5, x.astype(jnp.float32), 0.0)  # the hole is never read
    x_init = params.config.schedule.sigma_max * jax.random.normal(key, y.shape, jnp.float32)
    mu = guidance_mean_fn(params.actor, params.config, y, mask)
    if labels is None:
        denoise = params.denoise
    else:

        def denoise(x_, sigma):
            return params.denoise(x_, sigma, labels)

    out = control.controlled_sample(
        denoise,
        mu,
        x_init,
        params.config.sigmas(num_steps),
        solver=solver,
        key=jax.random.fold_in(key, 1) if churn[0] > 0 else None,  # no churn, no noise
        churn=churn,
    )
    sample = out.x
    if paste_back:
        sample = mask * y + (1.0 - mask) * sample
    return InpaintResult(x=sample, nfe=out.nfe, nfe_backward=0)


def make_inpainter(
    aid_params: AIDParams,
    *,
    num_steps: int | None = None,
    solver: str = "euler",
    paste_back=False,
    churn: tuple = (0.0, 0.0, float("inf"), 1.0),
) -> Inpainter:
    """The :class:`~aid_jax.methods.Inpainter` of a trained module (the registry's ``"aid"``
    method builds it; ``aid_jax.methods.make_inpainter("aid", checkpoint=...)``): called as
    ``fn(fn.params, y, mask, key, labels=None)``; ``fn.params`` is the bundle to pass,
    ``fn.jitted`` the jitted core ``(params, y, mask, key, labels=None)`` (labels float32
    ``[B, label_dim]``), ``fn.label_dim`` the backbone's number of classes (labels required when
    > 0, ``backbones.prepare_labels``); ``churn`` = ``(S_churn, S_min, S_max, S_noise)`` of
    :func:`inpaint`."""
    validate_params(aid_params)
    steps = int(num_steps or aid_params.config.num_steps)
    S_churn, S_min, S_max, S_noise = check_churn(solver, steps, *churn)

    def core(params, y, mask, key, labels=None):
        return inpaint(
            params,
            y,
            mask,
            key=key,
            solver=solver,
            num_steps=steps,
            paste_back=paste_back,
            labels=labels,
            S_churn=S_churn,
            S_min=S_min,
            S_max=S_max,
            S_noise=S_noise,
        )

    return Inpainter(
        jitted=jax.jit(per_row_keys(core)),
        method="aid",
        options=dict(
            num_steps=steps,
            solver=solver,
            paste_back=paste_back,
            S_churn=S_churn,
            S_min=S_min,
            S_max=S_max,
            S_noise=S_noise,
        ),
        nfe=control.controlled_nfe(steps, solver),
        nfe_backward=0,
        label_dim=aid_params.label_dim,
        params=aid_params,
        image_shape=tuple(aid_params.config.image_shape),
    )
