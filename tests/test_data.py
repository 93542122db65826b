"""Data sources and the batch pipeline: shapes, validation errors, determinism, resume, sharding.

Needs no installed dataset: digits (scikit-learn), synthetic data and small files written to
tmp_path, and the Fashion-MNIST subset that ships with the package (only the check that it equals
the Debian package's files skips when that package is absent); TFDS runs on mocked or locally
prepared tiny data and never downloads.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import pathlib
import sys
import time
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from aid_jax.data import idx, pipeline, sources
from aid_jax.data.idx import DataError
from aid_jax.data.pipeline import BatchIterator, batch_at, eval_batches, eval_indices
from aid_jax.data.sources import make_source

ROOT = pathlib.Path(__file__).parent.parent

# ------------------------------------------------------------------------------------------
# helpers


def _check_source(src, n, shape, num_classes):
    assert len(src) == n
    assert tuple(src.image_shape) == shape
    assert src.num_classes == num_classes
    assert isinstance(src.name, str) and src.name
    images, labels = src.get(np.array([0, n - 1, 0]))
    assert images.dtype == np.uint8 and images.shape == (3, *shape)
    assert labels.dtype == np.int32 and labels.shape == (3,)
    np.testing.assert_array_equal(images[0], images[2])
    if num_classes:
        assert labels.min() >= 0 and labels.max() < num_classes
    else:
        assert (labels == -1).all()
    return images, labels


def _png(path: pathlib.Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return array


def _rand(rng, h, w, c=None):
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _edm_zip(path, images, labels=None, meta=True):
    """A zip laid out like EDM's dataset_tool.py output."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, img in zip(names, images, strict=True):
            z.writestr(name, _png_bytes(img))
        if meta:
            table = (
                None
                if labels is None
                else [[n, int(c)] for n, c in zip(names, labels, strict=True)]
            )
            z.writestr("dataset.json", json.dumps({"labels": table}))
    return names


# ------------------------------------------------------------------------------------------
# in-memory sources


def test_digits_splits_and_values():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    train = make_source({"name": "digits"})
    _check_source(train, 1500, (8, 8, 1), 10)
    assert train.name == "digits/train"
    test = make_source({"name": "digits", "split": "test"})
    _check_source(test, 297, (8, 8, 1), 10)
    ref = load_digits()
    images, labels = test.get(np.arange(3))
    np.testing.assert_array_equal(labels, ref.target[1500:1503])
    np.testing.assert_array_equal(images[..., 0], np.round(ref.images[1500:1503] * 255 / 16))
    assert train.images.max() == 255 and train.images.min() == 0

    big = make_source({"name": "digits", "split": "all", "upscale": 3, "pad_to": 32})
    images, _ = _check_source(big, 1797, (32, 32, 1), 10)
    assert (big.images[:, :4] == 0).all()  # padding rows
    small = make_source({"name": "digits", "split": "all"}).images
    np.testing.assert_array_equal(big.images[:, 4:28, 4:28, 0][:, ::3, ::3], small[..., 0])


def test_synthetic_and_unknown_name():
    src = make_source({"name": "synthetic", "num_images": 10, "image_size": 6, "channels": 3})
    _check_source(src, 10, (6, 6, 3), 0)
    with pytest.raises(ValueError, match="expected one of"):
        make_source({"name": "cifar10"})


def test_fashion_mnist_bundled_never_skips():
    """The subset that ships with the package: the whole test split, the first 10k train images,
    checked against the bundle's sha256 manifest."""
    src = make_source({"name": "fashion_mnist_bundled", "split": "test"})
    _, _ = _check_source(src, 10000, (32, 32, 1), 10)
    assert src.name == "fashion_mnist_bundled/test"
    np.testing.assert_array_equal(np.bincount(src.labels), np.full(10, 1000))
    assert (src.images[:, :2] == 0).all()  # 28 -> 32 padding with the black background
    train = make_source({"name": "fashion_mnist_bundled", "split": "train", "pad_to": 0})
    _check_source(train, 10000, (28, 28, 1), 10)
    assert np.bincount(train.labels).min() >= 900  # every class well represented
    with pytest.raises(ValueError, match="takes no path"):
        make_source({"name": "fashion_mnist_bundled", "path": "/somewhere"})


