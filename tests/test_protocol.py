"""The evaluation protocol (issue 14, point 3): per-row keys make every row's output independent
of the batch it sits in; validation and test images never overlap; paired bootstrap intervals;
the small-N warning; PNG export."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aid_jax import methods
from aid_jax.gaussian import GaussianWorld
from aid_jax.methods import contract
from tests.test_methods import _aid_bundle, _tiny_backbone

H = W = 6

# Small options per method (the defaults are sized for real runs).
OPTIONS = {
    "unguided": dict(num_steps=3),
    "replacement": dict(num_steps=3),
    "repaint": dict(num_steps=4, jump_length=2, jump_n_sample=2),
    "dps": dict(num_steps=3),
    "pigdm": dict(num_steps=3),
    "ddrm": dict(num_steps=3),
    "ddnm": dict(num_steps=3),
    "ddnm_plus": dict(num_steps=3),
    "vipaint": dict(num_steps=2, num_iters=2, num_mc=1, sigmas=(1.6, 0.85)),
}


@pytest.fixture(scope="module")
def world() -> GaussianWorld:
    return GaussianWorld.squared_exponential(H, W, length_scale=1.5, variance=0.25)


def _batch(b: int):
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (b, H, W, 1)).astype(np.float32)
    m = (rng.uniform(size=(b, H, W, 1)) < 0.5).astype(np.float32)
    m[:, 0, 0], m[:, -1, -1] = 1.0, 0.0  # a known and a hole pixel in every image
    return (y * m).astype(np.float32), m


def test_every_method_is_registered_here():
    assert set(OPTIONS) == {n for n, m in methods.REGISTRY.items() if m.zero_shot}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_per_row_keys_make_rows_independent_of_their_batch(world, name):
    den = world.denoiser()
    fn = methods.make_inpainter(name, lambda p, x, s: den(x, s), **OPTIONS[name])
    y, m = _batch(4)
    keys = jax.random.split(jax.random.key(5), 4)
    whole = np.asarray(fn(None, y, m, keys).x)
    # The same rows in another batch composition, and one row alone: the same outputs.
    sub = np.asarray(fn(None, y[2:], m[2:], keys[2:]).x)
    alone = np.asarray(fn(None, y[1:2], m[1:2], keys[1:2]).x)
    np.testing.assert_allclose(sub, whole[2:], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(alone, whole[1:2], rtol=1e-4, atol=2e-4)
    # One row's key changes that row only.
    keys2 = keys.at[0].set(jax.random.key(99))
    moved = np.asarray(fn(None, y, m, keys2).x)
    assert not np.allclose(moved[0], whole[0])
    np.testing.assert_allclose(moved[1:], whole[1:], rtol=1e-4, atol=2e-4)
    # With one key for the batch the method runs as before (one key, batch noise).
    one = np.asarray(fn(None, y, m, jax.random.key(5)).x)
    assert one.shape == whole.shape and np.isfinite(one).all()


def test_per_row_keys_group_rows_that_share_work(world):
    """VIPaint fits one posterior per image for its samples_per_fit rows: with per-row keys the
    group of rows runs under its first row's key."""
    den = world.denoiser()
    fn = methods.make_inpainter(
        "vipaint", lambda p, x, s: den(x, s), samples_per_fit=2, **OPTIONS["vipaint"]
    )
    y, m = _batch(2)
    y, m = np.repeat(y, 2, axis=0), np.repeat(m, 2, axis=0)  # 2 images × 2 samples
    keys = jax.random.split(jax.random.key(1), 4)
    whole = np.asarray(fn(None, y, m, keys).x)
    second = np.asarray(fn(None, y[2:], m[2:], keys[2:]).x)
    np.testing.assert_allclose(second, whole[2:], rtol=1e-4, atol=2e-4)
    assert not np.allclose(whole[2], whole[3])  # two samples of one fit differ
    with pytest.raises(ValueError, match="one key per row"):
        fn(None, y[:3], m[:3], keys[:3])


