"""SD VAE files: diffusers folders in, ported Orbax folders out and back, never running code.

* ``read_diffusers_vae(folder)``: ``config.json`` + ``diffusion_pytorch_model.safetensors``
  (or the ``.bin`` torch file, read by the same safe reader) -> config, state, manifest.
* ``vae_from_folder(folder)`` -> ``sd_vae.VAE``; ``save_vae(vae, dst)`` writes ``dst/params``
  (Orbax, float32, JAX layouts) and ``dst/manifest.json`` in the manifest style of ported
  backbones (``loader.save_backbone``); ``load_vae(path)`` reads either kind of folder and, for a
  ported one, checks the declared shapes before allocating and the params' sha256 after.

``python -m aid_jax.port VAE_FOLDER DST`` calls ``port_vae``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from aid_jax.backbones import loader, sd_vae
from aid_jax.backbones.checkpoint_reader import read_checkpoint
from aid_jax.backbones.sd_vae import VAE, LatentScaling, VAEConfig, VAEError

CONFIG = "config.json"
# diffusers' weight file names, in the order diffusers itself prefers them.
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CLASS_NAME = "AutoencoderKL"
MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is < 1 KB


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """A folder holding a diffusers ``config.json`` (and no ``manifest.json`` of a port)."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and not (path / loader.MANIFEST).exists()


