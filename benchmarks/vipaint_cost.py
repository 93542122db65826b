"""VIPaint's cost on the shipped Fashion-MNIST backbone (issue 6, item 2): denoiser passes and
wall time of the per-image fit and of the sampling, measured separately (each jitted on its own,
compilation excluded and reported apart).

    python benchmarks/vipaint_cost.py                                # 50 × 5, 100 refinement steps
    python benchmarks/vipaint_cost.py --refine 400                   # official refinement length
    python benchmarks/vipaint_cost.py --iters 20 --mc 2 --refine 20 --images 8 --samples 4

Prints a table and writes benchmarks/results/vipaint_cost.json (machine, date, versions).
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
from aid_jax.vipaint import model  # noqa: E402


def _timed(fn, *args, reps: int):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), compile_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ported_weights/fashion_mnist_32")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4, help="samples per fitted posterior")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--mc", type=int, default=5)
    parser.add_argument("--refine", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/vipaint_cost.json")
    args = parser.parse_args(argv)

    backbone = backbones.backbone_from_config({"path": args.backbone})
    h, w, c = backbone.image_shape
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(-1, 1, (args.images, h, w, c)), jnp.float32)
    mask = jnp.asarray(masks.make_masks("center_box", args.images, (h, w), seed=0, fraction=0.5))
    bconfig = backbone.config

    def bind(params):
        return lambda x, sigma: backbones.denoise(params, x, sigma, config=bconfig)

    cfg = model.VIPaintConfig(num_iters=args.iters, num_mc=args.mc, refine_steps=args.refine)

    def fit(params, y, mask, key):
        return model.fit(bind(params), y, mask, key, cfg)[0]

    def sample(params, post, y, mask, key):
        return model.sample(bind(params), post, y, mask, key, cfg, args.samples)

    key = jax.random.key(0)
    post, fit_s, fit_compile = _timed(fit, backbone.params, y, mask, key, reps=args.reps)
    _, sample_s, sample_compile = _timed(
        sample, backbone.params, post, y, mask, key, reps=args.reps
    )
    costs = model.costs(cfg)
    row = dict(
        images=args.images,
        samples_per_image=args.samples,
        num_iters=args.iters,
        num_mc=args.mc,
        refine_steps=args.refine,
        fit_nfe_per_image=[costs["fit_forward"], costs["fit_backward"]],
        sample_nfe_per_sample=[costs["sample_forward"], costs["sample_backward"]],
        fit_seconds_per_image=fit_s / args.images,
        sample_seconds_per_sample=sample_s / (args.images * args.samples),
        fit_compile_seconds=fit_compile,
        sample_compile_seconds=sample_compile,
    )
    print("| phase | NFE fwd/bwd | seconds | per |")
    print("|---|---|---:|---|")
    print(
        f"| fit ({args.iters} it × {args.mc} MC) | {costs['fit_forward']}/{costs['fit_backward']} "
        f"| {row['fit_seconds_per_image']:.3f} | image |"
    )
    print(
        f"| sampling ({args.refine} refinement steps) | {costs['sample_forward']}/"
        f"{costs['sample_backward']} | {row['sample_seconds_per_sample']:.3f} | sample |"
    )
    result = dict(
        benchmark="vipaint_cost",
        **provenance.stamp(),
        backbone=args.backbone,
        args=vars(args),
        row=row,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
