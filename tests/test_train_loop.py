"""The shared training loop (aid_jax.train_loop), once for both trainers: resume == uninterrupted,
resume with another config refused (workdir untouched), the loop's sharded step on 8 fake CPU
devices == the single-device step, no retracing, the files every run writes; and the loop's
stopping rules on a toy trainer (NaN guard, SIGTERM, Ctrl-C, an error in a hook), and its recovery
rules (damaged checkpoints moved aside, one writer per workdir, unwritable workdirs refused)."""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from smoke_configs import trainer_smoke_config

from aid_jax import checkpoint, pretrain, sharding, train_loop
from aid_jax.aid import train as aid_train

ROOT = pathlib.Path(__file__).parent.parent


def _another_aid_config(config) -> str:
    config.aid.lam = 0.5
    return "aid"


def _another_pretrain_config(config) -> str:
    config.optim.lr = 1e-2
    return "optim"


@dataclasses.dataclass(frozen=True)
class Case:
    module: ModuleType  # has make_trainer(config, mesh) and ResumeError
    config: Callable  # the smoke config
    run: Callable  # the trainer's public entry point (config, workdir) -> dict
    another_config: Callable  # changes a run-defining entry, returns its group
    trained: tuple[str, ...]  # the state's trained parts, compared sharded vs single device
    rtol: float  # sharded vs single device (reduction order differs)


CASES = {
    "aid": Case(
        module=aid_train,
        config=functools.partial(trainer_smoke_config, "fashion_mnist"),
        run=aid_train.train,
        another_config=_another_aid_config,
        trained=("actor", "critic"),
        rtol=1e-4,
    ),
    "pretrain": Case(
        module=pretrain,
        config=functools.partial(trainer_smoke_config, "pretrain_fashion_mnist"),
        run=pretrain.train_and_evaluate,
        another_config=_another_pretrain_config,
        trained=("params",),
        rtol=1e-5,
    ),
}


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def full_run(case, tmp_path_factory):
    """The smoke config's uninterrupted 4-step run."""
    return case.run(case.config(), str(tmp_path_factory.mktemp("full") / "run"))


def test_no_retracing_and_the_files_of_a_run(case, full_run):
    assert full_run["step"] == 4 and full_run["train_step"]._cache_size() == 1
    workdir = pathlib.Path(full_run["workdir"])
    config = case.config()
    assert json.loads((workdir / "config.json").read_text()) == json.loads(
        config.to_json_best_effort()
    )
    assert (workdir / "parameters.txt").read_text().startswith("## ")
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    log_every = config.train.log_every
    assert [r["step"] for r in rows if "steps_per_s" in r] == list(range(log_every, 5, log_every))
    assert (workdir / "samples" / "step_0000004.png").exists()
    assert _checkpoint_steps(workdir) == [2, 4]  # checkpoint_every = 2


def test_resume_gives_the_uninterrupted_run(case, full_run, tmp_path):
    config = case.config()
    config.train.num_steps = 3  # "interrupted" after step 3 (checkpoints at 2, then 3)
    case.run(config, str(tmp_path))
    config.train.num_steps = 4
    resumed = case.run(config, str(tmp_path))
    assert resumed["step"] == 4
    assert _leaves_equal(full_run["state"], resumed["state"])  # parameters, EMA, optimisers


