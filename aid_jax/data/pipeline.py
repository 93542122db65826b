"""Deterministic, resumable, host-sharded batching.

Semantics (the contract trainers and evaluators rely on):

- **Pure function of (seed, step).** The global batch of training step s is
  `perm_e[k * B : (k + 1) * B]` with `e, k = divmod(s, N // B)` and
  `perm_e = np.random.default_rng([seed, e]).permutation(N)` (N examples, global batch B). Each
  epoch is a fresh seeded permutation that visits every example at most once; the `N % B`
  examples left at the end of a permutation are dropped for that epoch (a different tail each
  epoch). Resuming at step s therefore needs no iterator state beyond (seed, s): `BatchIterator
  (start_step=s)` yields exactly what a fresh iterator yields from its (s+1)-th batch on.
- **Host sharding.** With P JAX processes, process p takes the contiguous slice
  `[p * B / P, (p + 1) * B / P)` of the global batch (B must divide by P); concatenating the
  processes' batches in process order gives the global batch. `to_global_array` assembles the
  per-process slices into one `jax.Array` sharded along the mesh's 'data' axis.
- **Batches** are dicts `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}` with
  b = B / P (`to_model_range`: x / 127.5 - 1, EDM's convention).
- **Resume safety.** `BatchIterator.state()` records (step, seed, source name, number of examples,
  batch size); `BatchIterator.restore` refuses a state whose source name, size or batch size differ
  from the current ones, so a resume directory from another config cannot silently continue.
- **Prefetch.** With `prefetch > 0` one background thread computes the next batches in step order
  into a bounded queue; the order and content are identical to `prefetch=0`.
- **Evaluation.** `eval_indices(N, num, seed, subset)` is a fixed seeded subset (a prefix of a
  permutation independent of the training permutations: the first k of a larger subset are the
  subset of size k) of the whole split, of its fixed validation block (`validation_block`:
  min(2,000, N // 5) images) or of the test images (the rest); `eval_batches` walks it in
  order, padding the last batch and marking padding with `valid=False` so every process sees
  the same shapes.
"""

from __future__ import annotations

import functools
import queue
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aid_jax.sharding import DATA_AXIS

