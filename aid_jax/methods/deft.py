"""``deft`` — a trained DEFT h-network (``aid_jax.deft``; docs/DEFT_DESIGN.md) as a registered
method.

Like ``aid`` it brings its own parameters: option ``checkpoint`` names a DEFT training workdir
or export folder (``aid_jax.deft.api.load``; a relative path that does not exist here is looked
up under the project's root, e.g. ``ported_weights/<name>``), or is an already loaded
``DEFTParams``; it is loaded against ``Resources.backbone`` when one is given (its
``params_sha256`` must match the recorded one), placed with ``Resources.place`` and cached in
``Resources.cache``. Every EDM
sampler: ``solver`` Euler (NFE K) or Heun (NFE 2K − 1), EDM's churn (``S_churn``, ``S_min``,
``S_max``, ``S_noise``), ``grid`` the config's ρ-schedule (``"edm"``) or the official DDIM grid
(``"vp_ddim"``); each NFE is one backbone and one h-network forward, no backward pass.
``num_steps`` None = the module's default step count; ``paste_back`` False gives the raw sample
(the harness composites).
"""

from __future__ import annotations

import dataclasses
import os

from aid_jax import sampling
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import Inpainter, Resources

__all__ = ["OPTIONS", "build", "cost"]

OPTIONS = {
    "checkpoint": "",
    "num_steps": None,
    "solver": "euler",
    "grid": "edm",
    "S_churn": 0.0,
    "S_min": 0.0,
    "S_max": float("inf"),
    "S_noise": 1.0,
    "paste_back": False,
}


def _check_checkpoint(checkpoint) -> None:
    is_params = hasattr(checkpoint, "hnet") and hasattr(checkpoint, "config")  # a DEFTParams
    if not (is_params or (isinstance(checkpoint, str | os.PathLike) and os.fspath(checkpoint))):
        raise ValueError(
            "method 'deft' needs options.checkpoint (a DEFT workdir or export folder, or the "
            "DEFTParams of aid_jax.deft.api.load), e.g. "
            "--config.methods.deft.options.checkpoint=runs/deft"
        )


def cost(checkpoint, num_steps, solver, grid, S_churn, S_min, S_max, S_noise, paste_back):
    """``(nfe, 0)``: the unguided sampler's NFE (Euler K, Heun 2K − 1); checks every option."""
    _check_checkpoint(checkpoint)
    if num_steps is None:
        config = getattr(checkpoint, "config", None)
        if config is None:
            raise ValueError(
                "method 'deft': num_steps=None means the module's default step count, known once "
                "it is loaded; give num_steps (or a DEFTParams as checkpoint)"
            )
        num_steps = config.num_steps
    prim.check_int("num_steps", num_steps, hi=prim.MAX_COUNT)
    if grid not in ("edm", "vp_ddim"):
        raise ValueError(f"grid must be 'edm' or 'vp_ddim', got {grid!r}")
    if grid == "vp_ddim" and num_steps > 1000:
        raise ValueError(f"grid 'vp_ddim' has at most 1000 steps, got {num_steps}")
    if not isinstance(paste_back, bool):
        raise ValueError(f"paste_back must be True or False, got {paste_back!r}")
    sampling.check_churn(solver, int(num_steps), S_churn, S_min, S_max, S_noise)
    return sampling.nfe(sampling.SamplerConfig(solver=solver, num_steps=int(num_steps))), 0


def _load(checkpoint, resources: Resources):
    """The placed ``DEFTParams`` of ``checkpoint`` (path or DEFTParams), loaded once per cache."""
    from aid_jax import guidance_module
    from aid_jax.deft import api, model  # Flax and Orbax: loaded on first use

    _check_checkpoint(checkpoint)
    if isinstance(checkpoint, model.DEFTParams):
        cache_key = ("deft", id(checkpoint))
    else:
        cache_key = ("deft", os.fspath(checkpoint))
    if cache_key not in resources.cache:
        bundle = checkpoint
        if not isinstance(checkpoint, model.DEFTParams):
            path = guidance_module.module_path(checkpoint)  # ported_weights/<name> from anywhere
            if not path.is_dir():
                raise ValueError(
                    f"method 'deft': options.checkpoint={os.fspath(checkpoint)!r}: no such DEFT "
                    "workdir or export folder (train one with --config.mode=train_deft)"
                )
            bundle = api.load(path, backbone=resources.backbone)
        model.validate_params(bundle)
        resources.cache[cache_key] = (checkpoint, resources.place(bundle))  # keeps the id alive
    return resources.cache[cache_key][1]


def build(options: dict, *, label_dim: int, resources: Resources) -> Inpainter:
    """The DEFT inpainter for ``options`` (all of :data:`OPTIONS`, checked)."""
    from aid_jax.deft import model

    steps = options["num_steps"]
    cost(**dict(options, num_steps=1 if steps is None else steps))  # nothing loads for a bad one
    bundle = _load(options["checkpoint"], resources)
    cost(**dict(options, checkpoint=bundle))
    if label_dim and label_dim != bundle.label_dim:
        raise ValueError(
            f"method 'deft': the module's backbone has {bundle.label_dim} classes, the caller's "
            f"{label_dim}; load the module with the backbone it was trained with"
        )
    inpainter = model.make_inpainter(
        bundle, **{k: v for k, v in options.items() if k != "checkpoint"}
    )
    steps = inpainter.options["num_steps"]
    return dataclasses.replace(inpainter, options={**options, "num_steps": steps})
