"""The project's one wrapper around Orbax (so a move to the Orbax v1 API is a one-file change)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_pytree(directory: str | os.PathLike, tree) -> None:
    """Write a pytree of arrays as an Orbax checkpoint at `directory` (must not exist)."""
    directory = pathlib.Path(directory).absolute()
    # A host tree written by the calling process alone: in a multi-process run Orbax would
    # otherwise wait for every process at its barriers (process 0 writes best/, exports).
    local = {}
    if jax.process_count() > 1:
        me = jax.process_index()
        opts = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        local = dict(multiprocessing_options=opts)
    # Synchronous and uncompressed on purpose: the async checkpointer snapshots every array
    # first, and zstd over float weights (which barely compress) buffers another copy. Porting a
    # 236 MiB pickle peaked at 2.85x the file size with the defaults (benchmarks/port_memory.py).
    handler = ocp.PyTreeCheckpointHandler(use_compression=False, **local)
    with ocp.Checkpointer(handler, **local) as checkpointer:
        checkpointer.save(directory, args=ocp.args.PyTreeSave(tree))
    # Orbax leaves commit markers holding this machine's absolute path; they matter only on
    # non-atomic object stores, and shipped weights should not carry machine paths.
    for marker in directory.rglob("commit_success.txt"):
        marker.unlink()


# A training state may declare at most MAX_STATE_RATIO x the bytes of the entries whose shapes
# are known (params, EMA: the optimiser's moments are a few copies) + MAX_STATE_EXTRA_BYTES; its
# known entries must have exactly the expected shapes. Checked on the metadata, before restoring.
MAX_STATE_RATIO = 8
MAX_STATE_EXTRA_BYTES = 64 * 2**20


def _declared(checkpointer, directory: pathlib.Path, strict: bool = True):
    """The tree an Orbax pytree checkpoint declares, as ``jax.ShapeDtypeStruct`` leaves, from
    its metadata alone (nothing is allocated); chunk shapes larger than the array refused.
    Leaves that are not arrays are refused (``strict``) or kept as Orbax describes them."""
    meta = checkpointer.metadata(directory).item_metadata
    meta = getattr(meta, "tree", meta)  # Orbax's TreeMetadata wraps the plain tree
    if meta is None or not jax.tree.leaves(meta):  # Orbax only warns on unreadable metadata
        raise ValueError(f"{directory}: no readable Orbax metadata (missing or corrupt files)")

    def leaf(path, m):
        shape, dtype = getattr(m, "shape", None), getattr(m, "dtype", None)
        if shape is None or dtype is None:
            if not strict:
                return m
            raise ValueError(f"{directory}: {jax.tree_util.keystr(path)} is not an array")
        shape = tuple(int(d) for d in shape)
        chunk = getattr(getattr(m, "storage", None), "chunk_shape", None)
        if chunk is not None and (
            len(chunk) != len(shape)
            or any(int(c) > max(d, 1) for c, d in zip(chunk, shape, strict=False))
        ):
            raise ValueError(
                f"{directory}: {jax.tree_util.keystr(path)} declares chunks {tuple(chunk)} "
                f"larger than its shape {shape}; the checkpoint is corrupt"
            )
        return jax.ShapeDtypeStruct(shape, np.dtype(dtype))

    return jax.tree_util.tree_map_with_path(leaf, meta)


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(np.shape(a))
        for path, a in flat
    }


def _check_declared(declared, like, directory) -> None:
    """``declared`` (from the metadata) has exactly ``like``'s names and shapes, else a
    ValueError naming the first difference — before anything is allocated."""
    got, want = _flat_shapes(declared), _flat_shapes(like)
    for key, shape in want.items():
        if key not in got:
            raise ValueError(f"{directory}: {key} is missing (expected shape {shape})")
        if got[key] != shape:
            raise ValueError(
                f"{directory}: {key} is declared with shape {got[key]}, expected {shape} "
                "(checked before anything is allocated)"
            )
    for key in got:
        if key not in want:
            raise ValueError(f"{directory}: {key} is not expected")


def _nbytes(tree) -> int:
    return sum(
        math.prod(int(d) for d in a.shape) * np.dtype(a.dtype).itemsize
        for a in jax.tree.leaves(tree)
        if hasattr(a, "shape") and hasattr(a, "dtype")
    )


def read_metadata(directory: str | os.PathLike):
    """The tree of an Orbax pytree checkpoint (written by `save_pytree`) as
    ``jax.ShapeDtypeStruct`` leaves, read from its metadata only: nothing is allocated, so the
    caller can check the declared names and shapes first (then ``restore_pytree(directory,
    declared)``). Chunk shapes larger than their array are refused (ValueError)."""
    directory = pathlib.Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        return _declared(checkpointer, directory)


def restore_pytree(directory: str | os.PathLike, like=None):
    """Read an Orbax pytree checkpoint into NumPy arrays.

    Args:
      directory: the checkpoint folder written by `save_pytree`.
      like: optional pytree with the expected structure, shapes and dtypes (arrays or
        `jax.ShapeDtypeStruct`); the names and shapes the checkpoint's metadata declares must
        equal it (ValueError naming the first difference) before anything is allocated.
        Without it, whatever the metadata declares is allocated: pass it for untrusted folders.
    """
    directory = pathlib.Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        declared = _declared(checkpointer, directory)
        if like is None:
            like = declared
        else:
            _check_declared(declared, like, directory)
        like = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), like)
        tree = checkpointer.restore(directory, like)
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------------
# Training checkpoints: a CheckpointManager holding the train state and a JSON metadata item.


def make_manager(directory, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
    directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save_train_state(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Save (state, meta) at `step` and wait, so a kill right after loses nothing."""
    manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def check_state_declaration(directory, abstract_state):
    """Before a training state is restored into ``abstract_state``: the checkpoint's metadata
    (``<directory>/state``) must declare no array of the state's entries larger than the largest
    one expected and no more than ``MAX_STATE_RATIO`` x the expected bytes +
    ``MAX_STATE_EXTRA_BYTES`` in all, so a damaged or hostile checkpoint is refused (ValueError)
    before anything is allocated. Returns the declared tree (``jax.ShapeDtypeStruct`` leaves
    where Orbax describes arrays)."""
    directory = pathlib.Path(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        declared = _declared(checkpointer, directory / "state", False)
    sizes = [
        math.prod(int(d) for d in a.shape) * np.dtype(a.dtype).itemsize
        for a in jax.tree.leaves(abstract_state)
    ]
    biggest = max(sizes, default=0)
    known = declared  # entries the state no longer has (restore_step drops them): total only
    if isinstance(declared, dict) and isinstance(abstract_state, dict):
        known = {k: v for k, v in declared.items() if k in abstract_state}
    for path, a in jax.tree_util.tree_flatten_with_path(known)[0]:
        if not isinstance(a, jax.ShapeDtypeStruct):
            continue
        size = math.prod(int(d) for d in a.shape) * np.dtype(a.dtype).itemsize
        if size > biggest:
            raise ValueError(
                f"{directory}: {jax.tree_util.keystr(path)} is declared with shape {a.shape} "
                f"({size:,} bytes), larger than any array of the training state ({biggest:,} "
                "bytes; checked before anything is allocated); the checkpoint is corrupt"
            )
    limit = MAX_STATE_RATIO * sum(sizes) + MAX_STATE_EXTRA_BYTES
    if _nbytes(declared) > limit:
        raise ValueError(
            f"{directory}: the state declares {_nbytes(declared):,} bytes, more than "
            f"MAX_STATE_RATIO x the training state's + MAX_STATE_EXTRA_BYTES = {limit:,} "
            "(checked before anything is allocated); the checkpoint is corrupt"
        )
    return declared


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state):
    """(step, state, meta) of checkpoint ``step``; its declared sizes are checked first
    (:func:`check_state_declaration`); Orbax's exception if it cannot be read.

    Top-level entries the checkpoint has and ``abstract_state`` no longer has (e.g. the critic
    that AID's backprop actor stopped carrying) are read, within the same size limits, and
    dropped: Orbax restores only a whole tree, and a run saved before such a change resumes."""
    declared = check_state_declaration(
        pathlib.Path(manager.directory) / str(int(step)), abstract_state
    )
    dropped = ()
    if isinstance(declared, dict) and isinstance(abstract_state, dict):
        dropped = tuple(k for k in declared if k not in abstract_state)
        abstract_state = dict(abstract_state, **{k: declared[k] for k in dropped})
    restored = manager.restore(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    state = restored["state"]
    if dropped:
        state = {k: v for k, v in state.items() if k not in dropped}
    return int(step), state, restored["meta"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """(step, state, meta) of the newest checkpoint, or None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    return restore_step(manager, step, abstract_state)


def restore_step_state(directory, step: int, expect: dict | None = None):
    """The ``state`` item of training checkpoint ``step`` in ``directory`` (a ``checkpoints/``
    folder), as stored (NumPy arrays, no target structure needed): how a trained module is read
    from a workdir without rebuilding its optimiser.

    ``expect``: optional ``{entry: like}`` for entries of the state whose structure is known
    (e.g. the EMA parameters). Before anything is allocated, the metadata must declare exactly
    those shapes (where the entry exists), and no more than ``MAX_STATE_RATIO`` x their bytes +
    ``MAX_STATE_EXTRA_BYTES`` in all (ValueError otherwise).
    """
    directory = pathlib.Path(directory).absolute()
    if expect:
        with ocp.StandardCheckpointer() as checkpointer:
            declared = _declared(checkpointer, directory / str(int(step)) / "state", False)
        if not isinstance(declared, dict):
            raise ValueError(f"{directory / str(int(step))}: the state is not a dict")
        for entry, like in expect.items():
            if entry in declared:  # (an absent entry is the caller's to report)
                _check_declared(declared[entry], like, f"{directory / str(int(step))}/{entry}")
        limit = MAX_STATE_RATIO * _nbytes(list(expect.values())) + MAX_STATE_EXTRA_BYTES
        if _nbytes(declared) > limit:
            raise ValueError(
                f"{directory / str(int(step))}: the state declares {_nbytes(declared):,} bytes, "
                f"more than the limit MAX_STATE_RATIO x its parameters + MAX_STATE_EXTRA_BYTES = "
                f"{limit:,} (checked before anything is allocated); the checkpoint is corrupt"
            )
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
    return jax.tree.map(np.asarray, restored["state"])


# ---------------------------------------------------------------------------------------------
# Resuming: a workdir's checkpoints may only continue the run that made them.


class ResumeError(ValueError):
    """The workdir holds a run made with another configuration."""


class RestoreError(RuntimeError):
    """No checkpoint of the workdir can be restored (each one's error is in the message)."""


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint that cannot be restored was moved aside and an older one used instead."""


DAMAGED_SUFFIX = ".damaged"  # <checkpoints>/<step>.damaged: a checkpoint moved aside


def config_fingerprint(config, keys) -> dict:
    """The values of the run-defining config entries ``keys`` (dotted names) as plain JSON; an
    entry the config lacks is None (what an optional entry's absent default means)."""

    def get(dotted):
        node = config
        for part in dotted.split("."):
            if part not in node:
                return None
            node = node[part]
        return node.to_dict() if hasattr(node, "to_dict") else node

    return json.loads(json.dumps({k: get(k) for k in keys}, default=str))


def restore_run(manager: ocp.CheckpointManager, abstract_state, fingerprint: dict, workdir):
    """(step, state, meta) of the newest restorable checkpoint of this run, or None for a fresh
    workdir.

    Checkpoints are tried newest first. One that fails to restore (a truncated data file, an
    empty or missing ``_METADATA``, a missing ``state/``, a truncated meta JSON, ... — whatever
    Orbax raises) is skipped; once an older one restores and its fingerprint matches, every
    skipped one is moved aside to ``<step>.damaged`` (kept for inspection, ignored by the
    manager) with a ``DamagedCheckpointWarning`` naming it and the steps whose progress is lost.

    Raises:
      ResumeError: the newest restorable checkpoint was made with another configuration (the
        message names the differing entries); nothing is moved.
      RestoreError: no checkpoint restores; the message lists each step's error; nothing is
        moved.
    """
    steps = sorted((int(s) for s in manager.all_steps()), reverse=True)
    if not steps:
        return None
    failures: list[tuple[int, Exception]] = []
    restored = None
    for step in steps:
        try:
            restored = restore_step(manager, step, abstract_state)
            if not isinstance(restored[2], dict):
                raise ValueError(f"meta is not a JSON object: {restored[2]!r:.80}")
            break
        except Exception as e:  # Orbax raises many types for damaged folders
            failures.append((step, e))
            restored = None
    directory = pathlib.Path(manager.directory)
    if restored is None:
        listing = "; ".join(f"step {s}: {_short(e)}" for s, e in failures)
        raise RestoreError(
            f"no checkpoint in {directory} can be restored ({listing}). Nothing was moved. To "
            f"start afresh, move {directory} aside (or use a new --workdir)."
        )
    # An entry made run-defining after the run was saved matches while it has the value None
    # (its absent default); entries no longer run-defining are ignored.
    saved = restored[2].get("fingerprint", {})
    diff = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if diff:
        raise ResumeError(
            f"{workdir} holds a run made with a different configuration (differs in {diff}). "
            "Use a new --workdir, or the original config, to resume."
        )
    if failures:
        good, newest = restored[0], failures[0][0]
        for step, error in failures:
            aside = _move_aside(directory / str(step))
            warnings.warn(
                f"checkpoint {directory / str(step)} cannot be restored ({_short(error)}); moved "
                f"aside to {aside}. Resuming from step {good}: the progress of steps "
                f"{good + 1}..{newest} is lost and will be recomputed.",
                DamagedCheckpointWarning,
                stacklevel=2,
            )
        manager.reload()  # forget the moved folders
    return restored


def _short(error: Exception, limit: int = 300) -> str:
    """``Type: first line of the message`` (Orbax/TensorStore messages run long)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _move_aside(step_dir: pathlib.Path) -> pathlib.Path:
    """Rename ``<step>`` to ``<step>.damaged`` (``.damaged.1``, ... if taken); returns the new
    path (the old one if it has gone)."""
    target = step_dir.with_name(step_dir.name + DAMAGED_SUFFIX)
    i = 0
    while target.exists():
        i += 1
        target = step_dir.with_name(f"{step_dir.name}{DAMAGED_SUFFIX}.{i}")
    if not step_dir.exists():
        return step_dir
    step_dir.rename(target)
    return target
