"""Where and with what a number was measured: the machine and package versions written next to
every benchmark result and shipped artefact (docs/BENCHMARKS.md asks for machine and date)."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform

import jax
import numpy as np

__all__ = ["cpu_model", "machine", "stamp", "versions"]


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    device = jax.devices()[0]
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_model=cpu_model(),
        device=f"{device.platform}:{device.device_kind}",
        num_devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        cpu_affinity=affinity,
    )


def versions(**extra: str) -> dict:
    """Python, jax and numpy versions, plus any given as keyword arguments."""
    return dict(
        python=platform.python_version(), jax=jax.__version__, numpy=np.__version__, **extra
    )


def stamp(**extra_versions: str) -> dict:
    """``date``, ``machine`` and ``versions`` for a results dict."""
    return dict(
        date=datetime.date.today().isoformat(),
        machine=machine(),
        versions=versions(**extra_versions),
    )
