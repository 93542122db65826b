"""Fuzz the safe checkpoint reader with many seeded mutations; write the counts as JSON.

    python benchmarks/hostile_files.py                      # 20,000 mutations, seed 17
    python benchmarks/hostile_files.py --mutations 100000 --seed 3 --children 8

The same fuzzer as ``tests/test_hostile_files.py`` (which runs 2,400 in CI): mutations of small
valid and malicious NVIDIA pickles (protocols 2 and 4), legacy torch files, torch zips (members
rewritten, stored/deflate/bzip2) and safetensors files, each read by ``read_checkpoint`` in a
child process under a 3 GiB address-space limit. Every mutation must load or be refused with the
project's error; a crash, a timeout, any other exception or the payloads' marker file is a
problem, listed in the JSON (``benchmarks/results/hostile_files.json``) with what reproduces it
(seed and mutation index: ``ckpt_writer.fuzz_case(seeds, index, seed, random.Random)``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_hostile_files as hostile  # noqa: E402  (the tests' child runner and fuzzer)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--children", type=int, default=10, help="child processes (batches)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/hostile_files.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = hostile.fuzz(
            pathlib.Path(tmp), args.seed, args.mutations, args.children, timeout=3600
        )
    seconds = time.perf_counter() - start
    counts = out["counts"]
    per_format: dict[str, dict[str, int]] = {}
    for key, n in sorted(counts.items()):
        fmt, outcome = key.split(":")
        per_format.setdefault(fmt, {})[outcome] = n
    result = {
        "what": "seeded mutations of pickles, zips and safetensors read by read_checkpoint in "
        f"child processes under RLIMIT_AS {hostile.READER_LIMIT // 2**30} GiB",
        "date": datetime.date.today().isoformat(),
        "machine": f"{_cpu()}, {os.cpu_count()} CPUs, {platform.machine()} ({platform.platform()})",
        "python": platform.python_version(),
        "seed": args.seed,
        "mutations": args.mutations,
        "children": args.children,
        "counts": per_format,
        "loaded": sum(v.get("loaded", 0) for v in per_format.values()),
        "refused_cleanly": sum(v.get("refused", 0) for v in per_format.values()),
        "problems": out["problems"],  # crashes, timeouts, other exceptions: must be empty
        "marker_created": out["marker"],
        "seconds": round(seconds, 1),
        "mutations_per_second": round(args.mutations / seconds, 1),
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}, indent=1))
    print(f"problems: {len(out['problems'])}; written to {path}")
    return 1 if out["problems"] or out["marker"] else 0


if __name__ == "__main__":
    sys.exit(main())