def _read_config(path: pathlib.Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise VAEError(f"{path}: {size} bytes, too large for a diffusers config.json")
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VAEError(
            f"{path}: no such file. A diffusers VAE folder holds config.json and "
            f"{WEIGHTS[0]} (e.g. a download of stabilityai/sd-vae-ft-mse)."
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise VAEError(
            f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); download the VAE "
            "folder again"
        ) from None
    if not isinstance(config, dict):
        raise VAEError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_diffusers_vae(folder: str | os.PathLike) -> tuple[VAEConfig, dict, dict]:
    """(config, state in diffusers key names and torch layouts, manifest) of a diffusers folder.

    Every problem raises ``VAEError`` naming the file (and the key) before anything compiles.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise VAEError(
            f"{folder}: not a folder. Give a diffusers VAE folder (config.json + {WEIGHTS[0]})."
        )
    config_path = folder / CONFIG
    raw_config = _read_config(config_path)
    config = VAEConfig.from_diffusers_config(raw_config, source=str(config_path))
    weights = next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise VAEError(
            f"{folder}: no weights file; expected {' or '.join(WEIGHTS)} next to config.json "
            "(variants such as *.fp16.safetensors: rename the one you want)"
        )
    ckpt = read_checkpoint(weights)  # safe reader: no torch, no code from the file
    state, renamed = sd_vae.canonical_state(ckpt.state)
    sd_vae.validate_state(state, config, source=str(weights))
    manifest = {
        "format_version": loader.FORMAT_VERSION,
        "source_name": folder.name,
        "source_format": f"diffusers-{ckpt.format}",
        "source_files": [CONFIG, weights.name],
        "sha256": ckpt.extras.get("sha256"),
        "config_sha256": _file_sha256(config_path),
        "class_name": CLASS_NAME,
        "init_kwargs": _config_kwargs(config),
        "diffusers_config": loader._jsonable(raw_config, str(config_path)),
        "num_params": sd_vae.num_params(config),
        "num_tensors": len(state),
        "source_dtypes": sorted({str(np.asarray(v).dtype) for v in state.values()}),
        "param_dtype": "float32",
        "downsample_factor": config.downsample_factor,
    }
    if renamed:
        manifest["legacy_attention_keys"] = len(renamed)
    return config, state, manifest


def _file_sha256(path: pathlib.Path) -> str:
    return loader._sha256(path)


def _config_kwargs(config: VAEConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_diffusers_config().items() if k != "_class_name"}


def config_from_manifest(manifest: dict, source: str = "") -> VAEConfig:
    """The ``VAEConfig`` a ported VAE's manifest records."""
    if manifest.get("class_name") != CLASS_NAME:
        raise VAEError(
            f"{source}: class_name {manifest.get('class_name')!r} is not a VAE ({CLASS_NAME}); "
            "load a ported denoiser with aid_jax.load_backbone"
        )
    kwargs = manifest.get("init_kwargs")
    if not isinstance(kwargs, dict):
        raise VAEError(f"{source}: the manifest has no init_kwargs; port the VAE again")
    return VAEConfig.from_diffusers_config({"_class_name": CLASS_NAME, **kwargs}, source)


def vae_from_folder(folder: str | os.PathLike, scaling: LatentScaling | None = None) -> VAE:
    """A ``VAE`` from a diffusers folder; ``scaling`` None: EDM2's sd-vae-ft-mse scaling."""
    config, state, manifest = read_diffusers_vae(folder)
    params = sd_vae.params_from_state(state, config, source=str(folder))
    return VAE(params=params, config=config, manifest=manifest, scaling=scaling)


def save_vae(vae: VAE, directory: str | os.PathLike) -> pathlib.Path:
    """Write ``directory/params`` (Orbax) and ``directory/manifest.json`` (refuses to overwrite)."""
    from aid_jax import checkpoint

    directory = pathlib.Path(directory)
    if (directory / loader.MANIFEST).exists() or (directory / loader.PARAMS_DIR).exists():
        raise FileExistsError(f"{directory} already holds a ported model; choose a new folder")
    sd_vae.check_params(vae.params, vae.config)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint.save_pytree(directory / loader.PARAMS_DIR, vae.params)
    manifest = dict(vae.manifest)
    manifest["ported_param_count"] = int(sum(np.size(a) for a in jax.tree.leaves(vae.params)))
    manifest["params_sha256"] = loader.tree_sha256(vae.params)
    manifest["latent_scaling"] = vae.scaling.to_json()
    (directory / loader.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return directory


def port_vae(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Read the diffusers folder ``src`` safely and write the ported folder ``dst``."""
    vae = vae_from_folder(src)
    save_vae(vae, dst)
    return vae.manifest


def load_ported_vae(directory: str | os.PathLike, scaling: LatentScaling | None = None) -> VAE:
    """Load a folder written by ``save_vae`` / ``python -m aid_jax.port``; ``scaling`` None: the
    manifest's ``latent_scaling`` (what ``save_vae`` recorded)."""
    from aid_jax import checkpoint

    directory = pathlib.Path(directory)
    manifest_path = directory / loader.MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise VAEError(
            f"{directory}: no {loader.MANIFEST}; not a ported VAE folder. Create one with "
            f"`python -m aid_jax.port VAE_FOLDER {directory}`"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VAEError(f"{manifest_path}: corrupt manifest ({e}); port the VAE again") from e
    if not isinstance(manifest, dict) or manifest.get("format_version") != loader.FORMAT_VERSION:
        raise VAEError(
            f"{manifest_path}: not a format_version {loader.FORMAT_VERSION} manifest; port the "
            "VAE again"
        )
    config = config_from_manifest(manifest, str(manifest_path))
    params_dir = directory / loader.PARAMS_DIR
    like = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, np.float32),
        sd_vae.param_shapes(config),
        is_leaf=lambda s: isinstance(s, tuple),
    )
    try:
        # Declared names and shapes are checked against the architecture before allocating.
        params = checkpoint.restore_pytree(params_dir, like)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        raise VAEError(
            f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e}). The folder is "
            "incomplete or corrupt; port the VAE again."
        ) from e
    sd_vae.check_params(params, config, f"{params_dir}: parameters")
    expected = manifest.get("params_sha256")
    if expected is not None and loader.tree_sha256(params) != expected:
        raise VAEError(
            f"{params_dir}: parameters do not match the manifest's params_sha256; the files are "
            "corrupt. Port the VAE again."
        )
    if scaling is None and manifest.get("latent_scaling") is not None:
        recorded = manifest["latent_scaling"]
        try:
            scaling = LatentScaling(tuple(recorded["scale"]), tuple(recorded["bias"]))
        except (TypeError, KeyError, ValueError) as e:
            raise VAEError(
                f"{manifest_path}: malformed latent_scaling ({type(e).__name__}: {e}); expected "
                "{'scale': [...], 'bias': [...]}"
            ) from None
    return VAE(params=params, config=config, manifest=manifest, scaling=scaling)


def load_vae(path: str | os.PathLike, scaling: LatentScaling | None = None) -> VAE:
    """A VAE from a ported folder (``manifest.json``) or a diffusers folder (``config.json``)."""
    path = pathlib.Path(path)
    if (path / loader.MANIFEST).is_file():
        return load_ported_vae(path, scaling)
    if path.is_dir():
        return vae_from_folder(path, scaling)
    raise VAEError(
        f"{path}: no such folder. Give a diffusers VAE folder (config.json + {WEIGHTS[0]}) or a "
        "folder written by `python -m aid_jax.port`."
    )
