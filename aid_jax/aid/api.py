"""``aid_jax.load(path)``: a trained guidance module and its backbone as :class:`AIDParams`.

``path`` is either an AID training workdir (``checkpoints/`` + ``aid_config.json``; the EMA actor
of the newest checkpoint is used) or an exported folder (``actor/`` + ``aid_config.json``, from
``aid_jax.aid.train.export`` or ``python -m aid_jax.guidance_module export``). The backbone is
loaded from the path recorded at training time unless one is given, and its ``params_sha256``
must equal the recorded one: a guidance module is trained against one frozen backbone and is
meaningless on another. Reading, checking and the backbone's resolution are shared with DEFT
(``aid_jax.guidance_module``); this module names AID's kind (:data:`KIND`).
"""

from __future__ import annotations

from aid_jax import guidance_module
from aid_jax.aid import model
from aid_jax.guidance_module import (  # noqa: F401 (re-exported: the names' historical home)
    PROJECT_ROOT,
    anchor_backbone_path,
    backbone_record,
    find_recorded_backbone,
    resolve_backbone,
)

__all__ = ["FORMAT", "KIND", "STATE_FILE", "load", "load_actor"]

STATE_FILE = "aid_config.json"
FORMAT = "aid_jax-guidance"

KIND = guidance_module.ModuleKind(
    name="aid",
    title="AID",
    format=FORMAT,
    state_file=STATE_FILE,
    config_key="aid_config",
    ema_entry="actor_ema",
    train_command="python -m aid_jax.main --config=configs/fashion_mnist.py",
    bundle=model.AIDParams,
    config_type=model.AIDConfig,
    init=model.init_actor,
    validate=model.validate_params,
)


def load_actor(path) -> tuple[dict, dict]:
    """(actor params as NumPy pytree, manifest) from a workdir (EMA actor) or an export."""
    return guidance_module.load_module_params(path, KIND)


def load(path, *, backbone=None) -> model.AIDParams:
    """The :class:`AIDParams` of ``aid_jax.inpaint`` from a workdir or an export.

    Args:
        path: An AID training workdir or an exported folder (a relative path that does not exist
            from the working directory is looked up under the project's root).
        backbone: Optional ``Backbone`` (or path) to use instead of the recorded one; it must be
            the backbone the module was trained with (same ``params_sha256``).
    """
    return guidance_module.load_bundle(path, KIND, backbone=backbone)
