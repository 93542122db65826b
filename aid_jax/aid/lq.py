"""The linear–quadratic benchmark with a known optimum (AID.md §5).

Data x0 ~ N(0, Σ) on an H x W single-channel image (:class:`aid_jax.gaussian.GaussianWorld`), a
fixed mask m (1 = known), observations y = m ⊙ x0, the exact denoiser D(x; σ) = P_σ x with
P_σ = Σ(Σ + σ²I)⁻¹. The controlled Euler sampler of :mod:`aid_jax.aid.control` is then linear,

    x_{k+1} = A_k x_k + Δr u_k,    A_k = I + ((σ_{k+1} − σ_k)/σ_k)(I − P_{σ_k}),

and with c = E[x0 | y] = L y, C = Cov[x0 | y] the expected cost of a control is

    J = E[ Σ_k (β/2)‖u_k‖²/d Δr + ‖x_K − c‖²/d ] + tr(C)/d.

Optimum (Φ_{K,j} = A_{K−1}⋯A_j, a = 2Δr/β, G_k = Σ_{j≥k} Φ_{K,j+1}Φ_{K,j+1}ᵀ, M_k = I + a G_k):
for every (X_0, y) the least-squares problem has u_j = −(2/β)Φ_{K,j+1}ᵀ(x_K − c) with
x_K − c = M_0⁻¹(Φ_{K,0}X_0 − c), and the same argument from step k gives the optimal feedback

    u*_k(x, y) = −(2/β) Φ_{K,k+1}ᵀ M_k⁻¹ (Φ_{K,k} x − L y),

linear in (x, y). Its cost for one (X_0, y) is e ᵀM_0⁻¹e/d + tr(C)/d with e = Φ_{K,0}X_0 − c
(the running and terminal parts combine: M⁻¹(aG + I)M⁻¹ = M⁻¹), so with X_0 ~ N(0, σ_0²I) and
Cov[c] = Σ − C

    J* = tr(M_0⁻¹ (σ_0² Φ_{K,0}Φ_{K,0}ᵀ + Σ − C))/d + tr(C)/d.

The relaxed (Gaussian-policy) problem adds λT and a policy-independent noise term, and by
certainty equivalence has the same optimal mean. Any linear feedback u_k = F_k x + G_k y + h_k
is evaluated exactly (:meth:`LQProblem.policy_cost`) by propagating the mean and covariance of
(x_k, x0) in float64.

Other terminal costs Ψ (issue 16; :mod:`aid_jax.aid.lq_objectives` has their closed-form laws):
``'observed'`` ‖m ⊙ (x_K − y)‖²/d, and ``'teacher'`` ‖x_K − T‖²/d with T an exact posterior
sample that is a function of the rollout's start (Matheron's rule, :attr:`LQProblem.teacher_maps`):
T = L y + (I − L diag m) Σ^{1/2} X_0/σ_0 (T = y on the observed pixels, T ~ N(0, Σ)). The target
now depends on X_0, which the state x_k no longer shows once policy noise has been added, so the
problem is linear–quadratic in the augmented state (x_k, T), T constant along the rollout; the
exact bookkeeping carries (x_k, τ) with τ the teacher's code (:attr:`LQProblem.teacher_code`:
y on the observed pixels, the whitened posterior noise η = Vᵀ X_0/σ_0 ~ N(0, I) on the hole,
T = Γ τ) and Cov[τ, X_0] ≠ 0 at the start (:attr:`LQProblem.start_covariance`). J* has a
closed form (:meth:`LQProblem.optimal_cost`). The deterministic optimum — the best any guidance
can do, the open-loop least squares of each (X_0, y) — is realised by a feedback on the actor's
inputs (x, y) alone (:meth:`LQProblem.optimal_gains`: along a noise-free trajectory x_k
determines X_0), so the actor does *not* see T (at deployment there is no teacher), while the
critic does (privileged, like ``critic_x0``; the image trainer's ``aid.critic_teacher``): the
value of an (x, y) policy is an exact quadratic in (x_k, T) but not in (x_k, y), and TD errors
from a critic that cannot see T would be biased. The critic reads T as τ because T's own
covariance Σ is ill-conditioned (~1e7) and, jointly with X_0, singular: fitted to T, the adaptive
whitening failed at k = 0. Trained with policy noise, an (x, y) policy cannot tell noise from X_0,
so the relaxed problem's best (x, y) policy is not exactly the deterministic optimum (no
certainty equivalence for a hidden target): the learned gap closed stays slightly below 100 %
(docs/AID_DESIGN.md).

Learned function classes (they contain the optimum): a per-step linear actor
μ_k = F_k φ_x + G_k φ_y (+ h_k) and a per-step quadratic critic V_k = zᵀQ_k z + q_kᵀz + c_k,
z = (φ_x, φ_y), over features linear in (x, y):

* ``'xy'`` (plain): φ_x = c_in(σ_k) x with c_in = 1/√(σ_k² + σ_data²), φ_y = y on the observed
  pixels;
* ``'whitened'`` (better conditioned): φ_x = Cov[X_k]^{-1/2} x with the state covariance of the
  zero actor's training rollout (prior dynamics plus policy noise), φ_y = Σ_oo^{-1/2} y_o — the
  features then have roughly identity covariance, which removes the ~1e7 spread of the SE
  covariance's spectrum from the learning problem.
* ``'adaptive'``: the whitened features re-fitted to the current policy every
  ``LQTrainConfig.refresh`` iterations — the *innovation* φ_x = W_k (x − B_k y_o) with B_k y_o the
  regression of X_k on y under the current policy (exact second moments of the training rollout,
  :meth:`LQProblem.rollout_moments`) and W_k the inverse square root of the residual; φ_y as for
  ``'whitened'``. The actor, the critic and their Adam moments are rewritten in the new
  coordinates (:func:`_reparametrize`), so the learned functions do not change at a refresh.
  Why: a good guidance pulls the observed pixels of X_k onto y, so under the fixed zero-actor
  whitening the pair (φ_x, φ_y) becomes nearly collinear (eigenvalues of its covariance down to
  ~1e-4 at the last steps of the 8x8 problem with Ψ on the observed pixels and β/σ²): the critic's
  quadratic regression is then ill-conditioned (~1e-8) exactly in the directions x − y that the
  guidance acts on, and the actor's gains there have to grow large through an ill-conditioned
  objective. Starts exactly as ``'whitened'`` (under the zero actor X_k is independent of y).

Training (:func:`train`) uses the generic rollout and losses of :mod:`aid_jax.aid.control` and
:mod:`aid_jax.aid.losses` — the code the image trainer uses — with Adam (optax), jit and
``lax.scan`` over iterations in chunks; every variance-reduction device is an option of
:class:`LQTrainConfig` and the paper's form is ``LQTrainConfig.paper()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from aid_jax import sampling
from aid_jax.aid import control, losses
from aid_jax.gaussian import BENCHMARK_MASKS, GaussianWorld, benchmark_mask
from aid_jax.sampling import EDMSchedule

try:  # optional: the float64 bookkeeping is ~100x slower with threaded BLAS on a busy CPU
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = [
    "FEATURES",
    "MASKS",
    "LQProblem",
    "LQTrainConfig",
    "TrainResult",
    "actor_mean",
    "critic_value",
    "init_actor",
    "init_critic",
    "linearize_actor",
    "lq_mask",
    "monte_carlo_cost",
    "monte_carlo_cost_f64",
    "optimal_actor_params",
    "teacher_fn",
    "train",
]

MASKS = BENCHMARK_MASKS
FEATURES = ("xy", "whitened", "adaptive")
LQ_TERMINALS = ("mse", "observed", "teacher")


def lq_mask(kind: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed mask float32 ``[H, W, 1]`` (1 = known) for the benchmark
    (:func:`aid_jax.gaussian.benchmark_mask`, shared with benchmarks/gaussian_posterior.py)."""
    return benchmark_mask(kind, height, width, seed)