def test_aid_takes_per_row_keys():
    bparams, net = _tiny_backbone()
    fn = methods.make_inpainter("aid", checkpoint=_aid_bundle(bparams, net))
    size = net.img_resolution
    x = np.asarray(jax.random.uniform(jax.random.key(7), (3, size, size, 1), minval=-1, maxval=1))
    from aid_jax import masks

    m = masks.make_masks("center_box", 3, size, seed=0, fraction=0.5)
    keys = jax.random.split(jax.random.key(2), 3)
    whole = np.asarray(fn(fn.params, x, m, keys).x)
    alone = np.asarray(fn(fn.params, x[2:], m[2:], keys[2:]).x)
    np.testing.assert_allclose(alone, whole[2:], rtol=1e-4, atol=2e-4)


def test_key_checks():
    contract.check_key(jax.random.key(0))
    contract.check_key(jax.random.split(jax.random.key(0), 3), rows=3)
    contract.check_key(np.zeros((3, 2), np.uint32), rows=3)
    assert contract.key_rows(jax.random.key(0)) is None
    assert contract.key_rows(np.zeros(2, np.uint32)) is None
    assert contract.key_rows(jax.random.split(jax.random.key(0), 3)) == 3
    with pytest.raises(ValueError, match="one key per row"):
        contract.check_key(jax.random.split(jax.random.key(0), 3), rows=4)
    with pytest.raises(ValueError, match="one PRNG key"):
        contract.check_key(jax.random.split(jax.random.key(0), 3))


# ---------------------------------------------------------------------------------------------
# Validation and test images


def test_validation_and_test_images_never_overlap():
    from aid_jax.data import pipeline

    block = pipeline.validation_block(10_000)
    assert len(block) == pipeline.validation_size(10_000) == 2000
    np.testing.assert_array_equal(block, pipeline.validation_block(10_000))  # fixed
    test = pipeline.eval_indices(10_000, 8000, seed=3, subset="test")
    val = pipeline.eval_indices(10_000, 2000, seed=3, subset="validation")
    assert len(set(test)) == 8000 and not set(test) & set(block)
    assert set(val) == set(block.tolist())
    # Prefixes: the first k of a larger draw are the draw of size k; seeds reorder.
    np.testing.assert_array_equal(pipeline.eval_indices(10_000, 10, 3, "test"), test[:10])
    assert not np.array_equal(pipeline.eval_indices(10_000, 10, 4, "test"), test[:10])
    # "all" is the whole split, as before the split existed.
    perm = np.random.default_rng([0, pipeline._EVAL_TAG, 1]).permutation(100)[:7]
    np.testing.assert_array_equal(pipeline.eval_indices(100, 7, 0), perm)
    with pytest.raises(ValueError, match="out of 2000 validation images"):
        pipeline.eval_indices(10_000, 2001, 0, "validation")
    with pytest.raises(ValueError, match="subset must be one of"):
        pipeline.eval_indices(10_000, 5, 0, "train")


# ---------------------------------------------------------------------------------------------
# Paired bootstrap


def test_paired_bootstrap_against_hand_cases():
    from aid_jax import report

    rng = np.random.default_rng(0)
    b = rng.normal(size=500)
    d = report.paired_bootstrap(b + 0.25, b)  # a constant difference: no spread at all
    assert d["mean"] == pytest.approx(0.25) and d["lo"] == pytest.approx(0.25)
    assert d["hi"] == pytest.approx(0.25) and d["n"] == 500
    # Correlated methods: the paired interval is much narrower than the separate ones, and
    # ranks a small true difference that the separate intervals cannot.
    a = b + 0.05 + 0.02 * rng.normal(size=500)
    d = report.paired_bootstrap(a, b, num_resamples=2000, seed=1)
    ca, cb = report.bootstrap_ci(a), report.bootstrap_ci(b)
    assert d["lo"] > 0 and ca["lo"] < cb["hi"]
    assert (d["hi"] - d["lo"]) < 0.1 * (ca["hi"] - ca["lo"])
    # Its interval equals the percentile bootstrap of the differences, computed by hand.
    idx = np.random.default_rng(1).integers(0, 500, size=(2000, 500))
    lo, hi = np.quantile((a - b)[idx].mean(axis=1), [0.025, 0.975])
    assert (d["lo"], d["hi"]) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="same images"):
        report.paired_bootstrap(a, b[:-1])
    md = report.paired_matrix_markdown(["x", "y"], {"x": a, "y": b}, "lpips_hole")
    assert "★" in md and md.count("\n") == 4


