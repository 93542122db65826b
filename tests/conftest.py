"""Test configuration: CPU only, eight fake devices, strict dtype promotion, highest precision.

The flags must be set before JAX initialises its backend, hence at import time.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The command lines' persistent compilation cache stays out of the user's home in the tests
# (subprocesses inherit this; tests/test_compile_cache.py points it at a temporary folder).
os.environ.setdefault("AID_JAX_COMPILATION_CACHE", "off")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_threefry_partitionable", True)
# Tests run tiny programs once: XLA's optimisation passes cost more compile time than they save.
jax.config.update("jax_disable_most_optimizations", True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

TESTDATA = pathlib.Path(__file__).parent / "testdata"


@pytest.fixture
def testdata() -> pathlib.Path:
    return TESTDATA


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