def test_fashion_mnist_folder_route(tmp_path):
    """The Debian route (`fashion_mnist` + a folder of IDX files) reads the same images."""
    import shutil

    for f in idx.BUNDLED_FASHION_MNIST_DIR.glob("t10k-*.gz"):
        shutil.copyfile(f, tmp_path / f.name)
    src = make_source({"name": "fashion_mnist", "split": "test", "path": str(tmp_path)})
    assert src.name == "fashion_mnist/test"
    bundled = make_source({"name": "fashion_mnist_bundled", "split": "test"})
    np.testing.assert_array_equal(src.images, bundled.images)
    np.testing.assert_array_equal(src.labels, bundled.labels)


def test_fashion_mnist_bundle_equals_debian_files():
    if not pathlib.Path(idx.DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip(
            f"{idx.DEFAULT_FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)"
        )
    for split, n in (("test", 10000), ("train", 10000)):
        full = make_source({"name": "fashion_mnist", "split": split})
        bundled = make_source({"name": "fashion_mnist_bundled", "split": split})
        np.testing.assert_array_equal(bundled.images, full.images[:n])
        np.testing.assert_array_equal(bundled.labels, full.labels[:n])


def test_fashion_mnist_bundle_damage_is_refused(tmp_path, monkeypatch):
    import shutil

    damaged = tmp_path / "fashion_mnist"
    shutil.copytree(idx.BUNDLED_FASHION_MNIST_DIR, damaged)
    raw = bytearray((damaged / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw[-9] ^= 1
    (damaged / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    monkeypatch.setattr(idx, "BUNDLED_FASHION_MNIST_DIR", damaged)
    with pytest.raises(DataError, match="sha256"):
        make_source({"name": "fashion_mnist_bundled", "split": "test"})


def test_main_job_data_without_the_debian_package(tmp_path, monkeypatch):
    """README's first command on a machine where only pip worked: every data source the main
    job opens (training images, validation and evaluation images, the FID reference set) comes
    from the package."""
    monkeypatch.setattr(idx, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "no-debian-package"))
    sys.path.insert(0, str(ROOT))
    from configs import fashion_mnist  # noqa: I001 (configs/ is on sys.path only now)

    from aid_jax import evaluate

    config = fashion_mnist.get_config(None)
    evaluation = evaluate.evaluation_config(config, workdir=str(tmp_path))
    opened = [config.data, config.eval_data, evaluation.data]
    opened.append(evaluation.metrics.reference_data or evaluation.data)
    for data in opened:
        src = make_source(data)
        assert src.name.startswith("fashion_mnist_bundled/") and len(src) == 10000
    # The Debian route still says how to install it, and names the bundled alternative.
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as e:
        make_source({"name": "fashion_mnist", "split": "test"})
    assert "fashion_mnist_bundled" in str(e.value)


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as e:
        make_source({"name": "fashion_mnist", "path": str(tmp_path / "nope")})
    assert str(tmp_path / "nope") in str(e.value)


# ------------------------------------------------------------------------------------------
# IDX reader


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_idx_round_trip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(idx.read_idx(good), arr)
    plain = tmp_path / "plain"
    plain.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(idx.read_idx(plain), arr)

    cases = {
        "truncated": (_idx_bytes(arr)[:-5], "truncated"),
        "bad_magic": (b"\x00\x00\x0d\x03" + _idx_bytes(arr)[4:], "not an IDX"),
        "bad_gzip": (gzip.compress(_idx_bytes(arr))[:-12], "corrupt gzip"),
        "short_header": (b"\x00\x00\x08\x03\x00", "truncated IDX header"),
        "empty": (b"", "not an IDX"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(DataError, match=message) as e:
            idx.read_idx(path)
        assert str(path) in str(e.value), name
    with pytest.raises(DataError, match="no such file"):
        idx.read_idx(tmp_path / "missing")


def test_fashion_mnist_reader_on_written_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs)))
        labels = np.arange(n, dtype=np.uint8) % 10
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    src = make_source({"name": "fashion_mnist", "split": "test", "path": str(tmp_path)})
    _check_source(src, 4, (32, 32, 1), 10)
    src = make_source({"name": "fashion_mnist", "path": str(tmp_path), "pad_to": 0})
    _check_source(src, 6, (28, 28, 1), 10)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="do not match"):
        make_source({"name": "fashion_mnist", "split": "test", "path": str(tmp_path)})


# ------------------------------------------------------------------------------------------
# image folders


def test_folder_subdir_labels_sorted_and_lazy(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "dog/b.png": _rand(rng, 5, 7, 3),
        "cat/z.jpg": None,  # written below as JPEG (lossy): compared loosely
        "cat/a.png": _rand(rng, 5, 7, 3),
        "dog/sub/c.bmp": _rand(rng, 5, 7, 3),
        "wild/x.webp": None,
    }
    for rel, arr in files.items():
        if arr is not None:
            _png(tmp_path / rel, arr)
    (tmp_path / "wild").mkdir()
    Image.new("RGB", (7, 5), (10, 200, 30)).save(tmp_path / "cat/z.jpg", quality=95)
    Image.new("RGB", (7, 5), (90, 90, 90)).save(tmp_path / "wild/x.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden/skip.png", _rand(rng, 3, 3))  # hidden folders are skipped
    _png(tmp_path / "dog/.skip.png", _rand(rng, 3, 3))

    src = make_source({"name": "folder", "path": str(tmp_path), "labels": "subdirs"})
    assert src.keys == ["cat/a.png", "cat/z.jpg", "dog/b.png", "dog/sub/c.bmp", "wild/x.webp"]
    assert src.class_names == ("cat", "dog", "wild")
    images, labels = _check_source(src, 5, (5, 7, 3), 3)
    images, labels = src.get(np.arange(5))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(images[0], files["cat/a.png"])
    np.testing.assert_array_equal(images[2], files["dog/b.png"])
    np.testing.assert_array_equal(images[3], files["dog/sub/c.bmp"])
    assert np.abs(images[1].astype(int) - [10, 200, 30]).max() <= 3
    assert (images[4] == 90).all()
    assert src.name == f"folder/{tmp_path.name}"

    unlabelled = make_source({"name": "folder", "path": str(tmp_path), "cache": True})
    _check_source(unlabelled, 5, (5, 7, 3), 0)
    first = unlabelled.get([0])[0]
    (tmp_path / "cat/a.png").write_bytes(b"gone")  # cached: not decoded again
    np.testing.assert_array_equal(unlabelled.get([0])[0], first)
    with pytest.raises(DataError, match="cat/a.png"):  # lazy: decoded in get, not upfront
        src.get([0])


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="no such folder") as e:
        make_source({"name": "folder", "path": str(tmp_path / "afhqv2")})
    assert str(tmp_path / "afhqv2") in str(e.value) and "dataset_tool.py" in str(e.value)
    with pytest.raises(DataError, match="no images"):
        make_source({"name": "folder", "path": str(tmp_path)})
    _png(tmp_path / "top.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="class sub-folder"):
        make_source({"name": "folder", "path": str(tmp_path), "labels": "subdirs"})


def test_folder_mixed_sizes(tmp_path):
    rng = np.random.default_rng(1)
    _png(tmp_path / "a.png", _rand(rng, 8, 8, 3))
    _png(tmp_path / "b.png", _rand(rng, 8, 8, 3))
    _png(tmp_path / "c.png", _rand(rng, 6, 10, 3))
    with pytest.raises(DataError, match="differ in size") as e:
        make_source({"name": "folder", "path": str(tmp_path)})
    msg = str(e.value)
    assert "a.png is 8x8" in msg and "c.png is 10x6" in msg and "resize_to" in msg

    for filt in ("lanczos", "bicubic"):
        src = make_source(
            {"name": "folder", "path": str(tmp_path), "resize_to": 8, "resize_filter": filt}
        )
        _check_source(src, 3, (8, 8, 3), 0)
    ref = Image.open(tmp_path / "c.png").resize((8, 8), Image.Resampling.LANCZOS)
    src = make_source({"name": "folder", "path": str(tmp_path), "resize_to": [8, 8]})
    np.testing.assert_array_equal(src.get([2])[0][0], np.asarray(ref))
    np.testing.assert_array_equal(src.get([0])[0][0], np.asarray(Image.open(tmp_path / "a.png")))
    src = make_source({"name": "folder", "path": str(tmp_path), "resize_to": [4, 6]})
    assert src.image_shape == (4, 6, 3)
    with pytest.raises(ValueError, match="resize_filter"):
        make_source({"name": "folder", "path": str(tmp_path), "resize_to": 8, "resize_filter": "x"})


def test_folder_modes(tmp_path):
    gray = _png(tmp_path / "g.png", np.full((4, 4), 100, np.uint8))
    rgb = _png(tmp_path / "r.png", np.tile(np.array([200, 100, 50], np.uint8), (4, 4, 1)))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = 128
    _png(tmp_path / "t.png", rgba, "RGBA")
    with pytest.raises(DataError, match="differ in mode") as e:
        make_source({"name": "folder", "path": str(tmp_path)})
    assert "g.png is L" in str(e.value) and "r.png is RGB" in str(e.value)

    src = make_source({"name": "folder", "path": str(tmp_path), "channels": 3})
    images, _ = src.get([0, 1, 2])  # g, r, t
    assert (images[0] == 100).all()  # L -> RGB repeats the grey value
    np.testing.assert_array_equal(images[1], rgb)
    expected = np.round(np.array([200, 100, 50]) * 128 / 255)  # composited on black
    assert np.abs(images[2].astype(int) - expected).max() <= 1

    src = make_source({"name": "folder", "path": str(tmp_path), "channels": 1})
    images, _ = src.get([0, 1])
    assert images.shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(images[0, ..., 0], gray)
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, PIL's RGB -> L
    assert abs(int(images[1, 0, 0, 0]) - luma) <= 1

    only_rgba = tmp_path / "rgba"
    _png(only_rgba / "t.png", rgba, "RGBA")
    with pytest.raises(DataError, match="RGBA.*set channels"):
        make_source({"name": "folder", "path": str(only_rgba)})
    only_gray = tmp_path / "gray"
    _png(only_gray / "g.png", gray)
    assert make_source({"name": "folder", "path": str(only_gray)}).image_shape == (4, 4, 1)
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(sixteen / "d.png")
    with pytest.raises(DataError, match="16-bit"):
        make_source({"name": "folder", "path": str(sixteen), "channels": 1})


def test_folder_corrupt_images(tmp_path):
    rng = np.random.default_rng(2)
    _png(tmp_path / "ok.png", _rand(rng, 16, 16, 3))
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a readable image") as e:
        make_source({"name": "folder", "path": str(tmp_path)})
    assert str(tmp_path / "garbage.png") in str(e.value)

    (tmp_path / "garbage.png").unlink()
    raw = _png_bytes(_rand(rng, 16, 16, 3))
    (tmp_path / "truncated.png").write_bytes(raw[: len(raw) // 2])  # header fine, pixels cut
    src = make_source({"name": "folder", "path": str(tmp_path)})
    src.get([0])
    with pytest.raises(DataError, match="corrupt image") as e:
        src.get([1])
    assert str(tmp_path / "truncated.png") in str(e.value)


# ------------------------------------------------------------------------------------------
# EDM dataset_tool zips


def test_edm_zip_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    images = [_rand(rng, 6, 6, 3) for _ in range(5)]
    labels = [3, 0, 2, 2, 1]
    path = tmp_path / "afhqv2-6x6.zip"
    names = _edm_zip(path, images, labels)
    src = make_source({"name": "edm_zip", "path": str(path)})
    assert src.name == "edm_zip/afhqv2-6x6.zip" and src.keys == names
    got, got_labels = _check_source(src, 5, (6, 6, 3), 4)
    got, got_labels = src.get(np.arange(5))
    np.testing.assert_array_equal(got, np.stack(images))
    np.testing.assert_array_equal(got_labels, labels)
    src = make_source({"name": "edm_zip", "path": str(path), "labels": None})
    _check_source(src, 5, (6, 6, 3), 0)

    nolabels = tmp_path / "ffhq.zip"
    _edm_zip(nolabels, images, None)
    _check_source(make_source({"name": "edm_zip", "path": str(nolabels)}), 5, (6, 6, 3), 0)
    with pytest.raises(DataError, match="no labels"):
        make_source({"name": "edm_zip", "path": str(nolabels), "labels": "dataset_json"})
    nometa = tmp_path / "nometa.zip"
    _edm_zip(nometa, images, meta=False)
    _check_source(make_source({"name": "edm_zip", "path": str(nometa)}), 5, (6, 6, 3), 0)


def test_edm_zip_errors(tmp_path):
    rng = np.random.default_rng(4)
    missing = tmp_path / "missing.zip"
    with pytest.raises(DataError, match="no such file.*dataset_tool.py") as e:
        make_source({"name": "edm_zip", "path": str(missing)})
    assert str(missing) in str(e.value)

    good = tmp_path / "good.zip"
    _edm_zip(good, [_rand(rng, 6, 6, 3) for _ in range(4)], [0, 1, 0, 1])
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        make_source({"name": "edm_zip", "path": str(truncated)})
    assert str(truncated) in str(e.value)

    mixed = tmp_path / "mixed.zip"
    _edm_zip(mixed, [_rand(rng, 6, 6, 3), _rand(rng, 6, 6, 3), _rand(rng, 5, 6, 3)])
    with pytest.raises(DataError, match="differ in size") as e:
        make_source({"name": "edm_zip", "path": str(mixed)})
    assert "00000/img00000000.png is 6x6" in str(e.value)
    assert "00000/img00000002.png is 6x5" in str(e.value)
    _check_source(
        make_source({"name": "edm_zip", "path": str(mixed), "resize_to": 6}), 3, (6, 6, 3), 0
    )

    # A member whose compressed bytes are damaged after the PNG header: CRC error in get.
    bad = tmp_path / "badcrc.zip"
    payload = _png_bytes(_rand(rng, 64, 64, 3))  # > one 4 KiB zip read
    with zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("00000/img00000000.png", payload)
    raw = bytearray(bad.read_bytes())
    pos = raw.find(payload) + len(payload) - 100
    raw[pos : pos + 4] = bytes(b ^ 0xFF for b in raw[pos : pos + 4])
    bad.write_bytes(bytes(raw))
    src = make_source({"name": "edm_zip", "path": str(bad)})
    with pytest.raises(DataError, match="corrupt image") as e:
        src.get([0])
    assert f"{bad}:00000/img00000000.png" in str(e.value)

    badmeta = tmp_path / "badmeta.zip"
    with zipfile.ZipFile(badmeta, "w") as z:
        z.writestr("00000/img00000000.png", _png_bytes(_rand(rng, 4, 4, 3)))
        z.writestr("dataset.json", json.dumps({"labels": [["00000/other.png", 1]]}))
    with pytest.raises(DataError, match="no label for 00000/img00000000.png"):
        make_source({"name": "edm_zip", "path": str(badmeta)})


def test_folder_dataset_json_labels(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "ds.zip"
    names = _edm_zip(path, [_rand(rng, 4, 4, 3) for _ in range(3)], [2, 0, 1])
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "unpacked")
    src = make_source(
        {"name": "folder", "path": str(tmp_path / "unpacked"), "labels": "dataset_json"}
    )
    assert src.keys == names
    np.testing.assert_array_equal(src.get(np.arange(3))[1], [2, 0, 1])
    assert src.num_classes == 3


# ------------------------------------------------------------------------------------------
# npz


def test_npz_detection(tmp_path):
    rng = np.random.default_rng(6)
    u8 = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=u8, labels=np.array([0, 1, 2, 1, 0]))
    src = make_source({"name": "npz", "path": str(tmp_path / "u8.npz")})
    _check_source(src, 5, (4, 4, 3), 3)
    np.testing.assert_array_equal(src.images, u8)

    np.savez(tmp_path / "f01.npz", images=u8.astype(np.float32) / 255)
    src = make_source({"name": "npz", "path": str(tmp_path / "f01.npz")})
    _check_source(src, 5, (4, 4, 3), 0)
    np.testing.assert_array_equal(src.images, u8)

    np.savez(tmp_path / "fm11.npz", images=u8.astype(np.float64) / 127.5 - 1)
    src = make_source({"name": "npz", "path": str(tmp_path / "fm11.npz")})
    np.testing.assert_array_equal(src.images, u8)

    gray = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)  # [N, H, W] -> one channel
    np.savez(tmp_path / "gray.npz", images=gray)
    assert make_source({"name": "npz", "path": str(tmp_path / "gray.npz")}).image_shape == (
        4,
        4,
        1,
    )

    positive = np.full((2, 4, 4, 1), 0.5, np.float32)  # ambiguous: auto reads [0, 1]
    np.savez(tmp_path / "pos.npz", images=positive)
    src = make_source({"name": "npz", "path": str(tmp_path / "pos.npz")})
    assert (src.images == 128).all()
    src = make_source({"name": "npz", "path": str(tmp_path / "pos.npz"), "value_range": "-1_1"})
    assert (src.images == 191).all()

    bad = {
        "f255": (u8.astype(np.float32), "outside"),
        "int16": (u8.astype(np.int16), "int16"),
        "nan": (np.full((2, 4, 4, 1), np.nan, np.float32), "NaN"),
        "nchw": (np.zeros((2, 3, 8, 8), np.uint8), "NCHW"),
    }
    for name, (arr, message) in bad.items():
        np.savez(tmp_path / f"{name}.npz", images=arr)
        with pytest.raises(DataError, match=message):
            make_source({"name": "npz", "path": str(tmp_path / f"{name}.npz")})
    np.savez(tmp_path / "badlabels.npz", images=u8, labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="labels"):
        make_source({"name": "npz", "path": str(tmp_path / "badlabels.npz")})
    with pytest.raises(DataError, match="no such file.*np.savez"):
        make_source({"name": "npz", "path": str(tmp_path / "missing.npz")})
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="corrupt.npz"):
        make_source({"name": "npz", "path": str(tmp_path / "corrupt.npz")})


