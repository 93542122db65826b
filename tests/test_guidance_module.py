"""aid_jax.guidance_module: one bundle, manifest, loader and export for both kinds of trained
module (AID's actor, DEFT's h-network), on hand-made tiny modules for the 16×16×3 fixture
backbone (no training): export → move → load from another working directory, bitwise the same
inpainting; the manifest's fields; the errors for a wrong format, another kind, mismatched
shapes, a damaged folder, a missing backbone; the command line; bundles through ``jax.jit``.
The trained smoke modules' exports: tests/test_deft.py, tests/test_aid_train.py."""

import json
import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from aid_jax import backbones, checkpoint, masks
from aid_jax import guidance_module as gm
from aid_jax.aid import api as aid_api
from aid_jax.aid import model as aid_model
from aid_jax.deft import api as deft_api
from aid_jax.deft import model as deft_model

ROOT = pathlib.Path(__file__).parent.parent
TINY = ROOT / "tests" / "testdata" / "edm_ddpmpp_tiny.pkl"  # 16x16x3, random weights
MODELS = {"aid": aid_model, "deft": deft_model}
PARAMS_OF = {"aid": aid_api.load_actor, "deft": deft_api.load_hnet}


def _config(name):
    if name == "aid":
        return aid_model.AIDConfig(image_shape=(16, 16, 3), num_steps=2, actor_channels=(4, 4))
    return deft_model.DEFTConfig(
        image_shape=(16, 16, 3), num_steps=2, channels=(4, 4), emb_dim=8, gate_hidden=4
    )


def _module(kind, cfg, seed):
    params = kind.init(jax.random.key(seed), cfg)
    return jax.tree.map(lambda a: np.asarray(a) + np.float32(0.01 * seed), params)


def _leaves_equal(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))


@pytest.fixture(scope="module")
def tiny():
    return backbones.load_backbone(TINY)


