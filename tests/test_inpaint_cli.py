"""``python -m aid_jax.inpaint`` and ``aid_jax.inpaint_images``: inpainting image files.

Runs the command line in-process (``main([...])``) on the tiny random-weight fixture backbone
(16×16×3) with 2 steps, and once on the shipped Fashion-MNIST backbone (32×32×1): known pixels
pasted back exactly, the hole filled, mask conventions, folder mode, several samples, seeds,
the Python call equal to the command line, resizing and channel conversion, labels, AID, DEFT,
and every bad input refused with one line naming the file, a non-zero exit status and no output.
"""

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import aid_jax
from aid_jax import backbones, checkpoint, images
from aid_jax import inpaint_images as ii
from aid_jax.aid import model as aid_model
from aid_jax.backbones import loader
from aid_jax.deft import api as deft_api
from aid_jax.deft import model as deft_model

ROOT = pathlib.Path(__file__).parent.parent
TESTDATA = pathlib.Path(__file__).parent / "testdata"
TINY = str(TESTDATA / "edm_ddpmpp_tiny.pkl")  # 16x16x3, unconditional, random weights
FAST = ["--backbone", TINY, "--steps", "2", "--quiet"]


def _save(a: np.ndarray, path: pathlib.Path) -> pathlib.Path:
    Image.fromarray(a).save(path)
    return path


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _box_mask(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    """uint8 0/255, white = known, a black size x size hole."""
    m = np.full((h, w), 255, np.uint8)
    m[top : top + size, left : left + size] = 0
    return m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 16x16 RGB images (images/a,b,c.png), their masks (masks/), one mask file."""
    d = tmp_path_factory.mktemp("inpaint_data")
    rng = np.random.default_rng(0)
    (d / "images").mkdir()
    (d / "masks").mkdir()
    imgs, masks = {}, {}
    for i, name in enumerate("abc"):
        imgs[name] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        _save(imgs[name], d / "images" / f"{name}.png")
        masks[name] = _box_mask(16, 16, 2 + 2 * i, 3 + i, 6)
        _save(masks[name], d / "masks" / f"{name}.png")
    mask = _save(_box_mask(16, 16, 4, 4, 8), d / "mask.png")
    return d, imgs, masks, mask


def run(capsys, argv) -> tuple[int, str, str]:
    rc = ii.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_single_file_keeps_known_pixels_and_fills_the_hole(data, tmp_path, capsys):
    d, imgs, _, mask = data
    out = tmp_path / "out.png"
    rc, stdout, err = run(
        capsys, ["--image", d / "images/a.png", "--mask", mask, "--out", out, *FAST[:-1]]
    )  # without --quiet: a summary line
    assert rc == 0, err
    assert "ddnm" in stdout and "NFE 2" in stdout
    res = _read(out)
    assert res.shape == (16, 16, 3) and res.dtype == np.uint8
    known = _read(mask) == 255
    np.testing.assert_array_equal(res[known], imgs["a"][known])
    hole = res[~known].astype(int) - imgs["a"][~known]
    assert np.abs(hole).mean() > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left
    # --no-paste-back: the raw sample, whose hole is the pasted-back output's hole (on unguided
    # sampling: DDNM's raw sample already ends on the known pixels).
    argv = ["--image", d / "images/a.png", "--mask", mask, "--method", "unguided", *FAST]
    assert run(capsys, [*argv, "--out", tmp_path / "pasted.png"])[0] == 0
    rc, _, err = run(capsys, [*argv, "--out", tmp_path / "raw.png", "--no-paste-back"])
    assert rc == 0, err
    raw, pasted = _read(tmp_path / "raw.png"), _read(tmp_path / "pasted.png")
    np.testing.assert_array_equal(raw[~known], pasted[~known])
    np.testing.assert_array_equal(pasted[known], imgs["a"][known])
    assert (raw[known] != imgs["a"][known]).mean() > 0.5


def test_hole_convention_equals_known_with_the_inverted_mask(data, tmp_path, capsys):
    d, _, _, mask = data
    inverted = _save(255 - _read(mask), tmp_path / "inverted.png")
    image = d / "images/b.png"
    a, b = tmp_path / "known.png", tmp_path / "hole.png"
    assert run(capsys, ["--image", image, "--mask", mask, "--out", a, *FAST])[0] == 0
    rc, _, err = run(
        capsys,
        ["--image", image, "--mask", inverted, "--out", b, "--mask-convention", "hole", *FAST],
    )
    assert rc == 0, err
    np.testing.assert_array_equal(_read(a), _read(b))


def test_num_samples_and_seeds(data, tmp_path, capsys):
    d, imgs, _, mask = data
    argv = ["--image", d / "images/a.png", "--mask", mask, "--num-samples", 2, *FAST]
    assert run(capsys, [*argv, "--out", tmp_path / "s.png"])[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_0.png", "s_1.png"]
    s0, s1 = _read(tmp_path / "s_0.png"), _read(tmp_path / "s_1.png")
    known = _read(mask) == 255
    assert (s0[~known] != s1[~known]).mean() > 0.5  # two different samples
    np.testing.assert_array_equal(s0[known], imgs["a"][known])
    np.testing.assert_array_equal(s1[known], imgs["a"][known])
    # The same seed again (over the existing files) gives the same files; another seed does not.
    rc, _, err = run(capsys, [*argv, "--out", tmp_path / "s.png", "--overwrite"])
    assert rc == 0, err
    np.testing.assert_array_equal(_read(tmp_path / "s_0.png"), s0)
    np.testing.assert_array_equal(_read(tmp_path / "s_1.png"), s1)
    assert run(capsys, [*argv, "--out", tmp_path / "t.png", "--seed", 1])[0] == 0
    assert (_read(tmp_path / "t_0.png")[~known] != s0[~known]).mean() > 0.5


def test_folder_mode_with_a_mask_file_and_a_mask_folder(data, tmp_path, capsys):
    d, imgs, masks, mask = data
    one, per = tmp_path / "one", tmp_path / "per"
    # Three images in batches of two: the last batch is padded.
    common = ["--image", d / "images", "--batch-size", 2, *FAST]
    assert run(capsys, [*common, "--mask", mask, "--out", one])[0] == 0
    rc, _, err = run(capsys, [*common, "--mask", d / "masks", "--out", per])
    assert rc == 0, err
    assert sorted(p.name for p in one.iterdir()) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in per.iterdir()) == ["a.png", "b.png", "c.png"]
    for name in "abc":
        for folder, m in ((one, _read(mask)), (per, masks[name])):
            res = _read(folder / f"{name}.png")
            known = m == 255
            np.testing.assert_array_equal(res[known], imgs[name][known])
            assert np.abs(res[~known].astype(int) - imgs[name][~known]).mean() > 10
    # A single image with --out an existing folder writes <folder>/<image stem>.png.
    rc, _, err = run(capsys, ["--image", d / "images/b.png", "--mask", mask, "--out", one, *FAST])
    assert rc == 1 and "b.png" in err and "--overwrite" in err  # one/b.png exists
    solo = tmp_path / "solo"
    solo.mkdir()
    assert (
        run(capsys, ["--image", d / "images/b.png", "--mask", mask, "--out", solo, *FAST])[0] == 0
    )
    assert [p.name for p in solo.iterdir()] == ["b.png"]
    # A mask file kept in the image folder is not an image to inpaint.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _save(imgs["a"], mixed / "a.png")
    _save(_read(mask), mixed / "mask.png")
    rc, _, err = run(capsys, [*FAST, "--image", mixed, "--mask", mixed / "mask.png", "--out", solo])
    assert rc == 0, err
    assert sorted(p.name for p in solo.iterdir()) == ["a.png", "b.png"]
    # Outputs never go into the input folder.
    rc, _, err = run(capsys, [*common, "--mask", mask, "--out", d / "images"])
    assert rc == 1 and "--image folder" in err
    assert sorted(p.name for p in (d / "images").iterdir()) == ["a.png", "b.png", "c.png"]
    # Batch 1 of the folder run = images a, b: the same as the Python call on them.
    pil = [Image.open(d / "images" / f"{n}.png") for n in "ab"]
    again = ii.inpaint_images(pil, Image.open(mask), backbone=TINY, steps=2, batch_size=2)
    for n, img in zip("ab", again, strict=True):
        np.testing.assert_array_equal(np.asarray(img), _read(one / f"{n}.png"))


def test_python_call_equals_the_command_line(data, tmp_path, capsys):
    d, _, masks, mask = data
    out = tmp_path / "new" / "cli.png"  # the missing folder is created
    argv = ["--image", d / "images/c.png", "--mask", d / "masks/c.png", "--out", out]
    assert run(capsys, [*argv, "--num-samples", 2, "--seed", 3, *FAST])[0] == 0
    res = aid_jax.inpaint_images(
        Image.open(d / "images/c.png"),
        Image.open(d / "masks/c.png"),
        backbone=TINY,
        steps=2,
        seed=3,
        num_samples=2,
    )
    assert len(res) == 1 and len(res[0]) == 2  # [image][sample]
    for j in range(2):
        assert res[0][j].mode == "RGB" and res[0][j].size == (16, 16)
        np.testing.assert_array_equal(np.asarray(res[0][j]), _read(out.with_name(f"cli_{j}.png")))
    # The lazy package attribute stays callable after the module is imported.
    assert callable(aid_jax.inpaint_images)
    one = aid_jax.inpaint_images(
        [d / "images/c.png"], [d / "masks/c.png"], backbone=TINY, steps=2, seed=3
    )
    assert isinstance(one, list) and isinstance(one[0], Image.Image)


def test_center_crop_and_gray_to_rgb(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 24), dtype=np.uint8)  # H 20, W 24, grayscale
    image = _save(gray, tmp_path / "wide.png")
    mask = _save(_box_mask(20, 24, 6, 8, 8), tmp_path / "wide_mask.png")
    out = tmp_path / "out.png"
    rc, _, err = run(capsys, ["--image", image, "--mask", mask, "--out", out, *FAST])
    assert rc == 1 and "wide.png" in err and "--resize" in err and not out.exists()
    rc, _, err = run(
        capsys, ["--image", image, "--mask", mask, "--out", out, "--resize", "center-crop", *FAST]
    )
    assert rc == 0, err
    res = _read(out)
    assert res.shape == (16, 16, 3)
    # Central 20x20 square (columns 2..21), Lanczos to 16x16, gray repeated to RGB.
    crop = Image.fromarray(gray[:, 2:22]).resize((16, 16), Image.Resampling.LANCZOS)
    expect = np.repeat(np.asarray(crop)[..., None], 3, axis=-1)
    # The hole (rows 6..13, columns 8..15 -> 6..13 of the crop) covers pixels 4..11 after the
    # 20 -> 16 box rule: a pixel is known only if all it covers is known.
    frac = np.asarray(
        Image.fromarray((_read(mask)[:, 2:22] == 255).astype(np.float32)).resize(
            (16, 16), Image.Resampling.BOX
        )
    )
    known = frac >= 1 - 1e-4
    assert 0 < known.sum() < known.size
    np.testing.assert_array_equal(res[known], expect[known])
    assert np.abs(res[~known].astype(int) - expect[~known]).mean() > 10
    # --resize resize stretches the whole image instead.
    rc, _, err = run(
        capsys,
        ["--image", image, "--mask", mask, "--out", tmp_path / "s.png", "--resize", "resize"]
        + FAST,
    )
    assert rc == 0, err
    stretched = np.asarray(Image.fromarray(gray).resize((16, 16), Image.Resampling.LANCZOS))
    assert (_read(tmp_path / "s.png")[0, 0] == stretched[0, 0]).all()


def test_shipped_backbone_from_another_directory_rgb_to_gray(tmp_path, capsys, monkeypatch):
    """The default backbone (ported_weights/fashion_mnist_32, 32x32x1) found from any working
    directory; an RGB input converted to luma; ddnm with 2 steps."""
    images = np.load(TESTDATA / "fashion_mnist_test64.npz")["images"]
    gray = images[0, ..., 0]
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)  # a coloured version
    monkeypatch.chdir(tmp_path)
    _save(rgb, tmp_path / "shirt.png")
    _save(_box_mask(32, 32, 8, 8, 16), tmp_path / "mask.png")
    rc, stdout, err = run(
        capsys, ["--image", "shirt.png", "--mask", "mask.png", "--out", "out.png", "--steps", 2]
    )
    assert rc == 0, err
    assert "ddnm, 2 steps" in stdout
    res = _read(tmp_path / "out.png")
    assert res.shape == (32, 32)  # mode L: the backbone's one channel
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    known = _read(tmp_path / "mask.png") == 255
    np.testing.assert_array_equal(res[known], luma[known])
    assert np.abs(res[~known].astype(int) - luma[~known]).mean() > 5


def test_exif_orientation_is_applied(data, tmp_path, capsys):
    """A photo stored sideways with an EXIF orientation tag is inpainted as viewers show it."""
    d, imgs, _, mask = data
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180 degrees
    Image.fromarray(imgs["a"][::-1, ::-1]).save(tmp_path / "turned.png", exif=exif)
    out = tmp_path / "out.png"
    rc, _, err = run(
        capsys, ["--image", tmp_path / "turned.png", "--mask", mask, "--out", out, *FAST]
    )
    assert rc == 0, err
    known = _read(mask) == 255
    np.testing.assert_array_equal(_read(out)[known], imgs["a"][known])


@pytest.fixture(scope="module")
def cond_backbone(tmp_path_factory):
    """The tiny fixture's architecture with 3 classes, random weights, as a ported folder."""
    tiny = backbones.load_backbone(TINY)
    kwargs = dict(loader.init_kwargs(tiny.config), label_dim=3)
    config = loader.config_from_checkpoint(loader.class_name(tiny.config), kwargs)
    params = backbones.init_params(jax.random.key(0), config)
    manifest = dict(
        format_version=loader.FORMAT_VERSION,
        class_name=loader.class_name(config),
        init_kwargs=loader.init_kwargs(config),
    )
    folder = tmp_path_factory.mktemp("cond") / "tiny_cond"
    backbones.save_backbone(backbones.Backbone(params, config, manifest), folder)
    return folder


def test_labels_on_a_conditional_backbone(data, cond_backbone, tmp_path, capsys):
    d, imgs, _, mask = data
    argv = ["--image", d / "images/a.png", "--mask", mask, "--backbone", cond_backbone]
    argv += ["--steps", 2, "--quiet"]
    outs = {}
    for label in (0, 2):
        outs[label] = tmp_path / f"label{label}.png"
        rc, _, err = run(capsys, [*argv, "--out", outs[label], "--labels", label])
        assert rc == 0, err
    known = _read(mask) == 255
    np.testing.assert_array_equal(_read(outs[0])[known], imgs["a"][known])
    assert (_read(outs[0]) != _read(outs[2])).any()  # the class conditions the sample
    # Python: one label per image.
    pil = [Image.open(d / "images" / f"{n}.png") for n in "ab"]
    res = ii.inpaint_images(pil, Image.open(mask), backbone=cond_backbone, steps=2, labels=[0, 2])
    assert len(res) == 2
    for bad, words in (([0, 1, 2], "3 labels for 2 images"), (None, "class-conditional")):
        with pytest.raises(ii.InputError, match=words):
            ii.inpaint_images(pil, Image.open(mask), backbone=cond_backbone, steps=2, labels=bad)


@pytest.fixture(scope="module")
def aid_export(tmp_path_factory):
    """A guidance module for the tiny backbone (random, non-zero actor), exported."""
    tiny = backbones.load_backbone(TINY)
    cfg = aid_model.AIDConfig(image_shape=(16, 16, 3), num_steps=2, actor_channels=(4, 4))
    actor = aid_model.init_actor(jax.random.key(1), cfg)
    actor = jax.tree.map(lambda a: np.asarray(a) + np.float32(0.05), actor)
    out = tmp_path_factory.mktemp("aid") / "export"
    out.mkdir()
    checkpoint.save_pytree(out / "actor", actor)
    manifest = dict(
        format="aid_jax-guidance",
        format_version=1,
        aid_config=cfg.to_dict(),
        backbone=dict(path=TINY, params_sha256=tiny.params_sha256),
    )
    (out / "aid_config.json").write_text(json.dumps(manifest))
    return out


def test_aid_method_and_the_callable_inpaint_module(data, aid_export, tmp_path, capsys):
    d, imgs, _, mask = data
    out = tmp_path / "aid.png"
    argv = ["--image", d / "images/a.png", "--mask", mask, "--method", "aid", "--quiet"]
    rc, _, err = run(capsys, [*argv, "--out", out, "--backbone", TINY])
    # the shipped module is the default backbone's: another backbone needs its own module
    assert rc == 1 and "--aid PATH" in err and "aid_fashion_mnist" in err and not out.exists()
    rc, _, err = run(capsys, [*argv, "--out", out, "--aid", aid_export])
    assert rc == 0, err
    res = _read(out)
    known = _read(mask) == 255
    np.testing.assert_array_equal(res[known], imgs["a"][known])
    assert np.abs(res[~known].astype(int) - imgs["a"][~known]).mean() > 10
    # The same through aid_jax.inpaint after `import aid_jax.inpaint` (the module shadows the
    # function as the package attribute, and stays callable).
    import aid_jax.inpaint

    assert isinstance(aid_jax.inpaint, type(sys)) and callable(aid_jax.inpaint)
    params = aid_jax.load(aid_export)
    y = imgs["a"][None].astype(np.float32) / np.float32(127.5) - np.float32(1)
    m = known[None, ..., None].astype(np.float32)
    key = jax.random.fold_in(jax.random.key(0), 0)  # batch 0 of seed 0
    got = aid_jax.inpaint(params, y, m, key=key, paste_back=True)
    want = aid_model.inpaint(params, y, m, key=key, paste_back=True)
    np.testing.assert_array_equal(np.asarray(got.x), np.asarray(want.x))
    assert got.nfe == 2
    np.testing.assert_array_equal(images.to_uint8(got.x[0]), res)


@pytest.fixture(scope="module")
def deft_export(tmp_path_factory):
    """A DEFT h-network for the tiny backbone (random, non-zero), written as an export by
    ``aid_jax.guidance_module.save_module``."""
    from aid_jax import guidance_module

    tiny = backbones.load_backbone(TINY)
    cfg = deft_model.DEFTConfig(
        image_shape=(16, 16, 3), num_steps=2, channels=(4, 4), emb_dim=8, gate_hidden=4
    )
    hnet = deft_model.init_hnet(jax.random.key(1), cfg)
    hnet = jax.tree.map(lambda a: np.asarray(a) + np.float32(0.05), hnet)
    manifest = dict(
        format=deft_api.FORMAT,
        format_version=1,
        deft_config=cfg.to_dict(),
        backbone=dict(path=TINY, params_sha256=tiny.params_sha256),
    )
    out = tmp_path_factory.mktemp("deft") / "export"
    return guidance_module.save_module(out, deft_api.KIND, hnet, manifest)


def test_deft_method(data, deft_export, aid_export, tmp_path, capsys):
    """--method deft --deft PATH: the module's step count and recorded backbone by default, the
    output equal to aid_jax.deft.model.inpaint with batch 0's key, the Python call the same."""
    d, imgs, _, mask = data
    out = tmp_path / "deft.png"
    argv = ["--image", d / "images/a.png", "--mask", mask, "--method", "deft"]
    rc, _, err = run(capsys, [*argv, "--out", out, "--quiet", "--backbone", TINY])
    assert rc == 1 and "--deft PATH" in err and not out.exists()
    rc, _, err = run(capsys, [*argv, "--out", out, "--deft", deft_export, "--aid", aid_export])
    assert rc == 1 and "--aid is only used with --method aid" in err
    rc, stdout, err = run(capsys, [*argv, "--out", out, "--deft", deft_export])
    assert rc == 0, err
    assert "deft, 2 steps, NFE 2 per sample" in stdout
    res = _read(out)
    known = _read(mask) == 255
    np.testing.assert_array_equal(res[known], imgs["a"][known])
    params = deft_api.load(deft_export)
    y = imgs["a"][None].astype(np.float32) / np.float32(127.5) - np.float32(1)
    m = known[None, ..., None].astype(np.float32)
    key = jax.random.fold_in(jax.random.key(0), 0)  # batch 0 of seed 0
    want = deft_model.inpaint(params, y, m, key=key, paste_back=True).x
    np.testing.assert_array_equal(images.to_uint8(want[0]), res)
    assert np.abs(res[~known].astype(int) - imgs["a"][~known]).mean() > 10
    pil = ii.inpaint_images(
        Image.open(d / "images/a.png"), Image.open(mask), method="deft", deft=params
    )
    np.testing.assert_array_equal(np.asarray(pil[0]), res)
    with pytest.raises(ii.InputError, match="must be a path or a DEFTParams"):
        ii.inpaint_images(Image.open(d / "images/a.png"), mask, method="deft", deft=1)


def _bad_cases(d: pathlib.Path, tmp: pathlib.Path, cond: pathlib.Path):
    """(argv, the file or word the message must name) for every bad input."""
    image, mask = d / "images/a.png", d / "mask.png"
    rng = np.random.default_rng(2)
    (tmp / "bad").mkdir()
    b = tmp / "bad"
    (b / "garbage.png").write_bytes(b"not an image")
    _save(_box_mask(12, 16, 2, 2, 4), b / "small_mask.png")
    _save(np.full((16, 16), 255, np.uint8), b / "all_known.png")
    _save(np.zeros((16, 16), np.uint8), b / "all_hole.png")
    _save(rng.integers(0, 256, (16, 16), dtype=np.uint8), b / "photo_mask.png")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = _box_mask(16, 16, 4, 4, 8)
    _save(colour, b / "red_mask.png")
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 100, np.uint8)], axis=-1)
    _save(rgba, b / "transparent.png")
    _save(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), b / "big.png")
    _save(_box_mask(20, 20, 4, 4, 8), b / "big_mask.png")
    # A mask folder lacking c's mask; a folder where c's mask has no hole.
    (b / "masks_missing").mkdir()
    (b / "masks_nohole").mkdir()
    for n in "ab":
        _save(_box_mask(16, 16, 4, 4, 8), b / "masks_missing" / f"{n}.png")
        _save(_box_mask(16, 16, 4, 4, 8), b / "masks_nohole" / f"{n}.png")
    _save(np.full((16, 16), 255, np.uint8), b / "masks_nohole" / "c.png")
    single = lambda img, m: ["--image", img, "--mask", m]  # noqa: E731
    return {
        "missing image": (single(b / "nope.png", mask), "nope.png"),
        "missing mask": (single(image, b / "nope_mask.png"), "nope_mask.png"),
        "unreadable image": (single(b / "garbage.png", mask), "garbage.png"),
        "unreadable mask": (single(image, b / "garbage.png"), "garbage.png"),
        "mask size": (single(image, b / "small_mask.png"), "small_mask.png"),
        "mask all known": (single(image, b / "all_known.png"), "all_known.png"),
        "mask all hole": (single(image, b / "all_hole.png"), "all_hole.png"),
        "mask all known as hole": (
            [*single(image, b / "all_hole.png"), "--mask-convention", "hole"],
            "all_hole.png",
        ),
        "photo as mask": (single(image, b / "photo_mask.png"), "photo_mask.png"),
        "colour mask": (single(image, b / "red_mask.png"), "red_mask.png"),
        "transparent image": (single(b / "transparent.png", mask), "transparent.png"),
        "image size": (single(b / "big.png", b / "big_mask.png"), "big.png"),
        "labels unconditional": ([*single(image, mask), "--labels", 1], "edm_ddpmpp_tiny.pkl"),
        "labels out of range": (
            [*single(image, mask), "--labels", 3, "--backbone", cond],
            "tiny_cond",
        ),
        "labels missing": ([*single(image, mask), "--backbone", cond], "tiny_cond"),
        "missing backbone": ([*single(image, mask), "--backbone", b / "nobb"], "nobb"),
        "folder: a mask missing": (single(d / "images", b / "masks_missing"), "c.png"),
        "folder: a mask without hole": (single(d / "images", b / "masks_nohole"), "c.png"),
        "aid option without aid": ([*single(image, mask), "--aid", b], "--aid"),
        "deft option without deft": ([*single(image, mask), "--deft", b], "--deft"),
        "missing deft module": (
            [*single(image, mask), "--method", "deft", "--deft", b / "no_deft_here"],
            "no_deft_here",
        ),
        "damaged deft module": (
            [*single(image, mask), "--method", "deft", "--deft", b],
            "deft_config.json",
        ),
        "threshold": ([*single(image, mask), "--threshold", 0], "threshold"),
    }


