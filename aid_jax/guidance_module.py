"""A trained guidance module on a frozen backbone, whatever its kind: AID's actor
(``aid_jax.aid``) or DEFT's h-network (``aid_jax.deft``).

Both are the same artefact — a small trained network bound to one frozen backbone — and share
everything but their network and sampler:

* the deployable bundle (:class:`GuidanceBundle`: backbone params + module params, the backbone's
  static config, the module's config, the backbone's ``params_sha256``; a pytree through
  ``jax.jit``) and its checks (:func:`validate_bundle`, :func:`one_mask_channel`);
* the backbone record a module keeps (:func:`backbone_record`) and how the backbone is found
  again from any working directory and checked (:func:`find_recorded_backbone`,
  :func:`resolve_backbone`);
* the manifest (``<kind>_config.json``: :func:`write_run_manifest`, :func:`read_manifest`);
* where the parameters are read from (:func:`load_module_params`: the EMA entry of the newest
  checkpoint of a training workdir, or an export's ``<field>/`` folder) and the bundle
  (:func:`load_bundle`);
* export (:func:`export`): the module's parameters (Orbax, small), the manifest — format, module
  config, training step, data, last validation metrics, backbone record with ``params_sha256``,
  parameter count and fraction of the backbone, date — and a README.md generated from it, into
  a folder that loads from any working directory and can be moved (the backbone path is recorded
  as given and relative to the folder; machine paths are not recorded)::

      python -m aid_jax.guidance_module export --workdir runs/deft \\
          --out ported_weights/deft_fashion_mnist

A kind (:class:`ModuleKind`) names what differs: file and folder names, the manifest's format
tag and config key, the checkpoint's EMA entry, the bundle and config classes. ``aid_jax.aid.api``
and ``aid_jax.deft.api`` define theirs (``KIND``) and keep their public functions as thin
wrappers (``aid_jax.load``, ``load_actor``; ``aid_jax.deft.api.load``, ``load_hnet``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from aid_jax import backbones

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "PROJECT_ROOT",
    "BundleSpec",
    "GuidanceBundle",
    "ModuleKind",
    "anchor_backbone_path",
    "backbone_record",
    "backbone_candidates",
    "check_module_shapes",
    "detect_kind",
    "export",
    "export_manifest",
    "find_recorded_backbone",
    "get_kind",
    "is_traced",
    "last_validation",
    "load_bundle",
    "load_module_params",
    "main",
    "module_config",
    "module_path",
    "module_readme",
    "one_mask_channel",
    "parameter_count",
    "portable_backbone_record",
    "read_manifest",
    "register_bundle",
    "resolve_backbone",
    "save_module",
    "validate_bundle",
    "write_run_manifest",
]

# The checkout (or installed tree) holding aid_jax/ and ported_weights/: recorded paths such as
# "ported_weights/fashion_mnist_32" resolve against it from any working directory.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMAT_VERSION = 1
# The kinds: name -> the module defining its KIND (imported on first use: Flax, Orbax).
KINDS = {"aid": "aid_jax.aid.api", "deft": "aid_jax.deft.api"}
PROG = "python -m aid_jax.guidance_module"


def _a(word: str) -> str:
    """``word`` with its article: "an AID", "a DEFT"."""
    return f"{'an' if word[:1].upper() in 'AEIOU' else 'a'} {word}"


# ---------------------------------------------------------------------------------------------
# The deployable bundle


@dataclasses.dataclass(frozen=True)
class BundleSpec:
    """What a bundle class's pytree and messages say about its module."""

    field: str  # the bundle's field of the module params, and an export's folder of them
    noun: str  # the module in messages: "actor", "h-network"
    what: str  # the module in backbone messages: "guidance module", "DEFT h-network"
    load_call: str  # where its bundle is loaded: "aid_jax.load"
    config_fields: str  # the config entries a parameter-shape mismatch points at
    error: type[Exception]  # raised for a bad bundle (a ValueError)


