"""The training loop both trainers share (aid_jax.pretrain and aid_jax.aid.train), big_vision style.

A trainer describes its run as a `Trainer`: the config, the fresh state, a pure update step, the
step's other inputs as a function of the step number, and hooks for what only it does (validation
grids, sample grids, manifests). `run(trainer, workdir)` does the rest, once for both:

    state on the mesh (replicated) -> jit the step (state donated, outputs replicated)
    -> restore the newest checkpoint of this run (its config fingerprint must match)
    -> config.json, parameters.txt, metrics writer, ``on_start``
    -> loop: step, log every ``train.log_every`` (NaN guard), checkpoint every
       ``train.checkpoint_every``, ``on_step``; SIGTERM and Ctrl-C finish the step and stop
    -> in ``finally``: save the progress made, close the manager and the writer.

The inputs of step s (batch, masks, PRNG key) are pure functions of (seed, s), so a run killed at
any moment resumes from its last checkpoint and continues exactly as an uninterrupted run would.
Checkpoints are ``<workdir>/checkpoints/<step>/{state, meta}`` through aid_jax.checkpoint (the
only Orbax module); ``meta`` holds the fingerprint of the config entries ``run_defining``, so a
workdir only continues the run that made it. A checkpoint that fails to restore is moved aside
(``<step>.damaged``) with a warning naming it and the steps lost, and the previous one is used
(``checkpoint.restore_run``).

One writer per workdir (:func:`workdir_lock`, taken by ``run`` and, before any set-up, by the
command line's training modes and ``pretrain``): the workdir must be writable (a real write
probe, :func:`check_workdir`) and ``<workdir>/.lock`` (JSON: pid, host, start time) is created
with ``O_CREAT | O_EXCL`` and removed at exit (also on SIGTERM, Ctrl-C or an exception). A lock
held by a live process, or by another host, refuses the run with a ``WorkdirError`` naming its
owner; a stale one (this host, pid gone) is taken over with a warning. Override for a lock known
to be stale (e.g. left on another host or container): ``AID_JAX_BREAK_LOCK=1``.

Multi-process runs (aid_jax.distributed): every process runs the loop (the step, the hooks'
validation and Orbax's checkpoints are collective; checkpoints are read by all), each on its
rows of the batch (:func:`host_images`, :func:`process_rows`); files are written by process 0
only (:func:`is_main_process`): the lock and the write probe, config.json, parameters.txt,
metrics.jsonl/TensorBoard (the other processes' ``MetricWriter`` is disabled), sample grids, and
what the trainers' hooks write (manifests, ``best/``), which they guard with the same test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from aid_jax import checkpoint, images, sharding
from aid_jax.data import pipeline
from aid_jax.distributed import is_main_process
from aid_jax.writers import MetricWriter, write_parameter_overview

State = dict  # a pytree of arrays with an int32 "step" entry


@dataclasses.dataclass
class Trainer:
    """One trainer's part of a run; everything else is `run`'s.

    The schedule is read from ``config.train``: ``num_steps``, ``log_every``,
    ``checkpoint_every``, ``keep`` (checkpoints kept) and ``tensorboard``.
    """

    name: str  # progress-bar label, e.g. "pretrain"
    config: Any  # the run's ml_collections.ConfigDict (config.json, fingerprint, schedule)
    run_defining: Sequence[str]  # dotted config entries a resume must not change
    mesh: jax.sharding.Mesh
    init_state: Callable[[], State]  # a fresh state, "step" = 0
    step_fn: Callable[..., tuple[State, dict]]  # pure (state, *inputs) -> (state, metrics)
    inputs_at: Callable[[int], tuple]  # the step function's other arguments at step s
    loss: str  # the metric the NaN guard checks
    parameters: Callable[[State], dict]  # name -> parameter tree, for parameters.txt
    postfix: Callable[[dict], dict] = lambda metrics: {}  # progress-bar fields from the metrics
    resumed: str = "resumed"  # the resume message's first words
    # Hooks. ``writer.workdir`` is the run's workdir.
    on_start: Callable[[State, MetricWriter], None] | None = None  # after restore and files
    on_step: Callable[[int, State, MetricWriter], None] | None = None  # after every step
    summary: dict = dataclasses.field(default_factory=dict)  # extra result entries (hooks fill)


def run(trainer: Trainer, workdir: str | pathlib.Path) -> dict:
    """Train (or resume) ``trainer`` in ``workdir`` (holding its lock, :func:`workdir_lock`).

    Returns:
      {"state", "step", "workdir", "train_step" (the jitted step, e.g. for trace counts)} plus
      ``trainer.summary``.

    Raises:
      WorkdirError: the workdir is not writable, or another process writes to it.
      checkpoint.ResumeError: the workdir holds a run of another configuration.
      checkpoint.RestoreError: none of the workdir's checkpoints can be restored.
    """
    with workdir_lock(workdir) as path:
        return _run(trainer, path)


def _run(trainer: Trainer, workdir: pathlib.Path) -> dict:
    config, t = trainer.config, trainer.config.train

    # ------------------------------------------------------------------ state and update step
    replicated = sharding.replicated(trainer.mesh)
    state = sharding.replicate(trainer.init_state(), trainer.mesh)
    state_sharding = jax.tree.map(lambda _: replicated, state)
    train_step = jax.jit(
        trainer.step_fn,
        donate_argnums=0,  # the old state's buffers are reused for the new one
        out_shardings=(state_sharding, replicated),
    )

    # ------------------------------------------------------------------ restore
    manager = checkpoint.make_manager(workdir / "checkpoints", max_to_keep=int(t.keep))
    fingerprint = checkpoint.config_fingerprint(config, trainer.run_defining)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state
    )
    restored = checkpoint.restore_run(manager, abstract, fingerprint, workdir)
    main = is_main_process()  # the one process that writes files
    if restored is not None:
        step0, state, _ = restored
        if main:
            print(f"{trainer.resumed} from step {step0} in {workdir}")
    # Written only once the resume is accepted: a refused config leaves the workdir untouched.
    if main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
        # Host copies first: the state is replicated, so each process holds all of it, and the
        # table's statistics must not start a computation only this process would join.
        tables = jax.tree.map(np.asarray, trainer.parameters(state))
        write_parameter_overview(workdir, **tables)
    writer = MetricWriter(workdir, tensorboard=bool(t.tensorboard), enabled=main)
    if trainer.on_start is not None:
        trainer.on_start(state, writer)

    # ------------------------------------------------------------------ loop
    stop = {"flag": False}

    def request_stop(signum, frame):  # SIGTERM: finish the step, checkpoint, exit cleanly
        stop["flag"] = True

    old_handler = signal.signal(signal.SIGTERM, request_stop)
    start = int(jax.device_get(state["step"]))
    num_steps = int(t.num_steps)
    meta = dict(fingerprint=fingerprint, date=datetime.datetime.now().isoformat())
    t0, last_logged = time.perf_counter(), start
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc=trainer.name,
        unit="step",
        smoothing=0.05,
        disable=not main,
    )
    step, diverged = start, False
    try:
        while step < num_steps and not stop["flag"]:
            state, metrics = train_step(state, *trainer.inputs_at(step))
            step += 1
            bar.update(1)
            if step % int(t.log_every) == 0 or step == num_steps:
                metrics = jax.device_get(metrics)  # the only host sync, every log_every steps
                if not np.isfinite(metrics[trainer.loss]):
                    diverged = True
                    raise FloatingPointError(
                        f"{trainer.loss} is {metrics[trainer.loss]} at step {step}; stopping"
                    )
                elapsed = time.perf_counter() - t0
                metrics["steps_per_s"] = (step - last_logged) / max(elapsed, 1e-9)
                t0, last_logged = time.perf_counter(), step
                writer.write_scalars(step, metrics)
                bar.set_postfix(trainer.postfix(metrics))
            if step % int(t.checkpoint_every) == 0:
                checkpoint.save_train_state(manager, step, state, meta)
            if trainer.on_step is not None:
                trainer.on_step(step, state, writer)
    except KeyboardInterrupt:
        stop["flag"] = True
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old_handler)
        # Keep the progress made, whatever ended the loop (done, SIGTERM, Ctrl-C, an error in a
        # hook) — but only a state worth resuming from. The two trainers had drifted here: one
        # required `step > 0`, the other `jnp.isfinite(state["step"])`, which is always true for
        # an int32 counter (and raises on donated buffers). The rule: something new to save
        # (past the start and not saved yet); not a diverged state (the NaN guard fired: saving
        # it would make every resume continue from NaNs and push good checkpoints out, so the
        # last periodic checkpoint stays the newest); and no donated buffers (Ctrl-C between
        # the step's call and the assignment of its result).
        if (
            step > start
            and manager.latest_step() != step
            and not diverged
            and not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
        ):
            checkpoint.save_train_state(manager, step, state, meta)
        manager.close()
        writer.close()
    return {
        "state": state,
        "step": step,
        "workdir": str(workdir),
        "train_step": train_step,
        **trainer.summary,
    }


# ---------------------------------------------------------------------------------------------
# The workdir: writable, and one writer at a time

LOCK_FILE = ".lock"
BREAK_LOCK_ENV = "AID_JAX_BREAK_LOCK"  # "1": take over any lock (one known to be stale)


class WorkdirError(RuntimeError):
    """The workdir cannot be used: not writable, or locked by another writer."""


class StaleLockWarning(UserWarning):
    """A workdir lock whose owner is gone (or overridden) was taken over."""


_HELD: dict[pathlib.Path, dict] = {}  # workdirs this process has locked -> lock record


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir`` as a Path, created if needed, after a real write probe (``os.access`` is not
    enough: root passes it, read-only mounts and full disks do not show in it). In a
    multi-process run only process 0, the one that writes, creates and probes it.

    Raises:
      WorkdirError: it cannot be created or written to.
    """
    path = pathlib.Path(workdir)
    if not is_main_process():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WorkdirError(
            f"workdir {path} is not writable ({type(e).__name__}: {e.strerror or e}); give a "
            "writable --workdir"
        ) from e
    return path


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike):
    """Hold ``<workdir>/.lock`` for the block (re-entrant in one process); yields the workdir.

    First :func:`check_workdir`; then the lock (JSON: pid, host, start) is created atomically
    (``O_CREAT | O_EXCL``) and removed when the block ends, by an exception, Ctrl-C or SIGTERM
    (outside ``run``'s loop, which handles SIGTERM itself, SIGTERM then raises ``SystemExit``).
    A lock of a live process or of another host raises ``WorkdirError`` naming its owner; a stale
    one (this host, its pid gone) is taken over with a ``StaleLockWarning``; with the environment
    variable ``AID_JAX_BREAK_LOCK=1`` any lock is. In a multi-process run only process 0 locks.
    """
    path = check_workdir(workdir)
    key = path.resolve()
    if key in _HELD or not is_main_process():  # nested, or not the lock-holding process
        yield path
        return
    record = _acquire_lock(path)
    _HELD[key] = record
    old_handler = None
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        old_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield path
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        del _HELD[key]
        if _read_lock(path / LOCK_FILE) == record:  # still ours (not broken by another run)
            (path / LOCK_FILE).unlink(missing_ok=True)


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds, so the lock is released


