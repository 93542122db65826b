#!/usr/bin/env bash
# The Colab TPU workflow is launch/colab_tpu.ipynb (install, choose or port a backbone, train AID
# for a few steps, inpaint an upload and a test batch; `SMOKE = True` in its first cell runs it on
# the CPU in seconds). This script is its command-line half for a TPU VM or a Colab terminal:
# install with JAX's TPU extra, port an NVIDIA pickle, then sample with it. The jitted code shards
# over all TPU cores through NamedSharding; nothing here is TPU-specific.
#   bash launch/colab_tpu.sh /content/edm-afhqv2-64x64-uncond-vp.pkl
set -euo pipefail
src=${1:?give the path of an NVIDIA .pkl}
pip install -q -e '.[tpu]'
dst=ported_weights/$(basename "${src%.pkl}")
[ -f "$dst/manifest.json" ] || python -m aid_jax.port "$src" "$dst"
python -m aid_jax.main --config=configs/sample.py --workdir=runs/colab \
  --config.backbone.path="$dst" --config.sampler.num_steps=40 --config.sample.batch_size=64 \
  --config.sample.num_images=64
