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
workdir only continues the run that made it.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from aid_jax import checkpoint, images, sharding
from aid_jax.data import pipeline
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
    """Train (or resume) ``trainer`` in ``workdir``.

    Returns:
      {"state", "step", "workdir", "train_step" (the jitted step, e.g. for trace counts)} plus
      ``trainer.summary``.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
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
    if restored is not None:
        step0, state, _ = restored
        print(f"{trainer.resumed} from step {step0} in {workdir}")
    # Written only once the resume is accepted: a refused config leaves the workdir untouched.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    write_parameter_overview(workdir, **trainer.parameters(state))
    writer = MetricWriter(workdir, tensorboard=bool(t.tensorboard))
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
    bar = tqdm(total=num_steps, initial=start, desc=trainer.name, unit="step", smoothing=0.05)
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
# Helpers for the trainers' inputs and hooks


def host_images(source, step: int, batch_size: int, seed: int) -> np.ndarray:
    """This process's rows of the training images of step ``step`` (uint8 → [-1, 1] float32)."""
    return pipeline.batch_at(
        source,
        step,
        batch_size=batch_size,
        seed=int(seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )["image"]


def global_batch(mesh: jax.sharding.Mesh, *arrays) -> tuple:
    """Each process's rows of a batch -> global arrays split over the mesh's data axis."""
    put = sharding.batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(put, a) for a in arrays)


def save_grid(writer: MetricWriter, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 grid as ``<workdir>/samples/step_XXXXXXX.png`` (2x upscaled) and in TensorBoard."""
    folder = writer.workdir / "samples"
    folder.mkdir(exist_ok=True)
    images.save_png(image, folder / f"step_{step:07d}.png", upscale=2)
    writer.write_images(step, {name: image})


__all__ = ["Trainer", "global_batch", "host_images", "run", "save_grid"]