# ------------------------------------------------------------------------------------------
# tfds (never downloads)


def test_tfds_unprepared_raises_without_download(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match="not prepared.*download_and_prepare") as e:
        make_source({"name": "tfds", "tfds_name": "mnist", "data_dir": str(tmp_path)})
    assert str(tmp_path / "mnist") in str(e.value)
    assert time.monotonic() - start < 10  # a download attempt would hang for minutes
    assert not (tmp_path / "downloads").exists()

    info = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"name": "mnist", "version": "3.0.1"}))  # no fileFormat: tfrecord
    with pytest.raises(DataError, match="tfrecord.*array_record"):
        make_source({"name": "tfds", "tfds_name": "mnist", "data_dir": str(tmp_path)})


def test_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # The prepared-data check looks at the file system; mock_data then serves random examples.
    info = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"name": "mnist", "fileFormat": "array_record"}))
    with tfds.testing.mock_data(num_examples=12):
        src = make_source(
            {"name": "tfds", "tfds_name": "mnist", "split": "test", "data_dir": str(tmp_path)}
        )
        assert src.name == "tfds/mnist/test"
        images, labels = _check_source(src, 12, (28, 28, 1), 10)
        batch = batch_at(src, 1, batch_size=4, seed=0)
        assert batch["image"].shape == (4, 28, 28, 1)
        unlabelled = make_source(
            {"name": "tfds", "tfds_name": "mnist", "data_dir": str(tmp_path), "label_key": None}
        )
        _check_source(unlabelled, 12, (28, 28, 1), 0)
        with pytest.raises(DataError, match="no feature 'img'"):
            make_source(
                {
                    "name": "tfds",
                    "tfds_name": "mnist",
                    "data_dir": str(tmp_path),
                    "image_key": "img",
                }
            )


