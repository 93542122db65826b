"""``pigdm`` — pseudoinverse-guided diffusion (ΠGDM) in EDM form (VIPAINT.md §11.4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult

__all__ = ["FORMS", "cost", "pigdm"]

# The first is the default.
FORMS = ("reddiff_inpaint", "paper", "reddiff")


def cost(num_steps, eta, w, sigma_y, sigma_data, form, schedule) -> tuple[int, int]:
    prim.check_grid(num_steps, schedule)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    prim.check_range("eta", eta, 0.0, 1.0)
    prim.check_nonneg("w", w)  # the guidance weight: 0 = none, negative pushes away from y
    prim.check_nonneg("sigma_y", sigma_y)
    if form != "paper" and sigma_y != 0:
        # RED-diff's ΠGDM has no σ_y term: a measurement-noise level would be silently ignored.
        raise ValueError(
            f"sigma_y is used only by form='paper' (weight 1/(r² + σ_y²)); with form={form!r} it "
            f"must be 0, got sigma_y={sigma_y!r}"
        )
    prim.check_range("sigma_data", sigma_data, 1e-12, math.inf)
    return num_steps, num_steps


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
    form: str = "reddiff_inpaint",
    schedule: sampling.EDMSchedule = prim.SCHEDULE,
) -> InpaintResult:
    """Pseudoinverse-guided diffusion (ΠGDM), EDM form (VIPAINT.md §11.4; Song et al. 2023).

    Per step σ -> σ': (x̂0, vjp) = jax.vjp(D(·; σ), x); ε̂ = (x - x̂0)/σ; g = J_Dᵀ (m ⊙ (y - x̂0))
    (one VJP); c = η σ' sqrt(1 - σ'²/σ²) and n the step's noise (drawn only when η > 0), so that
    DDIM_η(x̂0) = x̂0 + sqrt(σ'² - c²)·ε̂ + c·n. Forms:

    * ``"reddiff_inpaint"`` (default; NVlabs/RED-diff's ΠGDM for inpainting, read from
      ``algos/pgdm.py`` with its ``in2`` mask degradation ``Inpainting2`` of
      ``utils/degredations.py`` and ``_configs/algo/pgdm.yaml``): y pasted into x̂0 and the
      guidance restricted to the hole,

          x̂0' = m ⊙ y + (1 - m) ⊙ x̂0,
          x'  = x̂0' + sqrt(σ'² - c²)·ε̂ + c·n + w·(1 - m) ⊙ g,

      with ε̂ from the uncorrected x̂0 (the shipped ``awd: True`` keeps the model's ε̂) — DDNM
      with η = 0 plus hole guidance. The step weight in VE units is w itself (see the conversion
      below), with no 1/r² and no σ_y (RED-diff has none; ``sigma_y`` must be 0). The known
      pixels come out exactly y at σ' = 0. RED-diff starts from m ⊙ y + σ_max·n; here, as for
      every method, from σ_max·n.
    * ``"paper"``: x' = DDIM_η(x̂0) + w·σ(σ - sqrt(σ'² - c²))·g/(r² + σ_y²) with
      r² = σ²σ_d²/(σ² + σ_d²) (posterior variance of Gaussian data of std σ_d = ``sigma_data``).
      σ(σ - sqrt(σ'² - c²)) is what a score term g/(r² + σ_y²) contributes to a VE DDIM(η) step
      (x̂0 moves by σ²·s, ε̂ by -σ·s); at η = 0 it is σ(σ - σ'). With σ_d = 0.5 the weight 1/r²
      is 4× the unit-variance choice r² = σ²/(1 + σ²) (= 1 - ᾱ in VP) at σ ≳ 1; that choice is
      ``sigma_data=1.0``.
    * ``"reddiff"``: x' = DDIM_η(x̂0) + w·g (RED-diff's update in VE units, without the paste and
      the hole restriction).

    ``sigma_y`` and ``sigma_data`` enter the ``"paper"`` form only. Noise (only when η > 0) of
    step i: ``fold_in(k_steps, i)``. NFE N forward + N backward. RED-diff's ``pgdm.yaml``: η = 0,
    ``grad_term_weight`` (w) 1; 100 steps here.
    """
    nfe, nfe_b = cost(num_steps, eta, w, sigma_y, sigma_data, form, schedule)
    denoise, y_obs, known, k_init, k_steps = prim.setup(denoise, y, mask, key, labels)
    sigmas = schedule.sigmas(num_steps)
    shape = y_obs.shape

    # RED-diff (algos/pgdm.py, awd=True) in VP units, ᾱ = diffusion.alpha (cumulative, ᾱ = 1 at
    # s = -1), t the current and s the next step:
    #   z_s = √ᾱ_s x̂0' + c1 n + c2 ε̂ + √ᾱ_s √ᾱ_t w (1 - m) ⊙ ∇_{z_t} <sg(m ⊙ (y - x̂0)), x̂0>.
    # VP -> VE: x = z/a, a = √ᾱ = 1/sqrt(1 + σ²), so ∇_{z_t} = ∇_x / a_t and the gradient term is
    # J_Dᵀ(m ⊙ (y - x̂0)) / a_t; dividing the update by a_s gives c1/a_s = c = η σ' sqrt(1 - σ'²/σ²),
    # c2/a_s = sqrt(σ'² - c²), and the guidance weight √ᾱ_s √ᾱ_t w / (a_s a_t) = w: a constant
    # step w in VE units. (With awd=False the code weighs (√ᾱ_s - c2 √ᾱ_t/sqrt(1 - ᾱ_t)) √ᾱ_t w,
    # i.e. w (σ - sqrt(σ'² - c²))/σ in VE, and recomputes ε̂ from x̂0'; not the shipped config.)
    def step(x, xs):
        i, s, s_next = xs
        x0, vjp = jax.vjp(lambda v: prim.call(denoise, v, s), x)
        (g,) = vjp(jnp.where(known, y_obs - x0, 0.0))
        noise = prim.noise(k_steps, i, shape) if eta > 0 else jnp.zeros_like(x)
        update = dict(eta=eta, w=w, sigma_y=sigma_y, sigma_data=sigma_data, form=form)
        return guided_step(x, x0, g, known, y_obs, s, s_next, noise, **update), None

    x = prim.run_steps(step, sigmas, k_init, shape)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_b)


def guided_step(x, x0, g, known, x0_known, s, s_next, noise, *, eta, w, sigma_y, sigma_data, form):
    """One ΠGDM update σ -> σ' from x̂0 = ``x0`` and the guidance g = J_Dᵀ(m ⊙ (y − x̂0)) (or
    its latent-space analogue, aid_jax.latent): ``reddiff_inpaint`` pastes ``x0_known`` into x̂0
    on the ``known`` entries, keeps ε̂ from the uncorrected x̂0 and adds w·g on the hole only;
    ``paper`` and ``reddiff`` add their weighted g to the DDIM step (see :func:`pigdm`)."""
    keep, c = prim.ddim_coeffs(s, s_next, eta)
    if form == "reddiff_inpaint":
        eps = (x - x0) / s  # from the uncorrected x̂0
        x0c = jnp.where(known, x0_known, x0)
        return x0c + keep * eps + c * noise + jnp.where(known, 0.0, w * g)
    x_next = prim.ddim_step(x, x0, s, s_next, eta, noise)
    if form == "paper":
        r2 = s**2 * sigma_data**2 / (s**2 + sigma_data**2)
        return x_next + (w * s * (s - keep) / (r2 + sigma_y**2)) * g
    return x_next + w * g