def test_small_n_warning():
    from aid_jax import evaluate

    assert "rank nothing" in evaluate.small_n_warning(32)
    assert evaluate.small_n_warning(1000) == ""


# ---------------------------------------------------------------------------------------------
# The harness: per-row keys, paired tables, PNG export


def _smoke(workdir, **eval_fields):
    from aid_jax import evaluate
    from configs import eval_fashion_mnist

    config = eval_fashion_mnist.get_config("smoke")
    config.eval.update(methods="replacement,ddnm", masks="center_box", **eval_fields)
    config.methods.replacement.steps = (2,)
    return evaluate.run(config, str(workdir)), config


def test_harness_outputs_do_not_depend_on_batch_size_or_subset_size(tmp_path):
    from aid_jax import images

    big, _ = _smoke(tmp_path / "a", num_images=16, batch_size=16, export_png=True)
    small, _ = _smoke(tmp_path / "b", num_images=8, batch_size=8)
    assert big["data"]["indices"][:8] == small["data"]["indices"]
    for method, steps in (("replacement", 2), ("ddnm", 2)):
        name = f"center_box__{method}__{steps}.npz"
        xa = np.load(tmp_path / "a" / "outputs" / name)["x"]
        xb = np.load(tmp_path / "b" / "outputs" / name)["x"]
        np.testing.assert_allclose(xa[:8], xb, rtol=1e-4, atol=2e-4)
        # The PNG export: one file per image, the composite as uint8.
        folder = tmp_path / "a" / "png" / "center_box" / f"{method}_{steps}"
        files = sorted(folder.glob("*.png"))
        assert len(files) == 16
        m = np.load(tmp_path / "a" / "masks" / "center_box.npz")["masks"]
        idx = big["data"]["indices"]
        first = f"{idx[0]:06d}_0.png"
        from PIL import Image

        png = np.asarray(Image.open(folder / first))
        gt_png = np.asarray(Image.open(folder.parent / "ground_truth" / f"{idx[0]:06d}.png"))
        gt = gt_png.astype(np.float32) / 127.5 - 1  # close to the test image (uint8 rounding)
        comp = m[0] * gt + (1 - m[0]) * xa[0]
        assert np.abs(png.astype(int) - images.to_uint8(comp).astype(int)).max() <= 1
    # Paired differences: next to the means and every pair in results.json / results.md.
    paired = big["paired"]["center_box"]
    assert paired["metric"] == "psnr_hole" and len(paired["pairs"]) == 2
    rows = [r for r in big["rows"] if r["method"] in ("replacement", "ddnm")]
    deltas = [r["metrics"]["delta_psnr_hole_vs_best"]["mean"] for r in rows]
    assert max(deltas) == 0.0 and min(deltas) <= 0.0
    md = (tmp_path / "a" / "results.md").read_text()
    assert "delta_psnr_hole_vs_best" in md and "row − column" in md and "rank nothing" in md


def test_harness_resumes_finished_jobs_and_only_those(tmp_path, monkeypatch):
    from aid_jax import evaluate

    first, config = _smoke(tmp_path)
    calls = []
    original = evaluate._inpaint

    def counting(ev, programs, mask, method, steps, bar):
        calls.append((mask, method, steps))
        return original(ev, programs, mask, method, steps, bar)

    monkeypatch.setattr(evaluate, "_inpaint", counting)
    again, _ = _smoke(tmp_path)  # everything finished: nothing runs, the same numbers
    assert calls == []
    strip = lambda rs: [{k: v for k, v in r.items() if k != "metrics"} for r in rs]  # noqa: E731
    assert strip(again["rows"]) == strip(first["rows"])
    for a, b in zip(first["rows"], again["rows"], strict=True):
        assert a["metrics"].keys() == b["metrics"].keys()
        for name in a["metrics"]:
            assert a["metrics"][name] == pytest.approx(b["metrics"][name], nan_ok=True), name
    # Another option value is another job; a damaged job file is recomputed.
    jobs = tmp_path / "jobs"
    (jobs / "center_box__replacement__2.npz").write_bytes(b"damaged")
    config = config.copy_and_resolve_references()
    config.methods.ddnm.options.eta = 0.3
    evaluate.run(config, str(tmp_path))
    assert sorted(calls) == [("center_box", "ddnm", 2), ("center_box", "replacement", 2)]