def _inv_sqrt_psd(a: np.ndarray, rcond: float = 0.0) -> np.ndarray:
    """A^{-1/2} of a symmetric PSD matrix; eigenvalues below ``rcond`` times the largest are
    raised to it (for numerically singular A)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    if rcond:
        w = np.maximum(w, rcond * w.max())
    return (v / np.sqrt(w)) @ v.T


# The innovation's residual is singular at k = 0 for the teacher's critic: X_0 − B τ vanishes in
# the n_hole directions that τ's code η = Vᵀ X_0/σ_0 reads off X_0. Those directions get this
# relative floor (the features there are then float32 rounding, ~1e-3); elsewhere the residual
# contains the policy noise added since the start, and its smallest relative eigenvalue is ~1e-6
# or more on the problems above, so the floor does not touch it.
_RESIDUAL_RCOND = 1e-9


# --------------------------------------------------------------------------------------------
# The problem and its exact solution
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LQProblem:
    """One linear–quadratic instance: world, mask, schedule, λ, β; exact quantities in float64.

    Build with :meth:`create`. Flat vectors are row-major images (``image.reshape(d)``).

    Attributes:
        world: The Gaussian world (zero mean).
        mask: float64 ``[d]``, 1 = known.
        num_steps: K.
        lam: Temperature λ.
        beta: Control-cost weight β.
        sigmas: float64 ``[K + 1]``: the float32 noise levels of the ``sampling.EDMSchedule``
            (what the JAX sampler runs on), widened.
        terminal: Ψ: ``'mse'`` ‖x_K − x0‖²/d (the module doc's problem), ``'observed'``
            ‖m ⊙ (x_K − y)‖²/d or ``'teacher'`` ‖x_K − T‖²/d with T = T_y y + T_x X_0 an exact
            posterior sample built from the start (issue 16; :attr:`teacher_maps`,
            :mod:`aid_jax.aid.lq_objectives`).
        beta_weighting: ``'uniform'`` β_k = β or ``'inv_sigma2'`` β_k = β/σ_k² (policy std
            √(2λ/β_k) per step).
    """

    world: GaussianWorld
    mask: np.ndarray
    num_steps: int
    lam: float
    beta: float
    sigmas: np.ndarray
    terminal: str = "mse"
    beta_weighting: str = "uniform"

    @classmethod
    def create(
        cls,
        height: int = 8,
        width: int = 8,
        *,
        length_scale: float = 2.0,
        variance: float = 0.25,
        mask: str | np.ndarray = "top_half",
        num_steps: int = 10,
        lam: float = 0.1,
        beta: float = 0.1,
        schedule: EDMSchedule = EDMSchedule(),  # noqa: B008 (frozen, hashable)
        mask_seed: int = 0,
        terminal: str = "mse",
        beta_weighting: str = "uniform",
    ) -> LQProblem:
        """The instance of AID.md §5 (defaults: 8x8, length scale 2, variance 0.25, top half
        known, K = 10, λ = β = 0.1, EDM's ρ-schedule)."""
        world = GaussianWorld.squared_exponential(height, width, length_scale, variance)
        if isinstance(mask, str):
            mask = lq_mask(mask, height, width, mask_seed)
        m = np.asarray(mask, np.float64).reshape(-1)
        if m.shape != (height * width,) or not np.isin(m, (0.0, 1.0)).all():
            raise ValueError(f"mask must have {height * width} values in {{0, 1}}")
        if not 0 < m.sum() < m.size:
            raise ValueError("mask must have both known (1) and missing (0) pixels")
        if not lam > 0 or not beta > 0:
            raise ValueError(f"lam and beta must be > 0, got {lam}, {beta}")
        if terminal not in LQ_TERMINALS:
            raise ValueError(f"terminal must be one of {LQ_TERMINALS}, got {terminal!r}")
        if beta_weighting not in ("uniform", "inv_sigma2"):
            raise ValueError(
                f"beta_weighting must be 'uniform' or 'inv_sigma2', got {beta_weighting!r}"
            )
        sig = np.asarray(schedule.sigmas(num_steps), np.float64)
        return cls(world, m, int(num_steps), float(lam), float(beta), sig, terminal, beta_weighting)

    # -- basic quantities --------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.world.dim

    @property
    def dr(self) -> float:
        return 1.0 / self.num_steps

    @property
    def observed(self) -> np.ndarray:
        """Indices of the known pixels (flat)."""
        return np.flatnonzero(self.mask == 1.0)

    @property
    def policy_std(self) -> float:
        """√(2λ/β) (the uniform weighting's; per step: :attr:`policy_stds`)."""
        return control.gaussian_policy_std(self.lam, self.beta)

    @property
    def uniform(self) -> bool:
        return self.beta_weighting == "uniform"

    @property
    def betas(self) -> np.ndarray:
        """β_k per step, float64 ``[K]``."""
        sig = self.sigmas[:-1]
        return (
            self.beta / sig**2
            if self.beta_weighting == "inv_sigma2"
            else np.full_like(sig, self.beta)
        )

    @property
    def policy_stds(self) -> np.ndarray:
        """s_k = √(2λ/β_k), float64 ``[K]``."""
        return np.sqrt(2.0 * self.lam / self.betas)

    @property
    def terminal_weight(self) -> np.ndarray:
        """Q of Ψ = (x_K − t)ᵀQ(x_K − t)/d: I (``'mse'``, ``'teacher'``) or diag(m)
        (``'observed'``)."""
        return np.diag(self.mask) if self.terminal == "observed" else np.eye(self.dim)

    @property
    def terminal_target_map(self) -> np.ndarray:
        """T with the optimal target t = T y: L (the conditional mean, ``'mse'``) or diag(m)
        (``'teacher'``'s target also depends on X_0: :attr:`teacher_maps`)."""
        if self.terminal == "teacher":
            raise ValueError("the teacher's target depends on X_0 too: use teacher_maps")
        return np.diag(self.mask) if self.terminal == "observed" else self.conditional_mean_map

    @functools.cached_property
    def teacher_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(T_y, T_x), float64 ``[d, d]`` each: the teacher T = T_y y + T_x X_0, an exact
        posterior sample given y derived from the rollout's start (Matheron's rule: the prior
        sample x̃ = Σ^{1/2} X_0/σ_0, corrected to the observation, T = x̃ + L(y − m ⊙ x̃)), so
        T_y = L and T_x = (I − L diag m) Σ^{1/2}/σ_0. T equals y on the observed pixels and
        T ~ N(0, Σ); the definition :mod:`aid_jax.aid.lq_objectives` uses."""
        lmap = self.conditional_mean_map
        root = np.real(scipy.linalg.sqrtm(self.world.cov))
        t_x = (np.eye(self.dim) - lmap @ np.diag(self.mask)) @ root / self.sigmas[0]
        return lmap, t_x

    @functools.cached_property
    def teacher_code(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, Γ), float64 ``[d, d]`` each: the teacher in well-conditioned coordinates, the
        *code* τ = y + N X_0 — y on the observed pixels and, on the hole pixels, the teacher's
        posterior noise η = Vᵀ X_0/σ_0 ~ N(0, I) — with T = Γ τ.

        From the SVD T_x[hole] = U S Vᵀ (rank n_hole): T = L y + T_x X_0 = L y + σ_0 U S η on the
        hole, so Γ = L diag(m) + σ_0 U S on the hole block. T itself has covariance Σ (condition
        ~1e7) and, with X_0, a covariance of rank d + n_obs; τ has covariance
        blockdiag(Σ_oo, I), which is what the critic's features are fitted to.
        """
        t_y, t_x = self.teacher_maps
        d, s0 = self.dim, self.sigmas[0]
        hole = np.flatnonzero(self.mask == 0.0)
        u, sv, vt = np.linalg.svd(t_x[hole], full_matrices=False)
        n = np.zeros((d, d))
        n[hole] = vt / s0
        gamma = t_y @ np.diag(self.mask)
        gamma[np.ix_(hole, hole)] += s0 * u * sv[None, :]
        return n, gamma

    @functools.cached_property
    def start_covariance(self) -> np.ndarray:
        """Covariance of (X_0, c), float64 ``[2d, 2d]``: c is the image the terminal cost
        compares x_K with — x0 (``'mse'``, ``'observed'``), independent of X_0 — or, for
        ``'teacher'``, the teacher's code τ = y + N X_0 (:attr:`teacher_code`, T = Γ τ) with
        Cov[τ, X_0] = σ_0² N; y = m ⊙ c in every case."""
        d, s0 = self.dim, self.sigmas[0]
        cov = np.block([[s0**2 * np.eye(d), np.zeros((d, d))], [np.zeros((d, d)), self.world.cov]])
        if self.terminal == "teacher":
            n = self.teacher_code[0]
            m = np.diag(self.mask)
            cov[d:, d:] = m @ self.world.cov @ m + s0**2 * n @ n.T
            cov[d:, :d] = s0**2 * n
            cov[:d, d:] = s0**2 * n.T
        return cov

    @property
    def target_map(self) -> np.ndarray:
        """Γ with the terminal cost's image Γ c (c of :attr:`start_covariance`): I, or the
        teacher's T = Γ τ."""
        return self.teacher_code[1] if self.terminal == "teacher" else np.eye(self.dim)

    @functools.cached_property
    def transitions(self) -> np.ndarray:
        """A_k, float64 ``[K, d, d]``."""
        d, s = self.dim, self.world.cov
        eye = np.eye(d)
        out = []
        for k in range(self.num_steps):
            sk, sn = self.sigmas[k], self.sigmas[k + 1]
            p = np.linalg.solve(s + sk**2 * eye, s).T  # Σ(Σ + σ²I)⁻¹ (symmetric factors)
            out.append(eye + ((sn - sk) / sk) * (eye - p))
        return np.stack(out)

    @functools.cached_property
    def propagators(self) -> np.ndarray:
        """Φ_{K,j} = A_{K−1}⋯A_j for j = 0..K (Φ_{K,K} = I), float64 ``[K + 1, d, d]``."""
        k, d = self.num_steps, self.dim
        phi = np.empty((k + 1, d, d))
        phi[k] = np.eye(d)
        for j in range(k - 1, -1, -1):
            phi[j] = phi[j + 1] @ self.transitions[j]
        return phi

    @functools.cached_property
    def _posterior_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(L, C): c = L y for y with zeros in the hole (L's hole columns are 0); C = Cov[x0|y]."""
        d, s = self.dim, self.world.cov
        obs = self.mask == 1.0
        hole = ~obs
        lmap = np.zeros((d, d))
        lmap[np.ix_(obs, obs)] = np.eye(int(obs.sum()))
        lmap[np.ix_(hole, obs)] = np.linalg.solve(s[np.ix_(obs, obs)], s[np.ix_(obs, hole)]).T
        _, cpost = self.world.posterior(np.zeros(d), self.mask)
        return lmap, cpost

    @property
    def conditional_mean_map(self) -> np.ndarray:
        """L with c = E[x0 | y] = L y, float64 ``[d, d]``."""
        return self._posterior_maps[0]

    @property
    def posterior_cov(self) -> np.ndarray:
        """C = Cov[x0 | y], float64 ``[d, d]`` (zero on known pixels)."""
        return self._posterior_maps[1]

    def _m_matrix(self, k: int) -> np.ndarray:
        """M_k = I + G_k Q, G_k = Σ_{j≥k} (2Δr/β_j) Φ_{K,j+1}Φ_{K,j+1}ᵀ (I + aG_k for the MSE)."""
        phi = self.propagators
        betas = self.betas
        g = sum(
            (2.0 * self.dr / betas[j]) * phi[j + 1] @ phi[j + 1].T for j in range(k, self.num_steps)
        )
        return np.eye(self.dim) + g @ self.terminal_weight

    # -- the optimum -------------------------------------------------------------------------

    def optimal_cost(self) -> float:
        """J* = tr(M_0⁻¹(σ_0² Φ_{K,0}Φ_{K,0}ᵀ + Σ − C))/d + tr(C)/d (closed form, module doc);
        for the teacher (any β weighting) J* = tr(M_0⁻¹ E)/d with E = Cov[Φ_{K,0}X_0 − T] =
        σ_0² Φ_{K,0}Φ_{K,0}ᵀ + Σ − σ_0²(Φ_{K,0}T_xᵀ + T_xΦ_{K,0}ᵀ) (the cost of one (X_0, y) is
        eᵀM_0⁻¹e/d with e = Φ_{K,0}X_0 − T, and T has no spread given (X_0, y)); for other Ψ
        or β weightings, the exact cost of the optimal feedback."""
        if self.terminal == "teacher":
            phi0, t_x = self.propagators[0], self.teacher_maps[1]
            cross = phi0 @ t_x.T
            e_cov = self.sigmas[0] ** 2 * (phi0 @ phi0.T - cross - cross.T) + self.world.cov
            return float(np.trace(np.linalg.solve(self._m_matrix(0), e_cov)) / self.dim)
        if self.terminal != "mse" or not self.uniform:
            return self.policy_cost(*self.optimal_gains())
        phi0 = self.propagators[0]
        c = self.posterior_cov
        e_cov = self.sigmas[0] ** 2 * phi0 @ phi0.T + self.world.cov - c
        m0 = self._m_matrix(0)
        return float((np.trace(np.linalg.solve(m0, e_cov)) + np.trace(c)) / self.dim)

    def optimal_cost_given(self, x_init, y) -> float:
        """Optimal expected cost given one start X_0 and observation y (expectation over x0 | y):
        eᵀM_0⁻¹e/d + tr(C)/d with e = Φ_{K,0}X_0 − L y."""
        x = np.asarray(x_init, np.float64).reshape(self.dim)
        if self.terminal != "mse" or not self.uniform:
            raise NotImplementedError("optimal_cost_given covers the uniform MSE problem only")
        yv = np.asarray(y, np.float64).reshape(self.dim) * self.mask
        e = self.propagators[0] @ x - self.conditional_mean_map @ yv
        return float(
            (e @ np.linalg.solve(self._m_matrix(0), e) + np.trace(self.posterior_cov)) / self.dim
        )

    def optimal_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """(F*, G*), float64 ``[K, d, d]`` each: u*_k = F*_k x + G*_k y (y = m ⊙ x0, full image).

        F*_k = −(2/β) Φ_{K,k+1}ᵀ M_k⁻¹ Φ_{K,k}, G*_k = (2/β) Φ_{K,k+1}ᵀ M_k⁻¹ L; in general
        (Ψ with weight Q and target t = T y, per-step β_k, :mod:`aid_jax.aid.lq_objectives`)
        F*_k = −(2/β_k) Φ_{K,k+1}ᵀ Q M_k⁻¹ Φ_{K,k}, G*_k = (2/β_k) Φ_{K,k+1}ᵀ Q M_k⁻¹ T.
        For the teacher: :meth:`_teacher_gains`.
        """
        if self.terminal == "teacher":
            return self._teacher_gains()
        phi = self.propagators
        tmap = self.terminal_target_map
        q = self.terminal_weight
        betas = self.betas
        fs, gs = [], []
        for k in range(self.num_steps):
            w = (2.0 / betas[k]) * phi[k + 1].T @ q @ np.linalg.inv(self._m_matrix(k))
            fs.append(-w @ phi[k])
            gs.append(w @ tmap)
        return np.stack(fs), np.stack(gs)

    def _teacher_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's deterministic optimum as a feedback on (x, y), the actor's inputs.

        Open loop (:mod:`aid_jax.aid.lq_objectives`), for each (X_0, y): u_j = U_j X_0 + V_j y
        with U_j = −(2/β_j) Φ_{K,j+1}ᵀ M_0⁻¹ (Φ_{K,0} − T_x), V_j = (2/β_j) Φ_{K,j+1}ᵀ M_0⁻¹ T_y.
        Along it x_k = P_k X_0 + R_k y (P_0 = I, R_0 = 0, P_{k+1} = A_k P_k + Δr U_k, R_{k+1} =
        A_k R_k + Δr V_k), so x_k determines X_0 given y while P_k is invertible and the same
        controls are F*_k x + G*_k y with F*_k = U_k P_k⁻¹, G*_k = V_k − F*_k R_k. (The optimal
        feedback on the augmented state (x, T) would be −(2/β_k) Φ_{K,k+1}ᵀ M_k⁻¹ (Φ_{K,k} x − T),
        which needs T; on (x, y) it is this one, exact for the noise-free deployment.) P_k stays
        well conditioned before the last step (cond ≈ 1e3 on the 8x8 problem with β/σ²).
        """
        phi, a_mats, betas, dr = self.propagators, self.transitions, self.betas, self.dr
        t_y, t_x = self.teacher_maps
        d = self.dim
        m0_inv = np.linalg.inv(self._m_matrix(0))
        to_x0 = m0_inv @ (phi[0] - t_x)
        to_y = m0_inv @ t_y
        p, r = np.eye(d), np.zeros((d, d))
        fs, gs = [], []
        for k in range(self.num_steps):
            w = (2.0 / betas[k]) * phi[k + 1].T
            u, v = -w @ to_x0, w @ to_y
            f = np.linalg.solve(p.T, u.T).T  # U_k P_k⁻¹
            fs.append(f)
            gs.append(v - f @ r)
            p, r = a_mats[k] @ p + dr * u, a_mats[k] @ r + dr * v
        return np.stack(fs), np.stack(gs)

    def unguided_cost(self) -> float:
        """J_0: the cost of u ≡ 0 (the plain Euler sampler)."""
        z = np.zeros((self.num_steps, self.dim, self.dim))
        return self.policy_cost(z, z)

    def policy_cost(self, f: np.ndarray, g: np.ndarray, h: np.ndarray | None = None) -> float:
        """Exact expected cost of the deterministic feedback u_k = F_k x + G_k y + h_k.

        Propagates the mean and covariance of z_k = (x_k, c) in float64, c = x0 or, for the
        teacher, its code τ (:attr:`start_covariance`; y = m ⊙ c): z_0 has mean 0 and covariance
        diag(σ_0² I, Σ) (with Cov[τ, X_0] for the teacher); u_k = T_k z_k + h_k with
        T_k = [F_k, G_k diag(m)]; E‖u_k‖² = tr(T_k S_k T_kᵀ) + ‖T_k μ_k + h_k‖²; terminal
        E[(x_K − Γc)ᵀQ(x_K − Γc)] likewise (Γ = :attr:`target_map`).

        Args:
            f: ``[K, d, d]`` gains on x.
            g: ``[K, d, d]`` gains on y (y with zeros in the hole; hole columns do not matter).
            h: Optional ``[K, d]`` offsets.

        Returns:
            J (float).
        """
        k_steps, d = self.num_steps, self.dim
        f = np.asarray(f, np.float64)
        g = np.asarray(g, np.float64)
        if f.shape != (k_steps, d, d) or g.shape != (k_steps, d, d):
            raise ValueError(
                f"gains must be [K, d, d] = {(k_steps, d, d)}, got {f.shape}, {g.shape}"
            )
        h = np.zeros((k_steps, d)) if h is None else np.asarray(h, np.float64)
        eye, zero = np.eye(d), np.zeros((d, d))
        cov = self.start_covariance
        mean = np.zeros(2 * d)
        running = 0.0
        betas = self.betas
        for k in range(k_steps):
            t = np.concatenate([f[k], g[k] * self.mask[None, :]], axis=1)  # [d, 2d]
            mu_u = t @ mean + h[k]
            running += 0.5 * betas[k] * self.dr * (np.trace(t @ cov @ t.T) + mu_u @ mu_u) / d
            step = np.block(
                [[self.transitions[k] + self.dr * f[k], self.dr * t[:, d:]], [zero, eye]]
            )
            cov = step @ cov @ step.T
            mean = step @ mean + np.concatenate([self.dr * h[k], np.zeros(d)])
        # Ψ = (x_K − Γc)ᵀQ(x_K − Γc)/d (for 'observed', y = m ⊙ x0 on the known pixels).
        e = np.concatenate([eye, -self.target_map], axis=1)
        me = e @ mean
        q = self.terminal_weight
        terminal = (np.trace(q @ e @ cov @ e.T) + me @ q @ me) / d
        return float(running + terminal)

    def gap_closed(self, cost: float) -> float:
        """(J_0 − J)/(J_0 − J*)."""
        j0, js = self.unguided_cost(), self.optimal_cost()
        return float((j0 - cost) / (j0 - js))

    # -- constants for the JAX side ----------------------------------------------------------

    @functools.cached_property
    def rollout_state_covariances(self) -> np.ndarray:
        """Cov[X_k] of the training rollout of the zero actor (policy noise only), k = 0..K−1.

        Cov_0 = σ_0² I, Cov_{k+1} = A_k Cov_k A_kᵀ + Δr² s² I; float64 ``[K, d, d]``.
        """
        d = self.dim
        stds = self.policy_stds
        cov = self.sigmas[0] ** 2 * np.eye(d)
        out = []
        for k in range(self.num_steps):
            out.append(cov)
            q = (self.dr * stds[k]) ** 2 * np.eye(d)
            cov = self.transitions[k] @ cov @ self.transitions[k].T + q
        return np.stack(out)

    @functools.cached_property
    def features_whitening(self) -> tuple[np.ndarray, np.ndarray]:
        """(Cov[X_k]^{-1/2} ``[K, d, d]``, Σ_oo^{-1/2} ``[n_obs, n_obs]``)."""
        wx = np.stack([_inv_sqrt_psd(c) for c in self.rollout_state_covariances])
        obs = self.observed
        wy = _inv_sqrt_psd(self.world.cov[np.ix_(obs, obs)])
        return wx, wy

    def feature_maps(self, features: str) -> tuple[np.ndarray, np.ndarray]:
        """Linear feature maps (φ_x = Wx_k x, φ_y = Wy y_o): ``([K, d, d], [n_obs, n_obs])``."""
        if features == "xy":
            var = float(np.mean(np.diag(self.world.cov)))
            c_in = 1.0 / np.sqrt(self.sigmas[:-1] ** 2 + var)
            wx = c_in[:, None, None] * np.eye(self.dim)[None]
            return wx, np.eye(self.observed.size)
        if features in ("whitened", "adaptive"):  # 'adaptive' starts whitened
            return self.features_whitening
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")

    def rollout_moments(
        self, f: np.ndarray | None = None, g: np.ndarray | None = None, h: np.ndarray | None = None
    ) -> np.ndarray:
        """Second moments E[v_k v_kᵀ] of v_k = (X_k, c) in the training rollout, k = 0..K−1
        (c = x0, or the teacher's code τ: :attr:`start_covariance`; y = m ⊙ c).

        The rollout of the Gaussian policy with mean u_k = F_k x + G_k y + h_k (zero when not
        given: the unguided sampler) and std s_k, propagated exactly in float64; ``[K, 2d, 2d]``.
        With the zero actor the x-block is :attr:`rollout_state_covariances` and X_k is
        independent of y (of x0 too, but not of the teacher's code).
        """
        k_steps, d = self.num_steps, self.dim
        zeros = np.zeros((k_steps, d, d))
        f = zeros if f is None else np.asarray(f, np.float64)
        g = zeros if g is None else np.asarray(g, np.float64)
        h = np.zeros((k_steps, d)) if h is None else np.asarray(h, np.float64)
        eye, zero = np.eye(d), np.zeros((d, d))
        cov = self.start_covariance
        mean = np.zeros(2 * d)
        stds = self.policy_stds
        out = []
        for k in range(k_steps):
            out.append(cov + np.outer(mean, mean))
            step = np.block(
                [
                    [self.transitions[k] + self.dr * f[k], self.dr * g[k] * self.mask[None, :]],
                    [zero, eye],
                ]
            )
            cov = step @ cov @ step.T
            cov[:d, :d] += (self.dr * stds[k]) ** 2 * eye
            mean = step @ mean + np.concatenate([self.dr * h[k], np.zeros(d)])
        return np.stack(out)

    def sample_factor(self) -> np.ndarray:
        """R with x0 = z Rᵀ ~ N(0, Σ) for z ~ N(0, I): R = U diag(√λ)."""
        return self.world.eigenvectors * np.sqrt(np.clip(self.world.eigenvalues, 0, None))


# --------------------------------------------------------------------------------------------
# Per-step linear actor and quadratic critic
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _FeatureMaps:
    """The linear feature maps in float64: φ_x = W_k (x − B_k c), φ_c = W_c c, c = v[idx] the
    conditioning (observed pixels of y, or all of x0), and R_k = E[z zᵀ] (the centring)."""

    wx: np.ndarray  # [K, d, d]
    bx: np.ndarray | None  # [K, d, n_c], None: B = 0
    wc: np.ndarray  # [n_c, n_c]
    idx: np.ndarray  # [n_c] pixel indices of the conditioning
    zcov: np.ndarray  # [K, n, n], n = d + n_c

    def transforms(self) -> np.ndarray:
        """T_k with z = T_k (x, c): ``[K, n, n]``."""
        k_steps, d = self.wx.shape[:2]
        n_c = self.idx.size
        t = np.zeros((k_steps, d + n_c, d + n_c))
        t[:, :d, :d] = self.wx
        if self.bx is not None:
            t[:, :d, d:] = -self.wx @ self.bx
        t[:, d:, d:] = self.wc
        return t


def _feature_maps(
    problem: LQProblem, features: str, x0: bool = False, moments: np.ndarray | None = None
) -> _FeatureMaps:
    """Feature maps; ``x0=True`` conditions on the whole image c of
    :meth:`LQProblem.rollout_moments` — the clean image x0, or the teacher's code τ — (all d
    pixels, whitened with Cov[c]^{-1/2} for the whitened features: Σ^{-1/2} for x0) instead of
    the observed pixels of y. ``moments``
    (:meth:`LQProblem.rollout_moments` of the current policy; default: the zero actor's) fit the
    ``'adaptive'`` features and give R_k."""
    wx, wy = problem.feature_maps(features)
    if x0:
        idx = np.arange(problem.dim)
        d = problem.dim
        cov_c = problem.start_covariance[d:, d:]  # Σ for x0; blockdiag(Σ_oo, I) for τ
        wy = _inv_sqrt_psd(cov_c) if features != "xy" else np.eye(problem.dim)
    else:
        idx = problem.observed
    if moments is None:
        moments = problem.rollout_moments()
    d = problem.dim
    sel = np.concatenate([np.arange(d), d + idx])
    sub = moments[:, sel[:, None], sel[None, :]]  # second moments of (x_k, c)
    bx = None
    if features == "adaptive":  # innovation x − B c, whitened by its residual moment
        cxc, ccc = sub[:, :d, d:], sub[:, d:, d:]
        bx = np.stack([np.linalg.solve(ccc[k], cxc[k].T).T for k in range(problem.num_steps)])
        resid = sub[:, :d, :d] - np.einsum("kij,klj->kil", bx, cxc)
        wx = np.stack([_inv_sqrt_psd(r, _RESIDUAL_RCOND) for r in resid])
    maps = _FeatureMaps(wx=wx, bx=bx, wc=wy, idx=idx, zcov=np.zeros(0))
    t = maps.transforms()
    return dataclasses.replace(maps, zcov=t @ sub @ np.swapaxes(t, 1, 2))


def _jax_constants(maps: _FeatureMaps, center: bool = False) -> dict[str, jax.Array]:
    out = {
        "zcov": jnp.asarray(maps.zcov, jnp.float32),
        "center": jnp.float32(1.0 if center else 0.0),
        "wx": jnp.asarray(maps.wx, jnp.float32),
        "wy": jnp.asarray(maps.wc, jnp.float32),
        "obs": jnp.asarray(maps.idx, jnp.int32),
    }
    if maps.bx is not None:
        out["bx"] = jnp.asarray(maps.bx, jnp.float32)
    return out


def _constants(
    problem: LQProblem, features: str, center: bool = False, x0: bool = False
) -> dict[str, jax.Array]:
    """Feature constants (:func:`_feature_maps` at the zero actor) as JAX arrays."""
    return _jax_constants(_feature_maps(problem, features, x0), center)


def init_actor(problem: LQProblem, *, bias: bool = False) -> dict[str, jax.Array]:
    """Zero-initialised actor (the unguided sampler): F ``[K, d, d]``, G ``[K, d, n_obs]``
    (+ h ``[K, d]``)."""
    k, d, n = problem.num_steps, problem.dim, problem.observed.size
    p = {"F": jnp.zeros((k, d, d), jnp.float32), "G": jnp.zeros((k, d, n), jnp.float32)}
    if bias:
        p["h"] = jnp.zeros((k, d), jnp.float32)
    return p


def _critic_sees_image(problem: LQProblem, x0: bool) -> bool:
    """Whether the critic conditions on a whole image (x0 with ``critic_x0``; always the teacher
    T for Ψ = teacher, module doc) rather than on the observed pixels of y."""
    return x0 or problem.terminal == "teacher"


def teacher_fn(problem: LQProblem) -> Callable[[jax.Array, jax.Array], tuple]:
    """``fn(x_init, y) -> (T, τ)`` in float32 JAX (``[B, H, W, 1]`` each): the teacher
    T = T_y y + T_x X_0 of :attr:`LQProblem.teacher_maps` (an exact posterior sample given y,
    a function of the rollout's start X_0) and its code τ = y + N X_0
    (:attr:`LQProblem.teacher_code`, what the critic sees), both computed from (X_0, y)."""
    t_y, t_x = (jnp.asarray(m.T, jnp.float32) for m in problem.teacher_maps)
    n_x = jnp.asarray(problem.teacher_code[0].T, jnp.float32)
    hi = jax.lax.Precision.HIGHEST

    def fn(x_init, y):
        b = x_init.shape[0]
        yf, xf = y.reshape(b, -1), x_init.reshape(b, -1)
        t = jnp.matmul(yf, t_y, precision=hi) + jnp.matmul(xf, t_x, precision=hi)
        code = yf + jnp.matmul(xf, n_x, precision=hi)
        return t.reshape(x_init.shape), code.reshape(x_init.shape)

    return fn


def init_critic(problem: LQProblem, *, x0: bool = False) -> dict[str, jax.Array]:
    """Zero-initialised per-step quadratic critic over z = (φ_x, φ_y): Q ``[K, n, n]``,
    q ``[K, n]``, c ``[K]`` with n = d + n_obs (n = 2d with ``x0=True``: z = (φ_x, φ_x0); and
    for Ψ = teacher, where the critic sees T: z = (φ_x, φ_T))."""
    k = problem.num_steps
    n = problem.dim + (problem.dim if _critic_sees_image(problem, x0) else problem.observed.size)
    return {
        "Q": jnp.zeros((k, n, n), jnp.float32),
        "q": jnp.zeros((k, n), jnp.float32),
        "c": jnp.zeros((k,), jnp.float32),
    }


def _features(consts, k, x, y):
    b = x.shape[0]
    hi = jax.lax.Precision.HIGHEST
    xf = x.reshape(b, -1)
    yo = y.reshape(b, -1)[:, consts["obs"]]
    if "bx" in consts:  # the innovation x − B_k c ('adaptive')
        xf = xf - jnp.matmul(yo, consts["bx"][k].T, precision=hi)
    fx = jnp.matmul(xf, consts["wx"][k].T, precision=hi)
    fy = jnp.matmul(yo, consts["wy"].T, precision=hi)
    return fx, fy


def actor_mean(params, consts, k, x, y) -> jax.Array:
    """μ_k = F_k φ_x + G_k φ_y (+ h_k), shaped like ``x`` ``[B, H, W, 1]``."""
    hi = jax.lax.Precision.HIGHEST
    fx, fy = _features(consts, k, x, y)
    mu = jnp.matmul(fx, params["F"][k].T, precision=hi) + jnp.matmul(
        fy, params["G"][k].T, precision=hi
    )
    if "h" in params:
        mu = mu + params["h"][k]
    return mu.reshape(x.shape)


def critic_value(params, consts, k, x, y) -> jax.Array:
    """V_k(z) = zᵀQ_k z − ⟨Q_k, R_k⟩ + q_kᵀz + c_k, z = (φ_x, φ_y), ``[B]`` (the network part,
    no −λr).

    R_k is the second-moment matrix of z under the zero actor's rollout (identity for whitened
    features): the quadratic features z_i z_j − R_ij are then centred, so the constant level
    is carried by c_k alone rather than by every diagonal entry of Q_k (the same function class;
    it keeps the optimiser's noise on Q from moving the level coherently).
    """
    hi = jax.lax.Precision.HIGHEST
    z = jnp.concatenate(_features(consts, k, x, y), axis=1)
    qk = params["Q"][k]
    qz = jnp.matmul(z, qk.T, precision=hi)
    level = params["c"][k] - consts["center"] * jnp.sum(qk * consts["zcov"][k])
    return jnp.sum(z * qz, axis=1) + jnp.matmul(z, params["q"][k], precision=hi) + level


def optimal_actor_params(problem: LQProblem, features: str = "xy") -> dict[str, jax.Array]:
    """The exact optimal gains written in the actor's parametrisation (float32)."""
    f_star, g_star = problem.optimal_gains()
    wx, wy = problem.feature_maps(features)
    obs = problem.observed
    inv = 1.0 / _output_scale(problem)
    f = np.stack([inv[k] * f_star[k] @ np.linalg.inv(wx[k]) for k in range(problem.num_steps)])
    g = np.stack([inv[k] * g_star[k][:, obs] @ np.linalg.inv(wy) for k in range(problem.num_steps)])
    return {"F": jnp.asarray(f, jnp.float32), "G": jnp.asarray(g, jnp.float32)}


def _effective_gains(
    problem: LQProblem, params, maps: _FeatureMaps
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(F, G, h) in (x, y) coordinates of the actor ``params`` on feature maps ``maps`` (float64,
    the same as :func:`linearize_actor` of it, without autodiff)."""
    d = problem.dim
    scale = _output_scale(problem)[:, None, None]
    gains = np.concatenate([np.asarray(params["F"], np.float64), np.asarray(params["G"])], 2)
    gains = scale * (gains @ maps.transforms())  # on (x, y_o)
    g = np.zeros((problem.num_steps, d, d))
    g[:, :, maps.idx] = gains[:, :, d:]
    h = scale[:, :, 0] * np.asarray(params["h"], np.float64) if "h" in params else None
    return gains[:, :, :d], g, h


def _reparametrize(
    state: dict, s_actor: np.ndarray, s_critic: np.ndarray, r_old, r_new, center: float
) -> dict:
    """Rewrites the training state for new features z_new with z_old = S_k z_new (per step):
    the actor μ = s_k [F G] z and the critic zᵀQz + qᵀz + c − ⟨Q, R⟩ keep their values at every
    (x, y) ([F G] → [F G] S, Q → SᵀQS, q → Sᵀq, c absorbs the change of the centring term
    ``center``·⟨Q, R⟩ from ``r_old`` to ``r_new``); Adam's first moments transform as gradients
    do (g → g S⁻ᵀ, S⁻¹ g S⁻ᵀ) and its second moments as the variances of those sums of
    (independent) coordinates."""
    f64 = functools.partial(np.asarray, dtype=np.float64)
    inv_t = np.linalg.inv(s_actor).swapaxes(1, 2)  # S⁻ᵀ
    ci = np.linalg.inv(s_critic)  # S⁻¹
    n_x = np.shape(state["actor"]["F"])[2]

    def actor(p, grad_map):
        gains = np.concatenate([f64(p["F"]), f64(p["G"])], axis=2) @ grad_map
        out = dict(p, F=gains[:, :, :n_x], G=gains[:, :, n_x:])
        return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

    def critic_moments(p, m_left, m_right):
        q = m_left @ f64(p["Q"]) @ m_right
        v = np.einsum("kij,kj->ki", m_left, f64(p["q"]))
        return {"Q": jnp.asarray(q, jnp.float32), "q": jnp.asarray(v, jnp.float32), "c": p["c"]}

    out = dict(state)
    out["actor"] = actor(state["actor"], s_actor)
    if "ema" in state:
        out["ema"] = actor(state["ema"], s_actor)
    opt = state["actor_opt"]
    out["actor_opt"] = opt._replace(mu=actor(opt.mu, inv_t), nu=actor(opt.nu, inv_t**2))
    cr = state["critic"]
    q_old = f64(cr["Q"])
    q_new = s_critic.swapaxes(1, 2) @ q_old @ s_critic
    level_old = np.sum(q_old * f64(r_old), axis=(1, 2))
    level_new = np.sum(q_new * f64(r_new), axis=(1, 2))
    out["critic"] = {
        "Q": jnp.asarray(q_new, jnp.float32),
        "q": jnp.asarray(np.einsum("kji,kj->ki", s_critic, f64(cr["q"])), jnp.float32),
        "c": jnp.asarray(f64(cr["c"]) + center * (level_new - level_old), jnp.float32),
    }
    opt = state["critic_opt"]
    if isinstance(opt, optax.ScaleByAdamState):
        ct = ci.swapaxes(1, 2)
        out["critic_opt"] = opt._replace(
            mu=critic_moments(opt.mu, ci, ct), nu=critic_moments(opt.nu, ci**2, ct**2)
        )
    return out


def linearize_actor(
    mean_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], problem: LQProblem
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effective (F, G, h) in (x, y) coordinates of any actor linear in (x, y).

    ``mean_fn(k, x [B,H,W,1], y [B,H,W,1]) -> μ`` (e.g. the actor closure with D = P x inside);
    F_k = ∂μ/∂x and G_k = ∂μ/∂y by forward-mode autodiff at 0, h_k = μ(0, 0). Independent of
    the parametrisation, so every actor is scored by the same :meth:`LQProblem.policy_cost`.
    """
    d = problem.dim
    shape = (1, *problem.world.image_shape)
    eye = jnp.eye(d, dtype=jnp.float32)

    @jax.jit
    def one(k):
        zero = jnp.zeros(shape, jnp.float32)

        def fx(v):
            return mean_fn(k, v.reshape(shape), zero).reshape(d)

        def fy(v):
            return mean_fn(k, zero, v.reshape(shape)).reshape(d)

        jf = jax.vmap(lambda e: jax.jvp(fx, (jnp.zeros(d),), (e,))[1])(eye).T
        jg = jax.vmap(lambda e: jax.jvp(fy, (jnp.zeros(d),), (e,))[1])(eye).T
        return jf, jg, fx(jnp.zeros(d))

    out = [one(jnp.int32(k)) for k in range(problem.num_steps)]
    f, g, h = (np.stack([np.asarray(o[i], np.float64) for o in out]) for i in range(3))
    return f, g, h


def monte_carlo_cost(
    problem: LQProblem,
    mean_fn: Callable | None,
    key: jax.Array,
    num_samples: int = 65536,
    batch: int = 8192,
    solver: str = "euler",
) -> tuple[float, float]:
    """Monte-Carlo J of the deterministic Euler deployment (float32 JAX): (mean, std error).

    Averages the plain per-sample cost Σ_k ℓ(u_k)Δr + Ψ(x_K) over fresh (x0, X_0) (Ψ: the MSE to
    x0, the observed pixels, or the MSE to the teacher T(X_0, y)), so the estimate is independent
    of the closed forms of :class:`LQProblem`.

    Args:
        problem: The instance.
        mean_fn: ``mean_fn(k, x, y, denoised) -> μ``, or None for the unguided sampler.
        key: PRNG key.
        num_samples: Number of samples (rounded down to a multiple of ``batch``, at least one).
        batch: Samples per jitted call.
        solver: Only ``'euler'`` (the training dynamics).
    """
    shape = problem.world.image_shape
    denoise = problem.world.denoiser()
    sigmas = jnp.asarray(problem.sigmas, jnp.float32)
    factor = jnp.asarray(problem.sample_factor(), jnp.float32)
    m = jnp.asarray(problem.mask.reshape(shape), jnp.float32)
    d, k_steps = problem.dim, problem.num_steps
    beta = problem.beta if problem.uniform else jnp.asarray(problem.betas, jnp.float32)
    teach = teacher_fn(problem) if problem.terminal == "teacher" else None

    @jax.jit
    def chunk(key):
        k1, k2 = jax.random.split(key)
        z = jax.random.normal(k1, (batch, d), jnp.float32)
        x0 = jnp.matmul(z, factor.T, precision=jax.lax.Precision.HIGHEST).reshape(batch, *shape)
        y = m * x0
        x_init = sigmas[0] * jax.random.normal(k2, (batch, *shape), jnp.float32)

        def control_drift(k, r, sigma, x, den, ds_dr):
            # u_k is the step clock's drift; the scan also stacks it (the aux) for ℓ(u_k).
            u = mean_fn(k, x, y, den) if mean_fn is not None else jnp.zeros_like(x)
            return u, u

        if solver != "euler":
            raise ValueError("monte_carlo_cost supports solver='euler' only")
        x_k, _, controls = sampling.integrate(
            denoise,
            x_init,
            sigmas,
            solver="euler",
            clock="step",
            extra_drift=control_drift,
            has_aux=True,
        )
        running = jnp.zeros((batch,), jnp.float32)
        for cost in losses.running_cost(controls, beta, batch_axes=2) / k_steps:
            running = running + cost  # Σ_k ℓ(u_k)Δr in step order
        if problem.terminal == "observed":
            return running + losses.observed_cost(x_k, y, m)
        target = teach(x_init, y)[0] if teach is not None else x0
        return running + losses.terminal_cost(x_k, target)

    costs = []
    for i in range(max(1, num_samples // batch)):
        costs.append(np.asarray(chunk(jax.random.fold_in(key, i)), np.float64))
    c = np.concatenate(costs)
    return float(c.mean()), float(c.std(ddof=1) / np.sqrt(c.size))


def monte_carlo_cost_f64(
    problem: LQProblem,
    f: np.ndarray,
    g: np.ndarray,
    h: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_samples: int = 65536,
    batch: int = 8192,
) -> tuple[float, float]:
    """Monte-Carlo J of the deterministic feedback u_k = F_k x + G_k y + h_k in float64 NumPy:
    (mean, std error).

    Fresh x0 ~ N(0, Σ), X_0 ~ N(0, σ_0² I), Euler steps x + (σ_{k+1} − σ_k)/σ_k (x − D(x)) + Δr u
    with the reference denoiser :meth:`GaussianWorld.denoiser_f64` (a linear solve, not the
    transitions A_k), and the plain per-sample cost Σ_k (β_k/2)‖u_k‖²Δr/d + Ψ(x_K) with Ψ's
    target computed from the sample (x0, y, or the teacher T = T_y y + T_x X_0): a check of
    :meth:`LQProblem.policy_cost` and of the closed-form J* that shares no propagation with them.
    """
    rng = np.random.default_rng(seed)
    d, k_steps, sig = problem.dim, problem.num_steps, problem.sigmas
    eye = np.eye(d)
    dens = [problem.world.denoiser_f64(eye, sig[k]).reshape(d, d) for k in range(k_steps)]
    h = np.zeros((k_steps, d)) if h is None else np.asarray(h, np.float64)
    betas, q = problem.betas, problem.terminal_weight
    costs = []
    for _ in range(max(1, num_samples // batch)):
        x0 = problem.world.sample(rng, batch).reshape(batch, d)
        y = x0 * problem.mask
        x = sig[0] * rng.normal(size=(batch, d))
        if problem.terminal == "teacher":
            t_y, t_x = problem.teacher_maps
            target = y @ t_y.T + x @ t_x.T
        else:
            target = x0  # 'observed': Q = diag(m) keeps the known pixels, where x0 = y
        cost = np.zeros(batch)
        for k in range(k_steps):
            u = x @ f[k].T + y @ g[k].T + h[k]
            cost += 0.5 * betas[k] * problem.dr * np.sum(u**2, axis=1) / d
            den = x @ dens[k]  # row i of D(I) is D(e_i), so x D(I) = D(x) row-wise
            x = x + (sig[k + 1] - sig[k]) / sig[k] * (x - den) + problem.dr * u
        e = x - target
        costs.append(cost + np.einsum("bi,ij,bj->b", e, q, e) / d)
    c = np.concatenate(costs)
    return float(c.mean()), float(c.std(ddof=1) / np.sqrt(c.size))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LQTrainConfig:
    """Training options (hashable). ``LQTrainConfig.paper()`` is the paper's form.

    Attributes:
        actor: ``'lr'`` (likelihood ratio, the paper) or ``'pathwise'``.
        iterations: Actor iterations (after ``critic_warmup``).
        batch: Rollouts per iteration (observations x0 ~ N(0, Σ), y = m ⊙ x0, one X_0 each;
            with ``antithetic`` B/2 observations, each used by a (ε, −ε) pair).
        features: Actor/critic features, ``'xy'``, ``'whitened'`` or ``'adaptive'`` (module
            doc; ``'adaptive'`` is the one for Ψ on the observed pixels with β/σ²).
        actor_bias: Add a per-step offset h_k to the actor.
        actor_lr: Adam learning rate of the actor (peak value).
        critic_lr: Critic learning rate (peak value; of Adam or of plain SGD, ``critic_opt``).
        schedule: ``'constant'``, ``'cosine'`` or ``'linear'`` decay of both rates over the
            actor iterations to ``final_lr_frac`` times the peak.
        final_lr_frac: End value of the decay, relative.
        antithetic: (ε, −ε) pairs sharing X_0 and y.
        td_lambda: Critic trace parameter (0: TD(0), the paper; 1: Monte-Carlo returns).
        adv_lambda: Actor advantage Σ_j τ_a^j δ_{k+j} (0: δ_k, the paper).
        adv_norm: ``'none'``, ``'per_step'`` or ``'global'`` advantage normalisation.
        critic_x0: Condition the critic on the clean image x0 instead of y (AID.md §3 allows
            it; the actor never sees x0). Not with Ψ = teacher, whose critic always sees the
            teacher T instead (module doc).
        critic_opt: ``'sgd'`` (default) or ``'adam'`` for the critic. The critic is linear in
            its ~10⁴ parameters per step; Adam's per-coordinate normalisation turns the
            gradient noise into a random walk of every Q entry (a large value-noise floor),
            plain SGD on the centred quadratic features does not. The SGD step size assumes
            ``'whitened'`` features (unit covariance); with ``'xy'`` it diverges at 5e-3 — use
            Adam there (as ``paper()`` does).
        critic_center: Centre the critic's quadratic features (:func:`critic_value`), which
            bounds the Hessian of the TD loss and lets SGD use a useful step size.
        critic_steps: Critic updates per iteration (on the same rollout).
        critic_warmup: Iterations of critic-only training before the actor moves.
        ema: Polyak/EMA decay of the actor used for evaluation (0: off).
        chunk: Iterations per jitted ``lax.scan`` call (evaluation happens between chunks).
        refresh: Iterations between refits of the ``'adaptive'`` features to the current policy
            (ignored by the other features). Between refits the moving actor changes the state
            law, and the SGD critic's curvature grows with the square of the features' second
            moment: at 250 a 4x4 run diverged (the second moment grew 13x in one interval).
        seed: PRNG seed.
    """

    actor: str = "lr"
    iterations: int = 30000
    batch: int = 256
    features: str = "whitened"
    actor_bias: bool = False
    actor_lr: float = 4e-3
    critic_lr: float = 5e-3
    schedule: str = "cosine"
    final_lr_frac: float = 0.0
    antithetic: bool = True
    td_lambda: float = 0.0
    adv_lambda: float = 0.0
    adv_norm: str = "none"
    critic_x0: bool = False
    critic_opt: str = "sgd"
    critic_center: bool = True
    critic_steps: int = 1
    critic_warmup: int = 0
    ema: float = 0.0
    chunk: int = 1000
    refresh: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.actor not in ("lr", "pathwise"):
            raise ValueError(f"actor must be 'lr' or 'pathwise', got {self.actor!r}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be constant, cosine or linear, got {self.schedule!r}")
        if self.critic_opt not in ("adam", "sgd"):
            raise ValueError(f"critic_opt must be 'adam' or 'sgd', got {self.critic_opt!r}")
        if self.adv_norm not in ("none", "per_step", "global"):
            raise ValueError(f"adv_norm must be none, per_step or global, got {self.adv_norm!r}")
        if self.batch < 2 or (self.antithetic and self.batch % 2):
            raise ValueError(f"batch must be >= 2 (and even with antithetic), got {self.batch}")
        for name in ("iterations", "chunk", "critic_steps", "refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.critic_warmup < 0:
            raise ValueError("critic_warmup must be >= 0")

    @classmethod
    def paper(cls, **overrides) -> LQTrainConfig:
        """The paper's form: LR actor with δ_k, TD(0) critic trained with Adam on plain
        (uncentred) features, no antithetic pairs, no normalisation, constant learning rates
        (Adam 1e-4 actor, 1e-3 critic), no EMA."""
        base = dict(
            actor="lr",
            features="xy",
            critic_x0=False,
            critic_opt="adam",
            critic_center=False,
            schedule="constant",
            antithetic=False,
            td_lambda=0.0,
            adv_lambda=0.0,
            adv_norm="none",
            critic_steps=1,
            critic_warmup=0,
            ema=0.0,
            actor_lr=1e-4,
            critic_lr=1e-3,
        )
        base.update(overrides)
        return cls(**base)


@dataclasses.dataclass
class TrainResult:
    """Output of :func:`train`.

    Attributes:
        actor: Final actor parameters (the EMA when ``config.ema > 0``).
        critic: Final critic parameters.
        history: One dict per evaluation: iteration, seconds, cost J (exact), gap closed.
        seconds: Wall time of the training loop (compilation included).
    """

    actor: dict
    critic: dict
    history: list[dict]
    seconds: float


def _serial_blas():
    """Single-threaded BLAS for the small float64 matrices of the host-side bookkeeping."""
    return threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext()


def _decay(config: LQTrainConfig) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate factor as a function of the actor iteration (1 during the warm-up)."""
    total = config.iterations
    if config.schedule == "constant":
        return lambda i: jnp.ones((), jnp.float32)
    if config.schedule == "cosine":
        sched = optax.cosine_decay_schedule(1.0, total, alpha=config.final_lr_frac)
    else:
        sched = optax.linear_schedule(1.0, config.final_lr_frac, total)
    return lambda i: jnp.asarray(sched(jnp.maximum(i, 0).astype(jnp.float32)), jnp.float32)


def _output_scale(problem: LQProblem) -> np.ndarray:
    """Per-step scale of the actor's output: 1 for the uniform running cost; the policy std s_k
    for a per-step one, whose allowed control spans orders of magnitude over the steps (with
    β_k = β/σ_k², s_k ∝ σ_k: a shared Adam step would be far too large at low σ)."""
    return np.ones(problem.num_steps) if problem.uniform else problem.policy_stds


def make_actor_fn(problem: LQProblem, features: str):
    """``fn(params, k, x, y) -> μ`` with the feature constants closed over (jit-friendly); the
    output in units of :func:`_output_scale`."""
    consts = _constants(problem, features)
    scale = jnp.asarray(_output_scale(problem), jnp.float32)

    def fn(params, k, x, y):
        return scale[k] * actor_mean(params, consts, k, x, y)

    return fn


def make_critic_fn(problem: LQProblem, features: str, center: bool = False, x0: bool = False):
    """``fn(params, k, x, cond) -> [B]`` (the critic network part); ``cond`` is y, or the clean
    image x0 with ``x0=True``, or the teacher T for Ψ = teacher (:func:`teacher_fn`)."""
    consts = _constants(problem, features, center, _critic_sees_image(problem, x0))

    def fn(params, k, x, y):
        return critic_value(params, consts, k, x, y)

    return fn


def train(
    problem: LQProblem,
    config: LQTrainConfig,
    *,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains the per-step linear actor and quadratic critic on ``problem``.

    Per iteration: x0 ~ N(0, Σ), y = m ⊙ x0, X_0 = σ_max n (and for Ψ = teacher the teacher
    T(X_0, y), which the critic sees and the actor does not); a rollout under the Gaussian policy
    (:func:`aid_jax.aid.control.rollout`); ``critic_steps`` Adam steps on
    :func:`aid_jax.aid.losses.critic_loss`; one Adam step of the actor on
    :func:`~aid_jax.aid.losses.lr_actor_loss` (advantages from the updated critic) or
    :func:`~aid_jax.aid.losses.pathwise_actor_loss`. The first ``critic_warmup`` iterations
    train the critic only. Iterations run in jitted ``lax.scan`` chunks of ``config.chunk``;
    between chunks the (EMA) actor is scored exactly with :meth:`LQProblem.policy_cost`.
    """
    cfg = config
    teacher = problem.terminal == "teacher"
    if teacher and cfg.critic_x0:
        raise ValueError("with terminal='teacher' the critic conditions on T: drop critic_x0")
    critic_image = _critic_sees_image(problem, cfg.critic_x0)
    teach = teacher_fn(problem) if teacher else None
    shape = problem.world.image_shape
    d = problem.dim
    denoise = problem.world.denoiser()
    sigmas = jnp.asarray(problem.sigmas, jnp.float32)
    factor = jnp.asarray(problem.sample_factor(), jnp.float32)
    mask = jnp.asarray(problem.mask.reshape(shape), jnp.float32)
    per_step = not problem.uniform
    s = jnp.asarray(problem.policy_stds, jnp.float32) if per_step else problem.policy_std
    lam = problem.lam
    beta = jnp.asarray(problem.betas, jnp.float32) if per_step else problem.beta
    # The feature constants are an argument of the jitted chunk: 'adaptive' refits them.
    adaptive = cfg.features == "adaptive"
    center = 1.0 if cfg.critic_center else 0.0
    a_maps = _feature_maps(problem, cfg.features)
    c_maps = _feature_maps(problem, cfg.features, critic_image)
    first_maps = (a_maps, c_maps)
    consts = (_jax_constants(a_maps), _jax_constants(c_maps, cfg.critic_center))
    out_scale = jnp.asarray(_output_scale(problem), jnp.float32)

    def actor_apply(a_consts, params, k, x, y):
        return out_scale[k] * actor_mean(params, a_consts, k, x, y)

    hi = jax.lax.Precision.HIGHEST

    # Adam's moment estimates with the learning rate applied explicitly as a function of the
    # actor iteration, so the warm-up (critic only) does not consume the actor's schedule.
    actor_opt = optax.scale_by_adam()
    critic_opt = optax.scale_by_adam() if cfg.critic_opt == "adam" else optax.identity()
    decay = _decay(cfg)
    actor = init_actor(problem, bias=cfg.actor_bias)
    critic = init_critic(problem, x0=cfg.critic_x0)
    state = {
        "actor": actor,
        "critic": critic,
        "actor_opt": actor_opt.init(actor),
        "critic_opt": critic_opt.init(critic),
        "step": jnp.zeros((), jnp.int32),
    }
    if cfg.ema > 0:
        state["ema"] = jax.tree_util.tree_map(jnp.copy, actor)
    base_key = jax.random.key(cfg.seed)
    n_obs = cfg.batch // 2 if cfg.antithetic else cfg.batch

    def iteration(consts, st, _):
        actor_fn = functools.partial(actor_apply, consts[0])

        def critic_fn(params, k, x, cond):
            return critic_value(params, consts[1], k, x, cond)

        key = jax.random.fold_in(base_key, st["step"])
        factor_lr = decay(st["step"] - cfg.critic_warmup)
        k_x0, k_init, k_pol = jax.random.split(key, 3)
        z = jax.random.normal(k_x0, (n_obs, d), jnp.float32)
        x0 = jnp.matmul(z, factor.T, precision=hi).reshape(n_obs, *shape)
        x_init = sigmas[0] * jax.random.normal(k_init, (n_obs, *shape), jnp.float32)
        if cfg.antithetic:
            x0, x_init = control.pair_up((x0, x_init))
        y = mask * x0
        target, code = teach(x_init, y) if teacher else (x0, x0)

        def guidance(params):
            return lambda k, r, sigma, x, den, ds_dr: actor_fn(params, k, x, y)

        def value(params):
            cond = code if critic_image else y
            return lambda k, r, sigma, x: critic_fn(params, k, x, cond)

        def terminal(x):
            if problem.terminal == "observed":
                return losses.observed_cost(x, y, mask)
            return losses.terminal_cost(x, target)

        ro = control.rollout(
            denoise,
            guidance(st["actor"]),
            x_init,
            sigmas,
            k_pol,
            policy_std=s,
            antithetic=cfg.antithetic,
            per_step=per_step,
        )
        term = terminal(ro.xs[-1])

        def critic_update(carry, _):
            params, opt_state = carry
            (loss, aux), grads = jax.value_and_grad(
                lambda p: losses.critic_loss(
                    value(p), ro, term, beta=beta, lam=lam, td_lambda=cfg.td_lambda
                ),
                has_aux=True,
            )(params)
            with jax.numpy_dtype_promotion("standard"):  # optax: float ** int32 count
                updates, opt_state = critic_opt.update(grads, opt_state, params)
            updates = jax.tree_util.tree_map(lambda u: -cfg.critic_lr * factor_lr * u, updates)
            return (optax.apply_updates(params, updates), opt_state), loss

        (critic_p, critic_os), closs = jax.lax.scan(
            critic_update, (st["critic"], st["critic_opt"]), None, length=cfg.critic_steps
        )

        if cfg.actor == "lr":
            values = losses.value_estimates(value(critic_p), ro, term, lam)
            deltas = losses.td_errors(values, losses.step_costs(ro, beta))
            adv = losses.advantages(deltas, cfg.adv_lambda)
            adv = losses.normalize_advantages(adv, None if cfg.adv_norm == "none" else cfg.adv_norm)

            def actor_loss(p):
                return losses.lr_actor_loss(guidance(p), ro, adv)
        else:

            def actor_loss(p):
                return losses.pathwise_actor_loss(
                    guidance(p), value(critic_p), ro, terminal, beta=beta, lam=lam
                )

        grads = jax.grad(actor_loss)(st["actor"])
        with jax.numpy_dtype_promotion("standard"):
            updates, actor_os = actor_opt.update(grads, st["actor_opt"], st["actor"])
        move = (st["step"] >= cfg.critic_warmup).astype(jnp.float32)
        updates = jax.tree_util.tree_map(lambda u: -cfg.actor_lr * factor_lr * move * u, updates)
        actor_p = optax.apply_updates(st["actor"], updates)
        actor_os = jax.tree_util.tree_map(
            lambda new, old: jnp.where(move > 0, new, old), actor_os, st["actor_opt"]
        )
        new = {
            "actor": actor_p,
            "critic": critic_p,
            "actor_opt": actor_os,
            "critic_opt": critic_os,
            "step": st["step"] + 1,
        }
        if cfg.ema > 0:
            new["ema"] = jax.tree_util.tree_map(
                lambda e, p: cfg.ema * e + (1.0 - cfg.ema) * p, st["ema"], actor_p
            )
        metrics = {
            "critic_loss": closs[-1],
            "terminal": jnp.mean(term),
        }
        return new, metrics

    @functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
    def run_chunk(st, consts, length):
        return jax.lax.scan(functools.partial(iteration, consts), st, None, length=length)

    def refit(state, a_maps, c_maps, target=None):
        """'adaptive': new feature maps (fitted to the current actor, or ``target``) and the
        state rewritten in them."""
        if target is None:
            f, g, h = _effective_gains(problem, state["actor"], a_maps)
            moments = problem.rollout_moments(f, g, h)
            new_a = _feature_maps(problem, "adaptive", moments=moments)
            new_c = _feature_maps(problem, "adaptive", True, moments) if critic_image else new_a
            target = (new_a, new_c)
        new_a, new_c = target
        s_a = a_maps.transforms() @ np.linalg.inv(new_a.transforms())
        s_c = c_maps.transforms() @ np.linalg.inv(new_c.transforms())
        state = _reparametrize(state, s_a, s_c, c_maps.zcov, new_c.zcov, center)
        return state, new_a, new_c

    history = []
    j0, js = problem.unguided_cost(), problem.optimal_cost()
    total = cfg.critic_warmup + cfg.iterations
    refresh = cfg.refresh if adaptive else total
    done = 0
    t0 = time.perf_counter()
    while done < total:
        length = min(cfg.chunk - done % cfg.chunk, refresh - done % refresh, total - done)
        state, metrics = run_chunk(state, consts, length)
        done += length
        loss = float(metrics["critic_loss"][-1])
        if not loss < 1e10:  # NaN, inf, or a blown-up finite value
            raise FloatingPointError(
                f"LQ training diverged by iteration {done} (critic loss {loss:.3g}). With "
                f"features={cfg.features!r} and critic_opt={cfg.critic_opt!r} lower critic_lr, "
                "or use the whitened features (the SGD critic needs them) or critic_opt='adam'; "
                "a pathwise actor that outruns its critic needs a lower actor_lr"
            )
        if adaptive and done % refresh == 0 and done < total:
            with _serial_blas():
                state, a_maps, c_maps = refit(state, a_maps, c_maps)
            consts = (_jax_constants(a_maps), _jax_constants(c_maps, cfg.critic_center))
        if done % cfg.chunk and done < total:
            continue
        params = state["ema"] if cfg.ema > 0 else state["actor"]
        f, g, h = linearize_actor(
            lambda k, x, y, p=params, c=consts[0]: actor_apply(c, p, k, x, y), problem
        )
        with _serial_blas():
            cost = problem.policy_cost(f, g, h)
        row = dict(
            iteration=done,
            seconds=time.perf_counter() - t0,
            cost=cost,
            gap_closed=(j0 - cost) / (j0 - js),
            critic_loss=float(metrics["critic_loss"][-1]),
            terminal=float(np.mean(np.asarray(metrics["terminal"]))),
        )
        history.append(row)
        if log is not None:
            log(
                f"iter {done:6d}  J {cost:.5f}  gap closed {100 * row['gap_closed']:6.2f}%  "
                f"critic {row['critic_loss']:.3e}  ({row['seconds']:.0f} s)"
            )
    if adaptive:  # back to the first (whitened) features: make_actor_fn's parametrisation
        with _serial_blas():
            state, _, _ = refit(state, a_maps, c_maps, target=first_maps)
    params = state["ema"] if cfg.ema > 0 else state["actor"]
    return TrainResult(
        actor=params,
        critic=state["critic"],
        history=history,
        seconds=time.perf_counter() - t0,
    )
