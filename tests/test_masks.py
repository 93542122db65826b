"""Inpainting masks (aid_jax.masks): families, determinism, statistics, PNG, save/load, checks."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from aid_jax import masks as M

GENERATED = [k for k in M.MASK_TYPES if k != "png"]


def _write_png(path, array, mode=None):
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# All families: shape, dtype, binary values, determinism


@pytest.mark.parametrize("kind", GENERATED)
@pytest.mark.parametrize("size", [32, (24, 40)])
def test_shape_dtype_binary(kind, size):
    m = M.make_masks(kind, 6, size, seed=0)
    hw = (size, size) if isinstance(size, int) else size
    assert m.shape == (6, *hw, 1)
    assert m.dtype == np.float32
    assert set(np.unique(m).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(M.validate_mask(m), m)  # every mask has a hole and a known px


@pytest.mark.parametrize("kind", GENERATED)
def test_deterministic_and_prefix_stable(kind):
    a = M.make_masks(kind, 8, 32, seed=3)
    np.testing.assert_array_equal(a, M.make_masks(kind, 8, 32, seed=3))
    np.testing.assert_array_equal(a[:5], M.make_masks(kind, 5, 32, seed=3))  # mask i: (seed, i)
    if kind != "center_box":  # the only family without randomness
        assert not np.array_equal(a, M.make_masks(kind, 8, 32, seed=4))
        assert len({m.tobytes() for m in a}) > 1  # the masks of one batch differ too


def test_png_kind_shape_and_cycle(tmp_path):
    for i in range(3):
        img = np.full((32, 32), 255, np.uint8)
        img[i * 8 : i * 8 + 8] = 0
        _write_png(tmp_path / f"m{i}.png", img)
    m = M.make_masks("png", 7, 32, seed=0, paths=tmp_path)
    assert m.shape == (7, 32, 32, 1) and m.dtype == np.float32
    np.testing.assert_array_equal(m[3:6], m[:3])  # cycles through the sorted files
    assert m[1, 8:16].max() == 0 and m[1, :8].min() == 1
    shuffled = M.make_masks("png", 3, 32, seed=1, paths=tmp_path, shuffle=True)
    assert sorted(x.tobytes() for x in shuffled) == sorted(x.tobytes() for x in m[:3])


# ---------------------------------------------------------------------------------------------
# Hole-ratio statistics against the definitions


@pytest.mark.parametrize("size", [32, 64, 33])
def test_center_box_exact(size):
    m = M.make_masks("center_box", 3, size, seed=0)
    side = math.floor(0.5 * size + 0.5)
    np.testing.assert_allclose(M.hole_ratio(m), side * side / size**2)
    if size % 2 == 0:
        np.testing.assert_array_equal(M.hole_ratio(m), 0.25)
    hole = m[0, ..., 0] == 0
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    assert rows[0] == (size - side) // 2 and len(rows) == side
    assert cols[0] == (size - side) // 2 and len(cols) == side
    assert hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # a solid box


def test_center_box_fraction_non_square():
    m = M.make_masks("center_box", 1, (40, 20), seed=0, fraction=0.3)
    assert M.hole_ratio(m)[0] == pytest.approx(12 * 6 / 800)


def test_pixel_dropout_mean_within_3_std_errors():
    m = M.make_masks("pixel_dropout", 1000, 32, seed=0)
    n = m.size
    assert abs(M.hole_ratio(m).mean() - 0.7) < 3 * math.sqrt(0.7 * 0.3 / n)


def test_pixel_dropout_range():
    r = M.hole_ratio(M.make_masks("pixel_dropout", 300, 32, seed=0, p=(0.2, 0.4)))
    assert abs(r.mean() - 0.3) < 3 * math.sqrt((0.2**2 / 12) / 300) + 0.005
    assert 0.15 < r.min() and r.max() < 0.45 and r.std() > 0.04  # p varies per mask


@pytest.mark.parametrize("size", [32, (16, 10)])
def test_half_exactly_half_and_right_sides(size):
    h, w = (size, size) if isinstance(size, int) else size
    for side in M.HALF_SIDES:
        m = M.make_masks("half", 2, size, seed=0, side=side)[..., 0]
        np.testing.assert_array_equal(M.hole_ratio(m[..., None]), 0.5)
        expected = np.ones((h, w), np.float32)
        region = {
            "left": np.s_[:, : w // 2],
            "right": np.s_[:, w // 2 :],
            "top": np.s_[: h // 2, :],
            "bottom": np.s_[h // 2 :, :],
        }[side]
        expected[region] = 0
        np.testing.assert_array_equal(m[0], expected)


def test_half_random_uses_every_side():
    m = M.make_masks("half", 40, 8, seed=0)[..., 0]
    sides = {
        "left": m[:, :, 0].max(1) == 0,
        "right": m[:, :, -1].max(1) == 0,
        "top": m[:, 0, :].max(1) == 0,
        "bottom": m[:, -1, :].max(1) == 0,
    }
    assert all(s.any() for s in sides.values())
    assert (sum(s.astype(int) for s in sides.values()) == 1).all()  # exactly one side each
    np.testing.assert_array_equal(M.hole_ratio(m[..., None]), 0.5)


@pytest.mark.parametrize(
    "options",
    [{}, {"hole_ratio": (0.3, 0.4)}, {"num_boxes": 3, "box_size": (0.2, 0.3)}],
)
def test_random_boxes_in_range(options):
    m = M.make_masks("random_boxes", 200, 32, seed=0, **options)
    lo, hi = options.get("hole_ratio", M.DEFAULTS["random_boxes"]["hole_ratio"])
    r = M.hole_ratio(m)
    assert lo <= r.min() and r.max() <= hi
    assert r.std() > 0.01


def test_random_boxes_single_box_is_a_rectangle():
    m = M.make_masks("random_boxes", 50, 32, seed=0, num_boxes=1, box_size=(0.4, 0.6))
    for hole in m[..., 0] == 0:
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        assert hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert 13 <= len(rows) <= 19 and 13 <= len(cols) <= 19  # round(0.4·32) .. round(0.6·32)


@pytest.mark.parametrize("size", [32, 64])
def test_strokes_in_range_connected_and_thick(size):
    m = M.make_masks("strokes", 100, size, seed=0)
    lo, hi = M.DEFAULTS["strokes"]["hole_ratio"]
    r = M.hole_ratio(m)
    assert lo <= r.min() and r.max() <= hi and r.std() > 0.02
    max_strokes = M.DEFAULTS["strokes"]["num_strokes"][1]
    for hole in m[..., 0] == 0:
        _, n_components = ndimage.label(hole, structure=np.ones((3, 3)))
        assert 1 <= n_components <= max_strokes  # each stroke is one connected random walk
        # Thick: no isolated hole pixel, and most lie in a 2x2 block of hole pixels.
        cross = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
        assert not (hole & (ndimage.convolve(hole.astype(int), cross, mode="constant") == 0)).any()
        opened = ndimage.binary_opening(hole, structure=np.ones((2, 2)))
        assert opened.sum() >= 0.8 * hole.sum()


def test_strokes_options_change_masks():
    thin = M.hole_ratio(M.make_masks("strokes", 50, 32, seed=0, width=(0.06, 0.08)))
    thick = M.hole_ratio(M.make_masks("strokes", 50, 32, seed=0, width=(0.2, 0.25)))
    assert thick.mean() > thin.mean() + 0.05
    r = M.hole_ratio(M.make_masks("strokes", 50, 32, seed=0, hole_ratio=(0.3, 0.35)))
    assert 0.3 <= r.min() and r.max() <= 0.35


def test_hole_ratio_shapes():
    m = np.ones((4, 4), np.float32)
    m[0, :2] = 0
    np.testing.assert_allclose(M.hole_ratio(m), [2 / 16])
    np.testing.assert_allclose(M.hole_ratio(np.stack([m, 1 - m])[..., None]), [2 / 16, 14 / 16])


# ---------------------------------------------------------------------------------------------
# PNG masks


def test_png_round_trip_invert_and_formats(tmp_path):
    known = M.make_masks("strokes", 1, 32, seed=0)[0, ..., 0]
    gray = (known * 255).astype(np.uint8)
    back = M.from_png(_write_png(tmp_path / "l.png", gray), 32)
    np.testing.assert_array_equal(back[0, ..., 0], known)
    inv = M.from_png(tmp_path / "l.png", 32, invert=True)
    np.testing.assert_array_equal(inv[0, ..., 0], 1 - known)
    rgb = _write_png(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, -1))
    one_bit = tmp_path / "1.png"
    Image.fromarray(gray).convert("1").save(one_bit)
    both = M.from_png([str(rgb), one_bit], (32, 32))
    np.testing.assert_array_equal(both[..., 0], np.stack([known, known]))


def test_png_resize_nearest(tmp_path):
    small = np.full((8, 8), 255, np.uint8)
    small[2:5, 1:3] = 0
    small[7, 7] = 0
    m = M.from_png(_write_png(tmp_path / "s.png", small), 16)
    np.testing.assert_array_equal(m[0, ..., 0], (small >= 128).repeat(2, 0).repeat(2, 1))
    assert set(np.unique(m).tolist()) == {0.0, 1.0}
    rect = M.from_png(tmp_path / "s.png", (8, 16))
    np.testing.assert_array_equal(rect[0, ..., 0], (small >= 128).repeat(2, 1))


def test_png_threshold(tmp_path):
    img = np.full((8, 8), 200, np.uint8)
    img[:4] = 30
    img[0, 0] = 128
    path = _write_png(tmp_path / "g.png", img)
    with pytest.raises(ValueError, match=r"not binary: 64 pixels .*30, 128, 200.*threshold=True"):
        M.from_png(path, 8)
    m = M.from_png(path, 8, threshold=True)[0, ..., 0]
    expected = np.ones((8, 8))
    expected[:4] = 0
    expected[0, 0] = 1  # 128 is white
    np.testing.assert_array_equal(m, expected)


def test_png_errors(tmp_path):
    with pytest.raises(ValueError, match=r"mask file not found: .*nope\.png"):
        M.from_png(tmp_path / "nope.png", 8)
    with pytest.raises(ValueError, match=r"mask file not found: .*nope\.png"):
        M.make_masks("png", 2, 8, seed=0, paths=[str(tmp_path / "nope.png")])
    colour = np.full((8, 8, 3), 255, np.uint8)
    colour[:4] = 0
    colour[5, 6] = (255, 0, 0)
    with pytest.raises(ValueError, match=r"colour image \(mode 'RGB'\) with 1 coloured.*row 5"):
        M.from_png(_write_png(tmp_path / "c.png", colour), 8)
    rgba = np.concatenate([colour[..., :1].repeat(3, -1), np.full((8, 8, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 0
    with pytest.raises(ValueError, match="1 transparent pixels"):
        M.from_png(_write_png(tmp_path / "a.png", rgba), 8)
    zero_one = np.ones((8, 8), np.uint8)
    zero_one[:2] = 0
    with pytest.raises(ValueError, match="stores 0/1 instead of 0/255"):
        M.from_png(_write_png(tmp_path / "01.png", zero_one), 8)
    white = _write_png(tmp_path / "w.png", np.full((8, 8), 255))
    with pytest.raises(ValueError, match=r"w\.png.* has no hole"):
        M.from_png(white, 8)
    with pytest.raises(ValueError, match=r"no known pixel .*after invert"):
        M.from_png(white, 8, invert=True)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "i16.png")
    with pytest.raises(ValueError, match=r"i16\.png' has unsupported mode 'I;16'.*8-bit grayscale"):
        M.from_png(tmp_path / "i16.png", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no"):
        M.from_png(tmp_path / "empty", 8)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read mask image .*junk\.png"):
        M.from_png(tmp_path / "junk.png", 8)
    with pytest.raises(ValueError, match="'paths' option"):
        M.make_masks("png", 2, 8, seed=0)


# ---------------------------------------------------------------------------------------------
# Save / load, config


def test_save_load_round_trip(tmp_path):
    m = M.make_masks("random_boxes", 5, 16, seed=7)
    path = tmp_path / "masks.npz"
    M.save_masks(path, m, kind="random_boxes", options={"num_boxes": (1, 4)}, seed=np.int64(7))
    loaded, meta = M.load_masks(path)
    np.testing.assert_array_equal(loaded, m)
    assert loaded.dtype == np.float32
    assert meta == {"kind": "random_boxes", "options": {"num_boxes": [1, 4]}, "seed": 7}
    with np.load(path) as f:
        assert f["masks"].dtype == np.uint8 and json.loads(str(f["meta"]))["seed"] == 7
    grid = np.asarray(Image.open(tmp_path / "masks.png"))
    assert grid.ndim == 2 and {0, 255} <= set(np.unique(grid).tolist())


def test_save_load_errors(tmp_path):
    m = M.make_masks("half", 2, 8, seed=0)
    with pytest.raises(ValueError, match="JSON-able"):
        M.save_masks(tmp_path / "x.npz", m, bad=object())
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        M.save_masks(tmp_path / "x.npy", m)
    with pytest.raises(ValueError, match=r"mask file not found: .*y\.npz"):
        M.load_masks(tmp_path / "y.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a save_masks file"):
        M.load_masks(tmp_path / "other.npz")


def test_from_config():
    cfg = ml_collections.ConfigDict({"kind": "random_boxes", "num_boxes": (2, 3)})
    np.testing.assert_array_equal(
        M.from_config(cfg, 4, 16, seed=1),
        M.make_masks("random_boxes", 4, 16, seed=1, num_boxes=(2, 3)),
    )
    assert M.from_config({"kind": "half", "side": "top"}, 2, 8, 0)[0, 0].max() == 0
    assert M.from_config("center_box", 1, 8, 0).shape == (1, 8, 8, 1)
    with pytest.raises(ValueError, match="no 'kind'"):
        M.from_config({"side": "top"}, 2, 8, 0)


# ---------------------------------------------------------------------------------------------
# Bad generator input


@pytest.mark.parametrize(
    ("kind", "options", "fragment"),
    [
        ("center_box", {"fraction": 0.0}, r"fraction must be in \(0, 1\); got 0"),
        ("center_box", {"fraction": 1.0}, r"fraction must be in \(0, 1\); got 1"),
        ("center_box", {"fraction": 1.5}, r"fraction must be in \(0, 1\)"),
        ("center_box", {"fraction": 0.05}, "too small for fraction=0.05"),
        ("pixel_dropout", {"p": 1.0}, r"p must be in \(0, 1\); got 1"),
        ("pixel_dropout", {"p": -0.1}, r"p must be in \(0, 1\)"),
        ("pixel_dropout", {"p": (0.5, 0.2)}, r"p must satisfy min <= max"),
        ("random_boxes", {"box_size": (0.01, 0.5)}, "image 8x8 too small for box_size"),
        (
            "random_boxes",
            {"hole_ratio": (0.6, 0.9), "num_boxes": 1, "box_size": (0.1, 0.5)},
            r"unreachable .* \(reachable: 0.0156 to 0.25\)",
        ),
        ("random_boxes", {"hole_ratio": (0.1, 1.0)}, r"hole_ratio must satisfy .*\(0, 1\)"),
        ("random_boxes", {"hole_ratio": 0.3}, r"hole_ratio must be a \(min, max\) pair"),
        ("random_boxes", {"num_boxes": (0, 3)}, r"num_boxes must satisfy 1 <= min <= max"),
        ("random_boxes", {"num_boxes": 2.5}, "num_boxes must be an int or a"),
        ("strokes", {"max_angle": 4.0}, r"max_angle must be in \[0, pi\]"),
        ("strokes", {"width": (0.0, 0.1)}, r"width must satisfy"),
        ("strokes", {"hole_ratio": (0.9, 0.95), "max_tries": 3}, r"no mask .* in max_tries=3"),
        ("half", {"side": "middle"}, r"side must be one of \('left', 'right'.*'random'\)"),
        ("half", {"fraction": 0.5}, r"unknown option\(s\) 'fraction' .*accepted: side"),
    ],
)
def test_bad_options(kind, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        M.make_masks(kind, 2, 8, seed=0, **options)


def test_bad_call_arguments():
    with pytest.raises(ValueError, match=r"unknown mask kind 'box'; .*center_box, .*png"):
        M.make_masks("box", 2, 8, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        M.make_masks("half", 2, 8, seed=-1)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        M.make_masks("half", 2, 8, seed=1.5)
    with pytest.raises(ValueError, match="num must be a positive int"):
        M.make_masks("half", 0, 8, seed=0)
    with pytest.raises(ValueError, match=r"image_size must be an int or an \(H, W\) pair"):
        M.make_masks("half", 2, (8, 8, 3), seed=0)
    with pytest.raises(ValueError, match="at least 2x2"):
        M.make_masks("half", 2, 1, seed=0)


# ---------------------------------------------------------------------------------------------
# validate_mask


def test_validate_accepts_and_normalises():
    m = np.ones((6, 5), np.float32)
    m[0, 0] = 0
    for x in (
        m,
        m[..., None],
        m[None, ..., None],
        m.astype(bool),
        m.astype(np.uint8),
        jnp.array(m),
    ):
        out = M.validate_mask(x)
        assert out.shape == (1, 6, 5, 1) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0, ..., 0], m)
    out = M.validate_mask(m, (3, 6, 5, 3))  # one mask broadcast to three images
    assert out.shape == (3, 6, 5, 1) and out.flags.writeable
    assert M.validate_mask(m, np.zeros((6, 5, 3))).shape == (1, 6, 5, 1)  # array: its shape
    assert M.validate_mask(m, (6, 5)).shape == (1, 6, 5, 1)
    src = m[None, ..., None].copy()
    M.validate_mask(src)[0, 0, 0, 0] = 1
    assert src[0, 0, 0, 0] == 0  # a copy, never a view of the caller's array


def test_validate_errors():
    good = np.ones((2, 4, 4, 1), np.float32)
    good[:, 0, 0] = 0
    cases = [
        (np.ones((2, 4, 4, 3)), {}, r"shape \(2, 4, 4, 3\): the channel dim must be 1"),
        (
            np.ones((4, 4, 3)),
            {},
            r"shape \(4, 4, 3\): the channel dim must be 1.*mask\[\.\.\., None\]",
        ),
        (np.ones(4), {}, r"rank 1 .*expected \[H, W\], \[H, W, 1\] or \[B, H, W, 1\]"),
        (np.ones((1, 2, 4, 4, 1)), {}, "rank 5"),
        (good, {"image_shape": (2, 4, 5, 3)}, r"4x4 .* but the image is 4x5"),
        (good, {"image_shape": (3, 4, 4, 3)}, "batch 2 .* but there are 3 images"),
        (good, {"image_shape": (4, 4, 3)}, "batch 2 .* but there are 1 images"),
        (good, {"image_shape": (4,)}, r"image_shape must be \(H, W\)"),
        (np.where(good == 0, np.nan, good), {}, "contains 2 NaN values"),
        (np.where(good == 0, np.inf, good), {}, "contains 2 infinite values"),
        (
            np.where(good == 0, 0.5, good),
            {},
            r"2 values are other than 0/1 \(1 distinct: 0.5\).*\(mask > 0\.5\)",
        ),
        (good * 255, {}, r"30 values are other than 0/1 .*255.*divide by 255"),
        (np.array(["a"]), {}, "numeric or bool"),
        (np.ones((2, 0, 4, 1)), {}, "is empty"),
    ]
    for mask, kw, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            M.validate_mask(mask, **kw)

    batch = np.ones((5, 4, 4, 1), np.float32)
    batch[[0, 1, 2], 0, 0] = 0
    with pytest.raises(ValueError, match=r"image_mask has no hole .*batch index \[3, 4\] of 5"):
        M.validate_mask(batch, name="image_mask")
    batch[3:] = 0
    with pytest.raises(ValueError, match=r"no observed pixel .*batch index \[3, 4\] of 5"):
        M.validate_mask(batch)


def test_validate_refuses_tracers():
    m = M.make_masks("half", 1, 4, seed=0)
    with pytest.raises(TypeError, match="outside jit"):
        jax.jit(M.validate_mask)(m)