class GuidanceBundle:
    """Base of :class:`~aid_jax.aid.model.AIDParams` and :class:`~aid_jax.deft.model.DEFTParams`.

    A subclass is a frozen dataclass with the fields ``backbone`` (the backbone's params), the
    module's params (named ``SPEC.field``), ``backbone_config``, ``config`` and
    ``backbone_sha256``, in this order, a class attribute ``SPEC`` (:class:`BundleSpec`), and is
    registered with :func:`register_bundle`: the two parameter pytrees are its leaves, the rest
    is static (hashable, a ``jax.jit`` cache key).
    """

    SPEC: BundleSpec

    @property
    def module(self):
        """The trained module's params (``actor`` / ``hnet``)."""
        return getattr(self, self.SPEC.field)

    def denoise(self, x, sigma, labels=None):
        """D(x; σ) of the frozen backbone (``labels`` ``[B, label_dim]`` or None)."""
        return backbones.denoise(self.backbone, x, sigma, labels, config=self.backbone_config)

    @property
    def label_dim(self) -> int:
        """The backbone's number of classes (0: unconditional)."""
        return int(getattr(self.backbone_config, "label_dim", 0) or 0)


def register_bundle(cls):
    """Class decorator: registers a :class:`GuidanceBundle` dataclass as a pytree."""
    jax.tree_util.register_dataclass(
        cls,
        data_fields=["backbone", cls.SPEC.field],
        meta_fields=["backbone_config", "config", "backbone_sha256"],
    )
    return cls


def validate_bundle(params, cls: type, shapes: Callable[[Any], Any]) -> None:
    """Checks that ``params`` is a ``cls`` whose module fits the backbone (image shape) and its
    config (``shapes(config)``: the parameter shapes the config makes); raises
    ``cls.SPEC.error``. Host-side, before anything compiles; under ``jax.jit`` it checks
    shapes."""
    spec = cls.SPEC
    if not isinstance(params, cls):
        raise spec.error(
            f"params must be {_a(cls.__name__)} (from {spec.load_call}(path)), got "
            f"{type(params).__name__}"
        )
    bc = params.backbone_config
    bshape = (bc.img_resolution, bc.img_resolution, bc.img_channels)
    if tuple(params.config.image_shape) != bshape:
        raise spec.error(
            f"the {spec.what} was trained for images {params.config.image_shape} but the "
            f"backbone makes {bshape}: load the backbone it was trained with"
        )
    expected = shapes(params.config)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params.module)
    if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
        raise spec.error(
            f"the {spec.noun} parameters do not match {type(params.config).__name__} "
            f"({spec.config_fields}); they were trained with another configuration — load them "
            f"with {spec.load_call}(path)"
        )


def is_traced(*arrays) -> bool:
    """Whether any of ``arrays`` is a tracer (inside ``jax.jit``: values cannot be checked)."""
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def one_mask_channel(mask, channels: int, error: type[Exception], who: str):
    """``mask`` ``[..., 1|channels]`` as one channel; a mask that differs between channels is
    refused (``who`` takes one mask per pixel), when its values can be seen."""
    if mask.shape[-1] == 1:
        return mask
    if mask.shape[-1] != channels:
        raise error(f"mask must have 1 or {channels} channels, got {mask.shape[-1]}")
    if not is_traced(mask) and not np.all(np.asarray(mask) == np.asarray(mask)[..., :1]):
        raise error(
            f"{who} takes one mask per pixel (shared by all channels); this mask differs between "
            "channels"
        )
    return mask[..., :1]


# ---------------------------------------------------------------------------------------------
# The backbone a module records, found again from any working directory


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
    for candidate in backbone_candidates(record, directory):
        if candidate.exists():
            return candidate
    return None


def backbone_candidates(record: dict, directory: pathlib.Path) -> list[pathlib.Path]:
    """Where a recorded backbone is looked for, in order (:func:`find_recorded_backbone`)."""
    out = []
    if record.get("path_rel"):
        out.append(pathlib.Path(directory) / record["path_rel"])
    if record.get("path_abs"):
        out.append(pathlib.Path(record["path_abs"]))
    if record.get("path"):
        path = pathlib.Path(record["path"]).expanduser()
        out += [path] if path.is_absolute() else [path, PROJECT_ROOT / path]
    return out


