"""Fashion-MNIST (and MNIST) IDX files: a small, strict reader.

IDX layout: big-endian int32 magic (0x0000 08 NN: unsigned bytes, NN dimensions), one big-endian
int32 per dimension, then raw uint8 data. Files may be gzip-compressed (Debian's are).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib

import numpy as np

# Where Debian's `dataset-fashion-mnist` package installs the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The subset that ships inside the package (installed by pip): the full 10k test split and the
# first 10k training images, with their sha256 in manifest.json. README's main job uses it.
BUNDLED_FASHION_MNIST_DIR = pathlib.Path(__file__).with_name("fashion_mnist")
INSTALL_HINT = (
    "Install Fashion-MNIST with `apt-get update && apt-get install -y dataset-fashion-mnist` "
    f"(files go to {DEFAULT_FASHION_MNIST_DIR}), or point the config at a folder holding "
    "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; without root, use the subset that ships "
    "with aid_jax: data.name='fashion_mnist_bundled' (10k train, the full 10k test split)."
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataError(ValueError):
    """Missing or corrupt data; the message says what to do."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip'd) into a uint8 array of its declared shape."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. {INSTALL_HINT}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); reinstall the dataset") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, "
            "expected 000008NN)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise DataError(
            f"{path}: IDX data holds {len(raw) - header} bytes, the header declares {shape} = "
            f"{size}; the file is truncated or corrupt — reinstall the dataset"
        )
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(shape).copy()


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).exists():
            return directory / name
    raise DataError(f"{directory}: {stem}[.gz] not found. {INSTALL_HINT}")


def fashion_mnist_arrays(
    split: str = "train", directory: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int32 [N]) of the 'train' (60k) or 'test' (10k) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    directory = pathlib.Path(directory or DEFAULT_FASHION_MNIST_DIR)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder. {INSTALL_HINT}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.max(initial=0) > 9:
        raise DataError(f"{directory}: labels outside 0..9 in the {split} split")
    return images, labels.astype(np.int32)


def bundled_fashion_mnist_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST subset shipped in the package, checked against its manifest's sha256.

    'train': the first 10,000 images of the official train split; 'test': the whole official
    test split (byte-identical to Debian's files). Same layout as :func:`fashion_mnist_arrays`.
    """
    directory = BUNDLED_FASHION_MNIST_DIR
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(
            f"{directory}: the bundled Fashion-MNIST manifest is missing or unreadable ({e}); "
            "reinstall aid_jax (`pip install -e .` from a full clone)"
        ) from e
    prefix = "train" if split == "train" else "t10k"
    for stem in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"):
        path = directory / stem
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest != manifest["sha256"].get(stem):
            raise DataError(
                f"{path}: sha256 {digest[:12]}… does not match the bundle's manifest; the "
                "installation is damaged (reinstall aid_jax)"
            )
    return fashion_mnist_arrays(split, directory)
