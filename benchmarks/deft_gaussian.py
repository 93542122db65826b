"""DEFT against its known optimum in the Gaussian world (docs/DEFT_DESIGN.md §5).

    python benchmarks/deft_gaussian.py               # 8x8, top half known: curve + study (~8 min)
    python benchmarks/deft_gaussian.py --no-study --iterations 1000 --checkpoints 0 100 1000

The world of benchmarks/gaussian_posterior.py (x0 ~ N(0, Σ), squared-exponential covariance,
8x8, length scale 2, variance 0.25; the exact denoiser as the frozen backbone; the same observed
image, mask and 512 samples), so its numbers stand next to the baselines' table in
docs/BENCHMARKS.md. DEFT trains a linear h-network (aid_jax.deft.gaussian: per-σ-node linear
maps of DEFT's inputs, hat-interpolated in ln σ; at its nodes the class contains the optimum)
with the image trainer's loss on fresh images every step, and is deployed with the image
sampler (Euler, N = NFE steps). Reported:

* gap closed per σ, (L_0 − L_φ)/(L_0 − L*) = 1 − E‖Δ_φ − Δ*‖²/E‖Δ*‖², exact (closed form,
  identity 3 of §5), at fixed σ's and averaged over the 10-step sampler grid;
* the sampler's RMSE of the sample mean and W2 to the exact posterior (hole pixels) at each NFE;
* reference rows: the exact h-transform (the sampler with E[x0 | x, y] itself: what a perfect
  DEFT reaches at this NFE) and the linear class at its optimum (Δ* at the nodes).

Learning curve for the default configuration at --checkpoints; with the study (default on) every
output_scale × sigma_dist × gate_units pairing trained for --study-iterations, scored at the end.
Writes JSON (machine, date, versions, arguments, every row) to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import time

import jax
import numpy as np

from aid_jax import provenance
from aid_jax.deft import gaussian as dg
from aid_jax.deft import model
from aid_jax.gaussian import BENCHMARK_MASKS, GaussianWorld, benchmark_mask

EVAL_SIGMAS = (0.002, 0.01, 0.05, 0.2, 1.0, 5.0, 20.0, 80.0)


def _config(args, **overrides) -> model.DEFTConfig:
    fields = dict(
        image_shape=(args.height, args.width, 1),
        num_steps=10,
        output_scale="sigma",
        gate_units="denoiser",
        sigma_dist="deft_vp",
        channels=(1,),  # unused by the linear h-network
        emb_dim=2,
    )
    fields.update(overrides)
    return model.DEFTConfig(**fields)


def _score(world, mask, y, cfg, params, args, grid_sigmas) -> dict:
    t0 = time.perf_counter()
    row = {}
    if params is not None:
        g = dg.gaps(world, mask, cfg, params, EVAL_SIGMAS)
        row["gap"] = dict(zip([f"{s:g}" for s in EVAL_SIGMAS], g, strict=True))
        row["gap_grid"] = dg.gaps(world, mask, cfg, params, grid_sigmas)
        row["gap_grid_mean"] = float(np.mean(row["gap_grid"]))
    row["sampler"] = {}
    for steps in args.steps:
        key = jax.random.fold_in(jax.random.key(args.seed), steps)
        row["sampler"][str(steps)] = dg.sampler_scores(
            world, mask, y, cfg, params, key, args.num_samples, steps
        )
    row["eval_seconds"] = time.perf_counter() - t0
    return row


def _cell(r, steps) -> str:
    s = r["sampler"][str(steps)]
    return f"{s['rmse_mean']:.3f} / {s['w2']:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--length-scale", type=float, default=2.0)
    parser.add_argument("--variance", type=float, default=0.25)
    parser.add_argument("--mask", default="top_half", choices=BENCHMARK_MASKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="Euler N = NFE")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[0, 100, 300, 1000, 3000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--study", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--study-iterations", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/deft_gaussian.json")
    parser.add_argument("--tables-from", default="", help="only print the tables of a JSON")
    args = parser.parse_args(argv)
    if args.tables_from:
        result = json.loads(pathlib.Path(args.tables_from).read_text())
        print_tables(result)
        return result
    if max(args.checkpoints) > args.iterations:
        parser.error("--checkpoints must not exceed --iterations")

    world = GaussianWorld.squared_exponential(
        args.height, args.width, args.length_scale, args.variance
    )
    mask = benchmark_mask(args.mask, args.height, args.width, args.seed)
    x0 = world.sample(np.random.default_rng(args.seed), 1)[0]  # gaussian_posterior.py's image
    y = mask * x0
    base = _config(args)
    grid_sigmas = np.asarray(base.schedule.sigmas_f64(base.num_steps)[:-1])
    t_total = time.perf_counter()
    print(
        f"Gaussian world {args.height}x{args.width}, length scale {args.length_scale:g}; mask "
        f"{args.mask}; {args.num_samples} samples; Euler steps {args.steps}",
        flush=True,
    )

    rows = []
    ref = dict(name="exact h-transform (Δ*)", **_score(world, mask, y, base, None, args, []))
    rows.append(ref)
    opt = dg.optimal_linear_hnet(world, mask, base, args.nodes)
    rows.append(
        dict(
            name="linear class at its optimum",
            **_score(world, mask, y, base, opt, args, grid_sigmas),
        )
    )
    for r in rows:
        print(r["name"], {k: _cell(r, k) for k in args.steps}, flush=True)

    # Learning curve of the default configuration.
    tcfg = dg.GaussianTrainConfig(
        iterations=args.iterations,
        batch=args.batch,
        lr=args.lr,
        num_nodes=args.nodes,
        checkpoints=tuple(sorted(set(args.checkpoints))),
        seed=args.seed,
    )
    snaps, curve, train_seconds = dg.train(world, mask, base, tcfg)
    curve_rows = []
    for it in tcfg.checkpoints:
        r = dict(iteration=it, **_score(world, mask, y, base, snaps[it], args, grid_sigmas))
        curve_rows.append(r)
        print(
            f"iteration {it:5d}: gap(grid) {r['gap_grid_mean']:+.3f}  "
            + "  ".join(f"NFE {k}: {_cell(r, k)}" for k in args.steps),
            flush=True,
        )

    # The study: output_scale × sigma_dist × gate_units at the end of training.
    study = []
    if args.study:
        scfg = dataclasses.replace(
            tcfg, iterations=args.study_iterations, checkpoints=(args.study_iterations,)
        )
        for out_scale, dist, units in itertools.product(
            model.OUTPUT_SCALES, model.SIGMA_DISTS, model.GATE_UNITS
        ):
            cfg = _config(args, output_scale=out_scale, sigma_dist=dist, gate_units=units)
            snaps_v, _, secs = dg.train(world, mask, cfg, scfg)
            r = dict(
                output_scale=out_scale,
                sigma_dist=dist,
                gate_units=units,
                train_seconds=secs,
                **_score(world, mask, y, cfg, snaps_v[scfg.iterations], args, grid_sigmas),
            )
            study.append(r)
            print(
                f"{out_scale:6s} {dist:12s} {units:8s}: gap(grid) {r['gap_grid_mean']:+.3f} "
                f"min {min(r['gap'].values()):+.3f}  "
                + "  ".join(f"NFE {k}: {_cell(r, k)}" for k in args.steps),
                flush=True,
            )
    total = time.perf_counter() - t_total

    result = dict(
        benchmark="deft_gaussian",
        description=(
            "DEFT (linear h-network) in the Gaussian world: exact gap closed per σ and the "
            "sampler's RMSE / W2 to the exact posterior, next to the exact h-transform"
        ),
        **provenance.stamp(),
        args=vars(args),
        eval_sigmas=list(EVAL_SIGMAS),
        grid_sigmas=grid_sigmas.tolist(),
        references=rows,
        curve=curve_rows,
        training_curve=curve,
        train_seconds=train_seconds,
        study=study,
        total_seconds=total,
    )

    print_tables(result)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"total {total:.0f} s; wrote {out}")
    return result


def print_tables(result: dict) -> None:
    """The Markdown tables of a result (also from a stored JSON: --tables-from). "grid median":
    the median of the gaps at the 10-step sampler grid's σ's (the mean is dominated by a single
    bad σ)."""
    steps = result["args"]["steps"]
    nfe = [f"NFE {k}" for k in steps]
    sig = [f"{s:g}" for s in result["eval_sigmas"]]
    print()
    print(f"Gap closed per σ (default configuration) and RMSE / W2 at NFE {steps}")
    print(
        "| iteration | "
        + " | ".join(f"σ={s}" for s in sig)
        + " | grid median | "
        + " | ".join(nfe)
        + " |"
    )
    print("|---" * (len(sig) + 2 + len(steps)) + "|")
    for r in result["curve"]:
        print(
            f"| {r['iteration']} | "
            + " | ".join(f"{r['gap'][s]:.3f}" for s in sig)
            + f" | {np.median(r['gap_grid']):.3f} | "
            + " | ".join(_cell(r, k) for k in steps)
            + " |"
        )
    for r in result["references"]:
        med = f"{np.median(r['gap_grid']):.3f}" if "gap_grid" in r else ""
        print(
            f"| {r['name']} | "
            + " | ".join("" for _ in sig)
            + f" | {med} | "
            + " | ".join(_cell(r, k) for k in steps)
            + " |"
        )
    if result["study"]:
        cols = ("0.01", "1", "80")
        print()
        print(
            "| output_scale | sigma_dist | gate_units | "
            + " | ".join(f"gap σ={c}" for c in cols)
            + " | grid median | "
            + " | ".join(nfe)
            + " |"
        )
        print("|---" * (4 + len(cols) + len(steps)) + "|")
        for r in result["study"]:
            print(
                f"| {r['output_scale']} | {r['sigma_dist']} | {r['gate_units']} | "
                + " | ".join(f"{r['gap'][c]:.3f}" for c in cols)
                + f" | {np.median(r['gap_grid']):.3f} | "
                + " | ".join(_cell(r, k) for k in steps)
                + " |"
            )


if __name__ == "__main__":
    main()