def portable_backbone_record(record: dict, found: pathlib.Path, directory: pathlib.Path) -> dict:
    """The record an export keeps: the path as given (made relative to the project root when it
    is an absolute path inside it) and relative to ``directory`` (unless the two share no folder
    but the file system's root); no machine path."""
    record = anchor_backbone_path(record, found, directory)
    del record["path_abs"]
    ends = [os.path.normpath(pathlib.Path(p).expanduser().absolute()) for p in (found, directory)]
    common = pathlib.Path(os.path.commonpath(ends))
    if common == pathlib.Path(common.anchor):
        del record["path_rel"]
    given = pathlib.Path(record["path"]).expanduser()
    if given.is_absolute():
        try:
            record["path"] = given.resolve().relative_to(PROJECT_ROOT).as_posix()
        except ValueError:  # outside the project: kept as given
            pass
    return record


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
                tried = ", ".join(str(c) for c in backbone_candidates(recorded, pathlib.Path(path)))
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


# ---------------------------------------------------------------------------------------------
# Kinds


@dataclasses.dataclass(frozen=True)
class ModuleKind:
    """What one kind of trained module is called and made of (``aid_jax.aid.api.KIND``,
    ``aid_jax.deft.api.KIND``)."""

    name: str  # "aid", "deft": --method, --kind
    title: str  # "AID", "DEFT": in messages
    format: str  # the manifest's "format" tag
    state_file: str  # the manifest's file in a workdir or export: "aid_config.json"
    config_key: str  # the manifest's entry of the module config: "aid_config"
    ema_entry: str  # the module's EMA params in a training checkpoint's state: "actor_ema"
    train_command: str  # how one is trained (messages)
    bundle: type  # the GuidanceBundle subclass: AIDParams, DEFTParams
    config_type: type  # AIDConfig, DEFTConfig (from_dict / to_dict)
    init: Callable  # (key, config) -> module params
    validate: Callable  # (bundle) -> None, raising the bundle's error

    @property
    def spec(self) -> BundleSpec:
        return self.bundle.SPEC

    @property
    def error(self) -> type[Exception]:
        return self.bundle.SPEC.error

    def abstract_params(self, config):
        """The module's parameter shapes and dtypes for ``config`` (nothing computed)."""
        return jax.eval_shape(lambda: self.init(jax.random.key(0), config))

    def load(self, path, *, backbone=None):
        """:func:`load_bundle` of this kind."""
        return load_bundle(path, self, backbone=backbone)


def get_kind(name) -> ModuleKind:
    """The :class:`ModuleKind` called ``name`` (``"aid"``, ``"deft"``), or ``name`` itself."""
    if isinstance(name, ModuleKind):
        return name
    if name not in KINDS:
        raise ValueError(f"unknown guidance module kind {name!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name]).KIND


def detect_kind(path) -> ModuleKind:
    """The kind of the workdir or export ``path``, from the manifest file it holds."""
    path = module_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such training workdir or export folder")
    kinds = [get_kind(n) for n in KINDS]
    found = [k for k in kinds if (path / k.state_file).is_file()]
    if not found:
        files = " or ".join(k.state_file for k in kinds)
        raise FileNotFoundError(
            f"{path} is not a guidance module's workdir or export (no {files} in it); give the "
            "workdir of a training run (python -m aid_jax.main ... --workdir=...)"
        )
    if len(found) > 1:
        raise ValueError(
            f"{path} holds the manifests of several kinds ({', '.join(k.name for k in found)}); "
            "say which with --kind (Python: kind=)"
        )
    return found[0]


# ---------------------------------------------------------------------------------------------
# Reading: the manifest, the module's params, the bundle


def module_path(path) -> pathlib.Path:
    """``path`` as given if it exists, else (when relative) under the project's root, so that
    ``ported_weights/<name>`` loads from any working directory."""
    p = pathlib.Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    rooted = PROJECT_ROOT / p
    return rooted if rooted.exists() else p


def read_manifest(path, kind) -> dict:
    """The manifest (``kind.state_file``) of the workdir or export ``path``, checked to be of
    ``kind``; the errors say what to do."""
    kind = get_kind(kind)
    path = pathlib.Path(path)
    f = path / kind.state_file
    if not f.is_file():
        others = [get_kind(n) for n in KINDS if n != kind.name]
        other = next((o for o in others if (path / o.state_file).is_file()), None)
        hint = (
            f"; it holds {other.state_file}: {_a(other.title)} module, load it with "
            f"{other.spec.load_call} (--method {other.name} --{other.name})"
            if other
            else f" (train one with {kind.train_command})"
        )
        raise FileNotFoundError(
            f"{path} is not {_a(kind.title)} workdir or export: {kind.state_file} is missing{hint}"
        )
    try:
        manifest = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise kind.error(f"{f} is corrupt ({e}); re-export the module") from e
    got = manifest.get("format") if isinstance(manifest, dict) else None
    if got != kind.format or kind.config_key not in manifest:
        raise kind.error(
            f"{f} is not an aid_jax {kind.title} manifest (format {got!r}, expected "
            f"{kind.format!r} with an entry {kind.config_key!r}); re-export the module"
        )
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise kind.error(
            f"{f} has format_version {version!r}; this aid_jax reads up to {FORMAT_VERSION}: "
            "update aid_jax"
        )
    return manifest


def module_config(manifest: dict, kind, where) -> Any:
    """The module config (``AIDConfig`` / ``DEFTConfig``) a manifest records."""
    kind = get_kind(kind)
    try:
        return kind.config_type.from_dict(manifest[kind.config_key])
    except (KeyError, TypeError, ValueError) as e:
        raise kind.error(
            f"{where}: {kind.config_key} is not a valid {kind.config_type.__name__} ({e}); "
            "re-export the module"
        ) from e


def _leaf_shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(np.shape(a))
        for path, a in flat
    }


