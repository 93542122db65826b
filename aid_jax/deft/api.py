"""``load(path)``: a trained DEFT h-network and its backbone as :class:`DEFTParams`.

``path`` is a DEFT training workdir (``checkpoints/`` + ``deft_config.json``; the EMA h-network
of the newest checkpoint is used) or an exported folder (``hnet/`` + ``deft_config.json``, from
``aid_jax.deft.train.export``). The backbone is found from the recorded path (relative to the
module's folder, absolute, relative to the working directory or the project root — AID's rules,
``aid_jax.aid.api``) unless one is given, and its ``params_sha256`` must equal the recorded one.
Every error is raised before anything compiles.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from aid_jax import checkpoint
from aid_jax.aid.api import (
    anchor_backbone_path,
    backbone_record,
    find_recorded_backbone,
    resolve_backbone,
)
from aid_jax.deft import model

__all__ = [
    "FORMAT",
    "STATE_FILE",
    "anchor_backbone_path",
    "backbone_record",
    "find_recorded_backbone",
    "load",
    "load_hnet",
]

STATE_FILE = "deft_config.json"
FORMAT = "aid_jax-deft"


def _manifest(path: pathlib.Path) -> dict:
    f = path / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(
            f"{path} is not a DEFT workdir or export: {STATE_FILE} is missing (train one with "
            "python -m aid_jax.main --config=configs/deft_fashion_mnist.py "
            "--config.mode=train_deft)"
        )
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise model.DEFTError(f"{f} is corrupt ({e}); re-export the module") from e
    if manifest.get("format") != FORMAT or "deft_config" not in manifest:
        raise model.DEFTError(f"{f} is not an aid_jax DEFT manifest")
    return manifest


def _check_shapes(hnet, like, where) -> None:
    got = jax.tree.map(np.shape, hnet)
    want = jax.tree.map(lambda a: tuple(a.shape), like)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise model.DEFTError(f"{where}: the h-network does not match {STATE_FILE}")


def load_hnet(path) -> tuple[dict, dict]:
    """(h-network params as a NumPy pytree, manifest) from a workdir (EMA) or an export."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such DEFT workdir or export folder")
    manifest = _manifest(path)
    cfg = model.DEFTConfig.from_dict(manifest["deft_config"])
    like = jax.eval_shape(lambda: model.init_hnet(jax.random.key(0), cfg))
    if (path / "hnet").is_dir():
        try:
            hnet = checkpoint.restore_pytree(path / "hnet", like)
        except Exception as e:  # Orbax raises several types for damaged folders
            raise model.DEFTError(f"{path / 'hnet'} could not be read ({e}); re-export it") from e
        return hnet, manifest
    ckpts = (path / "checkpoints").absolute()
    steps = []
    if ckpts.is_dir():
        steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{path} has no checkpoint yet (checkpoints/<step>/); train first")
    step_dir = ckpts / str(steps[-1])
    try:
        state = checkpoint.restore_step_state(ckpts, steps[-1])
    except Exception as e:  # Orbax raises several types for damaged folders
        raise model.DEFTError(
            f"checkpoint {step_dir} could not be read ({e}); delete it to fall back to the "
            "previous one"
        ) from e
    if not isinstance(state, dict) or "ema" not in state:
        raise model.DEFTError(f"{step_dir} is not a DEFT training checkpoint (no 'ema' entry)")
    hnet = jax.tree.map(np.asarray, state["ema"])
    _check_shapes(hnet, like, step_dir)
    return hnet, dict(manifest, step=steps[-1])


def load(path, *, backbone=None) -> model.DEFTParams:
    """The :class:`DEFTParams` of ``aid_jax.deft.model.inpaint`` from a workdir or an export.

    Args:
        path: A DEFT training workdir or an exported folder.
        backbone: Optional ``Backbone`` (or path) instead of the recorded one; it must be the
            backbone the h-network was trained with (same ``params_sha256``).
    """
    hnet, manifest = load_hnet(path)
    cfg = model.DEFTConfig.from_dict(manifest["deft_config"])
    backbone = resolve_backbone(
        path,
        manifest.get("backbone", {}),
        backbone,
        model.DEFTError,
        "DEFT h-network",
        "aid_jax.deft.api.load",
    )
    sha = backbone.params_sha256
    params = model.DEFTParams(
        backbone=backbone.params,
        hnet=hnet,
        backbone_config=backbone.config,
        config=cfg,
        backbone_sha256=sha,
    )
    model.validate_params(params)
    return params
