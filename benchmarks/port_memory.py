"""Peak memory and time of `python -m aid_jax.port` on an AFHQ-size (247 MB) NVIDIA pickle.

    python benchmarks/port_memory.py

Writes a full-size EDMPrecond + SongUNet DDPM++ 64×64 pickle in NVIDIA's exact format (random
weights, the project's own torch-free writer from tests/ckpt_writer.py), ports it in a fresh
subprocess, and reports the subprocess's peak resident memory above its baseline after imports.
Target (issue 2): below 3× the file size. Prints a table and writes JSON to benchmarks/results/.
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
import tempfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import jax, numpy as np, orbax.checkpoint  # imports count toward the baseline
    from aid_jax import port

    def rss_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    base = rss_mb("VmRSS:")
    t0 = time.perf_counter()
    port.port(sys.argv[1], sys.argv[2])
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(baseline_mb=base, peak_mb=rss_mb("VmHWM:"), seconds=seconds)))
    """
)


def build_module_tree(state: dict, class_names: dict[str, str]):
    """Nest a flat torch state dict into NVIDIA-style persistent modules (enc/dec: ModuleDict)."""
    import ckpt_writer as w

    tree: dict = {}
    for key, value in state.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def make(name, node):
        params, buffers, children = {}, {}, {}
        for k, v in node.items():
            if isinstance(v, dict):
                children[k] = make(k, v)
            elif k in ("resample_filter", "freqs"):
                buffers[k] = w.Tensor.of(v)
            else:
                params[k] = w.Tensor.of(v, parameter=True)
        if name in ("enc", "dec"):
            return w.container("ModuleDict", children)
        return w.Module(class_names.get(name, "Module"), params, buffers, children)

    return make, tree


def write_afhq_pickle(path: pathlib.Path) -> int:
    import ckpt_writer as w
    import jax
    from denoiser_throughput import AFHQ_KWARGS

    from aid_jax.backbones import edm, loader

    config = loader.config_from_checkpoint("EDMPrecond", AFHQ_KWARGS)
    state = edm.init_state(jax.random.key(0), config)
    make, tree = build_module_tree(state, {"model": "SongUNet"})
    model = make("model", tree["model"])
    precond = w.Module("EDMPrecond", children={"model": model}, init_kwargs=dict(AFHQ_KWARGS))
    top = {"ema": precond, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {}}
    w.write_nvidia_pickle(path, top)
    return loader.num_params(config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/port_memory.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "edm-afhq-size-random.pkl"
        n_params = write_afhq_pickle(src)
        size_mb = src.stat().st_size / 2**20
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(pathlib.Path(tmp) / "ported")],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
    extra = child["peak_mb"] - child["baseline_mb"]
    result = dict(
        benchmark="port_memory",
        date=datetime.date.today().isoformat(),
        machine=dict(platform=platform.platform(), cpu_count=os.cpu_count()),
        num_params=n_params,
        file_mb=size_mb,
        baseline_rss_mb=child["baseline_mb"],
        peak_rss_mb=child["peak_mb"],
        extra_mb=extra,
        ratio_to_file=extra / size_mb,
        seconds=child["seconds"],
        target_ratio=3.0,
    )
    print("| file MB | baseline RSS MB | peak RSS MB | extra MB | extra / file | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {size_mb:.1f} | {child['baseline_mb']:.0f} | {child['peak_mb']:.0f} | {extra:.0f} | "
        f"{extra / size_mb:.2f} | {child['seconds']:.1f} |"
    )
    outp = ROOT / args.out
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {outp}")
    return result


if __name__ == "__main__":
    main()
