"""The trainers' ``:smoke`` configs for the tests that drive a trainer through its loop
(test_train_loop.py, test_distributed.py, whose child processes import this file too), and
:func:`run_main`, the tests' one way to run ``python -m aid_jax.main`` in a child process."""

import importlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def trainer_smoke_config(name: str):
    """``configs/<name>.py``'s smoke config with its backbone path (if any) made absolute. For
    AID it is the trainer's defaults (the critic, the actor and antithetic pairs: every part of
    the state moves and the most collectives run); the main job's backprop recipe runs on the
    same loop and has its own tests (test_aid_backprop.py)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(f"configs.{name}")
    config = getattr(module, "trainer_defaults", module.get_config)("smoke")
    if "backbone" in config:
        config.backbone.path = str(ROOT / config.backbone.path)
    return config


def run_main(config: str, workdir, *flags: str, env=None, timeout: int = 600):
    """``python -m aid_jax.main --config=<config> --workdir=<workdir> <flags>`` from the
    repository root on the CPU (``env`` adds variables); fails the test with the end of the
    child's stderr unless it exits with 0. Returns the CompletedProcess (text output)."""
    done = subprocess.run(
        [sys.executable, "-m", "aid_jax.main", f"--config={config}", f"--workdir={workdir}"]
        + list(flags),
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
