"""The shared training loop (aid_jax.train_loop), once for both trainers: resume == uninterrupted,
resume with another config refused (workdir untouched), the loop's sharded step on 8 fake CPU
devices == the single-device step, no retracing, the files every run writes; and the loop's
stopping rules on a toy trainer (NaN guard, SIGTERM, Ctrl-C, an error in a hook)."""

import dataclasses
import functools
import importlib
import json
import os
import pathlib
import signal
import sys
from collections.abc import Callable
from types import ModuleType

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aid_jax import pretrain, sharding, train_loop
from aid_jax.aid import train as aid_train

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config(name: str):
    """``configs/<name>.py:smoke``, its backbone path (if any) made absolute."""
    sys.path.insert(0, str(ROOT))
    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    if "backbone" in config:
        config.backbone.path = str(ROOT / config.backbone.path)
    return config


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
        config=functools.partial(smoke_config, "fashion_mnist"),
        run=aid_train.train,
        another_config=_another_aid_config,
        trained=("actor", "critic"),
        rtol=1e-4,
    ),
    "pretrain": Case(
        module=pretrain,
        config=functools.partial(smoke_config, "pretrain_fashion_mnist"),
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
