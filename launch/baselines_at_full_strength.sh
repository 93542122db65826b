#!/usr/bin/env bash
# Issue 14 end to end: tune every baseline per NFE budget on the validation images, then the
# headline comparison with the chosen options (1,000 test images × five masks, paired intervals,
# grids, PNG export). Both steps resume where they stopped (finished tuning groups and finished
# evaluation jobs are kept), so the script can be run again after an interruption, on any
# machine that has the repository (the tuning groups finished so far are committed under
# benchmarks/results/tune/).
#
#   bash launch/baselines_at_full_strength.sh            # CPU: many hours at budgets 50 and 100
#   BATCH=500 bash launch/baselines_at_full_strength.sh  # a GPU: minutes
#
# Outputs: benchmarks/results/tune/{tuning.md,tuning.json}, configs/tuned_fashion_mnist.py,
# runs/headline/{results.md,results.json,grid_<mask>.png,quality_vs_nfe.png,png/}.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${BATCH:-64}
BUDGETS=${BUDGETS:-5,10,20,50,100}
python -m aid_jax.main --config=configs/tune_fashion_mnist.py \
  --workdir=benchmarks/results/tune --config.tune.budgets="(${BUDGETS})" \
  --config.eval.batch_size="${BATCH}"
python -m aid_jax.main --config=configs/eval_fashion_mnist.py:tuned \
  --workdir=runs/headline --config.eval.batch_size="${BATCH}"
