"""The benchmarks' one way to run a measurement in a fresh Python process: each measurement that
must not share a process (a fixed convolution rule, a device count, a recipe's compile) runs
``python -c CODE ARGS...`` from the repository root and prints one JSON line last."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_json(code: str, *args, env: dict | None = None, name: str = "child") -> dict:
    """The last stdout line of ``python -c code args...`` as JSON (persistent compilation cache
    off, so every child compiles alike); RuntimeError with the end of stderr if it fails."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), AID_JAX_COMPILATION_CACHE="off")
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