def check_module_shapes(params, like, where, kind) -> None:
    """``params`` has the structure and shapes of ``like`` (what the manifest's config makes),
    else the kind's error naming the first difference."""
    kind = get_kind(kind)
    got, want = _leaf_shapes(params), _leaf_shapes(like)
    if jax.tree.structure(params) == jax.tree.structure(like) and got == want:
        return
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing:
        detail = f"{missing[0]!r} is missing"
    elif extra:
        detail = f"{extra[0]!r} is not in the config's network"
    else:
        name = next((k for k in want if got[k] != want[k]), next(iter(want), ""))
        detail = f"{name!r} has shape {got.get(name)}, the config makes {want.get(name)}"
    raise kind.error(
        f"{where}: the {kind.spec.noun} does not match {kind.state_file} ({detail}); the "
        "parameters were saved for another configuration: re-export the module from the "
        "workdir that trained it"
    )


def _checkpoint_steps(ckpts: pathlib.Path) -> list[int]:
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def load_module_params(path, kind) -> tuple[dict, dict]:
    """(the module's params as a NumPy pytree, manifest) from a training workdir (the EMA entry
    of the newest checkpoint; the manifest gains its ``step``) or an export folder
    (``<field>/``); relative paths that do not exist here are looked up under the project's
    root. Shapes are checked against the manifest's config."""
    kind = get_kind(kind)
    given = path
    path = module_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{given}: no such {kind.title} workdir or export folder")
    from aid_jax import checkpoint  # Orbax: loaded on first use

    manifest = read_manifest(path, kind)
    like = kind.abstract_params(module_config(manifest, kind, path / kind.state_file))
    folder = path / kind.spec.field
    if folder.is_dir():
        try:  # the declared shapes are checked (metadata only) before anything is allocated
            check_module_shapes(checkpoint.read_metadata(folder), like, folder, kind)
            params = checkpoint.restore_pytree(folder, like)
        except kind.error:
            raise
        except Exception as e:  # Orbax raises several types for damaged folders
            raise kind.error(f"{folder} could not be read ({e}); re-export it") from e
        check_module_shapes(params, like, folder, kind)
        return params, manifest
    ckpts = (path / "checkpoints").absolute()
    steps = _checkpoint_steps(ckpts)
    if not steps:
        raise FileNotFoundError(f"{path} has no checkpoint yet (checkpoints/<step>/); train first")
    step_dir = ckpts / str(steps[-1])
    try:
        state = checkpoint.restore_step_state(ckpts, steps[-1], {kind.ema_entry: like})
    except Exception as e:  # Orbax raises several types for damaged folders
        raise kind.error(
            f"checkpoint {step_dir} could not be read ({e}); delete it to fall back to the "
            "previous one"
        ) from e
    if not isinstance(state, dict) or kind.ema_entry not in state:
        raise kind.error(
            f"{step_dir} is not {_a(kind.title)} training checkpoint (no {kind.ema_entry!r} entry)"
        )
    params = jax.tree.map(np.asarray, state[kind.ema_entry])
    check_module_shapes(params, like, step_dir, kind)
    return params, dict(manifest, step=steps[-1])


