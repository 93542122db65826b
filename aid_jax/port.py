"""Port an NVIDIA EDM/EDM2 checkpoint or a diffusers VAE folder to Orbax, running none of its code.

    python -m aid_jax.port edm-afhqv2-64x64-uncond-vp.pkl ported_weights/edm-afhqv2-64x64-uncond-vp
    python -m aid_jax.port sd-vae-ft-mse/ ported_weights/sd-vae-ft-mse

DST receives `params/` (Orbax PyTree checkpoint, float32, NHWC layouts) and `manifest.json`
(source name, sha256, architecture kwargs, parameter count, dtypes). Load a denoiser with
`aid_jax.load_backbone(DST)`, a VAE (a diffusers `AutoencoderKL` folder: `config.json` +
`diffusion_pytorch_model.safetensors`) with `aid_jax.backbones.vae_loader.load_vae(DST)`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from aid_jax.backbones import loader, vae_loader
from aid_jax.backbones.checkpoint_reader import CheckpointError


def _vae_folder(src: str) -> pathlib.Path | None:
    """The diffusers VAE folder `src` names: the folder itself, or the folder of its weights."""
    path = pathlib.Path(src)
    if path.is_dir():
        return path
    if path.name in vae_loader.WEIGHTS and (path.parent / vae_loader.CONFIG).is_file():
        return path.parent
    return None


def port(src: str, dst: str, *, network_key: str = "ema") -> dict:
    """Read `src` safely, convert it and write `dst`; returns the manifest. `src` is an NVIDIA
    pickle (or torch/safetensors file with its architecture), or a diffusers VAE folder."""
    folder = _vae_folder(src)
    if folder is not None:
        return vae_loader.port_vae(folder, dst)
    backbone = loader.backbone_from_checkpoint(src, network_key=network_key)
    loader.save_backbone(backbone, dst)
    return backbone.manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aid_jax.port", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "src",
        help="NVIDIA network pickle (.pkl), torch/safetensors checkpoint, or diffusers VAE folder",
    )
    parser.add_argument("dst", help="output folder (must not already hold a ported backbone)")
    parser.add_argument("--network-key", default="ema", help="network entry of the pickle (ema)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = port(args.src, args.dst, network_key=args.network_key)
    except (CheckpointError, loader.BackboneError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"ported {manifest['source_name']} ({manifest['class_name']}, "
        f"{manifest['num_params']:,} parameters, sha256 {manifest['sha256'][:12]}…) to {args.dst} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
