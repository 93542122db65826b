"""A small Fashion-MNIST CNN whose penultimate layer gives the "FID_LeNet" / "KID_LeNet" features.

    python -m aid_jax.metrics.classifier --out ported_weights/fashion_mnist_classifier --epochs 3

LeNet-style: Conv5x5(32)-ReLU-MaxPool2 - Conv5x5(64)-ReLU-MaxPool2 - Dense(128)-ReLU - Dense(10),
VALID convolutions, on 32×32×1 NHWC float32 images in [-1, 1] (Fashion-MNIST padded 28 -> 32 with
the black background, then x / 127.5 - 1). 258k parameters, about 1 MB on disk.

The network is a Flax NNX module; everything outside this file sees its parameters as a plain
nested dict of arrays (`{'conv1': {'kernel', 'bias'}, 'conv2': …, 'dense1': …, 'dense2': …}`), and
`features(params, images)` / `logits(params, images)` are pure, jitted and batched.

A saved classifier is a folder holding `params/` (Orbax PyTree checkpoint) and `manifest.json`
(architecture, training config, data, epochs, test accuracy, sha256 of the `params/` files, date);
`load_classifier` checks all of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aid_jax import checkpoint, provenance
from aid_jax.data.pipeline import to_model_range

MANIFEST = "manifest.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1
KIND = "aid_jax.metrics.classifier"
DEFAULT_PATH = "ported_weights/fashion_mnist_classifier"
# Keys the manifest always holds; `meta` passed to `save_classifier` may not override them.
_RESERVED = ("format_version", "kind", "architecture", "num_params", "params_sha256", "date")


class ClassifierError(ValueError):
    """A missing, corrupt or inconsistent classifier folder; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Arch:
    """The classifier's static architecture (hashable: it is a static argument of the jits)."""

    image_size: int = 32
    in_channels: int = 1
    conv_features: tuple[int, int] = (32, 64)
    kernel_size: int = 5
    hidden: int = 128
    num_classes: int = 10

    def __post_init__(self):
        object.__setattr__(self, "conv_features", tuple(int(c) for c in self.conv_features))
        if len(self.conv_features) != 2:
            raise ValueError(f"conv_features must hold 2 widths, got {self.conv_features}")
        if self.spatial_out < 1:
            raise ValueError(f"image_size {self.image_size} is too small for this network")

    @property
    def spatial_out(self) -> int:
        s = self.image_size
        for _ in self.conv_features:
            s = (s - self.kernel_size + 1) // 2  # VALID conv, then 2x2 max-pool
        return s

    @property
    def flat_dim(self) -> int:
        return self.spatial_out**2 * self.conv_features[-1]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.in_channels)

    def to_dict(self) -> dict:
        return dict(
            name="FashionCNN",
            image_size=self.image_size,
            in_channels=self.in_channels,
            conv_features=list(self.conv_features),
            kernel_size=self.kernel_size,
            padding="VALID",
            pool="max 2x2",
            hidden=self.hidden,
            num_classes=self.num_classes,
            feature_layer="dense1 (ReLU)",
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> Arch:
        if d.get("name") != "FashionCNN":
            raise ValueError(f"architecture name {d.get('name')!r}, expected 'FashionCNN'")
        return cls(
            image_size=int(d["image_size"]),
            in_channels=int(d["in_channels"]),
            conv_features=tuple(d["conv_features"]),
            kernel_size=int(d["kernel_size"]),
            hidden=int(d["hidden"]),
            num_classes=int(d["num_classes"]),
        )


class FashionCNN(nnx.Module):
    """Conv32-pool-Conv64-pool-Dense128-Dense10 (NHWC)."""

    def __init__(self, arch: Arch, *, rngs: nnx.Rngs):
        c1, c2 = arch.conv_features
        k = (arch.kernel_size, arch.kernel_size)
        self.conv1 = nnx.Conv(arch.in_channels, c1, k, padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, k, padding="VALID", rngs=rngs)
        self.dense1 = nnx.Linear(arch.flat_dim, arch.hidden, rngs=rngs)
        self.dense2 = nnx.Linear(arch.hidden, arch.num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The 128-d penultimate activations (after ReLU)."""
        for conv in (self.conv1, self.conv2):
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nnx.relu(self.dense1(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense2(self.features(x))


# ---------------------------------------------------------------------------------------------
# Parameters as plain pytrees.


def init_params(arch: Arch = Arch(), seed: int = 0) -> dict:
    """Fresh parameters (NumPy nested dict) of `arch`."""
    model = FashionCNN(arch, rngs=nnx.Rngs(seed))
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def param_shapes(arch: Arch) -> dict:
    """Nested dict of `jax.ShapeDtypeStruct` of the parameters of `arch` (nothing allocated)."""
    abstract = nnx.eval_shape(lambda: FashionCNN(arch, rngs=nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), shapes)


def num_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(params)))


def arch_from_params(params: Mapping, image_size: int = 32) -> Arch:
    """The architecture a parameter dict belongs to (checked exactly against `param_shapes`)."""
    try:
        k1, k2 = params["conv1"]["kernel"].shape, params["conv2"]["kernel"].shape
        hidden, num_classes = params["dense2"]["kernel"].shape
        arch = Arch(
            image_size=image_size,
            in_channels=k1[2],
            conv_features=(k1[3], k2[3]),
            kernel_size=k1[0],
            hidden=hidden,
            num_classes=num_classes,
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ClassifierError(
            f"not FashionCNN parameters ({type(e).__name__}: {e}); expected keys conv1, conv2, "
            "dense1, dense2 with kernel/bias"
        ) from None
    _check_structure(params, arch, "params")
    return arch


def _check_structure(params, arch: Arch, source) -> None:
    expected = {
        jax.tree_util.keystr(p): (tuple(v.shape), np.dtype(v.dtype))
        for p, v in jax.tree_util.tree_leaves_with_path(param_shapes(arch))
    }
    try:
        found = {
            jax.tree_util.keystr(p): (tuple(np.shape(v)), np.dtype(v.dtype))
            for p, v in jax.tree_util.tree_leaves_with_path(params)
        }
    except (AttributeError, TypeError) as e:
        raise ClassifierError(f"{source}: not a pytree of arrays ({e})") from None
    for key in sorted(expected.keys() | found.keys()):
        if expected.get(key) != found.get(key):
            raise ClassifierError(
                f"{source}: parameter {key} is {found.get(key, 'missing')}, expected "
                f"{expected.get(key, 'absent')} for {arch}"
            )


def _model(params, arch: Arch) -> FashionCNN:
    """Rebuild the NNX module around `params` (called at trace time inside the jits)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: FashionCNN(arch, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnames=("arch",))
def _features_batch(params, images, arch: Arch):
    return _model(params, arch).features(images)


@functools.partial(jax.jit, static_argnames=("arch",))
def _logits_batch(params, images, arch: Arch):
    return _model(params, arch)(images)


def check_images(images, arch: Arch) -> np.ndarray:
    """Images as float32 NHWC of the architecture's input shape; uint8 is refused (not [-1, 1])."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        raise TypeError(
            "images are uint8; the classifier takes float32 in [-1, 1] "
            "(aid_jax.data.pipeline.to_model_range)"
        )
    if images.ndim != 4 or images.shape[1:] != arch.input_shape:
        raise ValueError(
            f"images must be [N, {', '.join(map(str, arch.input_shape))}] NHWC, got {images.shape}"
        )
    return images.astype(np.float32, copy=False)


def batched_apply(fn: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply `fn` to fixed-size batches (the last one padded), so `fn` compiles once per size."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images")
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            pad = np.zeros((batch_size - valid, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        out.append(np.asarray(fn(batch))[:valid])
    return np.concatenate(out)


def _image_size(images) -> int:
    shape = np.shape(images)
    return shape[1] if len(shape) == 4 else 32  # a wrong rank is reported by check_images


def features(params, images, *, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features float32 [N, 128] of NHWC float32 images in [-1, 1]."""
    arch = arch_from_params(params, image_size=_image_size(images))
    images = check_images(images, arch)
    return batched_apply(lambda b: _features_batch(params, b, arch), images, batch_size)


def logits(params, images, *, batch_size: int = 1000) -> np.ndarray:
    """Class logits float32 [N, num_classes] of NHWC float32 images in [-1, 1]."""
    arch = arch_from_params(params, image_size=_image_size(images))
    images = check_images(images, arch)
    return batched_apply(lambda b: _logits_batch(params, b, arch), images, batch_size)


def evaluate(params, images, labels, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy on (images float32 [-1, 1] NHWC, integer labels)."""
    labels = np.asarray(labels)
    pred = logits(params, images, batch_size=batch_size).argmax(axis=-1)
    if pred.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} do not match {pred.shape[0]} images")
    return float((pred == labels).mean())


# ---------------------------------------------------------------------------------------------
# Training.


def _as_model_range(batch: np.ndarray) -> np.ndarray:
    return to_model_range(batch) if batch.dtype == np.uint8 else batch.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _train_step(arch: Arch, learning_rate: float):
    """(optimizer, jitted Adam step); cached so repeated trainings in one process compile once."""
    optimizer = optax.adam(learning_rate)

    def loss_fn(p, x, y):
        out = _model(p, arch)(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, (out.argmax(-1) == y).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, state, x, y):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
        # optax's bias correction raises a float to an int32 count: it needs standard promotion
        # (the tests run under jax_numpy_dtype_promotion='strict').
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss, acc

    return optimizer, step


def train_classifier(
    train_images,
    train_labels,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    learning_rate: float = 1e-3,
    arch: Arch | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train with Adam on softmax cross-entropy; returns the parameters (NumPy nested dict).

    Args:
      train_images: NHWC images, float32 in [-1, 1] or uint8 (converted per batch with
        `to_model_range`, which keeps the 60k training set at 60 MB).
      train_labels: int labels [N] in [0, num_classes).
      seed: initialisation (`nnx.Rngs(seed)`) and the per-epoch shuffles
        (`np.random.default_rng([seed, epoch])`); the same seed gives the same parameters.
      arch: defaults to `Arch(image_size=H, in_channels=C, num_classes=max(10, labels + 1))`.
      log: called with one line per epoch (loss, train accuracy on the batches, seconds).
    """
    images = np.asarray(train_images)
    labels = np.asarray(train_labels).astype(np.int32)
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"need NHWC images and [N] labels, got {images.shape} and {labels.shape}")
    n = images.shape[0]
    if arch is None:
        arch = Arch(
            image_size=images.shape[1],
            in_channels=images.shape[3],
            num_classes=max(10, int(labels.max()) + 1),
        )
    check_images(images[:1].astype(np.float32), arch)
    if labels.min() < 0 or labels.max() >= arch.num_classes:
        raise ValueError(
            f"labels must lie in [0, {arch.num_classes}), got {labels.min()}..{labels.max()}"
        )
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    optimizer, step = _train_step(arch, float(learning_rate))
    params = jax.tree.map(jnp.asarray, init_params(arch, seed))
    opt_state = optimizer.init(params)

    for epoch in range(epochs):
        start = time.perf_counter()
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        losses, accs = [], []
        for k in range(steps_per_epoch):
            idx = np.sort(perm[k * batch_size : (k + 1) * batch_size])
            x = _as_model_range(images[idx])
            params, opt_state, loss, acc = step(params, opt_state, x, labels[idx])
            losses.append(loss)
            accs.append(acc)
        loss, acc = float(np.mean(jax.device_get(losses))), float(np.mean(jax.device_get(accs)))
        if log is not None:
            log(
                f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, batch accuracy {acc:.4f}, "
                f"{time.perf_counter() - start:.1f} s"
            )
    return jax.device_get(params)


# ---------------------------------------------------------------------------------------------
# Saving and loading.


def folder_sha256(directory: str | os.PathLike) -> str:
    """sha256 over the files of `directory` (Orbax commit markers excluded): sorted relative
    paths, each with its size and bytes."""
    directory = pathlib.Path(directory)
    # Orbax's commit markers hold the writing machine's path and say nothing about the weights.
    files = sorted(
        p for p in directory.rglob("*") if not p.is_dir() and p.name != "commit_success.txt"
    )
    h = hashlib.sha256()
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise ClassifierError(f"{path}: not a regular file inside a classifier folder")
        rel = path.relative_to(directory).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def arrays_sha256(params) -> str:
    """sha256 of the parameter values (sorted key paths, dtype, shape, bytes): file-format free."""
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_classifier(
    path: str | os.PathLike,
    params,
    meta: Mapping | None = None,
    *,
    image_size: int = 32,
    overwrite: bool = False,
) -> dict:
    """Write `path/params` (Orbax) and `path/manifest.json`; returns the manifest.

    `meta` (JSON-serialisable: training config, data, epochs, test_accuracy, …) is merged into the
    manifest. The folder is written under a temporary name and renamed, so a crash never leaves a
    half-written classifier at `path`. An existing `path` is an error unless `overwrite` (and it
    holds a classifier manifest).
    """
    path = pathlib.Path(path)
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"meta may not set {clash}: save_classifier computes them")
    arch = arch_from_params(params, image_size=image_size)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; remove it or choose another folder")
        if not (path / MANIFEST).is_file():
            raise FileExistsError(f"{path} exists and is not a classifier folder; not replacing it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
        checkpoint.save_pytree(tmp / PARAMS_DIR, params)
        manifest = dict(
            format_version=FORMAT_VERSION,
            kind=KIND,
            architecture=arch.to_dict(),
            num_params=num_params(params),
            params_sha256=folder_sha256(tmp / PARAMS_DIR),
            arrays_sha256=arrays_sha256(params),
            date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **meta,
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():  # overwrite: swap in the new folder, then drop the old one
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return manifest


def load_classifier(path: str | os.PathLike = DEFAULT_PATH) -> tuple[dict, dict]:
    """(params NumPy nested dict, manifest) of a folder written by `save_classifier`.

    Raises `ClassifierError` naming the problem when the folder, its manifest or its parameters
    are missing, corrupt, modified since saving (sha256) or inconsistent with the architecture.
    """
    path = pathlib.Path(path)
    remedy = f"train one with `python -m aid_jax.metrics.classifier --out {path}`"
    if not path.is_dir():
        raise ClassifierError(f"{path}: no such classifier folder; {remedy}")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ClassifierError(f"{path}: no {MANIFEST}, not a classifier folder; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClassifierError(f"{manifest_path}: corrupt manifest ({e}); {remedy}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ClassifierError(f"{manifest_path}: not a classifier manifest (kind != {KIND!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ClassifierError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, this aid_jax "
            f"reads {FORMAT_VERSION}; {remedy}"
        )
    try:
        arch = Arch.from_dict(manifest["architecture"])
    except (KeyError, TypeError, ValueError) as e:
        raise ClassifierError(f"{manifest_path}: bad architecture entry ({e}); {remedy}") from e
    params_dir = path / PARAMS_DIR
    if not params_dir.is_dir():
        raise ClassifierError(f"{params_dir}: missing parameter folder; {remedy}")
    digest = folder_sha256(params_dir)
    if digest != manifest.get("params_sha256"):
        raise ClassifierError(
            f"{params_dir}: sha256 {digest[:16]}… does not match the manifest's "
            f"{str(manifest.get('params_sha256'))[:16]}…; the parameters were modified or are "
            f"corrupt. {remedy}"
        )
    try:
        params = checkpoint.restore_pytree(params_dir, like=param_shapes(arch))
    except Exception as e:  # Orbax raises many types for a damaged checkpoint
        raise ClassifierError(
            f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e}); {remedy}"
        ) from e
    _check_structure(params, arch, params_dir)
    if manifest.get("arrays_sha256") not in (None, arrays_sha256(params)):
        raise ClassifierError(f"{params_dir}: restored values do not match arrays_sha256; {remedy}")
    return params, manifest


# ---------------------------------------------------------------------------------------------
# Command line: train on Fashion-MNIST train, evaluate on test, save.


def fashion_mnist_model_arrays(split: str, directory=None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 1] padded with the black background, int32 labels) of a split."""
    from aid_jax.data import idx
    from aid_jax.data.sources import pad_images

    images, labels = idx.fashion_mnist_arrays(split, directory)
    return pad_images(images[..., None], 32), labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aid_jax.metrics.classifier", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=DEFAULT_PATH, help="output folder (must not exist)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (Debian's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    out = pathlib.Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    train_x, train_y = fashion_mnist_model_arrays("train", args.data_dir)
    test_x, test_y = fashion_mnist_model_arrays("test", args.data_dir)
    print(f"train {train_x.shape}, test {test_x.shape}; {jax.devices()[0].device_kind}", flush=True)
    start = time.perf_counter()
    epoch_log: list[str] = []

    def log(line):
        epoch_log.append(line)
        print(line, flush=True)

    params = train_classifier(
        train_x,
        train_y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        learning_rate=args.learning_rate,
        log=log,
    )
    train_seconds = time.perf_counter() - start
    test_acc = evaluate(params, to_model_range(test_x), test_y)
    print(f"test accuracy {test_acc:.4f} ({len(test_y)} images); trained in {train_seconds:.0f} s")
    meta = dict(
        test_accuracy=test_acc,
        epochs=args.epochs,
        training=dict(
            optimizer="adam",
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seed=args.seed,
            steps=args.epochs * (len(train_y) // args.batch_size),
            loss="softmax cross-entropy",
            augmentation=None,
            epoch_log=epoch_log,
            seconds=round(train_seconds, 1),
        ),
        data=dict(
            dataset="fashion_mnist",
            source=args.data_dir or "/usr/share/datasets/fashion-mnist (Debian)",
            train_split="train",
            num_train=int(len(train_y)),
            test_split="test",
            num_test=int(len(test_y)),
            preprocessing="28x28 padded to 32x32 with 0 (black), x / 127.5 - 1, NHWC float32",
        ),
        machine=provenance.machine(),
        versions=provenance.versions(),
    )
    try:
        manifest = save_classifier(out, params, meta, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (params sha256 {manifest['params_sha256'][:16]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
