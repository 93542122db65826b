"""Scaling (issue 19, point 4): AID training steps/s and AID inpainting images/s against the
number of devices, with the project's data parallelism (jit + NamedSharding over a one-axis mesh).

Each device count runs in a fresh process (``JAX_NUM_CPU_DEVICES`` on the CPU: fake devices
that share the machine's cores, so these figures measure the cost of partitioning and
collectives, not a speed-up; on a GPU/TPU host ``--platform`` picks the real devices, of which
the first n are used):

* training: the main job's recipe (configs/fashion_mnist.py: the backprop actor, batch 8 split
  over the devices) for ``--steps`` steps; steps/s from the loop's own log after the first
  (compiling) interval;
* inpainting: the shipped AID module (ported_weights/aid_fashion_mnist) at 10 NFE through the
  method registry, a batch of ``--batch`` images split over the devices, compiled once, the
  median of ``--repeats`` timed calls.

    PYTHONPATH=. python benchmarks/scaling.py --devices 1,2,4,8 \
        --json benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

from benchmarks import children

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = r"""
import json, pathlib, statistics, sys, time
import jax, numpy as np
sys.path.insert(0, ".")
n, steps, batch, repeats, workdir, platform_name = sys.argv[1:7]
n, steps, batch, repeats = int(n), int(steps), int(batch), int(repeats)
from aid_jax import backbones, methods, sharding
from aid_jax.aid import train
from configs import fashion_mnist
devices = jax.devices()[:n]
assert len(devices) == n, f"asked for {n} devices, have {len(jax.devices())}"
mesh = sharding.make_mesh(devices)

config = fashion_mnist.get_config()
config.train.update(num_steps=steps, log_every=2, checkpoint_every=10**6, eval_every=0)
config.train.val_images = 8
from aid_jax import train_loop
train_loop.run(train.make_trainer(config, mesh), workdir)
logs = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
rates = [r["steps_per_s"] for r in logs if "steps_per_s" in r][1:]

backbone = backbones.load_backbone("ported_weights/fashion_mnist_32")
res = methods.Resources(backbone=backbone, place=lambda p: sharding.replicate(p, mesh))
den = lambda p, x, s: backbones.denoise(p, x, s, config=backbone.config)
fn = methods.make_inpainter("aid", den, resources=res, num_steps=10,
                            checkpoint="ported_weights/aid_fashion_mnist", solver="euler")
params = fn.call_params(sharding.replicate(backbone.params, mesh))
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (batch, 32, 32, 1)).astype(np.float32)
m = np.ones_like(x); m[:, 8:24, 8:24] = 0
y = sharding.shard_batch(x * m, mesh); md = sharding.shard_batch(m, mesh)
keys = sharding.shard_batch(jax.random.split(jax.random.key(0), batch), mesh)
exe = fn.jitted.lower(params, y, md, keys).compile()
times = []
for _ in range(repeats):
    t = time.perf_counter(); jax.block_until_ready(exe(params, y, md, keys).x)
    times.append(time.perf_counter() - t)
print(json.dumps(dict(devices=n, train_steps_per_s=statistics.mean(rates),
                      inpaint_images_per_s=batch / statistics.median(times))))
"""


def run(n: int, args, platform_name: str) -> dict:
    env = dict(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(n)) if platform_name == "cpu" else {}
    with tempfile.TemporaryDirectory() as tmp:
        return children.run_json(
            CHILD,
            n,
            args.steps,
            args.batch,
            args.repeats,
            pathlib.Path(tmp) / "run",
            platform_name,
            env=env,
            name=f"{n} devices",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--platform", default="cpu", help="cpu (fake devices) | gpu | tpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = [run(int(n), args, args.platform) for n in args.devices.split(",")]
    base = rows[0]
    print("| devices | AID train steps/s | × 1 device | AID inpaint images/s | × 1 device |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['train_steps_per_s']:.3f} | "
            f"{r['train_steps_per_s'] / base['train_steps_per_s']:.2f} | "
            f"{r['inpaint_images_per_s']:.1f} | "
            f"{r['inpaint_images_per_s'] / base['inpaint_images_per_s']:.2f} |"
        )
    if args.json:
        record = dict(
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            platform=args.platform,
            steps=args.steps,
            batch=args.batch,
            rows=rows,
        )
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
