"""Multi-process training (aid_jax.distributed): two CPU processes on this machine (JAX's CPU
collectives, gloo) train AID and DEFT with their smoke configs and end with the parameters, the
validation metrics and the files of a one-process run; every file outside Orbax's collective
checkpoints is written by process 0 alone (an audit hook records process 1's Python-level
writes, and the file names show TensorStore's: only its own entries inside the checkpoints, which
Orbax needs from every process); the bad inputs
(a batch that does not split over devices × processes, an unreachable coordinator, a taken
port, devices already in use, bad settings) fail with messages saying what to change.

The two processes run this file as a script (``_child``); 2 local devices each, 4 in all.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest
from smoke_configs import trainer_smoke_config

from aid_jax import distributed

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 200
STEPS = 2  # training steps of each trainer: one log, one checkpoint, one validation
BAD_BATCH = 6  # DEFT's batch must be a multiple of the 4 devices of 2 processes × 2
TRAINERS = {  # name -> (config module, mode, trained state entries compared)
    "aid": ("fashion_mnist", "train_aid", ("actor", "critic", "actor_ema")),
    "deft": ("deft_fashion_mnist", "train_deft", ("hnet", "ema")),
}
# The JAX settings of tests/conftest.py, as environment variables for the child processes.
CHILD_ENV = dict(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES="2",
    JAX_DEFAULT_MATMUL_PRECISION="highest",
    JAX_THREEFRY_PARTITIONABLE="1",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    PYTHONPATH=str(ROOT),
    PYTHONUNBUFFERED="1",
    TF_CPP_MIN_LOG_LEVEL="2",
)


def smoke_config(name: str, steps: int = STEPS):
    """``configs/<name>.py:smoke`` for ``steps`` steps (tests/smoke_configs.py)."""
    config = trainer_smoke_config(name)
    config.train.update(num_steps=steps, log_every=1, checkpoint_every=steps, eval_every=0)
    return config


# ---------------------------------------------------------------------------------------------
# The child: one of the two processes


def _audit_writes(root: str, record: list) -> None:
    """Record every Python-level write under ``root`` (opens for writing, mkdir, rename, remove,
    rmtree, ...) of this process; C++ writers (Orbax's TensorStore) are checked by the parent."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    path_events = {
        "os.mkdir",
        "os.rename",
        "os.replace",
        "os.remove",
        "os.rmdir",
        "os.truncate",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.utime",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.move",
    }
    busy = []

    def under_root(p) -> str | None:
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if not isinstance(p, (str, os.PathLike)):
            return None
        full = os.path.abspath(os.fspath(p))
        return full if full == root or full.startswith(root + os.sep) else None

    def hook(event, args):
        if busy or not (event == "open" or event in path_events):
            return
        busy.append(1)
        try:
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(flags, int) and flags & write_flags) or (
                    isinstance(mode, str) and any(c in mode for c in "wax+")
                )
                targets = [path] if writing else []
            else:
                targets = list(args[:2]) if event in ("os.rename", "os.replace") else args[:1]
            for t in targets:
                full = under_root(t)
                if full is not None:
                    record.append([event, os.path.relpath(full, root)])
        finally:
            busy.pop()

    sys.addaudithook(hook)


def _child(out: str, workroot: str) -> None:
    import faulthandler

    from aid_jax import main

    faulthandler.dump_traceback_later(CHILD_TIMEOUT_S - 10, exit=True)  # a hang shows where

    writes: list = []
    _audit_writes(os.path.realpath(workroot), writes)
    configs = {}
    for name, (module, mode, _) in TRAINERS.items():
        configs[name] = smoke_config(module)
        configs[name].mode = mode
    # The config gives what all processes share, the environment this process's id.
    configs["aid"].distributed.update(enabled=True, num_processes=2, timeout_s=60)
    configs["aid"].distributed.coordinator = os.environ.pop("TEST_COORDINATOR")
    assert distributed.initialize(configs["aid"]) is True
    assert distributed.initialize(configs["aid"]) is True  # a second call: no-op
    report = dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        devices=jax.device_count(),
        local_devices=jax.local_device_count(),
    )
    bad = configs["deft"].copy_and_resolve_references()
    bad.train.batch_size = BAD_BATCH
    try:
        main.run_mode(bad, os.path.join(workroot, "bad_batch"))
    except ValueError as e:
        report["bad_batch"] = str(e)
    for name, config in configs.items():
        main.run_mode(config, os.path.join(workroot, name))
    report["writes"] = writes
    pathlib.Path(out).write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------
