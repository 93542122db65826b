"""Which objective makes AID's optimal guidance sample the posterior? Closed forms in the
linear–quadratic world (aid_jax/aid/lq_objectives.py; issue 16, point 1).

    python benchmarks/lq_objectives.py                # 8x8, length scale 2, top half, K = 10

For every terminal objective × running-cost weighting × β: the law of x_K under the optimal
deterministic guidance is Gaussian in closed form, so its distance to the exact posterior is
exact — W2 on the hole pixels averaged over observations y (√(E_y‖Δmean‖² + Bures²)), the RMSE
of the mean, and W2 for the single observed image of benchmarks/gaussian_posterior.py (same world,
mask and seed), printed next to the baselines' sampled values at 10 NFE from
benchmarks/results/gaussian_posterior.json. No training, no sampling: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from aid_jax import provenance
from aid_jax.aid import lq_objectives as obj
from aid_jax.aid.lq import LQProblem
from aid_jax.gaussian import w2_gaussian

ZERO = 1e-9  # "β → 0"

# (label, terminal, weighting, β, min control σ)
ROWS = (
    ("unguided", "mse", "uniform", 1.0, np.inf),
    *(("Ψ = MSE to x0, uniform", "mse", "uniform", b, 0.0) for b in (1.0, 0.1, 0.01, ZERO)),
    ("Ψ = observed pixels, uniform", "observed", "uniform", ZERO, 0.0),
    *(
        ("Ψ = observed pixels, β/σ²", "observed", "inv_sigma2", b, 0.0)
        for b in (0.1, 0.01, 0.001, ZERO)
    ),
    ("Ψ = observed pixels, β/σ², control at σ ≥ 5", "observed", "inv_sigma2", ZERO, 5.0),
    *(
        ("Ψ = teacher (posterior sample), uniform", "teacher", "uniform", b, 0.0)
        for b in (0.1, ZERO)
    ),
    *(
        ("Ψ = teacher (posterior sample), β/σ²", "teacher", "inv_sigma2", b, 0.0)
        for b in (0.1, 0.01)
    ),
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mask", default="top_half")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--seed", type=int, default=0, help="the observed image (as the baselines')"
    )
    parser.add_argument("--baselines", default="benchmarks/results/gaussian_posterior.json")
    parser.add_argument("--out", default="benchmarks/results/lq_objectives.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    p = LQProblem.create(8, 8, mask=args.mask, num_steps=args.steps)
    x0 = p.world.sample(np.random.default_rng(args.seed), 1)[0].reshape(-1)
    y = x0 * p.mask
    c, cov = p.world.posterior(
        (y).reshape(p.world.image_shape), p.mask.reshape(p.world.image_shape)
    )
    hole = p.mask == 0
    rows = []
    for label, terminal, weighting, beta, min_sigma in ROWS:
        law = obj.optimal_terminal_law(p, terminal, beta, weighting, min_sigma)
        dist = obj.posterior_distance(p, law)
        mean = law.mean_map @ y
        one = w2_gaussian(
            mean[hole], law.cov[np.ix_(hole, hole)], c.reshape(-1)[hole], cov[np.ix_(hole, hole)]
        )
        rows.append(
            dict(
                label=label,
                terminal=terminal,
                weighting=weighting,
                beta=beta,
                min_control_sigma=min_sigma,
                w2=dist["w2"],
                mean_rmse=dist["mean_rmse"],
                w2_this_image=float(one),
            )
        )
    baselines = []
    path = pathlib.Path(args.baselines)
    if path.exists():
        ref = json.loads(path.read_text())
        same = ref["args"]["mask"] == args.mask and ref["args"]["seed"] == args.seed
        for r in ref["rows"] if same else []:
            if r.get("nfe_budget", r.get("nfe")) == 10 or r["method"] == "exact":
                baselines.append(dict(method=r["method"], nfe=r.get("nfe"), w2=r.get("w2")))

    print(
        f"{f'objective (K = {args.steps} Euler steps)':52s} {'β':>7s} {'W2 avg':>7s} "
        f"{'mean RMSE':>9s} {'W2 this y':>9s}"
    )
    for r in rows:
        beta = "→ 0" if r["beta"] == ZERO else f"{r['beta']:g}"
        print(
            f"{r['label']:52s} {beta:>7s} {r['w2']:7.3f} {r['mean_rmse']:9.3f} "
            f"{r['w2_this_image']:9.3f}"
        )
    for b in baselines:
        name = f"baseline {b['method']} (sampled, NFE {b['nfe']})"
        print(f"{name:52s} {'':7s} {'':7s} {'':9s} {b['w2']:9.3f}")
    record = dict(
        benchmark="lq_objectives",
        description=__doc__.split("\n")[0],
        **provenance.stamp(),
        args=vars(args),
        seconds=time.perf_counter() - t0,
        rows=rows,
        baselines_at_10_nfe=baselines,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
