"""AID's overhead (issue 5, item 6): parameters of the actor and the critic as a fraction of the
backbone for every config, and the guidance's wall time per sampler step against unguided
sampling with the same backbone, solver and step count.

    python benchmarks/aid_overhead.py                       # all configs, CPU-sized batches
    python benchmarks/aid_overhead.py --configs fashion_mnist --batch 32 --steps 10

Backbones: the shipped Fashion-MNIST network (ported_weights/) and, for AFHQ/FFHQ, the released
DDPM++ architecture with random weights (same shapes and cost as the NVIDIA pickles). Prints a
table and writes benchmarks/results/aid_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aid_jax import backbones, masks, provenance  # noqa: E402
from aid_jax.aid import control, model, networks, train  # noqa: E402


def _config(name: str):
    import importlib

    return importlib.import_module(f"configs.{name}").get_config(
        "smoke" if name != "fashion_mnist" else None
    )


def _time(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(name: str, batch: int, steps: int, reps: int) -> dict:
    config = _config(name)
    if name != "fashion_mnist":  # the real architecture's widths, not the smoke's step count
        import importlib

        full = importlib.import_module(f"configs.{name}").get_config(None)
        config.aid = full.aid
    backbone = backbones.backbone_from_config(config.backbone)
    cfg = train.aid_config(config, backbone.image_shape)
    actor = model.init_actor(jax.random.key(0), cfg)
    critic = model.init_critic(jax.random.key(1), cfg)
    n_backbone = backbones.num_params(backbone.config)
    n_actor, n_critic = networks.param_count(actor), networks.param_count(critic)
    # A non-zero actor (the zero-initialised last layer would let XLA skip nothing anyway, but
    # timing a trained-looking module is the honest case).
    actor = jax.tree.map(lambda a: a + 0.01, actor)
    h, w, c = backbone.image_shape
    x = np.asarray(jax.random.uniform(jax.random.key(2), (batch, h, w, c), minval=-1, maxval=1))
    m = masks.make_masks("center_box", batch, (h, w), seed=0)
    bc = backbone.config

    @jax.jit
    def guided(bparams, actor, x, m, key):
        p = model.AIDParams(bparams, actor, bc, cfg)
        return model.inpaint(p, x, m, key=key, num_steps=steps, paste_back=False).x

    @jax.jit
    def unguided(bparams, x, key):
        def denoise(z, s):
            return backbones.denoise(bparams, z, s, config=bc)

        x_init = cfg.sigma_max * jax.random.normal(key, x.shape, jnp.float32)
        return control.controlled_sample(denoise, None, x_init, cfg.sigmas(steps)).x

    key = jax.random.key(3)
    t_guided = _time(guided, backbone.params, actor, x, m, key, reps=reps)
    t_plain = _time(unguided, backbone.params, x, key, reps=reps)
    return dict(
        config=name,
        backbone_params=n_backbone,
        actor_params=n_actor,
        critic_params=n_critic,
        actor_fraction=n_actor / n_backbone,
        critic_fraction=n_critic / n_backbone,
        batch=batch,
        steps=steps,
        seconds_unguided=t_plain,
        seconds_guided=t_guided,
        ms_per_step_unguided=1e3 * t_plain / steps,
        ms_per_step_guided=1e3 * t_guided / steps,
        overhead=t_guided / t_plain - 1.0,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["fashion_mnist", "afhq", "ffhq"])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 2, 2], help="per config")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/aid_overhead.json"))
    args = parser.parse_args(argv)
    batches = (
        args.batch if len(args.batch) == len(args.configs) else args.batch[:1] * len(args.configs)
    )
    rows = [
        measure(n, b, args.steps, args.reps) for n, b in zip(args.configs, batches, strict=True)
    ]
    print(
        "| config | backbone | actor (fraction) | critic (fraction) | batch "
        "| ms/step unguided | ms/step AID | overhead |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['backbone_params']:,} | {r['actor_params']:,} "
            f"({100 * r['actor_fraction']:.2f} %) | {r['critic_params']:,} "
            f"({100 * r['critic_fraction']:.2f} %) | {r['batch']} | "
            f"{r['ms_per_step_unguided']:.1f} | {r['ms_per_step_guided']:.1f} | "
            f"{100 * r['overhead']:+.1f} % |"
        )
    out = dict(
        **provenance.stamp(),
        rows=rows,
    )
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
