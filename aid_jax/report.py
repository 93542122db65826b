"""Reporting for evaluation runs: bootstrap confidence intervals, Markdown tables, image grids and
the quality-vs-NFE plot. Pure NumPy / matplotlib on the host; nothing here touches JAX.

Conventions: a *row* of results is a dict with the keys ``mask``, ``method``, ``steps``, ``nfe``,
``nfe_backward``, ``seconds_per_image`` and ``metrics`` (metric name -> {"mean", "lo", "hi"} for
per-image metrics with a 95% CI, or {"value"[, "std"]} for set-level metrics such as FID/KID).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

# The image-grid helpers live in aid_jax.images (the trainers use them too); re-exported here.
from aid_jax.images import comparison_grid as comparison_grid
from aid_jax.images import mask_as_image as mask_as_image
from aid_jax.images import observed_view as observed_view

# Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = ("lpips", "fid", "kid", "rmse", "w2", "seconds")


def bootstrap_ci(
    values, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of per-image ``values`` and its percentile-bootstrap confidence interval.

    Resamples the images with replacement ``num_resamples`` times (seeded: the same values give
    the same interval). Non-finite values (e.g. PSNR = inf for a perfect image) are kept: a mean
    that is infinite is reported as such rather than silently dropped.

    Returns:
        {"mean", "lo", "hi", "n"}; lo = hi = mean for a single value.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = float(v.mean())
    if v.size == 1 or num_resamples < 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": int(v.size)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(num_resamples, v.size))
    alpha = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):  # infinite values: the interval is infinite too
        means = v[idx].mean(axis=1)
        lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def paired_bootstrap(
    a, b, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of the per-image difference ``a − b`` of two methods on the same images (same masks
    and noise) and its percentile-bootstrap interval: the images are resampled together, so the
    interval is that of the difference, far narrower than two separate intervals when the
    methods' errors are correlated across images.

    Returns:
        {"mean", "lo", "hi", "n"} of a − b; an interval excluding 0 means the ranking holds at
        this level.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images: {a.size} values against {b.size}")
    return bootstrap_ci(a - b, num_resamples=num_resamples, level=level, seed=seed)


def paired_matrix_markdown(
    names: Sequence[str], values: Mapping[str, np.ndarray], metric: str, **bootstrap
) -> str:
    """A Markdown matrix of paired differences ``row − column`` of ``metric`` (mean [95% CI]);
    ★ marks an interval that excludes 0 (the row is ranked above or below the column)."""
    digits = _digits(metric)
    lines = [
        "| " + " | ".join([f"{metric}: row − column", *names]) + " |",
        "|---|" + "|".join(["---:"] * len(names)) + "|",
    ]
    for r in names:
        cells = []
        for c in names:
            if r == c:
                cells.append("")
                continue
            d = paired_bootstrap(values[r], values[c], **bootstrap)
            star = " ★" if d["lo"] > 0 or d["hi"] < 0 else ""
            cells.append(format_metric(d, digits) + star)
        lines.append("| " + " | ".join([r, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def format_metric(entry: Mapping | None, digits: int = 3) -> str:
    """'mean [lo, hi]' for per-image metrics, 'value ± std' / 'value' for set-level ones."""
    if entry is None:
        return "—"
    if "mean" in entry:
        if entry.get("lo") == entry.get("hi"):
            return _fmt(entry["mean"], digits)
        lo, hi = _fmt(entry["lo"], digits), _fmt(entry["hi"], digits)
        return f"{_fmt(entry['mean'], digits)} [{lo}, {hi}]"
    if "std" in entry:
        return f"{_fmt(entry['value'], digits)} ± {_fmt(entry['std'], digits)}"
    return _fmt(entry["value"], digits)


def _digits(name: str) -> int:
    return 2 if name.startswith(("psnr", "fid", "kid")) else 3


def markdown_table(rows: Sequence[Mapping], metric_names: Sequence[str], title: str = "") -> str:
    """One Markdown table: a line per row (method × steps), columns NFE, time and the metrics."""
    arrows = {m: ("↓" if m.startswith(LOWER_IS_BETTER) else "↑") for m in metric_names}
    head = ["method", "steps", "NFE fwd/bwd", "s / image"] + [
        f"{m} {arrows[m]}" for m in metric_names
    ]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        cells = [
            str(r["method"]),
            str(r["steps"]),
            f"{r['nfe']}/{r['nfe_backward']}",
            _fmt(r.get("seconds_per_image", float("nan")), 4),
        ]
        cells += [format_metric(r["metrics"].get(m), _digits(m)) for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def quality_vs_nfe_plot(
    rows: Sequence[Mapping], metric: str, path: str | os.PathLike, title: str = ""
) -> pathlib.Path:
    """One panel per mask: ``metric`` (mean with its CI as error bars) against the total number
    of network passes per image (forward + backward), log x axis, one line per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    masks = list(dict.fromkeys(r["mask"] for r in rows))
    # One line per method family (entries of one method at several budgets share a line).
    rows = [{**r, "method": r.get("family", r["method"])} for r in rows]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        1, len(masks), figsize=(4.2 * len(masks), 3.6), squeeze=False, constrained_layout=True
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mask in zip(axes[0], masks, strict=True):
        for j, method in enumerate(methods):
            pts = sorted(  # by NFE alone: entries of one family may share an NFE
                (
                    (r["nfe"] + r["nfe_backward"], r["metrics"][metric])
                    for r in rows
                    if r["mask"] == mask and r["method"] == method and metric in r["metrics"]
                ),
                key=lambda p: p[0],
            )
            if not pts:
                continue
            x = [p[0] for p in pts]
            mean = np.array([p[1].get("mean", p[1].get("value")) for p in pts])
            lo = np.array([p[1].get("lo", p[1].get("mean", p[1].get("value"))) for p in pts])
            hi = np.array([p[1].get("hi", p[1].get("mean", p[1].get("value"))) for p in pts])
            ax.errorbar(
                x,
                mean,
                yerr=[mean - lo, hi - mean],
                marker="o",
                ms=4,
                capsize=2,
                label=method,
                color=colors[j % len(colors)],
            )
        ax.set_xscale("log")
        ax.set_xlabel("network passes per image (forward + backward)")
        arrow = "lower is better" if metric.startswith(LOWER_IS_BETTER) else "higher is better"
        ax.set_ylabel(f"{metric} ({arrow})")
        ax.set_title(mask)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
