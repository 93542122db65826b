"""Zero-shot inpainting baselines on a frozen EDM denoiser (VIPAINT.md §11, EDM forms).

Every method is a pure function

    method(denoise, y, mask, key, labels=None, *, <options>) -> InpaintResult

with ``denoise(x [B,H,W,C], sigma [B]) -> [B,H,W,C]`` any EDM denoiser D(x; sigma), ``y`` the
observed images in [-1, 1] (values in the hole are ignored: only the pixels with ``mask == 1``
are read), ``mask`` ``[B,H,W,1]`` or ``[B,H,W,C]`` with 1 = known, and ``key`` a PRNG key. All
run on the EDM rho-schedule ``sampling.edm_sigmas(num_steps, sigma_min, sigma_max, rho)``
(sigma_0 = sigma_max, ..., sigma_{N-1} = sigma_min, sigma_N = 0) with one ``lax.scan`` over
steps, no host syncs, and static options, so they jit as they are. The output ``x`` is the raw
sample (no compositing); ``nfe`` / ``nfe_backward`` count denoiser forward passes and
vector-Jacobian products per sample (static ints).

Noise: ``k_init, k_steps = split(key)``; the start is x = sigma_max·n with n = normal(k_init);
step (or schedule entry) i draws its noises from ``fold_in(k_steps, i)``. Tests reproduce every
method from these rules in float64 NumPy.

Primitives (VIPAINT.md §8.1, VE in data units): x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ,
``ddim_step`` (η = 1 is the ancestral step), ``go_up`` (forward noising σ' -> σ).

Methods (``METHODS``):

* ``unguided`` — the plain EDM sampler (``sampling.sample``), no conditioning.
* ``replacement`` (§11.1) — after every sampler step σ_i -> σ_{i+1} the known pixels are replaced
  by y + σ_{i+1}·n (fresh n); exact y at σ_N = 0.
* ``repaint`` (§11.2) — ancestral down-steps whose known part is y + σ'·n, up-steps
  x + sqrt(σ² - σ'²)·n, on RePaint's time-travel schedule (:func:`time_travel_schedule`).
* ``dps`` (§11.3) — ancestral step, then x -= ζ_i ∇_x ||m ⊙ (y - D(x; σ_i))||₂ (the norm).
* ``pigdm`` (§11.4) — DDIM(η) step + w·σ(σ - σ')·J_Dᵀ(m ⊙ (y - D))/(r² + σ_y²).
* ``ddrm`` (§11.5) — per-pixel DDRM rules (observed: η_b-blend with y; missing: η-DDIM).
* ``ddnm`` (§11.6) — x̂0' = m ⊙ y + (1 - m) ⊙ x̂0, x' = x̂0' + σ'(η n + sqrt(1 - η²) ε̂).
* ``ddnm_plus`` (§11.6) — DDNM with σ_y-aware per-pixel scaling and time travel.

Class labels (class-conditional backbones): every method takes ``labels`` float32
``[B, label_dim]`` after ``key``; with labels it calls ``denoise(x, sigma, labels_rows)`` (the
rows of the denoiser batch: the batch's own labels, or for VIPaint each image's labels repeated to
its fit / sample rows) instead of ``denoise(x, sigma)``. ``labels=None`` (the default) leaves
every method exactly as without labels.

``make_inpainter(method, denoise_with_params, label_dim=0, **options)`` builds the jitted
``fn(params, y, mask, key, labels=None)`` used by the evaluation harness; it validates its
inputs on the host (:func:`validate_inputs`, ``backbones.prepare_labels``: class ids or one-hot
rows, required exactly when ``label_dim > 0``) before anything is traced.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import sampling
from aid_jax.vipaint import model as vipaint_model

__all__ = [
    "InpaintResult",
    "METHODS",
    "ddim_step",
    "ddnm",
    "ddnm_plus",
    "ddrm",
    "dps",
    "go_up",
    "make_inpainter",
    "method_cost",
    "method_options",
    "pigdm",
    "repaint",
    "replacement",
    "time_travel_schedule",
    "unguided",
    "validate_inputs",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]

# Tolerance of validate_inputs on the [-1, 1] image range.
RANGE_TOL = 1e-3
DPS_STEP_FORMS = ("vp", "vp_exact", "vipaint")
PIGDM_FORMS = ("paper", "reddiff")


@dataclasses.dataclass(frozen=True)
class InpaintResult:
    """Output of an inpainting method (a pytree; the costs are static metadata).

    Attributes:
        x: Raw samples ``[B, H, W, C]`` float32 (observed pixels not pasted back).
        nfe: Denoiser forward evaluations per sample (Python int).
        nfe_backward: Vector-Jacobian products through the denoiser per sample (Python int).
    """

    x: jax.Array
    nfe: int
    nfe_backward: int = 0


jax.tree_util.register_dataclass(
    InpaintResult, data_fields=["x"], meta_fields=["nfe", "nfe_backward"]
)


# ---------------------------------------------------------------------------------------------
# Primitives (VIPAINT.md §8.1)
# ---------------------------------------------------------------------------------------------


def ddim_step(
    x: jax.Array,
    denoised: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    eta: float,
    noise: jax.Array,
) -> jax.Array:
    """DDIM(η) step σ -> σ' < σ in VE form (VIPAINT.md §8.1).

    x' = x̂0 + sqrt(σ'² - c²)·ε̂ + c·n with ε̂ = (x - x̂0)/σ and c = η σ' sqrt(1 - σ'²/σ²).
    η = 0 is the Euler step of the probability-flow ODE, x' = x̂0 + (σ'/σ)(x - x̂0); η = 1 the
    ancestral (DDPM posterior) step with mean x̂0 + (σ'²/σ)·ε̂ and std σ' sqrt(1 - σ'²/σ²).
    σ' = 0 returns x̂0.
    """
    ratio2 = (sigma_next / sigma) ** 2
    c = eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - ratio2, 0.0))
    # sqrt(σ'² - c²) = σ' sqrt(1 - η²(1 - σ'²/σ²)), clipped against rounding.
    keep = sigma_next * jnp.sqrt(jnp.maximum(1.0 - eta**2 * (1.0 - ratio2), 0.0))
    eps = (x - denoised) / sigma
    return denoised + keep * eps + c * noise


def go_up(x: jax.Array, sigma: jax.Array, sigma_up: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward noising from σ to σ_up > σ: x + sqrt(σ_up² - σ²)·n (VIPAINT.md §8.1)."""
    return x + jnp.sqrt(jnp.maximum(sigma_up**2 - sigma**2, 0.0)) * noise


def time_travel_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
    """RePaint's resampling ("time travel") schedule as grid indices, built on the host.

    In VP time t = N-1, ..., 0, -1 (-1 = clean): descend one step at a time; on arriving at a
    jump point t ∈ {0, L, 2L, ...} < N - L that still has resamplings left (``jump_n_sample - 1``
    each), go back up L steps one at a time and descend again (Lugmayr et al. 2022; the same
    schedule drives DDNM's time travel). Returned as indices i = N-1-t into
    ``edm_sigmas(num_steps)`` (0 = sigma_max, N = sigma 0): consecutive entries differ by ±1,
    +1 is a down-step (one denoiser call), -1 an up-step. With N = 250, L = 10, r = 10: 4,571
    entries, 2,410 down-steps and 2,160 up-steps.

    Args:
        num_steps: N, the number of grid steps.
        jump_length: L (>= 1).
        jump_n_sample: r, visits per jump point (>= 1; 1 = no time travel).

    Returns:
        int32 NumPy array ``[E + 1]`` from 0 to ``num_steps``.
    """
    for name, v, lo in (
        ("num_steps", num_steps, 1),
        ("jump_length", jump_length, 1),
        ("jump_n_sample", jump_n_sample, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    remaining = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t = num_steps - 1
    ts = [t]
    while t >= 0:
        t -= 1
        ts.append(t)
        if remaining.get(t, 0) > 0:
            remaining[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return (num_steps - 1 - np.asarray(ts)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Option checks and costs (host side, static)
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, v, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _check_range(name: str, v, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")


def _check_nonneg(name: str, v) -> None:
    _check_range(name, v, 0.0, math.inf)


def _check_grid(num_steps, sigma_min, sigma_max, rho) -> None:
    _check_int("num_steps", num_steps)
    sampling._edm_sigmas_f64(int(num_steps), sigma_min, sigma_max, rho)  # raises on bad values


def _sampler_config(
    num_steps, solver, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise
) -> sampling.SamplerConfig:
    return sampling.SamplerConfig(
        solver=solver,
        num_steps=num_steps,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
    )


def _cost_sampler(num_steps, solver, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise):
    cfg = _sampler_config(
        num_steps, solver, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise
    )
    return sampling.nfe(cfg), 0


def _cost_repaint(num_steps, jump_length, jump_n_sample, sigma_min, sigma_max, rho):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    sched = time_travel_schedule(num_steps, jump_length, jump_n_sample)
    return int(np.sum(sched[1:] > sched[:-1])), 0


def _cost_dps(num_steps, zeta, step_form, sigma_data, sigma_min, sigma_max, rho):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    _check_nonneg("zeta", zeta)
    if step_form not in DPS_STEP_FORMS:
        raise ValueError(f"step_form must be one of {DPS_STEP_FORMS}, got {step_form!r}")
    _check_range("sigma_data", sigma_data, 1e-12, math.inf)
    return num_steps, num_steps


def _cost_ddnm(num_steps, eta, sigma_min, sigma_max, rho):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    _check_range("eta", eta, 0.0, 1.0)
    return num_steps, 0


def _cost_ddnm_plus(
    num_steps, eta, sigma_y, travel_length, travel_repeat, sigma_min, sigma_max, rho
):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    _check_range("eta", eta, 0.0, 1.0)
    _check_nonneg("sigma_y", sigma_y)
    sched = time_travel_schedule(num_steps, travel_length, travel_repeat)
    return int(np.sum(sched[1:] > sched[:-1])), 0


def _cost_pigdm(num_steps, eta, w, sigma_y, sigma_data, form, sigma_min, sigma_max, rho):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    _check_range("eta", eta, 0.0, 1.0)
    _check_range("w", w, -math.inf, math.inf)
    _check_nonneg("sigma_y", sigma_y)
    _check_range("sigma_data", sigma_data, 1e-12, math.inf)
    if form not in PIGDM_FORMS:
        raise ValueError(f"form must be one of {PIGDM_FORMS}, got {form!r}")
    return num_steps, num_steps


def _cost_ddrm(num_steps, eta, eta_b, sigma_y, sigma_min, sigma_max, rho):
    _check_grid(num_steps, sigma_min, sigma_max, rho)
    _check_range("eta", eta, 0.0, 1.0)
    _check_range("eta_b", eta_b, 0.0, 1.0)
    _check_nonneg("sigma_y", sigma_y)
    return num_steps, 0


# ---------------------------------------------------------------------------------------------
# Shared plumbing (trace time)
# ---------------------------------------------------------------------------------------------


def _prepare(y, mask) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y_obs float32 [B,H,W,C] with zeros in the hole, known bool [B,H,W,1|C], mask float32)."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask)
    if y.ndim != 4:
        raise ValueError(f"y must be [B, H, W, C] (NHWC), got shape {y.shape}")
    b, h, w, c = y.shape
    if (
        mask.ndim != 4
        or mask.shape[1:3] != (h, w)
        or mask.shape[0] not in (1, b)
        or mask.shape[3] not in (1, c)
    ):
        raise ValueError(
            f"mask has shape {mask.shape}; expected [{b}, {h}, {w}, 1] or [{b}, {h}, {w}, {c}] "
            f"for y of shape {y.shape}"
        )
    mask = jnp.broadcast_to(mask.astype(jnp.float32), (b, h, w, mask.shape[3]))
    known = mask > 0.5
    y_obs = jnp.where(known, y.astype(jnp.float32), 0.0)  # hole values (even NaN) never used
    return y_obs, known, mask


def _keys(key) -> tuple[jax.Array, jax.Array]:
    k_init, k_steps = jax.random.split(key)
    return k_init, k_steps


def _noise(key, i, shape, count: int | None = None) -> jax.Array:
    """Standard normal noise of step i: ``normal(fold_in(key, i), [count,] *shape)``."""
    full = shape if count is None else (count, *shape)
    return jax.random.normal(jax.random.fold_in(key, i), full, jnp.float32)


def _call(denoise: DenoiseFn, x: jax.Array, sigma: jax.Array) -> jax.Array:
    return denoise(x, jnp.broadcast_to(sigma, (x.shape[0],))).astype(jnp.float32)


def _check_labels(labels, batch: int) -> jax.Array:
    """Method-level labels: float ``[batch, label_dim]`` rows (trace-time shape check)."""
    labels = jnp.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != batch:
        raise ValueError(
            f"labels have shape {labels.shape}; a method takes one-hot rows [{batch}, label_dim] "
            "(backbones.prepare_labels turns class ids into them)"
        )
    return labels.astype(jnp.float32)


def _with_labels(denoise, labels, batch: int) -> DenoiseFn:
    """``denoise`` itself without labels; with labels ``[batch, L]`` the closure
    ``(x, sigma) -> denoise(x, sigma, labels)`` (every denoiser call of these methods is on the
    batch's own rows)."""
    if labels is None:
        return denoise
    labels = _check_labels(labels, batch)
    return lambda x, sigma: denoise(x, sigma, labels)


def _grid(num_steps, sigma_min, sigma_max, rho) -> jax.Array:
    return sampling.edm_sigmas(num_steps, sigma_min, sigma_max, rho)


def _step_xs(sigmas: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    n = sigmas.shape[0] - 1
    return jnp.arange(n, dtype=jnp.int32), sigmas[:-1], sigmas[1:]


def _run_schedule(down, up, carry, sigmas, schedule: np.ndarray, key):
    """One ``lax.scan`` over a time-travel schedule; ``lax.cond`` picks the down/up branch.

    ``down(carry, sigma, sigma_next, key)`` (sigma_next < sigma, one denoiser call) and
    ``up(carry, sigma, sigma_up, key)`` (no call). Under ``vmap`` the cond would evaluate both
    branches; here it does not, so the NFE is the number of down-steps.
    """
    frm = jnp.asarray(schedule[:-1], jnp.int32)
    to = jnp.asarray(schedule[1:], jnp.int32)
    is_down = jnp.asarray(schedule[1:] > schedule[:-1])
    idx = jnp.arange(len(schedule) - 1, dtype=jnp.int32)

    def body(c, xs):
        e, i_from, i_to, d = xs
        k = jax.random.fold_in(key, e)
        return jax.lax.cond(d, down, up, c, sigmas[i_from], sigmas[i_to], k), None

    carry, _ = jax.lax.scan(body, carry, (idx, frm, to, is_down))
    return carry


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def unguided(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 18,
    solver: str = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> InpaintResult:
    """The unconditional EDM sampler (EDM Alg. 2; :func:`sampling.sample`); ``y``/``mask`` only
    fix the shape. The reference point of every conditioned method; a harness pastes the
    observed pixels back itself.

    x = sigma_max·n(k_init), then ``integrate`` with churn noise from ``k_steps``. NFE 2N - 1
    (Heun) or N (Euler). Default 18 steps (EDM's setting for 32x32 images).
    """
    cfg = _sampler_config(
        num_steps, solver, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise
    )
    y_obs, _, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    latents = jax.random.normal(k_init, y_obs.shape, jnp.float32)
    res = sampling.sample(denoise, latents, k_steps, config=cfg)
    return InpaintResult(x=res.x, nfe=res.nfe, nfe_backward=0)


def replacement(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 18,
    solver: str = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> InpaintResult:
    """Replacement / score-SDE inpainter, EDM form (VIPAINT.md §11.1).

    x_0 = sigma_max·n; for each step i: x <- EDM step σ_i -> σ_{i+1} (Euler or Heun, with churn
    gamma_i = min(S_churn/N, sqrt2 - 1) inside [S_min, S_max]; ``sampling.integrate`` on the
    pair of levels), then x <- m ⊙ (y + σ_{i+1}·n) + (1 - m) ⊙ x with fresh n. The last step
    lands on σ_N = 0, so the known pixels equal y exactly. Noise of step i: key
    ``fold_in(k_steps, i)`` split into (solver churn key, replacement key). NFE as the sampler
    (2N - 1 for Heun), no gradients.
    """
    cfg = _sampler_config(
        num_steps, solver, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise
    )
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = cfg.sigmas()
    churn = cfg.S_churn / cfg.num_steps  # integrate on 2 levels: gamma = min(churn / 1, ...)

    def step(x, xs):
        i, s, s_next = xs
        k_solver, k_rep = jax.random.split(jax.random.fold_in(k_steps, i))
        x, _ = sampling.integrate(
            denoise,
            x,
            jnp.stack([s, s_next]),
            k_solver,
            solver=cfg.solver,
            S_churn=churn,
            S_min=cfg.S_min,
            S_max=cfg.S_max,
            S_noise=cfg.S_noise,
        )
        n = jax.random.normal(k_rep, x.shape, jnp.float32)
        return jnp.where(known, y_obs + s_next * n, x), None  # §11.1: noise to the level reached

    x = sigmas[0] * jax.random.normal(k_init, y_obs.shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, _step_xs(sigmas))
    return InpaintResult(x=x, nfe=sampling.nfe(cfg), nfe_backward=0)


def repaint(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 250,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """RePaint, EDM form (VIPAINT.md §11.2; Lugmayr et al. 2022).

    On the time-travel schedule of :func:`time_travel_schedule` over ``edm_sigmas(num_steps)``:

    * down-step σ -> σ': x̂0 = D(x; σ); unknown part = ancestral step (``ddim_step``, η = 1);
      known part y + σ'·n; x' = m ⊙ known + (1 - m) ⊙ unknown (exact y at σ' = 0);
    * up-step σ' -> σ: x + sqrt(σ² - σ'²)·n on the whole image.

    Entry e draws from ``fold_in(k_steps, e)``: 2 noises (ancestral, known) for a down-step, 1
    for an up-step. NFE = number of down-steps = N + (#jump points)(r - 1)L: 2,410 at the
    defaults (N = 250, L = 10, r = 10); up-steps cost nothing. No gradients.
    """
    nfe, _ = _cost_repaint(num_steps, jump_length, jump_n_sample, sigma_min, sigma_max, rho)
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    schedule = time_travel_schedule(num_steps, jump_length, jump_n_sample)
    shape = y_obs.shape

    def down(x, s, s_next, k):
        n = jax.random.normal(k, (2, *shape), jnp.float32)
        x0 = _call(denoise, x, s)
        x_unknown = ddim_step(x, x0, s, s_next, 1.0, n[0])
        return jnp.where(known, y_obs + s_next * n[1], x_unknown)

    def up(x, s, s_up, k):
        return go_up(x, s, s_up, jax.random.normal(k, shape, jnp.float32))

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x = _run_schedule(down, up, x, sigmas, schedule, k_steps)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)


def _dps_step_size(zeta, step_form, sigma_data, s, s_next):
    if step_form == "vp":  # ζ/(a_i a_{i+1}) ≈ ζ(1 + σ_i²), VIPAINT.md §8.1 / §11.3
        return zeta * (1.0 + s**2)
    if step_form == "vp_exact":  # ζ/(a_i a_{i+1}) with a = 1/sqrt(1 + σ²)
        return zeta * jnp.sqrt((1.0 + s**2) * (1.0 + s_next**2))
    return zeta * (sigma_data**2 + s**2)  # "vipaint": ζ_eff (σ_data² + σ²), VIPAINT.md §12.9


def dps(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 250,
    zeta: float = 0.5,
    step_form: str = "vp",
    sigma_data: float = 0.5,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """Diffusion posterior sampling, EDM form (VIPAINT.md §11.3; Chung et al. 2023).

    Per step σ = σ_i -> σ' = σ_{i+1}: (x̂0, vjp) = jax.vjp(D(·; σ), x); x' = ``ddim_step``
    (η = 1, ancestral) from (x, x̂0); x <- x' - ζ_i ∇_x ||m ⊙ (y - D(x; σ))||₂ — the norm, not
    its square, per sample (cotangent -r/||r|| with r = m ⊙ (y - x̂0)). Step sizes ``step_form``:
    ``"vp"`` ζ_i = ζ(1 + σ_i²) (the official VP step ζ = 0.5 moved to VE, default);
    ``"vp_exact"`` ζ sqrt((1 + σ_i²)(1 + σ_{i+1}²)); ``"vipaint"`` ζ(σ_data² + σ_i²).
    Noise of step i: ``fold_in(k_steps, i)``. NFE N forward + N backward. Default N = 250 (the
    CoPaint benchmark); the official DPS setting is N = 1000 (faithful preset). Observed pixels
    are only approximately reproduced.
    """
    nfe, nfe_b = _cost_dps(num_steps, zeta, step_form, sigma_data, sigma_min, sigma_max, rho)
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    shape = y_obs.shape

    def step(x, xs):
        i, s, s_next = xs
        x0, vjp = jax.vjp(lambda v: _call(denoise, v, s), x)
        r = jnp.where(known, y_obs - x0, 0.0)
        norm = jnp.sqrt(jnp.sum(r**2, axis=(1, 2, 3), keepdims=True))
        # d||r||/dx = -J_Dᵀ r / ||r||; at r = 0 the (sub)gradient is taken as 0.
        (grad,) = vjp(-r / jnp.maximum(norm, 1e-30))
        x_next = ddim_step(x, x0, s, s_next, 1.0, _noise(k_steps, i, shape))
        return x_next - _dps_step_size(zeta, step_form, sigma_data, s, s_next) * grad, None

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, _step_xs(sigmas))
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_b)


def pigdm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.0,
    w: float = 1.0,
    sigma_y: float = 0.0,
    sigma_data: float = 0.5,
    form: str = "paper",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """Pseudoinverse-guided diffusion (ΠGDM), EDM form (VIPAINT.md §11.4; Song et al. 2023).

    Per step σ -> σ': (x̂0, vjp) = jax.vjp(D(·; σ), x); g = J_Dᵀ (m ⊙ (y - x̂0)) (one VJP);
    ``form="paper"``: x' = DDIM_η(x; σ -> σ') + w·σ(σ - σ')·g/(r² + σ_y²) with
    r² = σ²σ_d²/(σ² + σ_d²) (posterior variance of Gaussian data of std σ_d);
    ``form="reddiff"``: x' = DDIM_η + w·g (RED-diff's update moved to VE units, no 1/(r² + σ_y²)).
    Noise (only when η > 0) of step i: ``fold_in(k_steps, i)``. NFE N forward + N backward.
    Observed pixels are only approximately reproduced.
    """
    nfe, nfe_b = _cost_pigdm(
        num_steps, eta, w, sigma_y, sigma_data, form, sigma_min, sigma_max, rho
    )
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    shape = y_obs.shape

    def step(x, xs):
        i, s, s_next = xs
        x0, vjp = jax.vjp(lambda v: _call(denoise, v, s), x)
        (g,) = vjp(jnp.where(known, y_obs - x0, 0.0))
        noise = _noise(k_steps, i, shape) if eta > 0 else jnp.zeros_like(x)
        x_next = ddim_step(x, x0, s, s_next, eta, noise)
        if form == "paper":
            r2 = s**2 * sigma_data**2 / (s**2 + sigma_data**2)
            guide = (w * s * (s - s_next) / (r2 + sigma_y**2)) * g
        else:
            guide = w * g
        return x_next + guide, None

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, _step_xs(sigmas))
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_b)


def ddrm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 20,
    eta: float = 0.85,
    eta_b: float = 1.0,
    sigma_y: float = 0.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """DDRM for inpainting, EDM form (VIPAINT.md §11.5; Kawar et al. 2022).

    For inpainting the SVD of H is the identity on observed pixels (singular value 1) and zero
    on the hole, so every rule is per pixel. Step σ -> σ' with x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ:

    * missing: x' = x̂0 + σ'(η n + sqrt(1 - η²) ε̂);
    * observed, σ' < σ_y: x' = x̂0 + sqrt(1 - η²) σ' (y - x̂0)/σ_y + η σ' n;
    * observed, σ' >= σ_y: x' = (1 - η_b) x̂0 + η_b y + sqrt(σ'² - η_b² σ_y²) n
      (σ_y = 0, η_b = 1: y + σ'·n, exact y at σ' = 0).

    Noise of step i: ``fold_in(k_steps, i)``. Defaults 20 steps, η = 0.85, η_b = 1 (RED-diff's
    ``ddrm.yaml``). NFE N, no gradients.
    """
    nfe, _ = _cost_ddrm(num_steps, eta, eta_b, sigma_y, sigma_min, sigma_max, rho)
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def step(x, xs):
        i, s, s_next = xs
        n = _noise(k_steps, i, shape)
        x0 = _call(denoise, x, s)
        eps = (x - x0) / s
        missing = x0 + s_next * (eta * n + root * eps)
        std_obs = jnp.sqrt(jnp.maximum(s_next**2 - (eta_b * sigma_y) ** 2, 0.0))
        observed = (1.0 - eta_b) * x0 + eta_b * y_obs + std_obs * n
        if sigma_y > 0:
            below = x0 + (root * s_next / sigma_y) * (y_obs - x0) + eta * s_next * n
            observed = jnp.where(s_next < sigma_y, below, observed)
        return jnp.where(known, observed, missing), None

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, _step_xs(sigmas))
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)


def ddnm(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.85,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """DDNM, EDM form (VIPAINT.md §11.6; Wang et al. 2023).

    Step σ -> σ': x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ (from the uncorrected x̂0); range-null-space
    correction x̂0' = A⁺y + (I - A⁺A) x̂0 = m ⊙ y + (1 - m) ⊙ x̂0; then
    x' = x̂0' + σ'(η n + sqrt(1 - η²) ε̂) (exact y at σ' = 0). Noise of step i:
    ``fold_in(k_steps, i)``. Default 100 steps, η = 0.85. NFE N, no gradients.
    """
    nfe, _ = _cost_ddnm(num_steps, eta, sigma_min, sigma_max, rho)
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def step(x, xs):
        i, s, s_next = xs
        x0 = _call(denoise, x, s)
        eps = (x - x0) / s
        x0c = jnp.where(known, y_obs, x0)
        return x0c + s_next * (eta * _noise(k_steps, i, shape) + root * eps), None

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.lax.scan(step, x, _step_xs(sigmas))
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)


def ddnm_plus(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = 100,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    travel_length: int = 10,
    travel_repeat: int = 3,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> InpaintResult:
    """DDNM⁺: DDNM with noise-aware scaling and time travel (VIPAINT.md §11.6).

    What is implemented (the official DDNM⁺ rules for the inpainting operator, in VE units; a
    VP level t maps to σ = sqrt(1 - ᾱ)/sqrt(ᾱ)):

    * schedule: :func:`time_travel_schedule` (``travel_length`` L, ``travel_repeat`` s);
      ``travel_repeat=1`` switches time travel off;
    * down-step σ -> σ' with x̂0 = D(x; σ), ε̂ = (x - x̂0)/σ:
      - σ_y = 0: the DDNM update of :func:`ddnm` (so ``ddnm_plus(sigma_y=0, travel_repeat=1)``
        equals ``ddnm`` with the same key);
      - σ_y > 0, per pixel: missing x' = x̂0 + σ'(η n + sqrt(1 - η²) ε̂); observed with σ' < σ_y:
        x' = x̂0 + λ(y - x̂0) + η σ' n with λ = sqrt(1 - η²) σ'/σ_y (the correction scaled so its
        noise stays below the step's noise budget, no ε̂ term); observed with σ' >= σ_y:
        x' = y + sqrt(σ'² - σ_y²)·n (λ = 1, fresh noise reduced by the noise already in y);
    * up-step to σ_up: x = x̂0_last + σ_up·n, with x̂0_last the (uncorrected) x̂0 of the latest
      down-step — DDNM's time travel re-noises its last clean estimate rather than the state.

    Entry e draws from ``fold_in(k_steps, e)``. NFE = number of down-steps: N + (#jump points)·
    (s - 1)·L = 280 at the defaults (N = 100, L = 10, s = 3). No gradients.
    """
    nfe, _ = _cost_ddnm_plus(
        num_steps, eta, sigma_y, travel_length, travel_repeat, sigma_min, sigma_max, rho
    )
    y_obs, known, _ = _prepare(y, mask)
    denoise = _with_labels(denoise, labels, y_obs.shape[0])
    k_init, k_steps = _keys(key)
    sigmas = _grid(num_steps, sigma_min, sigma_max, rho)
    schedule = time_travel_schedule(num_steps, travel_length, travel_repeat)
    shape = y_obs.shape
    root = math.sqrt(1.0 - eta**2)

    def down(carry, s, s_next, k):
        x, _ = carry
        n = jax.random.normal(k, shape, jnp.float32)
        x0 = _call(denoise, x, s)
        eps = (x - x0) / s
        missing = x0 + s_next * (eta * n + root * eps)
        if sigma_y == 0:
            observed = y_obs + s_next * (eta * n + root * eps)
        else:
            lam = root * s_next / sigma_y
            below = x0 + lam * (y_obs - x0) + eta * s_next * n
            above = y_obs + jnp.sqrt(jnp.maximum(s_next**2 - sigma_y**2, 0.0)) * n
            observed = jnp.where(s_next < sigma_y, below, above)
        return jnp.where(known, observed, missing), x0

    def up(carry, s, s_up, k):
        _, x0_last = carry
        return x0_last + s_up * jax.random.normal(k, shape, jnp.float32), x0_last

    x = sigmas[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = _run_schedule(down, up, (x, jnp.zeros_like(x)), sigmas, schedule, k_steps)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=0)


# ---------------------------------------------------------------------------------------------
# Registry, validation, jitted entry point
# ---------------------------------------------------------------------------------------------


_VIPAINT = vipaint_model.VIPaintConfig()  # the method's defaults are the config's


def _vipaint_config(num_steps, samples_per_fit, **fields):
    _check_int("samples_per_fit", samples_per_fit)
    fields = dict(fields)
    fields["sigmas"] = tuple(fields["sigmas"])
    return vipaint_model.VIPaintConfig(refine_steps=num_steps, **fields)


def _vipaint_costs(cfg, samples_per_fit: int) -> tuple[int, int]:
    c = vipaint_model.costs(cfg)
    # Per sample: the fit is shared by the samples_per_fit samples of an image.
    fwd = math.ceil(c["fit_forward"] / samples_per_fit) + c["sample_forward"]
    bwd = math.ceil(c["fit_backward"] / samples_per_fit) + c["sample_backward"]
    return fwd, bwd


def _cost_vipaint(num_steps, samples_per_fit, **fields):
    return _vipaint_costs(_vipaint_config(num_steps, samples_per_fit, **fields), samples_per_fit)


def vipaint(
    denoise: DenoiseFn,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_steps: int = _VIPAINT.refine_steps,
    samples_per_fit: int = 1,
    sigmas: tuple = _VIPAINT.sigmas,
    eta_keypoints: float = _VIPAINT.eta_keypoints,
    num_iters: int = _VIPAINT.num_iters,
    num_mc: int = _VIPAINT.num_mc,
    beta_prior: float = _VIPAINT.beta_prior,
    beta_hier: float = _VIPAINT.beta_hier,
    kl_form: str = _VIPAINT.kl_form,
    prior_endpoint: str = _VIPAINT.prior_endpoint,
    refine_eta: float = _VIPAINT.refine_eta,
    refine_noise: bool = _VIPAINT.refine_noise,
    refine_zeta: float = _VIPAINT.refine_zeta,
    rec_l1_weight: float = _VIPAINT.rec_l1_weight,
    rec_normalise: str = _VIPAINT.rec_normalise,
) -> InpaintResult:
    """VIPaint (aid_jax.vipaint; VIPAINT.md §3–§6): fit one hierarchical posterior per image,
    then refine ``num_steps`` gradient-guided steps per sample.

    Rows are grouped by ``samples_per_fit`` = k: rows b·k … b·k + k − 1 must hold the same image
    and mask (the evaluation harness's layout for k samples per image); one posterior is fitted
    per group from its first row and the k samples drawn from it. NFE per sample counts the
    shared fit divided by k. Other fields of ``VIPaintConfig`` keep their defaults. With
    ``labels`` each group's first row of labels is its image's class; the fit and the sampling
    call ``denoise(x, sigma, labels_rows)`` with those labels repeated to their rows
    (``vipaint.model.fit`` / ``sample``).
    """
    cfg = _vipaint_config(
        num_steps,
        samples_per_fit,
        sigmas=sigmas,
        eta_keypoints=eta_keypoints,
        num_iters=num_iters,
        num_mc=num_mc,
        beta_prior=beta_prior,
        beta_hier=beta_hier,
        kl_form=kl_form,
        prior_endpoint=prior_endpoint,
        refine_eta=refine_eta,
        refine_noise=refine_noise,
        refine_zeta=refine_zeta,
        rec_l1_weight=rec_l1_weight,
        rec_normalise=rec_normalise,
    )
    nfe, nfe_backward = _vipaint_costs(cfg, samples_per_fit)
    k = samples_per_fit
    y_obs, known, _ = _prepare(y, mask)
    if y_obs.shape[0] % k:
        raise ValueError(
            f"the batch ({y_obs.shape[0]} rows) must be a multiple of samples_per_fit={k}"
        )
    m1 = known[..., :1].astype(jnp.float32)
    if labels is not None:  # one row of labels per fitted image (its k rows share them)
        labels = _check_labels(labels, y_obs.shape[0])[::k]
    samples, _, _ = vipaint_model.fit_and_sample(
        denoise, y_obs[::k], m1[::k], key, cfg, k, labels=labels
    )
    return InpaintResult(x=samples.reshape(y_obs.shape), nfe=nfe, nfe_backward=nfe_backward)


METHODS: dict[str, Callable[..., InpaintResult]] = {
    "unguided": unguided,
    "replacement": replacement,
    "repaint": repaint,
    "dps": dps,
    "pigdm": pigdm,
    "ddrm": ddrm,
    "ddnm": ddnm,
    "ddnm_plus": ddnm_plus,
    "vipaint": vipaint,
}

_COSTS: dict[str, Callable[..., tuple[int, int]]] = {
    "unguided": _cost_sampler,
    "replacement": _cost_sampler,
    "repaint": _cost_repaint,
    "dps": _cost_dps,
    "pigdm": _cost_pigdm,
    "ddrm": _cost_ddrm,
    "ddnm": _cost_ddnm,
    "ddnm_plus": _cost_ddnm_plus,
    "vipaint": _cost_vipaint,
}


def _method(name: str) -> Callable[..., InpaintResult]:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown inpainting method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(name: str) -> dict[str, Any]:
    """The keyword options of method ``name`` with their defaults."""
    params = inspect.signature(_method(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _merge_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    defaults = method_options(name)
    unknown = sorted(set(options) - set(defaults))
    if "labels" in unknown:
        raise ValueError(
            "labels are not an option: pass them per call, fn(params, y, mask, key, labels=...), "
            "and the number of classes as make_inpainter(..., label_dim=N)"
        )
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; "
            f"accepted: {', '.join(defaults)}"
        )
    return {**defaults, **options}


def method_cost(name: str, **options) -> tuple[int, int]:
    """``(nfe, nfe_backward)`` per sample of method ``name`` with these options (host only).

    Also checks the option values, raising ``ValueError`` for bad ones.
    """
    return _COSTS[name](**_merge_options(name, options))


def validate_inputs(y, mask, image_shape=None) -> None:
    """Checks an inpainting call's inputs on the host; raises ``ValueError`` saying what to fix.

    Checks: ``y`` is a real ``[B, H, W, C]`` array whose observed pixels are finite and inside
    [-1, 1] (tolerance ``RANGE_TOL``; values in the hole are ignored); ``image_shape`` (H, W, C)
    if given; ``mask`` is ``[B|1, H, W, 1|C]``, finite, binary (0 = hole, 1 = known), and every
    image has at least one hole pixel and one observed pixel. Runs before anything is traced.
    """
    for name, a in (("y", y), ("mask", mask)):
        if isinstance(a, jax.core.Tracer):
            raise ValueError(
                f"{name} is a traced value: validate_inputs checks values on the host; call it "
                "(or the function from make_inpainter) outside jit/vmap"
            )
    yv = np.asarray(y)
    mv = np.asarray(mask)
    if yv.dtype == bool or not (
        np.issubdtype(yv.dtype, np.floating) or np.issubdtype(yv.dtype, np.integer)
    ):
        raise ValueError(f"y must be a real-valued image array, got dtype {yv.dtype}")
    if yv.ndim != 4:
        raise ValueError(
            f"y must be a batch of NHWC images [B, H, W, C], got shape {yv.shape}; add a "
            "batch axis (y[None]) for a single image"
        )
    b, h, w, c = yv.shape
    if image_shape is not None:
        want = tuple(int(s) for s in image_shape)
        if (h, w, c) != want:
            raise ValueError(
                f"y has images of shape {(h, w, c)} but this backbone expects {want} (H, W, C)"
            )
    if mv.dtype == bool:
        mv = mv.astype(np.float32)
    if mv.ndim != 4 or mv.shape[1:3] != (h, w) or mv.shape[0] not in (1, b):
        raise ValueError(
            f"mask has shape {mv.shape}; expected [{b}, {h}, {w}, 1] (or [{b}, {h}, {w}, {c}]) "
            f"matching y of shape {yv.shape}, 1 = known pixel"
        )
    if mv.shape[3] not in (1, c):
        raise ValueError(
            f"mask has {mv.shape[3]} channels; expected 1 (shared by all channels) or {c}"
        )
    if not (np.issubdtype(mv.dtype, np.floating) or np.issubdtype(mv.dtype, np.integer)):
        raise ValueError(f"mask must be numeric or bool, got dtype {mv.dtype}")
    if not np.isfinite(mv).all():
        raise ValueError("mask contains NaN or inf; masks must be 0 (hole) / 1 (known)")
    odd = (mv != 0) & (mv != 1)
    if odd.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(mv[odd])[:5].tolist())
        raise ValueError(
            f"mask must be binary (0 = hole, 1 = known) but has {int(odd.sum())} other values "
            f"({shown}); threshold it, e.g. (mask > 0.5).astype(np.float32)"
        )
    mb = np.broadcast_to(mv, (b, h, w, mv.shape[3]))
    no_hole = np.flatnonzero(mb.min(axis=(1, 2, 3)) == 1)
    if len(no_hole):
        raise ValueError(
            f"mask has no hole (all pixels known, nothing to inpaint) for image(s) "
            f"{no_hole[:10].tolist()} of {b}"
        )
    no_known = np.flatnonzero(mb.max(axis=(1, 2, 3)) == 0)
    if len(no_known):
        raise ValueError(
            f"mask has no observed pixel (all hole) for image(s) {no_known[:10].tolist()} of "
            f"{b}; give at least one known pixel (unconditional sampling is method 'unguided')"
        )
    known = np.broadcast_to(mb, yv.shape) == 1
    obs = yv[known].astype(np.float64)
    if not np.isfinite(obs).all():
        raise ValueError(
            f"y has {int((~np.isfinite(obs)).sum())} NaN/inf values at observed pixels"
        )
    lo, hi = (float(obs.min()), float(obs.max())) if obs.size else (0.0, 0.0)
    if lo < -1.0 - RANGE_TOL or hi > 1.0 + RANGE_TOL:
        raise ValueError(
            f"observed pixels of y span [{lo:.4g}, {hi:.4g}]; images must be in [-1, 1] "
            "(e.g. uint8 -> x / 127.5 - 1)"
        )


def _check_key(key) -> None:
    k = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
    if not (typed and k.ndim == 0) and not (k.dtype == jnp.uint32 and k.shape == (2,)):
        raise ValueError(
            f"key must be one PRNG key (jax.random.key(seed)), got dtype {k.dtype}, shape {k.shape}"
        )


def make_inpainter(
    method: str, denoise_with_params: Callable[..., jax.Array], *, label_dim: int = 0, **options
) -> Callable[..., InpaintResult]:
    """A jitted ``fn(params, y, mask, key, labels=None) -> InpaintResult`` running ``method``.

    ``denoise_with_params(params, x, sigma)`` is the backbone of an unconditional model
    (``label_dim=0``), e.g. ``lambda p, x, s: backbones.denoise(p, x, s, config=cfg)``; with
    ``label_dim > 0`` (a class-conditional backbone, ``cfg.label_dim``) it is called as
    ``denoise_with_params(params, x, sigma, labels)`` with ``labels`` float32 one-hot rows
    ``[rows, label_dim]``, e.g. ``lambda p, x, s, l=None: backbones.denoise(p, x, s, l,
    config=cfg)`` (that form serves both). The parameters stay a jit argument (never baked in as
    constants). The method name and options are checked here (``ValueError`` for an unknown name,
    option or bad value); every call then runs :func:`validate_inputs`, a key check and
    ``backbones.prepare_labels`` on the host before the jitted core, which compiles once per input
    shapes/dtypes/shardings (labels are a traced argument: new labels never recompile).

    Args:
        method: A name in ``METHODS``.
        denoise_with_params: The backbone denoiser with its parameters as first argument.
        label_dim: The backbone's number of classes (``config.label_dim``; 0 = unconditional).
            With ``label_dim > 0`` every call needs ``labels``; with 0 none may be given.
        **options: Keyword options of the method (see :func:`method_options`).

    Returns:
        ``fn(params, y [B,H,W,C], mask [B,H,W,1|C], key, labels=None) -> InpaintResult``, labels
        integer class ids ``[B]`` (or one int) or one-hot/soft rows ``[B, label_dim]``
        (``backbones.prepare_labels``), with attributes ``jitted`` (the ``jax.jit`` core
        ``(params, y, mask, key, labels=None)``, labels as float32 ``[B, label_dim]``),
        ``method``, ``options`` (all, with defaults), ``label_dim``, ``nfe`` and
        ``nfe_backward`` (per sample).
    """
    from aid_jax.backbones import loader

    fn = _method(method)
    _check_int("label_dim", label_dim, lo=0)
    label_dim = int(label_dim)
    opts = _merge_options(method, options)
    nfe, nfe_backward = _COSTS[method](**opts)

    @jax.jit
    def core(params, y, mask, key, labels=None) -> InpaintResult:
        if labels is None:  # unconditional: exactly the method on the 3-argument denoiser

            def denoise(x, sigma):
                return denoise_with_params(params, x, sigma)

            return fn(denoise, y, mask, key, **opts)

        def denoise_labelled(x, sigma, rows):
            return denoise_with_params(params, x, sigma, rows)

        return fn(denoise_labelled, y, mask, key, labels, **opts)

    def inpaint(params, y, mask, key, labels=None) -> InpaintResult:
        validate_inputs(y, mask)
        _check_key(key)
        labels = loader.prepare_labels(labels, label_dim, np.shape(y)[0])
        return core(params, y, mask, key, labels)

    inpaint.jitted = core
    inpaint.method = method
    inpaint.options = opts
    inpaint.label_dim = label_dim
    inpaint.nfe = nfe
    inpaint.nfe_backward = nfe_backward
    return inpaint
