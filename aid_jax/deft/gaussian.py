"""DEFT in the Gaussian world: the exact h-transform and a linear h-network that can learn it
(docs/DEFT_DESIGN.md §5; benchmarks/deft_gaussian.py).

Data x0 ~ N(μ, Σ) (:class:`aid_jax.gaussian.GaussianWorld`), a fixed mask m (o = known, h = hole),
y = m⊙x0, x = x0 + σn. The exact conditional denoiser is affine in (x, y):

    G = Σ_ho Σ_oo⁻¹,  C_hh = Σ_hh − GΣ_oh,  K(σ) = C_hh(C_hh + σ²I)⁻¹,
    E[x0_o | x, y] = y_o,   E[x0_h | x, y] = (I − K)(μ_h + G(y_o − μ_o)) + K x_h,

and so is the optimal correction Δ* = E[x0 | x, y] − D(x; σ) (:func:`optimal_correction`, float64;
Δ*_o = m⊙(y − D) for any prior). For any affine correction Δ the loss splits exactly
(identity 3 of §5): E‖D + Δ − x0‖² = σ² tr K + E‖Δ − Δ*‖², so

    gap closed (σ) = (L_0 − L_φ)/(L_0 − L*) = 1 − E‖Δ_φ − Δ*‖² / E‖Δ*‖²

is computed in closed form (:func:`correction_error`, :func:`gap_closed`) from the affine map of
a trained h-network (:func:`affine_map`, its float32 Jacobian).

The function class (:func:`init_linear_hnet`, :func:`linear_hnet`): per-σ-node linear maps of
DEFT's own inputs u = [c_in x, D, y, m, r] (flattened), U = Σ_j φ_j(σ)(W_j u + b_j), and a gate
γ = Σ_j φ_j(σ) g_j, with φ the piecewise-linear "hat" weights of ln σ on log-spaced nodes over
[σ_min, σ_max]. For a fixed mask every u is affine in (x, y), so at each node the class contains
Δ*/s(σ) (both gate forms); between nodes it interpolates. It is trained by :func:`train` with the
very loss of the image trainer (``aid_jax.deft.losses``) and deployed with the very sampler
(``aid_jax.deft.model.sample``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import sampling
from aid_jax.deft import losses, model
from aid_jax.gaussian import GaussianWorld, empirical_w2_to_posterior, posterior_mean_rmse

__all__ = [
    "GaussianTrainConfig",
    "affine_map",
    "conditional_denoiser",
    "conditional_mean_affine",
    "correction_error",
    "exact_sample",
    "gap_closed",
    "init_linear_hnet",
    "linear_hnet",
    "nodes",
    "optimal_linear_hnet",
    "optimal_correction",
    "sampler_scores",
    "train",
    "unguided_loss",
    "loss_floor",
]


def _split(world: GaussianWorld, mask):
    m = np.asarray(mask, np.float64).reshape(world.dim)
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError("mask must contain only 0 (hole) and 1 (known)")
    obs = m == 1.0
    if obs.all() or not obs.any():
        raise ValueError("the mask needs a hole and a known pixel")
    return obs, ~obs


def _hole_quantities(world: GaussianWorld, mask, sigma: float):
    """(obs, hole, G [h, o], C_hh, K(σ)) in float64."""
    obs, hole = _split(world, mask)
    s = world.cov
    gain = np.linalg.solve(s[np.ix_(obs, obs)], s[np.ix_(obs, hole)]).T
    c_hh = s[np.ix_(hole, hole)] - gain @ s[np.ix_(obs, hole)]
    c_hh = 0.5 * (c_hh + c_hh.T)
    k = np.linalg.solve(c_hh + sigma**2 * np.eye(c_hh.shape[0]), c_hh).T  # C(C + σ²I)⁻¹
    return obs, hole, gain, c_hh, k


def conditional_mean_affine(world: GaussianWorld, mask, sigma: float):
    """E[x0 | x, y] = A_x x + A_y y + b (float64 ``[d, d]``, ``[d, d]``, ``[d]``; y the full
    flat image, its hole entries unused)."""
    d = world.dim
    mu = world.mean
    obs, hole, gain, _, k = _hole_quantities(world, mask, sigma)
    nh = int(hole.sum())
    a_x = np.zeros((d, d))
    a_y = np.zeros((d, d))
    b = np.zeros(d)
    a_x[np.ix_(hole, hole)] = k
    a_y[np.ix_(obs, obs)] = np.eye(int(obs.sum()))
    a_y[np.ix_(hole, obs)] = (np.eye(nh) - k) @ gain
    b[hole] = (np.eye(nh) - k) @ (mu[hole] - gain @ mu[obs])
    return a_x, a_y, b


def _denoiser_affine(world: GaussianWorld, sigma: float):
    """D(x; σ) = A_D x + b_D (float64)."""
    s = world.cov
    a_d = np.linalg.solve(s + sigma**2 * np.eye(world.dim), s).T  # Σ(Σ + σ²I)⁻¹
    return a_d, world.mean - a_d @ world.mean


def optimal_correction(world: GaussianWorld, mask, sigma: float):
    """Δ*(x, y) = P_x x + P_y y + q = E[x0 | x, y] − D(x; σ), float64 (DEFT_DESIGN §5)."""
    a_x, a_y, b = conditional_mean_affine(world, mask, sigma)
    a_d, b_d = _denoiser_affine(world, sigma)
    return a_x - a_d, a_y, b - b_d


def loss_floor(world: GaussianWorld, mask, sigma: float) -> float:
    """L* = min E‖D + Δ − x0‖² = σ² tr K(σ) (summed over pixels)."""
    _, _, _, _, k = _hole_quantities(world, mask, sigma)
    return float(sigma**2 * np.trace(k))


def unguided_loss(world: GaussianWorld, sigma: float) -> float:
    """L_0 = E‖D − x0‖² = σ² tr(Σ(Σ + σ²I)⁻¹) (summed over pixels)."""
    a_d, _ = _denoiser_affine(world, sigma)
    return float(sigma**2 * np.trace(a_d))


def _joint_xy(world: GaussianWorld, mask, sigma: float):
    """Mean and covariance of z = [x; y] (2d), x = x0 + σn, y = m⊙x0."""
    m = np.asarray(mask, np.float64).reshape(world.dim)
    s, mu, d = world.cov, world.mean, world.dim
    mm = np.diag(m)
    cov = np.block([[s + sigma**2 * np.eye(d), s @ mm], [mm @ s, mm @ s @ mm]])
    return np.concatenate([mu, m * mu]), cov


def correction_error(world: GaussianWorld, mask, sigma: float, p_x, p_y, q) -> float:
    """E‖Δ − Δ*‖² (summed over pixels) for the affine correction Δ = P_x x + P_y y + q."""
    ox, oy, oq = optimal_correction(world, mask, sigma)
    a = np.concatenate([np.asarray(p_x, np.float64) - ox, np.asarray(p_y, np.float64) - oy], 1)
    c = np.asarray(q, np.float64) - oq
    mean, cov = _joint_xy(world, mask, sigma)
    r = a @ mean + c
    return float(np.trace(a @ cov @ a.T) + r @ r)


def gap_closed(world: GaussianWorld, mask, sigma: float, p_x, p_y, q) -> float:
    """(L_0 − L_φ)/(L_0 − L*) = 1 − E‖Δ_φ − Δ*‖² / E‖Δ*‖² at one σ (1 = the optimum, 0 = the
    backbone alone)."""
    d = world.dim
    zero = np.zeros((d, d))
    full = correction_error(world, mask, sigma, zero, zero, np.zeros(d))
    return 1.0 - correction_error(world, mask, sigma, p_x, p_y, q) / full


def affine_map(correction_fn, d: int):
    """(P_x, P_y, q) of an affine ``correction_fn(x [1, d], y [1, d]) -> [1, d]`` (float32
    Jacobian via ``jax.jacfwd``), as float64 NumPy."""
    x0 = jnp.zeros((1, d), jnp.float32)
    q = correction_fn(x0, x0)[0]
    p_x = jax.jacfwd(lambda x: correction_fn(x[None], x0)[0])(x0[0])
    p_y = jax.jacfwd(lambda y: correction_fn(x0, y[None])[0])(x0[0])
    return tuple(np.asarray(a, np.float64) for a in (p_x, p_y, q))


# ---------------------------------------------------------------------------------------------
# The linear h-network


def nodes(config: model.DEFTConfig, num: int) -> np.ndarray:
    """``num`` log-spaced σ nodes over the schedule's [σ_min, σ_max] (float64)."""
    s = config.schedule
    return np.exp(np.linspace(np.log(s.sigma_min), np.log(s.sigma_max), int(num)))