def test_bad_inputs_are_refused_with_one_line_naming_the_file(data, cond_backbone, tmp_path):
    d = data[0]
    cases = _bad_cases(d, tmp_path, cond_backbone)
    for what, (argv, name) in cases.items():
        target = tmp_path / "out" / what.replace(" ", "_").replace(":", "")
        target.mkdir(parents=True)
        out = target / ("res" if what.startswith("folder") else "res.png")
        full = [str(a) for a in argv] + ["--out", str(out), "--steps", "2", "--quiet"]
        if "--backbone" not in full:
            full += ["--backbone", TINY]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = ii.main(full)
        msg = err.getvalue()
        assert rc == 1, (what, msg)
        assert msg.count("\n") == 1 and msg.startswith("python -m aid_jax.inpaint: error: ")
        assert "Traceback" not in msg
        assert name in msg, (what, msg)
        assert list(target.iterdir()) == [], (what, list(target.iterdir()))


def test_existing_output_is_kept_unless_overwrite(data, tmp_path, capsys):
    d, _, _, mask = data
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    argv = ["--image", d / "images/a.png", "--mask", mask, "--out", out, *FAST]
    rc, _, err = run(capsys, argv)
    assert rc == 1 and "out.png" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    # An output that is an input is refused even with --overwrite.
    rc, _, err = run(
        capsys, ["--image", out, "--mask", mask, "--out", out, "--overwrite", *FAST[:-1]]
    )
    assert rc == 1 and "out.png" in err and out.read_bytes() == b"precious"
    assert run(capsys, [*argv, "--overwrite"])[0] == 0
    assert _read(out).shape == (16, 16, 3)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_help_states_the_mask_convention_and_default_method():
    res = subprocess.run(
        [sys.executable, "-m", "aid_jax.inpaint", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "WHITE = KNOWN pixel" in text and "--mask-convention" in text
    assert "default: ddnm with 20 steps" in text and "--threshold" in text
    assert "aid" in text and "vipaint" in text  # every registered method, plus aid
