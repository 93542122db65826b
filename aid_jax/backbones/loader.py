"""Frozen backbones: configuration from a checkpoint, parameter conversion, porting, loading.

Two families share one interface:
  * EDM (`EDMPrecond`, `VPPrecond`, `VEPrecond` around SongUNet or DhariwalUNet) — `edm.py`;
  * EDM2 (`Precond` around the magnitude-preserving UNet) — `edm2.py`.

`denoise(params, x, sigma, labels, config=...)` is the pure function every sampler and method
consumes; `Backbone` bundles params, config and the provenance manifest for convenience.
`prepare_labels(labels, label_dim, batch)` turns the class labels of an inpainting call (ids or
one-hot rows) into the `[B, label_dim]` float32 rows `denoise` takes, with the checks every
inpainting entry point shares.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import edm, edm2

Config = edm.EDMConfig | edm2.EDM2Config
MANIFEST = "manifest.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


class BackboneError(ValueError):
    """A checkpoint or input that does not fit the backbone; the message says what was expected."""


def config_from_checkpoint(
    class_name: str | None, init_kwargs: Mapping | None, source=""
) -> Config:
    """The static network config from a preconditioner class name and its `_init_kwargs`."""
    where = f"{source}: " if source else ""
    if class_name is None or init_kwargs is None:
        raise BackboneError(
            f"{where}the checkpoint does not record its architecture (no network object with "
            "_init_kwargs). Give an NVIDIA network pickle, or a folder written by "
            "`python -m aid_jax.port`."
        )
    try:
        if class_name in edm.PRECONDS:
            return edm.EDMConfig.from_init_kwargs(class_name, init_kwargs)
        if class_name == "Precond":
            return edm2.EDM2Config.from_init_kwargs(dict(init_kwargs))
    except (TypeError, ValueError) as e:
        raise BackboneError(f"{where}{e}") from e
    raise BackboneError(
        f"{where}unknown architecture {class_name!r}; supported: {list(edm.PRECONDS)} (EDM) and "
        "'Precond' (EDM2)"
    )


def family(config: Config):
    return edm2 if isinstance(config, edm2.EDM2Config) else edm


def class_name(config: Config) -> str:
    return "Precond" if isinstance(config, edm2.EDM2Config) else config.precond


def init_kwargs(config: Config) -> dict:
    if isinstance(config, edm2.EDM2Config):
        return {
            f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)
        }
    return config.init_kwargs()


def state_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    return family(config).state_shapes(config)


def num_params(config: Config) -> int:
    return family(config).num_params(config)


def describe_key_mismatch(expected: Mapping, state: Mapping) -> str:
    """'missing N key(s), e.g. [...]; unexpected M key(s), e.g. [...]', or '' when the key sets
    agree: the one wording of a state dict that does not fit an architecture."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
    if extra:
        parts.append(f"unexpected {len(extra)} key(s), e.g. {extra[:3]}")
    return "; ".join(parts)