# The test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _processes(commands):
    procs = [subprocess.Popen(c, **kw) for c, kw in commands]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _one_process_run(name: str, workdir: pathlib.Path) -> dict:
    """The same run in this process (one process, its first 4 fake devices)."""
    from aid_jax import sharding, train_loop
    from aid_jax.aid import train as aid_train
    from aid_jax.deft import train as deft_train

    module = {"aid": aid_train, "deft": deft_train}[name]
    config = smoke_config(TRAINERS[name][0])
    mesh = sharding.make_mesh(jax.devices()[:4])
    return train_loop.run(module.make_trainer(config, mesh), workdir)


def _metrics(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("steps_per_s", None)
    return rows


def _files(workdir: pathlib.Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in workdir.rglob("*")}


def _run_files(workdir: pathlib.Path) -> set[str]:
    """The files of a run, less Orbax's data files (content hashes) and per-process entries."""

    def orbax_data(part: str) -> bool:
        return part in ("d", "array_metadatas") or part.startswith("ocdbt.process_")

    return {f for f in _files(workdir) if not any(map(orbax_data, f.split(os.sep)))}


@pytest.mark.slow  # ~100 CPU-seconds over three processes
def test_two_processes_train_like_one_and_only_process_0_writes(tmp_path):
    from aid_jax import checkpoint

    port = _free_port()
    env = dict(os.environ, **CHILD_ENV, TEST_COORDINATOR=f"localhost:{port}")
    for key in ("XLA_FLAGS", "JAX_ENABLE_X64"):
        env.pop(key, None)
    work = tmp_path / "two"
    commands = []
    for i in (0, 1):
        cmd = [sys.executable, __file__, str(tmp_path / f"report_{i}.json"), str(work)]
        log = open(tmp_path / f"log_{i}.txt", "w")  # noqa: SIM115 (closed with the test's dir)
        kw = dict(env=dict(env, AID_JAX_PROCESS_ID=str(i)), stdout=log, stderr=subprocess.STDOUT)
        commands.append((cmd, kw))
    start = time.perf_counter()
    with _processes(commands) as procs:
        # Meanwhile, the one-process reference runs here.
        reference = {name: _one_process_run(name, tmp_path / "one" / name) for name in TRAINERS}
        deadline = start + CHILD_TIMEOUT_S
        while time.perf_counter() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs):  # one failed: the other would wait for it
                break
            time.sleep(0.2)
    logs = [(tmp_path / f"log_{i}.txt").read_text()[-3000:] for i in (0, 1)]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}\n--- process 0:\n{logs[0]}\n--- 1:\n{logs[1]}"
    reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in (0, 1)]
    print(f"two processes: {time.perf_counter() - start:.1f} s")

    for i, r in enumerate(reports):
        assert (r["process_index"], r["process_count"]) == (i, 2)
        assert (r["devices"], r["local_devices"]) == (4, 2)
        # The bad batch: refused before anything ran, saying what to change.
        assert f"train.batch_size={BAD_BATCH}" in r["bad_batch"], r["bad_batch"]
        assert "multiple of the 4 devices" in r["bad_batch"], r["bad_batch"]

    # Process 0 wrote the run's files (the audit hook sees them) ...
    wrote0 = {path for _, path in reports[0]["writes"]}
    assert "bad_batch/.lock" in wrote0
    for name in TRAINERS:
        for f in ("metrics.jsonl", "config.json", "parameters.txt", ".lock", "samples"):
            assert f"{name}/{f}" in wrote0, (name, f)
        assert not (work / name / ".lock").exists()  # released
    assert "aid/aid_config.json" in wrote0 and "aid/best" in wrote0
    assert "deft/deft_config.json" in wrote0

    # ... and process 1 only its part of Orbax's collective checkpoints: its array metadata
    # and its OCDBT database (TensorStore's C++ writes, which the hook does not see, but the
    # names do) in each checkpoint's state; nothing else, not even a folder.
    def orbax_own(path: str) -> bool:
        parts = path.split(os.sep)
        return (
            parts[1:2] == ["checkpoints"]
            and len(parts) >= 5
            and parts[3].startswith("state")
            and parts[4] in ("array_metadatas", "ocdbt.process_1")
            and (parts[4] != "array_metadatas" or parts[5:] == ["process_1"])
        )

    wrote1 = [path for _, path in reports[1]["writes"]]
    assert wrote1 and all(orbax_own(f) for f in wrote1), wrote1
    for name in TRAINERS:
        of_1 = [f for f in _files(work) if "process_1" in f]
        assert of_1 and all(orbax_own(f) for f in of_1), of_1
        two, one = _run_files(work / name), _run_files(tmp_path / "one" / name)
        assert two == one, two ^ one

    for name, (_, _, trained) in TRAINERS.items():
        # The final parameters: the two processes' checkpoint == the one-process run.
        # (Read into host arrays: the checkpoint's sharding names the two processes' devices.)
        ref = jax.tree.map(np.asarray, reference[name]["state"])
        two = checkpoint.restore_pytree(work / name / "checkpoints" / str(STEPS) / "state")
        for entry in trained:
            # Tolerance at the parameters' scale: reduction order differs (4 devices in one
            # process or in two), and Adam turns noise-level gradients (~1e-9) of parameters
            # that barely move into relative differences of any size at magnitudes ~1e-6.
            scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(ref[entry]))
            leaves = zip(jax.tree.leaves(two[entry]), jax.tree.leaves(ref[entry]), strict=True)
            for a, b in leaves:
                np.testing.assert_allclose(
                    a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name}.{entry}"
                )
        assert int(two["step"]) == STEPS
        # The logged metrics (training and validation) agree too, once per step.
        got, want = _metrics(work / name), _metrics(tmp_path / "one" / name)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            for k in g:
                np.testing.assert_allclose(g[k], w[k], rtol=1e-3, atol=1e-6, err_msg=f"{name} {k}")