def _hat(sigma, node_sigmas):
    """(lower node index [B] int32, weight of the upper node [B]) of ln σ on ln(nodes),
    clamped to the end nodes."""
    ln_nodes = np.log(np.asarray(node_sigmas, np.float64))
    j = ln_nodes.shape[0]
    step = float(ln_nodes[1] - ln_nodes[0])
    t = (jnp.log(jnp.asarray(sigma, jnp.float32)) - float(ln_nodes[0])) / step
    t = jnp.clip(t, 0.0, float(j - 1))
    lo = jnp.clip(jnp.floor(t), 0, j - 2).astype(jnp.int32)
    return lo, t - lo.astype(jnp.float32)


def hat_weights(sigma, node_sigmas) -> jax.Array:
    """Piecewise-linear interpolation weights ``[B, J]`` of ln σ on ln(nodes) (clamped)."""
    lo, w = _hat(sigma, node_sigmas)
    j = len(node_sigmas)
    return jax.nn.one_hot(lo, j) * (1.0 - w)[:, None] + jax.nn.one_hot(lo + 1, j) * w[:, None]


def init_linear_hnet(config: model.DEFTConfig, num_nodes: int) -> dict:
    """Zero maps and γ ≡ ``config.gate_init``: {"W" [J, F, d·C], "b" [J, d·C], "g" [J]}."""
    h, w, c = config.image_shape
    f = h * w * (4 * c + 1)
    return dict(
        W=jnp.zeros((num_nodes, f, h * w * c), jnp.float32),
        b=jnp.zeros((num_nodes, h * w * c), jnp.float32),
        g=jnp.full((num_nodes,), float(config.gate_init), jnp.float32),
    )


