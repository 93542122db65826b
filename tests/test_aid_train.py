"""The AID trainer: metrics and validation, the deterministic per-step masks, load/export, bad
folders, and the main job (train → evaluate → report) end to end on the smoke configs. Resume,
config mismatch, sharded == single device and no retracing: tests/test_train_loop.py."""

import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from smoke_configs import run_main

import aid_jax
from aid_jax import backbones, masks
from aid_jax.aid import api, model, train

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config():
    sys.path.insert(0, str(ROOT))
    from configs import fashion_mnist

    config = fashion_mnist.trainer_defaults("smoke")  # the critic machinery
    config.backbone.path = str(ROOT / config.backbone.path)
    return config


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("aid") / "full"
    return train.train(smoke_config(), str(path))


def test_training_moves_the_actor_and_logs_metrics(full_run):
    workdir = pathlib.Path(full_run["workdir"])
    # clu's parameter table: every actor parameter counted once.
    table = (workdir / "parameters.txt").read_text()
    actor_total = sum(int(np.size(a)) for a in jax.tree.leaves(full_run["state"]["actor"]))
    assert table.startswith("## actor") and f"Total: {actor_total:,}" in table
    lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in lines if "critic_loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for r in train_rows:
        for name in ("delta_mean", "delta_std", "critic_error", "guidance_rms", "terminal_loss"):
            assert np.isfinite(r[name]), name
    val = [r for r in lines if "val_mse_hole" in r]
    assert val and val[-1]["val_mse_hole_init"] > 0
    assert (workdir / "samples" / "step_0000004.png").exists()
    # The actor started at zero output (last conv zero) and has moved after the warm-up.
    last = full_run["state"]["actor"]["Conv_1"]["kernel"]
    assert float(np.abs(np.asarray(last)).max()) > 0
    # critic_warmup = 1: the rollout of step 2 (index 1) still ran the initial, zero-output actor
    # (index 0 did not update it); the rollout of step 4 runs an actor updated twice.
    assert train_rows[0]["guidance_rms"] == 0.0 and train_rows[1]["guidance_rms"] > 0


def test_masks_are_a_pure_function_of_seed_and_step():
    specs = [{"kind": "center_box", "fraction": 0.5}, {"kind": "half", "side": "random"}]
    a = train.masks_at(specs, 64, (16, 16), seed=0, step=3)
    b = train.masks_at(specs, 64, (16, 16), seed=0, step=3)
    c = train.masks_at(specs, 64, (16, 16), seed=0, step=4)
    v = train.masks_at(specs, 64, (16, 16), seed=0, step=3, stream=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, v)
    assert set(np.unique(a)) == {0.0, 1.0}
    hole = 1.0 - a.mean(axis=(1, 2, 3))
    # Both families appear: centre boxes hide 1/4 of the image, halves 1/2.
    assert np.isclose(hole, 0.25).any() and np.isclose(hole, 0.5).any()
    with pytest.raises(ValueError, match="train.masks"):
        cfg = smoke_config()
        cfg.train.masks = "center_box,nope"
        train.mask_specs(cfg)


def test_load_export_and_inpaint(full_run, tmp_path):
    params = aid_jax.load(full_run["workdir"])
    assert isinstance(params, aid_jax.AIDParams)
    assert _leaves_equal(params.actor, full_run["state"]["actor_ema"])
    out = train.export(full_run["workdir"], str(tmp_path / "export"))
    exported = aid_jax.load(out)
    assert _leaves_equal(exported.actor, params.actor)
    x = np.zeros((2, 16, 16, 3), np.float32)
    m = masks.make_masks("half", 2, 16, seed=1)
    a = aid_jax.inpaint(params, x, m, num_steps=2).x
    b = aid_jax.inpaint(exported, x, m, num_steps=2).x
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError):
        train.export(full_run["workdir"], str(out))


def test_load_refuses_bad_folders_and_another_backbone(full_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        aid_jax.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="aid_config.json"):
        aid_jax.load(tmp_path / "empty")
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "aid_config.json").write_text("{not json")
    with pytest.raises(model.AIDError, match="corrupt"):
        aid_jax.load(bad)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "aid_config.json").write_text(
        (pathlib.Path(full_run["workdir"]) / "aid_config.json").read_text()
    )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        aid_jax.load(fresh)
    # A module trained against one backbone is refused on another.
    other = backbones.load_backbone(ROOT / "tests/testdata/edm_ddpmpp_tiny.pkl")
    other = backbones.Backbone(
        params=jax.tree.map(lambda a: a * 1.01, other.params),
        config=other.config,
        manifest={},
    )
    with pytest.raises(model.AIDError, match="params_sha256"):
        api.load(full_run["workdir"], backbone=other)


