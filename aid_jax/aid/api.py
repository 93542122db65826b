"""``aid_jax.load(path)``: a trained guidance module and its backbone as :class:`AIDParams`.

``path`` is either an AID training workdir (``checkpoints/`` + ``aid_config.json``; the EMA actor
of the newest checkpoint is used) or an exported folder (``actor/`` + ``aid_config.json``, from
``aid_jax.aid.train.export``). The backbone is loaded from the path recorded at training time
unless one is given, and its ``params_sha256`` must equal the recorded one: a guidance module is
trained against one frozen backbone and is meaningless on another.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from aid_jax import backbones, checkpoint
from aid_jax.aid import model

__all__ = ["load", "load_actor"]

STATE_FILE = "aid_config.json"
# The checkout (or installed tree) holding aid_jax/ and ported_weights/: recorded backbone paths
# such as "ported_weights/fashion_mnist_32" resolve against it from any working directory.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def backbone_record(backbone_config: dict, sha: str, directory: pathlib.Path) -> dict:
    """What a saved module records about its backbone: the config entry as given, the path also
    absolute and relative to the module's own folder, and the backbone's ``params_sha256``."""
    record = dict(backbone_config, params_sha256=sha)
    if record.get("path"):
        record = anchor_backbone_path(record, pathlib.Path(record["path"]), directory)
    return record


def anchor_backbone_path(record: dict, found: pathlib.Path, directory: pathlib.Path) -> dict:
    """``record`` with ``path_abs`` / ``path_rel`` (relative to ``directory``) set from ``found``;
    the path as first given stays in ``path``."""
    path = pathlib.Path(found).expanduser().absolute()
    rel = os.path.relpath(path, pathlib.Path(directory).absolute())
    return dict(record, path_abs=str(path), path_rel=rel)


def find_recorded_backbone(record: dict, directory: pathlib.Path) -> pathlib.Path | None:
    """The first existing candidate for a recorded backbone path (relative to the module's folder,
    absolute, relative to the working directory, relative to the project root), or None."""
    for candidate in _backbone_candidates(record, directory):
        if candidate.exists():
            return candidate
    return None


def _backbone_candidates(record: dict, directory: pathlib.Path) -> list[pathlib.Path]:
    out = []
    if record.get("path_rel"):
        out.append(pathlib.Path(directory) / record["path_rel"])
    if record.get("path_abs"):
        out.append(pathlib.Path(record["path_abs"]))
    if record.get("path"):
        path = pathlib.Path(record["path"]).expanduser()
        out += [path] if path.is_absolute() else [path, PROJECT_ROOT / path]
    return out


def _manifest(path: pathlib.Path) -> dict:
    f = path / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(
            f"{path} is not an AID workdir or export: {STATE_FILE} is missing (train one with "
            "python -m aid_jax.main --config=configs/fashion_mnist.py)"
        )
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise model.AIDError(f"{f} is corrupt ({e}); re-export the module") from e
    if manifest.get("format") != "aid_jax-guidance" or "aid_config" not in manifest:
        raise model.AIDError(f"{f} is not an aid_jax guidance manifest")
    return manifest


def load_actor(path) -> tuple[dict, dict]:
    """(actor params as NumPy pytree, manifest) from a workdir (EMA actor) or an export."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such AID workdir or export folder")
    manifest = _manifest(path)
    cfg = model.AIDConfig.from_dict(manifest["aid_config"])
    like = jax.eval_shape(lambda: model.init_actor(jax.random.key(0), cfg))
    if (path / "actor").is_dir():
        try:
            actor = checkpoint.restore_pytree(path / "actor", like)
        except Exception as e:  # Orbax raises several types for damaged folders
            raise model.AIDError(f"{path / 'actor'} could not be read ({e}); re-export it") from e
        return actor, manifest
    ckpts = (path / "checkpoints").absolute()
    steps = []
    if ckpts.is_dir():
        steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{path} has no checkpoint yet (checkpoints/<step>/); train first")
    try:
        with ocp.CheckpointManager(ckpts) as manager:
            restored = manager.restore(
                steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        state = restored["state"]
    except Exception as e:  # Orbax raises several types for damaged folders
        raise model.AIDError(
            f"checkpoint {ckpts / str(steps[-1])} could not be read ({e}); delete it to fall back "
            "to the previous one"
        ) from e
    step_dir = ckpts / str(steps[-1])
    actor = jax.tree.map(np.asarray, state["actor_ema"])
    if jax.tree.map(np.shape, actor) != jax.tree.map(lambda a: a.shape, like):
        raise model.AIDError(f"{step_dir}: the actor does not match {STATE_FILE}")
    return actor, dict(manifest, step=steps[-1])


def resolve_backbone(path, recorded: dict, backbone, error: type[Exception], what: str, call: str):
    """The ``Backbone`` a trained module (AID's actor, DEFT's h-network) runs on: ``backbone``
    (a ``Backbone`` or a path) when given, else the one recorded in its manifest (found from any
    working directory, :func:`find_recorded_backbone`); its ``params_sha256`` must equal the
    recorded one. ``error`` is raised naming ``what`` (the module) and ``call`` (where to pass
    backbone=)."""
    if backbone is None:
        if not (recorded.get("path") or recorded.get("random")):
            raise error(
                f"{path}: no backbone recorded; pass backbone= (a ported folder, an NVIDIA pickle "
                f"or a Backbone) to {call}"
            )
        if recorded.get("path"):
            found = find_recorded_backbone(recorded, pathlib.Path(path))
            if found is None:
                tried = ", ".join(
                    str(c) for c in _backbone_candidates(recorded, pathlib.Path(path))
                )
                raise error(
                    f"{path}: the backbone this {what} was trained with ({recorded['path']}) was "
                    f"not found (tried {tried}); pass backbone= to {call} (a ported folder, an "
                    "NVIDIA pickle or a Backbone with the same params_sha256)"
                )
            recorded = dict(recorded, path=str(found))
        backbone = backbones.backbone_from_config(recorded)
    elif not isinstance(backbone, backbones.Backbone):
        backbone = backbones.load_backbone(backbone)
    want = recorded.get("params_sha256", "")
    if want and backbone.params_sha256 != want:
        raise error(
            f"this {what} was trained against backbone params_sha256 {want[:12]}… "
            f"({recorded.get('path')}), but the given backbone has "
            f"{backbone.params_sha256[:12]}…: pass that backbone as {call}(..., backbone=)"
        )
    return backbone


def load(path, *, backbone=None) -> model.AIDParams:
    """The :class:`AIDParams` of ``aid_jax.inpaint`` from a workdir or an export.

    Args:
        path: An AID training workdir or an exported folder.
        backbone: Optional ``Backbone`` (or path) to use instead of the recorded one; it must be
            the backbone the module was trained with (same ``params_sha256``).
    """
    actor, manifest = load_actor(path)
    cfg = model.AIDConfig.from_dict(manifest["aid_config"])
    backbone = resolve_backbone(
        path,
        manifest.get("backbone", {}),
        backbone,
        model.AIDError,
        "guidance module",
        "aid_jax.load",
    )
    sha = backbone.params_sha256
    params = model.AIDParams(
        backbone=backbone.params,
        actor=actor,
        backbone_config=backbone.config,
        config=cfg,
        backbone_sha256=sha,
    )
    model.validate_params(params)
    return params