def linear_hnet(params: dict, config: model.DEFTConfig) -> model.HNetApply:
    """The linear h-network as DEFT's ``(inputs, sigma) -> (U, γ)`` closure."""
    node_sigmas = nodes(config, params["g"].shape[0])
    shape = config.image_shape

    def apply(inputs, sigma):
        b = inputs.shape[0]
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (b,))
        lo, w_hi = _hat(sigma, node_sigmas)
        feats = inputs.reshape(b, -1)
        # Only the two active nodes of each row: one product per node, mixed by the hat weights.
        z_lo = jnp.einsum("bf,bfo->bo", feats, params["W"][lo])
        z_hi = jnp.einsum("bf,bfo->bo", feats, params["W"][lo + 1])
        u = (1.0 - w_hi)[:, None] * (z_lo + params["b"][lo]) + w_hi[:, None] * (
            z_hi + params["b"][lo + 1]
        )
        gamma = (1.0 - w_hi) * params["g"][lo] + w_hi * params["g"][lo + 1]
        return u.reshape((b, *shape)), gamma

    return apply


def optimal_linear_hnet(world: GaussianWorld, mask, config: model.DEFTConfig, num_nodes: int):
    """The linear h-network equal to the optimum at its nodes: U = Δ*(σ_j)/s(σ_j) through the
    c_in·x and y channels, γ ≡ 0 (both gate forms). Between nodes it interpolates, so its gap is
    the function class's own limit there."""
    if tuple(config.image_shape[2:]) != (1,):
        raise ValueError("the Gaussian world has one channel")
    params = jax.tree.map(np.asarray, init_linear_hnet(config, num_nodes))
    w = np.zeros(params["W"].shape, np.float64)
    b = np.zeros(params["b"].shape, np.float64)
    for j, sigma in enumerate(nodes(config, num_nodes)):
        p_x, p_y, q = optimal_correction(world, mask, float(sigma))
        s = float(model.output_scale(config, jnp.float32(sigma)))
        c_in = 1.0 / np.sqrt(sigma**2 + config.sigma_data**2)
        w[j, 0::5, :] = p_x.T / (s * c_in)  # feature (pixel p, channel 0) = c_in·x_p
        w[j, 2::5, :] = p_y.T / s  # channel 2 = y_p
        b[j] = q / s
    return dict(W=w.astype(np.float32), b=b.astype(np.float32), g=np.zeros(num_nodes, np.float32))