_EVAL_TAG = 0x6576616C  # 'eval': decorrelates eval_indices from the training permutations


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (EDM's convention: x / 127.5 - 1).

    A floating-point array is already in the model's units (a latent source's z, see
    ``aid_jax.data.sources``) and is returned as float32 unchanged."""
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.floating):
        return images.astype(np.float32)
    return images.astype(np.float32) / 127.5 - 1.0


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def batch_indices(
    num_examples: int,
    step: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Indices of this process's share of the global batch of `step`."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the dataset size {num_examples}")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} does not split over {process_count} hosts")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if step < 0:
        raise ValueError(f"step {step} is negative")
    epoch, k = divmod(int(step), per_epoch)
    perm = _permutation(int(num_examples), int(seed), epoch)
    global_idx = perm[k * batch_size : (k + 1) * batch_size]
    return global_idx.reshape(process_count, -1)[process_index].copy()


def batch_at(source, step, *, batch_size, seed, process_index=0, process_count=1) -> dict:
    """{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} for training step `step`."""
    idx = batch_indices(len(source), step, batch_size, seed, process_index, process_count)
    images, labels = source.get(idx)
    return {"image": to_model_range(images), "label": labels}


def _produce(source, start, batch_size, seed, pi, pc, out: queue.Queue, stop: threading.Event):
    """Prefetch thread: batches of steps start, start + 1, ... in order (an error ends it)."""
    step = start
    while not stop.is_set():
        try:
            item = batch_at(
                source, step, batch_size=batch_size, seed=seed, process_index=pi, process_count=pc
            )
        except BaseException as e:  # handed to the consumer, raised there
            item = e
        while not stop.is_set():
            try:
                out.put((step, item), timeout=0.1)
                break
            except queue.Full:
                continue
        if isinstance(item, BaseException):
            return
        step += 1


class BatchIterator:
    """Endless iterator over `batch_at(source, step, ...)` for step = start_step, start_step + 1...

    batch_size is the global batch size; each process gets batch_size / process_count examples.
    process_index/process_count default to jax.process_index()/jax.process_count(). prefetch: the
    number of batches computed ahead by a background thread (0: none, synchronous).
    """

    STATE_KEYS = ("step", "seed", "source", "num_examples", "batch_size")

    def __init__(
        self,
        source,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
    ):
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        self._step = int(start_step)
        # Validate now rather than in the first __next__ (raises on bad sizes or indices).
        batch_indices(
            len(source),
            self._step,
            self.batch_size,
            self.seed,
            self.process_index,
            self.process_count,
        )
        self._queue = None
        self._stop = threading.Event()
        self._thread = None
        if prefetch and prefetch > 0:
            self._queue = queue.Queue(maxsize=int(prefetch))
            self._thread = threading.Thread(
                target=_produce,
                args=(
                    source,
                    self._step,
                    self.batch_size,
                    self.seed,
                    self.process_index,
                    self.process_count,
                    self._queue,
                    self._stop,
                ),
                name="aid_jax-prefetch",
                daemon=True,
            )
            self._thread.start()

    @property
    def step(self) -> int:
        """The step of the batch the next `next()` returns."""
        return self._step

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.batch_size

    @property
    def epoch(self) -> int:
        return self._step // self.steps_per_epoch

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._stop.is_set():
            raise RuntimeError("BatchIterator is closed")
        if self._queue is None:
            batch = batch_at(
                self.source,
                self._step,
                batch_size=self.batch_size,
                seed=self.seed,
                process_index=self.process_index,
                process_count=self.process_count,
            )
        else:
            while True:
                try:
                    step, batch = self._queue.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise RuntimeError("prefetch thread ended without a batch") from None
            if step != self._step:  # cannot happen: one producer, FIFO queue
                raise RuntimeError(f"prefetch returned step {step}, expected {self._step}")
            if isinstance(batch, BaseException):
                self._stop.set()
                raise batch
        self._step += 1
        return batch

    def state(self) -> dict:
        """JSON-serialisable position: pass to `BatchIterator.restore` to continue exactly here."""
        return {
            "step": self._step,
            "seed": self.seed,
            "source": self.source.name,
            "num_examples": len(self.source),
            "batch_size": self.batch_size,
        }

    @classmethod
    def restore(cls, source, state: dict, batch_size: int | None = None, **kwargs):
        """An iterator continuing from `state`; raises ValueError when `state` was written for
        another source (name or size) or batch size (`batch_size`, when given, must match the
        state's). kwargs: process_index, process_count, prefetch."""
        missing = [k for k in cls.STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"data iterator state lacks {missing}: {state}")
        problems = []
        if state["source"] != source.name:
            problems.append(f"source {state['source']!r} != {source.name!r}")
        if int(state["num_examples"]) != len(source):
            problems.append(f"num_examples {state['num_examples']} != {len(source)}")
        if batch_size is not None and int(state["batch_size"]) != int(batch_size):
            problems.append(f"batch_size {state['batch_size']} != {batch_size}")
        if problems:
            raise ValueError(
                "cannot resume: the saved data state belongs to another configuration ("
                + "; ".join(problems)
                + "). Use a fresh work directory or the original config."
            )
        return cls(
            source,
            int(state["batch_size"]),
            int(state["seed"]),
            start_step=int(state["step"]),
            **kwargs,
        )

    def close(self) -> None:
        """Stop the prefetch thread (idempotent); the iterator cannot be used afterwards."""
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


SUBSETS = ("all", "test", "validation")
VALIDATION_MAX = 2000  # size of the held-out validation block of an evaluation split
_VALIDATION_TAG = 0x76616C69  # 'vali': the block is fixed, independent of every run seed


def validation_size(num_examples: int) -> int:
    """Images of an evaluation split held out for validation (tuning, AID's model selection):
    min(2,000, N // 5) — 2,000 of Fashion-MNIST's 10,000 test images."""
    return min(VALIDATION_MAX, int(num_examples) // 5)


def validation_block(num_examples: int) -> np.ndarray:
    """The sorted indices of the validation block: a fixed seeded subset of the split, the same
    for every run seed, so validation and test images never overlap."""
    perm = np.random.default_rng([_VALIDATION_TAG, int(num_examples)]).permutation(num_examples)
    return np.sort(perm[: validation_size(num_examples)]).astype(np.int64)


def eval_indices(num_examples: int, num: int, seed: int, subset: str = "all") -> np.ndarray:
    """A fixed, seeded subset of `num` distinct indices of range(num_examples) (int64 [num]).

    ``subset``: ``"all"`` draws from the whole split; ``"validation"`` only from the validation
    block (:func:`validation_block`); ``"test"`` only from the rest of the split (never a
    validation image). The order is the permutation's, so eval_indices(n, k, s) ==
    eval_indices(n, m, s)[:k] for k <= m; the permutation is independent of the training
    permutations of the same seed.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    pool = np.arange(num_examples, dtype=np.int64)
    if subset != "all":
        block = validation_block(num_examples)
        pool = block if subset == "validation" else np.setdiff1d(pool, block)
    if not 0 < num <= len(pool):
        where = "" if subset == "all" else f" {subset} images (of {num_examples} in the split)"
        raise ValueError(f"cannot take {num} evaluation examples out of {len(pool)}{where}")
    tag = {"all": 1, "test": 2, "validation": 3}[subset]
    perm = np.random.default_rng([int(seed), _EVAL_TAG, tag]).permutation(len(pool))
    return pool[perm[:num]].astype(np.int64)


def eval_batches(
    source,
    indices,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """Batches over `indices` in order (global batch_size, split over processes like training).

    Yields {'image', 'label', 'index' (int64), 'valid' (bool)}: the last batch is padded with
    the first index and valid=False, so every batch (and every process) has the same shape.
    """
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if batch_size % pc:
        raise ValueError(f"batch_size {batch_size} does not split over {pc} hosts")
    indices = np.asarray(indices, np.int64)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        valid = np.ones(batch_size, bool)
        valid[len(chunk) :] = False
        chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), indices[0])])
        mine = slice(pi * batch_size // pc, (pi + 1) * batch_size // pc)
        images, labels = source.get(chunk[mine])
        yield {
            "image": to_model_range(images),
            "label": labels,
            "index": chunk[mine],
            "valid": valid[mine],
        }


def to_global_array(batch, mesh: jax.sharding.Mesh):
    """This process's batch (a pytree of arrays with the per-process batch on axis 0) -> global
    `jax.Array`s sharded along the mesh's 'data' axis (process p's rows come p-th)."""
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {DATA_AXIS!r}")
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    n_shards = mesh.shape[DATA_AXIS]

    def put(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % n_shards:
            raise ValueError(
                f"global batch of {global_rows} rows does not split over {n_shards} devices "
                f"of the mesh's {DATA_AXIS!r} axis; use a multiple of {n_shards}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)