def _acquire_lock(workdir: pathlib.Path) -> dict:
    lock = workdir / LOCK_FILE
    record = dict(
        pid=os.getpid(),
        host=socket.gethostname(),
        start=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            stale = _stale(owner)
            broken = os.environ.get(BREAK_LOCK_ENV, "") == "1"
            if stale is None and not broken:
                raise WorkdirError(
                    f"{workdir} is in use by another run: {lock} is held by {_owner(owner)}. "
                    "Two writers would corrupt its checkpoints and metrics; wait for it, stop "
                    "it, or use another --workdir. If that run is gone (e.g. killed on another "
                    f"host or container), set {BREAK_LOCK_ENV}=1 to take the lock over."
                ) from None
            why = stale or f"{BREAK_LOCK_ENV}=1"
            warnings.warn(
                f"taking over the lock {lock} of {_owner(owner)} ({why})",
                StaleLockWarning,
                stacklevel=4,
            )
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
        return record
    raise WorkdirError(f"could not take the lock {lock}: other processes keep creating it")


def _read_lock(lock: pathlib.Path) -> dict | None:
    """The lock's record; None if it is missing or unreadable."""
    try:
        record = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _owner(record: dict | None) -> str:
    if record is None:
        return "an unknown owner (unreadable lock file)"
    return f"pid {record.get('pid')} on host {record.get('host')} (since {record.get('start')})"


def _stale(record: dict | None) -> str | None:
    """Why the lock's owner is certainly gone, or None (alive, unknown or on another host)."""
    if record is None or record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if pid == os.getpid():  # ours; if not held by us, a former process with our pid (restart)
        return (
            None
            if record in _HELD.values()
            else "its pid is this process's, which does not hold it"
        )
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is not running"
    except (PermissionError, OverflowError):
        return None  # alive (another user's), or not a pid
    return None


# ---------------------------------------------------------------------------------------------
# Helpers for the trainers' inputs and hooks


def host_images(source, step: int, batch_size: int, seed: int) -> np.ndarray:
    """This process's rows of the training images of step ``step`` (uint8 → [-1, 1] float32)."""
    return host_batch(source, step, batch_size, seed)["image"]


def host_batch(source, step: int, batch_size: int, seed: int) -> dict:
    """This process's rows of training step ``step``: ``{"image": float32 in [-1, 1],
    "label": int32 class ids (-1 = unlabelled)}``."""
    return pipeline.batch_at(
        source,
        step,
        batch_size=batch_size,
        seed=int(seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def use_class_labels(option, label_dim: int, source, name: str = "train.use_labels") -> bool:
    """Whether a trainer gives a class-conditional backbone the images' classes (True) or its
    unconditional zero class vector (False) — the harness's ``eval.use_labels`` rules for
    training. ``option``: None = auto (on when the backbone has classes and the data labels),
    True or False. Checked before anything compiles; a ValueError says what to change."""
    if option is not None and not isinstance(option, bool | np.bool_):
        raise ValueError(f"{name} must be True, False or None (auto), got {option!r}")
    label_dim = int(label_dim or 0)
    labelled = int(getattr(source, "num_classes", 0) or 0) > 0
    if not label_dim:
        if option:
            raise ValueError(
                f"{name}=True but the backbone is unconditional (label_dim 0): set {name}=None "
                "(auto) or False"
            )
        return False
    if option and not labelled:
        raise ValueError(
            f"{name}=True but data {getattr(source, 'name', '?')} has no class labels: use "
            f"labelled data, or set {name}=False to train with the zero class vector"
        )
    use = labelled if option is None else bool(option)
    if not use and is_main_process():
        why = f"{name}=False" if option is False else "the data has no labels"
        print(f"note: the {label_dim}-class backbone gets its zero class vector ({why})")
    return use


def class_label_rows(ids: np.ndarray, label_dim: int, what: str) -> np.ndarray:
    """Class ids -> float32 one-hot rows ``[n, label_dim]`` (``backbones.prepare_labels``' rules;
    an unlabelled (-1) or out-of-range id is a ValueError naming ``what``)."""
    from aid_jax import backbones  # the loop itself needs no backbone

    try:
        return np.asarray(backbones.prepare_labels(np.asarray(ids), label_dim, len(ids)))
    except backbones.BackboneError as e:
        raise ValueError(f"{what}: {e}") from e


def process_rows(array: np.ndarray) -> np.ndarray:
    """This process's rows of an array drawn for the whole global batch: the same contiguous
    block :func:`host_images` reads (process i of P: rows [i·n/P, (i+1)·n/P)); the array itself
    in a one-process run."""
    count = jax.process_count()
    if count == 1:
        return array
    n = array.shape[0]
    if n % count:
        raise ValueError(
            f"a batch of {n} rows does not split over {count} processes; use a batch size that "
            f"divides by {count} × the devices per process"
        )
    size = n // count
    return array[jax.process_index() * size : (jax.process_index() + 1) * size]


def global_batch(mesh: jax.sharding.Mesh, *arrays) -> tuple:
    """Each process's rows of a batch -> global arrays split over the mesh's data axis."""
    put = sharding.batch_sharding(mesh)
    for a in arrays:
        sharding.check_local_rows(a.shape[0], mesh)
    return tuple(jax.make_array_from_process_local_data(put, a) for a in arrays)


def save_grid(writer: MetricWriter, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 grid as ``<workdir>/samples/step_XXXXXXX.png`` (2x upscaled) and in TensorBoard
    (process 0: another process's writer is disabled)."""
    if not writer.enabled:
        return
    folder = writer.workdir / "samples"
    folder.mkdir(exist_ok=True)
    images.save_png(image, folder / f"step_{step:07d}.png", upscale=2)
    writer.write_images(step, {name: image})


__all__ = [
    "BREAK_LOCK_ENV",
    "LOCK_FILE",
    "StaleLockWarning",
    "Trainer",
    "WorkdirError",
    "check_workdir",
    "class_label_rows",
    "global_batch",
    "host_batch",
    "host_images",
    "is_main_process",
    "process_rows",
    "run",
    "save_grid",
    "use_class_labels",
    "workdir_lock",
]


def newest_checkpoint(workdir, like) -> tuple[int, Any]:
    """(step, state) of the newest checkpoint of ``<workdir>/checkpoints``, restored into the
    structure of ``like`` (a state or a tree of ShapeDtypeStructs): what the export modes read.
    FileNotFoundError (saying to train first) when there is none."""
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    manager = checkpoint.make_manager(pathlib.Path(workdir) / "checkpoints")
    try:
        restored = checkpoint.restore_latest(manager, like)
    finally:
        manager.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint to export; train first")
    step, state, _ = restored
    return int(step), state


def training_record(config, step: int) -> dict:
    """The ``training`` entry of an exported model's manifest: steps, images seen, the run's
    config and data."""
    return dict(
        steps=int(step),
        images_seen=int(step) * int(config.train.batch_size),
        config=json.loads(config.to_json_best_effort()),
        data=dict(config.data.to_dict()),
    )
