"""Measured quality of an unconditional Fashion-MNIST backbone: FID_LeNet / KID_LeNet of N samples
against the test split, next to the real-vs-real floor, plus a sample grid.

    python -m aid_jax.backbone_quality ported_weights/fashion_mnist_32 --num 10000 --steps 18

Features come from the project's classifier (`ported_weights/fashion_mnist_classifier`; see
docs/METRICS.md); the numbers are comparable only with others made with the same classifier
(its sha256 is recorded). With `--update-manifest` the result is stored in the backbone's
manifest under `quality`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from aid_jax import backbones, images, sampling
from aid_jax.data import pipeline, sources
from aid_jax.metrics import classifier as clf
from aid_jax.metrics import fid as fid_lib
from aid_jax.metrics.features import FeatureExtractor


def draw_samples(backbone, num, *, steps, batch_size, seed) -> np.ndarray:
    cfg = sampling.SamplerConfig(solver="heun", num_steps=steps)
    draw = backbones.make_sampler(backbone.config, cfg)

    key = jax.random.key(seed)
    out = []
    for i in tqdm(range(0, num, batch_size), desc="sampling", unit="batch"):
        latents = jax.random.normal(jax.random.fold_in(key, i), (batch_size, *backbone.image_shape))
        out.append(np.asarray(draw(backbone.params, latents)))
    return np.clip(np.concatenate(out)[:num], -1, 1)


def evaluate(path, *, num, steps, batch_size, seed, data_dir=None) -> dict:
    backbone = backbones.load_backbone(path)
    extractor = FeatureExtractor.load()
    start = time.perf_counter()
    x = draw_samples(backbone, num, steps=steps, batch_size=batch_size, seed=seed)
    sample_seconds = time.perf_counter() - start
    test = sources.fashion_mnist("test", data_dir, pad_to=backbone.image_shape[0])
    test_images = pipeline.to_model_range(test.images)
    feats_gen = extractor(x)
    feats_test = extractor(test_images)
    result = dict(
        date=datetime.date.today().isoformat(),
        num_samples=int(num),
        sampler=f"EDM Heun, {steps} steps (NFE {2 * steps - 1})",
        reference="Fashion-MNIST test split (10,000 images)",
        fid_lenet=fid_lib.fid(feats_gen, feats_test),
        kid_lenet=fid_lib.kid(feats_gen, feats_test, seed=seed),
        classifier_sha256=extractor.sha256,
        sample_seconds=sample_seconds,
        seed=int(seed),
    )
    # Real-vs-real floor at the same N (train images vs the test split).
    train = sources.fashion_mnist("train", data_dir, pad_to=backbone.image_shape[0])
    idx = pipeline.eval_indices(len(train), num, seed)
    feats_real = extractor(pipeline.to_model_range(train.get(idx)[0]))
    result["floor_fid_lenet"] = fid_lib.fid(feats_real, feats_test)
    # Class balance of the samples, by the classifier's predictions (mode coverage).
    counts = np.bincount(np.asarray(clf.logits(extractor.params, x)).argmax(-1), minlength=10)
    result["class_fractions"] = (counts / counts.sum()).round(4).tolist()
    return result, x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backbone", help="ported backbone folder")
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="JSON output (default: benchmarks/results/)")
    parser.add_argument("--grid", default=None, help="PNG of the first 100 samples")
    parser.add_argument("--update-manifest", action="store_true")
    args = parser.parse_args(argv)
    result, x = evaluate(
        args.backbone,
        num=args.num,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    print(json.dumps(result, indent=1))
    out = pathlib.Path(args.out or "benchmarks/results/backbone_quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.grid:
        images.save_png(images.grid(images.to_uint8(x[:100]), ncols=10), args.grid, upscale=2)
    if args.update_manifest:
        manifest_path = pathlib.Path(args.backbone) / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["quality"] = result
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
