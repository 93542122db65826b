"""Classifier features for FID_LeNet / KID_LeNet, and cached reference statistics.

    extractor = FeatureExtractor.load()            # ported_weights/fashion_mnist_classifier
    feats = extractor(images)                       # float32 [N, 128]; images NHWC float32 [-1, 1]
    ref = reference_stats(extractor, "runs/ref_test.npz", load_test_images, source="fm/test")
    score = fid_from_stats(*extractor.stats(images), ref.mu, ref.sigma)

`FeatureExtractor` compiles its feature function once: every call is cut into batches of one
fixed size, the last padded, so neither ragged tails nor new N retrace. Reference statistics
carry the sha256 of the classifier that produced them, and a cache made with another classifier
(or another source) is recomputed rather than silently reused.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping

import jax
import numpy as np

from aid_jax.metrics import classifier as clf
from aid_jax.metrics import fid as fid_lib

STATS_FORMAT_VERSION = 1


class FeatureExtractor:
    """A frozen classifier's penultimate-layer features as a batched, once-compiled function."""

    def __init__(self, params, manifest: Mapping | None = None, *, batch_size: int = 500):
        """Wrap `params` (from `load_classifier`, or fresh ones in tests).

        Args:
          params: FashionCNN parameters (nested dict of arrays).
          manifest: the classifier's manifest; gives the input size and the sha256 that tags
            every statistic computed with this extractor (else the arrays' sha256 is used).
          batch_size: images per compiled call.
        """
        self.manifest = dict(manifest or {})
        if "architecture" in self.manifest:
            self.arch = clf.Arch.from_dict(self.manifest["architecture"])
            clf._check_structure(params, self.arch, "params")
        else:
            self.arch = clf.arch_from_params(params)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.sha256 = self.manifest.get("params_sha256") or clf.arrays_sha256(params)
        self.params = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), params))
        arch = self.arch
        # One jit per extractor: params are an argument (not baked-in constants) and every batch
        # has shape [batch_size, H, W, C], so this traces exactly once.
        self._fn = jax.jit(lambda p, x: clf._model(p, arch).features(x))

    @classmethod
    def load(
        cls, path: str | os.PathLike = clf.DEFAULT_PATH, *, batch_size: int = 500
    ) -> FeatureExtractor:
        """Load a classifier folder (see `classifier.load_classifier`) and wrap it."""
        params, manifest = clf.load_classifier(path)
        return cls(params, manifest, batch_size=batch_size)

    @property
    def feature_dim(self) -> int:
        return self.arch.hidden

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.arch.input_shape

    def __call__(self, images) -> np.ndarray:
        """Features float32 [N, feature_dim] of images NHWC float32 in [-1, 1]."""
        images = clf.check_images(images, self.arch)
        # Always cut batches of `batch_size` (padding a small N too) so one executable serves all.
        n = images.shape[0]
        if n == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *images.shape[1:]), np.float32)
            return clf.batched_apply(self._call, np.concatenate([images, pad]), self.batch_size)[:n]
        return clf.batched_apply(self._call, images, self.batch_size)

    def _call(self, batch: np.ndarray) -> jax.Array:
        return self._fn(self.params, batch)

    def stats(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) float64 of the features of `images` (for `fid_from_stats`)."""
        return fid_lib.feature_stats(self(images))


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of a reference image set, tagged with the classifier that made them."""

    mu: np.ndarray  # float64 [D]
    sigma: np.ndarray  # float64 [D, D], unbiased
    n: int
    classifier_sha256: str
    source: str = ""

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write an `.npz` (atomically: a temporary file renamed into place)."""
        path = pathlib.Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"{path}: reference statistics are stored as .npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(
            tmp,
            format_version=np.int64(STATS_FORMAT_VERSION),
            mu=np.asarray(self.mu, np.float64),
            sigma=np.asarray(self.sigma, np.float64),
            n=np.int64(self.n),
            classifier_sha256=np.str_(self.classifier_sha256),
            source=np.str_(self.source),
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        path = pathlib.Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format_version"]) != STATS_FORMAT_VERSION:
                    raise ValueError(f"format_version {int(z['format_version'])}")
                stats = cls(
                    mu=z["mu"],
                    sigma=z["sigma"],
                    n=int(z["n"]),
                    classifier_sha256=str(z["classifier_sha256"]),
                    source=str(z["source"]),
                )
        except FileNotFoundError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a valid reference-statistics file ({e})") from e
        d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
        if d < 1 or stats.sigma.shape != (d, d):
            raise ValueError(f"{path}: mu {stats.mu.shape} and sigma {stats.sigma.shape} mismatch")
        return stats


def compute_reference_stats(
    extractor: FeatureExtractor, images, *, source: str = ""
) -> ReferenceStats:
    """Statistics of `images` (NHWC float32 [-1, 1]) under `extractor`."""
    mu, sigma = extractor.stats(images)
    return ReferenceStats(mu, sigma, int(np.shape(images)[0]), extractor.sha256, source)


def reference_stats(
    extractor: FeatureExtractor,
    cache_path: str | os.PathLike,
    images: np.ndarray | Callable[[], np.ndarray],
    *,
    source: str = "",
) -> ReferenceStats:
    """Cached `compute_reference_stats`.

    Returns the statistics stored at `cache_path` when they were made with this extractor's
    classifier (sha256), from the same `source` label and, when `images` is an array, from the same
    number of images; otherwise computes them (calling `images` if it is a loader function, so a
    cache hit never loads the data) and rewrites the cache.
    """
    cache_path = pathlib.Path(cache_path)
    if cache_path.exists():
        try:
            cached = ReferenceStats.load(cache_path)
        except ValueError:
            cached = None  # unreadable cache: recompute and overwrite
        if (
            cached is not None
            and cached.classifier_sha256 == extractor.sha256
            and cached.source == source
            and cached.mu.shape == (extractor.feature_dim,)
            and (callable(images) or cached.n == np.shape(images)[0])
        ):
            return cached
    if callable(images):
        images = images()
    stats = compute_reference_stats(extractor, images, source=source)
    stats.save(cache_path)
    return stats