# ---------------------------------------------------------------------------------------------
# Bad settings and a coordinator that cannot be reached


def _config(**fields):
    group = dict(enabled=False, coordinator="", num_processes=0, process_id=-1, timeout_s=300)
    group.update(fields)
    return ml_collections.ConfigDict(dict(distributed=group))


ENV_ID = "AID_JAX_PROCESS_ID"


def test_settings_from_the_config_and_the_environment():
    assert distributed.settings(None, {}) == distributed.Settings()
    assert not distributed.initialize(_config(), {})  # off: nothing happens
    assert not distributed.initialize(ml_collections.ConfigDict(), {})  # no such group
    s = distributed.settings(_config(coordinator="h:1", num_processes=4), {ENV_ID: "3"})
    assert s == distributed.Settings(True, "h:1", 4, 3, 300)
    env = {"AID_JAX_COORDINATOR": "10.0.0.2:99", "AID_JAX_NUM_PROCESSES": "2"}
    env |= {"AID_JAX_PROCESS_ID": "1", "AID_JAX_DISTRIBUTED_TIMEOUT": "7"}
    assert distributed.settings(None, env) == distributed.Settings(True, "10.0.0.2:99", 2, 1, 7)
    off = distributed.settings(_config(enabled=True), {"AID_JAX_DISTRIBUTED": "0"})
    assert off.enabled is False
    assert distributed.settings(None, {"AID_JAX_DISTRIBUTED": "1"}).enabled is True


@pytest.mark.parametrize(
    "fields, env, message",
    [
        (dict(coordinator="nohost"), {}, "give process 0's address as host:port"),
        (dict(coordinator="h:port"), {}, "host:port"),
        (dict(num_processes=2, process_id=2), {}, "its own id in 0..num_processes-1"),
        (dict(num_processes=-1), {}, "give the number of processes"),
        (dict(timeout_s=0), {}, "at least 1 second"),
        (dict(workers=2), {}, "unknown fields ['workers']"),
        ({}, {"AID_JAX_PROCESS_ID": "one"}, "AID_JAX_PROCESS_ID='one' is not an integer"),
        ({}, {"AID_JAX_DISTRIBUTED": "yes"}, "use 1 (on) or 0 (off)"),
    ],
)
def test_bad_settings_say_what_to_change(fields, env, message):
    with pytest.raises(distributed.DistributedError, match=None) as e:
        distributed.settings(_config(**fields), env)
    assert message in str(e.value)


def test_devices_in_use_is_an_error_saying_to_initialise_first():
    jax.devices()  # this process's backend is up (tests/conftest.py's 8 devices)
    config = _config(enabled=True, coordinator="localhost:1", num_processes=2, process_id=0)
    with pytest.raises(distributed.DistributedError, match="first, before any JAX computation"):
        distributed.initialize(config, {})
    assert not jax.distributed.is_initialized()


