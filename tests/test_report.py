"""Reporting helpers: bootstrap CIs, Markdown tables, comparison grids, the quality-vs-NFE plot."""

import numpy as np
import pytest
from PIL import Image

from aid_jax import images, report


def test_bootstrap_ci_matches_normal_theory():
    # For the mean of n iid values the bootstrap percentile CI approaches mean ± 1.96·s/√n.
    v = np.random.default_rng(0).normal(3.0, 2.0, size=2000)
    ci = report.bootstrap_ci(v, num_resamples=4000, seed=1)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert ci["mean"] == pytest.approx(v.mean(), abs=1e-12)
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert ci["hi"] - ci["lo"] == pytest.approx(2 * half, rel=0.08)
    assert (ci["lo"] + ci["hi"]) / 2 == pytest.approx(v.mean(), abs=0.1 * half)
    assert ci["n"] == 2000


def test_bootstrap_ci_seeded_and_degenerate():
    v = np.arange(10.0)
    assert report.bootstrap_ci(v, seed=3) == report.bootstrap_ci(v, seed=3)
    assert report.bootstrap_ci(v, seed=3) != report.bootstrap_ci(v, seed=4)
    assert report.bootstrap_ci([2.5]) == {"mean": 2.5, "lo": 2.5, "hi": 2.5, "n": 1}
    assert report.bootstrap_ci(np.full(7, 1.25))["lo"] == 1.25
    with pytest.raises(ValueError, match="at least one"):
        report.bootstrap_ci([])
    inf = report.bootstrap_ci([1.0, np.inf])  # a perfect image (PSNR = inf) is not dropped
    assert inf["mean"] == np.inf


def test_markdown_table_cells():
    rows = [
        {
            "method": "ddnm",
            "steps": 50,
            "nfe": 50,
            "nfe_backward": 0,
            "seconds_per_image": 0.01234,
            "metrics": {
                "psnr_hole": {"mean": 20.0, "lo": 19.5, "hi": 20.5},
                "kid_lenet": {"value": 1.234, "std": 0.2},
            },
        }
    ]
    md = report.markdown_table(rows, ["psnr_hole", "kid_lenet", "lpips_hole"], title="box")
    lines = md.strip().splitlines()
    assert lines[0] == "### box"
    assert "psnr_hole ↑" in lines[2] and "kid_lenet ↓" in lines[2] and "lpips_hole ↓" in lines[2]
    assert lines[-1] == ("| ddnm | 50 | 50/0 | 0.0123 | 20.00 [19.50, 20.50] | 1.23 ± 0.20 | — |")


def test_comparison_grid_layout():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 4, 5, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (3, 4, 5, 3)).astype(np.float32)
    g, names = report.comparison_grid([("a", a), ("b", b)], pad=1)
    assert names == ["a", "b"]
    assert g.shape == (3 * 5 - 1, 2 * 6 - 1, 3)
    # Row i, column j holds image i of column j (grayscale repeated to RGB).
    np.testing.assert_array_equal(g[5:9, 0:5], np.repeat(images.to_uint8(a[1]), 3, -1))
    np.testing.assert_array_equal(g[10:14, 6:11], images.to_uint8(b[2]))
    with pytest.raises(ValueError, match="column 'b'"):
        report.comparison_grid([("a", a), ("b", b[:2])])


def test_observed_view_and_mask_image():
    y = np.ones((1, 2, 2, 1), np.float32)
    m = np.array([1, 0, 0, 1], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(report.observed_view(y, m).ravel(), [1, 0, 0, 1])
    np.testing.assert_array_equal(report.mask_as_image(m).ravel(), [1, -1, -1, 1])


def test_quality_vs_nfe_plot_writes_png(tmp_path):
    rows = [
        {
            "mask": mask,
            "method": meth,
            "steps": s,
            "nfe": s,
            "nfe_backward": s if meth == "dps" else 0,
            "metrics": {"psnr_hole": {"mean": 10.0 + s / 10, "lo": 9.0, "hi": 30.0}},
        }
        for mask in ("box", "half")
        for meth in ("ddnm", "dps")
        for s in (10, 20, 50)
    ]
    path = report.quality_vs_nfe_plot(rows, "psnr_hole", tmp_path / "q.png", title="t")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 2 * im.height * 0.9  # two panels side by side
    # Entries of one family at the same NFE (e.g. deployment options of one module) plot too.
    same = [
        dict(r, method=f"aid_{i}", family="aid", steps=10, nfe=10, nfe_backward=0)
        for i, r in enumerate(rows[:3])
    ]
    assert report.quality_vs_nfe_plot(same, "psnr_hole", tmp_path / "s.png", title="t").exists()
