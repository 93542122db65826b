"""Denoiser throughput of the full-size DDPM++ 64×64 network (the AFHQv2/FFHQ architecture), and
the same network in PyTorch with NVIDIA's own EDM code, in the same run (issue 20).

    python benchmarks/denoiser_throughput.py                       # float32, batches 1 and 8
    python benchmarks/denoiser_throughput.py --dtypes float32 bfloat16 --cores 0

Random weights from the released configuration (61,805,571 parameters, σ = 2). Every
measurement runs in a fresh child process pinned to ``--cores`` with as many threads (JAX: XLA's
CPU thread pool follows the affinity; PyTorch: ``torch.set_num_threads``), the JAX and PyTorch
children interleaved ``--rounds`` times so that a slow phase of the machine hits both; a
figure is the median over rounds of each child's median time per call (≥ ``--min-reps`` calls
and ≥ ``--min-seconds``, compilation / the first call excluded).

PyTorch side (optional; nothing of it is installed by the project or committed): a Python that
has torch (``--torch-python``, default ``$AID_JAX_TORCH_PYTHON`` or
``~/.cache/aid_jax/torch-venv/bin/python``; e.g. ``python -m venv ~/.cache/aid_jax/torch-venv &&
~/.cache/aid_jax/torch-venv/bin/pip install torch numpy requests``) and NVIDIA's EDM code
(``--edm-code``, default ``~/.cache/aid_jax/nvlabs_edm``: a checkout of github.com/NVlabs/edm, of
which ``training/``, ``torch_utils/`` and ``dnnlib/`` are imported). bfloat16 there is PyTorch's
own path, ``torch.autocast("cpu", torch.bfloat16)``; here it is the network's ``compute_dtype``
(preconditioning, GroupNorm statistics, softmax and D stay float32). Without either, only the
JAX figures are printed.

FLOPs per image are XLA's cost analysis of the compiled float32 forward (GFLOP/s = images/s ×
that count); the fraction of peak assumes ``--flops-per-cycle`` float32 FLOPs per cycle and
core at the clock in /proc/cpuinfo:
64 (default) for two 512-bit FMA units (AMD Zen 5, the project's EPYC machines: a lone float32
convolution reaches 115 GFLOP/s on one core, above Zen 4's 32 × 2.6 GHz; Xeon server cores), 32
for two 256-bit units (Zen 4, AVX2 cores). /proc/cpuinfo gives the nominal clock: a core that
boosts above it shows more than 100 %.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "aid_jax"

TIMER = r"""
import time, statistics
def timed(call, min_seconds, min_reps):
    t0 = time.perf_counter(); call(); first = time.perf_counter() - t0
    times = []
    while len(times) < min_reps or sum(times) < min_seconds:
        t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
    return first, statistics.median(times)
"""

JAX_CHILD = (
    TIMER
    + r"""
import json, os, sys
cores, dtypes, batches, min_seconds, min_reps = json.loads(sys.argv[1])
import jax, jax.numpy as jnp
from aid_jax.backbones import loader
from configs.afhq import DDPMPP_64
config = loader.config_from_checkpoint("EDMPrecond", DDPMPP_64)
params = jax.device_put(loader.init_params(jax.random.key(0), config))
rows = []
for dtype in dtypes:
    compute = jnp.dtype(dtype)
    fn = jax.jit(lambda p, x, s, c=compute: loader.denoise(p, x, s, config=config, compute_dtype=c))
    for batch in batches:
        x = jax.random.normal(jax.random.key(batch), (batch, 64, 64, 3), jnp.float32)
        s = jnp.full((batch,), 2.0, jnp.float32)
        flops = None
        if dtype == "float32":
            cost = fn.lower(params, x, s).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops = float(cost.get("flops", 0.0)) / batch or None
        first, per_call = timed(lambda: jax.block_until_ready(fn(params, x, s)), min_seconds,
                                min_reps)
        rows.append(dict(dtype=dtype, batch=batch, seconds=per_call, first_call_s=first,
                         flops_per_image=flops))
