"""Warm starts: JAX's persistent compilation cache for the command lines.

``python -m aid_jax.main`` (the main job and every mode) and ``python -m aid_jax.inpaint`` call
:func:`enable` first, so a second run loads its compiled programs from disk instead of compiling
them again (docs/BENCHMARKS.md, "Warm starts"). The library itself never turns it on: a user
calling ``aid_jax.inpaint(...)`` decides with JAX's own ``jax_compilation_cache_dir``.

The switch is the environment variable ``AID_JAX_COMPILATION_CACHE``: unset or empty = the user
cache folder (``$XDG_CACHE_HOME/aid_jax/jax`` or ``~/.cache/aid_jax/jax``), a path = that folder,
``off`` (or 0, false, no) = no cache. Entries are keyed by JAX on the program, the JAX/XLA
version and the device, so a stale entry is never used; deleting the folder is always safe.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import jax

ENV = "AID_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no")
# Programs that compile faster than this are not written. JAX's default is 1 s; the command
# lines' many small programs (casts, paste-back, metrics) add up to seconds, and an entry is
# a few kB, so every program is kept (benchmarks/warm_start.py).
MIN_COMPILE_SECONDS = 0.0


def default_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/aid_jax/jax``, else ``~/.cache/aid_jax/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "aid_jax" / "jax"


def enable(setting: str | None = None) -> pathlib.Path | None:
    """Turn on the persistent compilation cache; returns its folder, or None when it is off.

    ``setting`` overrides ``$AID_JAX_COMPILATION_CACHE`` (same meanings). A folder that cannot
    be created or written leaves the cache off with a warning saying how to fix it: a cache is
    never a reason for a run to fail."""
    setting = os.environ.get(ENV, "") if setting is None else str(setting)
    if setting.strip().lower() in OFF:
        return None
    directory = pathlib.Path(setting).expanduser() if setting.strip() else default_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        warnings.warn(
            f"JAX compilation cache off: {directory} is not writable ({e}); set {ENV} to a "
            f"writable folder, or {ENV}=off",
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory


__all__ = ["ENV", "MIN_COMPILE_SECONDS", "default_dir", "enable"]