def test_resume_with_another_config_is_refused(case, full_run):
    workdir = pathlib.Path(full_run["workdir"])
    before = {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    config = case.config()
    group = case.another_config(config)
    with pytest.raises(case.module.ResumeError, match=group):
        case.run(config, str(workdir))
    assert {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_sharded_step_equals_single_device(case, full_run):
    """The loop's own compiled step (donated state, 8-device mesh) == one device, no retrace."""
    config = case.config()
    assert jax.device_count() == 8  # tests/conftest.py fakes eight CPU devices
    one = case.module.make_trainer(config, sharding.make_mesh(jax.devices()[:1]))
    eight = case.module.make_trainer(config, sharding.make_mesh())
    state = one.init_state()
    state["step"] = state["step"] + 5  # past AID's critic warm-up, so the actor updates too
    single_state, single_metrics = jax.device_get(jax.jit(one.step_fn)(state, *one.inputs_at(5)))

    sharded_inputs = eight.inputs_at(5)
    shardings = [a.sharding for a in jax.tree.leaves(sharded_inputs)]
    assert any(s.num_devices == 8 and not s.is_fully_replicated for s in shardings)  # the batch
    train_step = full_run["train_step"]
    out_state, out_metrics = train_step(sharding.replicate(state, eight.mesh), *sharded_inputs)
    assert train_step._cache_size() == 1  # the run's compiled program, reused
    np.testing.assert_allclose(out_metrics[one.loss], single_metrics[one.loss], rtol=case.rtol)
    for part in case.trained:
        for a, b in zip(
            jax.tree.leaves(out_state[part]), jax.tree.leaves(single_state[part]), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=case.rtol, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The loop's rules on a toy trainer: w += mean(batch of step s), loss = w (NaN from a given step)


def toy_trainer(*, num_steps=6, checkpoint_every=2, nan_from=10**6, on_step=None):
    config = ml_collections.ConfigDict(
        dict(
            seed=0,
            train=dict(
                num_steps=num_steps,
                log_every=1,
                checkpoint_every=checkpoint_every,
                keep=10,
                tensorboard=False,
            ),
        )
    )
    mesh = sharding.make_mesh()

    def step_fn(state, x):
        w = state["w"] + jnp.mean(x)
        loss = jnp.where(state["step"] + 1 >= nan_from, jnp.nan, jnp.sum(w))
        return dict(step=state["step"] + 1, w=w), dict(loss=loss)

    return train_loop.Trainer(
        name="toy",
        config=config,
        run_defining=("seed",),
        mesh=mesh,
        init_state=lambda: dict(step=jnp.zeros((), jnp.int32), w=jnp.zeros(2, jnp.float32)),
        step_fn=step_fn,
        inputs_at=lambda step: train_loop.global_batch(mesh, np.full((8, 1), step, np.float32)),
        loss="loss",
        parameters=lambda state: dict(toy=dict(w=state["w"])),
        on_step=on_step,
    )


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        train_loop.run(toy_trainer(nan_from=3), tmp_path)
    assert _checkpoint_steps(tmp_path) == [2]  # the diverged state of step 3 is not saved


def test_sigterm_finishes_the_step_saves_and_resumes(tmp_path, capsys):
    def send_sigterm(step, state, writer):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    stopped = train_loop.run(toy_trainer(on_step=send_sigterm, checkpoint_every=100), tmp_path)
    assert stopped["step"] == 3 and _checkpoint_steps(tmp_path) == [3]
    assert signal.getsignal(signal.SIGTERM) == before
    resumed = train_loop.run(toy_trainer(), tmp_path)
    assert "resumed from step 3" in capsys.readouterr().out
    straight = train_loop.run(toy_trainer(), tmp_path / "straight")
    assert resumed["step"] == straight["step"] == 6
    assert _leaves_equal(resumed["state"], straight["state"])


def test_ctrl_c_and_errors_in_hooks_keep_the_progress(tmp_path):
    def interrupt(step, state, writer):
        if step == 3:
            raise KeyboardInterrupt

    stopped = train_loop.run(toy_trainer(on_step=interrupt, checkpoint_every=100), tmp_path / "a")
    assert stopped["step"] == 3 and _checkpoint_steps(tmp_path / "a") == [3]

    def fail(step, state, writer):
        if step == 3:
            raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        train_loop.run(toy_trainer(on_step=fail, checkpoint_every=100), tmp_path / "b")
    assert _checkpoint_steps(tmp_path / "b") == [3]


# ---------------------------------------------------------------------------------------------
# Runs that recover (issue 17, point 4): damaged checkpoints, the workdir lock, unwritable
# workdirs — on the toy trainer.


def _truncate_data_files(step_dir: pathlib.Path) -> None:
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:  # a copy or a disk that ran out half-way
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty_state_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").write_bytes(b"")


def _remove_state(step_dir: pathlib.Path) -> None:
    shutil.rmtree(step_dir / "state")


def _truncate_meta_json(step_dir: pathlib.Path) -> None:
    meta = step_dir / "meta" / "metadata"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])


DAMAGES = {
    "truncated data files": _truncate_data_files,
    "empty _METADATA": _empty_state_metadata,
    "missing state/": _remove_state,
    "truncated meta JSON": _truncate_meta_json,
}


def _folders(workdir) -> list[str]:
    return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def straight_toy(tmp_path_factory):
    """The toy trainer's uninterrupted 6-step run."""
    return train_loop.run(toy_trainer(), tmp_path_factory.mktemp("toy") / "straight")


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_used(
    damage, straight_toy, tmp_path, capsys
):
    train_loop.run(toy_trainer(num_steps=4), tmp_path)  # checkpoints 2 and 4, then "killed"
    DAMAGES[damage](tmp_path / "checkpoints" / "4")
    with pytest.warns(checkpoint.DamagedCheckpointWarning) as record:
        resumed = train_loop.run(toy_trainer(), tmp_path)
    (message,) = [str(w.message) for w in record]
    assert str(tmp_path / "checkpoints" / "4") in message  # names the damaged folder
    assert "moved aside to" in message and "4.damaged" in message
    assert "Resuming from step 2: the progress of steps 3..4 is lost" in message
    assert "resumed from step 2" in capsys.readouterr().out
    assert _folders(tmp_path) == ["2", "4", "4.damaged", "6"]  # nothing deleted
    assert resumed["step"] == 6
    assert _leaves_equal(resumed["state"], straight_toy["state"])  # recomputed exactly


def test_every_damaged_checkpoint_is_named_and_the_last_good_one_used(tmp_path):
    train_loop.run(toy_trainer(num_steps=6), tmp_path)  # checkpoints 2, 4, 6
    _empty_state_metadata(tmp_path / "checkpoints" / "6")
    _remove_state(tmp_path / "checkpoints" / "4")
    with pytest.warns(checkpoint.DamagedCheckpointWarning) as record:
        resumed = train_loop.run(toy_trainer(num_steps=2), tmp_path)  # nothing left to do
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "6.damaged" in messages[0] and "4.damaged" in messages[1]
    assert all("steps 3..6 is lost" in m for m in messages)
    assert resumed["step"] == 2 and _folders(tmp_path) == ["2", "4.damaged", "6.damaged"]


def test_no_restorable_checkpoint_is_a_clear_error_and_moves_nothing(tmp_path):
    train_loop.run(toy_trainer(num_steps=4), tmp_path)
    for step in ("2", "4"):
        _truncate_meta_json(tmp_path / "checkpoints" / step)
    with pytest.raises(checkpoint.RestoreError, match=r"no checkpoint in .* can be restored"):
        train_loop.run(toy_trainer(), tmp_path)
    assert _folders(tmp_path) == ["2", "4"]
    assert not (tmp_path / train_loop.LOCK_FILE).exists()  # released on the error


def test_entries_the_state_no_longer_has_are_read_and_dropped(tmp_path):
    """A run saved with an entry its trainer no longer carries (AID's backprop actor had a
    critic) resumes: Orbax restores only whole trees, so the entry is read and dropped."""
    state = {"step": np.int32(3), "w": np.arange(4.0, dtype=np.float32)}
    old = dict(state, critic={"k": np.ones((2, 3), np.float32)})
    with checkpoint.make_manager(tmp_path) as manager:
        checkpoint.save_train_state(manager, 3, old, {"fingerprint": {}})
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    with checkpoint.make_manager(tmp_path) as manager:
        step, got, _ = checkpoint.restore_run(manager, abstract, {}, tmp_path)
    assert step == 3 and set(got) == {"step", "w"}
    np.testing.assert_array_equal(got["w"], state["w"])
    # Entries missing from the checkpoint are still an error (nothing is made up).
    more = dict(abstract, extra=jax.ShapeDtypeStruct((2,), np.float32))
    with checkpoint.make_manager(tmp_path) as manager, pytest.raises(checkpoint.RestoreError):
        checkpoint.restore_run(manager, more, {}, tmp_path)


def test_the_lock_is_held_during_the_run_and_released_however_it_ends(tmp_path):
    seen = []

    def look(step, state, writer):
        seen.append(json.loads((tmp_path / "a" / train_loop.LOCK_FILE).read_text()))

    train_loop.run(toy_trainer(num_steps=1, on_step=look), tmp_path / "a")
    (lock,) = seen
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["start"]
    assert not (tmp_path / "a" / train_loop.LOCK_FILE).exists()  # done

    with pytest.raises(FloatingPointError):  # an exception
        train_loop.run(toy_trainer(nan_from=2), tmp_path / "b")
    assert not (tmp_path / "b" / train_loop.LOCK_FILE).exists()

    def interrupt(step, state, writer):
        raise KeyboardInterrupt

    train_loop.run(toy_trainer(on_step=interrupt), tmp_path / "c")  # Ctrl-C
    assert not (tmp_path / "c" / train_loop.LOCK_FILE).exists()

    def sigterm(step, state, writer):
        os.kill(os.getpid(), signal.SIGTERM)

    train_loop.run(toy_trainer(on_step=sigterm), tmp_path / "d")  # SIGTERM in the loop
    assert not (tmp_path / "d" / train_loop.LOCK_FILE).exists()

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit), train_loop.workdir_lock(tmp_path / "e"):  # ... in set-up
        assert (tmp_path / "e" / train_loop.LOCK_FILE).exists()
        os.kill(os.getpid(), signal.SIGTERM)
    assert not (tmp_path / "e" / train_loop.LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) == before


