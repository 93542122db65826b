"""Warm starts (issue 20, point 4): the README's inpainting command run twice, with an empty
persistent compilation cache and then with the cache the first run filled
(aid_jax/compile_cache.py).

Each run is a fresh process that calls the command line's own ``main`` (``python -m
aid_jax.inpaint --method aid ...`` on the README's example image and mask) and records, through
JAX's monitoring events, the seconds of XLA compilation (JAX's backend-compile event, which on a
cache hit times the loading of the compiled program instead: the "compile or load" column), the
part of it spent reading the cache, the hits and misses, and the wall time to the written
result. A third run with the cache off is the control (it must compile as much as the cold run).

    PYTHONPATH=. python benchmarks/warm_start.py [--json benchmarks/results/warm_start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND = [
    "--method",
    "aid",
    "--image",
    "docs/examples/pullover.png",
    "--mask",
    "docs/examples/center_box_mask.png",
]
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
seconds = {"compile": 0.0, "cache_load": 0.0}
hits = {"hits": 0, "misses": 0}
def on_duration(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        seconds["compile"] += duration
    elif event == "/jax/compilation_cache/cache_retrieval_time_sec":
        seconds["cache_load"] += duration
def on_event(event, **kw):
    if event == "/jax/compilation_cache/cache_hits":
        hits["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        hits["misses"] += 1
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
from aid_jax.inpaint import main
status = main(sys.argv[2:] + ["--out", sys.argv[1]])
print(json.dumps(dict(status=status, wall=time.perf_counter() - t0, **seconds, **hits)))
"""


def run_once(cache: str, out: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["AID_JAX_COMPILATION_CACHE"] = cache
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *COMMAND],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        cache = str(tmp / "cache")
        rows = {
            "cold (empty cache)": run_once(cache, tmp / "cold.png"),
            "warm (second run)": run_once(cache, tmp / "warm.png"),
            "cache off": run_once("off", tmp / "off.png"),
        }
        same = (tmp / "cold.png").read_bytes() == (tmp / "warm.png").read_bytes()
    print("| run | compile or load s | of it cache reads s | hits / misses | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['compile']:.2f} | {r['cache_load']:.2f} | {r['hits']} / {r['misses']} "
            f"| {r['wall']:.2f} |"
        )
    print(f"same output cold/warm: {same}")
    if args.json:
        record = dict(
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            command="python -m aid_jax.inpaint " + " ".join(COMMAND),
            runs=rows,
            same_output=same,
        )
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
