"""AID's training step on the CPU (issue 20, point 3): how much faster the project's convolution
input gradient makes it, whether the learning curve is unchanged, and where a step's time goes.

Two parts, each in fresh child processes (the convolution rule is fixed before anything traces):

* **speed and curve** — the main job's recipe (configs/fashion_mnist.py: the backprop actor,
  batch 8, K = 10) and the critic-based trainer defaults (``trainer_defaults()``, batch 32, the
  recipe issue 20 timed at 0.43 steps/s) trained ``--steps`` steps through the shared training
  loop under JAX's transpose rule for the convolution's input gradient and under
  ``layers.conv``'s own (a flipped-kernel correlation), the rules interleaved ``--rounds``
  times. Steps/s: the median of the loop's per-step rates after the first (compiling) step.
  Curve: the per-step training loss of both rules from the same seed, and its largest relative
  difference (the rules are the same function, so only float rounding may differ).
* **profile** — the pieces of the recipe's step timed alone (jitted, compiled first, median of
  ``--reps`` calls, the project's rule): the backbone's K-step forward, the controlled sampler's
  forward (backbone + actor), the objective's forward with Ψ's LPIPS, the gradient without and
  with LPIPS; shares of a whole step (its rate from the first part) by difference.

    taskset -c 0 env PYTHONPATH=. python benchmarks/aid_train_step.py \
        --json benchmarks/results/aid_train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

from benchmarks import children

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPES = ("backprop", "critic")

TRAIN_CHILD = r"""
import json, pathlib, sys
import jax
sys.path.insert(0, ".")
rule, recipe, steps, workdir = sys.argv[1:5]
from aid_jax.backbones import layers
if rule == "jax":
    layers.conv = layers._correlate  # the networks look `conv` up in layers at call time
from aid_jax import sharding, train_loop
from aid_jax.aid import train
from configs import fashion_mnist
config = (fashion_mnist.get_config() if recipe == "backprop" else fashion_mnist.trainer_defaults())
config.train.update(num_steps=int(steps), log_every=1, checkpoint_every=10**6, eval_every=0)
config.train.val_images = 8
config.train.tensorboard = False
train_loop.run(train.make_trainer(config, sharding.make_mesh(jax.devices())), workdir)
logs = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
rows = [r for r in logs if "steps_per_s" in r]
loss = "actor_loss" if recipe == "backprop" else "critic_loss"
print(json.dumps(dict(rates=[r["steps_per_s"] for r in rows], loss=[r[loss] for r in rows])))
"""


def _child(code: str, *args) -> dict:
    return children.run_json(code, *args, name=f"child {args}")


def train_run(rule: str, recipe: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return _child(TRAIN_CHILD, rule, recipe, steps, pathlib.Path(tmp) / "run")


def profile(reps: int) -> dict:
    """Seconds per call of each piece of the backprop recipe's step (this process)."""
    import jax
    import jax.numpy as jnp

    from aid_jax import backbones
    from aid_jax.aid import losses, model, train
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    backbone = backbones.backbone_from_config(config.backbone)
    cfg = train.aid_config(config, backbone.image_shape)
    actor_tx, critic_tx = train.make_optimizers(config)
    actor = train.init_state(config, cfg, actor_tx, critic_tx, jax.random.key(0))["actor"]
    batch = int(config.train.batch_size)
    k_x, k_init = jax.random.split(jax.random.key(1))
    x0 = jnp.clip(0.5 * jax.random.normal(k_x, (batch, *backbone.image_shape)), -1, 1)
    mask = jnp.ones_like(x0).at[:, 8:24, 8:24].set(0.0)
    x_init = cfg.sigma_max * jax.random.normal(k_init, x0.shape)
    sigmas = cfg.sigmas()
    perceptual = train.lpips_fn(cfg)
    hole = 1.0 - mask

    def denoise(x, sigma):
        return backbones.denoise(backbone.params, x, sigma, config=backbone.config)

    def psi_mse(xk):
        return cfg.psi_mse * losses.terminal_cost(
            xk, x0, losses.hole_weights(mask, cfg.hole_weight)
        )

    def psi_full(xk):
        return psi_mse(xk) + cfg.psi_lpips * perceptual(jnp.clip(xk, -1, 1), x0, hole)

    def objective(ap, psi):
        y = mask * x0
        mu = model.guidance_mean_fn(ap, cfg, y, mask)
        ref = model.reference_fn(cfg, y, mask)
        return losses.backprop_actor_loss(
            denoise, mu, x_init, sigmas, psi, beta=cfg.beta, reference=ref
        )

    def backbone_only(x):
        def body(x, ss):
            s, s_next = ss
            d = denoise(x, jnp.full((x.shape[0],), s))
            return x + (s_next - s) * (x - d) / s, None

        return jax.lax.scan(body, x, (sigmas[:-2], sigmas[1:-1]))[0]

    pieces = dict(
        backbone_forward=(backbone_only, x_init),
        sampler_forward=(lambda ap: objective(ap, psi_mse), actor),
        objective_forward=(lambda ap: objective(ap, psi_full), actor),
        gradient_without_lpips=(jax.grad(lambda ap: objective(ap, psi_mse)), actor),
        gradient=(jax.grad(lambda ap: objective(ap, psi_full)), actor),
        lpips_forward_backward=(jax.grad(lambda x: jnp.sum(perceptual(x, x0, hole))), x0 * 0.9),
    )
    out = {}
    for name, (fn, arg) in pieces.items():
        f = jax.jit(fn)
        jax.block_until_ready(f(arg))
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            jax.block_until_ready(f(arg))
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


