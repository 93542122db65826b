"""Port an NVIDIA EDM/EDM2 checkpoint to an Orbax folder, without running any code from it.

    python -m aid_jax.port edm-afhqv2-64x64-uncond-vp.pkl ported_weights/edm-afhqv2-64x64-uncond-vp

DST receives `params/` (Orbax PyTree checkpoint, float32, NHWC layouts) and `manifest.json`
(source name, sha256, architecture kwargs, parameter count, dtypes). Load it with
`aid_jax.load_backbone(DST)`.
"""

from __future__ import annotations

import argparse
import sys
import time

from aid_jax.backbones import loader
from aid_jax.backbones.checkpoint_reader import CheckpointError


def port(src: str, dst: str, *, network_key: str = "ema") -> dict:
    """Read `src` safely, convert it and write `dst`; returns the manifest."""
    backbone = loader.backbone_from_checkpoint(src, network_key=network_key)
    loader.save_backbone(backbone, dst)
    return backbone.manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aid_jax.port", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", help="NVIDIA network pickle (.pkl) or torch/safetensors checkpoint")
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