# bfloat16's error against float32: relative RMS of D's difference, on this random network at
# σ = 2 and on the project's trained Fashion-MNIST backbone over σ (random weights alone could
# hide it: NVIDIA's own init makes F tiny).
err = None
if "bfloat16" in dtypes:
    def rel(cfg, p, x, sig):
        s = jnp.full((x.shape[0],), sig, jnp.float32)
        ref = loader.denoise(p, x, s, config=cfg)
        low = loader.denoise(p, x, s, config=cfg, compute_dtype=jnp.bfloat16)
        return float(jnp.sqrt(jnp.mean((low - ref) ** 2) / jnp.mean(ref**2)))
    err = {"ddpmpp_64_random_sigma_2": rel(
        config, params, jax.random.normal(jax.random.key(99), (4, 64, 64, 3)), 2.0)}
    from aid_jax import backbones
    bb = backbones.load_backbone("ported_weights/fashion_mnist_32")
    x0 = jnp.clip(0.5 * jax.random.normal(jax.random.key(98), (16, *bb.image_shape)), -1, 1)
    for sig in (0.05, 0.5, 5.0, 50.0):
        x = x0 + sig * jax.random.normal(jax.random.key(97), x0.shape)
        err[f"fashion_mnist_32_sigma_{sig:g}"] = rel(bb.config, bb.params, x, sig)
print(json.dumps(dict(rows=rows, version=jax.__version__, bf16_rel_rms_error=err)))
"""
)

TORCH_CHILD = (
    TIMER
    + r"""
import json, os, sys
cores, dtypes, batches, min_seconds, min_reps, edm_code, kwargs = json.loads(sys.argv[1])
import torch
torch.set_num_threads(len(cores))
sys.path.insert(0, edm_code)
from training.networks import EDMPrecond
kwargs = {k: v for k, v in kwargs.items() if k not in ("sigma_min", "sigma_max")}
torch.manual_seed(0)
net = EDMPrecond(**kwargs).eval()
rows = []
for dtype in dtypes:
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, 64, 64, generator=g)
        s = torch.full((batch,), 2.0)
        def call():
            with torch.inference_mode():
                if dtype == "float32":
                    return net(x, s)
                # NVIDIA's EDMPrecond asserts a float32 F under autocast: its preconditioning
                # written out (float32), the UNet under autocast, as the JAX side does.
                sd, sig = net.sigma_data, s.reshape(-1, 1, 1, 1)
                c_in = 1 / (sd**2 + sig**2).sqrt()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    f = net.model(c_in * x, sig.log().flatten() / 4, class_labels=None)
                c_skip = sd**2 / (sig**2 + sd**2)
                return c_skip * x + sig * sd / (sig**2 + sd**2).sqrt() * f.float()
        first, per_call = timed(call, min_seconds, min_reps)
        rows.append(dict(dtype=dtype, batch=batch, seconds=per_call, first_call_s=first))
