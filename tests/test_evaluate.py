"""The evaluation harness end to end on the smoke config (tiny random backbone, 8 devices)."""

import json

import numpy as np
import pytest
from PIL import Image

from aid_jax import evaluate, masks
from configs import eval_fashion_mnist


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval")
    config = eval_fashion_mnist.get_config("smoke")
    results = evaluate.run(config, str(workdir))
    return config, workdir, results


def _psnr(a, b, region):
    region = np.broadcast_to(region, a.shape)
    mse = ((a - b) ** 2 * region).sum(axis=(1, 2, 3)) / region.sum(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):  # an exact match is +inf dB, as in the harness
        return 10 * np.log10(4.0 / mse)


def test_rows_cover_the_plan(smoke_run):
    config, workdir, results = smoke_run
    planned = evaluate.plan(config)
    rows = [(r["mask"], r["method"], r["steps"]) for r in results["rows"]]
    method_rows = [r for r in rows if r[1] not in evaluate.REFERENCE_ROWS]
    assert method_rows == planned
    assert len(planned) == 2 * (2 + 1)  # 2 masks × (replacement 2 step counts + ddnm 1)
    on_disk = json.loads((workdir / "results.json").read_text())
    assert [(r["mask"], r["method"], r["steps"]) for r in on_disk["rows"]] == rows
    for r in results["rows"]:
        if r["method"] == "ddnm":
            assert (r["nfe"], r["nfe_backward"]) == (r["steps"], 0)
        assert r["seconds_per_image"] >= 0


def test_metrics_recomputed_from_saved_outputs(smoke_run):
    """The harness's PSNR on the hole / known pixels equals a NumPy recomputation from the saved
    outputs, the saved masks and the test images."""
    config, workdir, results = smoke_run
    from aid_jax.data import pipeline, sources

    source = sources.make_source(config.data)
    idx = pipeline.eval_indices(
        len(source), config.eval.num_images, config.eval.seed, subset=config.eval.subset
    )
    assert results["data"]["indices"] == idx.tolist()
    gt = pipeline.to_model_range(source.get(idx)[0])
    per_image = np.load(workdir / "per_image.npz")
    for mask_name in ("center_box", "half"):
        m, meta = masks.load_masks(workdir / "masks" / f"{mask_name}.npz")
        expected = masks.from_config(config.masks[mask_name], len(idx), (16, 16), seed=0)
        np.testing.assert_array_equal(m, expected)
        assert meta["kind"] == config.masks[mask_name].kind
        x = np.load(workdir / "outputs" / f"{mask_name}__replacement__3.npz")["x"]
        got = per_image[f"{mask_name}/replacement/3/psnr_hole"]
        np.testing.assert_allclose(got, _psnr(x, gt, 1 - m), rtol=1e-4)
        known = per_image[f"{mask_name}/replacement/3/psnr_known_raw"]
        np.testing.assert_allclose(known, _psnr(x, gt, m), rtol=1e-4)
        # Replacement ends with a step to σ = 0 and writes y there: exact on the known pixels.
        assert known.min() > 40.0


def test_report_files(smoke_run):
    config, workdir, _ = smoke_run
    md = (workdir / "results.md").read_text()
    assert md.count("### mask `") == 2
    assert "| replacement | 3 |" in md and "| ddnm | 2 |" in md
    with Image.open(workdir / "grid_half.png") as im:
        # columns: observed, mask, replacement, ddnm, ground truth; 4 rows; 16 px tiles, 2 px pad
        up = config.eval.png_upscale
        assert im.size == ((5 * 18 - 2) * up, (4 * 18 - 2) * up)
    assert (workdir / "grid_half.txt").read_text().strip() == (
        "columns: observed, mask, replacement, ddnm, ground truth"
    )
    with Image.open(workdir / "quality_vs_nfe.png") as im:
        assert im.format == "PNG"


def test_summary_tables_come_from_the_results(smoke_run, tmp_path):
    """benchmarks/summarize_eval.py (docs/RESULTS.md's tables): every (mask, method, steps) row of
    results.json with its mean and CI, baselines once, and runs on other images refused."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))
    import summarize_eval

    _, workdir, _ = smoke_run
    results = json.loads((workdir / "results.json").read_text())
    table, rows = summarize_eval.summarize(dict(a=results, b=results), ["psnr_hole"])
    planned = [r for r in results["rows"] if r["method"] not in ("ground truth", "observed")]
    assert len(rows) == len(planned)  # the second file adds no duplicate baseline rows
    for want, got in zip(planned, rows, strict=True):
        m = want["metrics"]["psnr_hole"]
        line = f"| {got['method']} | {want['steps']} | {want['nfe']}/{want['nfe_backward']} | "
        assert line + f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}] |" in table
    other = json.loads(json.dumps(results))
    other["data"]["indices"] = list(reversed(other["data"]["indices"]))
    with pytest.raises(SystemExit, match="do not share"):
        summarize_eval.summarize(dict(a=results, b=other), ["psnr_hole"])
    out = tmp_path / "rows.json"
    summarize_eval.main([f"a={workdir / 'results.json'}", f"--json={out}"])
    assert len(json.loads(out.read_text())["rows"]) == len(planned)


def test_same_config_same_numbers(smoke_run, tmp_path):
    config, workdir, _ = smoke_run
    config = eval_fashion_mnist.get_config("smoke")
    config.eval.methods = "ddnm"
    config.eval.masks = "half"
    evaluate.run(config, str(tmp_path))
    a = np.load(workdir / "per_image.npz")["half/ddnm/2/psnr_hole"]
    b = np.load(tmp_path / "per_image.npz")["half/ddnm/2/psnr_hole"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("eval.methods", "replacement,nope", "unknown methods 'nope'"),
        ("eval.masks", "center_box,blob", "unknown masks 'blob'"),
        ("eval.batch_size", 6, "multiple of the 8 devices"),
        ("methods.ddnm.method", "magic", "not an inpainting method"),
        ("methods.ddnm.steps", (0,), "positive ints"),
    ],
)
def test_config_errors_before_loading(tmp_path, field, value, match):
    config = eval_fashion_mnist.get_config("smoke")
    config.backbone.path = str(tmp_path / "missing.pkl")  # would fail if anything were loaded
    section, name = field.rsplit(".", 1)
    target = config
    for part in section.split("."):
        target = target[part]
    target[name] = value
    with pytest.raises(evaluate.EvaluationError, match=match):
        evaluate.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_tuned_headline_plan_checks_and_carries_the_shipped_modules():
    """configs/eval_fashion_mnist.py:tuned: every tuned baseline entry and the shipped AID and
    DEFT modules pass the harness's up-front checks (options, step counts)."""
    config = eval_fashion_mnist.get_config("tuned")
    config.eval.batch_size = 96  # a multiple of the tests' 8 fake devices
    todo = evaluate.plan(config)
    names = {method for _, method, _ in todo}
    assert {"aid_nfe10", "aid_nfe20", "deft_nfe10", "deft_small_nfe10"} <= names
    assert {"ddnm_nfe10", "pigdm_nfe10", "dps_nfe20"} <= names
    assert config.methods.aid_nfe10.options.checkpoint == "ported_weights/aid_fashion_mnist"
    assert config.methods.aid_nfe20.steps == (20,) and config.methods.aid_nfe20.family == "aid"
    assert len(todo) == 5 * len(names)  # five masks