def load_bundle(path, kind, *, backbone=None):
    """The kind's bundle (``AIDParams`` / ``DEFTParams``) from a workdir or an export: the
    module's params (:func:`load_module_params`) on the recorded backbone, or on ``backbone``
    (a ``Backbone`` or a path), whose ``params_sha256`` must equal the recorded one."""
    kind = get_kind(kind)
    module, manifest = load_module_params(path, kind)
    config = module_config(manifest, kind, path)
    backbone = resolve_backbone(
        module_path(path),
        manifest.get("backbone", {}),
        backbone,
        kind.error,
        kind.spec.what,
        kind.spec.load_call,
    )
    params = kind.bundle(
        backbone=backbone.params,
        **{kind.spec.field: module},
        backbone_config=backbone.config,
        config=config,
        backbone_sha256=backbone.params_sha256,
    )
    kind.validate(params)
    return params


# ---------------------------------------------------------------------------------------------
# Writing: the run's manifest, the export


def parameter_count(tree) -> int:
    """Number of parameters of a pytree of arrays (or shape structs)."""
    return int(sum(math.prod(np.shape(a)) for a in jax.tree.leaves(tree)))


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _write_json(path: pathlib.Path, obj: dict) -> None:
    pathlib.Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n")


def write_run_manifest(directory, kind, cfg, config, sha: str) -> dict:
    """``<directory>/<kind.state_file>`` of a training run (written when it starts): the format,
    the module config, the backbone record (``params_sha256``, the path as given, absolute and
    relative to ``directory``), the module's parameter count, the data (``config.data``) and the
    date. Returns it."""
    manifest = run_manifest(directory, kind, cfg, config, sha)
    _write_json(pathlib.Path(directory) / get_kind(kind).state_file, manifest)
    return manifest


def run_manifest(directory, kind, cfg, config, sha: str) -> dict:
    """The manifest :func:`write_run_manifest` writes, for a folder at ``directory``."""
    kind = get_kind(kind)
    directory = pathlib.Path(directory)
    data = config.get("data") if hasattr(config, "get") else None
    return {
        "format": kind.format,
        "format_version": FORMAT_VERSION,
        kind.config_key: cfg.to_dict(),
        "backbone": backbone_record(config.backbone.to_dict(), sha, directory),
        f"{kind.spec.field}_params": parameter_count(kind.abstract_params(cfg)),
        "data": data.to_dict() if hasattr(data, "to_dict") else data,
        "training": training_record(config),
        "date": _now(),
    }


TRAINING_KEYS = ("seed", "train", "optim")


def training_record(config) -> dict | None:
    """How the module was trained: the run config's ``seed``, ``train`` (estimator, batch, masks,
    schedule) and ``optim`` entries as plain JSON (None when the config has none of them)."""
    get = config.get if hasattr(config, "get") else (lambda k, d=None: d)
    out = {}
    for key in TRAINING_KEYS:
        value = get(key, None)
        if value is not None:
            out[key] = value.to_dict() if hasattr(value, "to_dict") else value
    return json.loads(json.dumps(out, default=str)) if out else None


def last_validation(workdir, step: int | None) -> dict | None:
    """The last validation metrics (``val_*`` entries of ``metrics.jsonl``) logged at or before
    ``step``, with their ``step``; None when the run logged none."""
    f = pathlib.Path(workdir) / "metrics.jsonl"
    if not f.is_file():
        return None
    last = None
    for line in f.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if not isinstance(row, dict) or (step is not None and row.get("step", 0) > step):
            continue
        vals = {k: v for k, v in row.items() if k.startswith("val_")}
        if vals:
            last = {"step": row.get("step"), **vals}
    return last


def _run_config(workdir: pathlib.Path) -> dict:
    """The run's config.json in ``workdir`` ({} when absent or unreadable). A run's ``best/``
    folder needs none: its manifest carries the data and training records itself."""
    f = workdir / "config.json"
    if not f.is_file():
        return {}
    try:
        got = json.loads(f.read_text())
    except json.JSONDecodeError:
        return {}
    return got if isinstance(got, dict) else {}


