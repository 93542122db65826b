"""Measured quality of a Fashion-MNIST backbone: FID_LeNet / KID_LeNet of N samples against the
test split, next to the real-vs-real floor, plus a sample grid.

    python -m aid_jax.backbone_quality ported_weights/fashion_mnist_32 --num 10000 --steps 18
    python -m aid_jax.backbone_quality ported_weights/edm2_fashion_mnist_latent \
        --vae ported_weights/vae_fashion_mnist --num 10000 --steps 18 --bundled

A latent backbone (``--vae``, the VAE it was trained on) samples latents that the VAE decodes;
a class-conditional one is given the classes 0, 1, …, 9 in turn (balanced). With ``--vae`` the
VAE's own reconstructions of the test images are scored too (``vae_reconstruction``: FID_LeNet
against the test split, PSNR), the floor a latent model cannot beat.

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


def draw_samples(backbone, num, *, steps, batch_size, seed, space=None) -> np.ndarray:
    """``num`` samples in [-1, 1]: EDM Heun; a latent backbone's decoded by ``space`` (a
    ``latent.LatentSpace``); a class-conditional one given classes 0, 1, … in turn."""
    cfg = sampling.SamplerConfig(solver="heun", num_steps=steps)
    label_dim = int(getattr(backbone.config, "label_dim", 0) or 0)
    key = jax.random.key(seed)

    @jax.jit
    def draw(params, vae_params, latents, labels):
        def denoise_fn(x, sigma):
            return backbones.denoise(params, x, sigma, labels, config=backbone.config)

        x = sampling.sample(denoise_fn, latents, None, config=cfg).x
        return x if space is None else space.decode(vae_params, x)

    vae_params = None if space is None else space.params
    out = []
    for i in tqdm(range(0, num, batch_size), desc="sampling", unit="batch"):
        latents = jax.random.normal(jax.random.fold_in(key, i), (batch_size, *backbone.image_shape))
        labels = None
        if label_dim:
            labels = np.eye(label_dim, dtype=np.float32)[(i + np.arange(batch_size)) % label_dim]
        out.append(np.asarray(draw(backbone.params, vae_params, latents, labels)))
    return np.clip(np.concatenate(out)[:num], -1, 1)


def vae_reconstruction(space, test_images, extractor, feats_test, batch_size) -> dict:
    """The VAE's decode(encode(x)) of the test images: FID_LeNet against the test split and
    PSNR (pixels in [-1, 1], peak-to-peak 2)."""
    codec = jax.jit(lambda p, x: space.decode(p, space.encode(p, x)))
    recon = np.concatenate(
        [
            np.asarray(codec(space.params, test_images[i : i + batch_size]))
            for i in range(0, len(test_images), batch_size)
        ]
    )
    recon = np.clip(recon, -1, 1)
    mse = np.mean(np.square(recon - test_images), axis=(1, 2, 3))
    return dict(
        num_images=len(test_images),
        fid_lenet=fid_lib.fid(extractor(recon), feats_test),
        psnr=float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12)))),
    )


def evaluate(path, *, num, steps, batch_size, seed, data_dir=None, vae=None, bundled=False) -> dict:
    backbone = backbones.load_backbone(path)
    space = None
    if vae:
        from aid_jax import latent
        from aid_jax.backbones import vae_loader

        space = latent.LatentSpace.from_vae(vae_loader.load_vae(vae))
        latent.check_pipeline(backbone.image_shape, space)
    size = backbone.image_shape[0] * (1 if space is None else space.factor)
    extractor = FeatureExtractor.load()
    start = time.perf_counter()
    x = draw_samples(backbone, num, steps=steps, batch_size=batch_size, seed=seed, space=space)
    sample_seconds = time.perf_counter() - start
    test = sources.fashion_mnist("test", data_dir, pad_to=size, bundled=bundled)
    test_images = pipeline.to_model_range(test.images)
    feats_gen = extractor(x)
    feats_test = extractor(test_images)
    result = dict(
        date=datetime.date.today().isoformat(),
        num_samples=int(num),
        sampler=f"EDM Heun, {steps} steps (NFE {2 * steps - 1})"
        + ("" if space is None else ", decoded by the VAE"),
        reference="Fashion-MNIST test split (10,000 images)",
        fid_lenet=fid_lib.fid(feats_gen, feats_test),
        kid_lenet=fid_lib.kid(feats_gen, feats_test, seed=seed),
        classifier_sha256=extractor.sha256,
        sample_seconds=sample_seconds,
        seed=int(seed),
    )
    if space is not None:
        result["vae"] = str(vae)
        result["vae_reconstruction"] = vae_reconstruction(
            space, test_images, extractor, feats_test, batch_size
        )
    # Real-vs-real floor at the same N (train images vs the test split).
    train = sources.fashion_mnist("train", data_dir, pad_to=size, bundled=bundled)
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
    parser.add_argument("--vae", default=None, help="the VAE folder of a latent backbone")
    parser.add_argument(
        "--bundled",
        action="store_true",
        help="the Fashion-MNIST subset inside the package (no Debian dataset needed)",
    )
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
        vae=args.vae,
        bundled=args.bundled,
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
        if args.vae:  # the VAE's reconstruction FID beside its export-time error
            vae_path = pathlib.Path(args.vae) / "manifest.json"
            vae_manifest = json.loads(vae_path.read_text())
            vae_manifest.setdefault("quality", {})["lenet"] = dict(
                result["vae_reconstruction"],
                date=result["date"],
                classifier_sha256=result["classifier_sha256"],
            )
            vae_path.write_text(json.dumps(vae_manifest, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