def correction_of(hnet: model.HNetApply, config: model.DEFTConfig, denoise, mask, sigma):
    """Δ_φ(x, y) = D_total − D as a function of flat ``x``, ``y`` ``[B, d]`` at one σ."""
    shape = config.image_shape
    m = jnp.asarray(mask, jnp.float32).reshape((1, *shape[:2], 1))

    def delta(x, y):
        xi = x.reshape((-1, *shape))
        yi = m * y.reshape((-1, *shape))
        d_total = model.total_denoiser(denoise, hnet, config, yi, m)
        return (d_total(xi, sigma) - denoise(xi, jnp.full((xi.shape[0],), sigma))).reshape(
            x.shape[0], -1
        )

    return delta


# ---------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class GaussianTrainConfig:
    """Training of the linear h-network: Adam, linear decay to 0 over ``iterations``; the
    evaluation points ``checkpoints`` (iterations at which the parameters are kept)."""

    iterations: int = 3000
    batch: int = 256
    lr: float = 3e-3
    num_nodes: int = 16
    checkpoints: tuple[int, ...] = (0, 100, 300, 1000, 3000)
    seed: int = 0


def train(world: GaussianWorld, mask, config: model.DEFTConfig, tcfg: GaussianTrainConfig):
    """Train the linear h-network with DEFT's loss on fresh Gaussian images every step.

    Returns ``(snapshots, curve, seconds)``: the parameters at each of ``tcfg.checkpoints``
    (dict iteration -> params), the training loss (and the unguided loss of the same batches)
    per chunk, and the training time.
    """
    if any(c < 0 or c > tcfg.iterations for c in tcfg.checkpoints):
        raise ValueError(f"checkpoints must lie in [0, {tcfg.iterations}], got {tcfg.checkpoints}")
    denoise = world.denoiser()
    lam, vec = world.eigenvalues, world.eigenvectors
    root = jnp.asarray(vec * np.sqrt(np.clip(lam, 0.0, None)), jnp.float32)  # x0 = μ + R z
    mu = jnp.asarray(world.mean, jnp.float32)
    shape = config.image_shape
    m = jnp.broadcast_to(
        jnp.asarray(mask, jnp.float32).reshape((1, *shape[:2], 1)), (tcfg.batch, *shape[:2], 1)
    )
    tx = optax.scale_by_adam()
    params = init_linear_hnet(config, tcfg.num_nodes)
    opt = tx.init(params)
    key = jax.random.key(tcfg.seed)
    hi = jax.lax.Precision.HIGHEST

    def step(carry, i):
        params, opt = carry
        k = jax.random.fold_in(key, i)
        kz, ks, kn = jax.random.split(k, 3)
        z = jax.random.normal(kz, (tcfg.batch, world.dim), jnp.float32)
        x0 = (mu + jnp.matmul(z, root.T, precision=hi)).reshape((tcfg.batch, *shape))
        sigma = model.sample_sigmas(config, ks, tcfg.batch)
        noise = jax.random.normal(kn, x0.shape, jnp.float32)
        x, den = losses.noisy_batch(denoise, x0, sigma, noise)

        def objective(p):
            per, aux = losses.deft_loss(linear_hnet(p, config), config, x0, x, den, m, sigma)
            return jnp.mean(per), jnp.mean(aux["unguided"])

        (loss, unguided), grads = jax.value_and_grad(objective, has_aux=True)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt = tx.update(grads, opt, params)
        lr = tcfg.lr * jnp.clip(1.0 - i.astype(jnp.float32) / tcfg.iterations, 0.0, 1.0)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return (params, opt), (loss, unguided)

    @jax.jit
    def run_chunk(params, opt, start, length_marker):
        idx = start + jnp.arange(length_marker.shape[0], dtype=jnp.int32)
        (params, opt), (loss, unguided) = jax.lax.scan(step, (params, opt), idx)
        return params, opt, jnp.mean(loss), jnp.mean(unguided)

    snapshots, curve = {}, []
    done = 0
    t0 = time.perf_counter()
    for target in sorted(set(tcfg.checkpoints) | {tcfg.iterations}):
        if target > done:
            params, opt, loss, unguided = run_chunk(
                params, opt, jnp.int32(done), jnp.zeros((target - done,))
            )
            curve.append(dict(iteration=target, loss=float(loss), loss_unguided=float(unguided)))
            done = target
        if target in tcfg.checkpoints:
            snapshots[target] = jax.tree.map(np.asarray, params)
    return snapshots, curve, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Evaluation: gap closed per σ and the sampler against the exact posterior