def test_load_from_any_working_directory(full_run, tmp_path, monkeypatch):
    """A module trained with a backbone path relative to the working directory loads from
    anywhere, also after the whole project folder moved; when the backbone is gone, the error
    names backbone=."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(full_run["workdir"], project / "runs" / "aid")
    shutil.copyfile(ROOT / "tests/testdata/edm_ddpmpp_tiny.pkl", project / "bb.pkl")
    module = project / "runs" / "aid"
    manifest = json.loads((module / api.STATE_FILE).read_text())
    monkeypatch.chdir(project)  # trained as `--config.backbone.path=bb.pkl` from the project
    manifest["backbone"] = api.backbone_record(
        {"path": "bb.pkl"}, manifest["backbone"]["params_sha256"], pathlib.Path("runs/aid")
    )
    (module / api.STATE_FILE).write_text(json.dumps(manifest))
    assert manifest["backbone"]["path_rel"] == os.path.join("..", "..", "bb.pkl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    want = aid_jax.load(full_run["workdir"]).actor
    assert _leaves_equal(aid_jax.load(module).actor, want)
    moved = tmp_path / "moved"
    project.rename(moved)  # the absolute path is stale now; the module-relative one is not
    assert _leaves_equal(aid_jax.load(moved / "runs" / "aid").actor, want)
    out = train.export(moved / "runs" / "aid", str(tmp_path / "exports" / "m"))
    assert _leaves_equal(aid_jax.load(out).actor, want)  # re-anchored at the export
    (moved / "bb.pkl").unlink()
    with pytest.raises(model.AIDError, match="backbone="):
        aid_jax.load(moved / "runs" / "aid")
    # The embedded default's recorded path resolves against the project root from anywhere.
    found = api.find_recorded_backbone({"path": "ported_weights/fashion_mnist_32"}, elsewhere)
    assert found is not None and found.resolve() == (ROOT / "ported_weights/fashion_mnist_32")


def test_export_manifest_and_a_moved_export(full_run, tmp_path, monkeypatch):
    """The export records the training step, the data, the last validation metrics and the
    parameter counts (``aid_jax.guidance_module``, shared with DEFT); the folder, moved, loads
    from another working directory."""
    workdir = pathlib.Path(full_run["workdir"])
    out = train.export(workdir, str(tmp_path / "export"))
    manifest = json.loads((out / api.STATE_FILE).read_text())
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert manifest["format"] == api.FORMAT and manifest["step"] == 4
    assert manifest["validation"] == [r for r in rows if "val_mse_hole" in r][-1]
    assert manifest["data"] == smoke_config().data.to_dict()
    n = sum(int(np.size(a)) for a in jax.tree.leaves(full_run["state"]["actor_ema"]))
    assert manifest["actor_params"] == n and manifest["backbone_params"] > n
    assert manifest["params_fraction"] == pytest.approx(n / manifest["backbone_params"])
    assert manifest["backbone"]["path"] == "tests/testdata/edm_ddpmpp_tiny.pkl"
    assert "path_abs" not in manifest["backbone"] and (out / "README.md").exists()
    moved = tmp_path / "far" / "away"
    moved.parent.mkdir()
    out.rename(moved)
    monkeypatch.chdir(moved.parent)
    assert _leaves_equal(aid_jax.load("away").actor, full_run["state"]["actor_ema"])


def test_main_job_smoke_writes_the_report(tmp_path):
    """python -m aid_jax.main --config=configs/fashion_mnist.py:smoke: train, evaluate, report."""
    workdir = tmp_path / "run"
    run_main("configs/fashion_mnist.py:smoke", workdir, env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})
    results = json.loads((workdir / "eval" / "results.json").read_text())
    methods = {r["method"] for r in results["rows"]}
    assert {"aid", "replacement", "ground truth"} <= methods
    aid_rows = [r for r in results["rows"] if r["method"] == "aid"]
    assert all(r["nfe"] == 3 and r["nfe_backward"] == 0 for r in aid_rows)
    assert (workdir / "eval" / "results.md").exists()
    assert (workdir / "eval" / "quality_vs_nfe.png").exists()
    assert (workdir / "eval" / "grid_center_box.png").exists()
    training = json.loads((workdir / "aid_config.json").read_text())["training"]
    assert training["train"]["actor"] == "backprop"  # the main job's recipe


@pytest.mark.slow
@pytest.mark.parametrize("name", ["afhq"])
def test_full_architecture_configs_smoke(name, tmp_path):
    """configs/afhq.py:smoke — the 61.8M-parameter DDPM++ with random weights, one training step
    and one evaluated image, on one CPU device (configs/ffhq.py is the same run with other names
    and dropout: test_ffhq_is_afhq_with_its_own_names)."""
    workdir = tmp_path / name
    run_main(
        f"configs/{name}.py:smoke",
        workdir,
        env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
        timeout=900,
    )
    manifest = json.loads((workdir / "aid_config.json").read_text())
    assert manifest["aid_config"]["image_shape"] == [64, 64, 3]
    assert manifest["backbone"]["random"]["init_kwargs"]["model_channels"] == 128
    rows = json.loads((workdir / "eval" / "results.json").read_text())["rows"]
    assert any(r["method"] == "aid" for r in rows)


def test_ffhq_is_afhq_with_its_own_names():
    sys.path.insert(0, str(ROOT))
    from configs import afhq, ffhq

    for arg in (None, "smoke"):
        a, f = afhq.get_config(arg).to_dict(), ffhq.get_config(arg).to_dict()
        differ = {k for k in a if a[k] != f[k]}
        assert differ <= {"workdir", "backbone", "data", "eval_data"}, differ
        if arg is None:
            assert "ffhq" in f["backbone"]["path"] and "ffhq" in f["data"]["path"]
            assert f["backbone"] != a["backbone"]


def test_critic_optimizer_option():
    """optim.critic_opt='sgd': the critic's update is −lr·g (after the warm-up ramp)."""
    config = smoke_config()
    config.optim.critic_opt = "sgd"
    config.optim.grad_clip = 0.0
    _, critic_tx = train.make_optimizers(config)
    params = {"w": np.ones(3, np.float32)}
    grads = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
    state = critic_tx.init(params)
    seen = []
    for _ in range(config.optim.warmup_steps + 1):  # the linear warm-up: 0, lr/W, ..., lr
        with jax.numpy_dtype_promotion("standard"):
            updates, state = critic_tx.update(grads, state, params)
        seen.append(float(updates["w"][0]))
    assert seen[0] == 0.0
    np.testing.assert_allclose(updates["w"], -config.optim.critic_lr * grads["w"], rtol=1e-5)
    config.optim.critic_opt = "rmsprop"
    with pytest.raises(ValueError, match="critic_opt"):
        train.make_optimizers(config)
