"""AID on the linear–quadratic problem with a known optimum: gap closed (AID.md §5).

    python benchmarks/lq_optimality.py    # 8x8, top half, K = 10, LR + pathwise (about 12 min)
    python benchmarks/lq_optimality.py --paper --out benchmarks/results/lq_optimality_paper.json
    python benchmarks/lq_optimality.py --height 4 --width 4 --K 5 --iterations 2000
    python benchmarks/lq_optimality.py --terminal observed --beta-weighting inv_sigma2 \
        --beta 0.01 --lam 0.001 --features adaptive --iterations 10000 --actor lr   # issue 16
    (the pathwise actor there: add --actor-lr 1e-3 --critic-warmup 500)
    python benchmarks/lq_optimality.py --terminal teacher --beta-weighting inv_sigma2 \
        --beta 0.01 --lam 0.001 --features adaptive --iterations 10000 --actor lr   # issue 16

Gaussian data x0 ~ N(0, Σ) (squared-exponential covariance) on an H x W single-channel image, a
fixed mask, the exact denoiser: the controlled Euler sampler is linear, so the optimal expected
cost J* has a closed form (aid_jax.aid.lq; checked against direct least squares and a Riccati
recursion in tests/test_lq.py). The unguided sampler costs J_0. AID trains a per-step linear actor
and a per-step quadratic critic (function classes that contain the optimum) with the generic
rollout and losses of aid_jax.aid; J_AID is the exact cost of the learned deterministic guidance
(closed form: the actor is linearised and its cost propagated in float64) and, as a check, a
float32 Monte-Carlo average of the deployed sampler with its standard error. Figure of merit:
gap closed = (J_0 − J_AID)/(J_0 − J*). With --mc-samples the closed-form J* is checked too, by a
float64 Monte Carlo of the optimal feedback (aid_jax.aid.lq.monte_carlo_cost_f64).

--terminal teacher: Ψ = ‖x_K − T‖²/d with T an exact posterior sample given y built from the
rollout's start X_0 (Matheron's rule; the teacher of aid_jax.aid.lq_objectives). The actor sees
(x, y) as always; the critic sees T (the problem is linear–quadratic in (x, T); the module doc of
aid_jax.aid.lq says why).

Every variance-reduction device is a switch (defaults: aid_jax.aid.lq.LQTrainConfig, reasons in
docs/AID_DESIGN.md); --paper selects the paper's form (δ_k advantages, TD(0) critic trained with
Adam, plain features, no antithetic pairs, constant learning rates) for the chosen actors.
Writes JSON (machine, date, versions, arguments, one row per actor variant with its learning
curve) to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import optax

from aid_jax import provenance
from aid_jax.aid import lq

DEFAULTS = lq.LQTrainConfig()


def _config(args, actor: str) -> lq.LQTrainConfig:
    fields = dict(
        actor=actor,
        iterations=args.iterations,
        batch=args.batch,
        features=args.features,
        actor_bias=args.actor_bias,
        actor_lr=args.actor_lr,
        critic_lr=args.critic_lr,
        schedule=args.schedule,
        final_lr_frac=args.final_lr_frac,
        antithetic=args.antithetic,
        td_lambda=args.td_lambda,
        adv_lambda=args.adv_lambda,
        adv_norm=args.adv_norm,
        critic_x0=args.critic_x0,
        critic_opt=args.critic_opt,
        critic_center=args.critic_center,
        critic_steps=args.critic_steps,
        critic_warmup=args.critic_warmup,
        ema=args.ema,
        chunk=args.chunk,
        refresh=args.refresh,
        seed=args.seed,
    )
    if args.paper:
        given = {k: v for k, v in fields.items() if k in ("iterations", "batch", "chunk", "seed")}
        return lq.LQTrainConfig.paper(actor=actor, **given)
    return lq.LQTrainConfig(**fields)


def _options(config: lq.LQTrainConfig, paper: bool, teacher: bool = False) -> str:
    """A short description of the training options, for the table."""
    c = config
    parts = [
        "paper form" if paper else "defaults",
        f"{c.features} features",
        "antithetic" if c.antithetic else "no antithetic",
        f"{c.schedule} lr {c.actor_lr:g} (actor, Adam) / {c.critic_lr:g} (critic, {c.critic_opt}"
        + (", centred)" if c.critic_center else ")"),
    ]
    if c.td_lambda:
        parts.append(f"TD({c.td_lambda:g})")
    if c.adv_lambda:
        parts.append(f"advantage trace {c.adv_lambda:g}")
    if c.adv_norm != "none":
        parts.append(f"{c.adv_norm} advantage normalisation")
    if c.critic_x0:
        parts.append("critic sees x0")
    if teacher:
        parts.append("critic sees T")
    if c.features == "adaptive":
        parts.append(f"refit every {c.refresh}")
    if c.critic_steps > 1:
        parts.append(f"{c.critic_steps} critic steps")
    if c.critic_warmup:
        parts.append(f"critic warm-up {c.critic_warmup}")
    if c.ema:
        parts.append(f"EMA {c.ema:g}")
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=None, help="d = H·W of a square image")
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--length-scale", type=float, default=2.0)
    parser.add_argument("--variance", type=float, default=0.25)
    parser.add_argument("--mask", default="top_half", choices=lq.MASKS)
    parser.add_argument("--lam", type=float, default=0.1, help="temperature λ")
    parser.add_argument("--beta", type=float, default=0.1, help="control-cost weight β")
    parser.add_argument("--K", type=int, default=10, help="sampler steps")
    parser.add_argument(
        "--terminal",
        default="mse",
        choices=lq.LQ_TERMINALS,
        help="Ψ: MSE to x0, consistency on the observed pixels only, or MSE to a teacher T "
        "that is an exact posterior sample built from X_0 (issue 16)",
    )
    parser.add_argument(
        "--beta-weighting",
        default="uniform",
        choices=["uniform", "inv_sigma2"],
        help="running cost β_k = β or β/σ_k² (issue 16)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--actor", nargs="+", default=["lr", "pathwise"], choices=["lr", "pathwise"]
    )
    parser.add_argument("--iterations", type=int, default=DEFAULTS.iterations)
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch)
    parser.add_argument("--paper", action="store_true", help="the paper's plain form")
    g = parser.add_argument_group("variance reduction and optimisation (ignored with --paper)")
    g.add_argument("--features", default=DEFAULTS.features, choices=lq.FEATURES)
    g.add_argument(
        "--actor-bias", action=argparse.BooleanOptionalAction, default=DEFAULTS.actor_bias
    )
    g.add_argument("--actor-lr", type=float, default=DEFAULTS.actor_lr)
    g.add_argument("--critic-lr", type=float, default=DEFAULTS.critic_lr)
    g.add_argument(
        "--schedule", default=DEFAULTS.schedule, choices=["constant", "cosine", "linear"]
    )
    g.add_argument("--final-lr-frac", type=float, default=DEFAULTS.final_lr_frac)
    g.add_argument(
        "--antithetic", action=argparse.BooleanOptionalAction, default=DEFAULTS.antithetic
    )
    g.add_argument("--td-lambda", type=float, default=DEFAULTS.td_lambda, help="critic trace")
    g.add_argument("--adv-lambda", type=float, default=DEFAULTS.adv_lambda, help="actor trace")
    g.add_argument("--adv-norm", default=DEFAULTS.adv_norm, choices=["none", "per_step", "global"])
    g.add_argument("--critic-x0", action=argparse.BooleanOptionalAction, default=DEFAULTS.critic_x0)
    g.add_argument("--critic-opt", default=DEFAULTS.critic_opt, choices=["sgd", "adam"])
    g.add_argument(
        "--critic-center", action=argparse.BooleanOptionalAction, default=DEFAULTS.critic_center
    )
    g.add_argument("--critic-steps", type=int, default=DEFAULTS.critic_steps)
    g.add_argument("--critic-warmup", type=int, default=DEFAULTS.critic_warmup)
    g.add_argument("--ema", type=float, default=DEFAULTS.ema)
    parser.add_argument("--chunk", type=int, default=DEFAULTS.chunk, help="iterations per jit call")
    parser.add_argument(
        "--refresh",
        type=int,
        default=DEFAULTS.refresh,
        help="iterations between refits of the adaptive features",
    )
    parser.add_argument(
        "--mc-samples", type=int, default=65536, help="Monte-Carlo checks of J* and J_AID (0: off)"
    )
    parser.add_argument("--out", default="benchmarks/results/lq_optimality.json")
    args = parser.parse_args(argv)
    if args.dim is not None:
        side = math.isqrt(args.dim)
        if side * side != args.dim:
            parser.error(f"--dim must be a perfect square (square image), got {args.dim}")
        args.height = args.width = side

    problem = lq.LQProblem.create(
        args.height,
        args.width,
        length_scale=args.length_scale,
        variance=args.variance,
        mask=args.mask,
        num_steps=args.K,
        lam=args.lam,
        beta=args.beta,
        mask_seed=args.seed,
        terminal=args.terminal,
        beta_weighting=args.beta_weighting,
    )
    j0, js = problem.unguided_cost(), problem.optimal_cost()
    print(
        f"LQ benchmark {args.height}x{args.width}, length scale {args.length_scale:g}, variance "
        f"{args.variance:g}, mask {args.mask} ({int((problem.mask == 0).sum())} of "
        f"{problem.dim} missing), K = {args.K}, λ = {args.lam:g}, β = {args.beta:g}, Ψ "
        f"{args.terminal}, β weighting {args.beta_weighting}\n"
        f"J_0 = {j0:.5f} (unguided)   J* = {js:.5f} (closed form)",
        flush=True,
    )
    star_mc = {}
    if args.mc_samples:
        t0 = time.perf_counter()
        j_mc, se = lq.monte_carlo_cost_f64(
            problem, *problem.optimal_gains(), seed=args.seed + 54321, num_samples=args.mc_samples
        )
        star_mc = dict(J_star_mc=j_mc, J_star_mc_se=se)
        print(
            f"J* Monte Carlo (float64, optimal feedback, {args.mc_samples} samples) = "
            f"{j_mc:.6f} ± {se:.6f} (closed form {js:.6f}; {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    rows = []
    for actor in args.actor:
        config = _config(args, actor)
        print(f"\n[{actor}] {config}", flush=True)
        result = lq.train(problem, config, log=lambda s: print("  " + s, flush=True))
        fn = lq.make_actor_fn(problem, config.features)
        params = jax.tree_util.tree_map(jnp.asarray, result.actor)
        j_aid = result.history[-1]["cost"]
        row = dict(
            actor=actor,
            options=_options(config, args.paper, args.terminal == "teacher"),
            config=dataclasses.asdict(config),
            J_aid=j_aid,
            gap_closed=problem.gap_closed(j_aid),
            iterations=config.critic_warmup + config.iterations,
            train_seconds=result.seconds,
            history=result.history,
        )
        if args.mc_samples:
            t0 = time.perf_counter()
            j_mc, se = lq.monte_carlo_cost(
                problem,
                lambda k, x, y, den, p=params, fn=fn: fn(p, k, x, y),
                jax.random.key(args.seed + 12345),
                num_samples=args.mc_samples,
            )
            row.update(J_aid_mc=j_mc, J_aid_mc_se=se, mc_seconds=time.perf_counter() - t0)
        rows.append(row)
        mc = (
            f"  (Monte Carlo {row['J_aid_mc']:.5f} ± {row['J_aid_mc_se']:.5f})"
            if args.mc_samples
            else ""
        )
        print(
            f"[{actor}] J_AID = {j_aid:.5f}{mc}   gap closed {100 * row['gap_closed']:.2f} %   "
            f"({row['iterations']} iterations, {result.seconds:.0f} s)",
            flush=True,
        )

    result = dict(
        benchmark="lq_optimality",
        description=(
            "gap closed (J_0 - J_AID)/(J_0 - J*) of AID's learned deterministic guidance on the "
            "linear-quadratic Gaussian inpainting problem; J_AID exact (closed form), Monte-Carlo "
            "check with its standard error"
        ),
        **provenance.stamp(optax=optax.__version__),
        args=vars(args),
        J_0=j0,
        J_star=js,
        **star_mc,
        rows=rows,
    )
    print(
        "\n| actor | options | iterations | J_0 | J* | J_AID (Monte Carlo) | gap closed | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mc = f" ({r['J_aid_mc']:.4f} ± {r['J_aid_mc_se']:.4f})" if "J_aid_mc" in r else ""
        print(
            f"| {r['actor']} | {r['options']} | {r['iterations']} | {j0:.4f} | {js:.4f} | "
            f"{r['J_aid']:.4f}{mc} | {100 * r['gap_closed']:.1f} % | {r['train_seconds']:.0f} |"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
