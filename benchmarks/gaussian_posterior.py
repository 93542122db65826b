"""Zero-shot inpainting baselines against the exact posterior of a Gaussian world (AID.md §5).

    python benchmarks/gaussian_posterior.py                    # 8x8, length scale 2, top half known
    python benchmarks/gaussian_posterior.py --mask center_box --nfe 20 100 --methods dps ddnm

Data x0 ~ N(0, Sigma) with a squared-exponential covariance on an H x W single-channel grid; the
exact denoiser D(x; sigma) = Sigma (Sigma + sigma² I)⁻¹ x drives every method, so the only error
left is the method's own. For ONE observed image y = m ⊙ x0 each method draws --num-samples
samples at each NFE budget; reported on the hole pixels: the RMSE of the sample mean against the
exact posterior mean, and W2 between the Gaussian fitted to the samples and the exact posterior
N(c, C) (aid_jax.gaussian). The row "exact" draws the same number of samples from N(c, C): its
values are the finite-sample floor of both numbers.

NFE budget -> steps: Heun samplers (unguided, replacement) N = (NFE + 1) // 2 (2N - 1 calls);
DPS, ΠGDM, DDRM, DDNM N = NFE (DPS/ΠGDM add N vector-Jacobian products); RePaint and DDNM⁺ the
largest N whose time-travel schedule fits the budget, with RePaint r = min(10, NFE // 25) visits
per jump point (its default 10 from NFE 250 on) and jump length max(1, N // 25), DDNM⁺ s = 3
repeats from NFE 50 on (else 1) and travel length max(1, N // 10). VIPaint (one row per
--vipaint-iters value): one posterior fitted to the image and shared by all samples, N = NFE − 2
refinement steps per sample; the per-sample NFE counts the fit divided by the number of samples,
and the fit's own cost per image is reported as ``fit_nfe_per_image``. The actual NFE is reported.

The method functions are called directly (jitted), not through make_inpainter: Gaussian samples
leave [-1, 1], which the harness' input validation rejects for images. Prints a table and writes
JSON (machine, date, versions, all arguments, one row per method x NFE).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax import baselines, provenance
from aid_jax.gaussian import (
    BENCHMARK_MASKS,
    GaussianWorld,
    benchmark_mask,
    empirical_w2_to_posterior,
    posterior_mean_rmse,
)

MASKS = BENCHMARK_MASKS
make_mask = benchmark_mask


def _largest_fitting(method: str, nfe: int, options_of_n) -> tuple[int, dict] | None:
    best = None
    for n in range(1, nfe + 1):
        opts = options_of_n(n)
        if baselines.method_cost(method, num_steps=n, **opts)[0] <= nfe:
            best = (n, opts)
    return best


def options_for_budget(method: str, nfe: int) -> dict | None:
    """Method options (num_steps and schedule) for a denoiser-call budget (see module doc)."""
    if method in ("unguided", "replacement"):
        n = (nfe + 1) // 2
        return {"num_steps": n} if n >= 1 else None
    if method in ("dps", "pigdm", "ddrm", "ddnm"):
        return {"num_steps": nfe}
    if method == "vipaint":
        # Per sample: (K − 1) chain passes + N refinement steps + 1 final pass (K = 2); the fit
        # is shared by all samples of the image (samples_per_fit = --num-samples) and reported
        # on its own.
        n = nfe - 2
        return {"num_steps": n} if n >= 1 else None
    if method == "repaint":
        r = max(1, min(10, nfe // 25))
        best = _largest_fitting(
            method, nfe, lambda n: {"jump_length": max(1, n // 25), "jump_n_sample": r}
        )
    elif method == "ddnm_plus":
        s = 3 if nfe >= 50 else 1
        best = _largest_fitting(
            method, nfe, lambda n: {"travel_length": max(1, n // 10), "travel_repeat": s}
        )
    else:
        raise ValueError(f"no NFE mapping for method {method!r}")
    if best is None:
        return None
    n, opts = best
    return {"num_steps": n, **opts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dim", type=int, default=None, help="pixels d = H·W of a square image (overrides H, W)"
    )
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--length-scale", type=float, default=2.0)
    parser.add_argument("--variance", type=float, default=0.25)
    parser.add_argument("--mask", default="top_half", choices=MASKS)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 250])
    parser.add_argument("--methods", nargs="+", default=list(baselines.METHODS))
    parser.add_argument(
        "--vipaint-iters",
        type=int,
        nargs="+",
        default=[10, 50, 200],
        help="VIPaint fit iterations (one row per value and NFE budget)",
    )
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/gaussian_posterior.json")
    args = parser.parse_args(argv)

    if args.dim is not None:
        side = math.isqrt(args.dim)
        if side * side != args.dim:
            parser.error(f"--dim must be a perfect square (square image), got {args.dim}")
        args.height = args.width = side
    unknown = [m for m in args.methods if m not in baselines.METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; available: {list(baselines.METHODS)}")
    if args.num_samples < 2:
        parser.error("--num-samples must be >= 2 (a covariance is fitted)")

    world = GaussianWorld.squared_exponential(
        args.height, args.width, args.length_scale, args.variance
    )
    denoise = world.denoiser()
    mask = make_mask(args.mask, args.height, args.width, args.seed)
    x0 = world.sample(np.random.default_rng(args.seed), 1)[0]
    c, cov = world.posterior(mask * x0, mask)
    hole = mask.reshape(-1) == 0
    n = args.num_samples
    y = jnp.asarray(np.broadcast_to(mask * x0, (n, *x0.shape)), jnp.float32)
    m = jnp.asarray(np.broadcast_to(mask, (n, *mask.shape)), jnp.float32)
    known = np.broadcast_to(mask, (n, *mask.shape)) == 1
    base_key = jax.random.key(args.seed)
    print(
        f"Gaussian world {args.height}x{args.width}, length scale {args.length_scale:g}, variance "
        f"{args.variance:g}; mask {args.mask}: {int(hole.sum())} of {hole.size} pixels missing; "
        f"posterior std (rms over the hole) {np.sqrt(np.mean(np.diag(cov)[hole])):.4f}, "
        f"|c - mu| (rms over the hole) {np.sqrt(np.mean((c - world.mean)[hole] ** 2)):.4f}",
        flush=True,
    )

    rows = []
    # Finite-sample floor: exact posterior samples.
    rng = np.random.default_rng(args.seed + 1)
    exact = rng.multivariate_normal(c, cov, size=n, method="eigh").reshape(n, *x0.shape)
    rows.append(
        dict(
            method="exact",
            target_nfe=0,
            nfe=0,
            nfe_backward=0,
            options={},
            rmse_mean=posterior_mean_rmse(exact, c, mask),
            w2=empirical_w2_to_posterior(exact, c, cov),
            observed_max_abs_err=0.0,
            seconds=0.0,
            compile_seconds=0.0,
        )
    )
    t_total = time.perf_counter()
    runs = [(m, {}) for m in args.methods if m != "vipaint"]
    if "vipaint" in args.methods:
        runs += [("vipaint", {"num_iters": it, "samples_per_fit": n}) for it in args.vipaint_iters]
    for mi, (method, extra) in enumerate(runs):
        label = method if not extra else f"vipaint ({extra['num_iters']} it)"
        for budget in args.nfe:
            opts = options_for_budget(method, budget)
            if opts is None:
                print(f"{label:12s} NFE {budget:5d}: budget too small, skipped", flush=True)
                continue
            opts = {**opts, **extra}
            fn = jax.jit(
                lambda y_, m_, k, method=method, opts=opts: baselines.METHODS[method](
                    denoise, y_, m_, k, **opts
                )
            )
            key = jax.random.fold_in(base_key, 1000 * mi + budget)
            t0 = time.perf_counter()
            compiled = fn.lower(y, m, key).compile()
            t1 = time.perf_counter()
            res = compiled(y, m, key)
            xs = np.asarray(jax.block_until_ready(res.x), np.float64)
            t2 = time.perf_counter()
            row = dict(
                method=label,
                target_nfe=budget,
                nfe=res.nfe,
                nfe_backward=res.nfe_backward,
                options=opts,
                rmse_mean=posterior_mean_rmse(xs, c, mask),
                w2=empirical_w2_to_posterior(xs, c, cov),
                observed_max_abs_err=float(np.abs(xs - y)[known].max()),
                seconds=t2 - t1,
                compile_seconds=t1 - t0,
            )
            if method == "vipaint":
                from aid_jax.vipaint import model as vipaint_model

                fit = vipaint_model.costs(vipaint_model.VIPaintConfig(num_iters=extra["num_iters"]))
                row["fit_nfe_per_image"] = [fit["fit_forward"], fit["fit_backward"]]
            rows.append(row)
            print(
                f"{label:12s} NFE {row['nfe']:5d}/{row['nfe_backward']:4d}  "
                f"rmse {row['rmse_mean']:.4f}  W2 {row['w2']:.4f}  "
                f"obs err {row['observed_max_abs_err']:.1e}  ({row['seconds']:.2f} s + compile "
                f"{row['compile_seconds']:.1f} s)",
                flush=True,
            )
    total = time.perf_counter() - t_total

    result = dict(
        benchmark="gaussian_posterior",
        description=(
            "sample-mean RMSE and W2 (fitted Gaussian vs exact posterior) on the hole pixels, "
            "one observed image, exact Gaussian denoiser"
        ),
        **provenance.stamp(),
        args=vars(args),
        world=dict(
            image_shape=list(world.image_shape),
            hole_pixels=int(hole.sum()),
            posterior_std_rms=float(np.sqrt(np.mean(np.diag(cov)[hole]))),
            posterior_mean_offset_rms=float(np.sqrt(np.mean((c - world.mean)[hole] ** 2))),
        ),
        total_seconds=total,
        rows=rows,
    )

    budgets = sorted({r["target_nfe"] for r in rows if r["method"] != "exact"})
    print()
    print("RMSE of the sample mean / W2 to the exact posterior (hole pixels); columns: NFE budget")
    print("| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    ex = rows[0]
    print(
        f"| exact (floor, n={n}) | "
        + " | ".join(f"{ex['rmse_mean']:.3f} / {ex['w2']:.3f}" for _ in budgets)
        + " |"
    )
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "exact"):
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["method"] == method and r["target_nfe"] == b), None)
            cells.append("—" if r is None else f"{r['rmse_mean']:.3f} / {r['w2']:.3f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"total {total:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