def test_coordinator_port_in_use_on_process_0():
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as busy:
        busy.bind(("::" if busy.family == socket.AF_INET6 else "", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(distributed.DistributedError, match=f"port {port}.*in use"):
            distributed._check_port_free(f"localhost:{port}")
    distributed._check_port_free(f"localhost:{port}")  # free again


def test_unreachable_coordinator_times_out_with_what_to_check():
    """Process 1 of 2 with nobody at the coordinator: a clear error after timeout_s, in a fresh
    process (JAX's own wait would abort the process with a bare DEADLINE_EXCEEDED)."""
    port = _free_port()
    code = (
        "import time; from aid_jax import distributed\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    distributed.initialize(None)\n"
        "except distributed.DistributedError as e:\n"
        "    print(round(time.perf_counter() - t, 1)); print(e)\n"
    )
    env = dict(os.environ, **CHILD_ENV)
    env |= {"AID_JAX_COORDINATOR": f"127.0.0.1:{port}", "AID_JAX_NUM_PROCESSES": "2"}
    env |= {"AID_JAX_PROCESS_ID": "1", "AID_JAX_DISTRIBUTED_TIMEOUT": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    waited, message = done.stdout.split("\n", 1)
    assert 2.0 <= float(waited) < 10.0
    assert f"process 1 could not reach the coordinator 127.0.0.1:{port} within 2 s" in message
    assert "process 0 has been started" in message and "firewall" in message
    assert "AID_JAX_DISTRIBUTED_TIMEOUT" in message


def test_main_initialises_before_the_mode_runs(monkeypatch):
    """``python -m aid_jax.main``: distributed.initialize(config) first, then the mode."""
    from aid_jax import main

    calls = []
    config = _config(enabled=True)
    monkeypatch.setattr(main, "_CONFIG", types.SimpleNamespace(value=config))
    monkeypatch.setattr(main, "_WORKDIR", types.SimpleNamespace(value="w"))
    monkeypatch.setattr(distributed, "initialize", lambda c: calls.append(("init", c)))
    monkeypatch.setattr(main, "run_mode", lambda c, w: calls.append(("run", c, w)))
    main.main([])
    assert calls == [("init", config), ("run", config, "w")]


@pytest.mark.parametrize(
    "mode", ["evaluate", "tune", "sample", "export", "export_vae", "export_edm2"]
)
def test_single_process_modes_refuse_a_multi_process_run(monkeypatch, tmp_path, mode):
    """Modes that write per image or per file run in one process; in a multi-process run they
    say how to run them instead of every process writing the same files."""
    from absl import app

    from aid_jax import main

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    ran = []
    monkeypatch.setitem(main.RUNNERS, mode, lambda c, w: ran.append(mode))
    with pytest.raises(app.UsageError, match="runs in one process.*unset AID_JAX_DISTRIBUTED"):
        main.run_mode(ml_collections.ConfigDict(dict(mode=mode)), str(tmp_path))
    assert not ran
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    main.run_mode(ml_collections.ConfigDict(dict(mode=mode)), str(tmp_path))
    assert ran == [mode]


@pytest.mark.parametrize("mode", ["aid", "deft"])
def test_train_then_evaluate_evaluates_on_process_0_only(monkeypatch, mode):
    """ "aid" / "deft": every process trains (collective); only process 0 evaluates and writes
    the report."""
    from aid_jax import evaluate, main
    from aid_jax.deft import train as deft_train

    calls = []
    monkeypatch.setattr(main, f"_train_{mode}", lambda c, w: calls.append("train"))
    for module in (evaluate, deft_train):
        monkeypatch.setattr(module, "evaluation_config", lambda c, w: "eval-config")
    monkeypatch.setattr(evaluate, "run", lambda c, w: calls.append(("evaluate", c, w)))
    runner = main.RUNNERS[mode]
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    runner(None, "w")
    assert calls == ["train"]
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    runner(None, "w")
    assert calls == ["train", "train", ("evaluate", "eval-config", "w/eval")]


def test_pretrain_seeds_the_workdir_from_process_0_only(monkeypatch, tmp_path):
    """train.resume_from is copied into the shared workdir once, by process 0."""
    from aid_jax import pretrain, train_loop

    seeded = []
    monkeypatch.setattr(pretrain, "make_trainer", lambda config, mesh: "trainer")
    monkeypatch.setattr(pretrain, "_seed_workdir", lambda w, src: seeded.append(src))
    monkeypatch.setattr(train_loop, "run", lambda trainer, workdir: trainer)
    config = ml_collections.ConfigDict(dict(train=dict(resume_from="somewhere")))
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    assert pretrain.train_and_evaluate(config, str(tmp_path)) == "trainer"
    assert seeded == []
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    pretrain.train_and_evaluate(config, str(tmp_path))
    assert seeded == ["somewhere"]


if __name__ == "__main__":
    _child(*sys.argv[1:])