def _workdir(workdir: pathlib.Path, name: str, backbone_path: str, sha: str):
    """What a finished training run leaves: the run manifest, checkpoints at steps 2 and 4 (the
    module's EMA under the kind's entry), metrics.jsonl with validation rows (one after the
    newest checkpoint, as a killed run leaves). Returns (config, the EMA of step 4)."""
    kind = gm.get_kind(name)
    cfg = _config(name)
    workdir.mkdir(parents=True)
    config = ml_collections.ConfigDict(
        dict(backbone=dict(path=backbone_path), data=dict(name="fake", split="train"))
    )
    gm.write_run_manifest(workdir, kind, cfg, config, sha)
    with checkpoint.make_manager(workdir / "checkpoints") as manager:
        for step in (2, 4):
            ema = _module(kind, cfg, step)
            state = {"step": np.int32(step), kind.ema_entry: ema}
            checkpoint.save_train_state(manager, step, state, {"step": step})
    rows = [
        {"step": 2, "loss": 1.0},
        {"step": 2, "val_mse_hole": 0.5, "val_loss": 0.7},
        {"step": 4, "loss": 0.9},
        {"step": 4, "val_mse_hole": 0.25, "val_loss": 0.5},
        {"step": 6, "val_mse_hole": 0.125, "val_loss": 0.4},
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, ema


def _inpaint(name, params):
    x = np.linspace(-1, 1, 2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3)
    m = masks.make_masks("center_box", 2, 16, seed=0)
    return np.asarray(MODELS[name].inpaint(params, x, m, key=jax.random.key(3), num_steps=2).x)


@pytest.mark.parametrize("name", ["aid", "deft"])
def test_export_moves_and_loads_from_another_directory(name, tiny, tmp_path, monkeypatch, capsys):
    kind = gm.get_kind(name)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(TINY, project / "bb.pkl")
    monkeypatch.chdir(project)  # trained as --config.backbone.path=bb.pkl from the project
    cfg, ema = _workdir(pathlib.Path("runs") / name, name, "bb.pkl", tiny.params_sha256)
    assert gm.detect_kind(f"runs/{name}") is kind
    rc = gm.main(["export", "--workdir", f"runs/{name}", "--out", "exports/m"])
    out = project / "exports" / "m"
    assert rc == 0 and f"(step 4) to exports{os.sep}m" in capsys.readouterr().out
    files = sorted(p.name for p in out.parent.iterdir()), sorted(p.name for p in out.iterdir())
    assert files == (["m"], sorted(["README.md", kind.state_file, kind.spec.field]))
    manifest = json.loads((out / kind.state_file).read_text())
    n, nb = gm.parameter_count(ema), gm.parameter_count(tiny.params)
    assert manifest["format"] == kind.format and manifest["format_version"] == 1
    assert kind.config_type.from_dict(manifest[kind.config_key]) == cfg
    assert manifest["step"] == 4 and manifest["data"] == {"name": "fake", "split": "train"}
    assert manifest["validation"] == {"step": 4, "val_mse_hole": 0.25, "val_loss": 0.5}
    assert manifest[f"{kind.spec.field}_params"] == n and manifest["backbone_params"] == nb
    assert manifest["params_fraction"] == pytest.approx(n / nb)
    # The backbone as given and relative to the export; no machine path.
    assert manifest["backbone"] == {
        "path": "bb.pkl",
        "params_sha256": tiny.params_sha256,
        "path_rel": os.path.join("..", "..", "bb.pkl"),
    }
    assert str(tmp_path) not in (out / kind.state_file).read_text()
    assert manifest["date"] >= manifest["run_started"]
    readme = (out / "README.md").read_text()
    assert f"--method {name} --{name}" in readme and f"{n:,} parameters" in readme
    assert "val_mse_hole 0.25" in readme and "4 steps" in readme
    # The project moved, loaded from elsewhere: the EMA of step 4, bitwise the same inpainting.
    project.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    moved = pathlib.Path("moved") / "exports" / "m"
    params = kind.load(moved)
    assert isinstance(params, kind.bundle) and _leaves_equal(params.module, ema)
    assert params.backbone_sha256 == tiny.params_sha256 and params.label_dim == 0
    module, read = PARAMS_OF[name](moved)
    assert _leaves_equal(module, ema) and read["step"] == 4
    direct = kind.bundle(tiny.params, ema, tiny.config, cfg, tiny.params_sha256)
    np.testing.assert_array_equal(_inpaint(name, params), _inpaint(name, direct))
    # Re-exporting an export keeps its step, data and validation; the backbone re-anchored.
    again = gm.export(moved, tmp_path / "again", name)
    second = json.loads((again / kind.state_file).read_text())
    for key in ("step", "data", "validation", "run_started", kind.config_key):
        assert second[key] == manifest[key], key
    assert second["backbone"]["path_rel"] == os.path.join("..", "moved", "bb.pkl")
    assert _leaves_equal(kind.load(again).module, ema)


def test_a_backbone_inside_the_project_is_recorded_relative_to_it(tiny, tmp_path, monkeypatch):
    """Trained with an absolute path into the checkout: the export records it relative to the
    project root, so the export alone moves anywhere and still finds it."""
    workdir = tmp_path / "run"
    _, ema = _workdir(workdir, "deft", str(TINY), tiny.params_sha256)
    out = gm.export(workdir, tmp_path / "a" / "deft")
    record = json.loads((out / deft_api.STATE_FILE).read_text())["backbone"]
    assert record["path"] == "tests/testdata/edm_ddpmpp_tiny.pkl" and "path_abs" not in record
    far = tmp_path / "b" / "c" / "deft"
    far.parent.mkdir(parents=True)
    out.rename(far)
    monkeypatch.chdir(far.parent)
    assert _leaves_equal(deft_api.load("deft").hnet, ema)
    assert gm.module_path("ported_weights/fashion_mnist_32") == gm.PROJECT_ROOT.joinpath(
        "ported_weights", "fashion_mnist_32"
    )


def test_bad_folders_say_what_to_do(tiny, tmp_path):
    workdir = tmp_path / "run"
    shutil.copyfile(TINY, tmp_path / "bb.pkl")
    _workdir(workdir, "deft", str(tmp_path / "bb.pkl"), tiny.params_sha256)
    out = gm.export(workdir, tmp_path / "export")
    with pytest.raises(FileExistsError, match="choose a new folder"):
        gm.export(workdir, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb.pkl", "export", "run"]  # no partial

    def edited(name, **changes):
        folder = tmp_path / name
        shutil.copytree(out, folder)
        manifest = json.loads((folder / deft_api.STATE_FILE).read_text())
        (folder / deft_api.STATE_FILE).write_text(json.dumps({**manifest, **changes}))
        return folder

    # Another kind's folder: the error names the loader to use.
    with pytest.raises(FileNotFoundError, match=r"aid_config.json is missing.*aid_jax.deft.api"):
        aid_api.load(out)
    with pytest.raises(deft_model.DEFTError, match="not an aid_jax DEFT manifest.*re-export"):
        deft_api.load(edited("format", format="aid_jax-guidance"))
    with pytest.raises(deft_model.DEFTError, match="format_version 7.*update aid_jax"):
        deft_api.load(edited("version", format_version=7))
    # Parameters saved for another configuration: the first differing parameter is named.
    wider = dict(json.loads((out / deft_api.STATE_FILE).read_text())["deft_config"])
    wider["channels"] = [4, 8]
    with pytest.raises(deft_model.DEFTError, match=r"does not match deft_config.json \('unet/"):
        deft_api.load(edited("shapes", deft_config=wider))
    with pytest.raises(deft_model.DEFTError, match="not a valid DEFTConfig"):
        deft_api.load(edited("config", deft_config={"image_shape": [16, 16, 3], "bogus": 1}))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / deft_api.STATE_FILE).write_text("{not json")
    with pytest.raises(deft_model.DEFTError, match="corrupt"):
        deft_api.load(corrupt)
    for f in (corrupt / "hnet").rglob("*"):  # damaged parameter files
        if f.is_file():
            f.write_bytes(b"damaged")
    (corrupt / deft_api.STATE_FILE).write_text((out / deft_api.STATE_FILE).read_text())
    with pytest.raises(deft_model.DEFTError, match="could not be read.*re-export"):
        deft_api.load(corrupt)
    # A training checkpoint without the EMA entry.
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(workdir / deft_api.STATE_FILE, odd)
    with checkpoint.make_manager(odd / "checkpoints") as manager:
        checkpoint.save_train_state(manager, 1, {"step": np.int32(1)}, {})
    with pytest.raises(deft_model.DEFTError, match="no 'ema' entry"):
        deft_api.load_hnet(odd)
    # The backbone gone: the error names backbone=.
    (tmp_path / "bb.pkl").unlink()
    with pytest.raises(deft_model.DEFTError, match="was not found.*backbone="):
        deft_api.load(out)
    assert _leaves_equal(deft_api.load(out, backbone=tiny).hnet, deft_api.load_hnet(out)[0])
    with pytest.raises(FileNotFoundError, match="aid_config.json or deft_config.json"):
        gm.detect_kind(tmp_path)
    with pytest.raises(ValueError, match="unknown guidance module kind"):
        gm.get_kind("vipaint")


def test_command_line_errors_are_one_line(tmp_path, capsys):
    rc = gm.main(["export", "--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "nope: no such" in err
    assert err.startswith("python -m aid_jax.guidance_module: error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["aid", "deft"])
def test_bundles_are_pytrees_through_jit(name, tiny):
    kind = gm.get_kind(name)
    cfg = _config(name)
    bundle = kind.bundle(tiny.params, _module(kind, cfg, 1), tiny.config, cfg, "sha")
    assert isinstance(bundle, gm.GuidanceBundle)
    assert bundle.module is getattr(bundle, kind.spec.field)
    n = len(jax.tree.leaves(tiny.params)) + len(jax.tree.leaves(bundle.module))
    assert len(jax.tree.leaves(bundle)) == n
    out = jax.jit(lambda p: jax.tree.map(lambda a: a + 1, p))(bundle)
    assert type(out) is kind.bundle and (out.config, out.backbone_sha256) == (cfg, "sha")
    assert _leaves_equal(out.module, jax.tree.map(lambda a: a + 1, bundle.module))
    article = "an" if name == "aid" else "a"
    with pytest.raises(ValueError, match=f"must be {article} {kind.bundle.__name__}"):
        kind.validate(object())
