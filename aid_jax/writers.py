"""Metric writers: JSON lines always (CI-friendly, greppable), TensorBoard when tensorboardX is
installed (no TensorFlow needed). clu's writers import TensorFlow, so they are not used; its
TensorFlow-free `parameter_overview` writes the trainers' parameter tables."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from clu import parameter_overview


class MetricWriter:
    """`write_scalars(step, dict)`, `write_images(step, dict)`, `flush()`, `close()`.

    ``enabled=False`` (the processes other than 0 of a multi-process run): nothing is created
    or written, every method does nothing; ``workdir`` is still the run's workdir.
    """

    def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True, enabled=True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = bool(enabled)
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:
                self._tb = None

    def write_scalars(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            v = float(np.asarray(v))
            row[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None:
                self._tb.add_scalar(k, v, int(step))
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: dict) -> None:
        """images: name -> uint8 [H, W, C]."""
        if self._tb is not None:
            for k, v in images.items():
                self._tb.add_image(k, np.asarray(v), int(step), dataformats="HWC")

    def flush(self) -> None:
        if not self.enabled:
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def write_parameter_overview(workdir: str | pathlib.Path, **trees) -> pathlib.Path:
    """`<workdir>/parameters.txt`: one clu table (name, shape, dtype, size, mean, std) per named
    parameter tree, e.g. ``actor=..., critic=...``; returns the path."""
    parts = []
    for name, tree in trees.items():
        table = parameter_overview.get_parameter_overview(tree, include_stats=True)
        parts.append(f"## {name}\n{table}\n")
    path = pathlib.Path(workdir) / "parameters.txt"
    path.write_text("\n".join(parts))
    return path
