"""Denoiser throughput of the full-size DDPM++ 64×64 network (the AFHQv2/FFHQ architecture).

    python benchmarks/denoiser_throughput.py                      # CPU, float32, batches 1 8 32
    python benchmarks/denoiser_throughput.py --dtypes float32 bfloat16   # on a GPU

Random weights from the released configuration (61,805,571 parameters); prints a table and
writes JSON (machine, date, versions, images/s per batch size and dtype) to benchmarks/results/.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from aid_jax import provenance  # noqa: E402
from aid_jax.backbones import loader  # noqa: E402
from configs.afhq import DDPMPP_64  # noqa: E402

# edm-afhqv2-64x64-uncond-vp.pkl: EDMPrecond + SongUNet DDPM++ (EDM_REFERENCE.md §10.1); the one
# definition lives in configs/afhq.py.
AFHQ_KWARGS = DDPMPP_64


def measure(fn, params, x, sigma, *, min_seconds: float, min_reps: int) -> tuple[float, float]:
    """(compile+first-call seconds, median seconds per call) with results blocked on."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x, sigma))
    first = time.perf_counter() - t0
    times = []
    while len(times) < min_reps or sum(times) < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x, sigma))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--min-reps", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/denoiser_throughput.json")
    args = parser.parse_args(argv)

    config = loader.config_from_checkpoint("EDMPrecond", AFHQ_KWARGS)
    n_params = loader.num_params(config)
    params = jax.device_put(loader.init_params(jax.random.key(0), config))
    device = jax.devices()[0]
    rows = []
    for dtype in args.dtypes:
        compute = jnp.dtype(dtype)
        fn = jax.jit(
            lambda p, x, s, compute=compute: loader.denoise(
                p, x, s, config=config, compute_dtype=compute
            )
        )
        for batch in args.batch_sizes:
            key = jax.random.key(batch)
            x = jax.random.normal(key, (batch, 64, 64, 3), jnp.float32)
            sigma = jnp.full((batch,), 2.0, jnp.float32)
            first, per_call = measure(
                fn, params, x, sigma, min_seconds=args.min_seconds, min_reps=args.min_reps
            )
            rows.append(
                dict(
                    dtype=dtype,
                    batch=batch,
                    images_per_s=batch / per_call,
                    ms_per_call=1e3 * per_call,
                    first_call_s=first,
                )
            )
            r = rows[-1]
            print(
                f"{dtype:9s} batch {batch:3d}: {r['images_per_s']:9.2f} img/s "
                f"({r['ms_per_call']:9.1f} ms/call; first call {first:.1f} s)",
                flush=True,
            )

    result = dict(
        benchmark="denoiser_throughput",
        network="EDMPrecond + SongUNet DDPM++ 64x64 (AFHQv2/FFHQ config), random weights",
        num_params=n_params,
        **provenance.stamp(),
        rows=rows,
    )
    print()
    print(
        f"| dtype | batch | images/s | ms/call |   ({n_params:,} parameters, {device.device_kind})"
    )
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['images_per_s']:.2f} | {r['ms_per_call']:.1f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
