"""Backward-compatible names of the zero-shot inpainting baselines; they live in
``aid_jax.methods`` (the contract in ``methods.contract``, the shared EDM steps in
``methods.primitives``, one file per method, the registry in ``methods.registry``).

Every method is a pure function

    method(denoise, y, mask, key, labels=None, *, <options>) -> InpaintResult

on any EDM denoiser ``denoise(x [B,H,W,C], sigma [B])``; ``make_inpainter(method,
denoise_with_params, label_dim=0, **options)`` builds the jitted ``Inpainter`` used by the
evaluation harness. ``METHODS`` maps the zero-shot names to their functions (a view of
``methods.REGISTRY``, which also holds ``"aid"``).
"""

from __future__ import annotations

from aid_jax.methods.contract import RANGE_TOL, DenoiseFn, InpaintResult, validate_inputs
from aid_jax.methods.ddnm import ddnm
from aid_jax.methods.ddnm_plus import ddnm_plus
from aid_jax.methods.ddrm import ddrm
from aid_jax.methods.dps import STEP_FORMS as DPS_STEP_FORMS
from aid_jax.methods.dps import dps
from aid_jax.methods.pigdm import FORMS as PIGDM_FORMS
from aid_jax.methods.pigdm import pigdm
from aid_jax.methods.primitives import ddim_step, go_up, time_travel_schedule
from aid_jax.methods.registry import (
    make_inpainter,
    method_cost,
    method_options,
    zero_shot_methods,
)
from aid_jax.methods.repaint import repaint
from aid_jax.methods.replacement import replacement
from aid_jax.methods.unguided import unguided
from aid_jax.methods.vipaint import vipaint

__all__ = [
    "DPS_STEP_FORMS",
    "PIGDM_FORMS",
    "RANGE_TOL",
    "DenoiseFn",
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
    "vipaint",
]

METHODS = zero_shot_methods()
