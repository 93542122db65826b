"""The AID module shipped for the embedded default (ported_weights/aid_fashion_mnist, issue 16
point 6): its manifest (≤ 1 % of the backbone, how it was trained, validation metrics, the
backbone's sha256), loading from any working directory, the inpainting command line using it by
default, and a fill that the trained actor changes (a zero actor would give the projection
sampler's output)."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

import aid_jax
from aid_jax import images
from aid_jax import inpaint_images as ii
from aid_jax.aid import model as aid_model
from aid_jax.data import pipeline, sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDER = ROOT / "ported_weights" / "aid_fashion_mnist"


@pytest.fixture(scope="module")
def shipped():
    return aid_jax.load(str(FOLDER))


def test_manifest_records_what_a_reviewer_needs():
    manifest = json.loads((FOLDER / "aid_config.json").read_text())
    assert manifest["format"] == "aid_jax-guidance"
    assert manifest["params_fraction"] <= 0.01  # AID's actor budget
    backbone = aid_jax.load_backbone(str(ROOT / "ported_weights" / "fashion_mnist_32"))
    assert manifest["backbone"]["params_sha256"] == backbone.params_sha256
    assert manifest["training"]["train"]["actor"] == "backprop"
    assert manifest["data"]["split"] == "train"  # never the test images
    val = manifest["validation"]
    assert val["step"] <= manifest["step"] and 0.0 < val["val_lpips_hole"] < 0.15
    assert (FOLDER / "README.md").read_text().count("aid_fashion_mnist") >= 2


def test_loads_from_another_directory(tmp_path, monkeypatch, shipped):
    monkeypatch.chdir(tmp_path)
    params = aid_jax.load("ported_weights/aid_fashion_mnist")  # found from the project root
    assert params.backbone_sha256 == shipped.backbone_sha256
    assert params.config.num_steps == 10


def test_the_trained_actor_improves_on_its_start(shipped):
    """Validation-block images, centre box: known pixels exact, and the fill is perceptually
    closer to the truth (LPIPS on the hole, the run's selection metric) than the zero actor's,
    i.e. the projection start the run began from."""
    from aid_jax.metrics import lpips as lpips_metric

    source = sources.make_source(dict(name="fashion_mnist_bundled", split="test", pad_to=32))
    idx = pipeline.eval_indices(len(source), 8, 0, subset="validation")
    x0 = pipeline.to_model_range(source.get(idx)[0])
    mask = np.ones_like(x0[..., :1])
    mask[:, 8:24, 8:24] = 0.0
    key = jax.random.key(0)
    out = np.asarray(aid_jax.inpaint(shipped, x0, mask, key=key).x)
    zero = dataclasses.replace(shipped, actor=jax.tree.map(np.zeros_like, shipped.actor))
    start = np.asarray(aid_model.inpaint(zero, x0, mask, key=key, paste_back=True).x)
    np.testing.assert_array_equal(out * mask, x0 * mask)
    lp = lpips_metric.LPIPS.load("alex", batch_size=8)
    trained, begun = lp(out, x0, 1.0 - mask).mean(), lp(start, x0, 1.0 - mask).mean()
    assert trained < begun - 0.02, (trained, begun)


def test_the_command_line_uses_it_by_default(tmp_path, capsys, shipped):
    image, mask = ROOT / "docs/examples/pullover.png", ROOT / "docs/examples/center_box_mask.png"
    out = tmp_path / "aid.png"
    rc = ii.main(["--image", str(image), "--mask", str(mask), "--method", "aid", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "aid, 10 steps" in stdout
    with Image.open(out) as img:
        got = np.asarray(img)
    with Image.open(image) as img:
        y = np.asarray(img.convert("L"), np.float32)[None, ..., None] / np.float32(127.5) - 1
    with Image.open(mask) as img:
        m = (np.asarray(img.convert("L")) >= 127.5).astype(np.float32)[None, ..., None]
    key = jax.random.fold_in(jax.random.key(0), 0)  # batch 0 of seed 0
    want = aid_jax.inpaint(shipped, y, m, key=key).x
    np.testing.assert_array_equal(images.to_uint8(want[0])[..., 0], got)


def test_the_large_module_records_its_budget_and_beats_the_small_one():
    """ported_weights/aid_fashion_mnist_large (the capacity study's 12 % actor): same backbone,
    same recipe with wider channels, and on validation images its fill is perceptually closer to
    the truth than the 1 % module's (the selection's finding at N = 1,000, here on 8 images)."""
    from aid_jax.metrics import lpips as lpips_metric

    folder = ROOT / "ported_weights" / "aid_fashion_mnist_large"
    manifest = json.loads((folder / "aid_config.json").read_text())
    small = json.loads((FOLDER / "aid_config.json").read_text())
    assert 0.10 < manifest["params_fraction"] < 0.13
    assert manifest["backbone"]["params_sha256"] == small["backbone"]["params_sha256"]
    assert manifest["training"]["train"]["actor"] == "backprop"
    assert manifest["data"]["split"] == "train"
    large = aid_jax.load(str(folder))
    shipped = aid_jax.load(str(FOLDER))
    source = sources.make_source(dict(name="fashion_mnist_bundled", split="test", pad_to=32))
    idx = pipeline.eval_indices(len(source), 16, 0, subset="validation")
    x0 = pipeline.to_model_range(source.get(idx)[0])
    mask = np.ones_like(x0[..., :1])
    mask[:, 8:24, 8:24] = 0.0
    key = jax.random.key(1)
    lp = lpips_metric.LPIPS.load("alex", batch_size=16)
    scores = [
        lp(np.asarray(aid_jax.inpaint(m, x0, mask, key=key).x), x0, 1.0 - mask).mean()
        for m in (large, shipped)
    ]
    assert scores[0] < scores[1] - 0.001, scores  # 0.147 vs 0.151 here