def _write_lock(workdir: pathlib.Path, pid: int, host: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    record = dict(pid=pid, host=host, start="2024-01-01T00:00:00")
    (workdir / train_loop.LOCK_FILE).write_text(json.dumps(record))


def test_a_second_writer_is_refused_naming_the_owner(tmp_path, monkeypatch):
    monkeypatch.delenv(train_loop.BREAK_LOCK_ENV, raising=False)
    # Another process really holding the lock: this one, seen from a child process.
    script = (
        "import sys; from aid_jax import train_loop\n"
        "try:\n"
        "    with train_loop.workdir_lock(sys.argv[1]): pass\n"
        "except train_loop.WorkdirError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    with train_loop.workdir_lock(tmp_path / "held"):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "held")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"is held by pid {os.getpid()} on host {socket.gethostname()}" in out.stdout
    assert "AID_JAX_BREAK_LOCK=1" in out.stdout

    # A live process on this host (our parent), or any process on another host: refused,
    # before anything is set up.
    def no_setup():
        raise AssertionError("set up despite the lock")

    for workdir, pid, host in (
        (tmp_path / "live", os.getppid(), socket.gethostname()),
        (tmp_path / "remote", 12345, "another-host"),
    ):
        _write_lock(workdir, pid, host)
        trainer = dataclasses.replace(toy_trainer(), init_state=no_setup)
        with pytest.raises(train_loop.WorkdirError, match=f"held by pid {pid} on host {host}"):
            train_loop.run(trainer, workdir)
        assert json.loads((workdir / train_loop.LOCK_FILE).read_text())["pid"] == pid  # kept

    # The documented override takes it over, with a warning.
    monkeypatch.setenv(train_loop.BREAK_LOCK_ENV, "1")
    with pytest.warns(train_loop.StaleLockWarning, match="AID_JAX_BREAK_LOCK=1"):
        assert train_loop.run(toy_trainer(), tmp_path / "remote")["step"] == 6
    assert not (tmp_path / "remote" / train_loop.LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.delenv(train_loop.BREAK_LOCK_ENV, raising=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid is free
    _write_lock(tmp_path, gone.pid, socket.gethostname())
    with pytest.warns(train_loop.StaleLockWarning, match=f"pid {gone.pid} is not running"):
        assert train_loop.run(toy_trainer(), tmp_path)["step"] == 6
    assert not (tmp_path / train_loop.LOCK_FILE).exists()
    # A lock with this process's pid that this process does not hold: a former incarnation
    # (a restarted container reuses pids).
    _write_lock(tmp_path, os.getpid(), socket.gethostname())
    with pytest.warns(train_loop.StaleLockWarning, match="does not hold it"):
        train_loop.run(toy_trainer(), tmp_path)


def test_an_unwritable_workdir_is_refused_before_set_up(tmp_path, monkeypatch):
    def no_setup(*args, **kwargs):
        raise AssertionError("set up despite an unwritable workdir")

    (tmp_path / "file").write_text("")
    under_a_file = tmp_path / "file" / "run"  # cannot be created, even by root
    trainer = dataclasses.replace(toy_trainer(), init_state=no_setup)
    with pytest.raises(train_loop.WorkdirError, match=r"workdir .*file/run is not writable"):
        train_loop.run(trainer, under_a_file)

    # The entry points check it before they load anything (backbone, data).
    monkeypatch.setattr(pretrain, "make_trainer", no_setup)
    with pytest.raises(train_loop.WorkdirError, match="not writable"):
        pretrain.train_and_evaluate(CASES["pretrain"].config(), str(under_a_file))
    from aid_jax import main

    config = CASES["aid"].config()
    config.mode = "train_aid"
    monkeypatch.setitem(main.RUNNERS, "train_aid", no_setup)
    with pytest.raises(train_loop.WorkdirError, match="not writable"):
        main.run_mode(config, str(under_a_file))


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_a_read_only_workdir_is_refused(tmp_path):
    def no_setup():
        raise AssertionError("set up despite a read-only workdir")

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        trainer = dataclasses.replace(toy_trainer(), init_state=no_setup)
        with pytest.raises(train_loop.WorkdirError, match="PermissionError"):
            train_loop.run(trainer, read_only)
    finally:
        read_only.chmod(0o755)
