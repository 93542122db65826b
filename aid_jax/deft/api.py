"""``load(path)``: a trained DEFT h-network and its backbone as :class:`DEFTParams`.

``path`` is a DEFT training workdir (``checkpoints/`` + ``deft_config.json``; the EMA h-network
of the newest checkpoint is used) or an exported folder (``hnet/`` + ``deft_config.json``, from
``aid_jax.deft.train.export`` or ``python -m aid_jax.guidance_module export``). The backbone is
found from the recorded path (relative to the module's folder, absolute, relative to the working
directory or the project root — the rules of ``aid_jax.guidance_module``, shared with AID) unless
one is given, and its ``params_sha256`` must equal the recorded one. Every error is raised before
anything compiles.
"""

from __future__ import annotations

from aid_jax import guidance_module
from aid_jax.deft import model
from aid_jax.guidance_module import (
    anchor_backbone_path,
    backbone_record,
    find_recorded_backbone,
)

__all__ = [
    "FORMAT",
    "KIND",
    "STATE_FILE",
    "anchor_backbone_path",
    "backbone_record",
    "find_recorded_backbone",
    "load",
    "load_hnet",
]

STATE_FILE = "deft_config.json"
FORMAT = "aid_jax-deft"

KIND = guidance_module.ModuleKind(
    name="deft",
    title="DEFT",
    format=FORMAT,
    state_file=STATE_FILE,
    config_key="deft_config",
    ema_entry="ema",
    train_command="python -m aid_jax.main --config=configs/deft_fashion_mnist.py "
    "--config.mode=train_deft",
    bundle=model.DEFTParams,
    config_type=model.DEFTConfig,
    init=model.init_hnet,
    validate=model.validate_params,
)


def load_hnet(path) -> tuple[dict, dict]:
    """(h-network params as a NumPy pytree, manifest) from a workdir (EMA) or an export."""
    return guidance_module.load_module_params(path, KIND)


def load(path, *, backbone=None) -> model.DEFTParams:
    """The :class:`DEFTParams` of ``aid_jax.deft.model.inpaint`` from a workdir or an export.

    Args:
        path: A DEFT training workdir or an exported folder (a relative path that does not exist
            from the working directory is looked up under the project's root).
        backbone: Optional ``Backbone`` (or path) instead of the recorded one; it must be the
            backbone the h-network was trained with (same ``params_sha256``).
    """
    return guidance_module.load_bundle(path, KIND, backbone=backbone)
