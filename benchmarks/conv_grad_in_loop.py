"""The input gradient of a convolution inside a sampler loop, on this machine's XLA backend.

JAX's transpose rule for a convolution hands XLA a convolution that XLA:CPU runs several times
slower inside a ``lax.scan`` body than outside; ``aid_jax.backbones.layers.conv`` writes its
input gradient as a plain correlation with the flipped kernel instead. This measures both on
the shipped backbone (batch 8, 32×32, 10 steps, jitted, compilation excluded):

* ``pigdm_like``: a scan whose body takes D and a VJP through D (ΠGDM, DPS, VIPaint);
* ``backprop``: the gradient of a scanned 10-step Euler sampler w.r.t. its start (AID's
  ``train.actor="backprop"``), with ``jax.checkpoint`` on D as the trainer has it;
* ``forward``: the scan without gradients (unchanged by the rule; a control).

    PYTHONPATH=. python benchmarks/conv_grad_in_loop.py [--reps 3] [--json PATH]

Each rule runs in a fresh child process (``layers.conv`` replaced by the plain correlation for
JAX's rule), one after the other on the same machine; compare the ratio, not the seconds, across
machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from aid_jax import backbones
from aid_jax.backbones import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _workloads(bb):
    sigmas = jnp.linspace(80.0, 0.1, 11)

    def D(p, x, s):
        return backbones.denoise(p, x, jnp.full((x.shape[0],), s), config=bb.config)

    def pigdm_like(p, x):
        def body(x, ss):
            s, s_next = ss
            d, vjp = jax.vjp(lambda z: D(p, z, s), x)
            return x + (s_next - s) * (x - d) / s + 0.01 * vjp(x - d)[0], None

        return jax.lax.scan(body, x, (sigmas[:-1], sigmas[1:]))[0]

    def euler(p, x):
        d = jax.checkpoint(D)

        def body(x, ss):
            s, s_next = ss
            return x + (s_next - s) * (x - d(p, x, s)) / s, None

        return jax.lax.scan(body, x, (sigmas[:-1], sigmas[1:]))[0]

    def backprop(p, x):
        return jax.grad(lambda z: jnp.sum(euler(p, z) ** 2))(x)

    return dict(pigdm_like=pigdm_like, backprop=backprop, forward=euler)


def _time(fn, params, x, reps: int) -> float:
    f = jax.jit(fn)
    jax.block_until_ready(f(params, x))
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(f(params, x))
    return (time.perf_counter() - start) / reps


def _measure(rule: str, batch: int, reps: int) -> dict:
    """Seconds per call of each workload under ``rule``, in this (fresh) process: the rule is
    chosen before anything is traced, since traces of the networks are reused within a process."""
    if rule == "jax":
        layers.conv = layers._correlate  # the networks look ``conv`` up in layers at call time
    bb = backbones.load_backbone(ROOT / "ported_weights/fashion_mnist_32")
    x = jax.random.normal(jax.random.key(0), (batch, *bb.image_shape)) * 80.0
    return {name: _time(fn, bb.params, x, reps) for name, fn in _workloads(bb).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/conv_grad_in_loop.json"))
    ap.add_argument("--rule", choices=("jax", "project"), help=argparse.SUPPRESS)  # child
    args = ap.parse_args()
    if args.rule:
        print(json.dumps(_measure(args.rule, args.batch, args.reps)))
        return
    times = {}
    for rule in ("jax", "project"):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rule",
                rule,
                "--reps",
                str(args.reps),
                "--batch",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        times[rule] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for name in times["jax"]:
        a, b = times["jax"][name], times["project"][name]
        rows.append(dict(workload=name, jax_rule_s=a, project_rule_s=b, speedup=a / b))
        print(f"{name:>11}: JAX's rule {a:.3f} s, project's {b:.3f} s, ×{a / b:.2f}")
    out = dict(
        date=datetime.date.today().isoformat(),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform}",
        jax=jax.__version__,
        batch=args.batch,
        steps=10,
        rows=rows,
    )
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