print(json.dumps(dict(rows=rows, version=torch.__version__)))
"""
)


def _child(python: str, code: str, payload, cores) -> dict:
    """Run ``code`` in a fresh process pinned to ``cores`` (threads follow the affinity)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), AID_JAX_COMPILATION_CACHE="off")
    env.update(OMP_NUM_THREADS=str(len(cores)), JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    done = subprocess.run(
        [python, "-c", code, json.dumps(payload)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    if done.returncode:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_side(args) -> tuple[str, str] | None:
    """(python, NVIDIA code dir) when both exist, else None (the JAX figures alone)."""
    python = (
        args.torch_python
        or os.environ.get("AID_JAX_TORCH_PYTHON")
        or str(CACHE / "torch-venv/bin/python")
    )
    code = pathlib.Path(args.edm_code or CACHE / "nvlabs_edm")
    if args.no_torch or not pathlib.Path(python).exists():
        return None
    if not (code / "training" / "networks.py").exists():
        print(f"no NVIDIA EDM code in {code} (training/networks.py): JAX figures only")
        return None
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode:
        print(f"{python} has no torch: JAX figures only")
        return None
    return python, str(code)


def peak_flops(cores: int, flops_per_cycle: float) -> float | None:
    """float32 FLOP/s of ``cores`` cores at /proc/cpuinfo's clock (None if unknown)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return cores * flops_per_cycle * float(line.split(":")[1]) * 1e6
    except OSError:
        pass
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--cores", default="0", help="cores to pin both sides to: 0, 0,1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--min-reps", type=int, default=2)
    parser.add_argument("--torch-python", default="")
    parser.add_argument("--edm-code", default="")
    parser.add_argument("--no-torch", action="store_true", help="the JAX figures alone")
    parser.add_argument("--flops-per-cycle", type=float, default=64.0)
    parser.add_argument("--out", default="benchmarks/results/denoiser_throughput.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from aid_jax import provenance
    from configs.afhq import DDPMPP_64

    cores = sorted(int(c) for c in args.cores.split(","))
    spec = [args.dtypes, args.batch_sizes, args.min_seconds, args.min_reps]
    other = torch_side(args)
    runs: dict[str, list] = {"jax": [], "torch": []}
    versions, errors = {}, {}
    for r in range(args.rounds):
        out = _child(sys.executable, JAX_CHILD, [cores, *spec], cores)
        runs["jax"].append(out["rows"])
        versions["jax"] = out["version"]
        errors["jax"] = out.get("bf16_rel_rms_error")
        print(f"round {r + 1}: JAX done", flush=True)
        if other:
            payload = [cores, *spec, other[1], dict(DDPMPP_64)]
            out = _child(other[0], TORCH_CHILD, payload, cores)
            runs["torch"].append(out["rows"])
            versions["torch"] = out["version"]
            print(f"round {r + 1}: PyTorch done", flush=True)

    def median_rows(side):
        if not runs[side]:
            return {}
        keyed = {}
        for rows in runs[side]:
            for row in rows:
                keyed.setdefault((row["dtype"], row["batch"]), []).append(row)
        return {
            k: dict(
                seconds=statistics.median(r["seconds"] for r in v),
                first_call_s=statistics.median(r["first_call_s"] for r in v),
                flops_per_image=v[0].get("flops_per_image"),
            )
            for k, v in keyed.items()
        }

    jax_rows, torch_rows = median_rows("jax"), median_rows("torch")
    peak = peak_flops(len(cores), args.flops_per_cycle)
    flops = next((r["flops_per_image"] for r in jax_rows.values() if r["flops_per_image"]), None)
    rows = []
    for (dtype, batch), j in jax_rows.items():
        row = dict(dtype=dtype, batch=batch, jax_images_per_s=batch / j["seconds"])
        row["jax_first_call_s"] = j["first_call_s"]
        t = torch_rows.get((dtype, batch))
        if t:
            row.update(torch_images_per_s=batch / t["seconds"])
            row["ratio_jax_over_torch"] = row["jax_images_per_s"] / row["torch_images_per_s"]
        if flops:
            row["jax_gflops"] = row["jax_images_per_s"] * flops / 1e9
        if flops and peak:
            row["jax_fraction_of_fp32_peak"] = row["jax_images_per_s"] * flops / peak
            if t:
                row["torch_fraction_of_fp32_peak"] = row["torch_images_per_s"] * flops / peak
        rows.append(row)

    print(
        f"\n{len(cores)} core(s) {cores}; XLA FLOPs per image: {flops / 1e9:.1f} G" if flops else ""
    )
    print(
        "| dtype | batch | JAX img/s | PyTorch img/s | JAX / PyTorch | JAX GFLOP/s | "
        "% of float32 peak at the nominal clock |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tp = r.get("torch_images_per_s")
        frac = r.get("jax_fraction_of_fp32_peak")
        print(
            f"| {r['dtype']} | {r['batch']} | {r['jax_images_per_s']:.2f} | "
            f"{'—' if tp is None else f'{tp:.2f}'} | "
            f"{'—' if tp is None else '×{:.2f}'.format(r['ratio_jax_over_torch'])} | "
            f"{r.get('jax_gflops', 0):.0f} | "
            f"{'—' if frac is None else f'{100 * frac:.0f} %'} |"
        )
    result = dict(
        benchmark="denoiser_throughput",
        network="EDMPrecond + SongUNet DDPM++ 64x64 (AFHQv2/FFHQ config), random weights",
        **provenance.stamp(),
        cores=cores,
        rounds=args.rounds,
        flops_per_image=flops,
        peak_fp32_flops=peak,
        flops_per_cycle=args.flops_per_cycle,
        side_versions=versions,
        bf16_rel_rms_error=errors,
        rows=rows,
        runs=runs,
    )
    if any(v is not None for v in errors.values()):
        print(f"JAX bfloat16 vs float32, relative RMS error of D: {errors['jax']}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
