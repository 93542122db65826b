"""The trainers' ``:smoke`` configs for the tests that drive a trainer through its loop
(test_train_loop.py, test_distributed.py, whose child processes import this file too)."""

import importlib
import pathlib
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