def validate_state(state: Mapping[str, np.ndarray], config: Config, source: str = "") -> None:
    """Missing keys, extra keys and shape mismatches, each named with what was expected."""
    where = f"{source}: " if source else ""
    expected = state_shapes(config)
    mismatch = describe_key_mismatch(expected, state)
    if mismatch:
        raise BackboneError(
            f"{where}state dict does not fit {class_name(config)} with the recorded architecture "
            f"({mismatch}). Is this the checkpoint the architecture arguments describe?"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != tuple(shape):
            raise BackboneError(
                f"{where}tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)} "
                "for the recorded architecture"
            )
    if isinstance(config, edm.EDMConfig):
        try:
            edm.check_buffers(state, config, source or "checkpoint")
        except ValueError as e:
            raise BackboneError(str(e)) from e


def params_from_state(
    state: Mapping[str, np.ndarray], config: Config, source: str = "", *, consume: bool = False
) -> dict:
    """Validated torch state dict -> float32 params pytree (NHWC layouts, torch-mirroring names).

    `consume=True` empties `state` as it converts (EDM family), to halve peak memory.
    """
    validate_state(state, config, source)
    if isinstance(config, edm2.EDM2Config):
        return edm2.params_from_state(state, config)
    return edm.to_params(state, config, consume=consume)


def init_params(key: jax.Array, config: Config) -> dict:
    """Random parameters of the right structure (benchmarks, smoke configs)."""
    return params_from_state(family(config).init_state(key, config), config)


def denoise(
    params, x, sigma, labels=None, *, config: Config, compute_dtype=jnp.float32
) -> jax.Array:
    """D(x; σ): x [B, H, W, C] float32 NHWC, sigma [B] (or scalar), labels [B, label_dim] or None.

    Shapes are checked at trace time, so the checks cost nothing under `jax.jit`; so is `params`
    against `config` (`check_params`: names and shapes, the first mismatch named), which every
    caller passes through. `compute_dtype` (float32 or bfloat16) is the dtype inside the network
    body; the preconditioning and D are float32 either way.
    """
    check_params(params, config)
    res, ch, label_dim = _io_dims(config)
    if x.ndim != 4 or x.shape[1:] != (res, res, ch):
        raise BackboneError(
            f"x has shape {tuple(x.shape)}; this backbone expects [B, {res}, {res}, {ch}] (NHWC)"
        )
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    if labels is not None:
        if not label_dim:
            raise BackboneError("labels were given but this backbone is unconditional")
        if (
            labels.ndim != 2
            or labels.shape[1] != label_dim
            or labels.shape[0] not in (1, x.shape[0])
        ):
            raise BackboneError(
                f"labels have shape {tuple(labels.shape)}; expected [B, {label_dim}] one-hot"
            )
    if isinstance(config, edm2.EDM2Config):
        return edm2.denoise(params, x, sigma, labels, config, compute_dtype)
    return edm.denoise(params, x, sigma, labels, config, compute_dtype)


def prepare_labels(labels, label_dim: int, batch: int) -> jax.Array | None:
    """Class labels of an inpainting call in the form `denoise` takes; the one set of rules every
    entry point (`baselines.make_inpainter`, `aid_jax.inpaint`, VIPaint, the harness) applies.

    Accepted `labels`:
      * integer class ids `[batch]` in [0, label_dim), or one int for the whole batch -> one-hot
        rows (float ids with integral values, e.g. 3.0, count as ids);
      * `[batch, label_dim]` one-hot or soft rows (any finite numbers); all-zero rows are the
        backbone's unconditional zero class vector (what `denoise(..., labels=None)` uses).

    Returns float32 `[batch, label_dim]`, or None for an unconditional backbone (label_dim 0)
    called without labels. Raises `BackboneError` (a ValueError) saying what to pass: labels
    missing on a class-conditional backbone, labels given to an unconditional one, ids out of
    range or not integers, a wrong batch size or shape. Runs on the host; traced arrays (inside
    `jax.jit`) get the shape and dtype checks only.
    """
    label_dim = int(label_dim or 0)
    batch = int(batch)
    if labels is None:
        if label_dim:
            raise BackboneError(
                f"this backbone is class-conditional ({label_dim} classes): pass labels=... "
                f"(integer class ids [{batch}] or one-hot rows [{batch}, {label_dim}]; "
                f"np.zeros(({batch}, {label_dim})) for its unconditional zero class vector)"
            )
        return None
    if not label_dim:
        raise BackboneError(
            "this backbone is unconditional (label_dim 0) and takes no class labels: drop labels="
        )
    traced = isinstance(labels, jax.core.Tracer)
    a = labels if traced else np.asarray(labels)
    integer = np.issubdtype(a.dtype, np.integer)
    if a.dtype == bool or not (integer or np.issubdtype(a.dtype, np.floating)):
        raise BackboneError(
            f"labels have dtype {a.dtype}; pass integer class ids [{batch}] or float one-hot "
            f"rows [{batch}, {label_dim}]"
        )
    if a.ndim == 0:  # one class for the whole batch
        a = (jnp if traced else np).broadcast_to(a, (batch,))
    if a.ndim == 1:
        if a.shape[0] != batch:
            raise BackboneError(
                f"labels have {a.shape[0]} class ids for a batch of {batch} images: give one id "
                f"per image (shape [{batch}]) or a single int"
            )
        if traced:
            if not integer:
                raise BackboneError(
                    "float class ids cannot be checked inside jax.jit: pass integer ids or "
                    f"one-hot rows [{batch}, {label_dim}]"
                )
            return jax.nn.one_hot(a, label_dim, dtype=jnp.float32)
        if not integer and not (np.isfinite(a).all() and (a == np.round(a)).all()):
            bad = a[~(np.isfinite(a) & (a == np.round(a)))][:3].tolist()
            raise BackboneError(
                f"labels are float class ids with non-integer values ({bad}); pass integer ids "
                f"in [0, {label_dim}) or one-hot rows [{batch}, {label_dim}]"
            )
        if a.size and (a.min() < 0 or a.max() >= label_dim):
            raise BackboneError(
                f"class ids must lie in [0, {label_dim}) for this backbone, got "
                f"{a.min():g}..{a.max():g}"
            )
        return jnp.asarray(np.eye(label_dim, dtype=np.float32)[a.astype(np.int64)])
    if a.ndim == 2 and a.shape == (batch, label_dim):
        if traced:
            return a.astype(jnp.float32)
        if not np.isfinite(a).all():
            raise BackboneError("labels contain NaN or inf; one-hot rows must be finite")
        return jnp.asarray(a.astype(np.float32))
    raise BackboneError(
        f"labels have shape {tuple(a.shape)}; expected class ids [{batch}] or one-hot rows "
        f"[{batch}, {label_dim}] for a batch of {batch} images"
    )


def make_sampler(config: Config, sampler_config, labels=None):
    """A jitted `draw(params, latents, key=None) -> images` running an EDM sampler on this
    backbone. Parameters are an argument, not closure constants, so large backbones are not
    baked into the compiled program; it compiles once per latents shape."""
    from aid_jax import sampling

    @jax.jit
    def draw(params, latents, key=None):
        def denoise_fn(x, sigma):
            return denoise(params, x, sigma, labels, config=config)

        return sampling.sample(denoise_fn, latents, key, config=sampler_config).x

    return draw


def _io_dims(config: Config) -> tuple[int, int, int]:
    return config.img_resolution, config.img_channels, config.label_dim


# ---------------------------------------------------------------------------------------------
# Backbone objects, porting and loading.


@dataclasses.dataclass
class Backbone:
    """A frozen denoiser: `params` (float32 pytree), static `config`, provenance `manifest`."""

    params: dict
    config: Config
    manifest: dict

    def __post_init__(self):
        self._denoise = jax.jit(functools.partial(denoise, config=self.config))

    @property
    def sigma_min(self) -> float:
        return float(getattr(self.config, "sigma_min", 0.0))

    @property
    def sigma_max(self) -> float:
        return float(getattr(self.config, "sigma_max", float("inf")))

    @functools.cached_property
    def params_sha256(self) -> str:
        """sha256 of the parameters (the manifest's, else computed once): what a module trained
        against this backbone records and checks."""
        return self.manifest.get("params_sha256") or tree_sha256(self.params)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        res, ch, _ = _io_dims(self.config)
        return res, res, ch

    def denoise(self, x, sigma, labels=None) -> jax.Array:
        """D(x; σ) with x [B, H, W, C] NHWC float32 and σ of shape [B] (jit-compiled)."""
        return self._denoise(self.params, jnp.asarray(x, jnp.float32), sigma, labels)

    def denoise_fn(self, labels=None):
        """A closure `D(x, sigma)` for samplers.

        It captures the parameters, so a jitted caller bakes them in as constants: fine for
        small backbones. For large ones, pass `params` as a jit argument and build the closure
        inside (as `aid_jax.generate` does).
        """
        params, config = self.params, self.config
        return lambda x, sigma: denoise(params, x, sigma, labels, config=config)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def backbone_from_checkpoint(path: str | os.PathLike, *, network_key: str = "ema") -> Backbone:
    """Read an NVIDIA `.pkl` (or a torch/safetensors state dict with its architecture) safely."""
    from aid_jax.backbones.checkpoint_reader import read_checkpoint

    path = pathlib.Path(path)
    ckpt = read_checkpoint(path, network_key=network_key)
    config = config_from_checkpoint(ckpt.class_name, ckpt.init_kwargs, source=str(path))
    state, ckpt.state = ckpt.state, None
    dtypes = sorted({str(np.asarray(v).dtype) for v in state.values()})
    num_tensors = len(state)
    params = params_from_state(state, config, source=str(path), consume=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_name": path.name,
        "source_format": ckpt.format,
        "sha256": ckpt.extras.get("sha256") or _sha256(path),
        "class_name": class_name(config),
        "init_kwargs": init_kwargs(config),
        "num_params": num_params(config),
        "num_tensors": num_tensors,
        "source_dtypes": dtypes,
        "param_dtype": "float32",
    }
    for name in ("loss_fn", "dataset_kwargs"):
        if name in ckpt.extras:
            manifest[name] = _jsonable(ckpt.extras[name], str(path))
    return Backbone(params=params, config=config, manifest=manifest)


def tree_sha256(params) -> str:
    """sha256 over the params' key paths, shapes, dtypes and bytes (independent of Orbax's
    file layout), so a loaded backbone can be checked against its manifest."""
    h = hashlib.sha256()
    for key, value in sorted(_flatten(params)):
        a = np.ascontiguousarray(np.asarray(value))
        h.update(f"{key}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# What a checkpoint may put into manifest.json (its loss_fn and dataset_kwargs): values counted
# with repetition (a shared list counts each time it appears, as JSON writes it), and nesting.
MAX_MANIFEST_VALUES = 100_000
MAX_MANIFEST_DEPTH = 64


def _jsonable(obj, source: str = ""):
    """A JSON-ready copy of checkpoint data (dicts, lists, scalars; arrays as lists).

    The copy is a tree, as JSON is: shared containers are copied each time they appear, so the
    values are counted (with repetition) and refused beyond :data:`MAX_MANIFEST_VALUES` — a
    ~1 KB "billion laughs" list (the same list 10x per level, 40 levels) would otherwise expand
    until memory runs out — as is nesting beyond :data:`MAX_MANIFEST_DEPTH`.
    """
    left = [MAX_MANIFEST_VALUES]

    def refuse(what: str, limit: str):
        return BackboneError(
            f"{source or 'checkpoint'}: the {what} of the checkpoint's metadata for the manifest "
            f"(loss_fn, dataset_kwargs), counted as JSON writes them, exceed the loader's limit "
            f"{limit}; the file is corrupt or hostile"
        )

    def convert(x, depth: int):
        left[0] -= x.size if isinstance(x, np.ndarray) else 1
        if left[0] < 0:
            raise refuse("values", f"MAX_MANIFEST_VALUES = {MAX_MANIFEST_VALUES:,}")
        if depth > MAX_MANIFEST_DEPTH:
            raise refuse("nesting", f"MAX_MANIFEST_DEPTH = {MAX_MANIFEST_DEPTH}")
        if isinstance(x, Mapping):
            return {str(k): convert(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [convert(v, depth + 1) for v in x]
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, float | int | str | bool) or x is None:
            return x
        return repr(x)

    return convert(obj, 0)


def save_backbone(backbone: Backbone, directory: str | os.PathLike) -> pathlib.Path:
    """Write `directory/params` (Orbax) and `directory/manifest.json`."""
    from aid_jax import checkpoint

    directory = pathlib.Path(directory)
    if (directory / MANIFEST).exists() or (directory / PARAMS_DIR).exists():
        raise FileExistsError(f"{directory} already holds a ported backbone; choose a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint.save_pytree(directory / PARAMS_DIR, backbone.params)
    manifest = dict(backbone.manifest)
    manifest["ported_param_count"] = int(sum(np.size(a) for a in jax.tree.leaves(backbone.params)))
    manifest["params_sha256"] = tree_sha256(backbone.params)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return directory


def load_ported(directory: str | os.PathLike) -> Backbone:
    """Load a folder written by `save_backbone` / `python -m aid_jax.port`."""
    from aid_jax import checkpoint

    directory = pathlib.Path(directory)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BackboneError(
            f"{directory}: no {MANIFEST}; this is not a ported backbone folder. Create one with "
            f"`python -m aid_jax.port SRC.pkl {directory}`"
        ) from None
    except json.JSONDecodeError as e:
        raise BackboneError(
            f"{manifest_path}: corrupt manifest ({e}); port the source again"
        ) from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackboneError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, this aid_jax "
            f"reads {FORMAT_VERSION}; port the source again"
        )
    config = config_from_checkpoint(
        manifest.get("class_name"), manifest.get("init_kwargs"), source=str(manifest_path)
    )
    try:
        # Only the metadata is read here; the declared names and shapes (and chunk shapes) must
        # be the architecture's before anything is allocated.
        declared = checkpoint.read_metadata(directory / PARAMS_DIR)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        raise BackboneError(
            f"{directory / PARAMS_DIR}: cannot restore parameters ({type(e).__name__}: {e}). "
            "The folder is incomplete or corrupt; port the source again."
        ) from e
    _check_params(declared, config, directory / PARAMS_DIR)
    try:
        params = checkpoint.restore_pytree(directory / PARAMS_DIR, declared)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        raise BackboneError(
            f"{directory / PARAMS_DIR}: cannot restore parameters ({type(e).__name__}: {e}). "
            "The folder is incomplete or corrupt; port the source again."
        ) from e
    _check_params(params, config, directory / PARAMS_DIR)
    expected_sha = manifest.get("params_sha256")
    if expected_sha is not None and tree_sha256(params) != expected_sha:
        raise BackboneError(
            f"{directory / PARAMS_DIR}: parameters do not match the manifest's params_sha256; "
            "the files are corrupt. Port or export the backbone again."
        )
    return Backbone(params=params, config=config, manifest=manifest)


def _check_params(params, config: Config, source) -> None:
    """Restored params must have exactly the structure and shapes the manifest's config implies."""
    mismatch = _first_mismatch(params, config)
    if mismatch is not None:
        raise BackboneError(
            f"{source}: {mismatch} for the architecture in the manifest. The folder is "
            "inconsistent; port the source again."
        )


def check_params(params, config: Config, name: str = "backbone params") -> None:
    """``params`` must be the parameter tree ``config`` describes: the same names (nested
    dicts) and shapes. Else ``BackboneError`` naming the first mismatch (a missing, unexpected or
    differently shaped parameter, in the architecture's order). Static (names and shapes only),
    so it also runs on traced parameters, at trace time."""
    mismatch = _first_mismatch(params, config)
    if mismatch is not None:
        res, ch, label_dim = _io_dims(config)
        arch = f"{class_name(config)} {res}x{res}x{ch}" + (
            f", {label_dim} classes" if label_dim else ""
        )
        raise BackboneError(
            f"{name} do not fit the backbone config ({arch}, "
            f"{len(dict(_flatten(param_shapes(config))))} tensors): {mismatch}. Pass the "
            "parameters of the network the config describes (Backbone.params, or "
            "backbones.init_params(key, config))."
        )


def _first_mismatch(params, config: Config) -> str | None:
    """How ``params`` first differs from ``param_shapes(config)`` (names, then shapes), or None."""
    if not isinstance(params, Mapping):
        return f"got {type(params).__name__} {params!r:.60}, expected a nested dict of arrays"
    expected = dict(_flatten(param_shapes(config)))
    found = dict(_flatten(params))
    if not found:
        return "got an empty tree"
    for key, shape in expected.items():
        if key not in found:
            return f"parameter {key} is missing"
        got = tuple(np.shape(found[key]))
        if got != tuple(shape):
            return f"parameter {key} has shape {got}, expected {tuple(shape)}"
    for key in found:
        if key not in expected:
            return f"parameter {key} is not part of this architecture (unexpected)"
    return None


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def param_shapes(config: Config) -> dict:
    """Nested dict of the params' shapes, derived from the torch shapes by the conversion rules
    (OIHW -> HWIO, [out, in] -> [in, out], resample-filter buffers dropped)."""
    tree: dict = {}
    for key, shape in state_shapes(config).items():
        parts = key.split(".")
        if parts[-1] == "resample_filter":
            continue
        if parts[-1] == "weight" and len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])
        elif parts[-1] == "weight" and len(shape) == 2:
            shape = (shape[1], shape[0])
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tuple(shape)
    return tree


def load_backbone(path: str | os.PathLike, *, network_key: str = "ema") -> Backbone:
    """Load a frozen backbone from a ported folder or a raw checkpoint (never executing its code).

    Args:
      path: a folder written by `python -m aid_jax.port` (holding `manifest.json`), or an NVIDIA
        network pickle (`edm-*.pkl`, `edm2-*.pkl`).
      network_key: which network of an NVIDIA pickle to load (`'ema'`).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        return load_ported(path)
    if not path.exists():
        raise BackboneError(
            f"{path}: no such file or folder. Give a ported folder (python -m aid_jax.port) or an "
            "NVIDIA .pkl checkpoint."
        )
    return backbone_from_checkpoint(path, network_key=network_key)


def backbone_from_config(backbone_config) -> Backbone:
    """The backbone a run config names: ``path`` (ported folder or NVIDIA pickle), or — for smoke
    tests of the full architectures — ``random = {precond, init_kwargs, seed}``, a randomly
    initialised network (``manifest['random']`` records the recipe, so it can be rebuilt)."""
    cfg = (
        backbone_config.to_dict() if hasattr(backbone_config, "to_dict") else dict(backbone_config)
    )
    if cfg.get("path"):
        return load_backbone(cfg["path"])
    spec = cfg.get("random")
    if not spec:
        raise BackboneError(
            "config.backbone needs a path (a ported folder or an NVIDIA .pkl, e.g. "
            "edm-afhqv2-64x64-uncond-vp.pkl) or a random={precond, init_kwargs, seed} recipe"
        )
    config = config_from_checkpoint(spec["precond"], dict(spec["init_kwargs"]))
    params = init_params(jax.random.key(int(spec.get("seed", 0))), config)
    manifest = dict(
        source_name=f"random {spec['precond']} (seed {int(spec.get('seed', 0))})",
        random=_jsonable(spec),
        params_sha256=tree_sha256(params),
    )
    return Backbone(params=params, config=config, manifest=manifest)