PROFILE_CHILD = r"""
import json, sys
sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
import aid_train_step
print(json.dumps(aid_train_step.profile(int(sys.argv[1]))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="backprop,critic")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per profiled piece")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    bad = sorted(set(recipes) - set(RECIPES))
    if bad:
        parser.error(f"unknown recipe(s) {bad}; choose from {RECIPES}")
    runs = {(r, rule): [] for r in recipes for rule in ("jax", "project")}
    for _ in range(args.rounds):
        for recipe in recipes:
            for rule in ("jax", "project"):  # interleaved: load hits both rules alike
                runs[recipe, rule].append(train_run(rule, recipe, args.steps))
    rows = []
    for recipe in recipes:
        rate = {
            rule: statistics.median(r for run in runs[recipe, rule] for r in run["rates"][1:])
            for rule in ("jax", "project")
        }
        a, b = runs[recipe, "jax"][0]["loss"], runs[recipe, "project"][0]["loss"]
        curve = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))
        rows.append(
            dict(
                recipe=recipe,
                jax_rule_steps_per_s=rate["jax"],
                project_rule_steps_per_s=rate["project"],
                speedup=rate["project"] / rate["jax"],
                loss_jax_rule=a,
                loss_project_rule=b,
                loss_max_rel_diff=curve,
            )
        )
    print(
        "| recipe | steps/s, JAX's rule | steps/s, project's rule | speed-up | "
        "loss curve, max rel. diff |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['jax_rule_steps_per_s']:.3f} | "
            f"{r['project_rule_steps_per_s']:.3f} | ×{r['speedup']:.2f} | "
            f"{r['loss_max_rel_diff']:.1e} |"
        )
    pieces = _child(PROFILE_CHILD, args.reps) if "backprop" in recipes else {}
    if pieces:
        step = 1.0 / next(r for r in rows if r["recipe"] == "backprop")["project_rule_steps_per_s"]
        shares = {
            "backbone forward (K passes)": pieces["backbone_forward"],
            "actor and guidance forward": pieces["sampler_forward"] - pieces["backbone_forward"],
            "LPIPS forward (Ψ)": pieces["objective_forward"] - pieces["sampler_forward"],
            "backward through the sampler (recompute + VJPs)": pieces["gradient_without_lpips"]
            - pieces["sampler_forward"],
            "LPIPS backward": pieces["gradient"]
            - pieces["gradient_without_lpips"]
            - (pieces["objective_forward"] - pieces["sampler_forward"]),
            "optimiser, EMA, data, loop": step - pieces["gradient"],
        }
        print(f"\nwhere a backprop step's {step:.2f} s go (project's rule):")
        print("| piece | seconds | share |")
        print("|---|---:|---:|")
        for name, sec in shares.items():
            print(f"| {name} | {sec:.3f} | {100 * sec / step:.0f} % |")
    if args.json:
        record = dict(
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            affinity=sorted(os.sched_getaffinity(0)),
            steps=args.steps,
            rounds=args.rounds,
            rows=rows,
            pieces=pieces,
            shares=shares if pieces else {},
        )
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