_TINY_BUILDER = """
import numpy as np
import tensorflow_datasets as tfds


class AidJaxTinyDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(10), "test": self._generate_examples(4)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 1), 10 * i, np.uint8), "label": i % 3}
"""


def test_tfds_locally_prepared_array_record(tmp_path, monkeypatch):
    """A real (tiny) dataset prepared offline as ArrayRecord, read back through tfds."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    pytest.importorskip("importlib_resources")  # undeclared tfds dependency of preparation
    package = tmp_path / "aid_jax_tiny_tfds"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "builder.py").write_text(_TINY_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("aid_jax_tiny_tfds.builder")
    try:
        data_dir = tmp_path / "tfds"
        builder = module.AidJaxTinyDigits(data_dir=str(data_dir), file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
        sys.modules.pop("aid_jax_tiny_tfds.builder", None)
        sys.modules.pop("aid_jax_tiny_tfds", None)
    cfg = {"name": "tfds", "tfds_name": "aid_jax_tiny_digits", "data_dir": str(data_dir)}
    src = make_source(cfg)
    images, labels = _check_source(src, 10, (4, 4, 1), 3)
    images, labels = src.get(np.arange(10))
    np.testing.assert_array_equal(labels, (images[:, 0, 0, 0] // 10) % 3)
    assert sorted(images[:, 0, 0, 0] // 10) == list(range(10))
    assert len(make_source({**cfg, "split": "test"})) == 4
    with pytest.raises(DataError, match="cannot open"):
        make_source({**cfg, "split": "validation"})


# ------------------------------------------------------------------------------------------
# pipeline


def _indices_source(n: int, name: str = "ids"):
    """A source whose image pixel (0, 0) and label both hold the example index."""
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return sources.ArraySource(images, np.arange(n, dtype=np.int32), n, name)


def _take(it, k):
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("prefetch", [0, 3])
def test_iterator_determinism_and_resume(prefetch):
    src = _indices_source(50)
    with BatchIterator(src, 8, seed=7, process_index=0, process_count=1, prefetch=prefetch) as a:
        fresh = _take(a, 14)
        assert a.state() == {
            "step": 14,
            "seed": 7,
            "source": "ids",
            "num_examples": 50,
            "batch_size": 8,
        }
    with BatchIterator(src, 8, seed=7, process_index=0, process_count=1, prefetch=0) as b:
        again = _take(b, 14)
    for x, y in zip(fresh, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert fresh[0]["image"].dtype == np.float32 and fresh[0]["label"].dtype == np.int32
    assert fresh[0]["image"].min() >= -1 and fresh[0]["image"].max() <= 1
    for k in (1, 5, 6, 13):
        with BatchIterator(
            src, 8, 7, start_step=k, process_index=0, process_count=1, prefetch=prefetch
        ) as c:
            for expected in fresh[k:]:
                np.testing.assert_array_equal(next(c)["label"], expected["label"])
        np.testing.assert_array_equal(
            batch_at(src, k, batch_size=8, seed=7)["label"], fresh[k]["label"]
        )
    with BatchIterator(src, 8, seed=8, process_index=0, process_count=1, prefetch=0) as d:
        assert not np.array_equal(next(d)["label"], fresh[0]["label"])


def test_epochs_cover_every_example_once():
    n, b = 50, 8
    src = _indices_source(n)
    it = BatchIterator(src, b, seed=3, process_index=0, process_count=1, prefetch=0)
    per_epoch = n // b
    assert it.steps_per_epoch == per_epoch
    epochs = []
    for _ in range(3):
        labels = np.concatenate([next(it)["label"] for _ in range(per_epoch)])
        assert len(np.unique(labels)) == per_epoch * b  # no repeats within an epoch
        epochs.append(labels)
        assert it.epoch == len(epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    for e in range(2):  # the epoch's permutation: visited examples + dropped tail = all of them
        perm = np.random.default_rng([3, e]).permutation(n)
        np.testing.assert_array_equal(epochs[e], perm[: per_epoch * b])
    # When the batch divides the size, an epoch is exactly every example once.
    src = _indices_source(48)
    it = BatchIterator(src, 8, seed=3, process_index=0, process_count=1, prefetch=0)
    for _ in range(2):
        labels = np.concatenate([next(it)["label"] for _ in range(6)])
        np.testing.assert_array_equal(np.sort(labels), np.arange(48))


def test_host_sharding_concatenates_to_global_batch():
    src = _indices_source(40)
    full = BatchIterator(src, 8, 1, process_index=0, process_count=1, prefetch=0)
    hosts = [
        BatchIterator(src, 8, 1, process_index=p, process_count=2, prefetch=2) for p in range(2)
    ]
    for _ in range(7):
        g = next(full)
        parts = [next(h) for h in hosts]
        assert parts[0]["label"].shape == (4,)
        np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), g["label"])
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), g["image"])
    for h in hosts:
        h.close()
    with pytest.raises(ValueError, match="does not split"):
        BatchIterator(src, 9, 1, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="exceeds"):
        BatchIterator(src, 64, 1, process_index=0, process_count=1)


def test_restore_checks_the_state():
    src = _indices_source(50)
    it = BatchIterator(src, 8, 5, process_index=0, process_count=1, prefetch=0)
    _take(it, 3)
    state = json.loads(json.dumps(it.state()))  # survives a JSON round trip
    expected = next(it)["label"]
    resumed = BatchIterator.restore(src, state, batch_size=8, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(resumed)["label"], expected)
    assert resumed.step == 4 and resumed.seed == 5
    resumed.close()

    with pytest.raises(ValueError, match="another configuration.*source 'ids' != 'other'"):
        BatchIterator.restore(_indices_source(50, "other"), state)
    with pytest.raises(ValueError, match="num_examples 50 != 49"):
        BatchIterator.restore(_indices_source(49), state)
    with pytest.raises(ValueError, match="batch_size 8 != 16"):
        BatchIterator.restore(src, state, batch_size=16)
    with pytest.raises(ValueError, match="lacks"):
        BatchIterator.restore(src, {"step": 3})


def test_prefetch_propagates_errors_and_closes():
    class Failing:
        name, num_classes, image_shape = "failing", 0, (2, 2, 1)

        def __len__(self):
            return 16

        def get(self, indices):
            if len(indices) and 0 in indices:
                raise DataError("/data/x.png: corrupt image")
            return np.zeros((len(indices), 2, 2, 1), np.uint8), np.full(len(indices), -1)

    it = BatchIterator(Failing(), 4, 0, process_index=0, process_count=1, prefetch=2)
    with pytest.raises(DataError, match="x.png"):
        for _ in range(8):
            next(it)
    it.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)


def test_default_process_index_and_count():
    it = BatchIterator(_indices_source(20), 4, 0, prefetch=0)
    assert (it.process_index, it.process_count) == (jax.process_index(), jax.process_count())


def test_eval_indices_and_batches():
    a = eval_indices(100, 30, seed=0)
    assert a.shape == (30,) and len(np.unique(a)) == 30 and a.max() < 100
    np.testing.assert_array_equal(a, eval_indices(100, 30, seed=0))
    np.testing.assert_array_equal(eval_indices(100, 10, seed=0), a[:10])
    assert not np.array_equal(eval_indices(100, 30, seed=1), a)
    assert not np.array_equal(a, np.random.default_rng([0, 0]).permutation(100)[:30])
    with pytest.raises(ValueError):
        eval_indices(10, 11, 0)

    src = _indices_source(100)
    batches = list(eval_batches(src, a, 8, process_index=0, process_count=1))
    assert len(batches) == 4 and all(b["label"].shape == (8,) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 30 and not valid[30:].any()
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[valid], a)
    halves = [list(eval_batches(src, a, 8, process_index=p, process_count=2)) for p in range(2)]
    for b, h0, h1 in zip(batches, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([h0["index"], h1["index"]]), b["index"])
        np.testing.assert_array_equal(np.concatenate([h0["valid"], h1["valid"]]), b["valid"])


def test_to_global_array():
    from aid_jax.sharding import make_mesh

    mesh = make_mesh()
    n = mesh.devices.size
    src = _indices_source(4 * n)
    batch = batch_at(src, 0, batch_size=2 * n, seed=0)
    out = pipeline.to_global_array(batch, mesh)
    assert out["image"].shape == batch["image"].shape
    assert out["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])
    np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
    if n > 1:
        with pytest.raises(ValueError, match="does not split"):
            pipeline.to_global_array({"x": np.zeros((n + 1, 2))}, mesh)
