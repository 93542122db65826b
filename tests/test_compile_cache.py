"""aid_jax/compile_cache.py: the command lines' persistent compilation cache (warm starts).

``python -m aid_jax.main`` run twice with the cache in a temporary folder: the first run writes
its compiled programs there, the second finds every one of them (it writes nothing new) and
produces the same samples; ``off`` and an unwritable folder leave the cache off (the latter with
a warning instead of failing the run). The time saved is a benchmark (docs/BENCHMARKS.md).
"""

import pathlib
import warnings

import jax
import numpy as np
import pytest
from smoke_configs import run_main

from aid_jax import compile_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sample_run(workdir: pathlib.Path, cache: str) -> None:
    run_main("configs/sample.py:smoke", workdir, env={compile_cache.ENV: cache})


def _entries(folder: pathlib.Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}


def _samples(workdir: pathlib.Path) -> np.ndarray:
    (f,) = sorted(workdir.glob("*.npz"))
    with np.load(f) as z:
        return z[z.files[0]]


def test_a_second_run_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    _sample_run(tmp_path / "a", str(cache))
    first = _entries(cache)
    assert first, "the first run wrote no compiled program"
    _sample_run(tmp_path / "b", str(cache))
    assert _entries(cache) == first  # every program of the second run was a cache hit
    np.testing.assert_array_equal(_samples(tmp_path / "a"), _samples(tmp_path / "b"))


def test_off_and_unwritable_folders_leave_the_cache_off(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    for word in ("off", "OFF", "0", "false", "no"):
        assert compile_cache.enable(word) is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable() is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match=f"{compile_cache.ENV}=off"):
        assert compile_cache.enable(str(blocker / "cache")) is None
    assert jax.config.jax_compilation_cache_dir == before  # nothing was switched on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert compile_cache.default_dir() == tmp_path / "xdg" / "aid_jax" / "jax"
