#!/usr/bin/env bash
# Sample from a backbone on this machine (CPU or a local GPU).
#   bash launch/local.sh [extra --config.* overrides]
set -euo pipefail
python -m aid_jax.main --config=configs/sample.py --workdir=runs/sample "$@"