def test_vipaint_config_errors(tmp_path):
    config = eval_fashion_mnist.get_config("smoke")
    config.eval.methods = "vipaint"
    config.methods.vipaint.options.samples_per_fit = 2
    with pytest.raises(evaluate.EvaluationError, match="set by the harness"):
        evaluate.plan(config)
    config = eval_fashion_mnist.get_config("smoke")
    config.eval.update(methods="vipaint", samples_per_image=3)
    with pytest.raises(evaluate.EvaluationError, match="samples_per_image=3"):
        evaluate.plan(config)


def test_vipaint_in_the_harness(tmp_path):
    """VIPaint through the harness on the smoke backbone: one fit per image shared by its two
    samples (NFE counts the fit per sample), diversity reported, finite outputs."""
    config = eval_fashion_mnist.get_config("smoke")
    config.eval.update(methods="vipaint", masks="center_box", samples_per_image=2, num_images=4)
    config.methods.vipaint.steps = (2,)
    config.methods.vipaint.options.update(num_iters=2, num_mc=1)
    results = evaluate.run(config, str(tmp_path))
    (row,) = [r for r in results["rows"] if r["method"] == "vipaint"]
    # fit: 2 iterations × 1 sample × (K + 1 = 3) passes per image, shared by 2 samples → 3;
    # sampling: (K − 1) + 2 + 1 forward, 2 backward.
    assert (row["nfe"], row["nfe_backward"]) == (3 + 4, 3 + 2)
    assert "diversity" in row["metrics"] and row["metrics"]["diversity"]["mean"] > 0
    assert np.isfinite(row["metrics"]["psnr_hole"]["mean"])


def test_in_domain_metrics_on_the_shipped_backbone(tmp_path, testdata):
    """FID/KID_LeNet, class accuracy, LPIPS and diversity on real Fashion-MNIST test images with the
    shipped backbone and classifier (2 samples per image, 2 DDNM steps: a plumbing check)."""
    from aid_jax.metrics import lpips

    config = eval_fashion_mnist.get_config()
    config.data = config.data.__class__(
        dict(name="npz", path=str(testdata / "fashion_mnist_test64.npz"))
    )
    config.eval.update(
        methods="ddnm",
        masks="half",
        num_images=8,
        samples_per_image=2,
        batch_size=16,
        bootstrap=50,
        save_outputs=True,
    )
    config.masks.half.side = "left"
    config.methods.ddnm.steps = (2,)
    config.metrics.update(reference_num=64, kid_subsets=5)
    results = evaluate.run(config, str(tmp_path))
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"ground truth", "observed", "ddnm"}
    # The same-N floor (ground truth vs the reference) beats the half-grey observed images.
    assert (
        rows["ground truth"]["metrics"]["fid_lenet"]["value"]
        < (rows["observed"]["metrics"]["fid_lenet"]["value"])
    )
    metrics = rows["ddnm"]["metrics"]
    for name in ("fid_lenet", "kid_lenet", "fid_lenet_raw", "class_acc", "diversity"):
        assert name in metrics, name
    assert 0.0 <= metrics["class_acc"]["mean"] <= 1.0
    assert metrics["diversity"]["mean"] > 0.0  # DDNM (η = 0.85) draws different samples
    # LPIPS on the hole equals a direct call on the saved outputs (sample 0 and 1 averaged).
    x = np.load(tmp_path / "outputs" / "half__ddnm__2.npz")["x"]
    m, _ = masks.load_masks(tmp_path / "masks" / "half.npz")
    from aid_jax.data import pipeline, sources

    source = sources.make_source(config.data)
    gt = pipeline.to_model_range(source.get(results["data"]["indices"])[0])
    net = lpips.LPIPS.load("alex")
    direct = net(x, np.repeat(gt, 2, 0), region=np.repeat(1 - m, 2, 0)).reshape(8, 2).mean(1)
    per_image = np.load(tmp_path / "per_image.npz")["half/ddnm/2/lpips_hole"].reshape(8, 2)
    np.testing.assert_allclose(per_image.mean(1), direct, rtol=1e-5)
