"""Datasets: readers (IDX, digits, folders, EDM zips, TFDS, npz) behind one source interface, and a
deterministic, resumable, host-sharded batch pipeline yielding NHWC float32 in [-1, 1]."""

from aid_jax.data.idx import DataError

__all__ = ["DataError"]