def _run_data(workdir: pathlib.Path, manifest: dict):
    """The run's data config: the manifest's, else the run's config.json's."""
    if manifest.get("data") is not None:
        return manifest["data"]
    return _run_config(workdir).get("data")


def _run_training(workdir: pathlib.Path, manifest: dict):
    """How the module was trained (:func:`training_record`): the manifest's, else the run's
    config.json's."""
    if manifest.get("training") is not None:
        return manifest["training"]
    return training_record(_run_config(workdir))


def export_manifest(src: pathlib.Path, out: pathlib.Path, kind, params, manifest: dict) -> dict:
    """The manifest of an export at ``out`` of the module read from ``src``: what the run
    recorded, plus the training step, the data, the last validation metrics, the backbone record
    anchored at ``out`` without machine paths, the parameter counts and the date."""
    kind = get_kind(kind)
    recorded = dict(manifest.get("backbone", {}))
    found = find_recorded_backbone(recorded, src) if recorded.get("path") else None
    record = recorded if found is None else portable_backbone_record(recorded, found, out)
    backbone_params = manifest.get("backbone_params")
    if found is not None or recorded.get("random"):  # counted, and its sha256 checked
        backbone = backbones.backbone_from_config(
            recorded if found is None else dict(recorded, path=str(found))
        )
        want = recorded.get("params_sha256", "")
        if want and backbone.params_sha256 != want:
            raise kind.error(
                f"{src}: the backbone at {found or 'random'} has params_sha256 "
                f"{backbone.params_sha256[:12]}…, but this {kind.spec.what} was trained against "
                f"{want[:12]}…; put the backbone it was trained with back before exporting"
            )
        backbone_params = parameter_count(backbone.params)
    count = parameter_count(params)
    step = manifest.get("step")
    known = {
        "format": kind.format,
        "format_version": FORMAT_VERSION,
        kind.config_key: manifest[kind.config_key],
        "step": step,
        "data": _run_data(src, manifest),
        "training": _run_training(src, manifest),
        "validation": last_validation(src, step) or manifest.get("validation"),
        "backbone": record,
        f"{kind.spec.field}_params": count,
        "backbone_params": backbone_params,
        "params_fraction": count / backbone_params if backbone_params else None,
        "run_started": manifest.get("run_started", manifest.get("date")),
        "date": _now(),
    }
    return {**known, **{k: v for k, v in manifest.items() if k not in known}}


def save_module(out, kind, params, manifest: dict, final=None) -> pathlib.Path:
    """Write a module folder ``out`` (which must not exist): ``<field>/`` (Orbax), the manifest
    and a README.md generated from it. Written under a temporary name and renamed, so a failed
    export leaves nothing behind. ``final``: the path the folder will be renamed to later (its
    README names that one)."""
    kind = get_kind(kind)
    from aid_jax import checkpoint  # Orbax: loaded on first use

    out = pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        checkpoint.save_pytree(tmp / kind.spec.field, params)
        _write_json(tmp / kind.state_file, manifest)
        (tmp / "README.md").write_text(module_readme(final or out, kind, manifest))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export(workdir, out, kind=None) -> pathlib.Path:
    """Export the module of a finished (or running) training workdir — the EMA params of its
    newest checkpoint — or of another export, to the new folder ``out``: ``<field>/`` (Orbax),
    ``<kind>_config.json`` (:func:`export_manifest`) and README.md. ``kind`` (``"aid"``,
    ``"deft"``) defaults to the one whose manifest ``workdir`` holds. The folder loads from any
    working directory and can be moved (with its backbone, or with the backbone in the project's
    ``ported_weights/``)."""
    src = module_path(workdir)
    kind = detect_kind(src) if kind is None else get_kind(kind)
    out = pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    params, manifest = load_module_params(src, kind)
    return save_module(out, kind, params, export_manifest(src, out, kind, params, manifest))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _shown_path(out: pathlib.Path) -> str:
    try:
        return out.absolute().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(out)


