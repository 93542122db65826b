"""The FID_LeNet feature classifier: training, features, retracing, saving/loading, shipped copy."""

import json
import pathlib

import numpy as np
import pytest

from aid_jax.data import idx
from aid_jax.data.pipeline import to_model_range
from aid_jax.metrics import classifier as clf
from aid_jax.metrics import features as feat
from aid_jax.metrics import fid as fid_lib

SHIPPED = pathlib.Path(__file__).parents[1] / "ported_weights" / "fashion_mnist_classifier"


@pytest.fixture(scope="module")
def params():
    return clf.init_params(clf.Arch(), seed=0)


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 1)).astype(np.float32)


def _bright_dark(n, seed):
    """Two trivially separable classes: dark images (label 0) and bright images (label 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    level = np.where(labels == 1, 0.6, -0.6)[:, None, None, None]
    images = level + 0.2 * rng.normal(size=(n, 32, 32, 1))
    return np.clip(images, -1, 1).astype(np.float32), labels.astype(np.int32)


def test_architecture_and_param_count(params):
    arch = clf.Arch()
    assert arch.flat_dim == 5 * 5 * 64
    assert clf.num_params(params) == 258_314
    assert clf.arch_from_params(params) == arch
    shapes = clf.param_shapes(arch)
    assert shapes["conv1"]["kernel"].shape == (5, 5, 1, 32)
    assert shapes["dense1"]["kernel"].shape == (1600, 128)
    assert clf.Arch.from_dict(arch.to_dict()) == arch


def test_learns_bright_vs_dark():
    x, y = _bright_dark(64, seed=0)
    params = clf.train_classifier(x, y, epochs=3, batch_size=16, seed=0, learning_rate=1e-3)
    xt, yt = _bright_dark(40, seed=1)
    assert clf.evaluate(params, xt, yt) == 1.0
    assert clf.logits(params, xt).shape == (40, 10)


def test_training_is_deterministic():
    x, y = _bright_dark(32, seed=2)
    kw = dict(epochs=1, batch_size=8, learning_rate=1e-3)
    a = clf.train_classifier(x, y, seed=5, **kw)
    b = clf.train_classifier(x, y, seed=5, **kw)
    c = clf.train_classifier(x, y, seed=6, **kw)
    assert clf.arrays_sha256(a) == clf.arrays_sha256(b)
    assert clf.arrays_sha256(a) != clf.arrays_sha256(c)
    # uint8 input is converted per batch with to_model_range: the same training.
    u8 = np.round((x + 1) * 127.5).astype(np.uint8)
    d = clf.train_classifier(u8, y, seed=5, **kw)
    e = clf.train_classifier(to_model_range(u8), y, seed=5, **kw)
    assert clf.arrays_sha256(d) == clf.arrays_sha256(e)


def test_features_shape_determinism_and_batching(params):
    x = _images(37)
    f = clf.features(params, x, batch_size=16)
    assert f.shape == (37, 128) and f.dtype == np.float32
    assert (f >= 0).all()  # post-ReLU
    np.testing.assert_array_equal(f, clf.features(params, x, batch_size=16))
    np.testing.assert_allclose(f, clf.features(params, x, batch_size=37), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:5], clf.features(params, x[:5]), rtol=1e-5, atol=1e-6)


def test_image_checks(params):
    with pytest.raises(TypeError, match="to_model_range"):
        clf.features(params, np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        feat.FeatureExtractor(params)(np.zeros((2, 1, 32, 32), np.float32))


def test_feature_extractor_never_retraces(params):
    extractor = feat.FeatureExtractor(params, batch_size=16)
    outs = [extractor(_images(n, seed=n)) for n in (16, 37, 5, 48, 1)]
    assert [o.shape for o in outs] == [(16, 128), (37, 128), (5, 128), (48, 128), (1, 128)]
    assert extractor._fn._cache_size() == 1
    np.testing.assert_allclose(
        outs[1], clf.features(params, _images(37, seed=37)), rtol=1e-5, atol=1e-6
    )
    assert extractor(np.zeros((0, 32, 32, 1), np.float32)).shape == (0, 128)
    assert extractor._fn._cache_size() == 1


def test_save_load_round_trip(params, tmp_path):
    path = tmp_path / "clf"
    meta = dict(test_accuracy=0.5, epochs=0, training=dict(seed=0), data=dict(dataset="none"))
    manifest = clf.save_classifier(path, params, meta)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "params"]
    on_disk = json.loads((path / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["test_accuracy"] == 0.5 and on_disk["num_params"] == 258_314
    assert on_disk["params_sha256"] == clf.folder_sha256(path / "params")
    assert on_disk["architecture"]["conv_features"] == [32, 64]
    assert {"date", "arrays_sha256", "format_version"} <= on_disk.keys()

    loaded, loaded_manifest = clf.load_classifier(path)
    assert loaded_manifest == manifest
    for layer in ("conv1", "conv2", "dense1", "dense2"):
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(loaded[layer][name], params[layer][name])
    assert clf.arrays_sha256(loaded) == clf.arrays_sha256(params)

    extractor = feat.FeatureExtractor.load(path, batch_size=8)
    assert extractor.sha256 == manifest["params_sha256"]
    x = _images(10)
    np.testing.assert_allclose(extractor(x), clf.features(params, x), rtol=1e-5, atol=1e-6)

    with pytest.raises(FileExistsError):
        clf.save_classifier(path, params, meta)
    with pytest.raises(ValueError, match="may not set"):
        clf.save_classifier(tmp_path / "other", params, dict(num_params=1))
    replaced = clf.save_classifier(path, params, dict(test_accuracy=0.7), overwrite=True)
    assert clf.load_classifier(path)[1]["test_accuracy"] == 0.7
    assert replaced["arrays_sha256"] == manifest["arrays_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]  # no temporary folders left


def _damage(path: pathlib.Path, how: str) -> None:
    if how == "no_manifest":
        (path / "manifest.json").unlink()
    elif how == "bad_json":
        (path / "manifest.json").write_text("{not json")
    elif how == "no_params":
        import shutil

        shutil.rmtree(path / "params")
    elif how == "flipped_byte":
        biggest = max(
            (p for p in (path / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
        )
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        biggest.write_bytes(bytes(data))
    elif how == "truncated":
        biggest = max(
            (p for p in (path / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
        )
        biggest.write_bytes(biggest.read_bytes()[:1000])
    elif how == "wrong_architecture":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["architecture"]["hidden"] = 64
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif how == "wrong_kind":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["kind"] = "backbone"
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "how, message",
    [
        ("no_manifest", "no manifest.json"),
        ("bad_json", "corrupt manifest"),
        ("no_params", "missing parameter folder"),
        ("flipped_byte", "sha256"),
        ("truncated", "sha256"),
        ("wrong_architecture", "cannot restore|expected"),
        ("wrong_kind", "not a classifier manifest"),
    ],
)
def test_corrupt_folder_errors(params, tmp_path, how, message):
    path = tmp_path / "clf"
    clf.save_classifier(path, params, dict(test_accuracy=0.5))
    _damage(path, how)
    with pytest.raises(clf.ClassifierError, match=message):
        clf.load_classifier(path)


def test_missing_folder_error(tmp_path):
    with pytest.raises(clf.ClassifierError, match="no such classifier folder.*--out"):
        clf.load_classifier(tmp_path / "nowhere")


def test_reference_stats_cache(params, tmp_path):
    extractor = feat.FeatureExtractor(params, batch_size=16)
    x = _images(40)
    cache = tmp_path / "ref.npz"
    calls = []

    def loader():
        calls.append(1)
        return x

    first = feat.reference_stats(extractor, cache, loader, source="uniform/40")
    assert calls == [1] and cache.exists()
    assert first.n == 40 and first.classifier_sha256 == extractor.sha256
    mu, sigma = fid_lib.feature_stats(extractor(x))
    np.testing.assert_array_equal(first.mu, mu)
    np.testing.assert_array_equal(first.sigma, sigma)

    again = feat.reference_stats(extractor, cache, loader, source="uniform/40")
    assert calls == [1]  # served from the cache without loading the images
    np.testing.assert_array_equal(again.sigma, first.sigma)
    assert feat.reference_stats(extractor, cache, x, source="uniform/40").n == 40

    feat.reference_stats(extractor, cache, loader, source="another set")
    assert calls == [1, 1]  # another source: recomputed

    other = feat.FeatureExtractor(clf.init_params(clf.Arch(), seed=1), batch_size=16)
    recomputed = feat.reference_stats(other, cache, loader, source="another set")
    assert calls == [1, 1, 1]  # another classifier: recomputed
    assert recomputed.classifier_sha256 == other.sha256 != extractor.sha256
    assert feat.ReferenceStats.load(cache).classifier_sha256 == other.sha256


# ---------------------------------------------------------------------------------------------
# The shipped classifier.


def test_shipped_classifier_manifest():
    """Never skipped: the folder is part of the repository."""
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["test_accuracy"] >= 0.89
    assert manifest["data"]["dataset"] == "fashion_mnist"
    assert manifest["data"]["num_train"] == 60_000 and manifest["data"]["num_test"] == 10_000
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024
    params, loaded = clf.load_classifier(SHIPPED)  # sha256 and structure checks
    assert loaded == manifest and clf.num_params(params) == manifest["num_params"]


def test_shipped_classifier_on_real_test_images():
    images, labels = idx.bundled_fashion_mnist_arrays("test")  # ships with the package
    from aid_jax.data.sources import pad_images

    x = to_model_range(pad_images(images[:200, :, :, None], 32))
    params, _ = clf.load_classifier(SHIPPED)
    assert clf.evaluate(params, x, labels[:200]) >= 0.85
