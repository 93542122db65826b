"""``aid`` — a trained AID guidance module (``aid_jax.aid``; AID.md §6) as a registered method.

Unlike the zero-shot methods it brings its own parameters: option ``checkpoint`` names an AID
training workdir or export folder (``aid_jax.load``), or is an already loaded ``AIDParams``. The
checkpoint is loaded against ``Resources.backbone`` when one is given (its ``params_sha256``
must match the recorded one), placed with ``Resources.place`` and kept in ``Resources.cache``, so
one checkpoint serves several step counts. The built :class:`~contract.Inpainter` carries the
placed bundle as its ``params``. ``num_steps`` None = the module's training K; ``solver`` Euler
(NFE K) or Heun (NFE 2K − 1); EDM's churn (``S_churn``, ``S_min``, ``S_max``, ``S_noise``; 0 =
the deterministic deployment, no extra NFE); ``paste_back`` False gives the raw sample (the
harness composites).
"""

from __future__ import annotations

import dataclasses
import os

from aid_jax import sampling
from aid_jax.aid import control
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import Inpainter, Resources

__all__ = ["OPTIONS", "build", "cost"]

OPTIONS = {
    "checkpoint": "",
    "num_steps": None,
    "solver": "euler",
    "S_churn": 0.0,
    "S_min": 0.0,
    "S_max": float("inf"),
    "S_noise": 1.0,
    "paste_back": False,
}


def _check_checkpoint(checkpoint) -> None:
    is_params = hasattr(checkpoint, "actor") and hasattr(checkpoint, "config")  # an AIDParams
    if not (is_params or (isinstance(checkpoint, str | os.PathLike) and os.fspath(checkpoint))):
        raise ValueError(
            "method 'aid' needs options.checkpoint (an AID workdir or export folder, or the "
            "AIDParams of aid_jax.load), e.g. --config.methods.aid.options.checkpoint=runs/aid"
        )


def _training_steps(checkpoint):
    config = getattr(checkpoint, "config", None)  # an AIDParams knows its training K
    if config is None:
        raise ValueError(
            "method 'aid': num_steps=None means the module's training step count, known once "
            "it is loaded; give num_steps (or an AIDParams as checkpoint)"
        )
    return config.num_steps


def cost(
    checkpoint, num_steps, solver, S_churn, S_min, S_max, S_noise, paste_back
) -> tuple[int, int]:
    _check_checkpoint(checkpoint)
    steps = _training_steps(checkpoint) if num_steps is None else num_steps
    prim.check_int("num_steps", steps, hi=prim.MAX_COUNT)
    if not isinstance(paste_back, bool):
        raise ValueError(f"paste_back must be True or False, got {paste_back!r}")
    # The solver's and the churn's rules (ValueError).
    sampling.check_churn(solver, int(steps), S_churn, S_min, S_max, S_noise)
    return control.controlled_nfe(int(steps), solver), 0


def _load(checkpoint, resources: Resources):
    """The placed ``AIDParams`` of ``checkpoint`` (path or AIDParams), loaded once per cache."""
    from aid_jax.aid import api, model  # AID pulls in Flax and Orbax: loaded on first use

    _check_checkpoint(checkpoint)
    if isinstance(checkpoint, model.AIDParams):
        cache_key = ("aid", id(checkpoint))
    else:
        cache_key = ("aid", os.fspath(checkpoint))
    if cache_key not in resources.cache:
        bundle = checkpoint
        if not isinstance(checkpoint, model.AIDParams):
            bundle = api.load(checkpoint, backbone=resources.backbone)
        resources.cache[cache_key] = (checkpoint, resources.place(bundle))  # keeps the id alive
    return resources.cache[cache_key][1]


def build(options: dict, *, label_dim: int, resources: Resources) -> Inpainter:
    """The AID inpainter for ``options`` (all of :data:`OPTIONS`, checked)."""
    from aid_jax.aid import model

    bundle = _load(options["checkpoint"], resources)
    cost(**dict(options, checkpoint=bundle))  # the other option values
    if label_dim and label_dim != bundle.label_dim:
        raise ValueError(
            f"method 'aid': the module's backbone has {bundle.label_dim} classes, the caller's "
            f"{label_dim}; load the module with the backbone it was trained with"
        )
    inpainter = model.make_inpainter(
        bundle,
        num_steps=options["num_steps"],
        solver=options["solver"],
        paste_back=options["paste_back"],
        churn=tuple(options[k] for k in ("S_churn", "S_min", "S_max", "S_noise")),
    )
    steps = inpainter.options["num_steps"]
    return dataclasses.replace(inpainter, options={**options, "num_steps": steps})