def gaps(world, mask, config: model.DEFTConfig, params, sigmas) -> list[float]:
    """Gap closed of the linear h-network ``params`` at each σ of ``sigmas``."""
    denoise = world.denoiser()
    hnet = linear_hnet(jax.tree.map(jnp.asarray, params), config)
    out = []
    for s in sigmas:
        fn = correction_of(hnet, config, denoise, mask, float(s))
        out.append(gap_closed(world, mask, float(s), *affine_map(fn, world.dim)))
    return out


def conditional_denoiser(world: GaussianWorld, mask, y) -> sampling.DenoiseFn:
    """The exact E[x0 | x, y] for one observed image ``y`` as a float32 denoiser (D_total of
    the optimal h-transform): E_o = y_o, E_h = c_h + K(σ)(x_h − c_h) through the
    eigendecomposition of C_hh."""
    obs, hole, gain, c_hh, _ = _hole_quantities(world, mask, 1.0)
    yv = np.asarray(y, np.float64).reshape(world.dim)
    mu = world.mean
    c = np.where(obs, yv, 0.0)
    c[hole] = mu[hole] + gain @ (yv[obs] - mu[obs])
    lam, vec = np.linalg.eigh(c_hh)
    lam32 = jnp.asarray(np.clip(lam, 0.0, None), jnp.float32)
    vec32 = jnp.asarray(vec, jnp.float32)
    c32 = jnp.asarray(c, jnp.float32)
    hole_idx = np.flatnonzero(hole)
    shape = world.image_shape
    hi = jax.lax.Precision.HIGHEST

    def denoise(x, sigma):
        b = x.shape[0]
        xf = x.reshape(b, -1).astype(jnp.float32)
        s2 = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (b,))[:, None] ** 2
        dev = xf[:, hole_idx] - c32[hole_idx]
        zc = jnp.matmul(dev, vec32, precision=hi) * (lam32 / (lam32 + s2))
        out = jnp.broadcast_to(c32, (b, c32.shape[0]))
        out = out.at[:, hole_idx].add(jnp.matmul(zc, vec32.T, precision=hi))
        return out.reshape((b, *shape))

    return denoise


def exact_sample(world, mask, y, key, num: int, sigmas, solver: str = "euler"):
    """``num`` samples of the sampler with the exact conditional denoiser (the optimal
    h-transform's D_total) on the grid ``sigmas``; the key split is DEFT's sampler's."""
    den = conditional_denoiser(world, mask, y)
    k_init, _ = jax.random.split(key)
    shape = (num, *world.image_shape)
    sig = jnp.asarray(sigmas, jnp.float32)
    x = sig[0] * jax.random.normal(k_init, shape, jnp.float32)
    x, _ = jax.jit(lambda x_: sampling.integrate(den, x_, sig, solver=solver))(x)
    return np.asarray(x, np.float64)


def sampler_scores(
    world, mask, y, config, params, key, num: int, num_steps: int, solver: str = "euler"
) -> dict:
    """RMSE of the sample mean and W2 to the exact posterior (hole pixels) of DEFT's sampler
    with the linear h-network ``params`` (None: the exact optimum) for one observed ``y``."""
    c, cov = world.posterior(y, mask)
    shape = world.image_shape
    m = jnp.asarray(mask, jnp.float32).reshape((1, *shape[:2], 1))
    yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape((1, *shape)), (num, *shape))
    mb = jnp.broadcast_to(m, (num, *shape[:2], 1))
    if params is None:
        xs = exact_sample(
            world, mask, y, key, num, model.deployment_sigmas(config, num_steps), solver
        )
        nfe = model.sample_nfe(num_steps, solver)
    else:
        denoise = world.denoiser()
        hnet_params = jax.tree.map(jnp.asarray, params)

        @jax.jit
        def run(p):
            return model.sample(
                denoise,
                linear_hnet(p, config),
                config,
                yb,
                mb,
                key,
                num_steps=num_steps,
                solver=solver,
            ).x

        xs = np.asarray(run(hnet_params), np.float64)
        nfe = model.sample_nfe(num_steps, solver)
    return dict(
        nfe=nfe,
        rmse_mean=posterior_mean_rmse(xs, c, mask),
        w2=empirical_w2_to_posterior(xs, c, cov),
    )