def module_readme(out, kind, manifest: dict) -> str:
    """README.md of an exported module, generated from its manifest."""
    kind = get_kind(kind)
    out = pathlib.Path(out)
    spec = kind.spec
    cfg = manifest.get(kind.config_key, {})
    count = manifest.get(f"{spec.field}_params")
    bcount = manifest.get("backbone_params")
    size = f"{_fmt(count)} parameters" if count is not None else "parameters: unknown"
    if bcount:
        size += f" ({manifest['params_fraction']:.2%} of the backbone's {_fmt(bcount)})"
    bb = manifest.get("backbone", {})
    where = bb.get("path") or ("random weights" if bb.get("random") else "not recorded")
    rel = f", `{bb['path_rel']}` from this folder" if bb.get("path_rel") else ""
    data = manifest.get("data") or {}
    data_text = ", ".join(f"{k} {v}" for k, v in data.items() if v not in ("", None)) or "-"
    val = manifest.get("validation") or {}
    val_text = ", ".join(f"{k} {_fmt(v)}" for k, v in val.items() if k != "step") or "-"
    training = manifest.get("training") or {}
    train, optim = training.get("train") or {}, training.get("optim") or {}
    how = [f"{k} {_fmt(train[k])}" for k in ("actor", "batch_size", "masks") if k in train]
    how += [f"{k} {_fmt(optim[k])}" for k in ("actor_lr", "lr") if k in optim]
    if "seed" in training:
        how.append(f"seed {training['seed']}")
    shown = _shown_path(out)
    rows = [
        ("Module", f"{kind.title} {spec.noun}, {size}"),
        ("Trained", f"{_fmt(manifest.get('step', '?'))} steps (EMA parameters)"),
        ("Data", data_text),
        ("Training", ", ".join(how) or "-"),
        (f"Validation (step {_fmt(val.get('step'))})" if val else "Validation", val_text),
        ("Backbone", f"`{where}`{rel}; params_sha256 `{bb.get('params_sha256', '')}`"),
        ("Image shape", " × ".join(str(s) for s in cfg.get("image_shape", []))),
        ("Sampler steps (default)", _fmt(cfg.get("num_steps"))),
        ("Exported", str(manifest.get("date"))),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# {out.name}: a trained {kind.title} {spec.noun}

A guidance module of aid_jax on a frozen backbone (format `{kind.format}`), exported with
`{PROG} export`; generated from `{kind.state_file}`.

| | |
|---|---|
{table}

## Use

    python -m aid_jax.inpaint --method {kind.name} --{kind.name} {shown} \\
        --image in.png --mask mask.png --out out.png

```python
from aid_jax.{kind.name} import api

# the {spec.noun} on its recorded backbone (params_sha256 checked)
params = api.load("{shown}")
```

## Files

- `{spec.field}/`: the {spec.noun}'s EMA parameters (an Orbax PyTree checkpoint)
- `{kind.state_file}`: the manifest: format, `{kind.config_key}`, training step, data, how it
  was trained (`training`: the run's seed, `train` and `optim` config), validation metrics,
  backbone record, parameter counts, dates

The backbone is found from the path as recorded (relative to the project root from any working
directory) or relative to this folder; move the folder together with its backbone, or pass
`backbone=` / `--backbone`.
"""


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Trained guidance modules (AID actors, DEFT h-networks) on frozen backbones.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser(
        "export",
        help="export a training workdir's module into a self-contained, movable folder",
        description="Write the EMA parameters of the newest checkpoint of --workdir (Orbax), "
        "the manifest (<kind>_config.json) and a README.md into the new folder --out, e.g. "
        "ported_weights/<name>; it loads from any working directory (aid_jax.load, "
        "aid_jax.deft.api.load, python -m aid_jax.inpaint --method aid|deft).",
    )
    e.add_argument("--workdir", required=True, metavar="PATH", help="training workdir (or export)")
    e.add_argument("--out", required=True, metavar="PATH", help="the new folder")
    e.add_argument(
        "--kind", choices=tuple(KINDS), default=None, help="module kind (default: detected)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aid_jax.guidance_module``: see ``--help``. Returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        out = export(args.workdir, args.out, args.kind)
        kind = detect_kind(out)
        manifest = json.loads((out / kind.state_file).read_text())
    except (ValueError, OSError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"exported the {kind.title} {kind.spec.noun} of {args.workdir} (step "
        f"{manifest.get('step')}) to {out}; use it with python -m aid_jax.inpaint --method "
        f"{kind.name} --{kind.name} {out} (README.md there)"
    )
    return 0


if __name__ == "__main__":
    from aid_jax import guidance_module  # the importable module, whose classes the kinds use

    sys.exit(guidance_module.main())
