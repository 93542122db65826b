"""Training cost of the amortized modules (issue 15, point 4): the shipped AID recipe against the
two shipped DEFT modules, in steps/s on the same core(s) in one run, and in backbone passes.

Each recipe trains ``--steps`` steps in a fresh process (the shared training loop, a temporary
workdir, validation and checkpoints off); its rate is the mean of the loop's own ``steps_per_s``
after the first (compiling) logging interval. The recipes run interleaved, ``--rounds`` times,
so a slow phase of the machine hits all of them; the table gives the median rate per recipe.

Backbone passes per training step follow from the config (no measurement needed):
* AID, the shipped recipe (configs/fashion_mnist.py, trained 1,000 steps as
  ported_weights/aid_fashion_mnist): B × K forward passes through the deployed K-step sampler and
  as many backward passes (the actor is trained with exact gradients through it), plus the LPIPS
  network once forward and backward per sample;
* DEFT (configs/deft_fashion_mnist.py and :small, 5,000 steps each): B forward passes (the
  unconditional x̂0 that the h-network takes as input), no backward pass through the backbone.

    taskset -c 0 env PYTHONPATH=. python benchmarks/training_cost.py \
        --json benchmarks/results/training_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

from benchmarks import children

ROOT = pathlib.Path(__file__).resolve().parent.parent

# recipe -> (config module, variant, trainer module, steps the shipped module was trained for)
RECIPES = {
    "aid": ("fashion_mnist", None, "aid_jax.aid.train", 1000),
    "deft": ("deft_fashion_mnist", None, "aid_jax.deft.train", 5000),
    "deft_small": ("deft_fashion_mnist", "small", "aid_jax.deft.train", 5000),
}

CHILD = r"""
import importlib, json, pathlib, sys
import jax
sys.path.insert(0, ".")
module, variant, trainer, steps, workdir = sys.argv[1:6]
from aid_jax import sharding, train_loop
config = importlib.import_module("configs." + module).get_config(variant or None)
config.train.update(num_steps=int(steps), log_every=2, checkpoint_every=10**6, eval_every=0)
config.train.val_images = 8
if "tensorboard" in config.train:
    config.train.tensorboard = False
mesh = sharding.make_mesh(jax.devices())
train_loop.run(importlib.import_module(trainer).make_trainer(config, mesh), workdir)
logs = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
rates = [r["steps_per_s"] for r in logs if "steps_per_s" in r][1:]
print(json.dumps(dict(steps_per_s=sum(rates) / len(rates))))
"""


def passes_per_step(name: str) -> dict:
    """Backbone forward/backward passes of one training step, from the recipe's config."""
    module, variant = RECIPES[name][:2]
    sys.path.insert(0, str(ROOT))
    import importlib

    config = importlib.import_module("configs." + module).get_config(variant)
    batch = config.train.batch_size
    if name == "aid":
        k = config.aid.num_steps
        backward = batch * k if config.train.actor == "backprop" else 0
        return dict(batch=batch, forward=batch * k, backward=backward)
    return dict(batch=batch, forward=batch, backward=0)


def measure(name: str, steps: int) -> float:
    module, variant, trainer, _ = RECIPES[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = children.run_json(
            CHILD, module, variant or "", trainer, steps, pathlib.Path(tmp) / "run", name=name
        )
    return out["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="aid,deft,deft_small")
    parser.add_argument("--steps", type=int, default=12, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    rates = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:  # interleaved: the machine's load hits every recipe alike
            rates[name].append(measure(name, args.steps))
    rows = []
    for name in names:
        per_step = passes_per_step(name)
        trained = RECIPES[name][3]
        rate = statistics.median(rates[name])
        rows.append(
            dict(
                recipe=name,
                steps_per_s=rate,
                rates=rates[name],
                shipped_steps=trained,
                wall_minutes=trained / rate / 60,
                **per_step,
                total_forward=trained * per_step["forward"],
                total_backward=trained * per_step["backward"],
            )
        )
    print(
        "| recipe | batch | backbone fwd / bwd per step | steps/s | shipped steps | "
        "training wall time | backbone fwd / bwd in all |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['batch']} | {r['forward']} / {r['backward']} | "
            f"{r['steps_per_s']:.2f} | {r['shipped_steps']:,} | {r['wall_minutes']:.0f} min | "
            f"{r['total_forward']:,} / {r['total_backward']:,} |"
        )
    if args.json:
        record = dict(
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            affinity=sorted(os.sched_getaffinity(0)),
            steps=args.steps,
            rounds=args.rounds,
            rows=rows,
        )
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
