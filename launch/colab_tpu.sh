#!/usr/bin/env bash
# In a Colab TPU runtime (after `pip install -e .` and `pip install "jax[tpu]"` matching the
# pinned jax version): port a checkpoint, then sample with it. The jitted code shards over all
# TPU cores through NamedSharding; nothing here is TPU-specific.
#   bash launch/colab_tpu.sh /content/edm-afhqv2-64x64-uncond-vp.pkl
set -euo pipefail
src=${1:?give the path of an NVIDIA .pkl}
dst=ported_weights/$(basename "${src%.pkl}")
[ -f "$dst/manifest.json" ] || python -m aid_jax.port "$src" "$dst"
python -m aid_jax.main --config=configs/sample.py --workdir=runs/colab \
  --config.backbone.path="$dst" --config.sampler.num_steps=40 --config.sample.batch_size=64 \
  --config.sample.num_images=64
