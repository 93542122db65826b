"""FID_LeNet / KID_LeNet floor: real-vs-real noise floor and corrupted references.

    python benchmarks/fid_floor.py            # needs ported_weights/fashion_mnist_classifier

Features: the shipped Fashion-MNIST classifier's 128-d penultimate layer (`FeatureExtractor`).
Images: Fashion-MNIST padded to 32×32 with the black background, in [-1, 1]. The reference set
is 10k train images (seeded); rows compare test-derived sets against it (and two same-split
floors). KID: cubic polynomial kernel, 100 subsets of min(1000, N). Prints a Markdown table and
writes JSON (machine, date, classifier sha256, seeds) to benchmarks/results/fid_floor.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import scipy.ndimage

from aid_jax import provenance
from aid_jax.data.pipeline import to_model_range
from aid_jax.metrics import classifier as clf
from aid_jax.metrics import fid as fid_lib
from aid_jax.metrics.features import FeatureExtractor

HOLE = 12  # centre hole side (pixels of the 32×32 image)
NOISE_SIGMA = 0.2  # in [-1, 1] units, then clipped to [-1, 1]


def centre_hole(x: np.ndarray, size: int = HOLE) -> np.ndarray:
    """Fill the centre size×size square with the background (-1, black)."""
    out = x.copy()
    top = (x.shape[1] - size) // 2
    left = (x.shape[2] - size) // 2
    out[:, top : top + size, left : left + size, :] = -1.0
    return out


def gaussian_noise(x: np.ndarray, sigma: float = NOISE_SIGMA, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    return np.clip(x + np.float32(sigma) * noise, -1.0, 1.0)


def box_blur(x: np.ndarray, size: int = 3) -> np.ndarray:
    """size×size box filter per image (edge pixels repeated at the border)."""
    return scipy.ndimage.uniform_filter(x, size=(1, size, size, 1), mode="nearest")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", default=clf.DEFAULT_PATH)
    parser.add_argument("--num-ref", type=int, default=10_000)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/fid_floor.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    extractor = FeatureExtractor.load(args.classifier, batch_size=500)
    manifest = extractor.manifest
    train_u8, _ = clf.fashion_mnist_model_arrays("train")
    test_u8, test_labels = clf.fashion_mnist_model_arrays("test")
    rng = np.random.default_rng(args.seed)
    train_perm = rng.permutation(len(train_u8))
    test_perm = rng.permutation(len(test_u8))
    n = args.num_ref

    ref_idx, ref2_idx = train_perm[:n], train_perm[n : 2 * n]
    ref_feat = extractor(to_model_range(train_u8[ref_idx]))
    test = to_model_range(test_u8)
    test_feat = extractor(test)
    half = len(test) // 2
    sets = {
        "real test (10k) vs train": (test_feat, ref_feat, test),
        "real train, disjoint 10k vs train": (
            extractor(to_model_range(train_u8[ref2_idx])),
            ref_feat,
            None,
        ),
        "real test half A (5k) vs half B (5k)": (
            test_feat[test_perm[:half]],
            test_feat[test_perm[half:]],
            None,
        ),
    }
    corruptions = {
        f"test, {HOLE}x{HOLE} centre hole filled with background": centre_hole(test),
        f"test + Gaussian noise sigma={NOISE_SIGMA} (clipped)": gaussian_noise(
            test, seed=args.seed
        ),
        "test after 3x3 box blur": box_blur(test),
    }
    for name, images in corruptions.items():
        sets[f"{name} vs train"] = (extractor(images), ref_feat, images)
    print(f"features in {time.perf_counter() - start:.1f} s", flush=True)

    rows = []
    for name, (fa, fb, images) in sets.items():
        t0 = time.perf_counter()
        fid = fid_lib.fid(fa, fb)
        kid_mean, kid_std = fid_lib.kid(
            fa, fb, args.kid_subsets, args.kid_subset_size, seed=args.seed
        )
        acc = None
        if images is not None:
            acc = clf.evaluate(extractor.params, images, test_labels)
        rows.append(
            dict(
                name=name,
                n_a=int(len(fa)),
                n_b=int(len(fb)),
                fid=fid,
                kid_mean=kid_mean,
                kid_std=kid_std,
                kid_subset_size=int(min(args.kid_subset_size, len(fa), len(fb))),
                classifier_accuracy=acc,
                seconds=time.perf_counter() - t0,
            )
        )
        r = rows[-1]
        print(
            f"{name:60s} FID {fid:8.3f}  KID {kid_mean:9.4f} ± {kid_std:.4f}"
            + (f"  acc {acc:.4f}" if acc is not None else ""),
            flush=True,
        )

    # Small-N floors: spread over disjoint 1k chunks (the FID bias grows as N shrinks).
    k = 1000
    chunks = len(test) // k
    test_chunks = [test_feat[test_perm[i * k : (i + 1) * k]] for i in range(chunks)]
    ref_chunks = [ref_feat[i * k : (i + 1) * k] for i in range(n // k)]
    repeated = {
        f"real test 1k vs train 1k ({min(chunks, len(ref_chunks))} disjoint pairs)": list(
            zip(test_chunks, ref_chunks, strict=False)
        ),
        f"real test 1k vs train {n // 1000}k ({chunks} disjoint test chunks)": [
            (c, ref_feat) for c in test_chunks
        ],
    }
    for name, pairs in repeated.items():
        t0 = time.perf_counter()
        fids = [fid_lib.fid(a, b) for a, b in pairs]
        kids = [
            fid_lib.kid(a, b, args.kid_subsets, args.kid_subset_size, seed=args.seed)[0]
            for a, b in pairs
        ]
        rows.append(
            dict(
                name=name,
                n_a=k,
                n_b=int(len(pairs[0][1])),
                fid=float(np.mean(fids)),
                fid_std_over_repeats=float(np.std(fids)),
                kid_mean=float(np.mean(kids)),
                kid_std=float(np.std(kids)),
                kid_std_is="std over the repeats (each KID a mean over its subsets)",
                kid_subset_size=int(min(args.kid_subset_size, k)),
                repeats=len(pairs),
                classifier_accuracy=None,
                seconds=time.perf_counter() - t0,
            )
        )
        print(
            f"{name:60s} FID {np.mean(fids):8.3f} ± {np.std(fids):.3f}  "
            f"KID {np.mean(kids):9.4f} ± {np.std(kids):.4f}",
            flush=True,
        )

    result = dict(
        benchmark="fid_floor",
        **provenance.stamp(),
        classifier=dict(
            path=str(args.classifier),
            params_sha256=manifest["params_sha256"],
            test_accuracy=manifest["test_accuracy"],
        ),
        protocol=dict(
            reference=f"{n} Fashion-MNIST train images, rng(seed).permutation(60000)[:{n}]",
            preprocessing="pad 28->32 with 0 (black), x / 127.5 - 1",
            features="classifier dense1 ReLU, 128-d",
            fid="unbiased covariances, scipy.linalg.sqrtm float64",
            kid=f"(x.y/d + 1)^3, {args.kid_subsets} subsets of min({args.kid_subset_size}, N), "
            "mean ± population std over subsets",
            hole=f"centre {HOLE}x{HOLE} set to -1 (background)",
            noise=f"x + {NOISE_SIGMA} N(0, 1) in [-1, 1] units, clipped to [-1, 1]",
            blur="3x3 box filter (scipy.ndimage.uniform_filter, mode='nearest')",
            seed=args.seed,
        ),
        rows=rows,
        seconds=time.perf_counter() - start,
    )
    print()
    print(
        "| set A vs set B | N_A | N_B | FID_LeNet | KID_LeNet (mean ± std) | classifier acc on A |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        acc = "" if r["classifier_accuracy"] is None else f"{r['classifier_accuracy']:.4f}"
        fid_text = f"{r['fid']:.3f}"
        if "fid_std_over_repeats" in r:
            fid_text += f" ± {r['fid_std_over_repeats']:.3f}"
        print(
            f"| {r['name']} | {r['n_a']} | {r['n_b']} | {fid_text} | "
            f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f} | {acc} |"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} in {result['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
