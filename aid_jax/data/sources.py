"""Data sources behind one interface: random access to uint8 NHWC images and integer labels.

`make_source(data_config)` picks the backend by `data_config.name`:

| name | what | loads |
|---|---|---|
| `fashion_mnist` | Fashion-MNIST IDX files (Debian package) | in memory |
| `fashion_mnist_bundled` | the subset in the package (10k train, 10k test) | in memory |
| `digits` | scikit-learn's 8x8 digits (1,797 images) | in memory |
| `folder` | a folder of png/jpg/jpeg/bmp/webp, recursive | lazily (decode in `get`) |
| `edm_zip` | a zip written by EDM's `dataset_tool.py` | lazily (decode in `get`) |
| `tfds` | a TFDS dataset prepared locally (ArrayRecord) | lazily (TFDS random access) |
| `npz` | an `.npz` with `images` (+ `labels`) | in memory |
| `synthetic` | random blobs, for tests | in memory |
| `vae_latents` | another source (`images`) encoded by a VAE (`vae`) | lazily (encoded in `get`) |

Every source has `__len__`, `get(indices) -> (images uint8 [B, H, W, C], labels int32 [B])`
(`vae_latents`: float32 latents), `image_shape` (H, W, C), `num_classes` (0 when unlabelled;
labels are then -1) and `name` (a short, path-independent identifier that resumable iterators
record, e.g. `fashion_mnist/train`, `folder/afhqv2-64x64`).

`vae_latents` serves a latent backbone's training (docs/LATENT.md): its `get` returns the
posterior-mean latents z of the `images` source (EDM2's scaling) as float32 — already the model's
units, which `pipeline.to_model_range` (called by the trainers on every source) passes through
unchanged; `image_shape` is the latent shape. The evaluation harness
unwraps it to its `images` (`aid_jax.latent.pixel_data_config`).

Missing data never triggers a download: every source raises `DataError` at construction, naming
the path and the command that installs or prepares the data. Corrupt files raise `DataError`
naming the file: at construction when the header is unreadable, in `get` when the pixel data is.

Image folders and zips (`folder`, `edm_zip`) read every header at construction (size and mode,
no pixel decoding) and validate them:
- sizes must agree, unless `resize_to` is set (then images of another size are resized with
  `resize_filter`: PIL `lanczos`, the default and EDM `dataset_tool.py`'s choice, or `bicubic`;
  the aspect ratio is not preserved);
- modes must agree unless `channels` is set. Without `channels`, one mode of `L`/`1` gives 1
  channel, `RGB` gives 3, anything else (RGBA, palette, CMYK, ...) is an error asking for
  `channels`. With `channels` set, images are converted with PIL (`RGB -> L` uses the ITU-R 601-2
  luma); images with transparency (RGBA, LA, palette with a transparent colour) are composited on
  black first;
- 16-bit and float images (modes I, I;16, F) are rejected.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import threading
import zipfile
import zlib
from typing import Protocol

import numpy as np

from aid_jax.data import idx
from aid_jax.data.idx import DataError

SOURCES = (
    "fashion_mnist",
    "fashion_mnist_bundled",
    "digits",
    "folder",
    "edm_zip",
    "tfds",
    "npz",
    "synthetic",
    "vae_latents",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SKLEARN_HINT = (
    "scikit-learn is not installed: `pip install 'aid_jax[data]'` (or scikit-learn==1.9.1)"
)
TFDS_HINT = "tensorflow-datasets is not installed: `pip install 'aid_jax[data]'`"
DATASET_TOOL_HINT = (
    "Create it with EDM's dataset_tool.py, e.g. `python dataset_tool.py "
    "--source=downloads/afhqv2 --dest=datasets/afhqv2-64x64.zip --resolution=64x64` "
    "(EDM2's tool: `python dataset_tool.py convert ...`; see docs/DATA.md)"
)


class Source(Protocol):
    """What the pipeline needs from a data source."""

    name: str
    num_classes: int

    def __len__(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]: ...


def _as_indices(indices, n: int, name: str) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        if indices.size == 0:
            return np.zeros(0, np.int64)
        raise TypeError(
            f"{name}: indices must be a 1-D integer array, got {indices.dtype} {indices.shape}"
        )
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise IndexError(f"{name}: index out of range for {n} examples")
    return indices % n if n else indices


# --------------------------------------------------------------------------------------------
# In-memory sources.


@dataclasses.dataclass
class ArraySource:
    """An in-memory source (Fashion-MNIST, digits, npz, synthetic)."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]; -1 when unlabelled
    num_classes: int
    name: str

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels {self.labels.shape} do not match images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices)
        return self.images[indices], self.labels[indices]


def pad_images(images: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Centre-pad uint8 [N, H, W, C] to [N, size, size, C] (Fashion-MNIST 28 -> 32)."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.full((n, size, size, c), value, np.uint8)
    out[:, top : top + h, left : left + w] = images
    return out


def fashion_mnist(
    split="train", directory=None, pad_to: int | None = 32, *, bundled: bool = False
) -> ArraySource:
    """Fashion-MNIST from `directory` (default: Debian's folder) or, with `bundled`, the subset
    that ships inside the package (no root or apt needed; see idx.bundled_fashion_mnist_arrays)."""
    if bundled:
        if directory:
            raise ValueError("data.name='fashion_mnist_bundled' takes no path; drop data.path")
        images, labels = idx.bundled_fashion_mnist_arrays(split)
    else:
        images, labels = idx.fashion_mnist_arrays(split, directory)
    images = images[..., None]
    if pad_to:
        images = pad_images(images, pad_to)  # background is 0 (black), so pad with 0
    name = "fashion_mnist_bundled" if bundled else "fashion_mnist"
    return ArraySource(images, labels, 10, f"{name}/{split}")


DIGITS_TRAIN = 1500  # digits has no official split: the first 1,500 train, the last 297 test


def digits(split: str = "train", pad_to: int | None = None, upscale: int = 1) -> ArraySource:
    """scikit-learn's UCI digits: 8x8 values 0..16 -> uint8 round(v * 255 / 16), 1 channel.

    split: 'train' (first 1,500), 'test' (last 297) or 'all' (1,797). `upscale` repeats pixels
    (nearest neighbour, 8 -> 8 * upscale), then `pad_to` centre-pads with 0 (the background).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(f"data.name='digits' needs scikit-learn. {SKLEARN_HINT}") from None
    slices = {
        "train": slice(0, DIGITS_TRAIN),
        "test": slice(DIGITS_TRAIN, None),
        "all": slice(None),
    }
    if split not in slices:
        raise ValueError(f"digits: split={split!r}; expected one of {tuple(slices)}")
    data = load_digits()
    images = np.round(data.images[slices[split]] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target[slices[split]].astype(np.int32)
    upscale = int(upscale or 1)
    if upscale < 1:
        raise ValueError(f"digits: upscale={upscale}; expected an integer >= 1")
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    if pad_to:
        images = pad_images(images, pad_to)
    return ArraySource(images, labels, 10, f"digits/{split}")


def synthetic(num_images=64, image_size=8, channels=1, seed=0, num_classes=0) -> ArraySource:
    """Random smooth blobs: for tests and smoke runs (no files needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / max(image_size - 1, 1)
    centres = rng.uniform(0.2, 0.8, (num_images, 2, channels))
    width = rng.uniform(0.1, 0.3, (num_images, 1, channels))
    d2 = (yy[None, :, :, None] - centres[:, None, None, 0]) ** 2
    d2 = d2 + (xx[None, :, :, None] - centres[:, None, None, 1]) ** 2
    images = np.exp(-d2 / (2 * width[:, None] ** 2))
    labels = rng.integers(0, num_classes, num_images) if num_classes else np.full(num_images, -1)
    return ArraySource(
        (images * 255).round().astype(np.uint8), labels.astype(np.int32), num_classes, "synthetic"
    )


NPZ_RANGES = ("auto", "uint8", "0_1", "-1_1")


def npz(
    path,
    value_range: str = "auto",
    image_key: str = "images",
    label_key: str = "labels",
    num_classes: int | None = None,
) -> ArraySource:
    """An `.npz` with `images` [N, H, W, C] (or [N, H, W]) and optional integer `labels` [N].

    Accepted images: uint8 (used as is), or floating point in [0, 1] or [-1, 1], mapped to uint8
    by round((x + 1) * 127.5) resp. round(x * 255). `value_range='auto'` takes [-1, 1] when the
    minimum is negative and [0, 1] otherwise (so a [-1, 1] array without negative values reads as
    [0, 1]: pass `value_range='-1_1'` then). Anything else (other integer types, floats outside
    [-1, 1], NaN, NCHW layouts) is rejected. Labels: -1 = unlabelled; `num_classes` defaults to
    max(label) + 1.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file. Write one with `np.savez(path, images=uint8 [N, H, W, C], "
            "labels=int [N])` (see docs/DATA.md)"
        )
    if value_range not in NPZ_RANGES:
        raise ValueError(f"npz: value_range={value_range!r}; expected one of {NPZ_RANGES}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if image_key not in f.files:
                raise DataError(f"{path}: no array {image_key!r} (arrays: {f.files})")
            images = f[image_key]
            labels = f[label_key] if label_key and label_key in f.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from e

    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"{path}: {image_key} has shape {images.shape}; expected [N, H, W, C]")
    if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
        raise DataError(
            f"{path}: {image_key} {images.shape} looks like NCHW; store NHWC "
            "(np.transpose(images, (0, 2, 3, 1)))"
        )
    images = _npz_to_uint8(images, value_range, path)

    if labels is None:
        labels = np.full(images.shape[0], -1, np.int32)
    else:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: {label_key} is {labels.dtype} {labels.shape}; expected integers "
                f"[{images.shape[0]}]"
            )
        if labels.size and labels.min() < -1:
            raise DataError(f"{path}: labels below -1")
        labels = labels.astype(np.int32)
    if num_classes is None:
        num_classes = int(labels.max(initial=-1)) + 1
    return ArraySource(images, labels, int(num_classes), f"npz/{path.name}")


def _npz_to_uint8(images: np.ndarray, value_range: str, path) -> np.ndarray:
    if images.dtype == np.uint8:
        if value_range not in ("auto", "uint8"):
            raise DataError(f"{path}: images are uint8 but value_range={value_range!r}")
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{path}: images are {images.dtype}; expected uint8 or float in [0, 1] / [-1, 1]"
        )
    if value_range == "uint8":
        raise DataError(f"{path}: images are {images.dtype}, value_range='uint8'")
    x = images.astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{path}: images contain NaN or infinity")
    if value_range == "auto":
        value_range = "-1_1" if lo < 0 else "0_1"
    bounds = {"0_1": (0.0, 1.0), "-1_1": (-1.0, 1.0)}[value_range]
    tol = 1e-3
    if lo < bounds[0] - tol or hi > bounds[1] + tol:
        raise DataError(
            f"{path}: float images span [{lo:g}, {hi:g}], outside {list(bounds)} "
            f"(value_range={value_range!r}); store uint8 or floats in [0, 1] / [-1, 1]"
        )
    scaled = (x + 1.0) * 127.5 if value_range == "-1_1" else x * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Lazy image sources: folders and EDM zips.

_UNSUPPORTED_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_MODE_CHANNELS = {"1": 1, "L": 1, "RGB": 3}  # modes whose channel count needs no decision
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _resample(name: str):
    from PIL import Image

    filters = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
    if name not in filters:
        raise ValueError(f"resize_filter={name!r}; expected one of {tuple(filters)}")
    return filters[name]


def _size_hw(resize_to) -> tuple[int, int] | None:
    if resize_to is None or resize_to == 0:
        return None
    if isinstance(resize_to, int):
        return (resize_to, resize_to)
    h, w = (int(v) for v in resize_to)
    return (h, w)


def _convert(im, channels: int, size_hw: tuple[int, int], resample) -> np.ndarray:
    """A PIL image -> uint8 [H, W, channels] (alpha composited on black, then resized)."""
    from PIL import Image

    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    im = im.convert("L" if channels == 1 else "RGB")
    if (im.height, im.width) != size_hw:
        im = im.resize((size_hw[1], size_hw[0]), resample)
    out = np.asarray(im, np.uint8)
    return out[..., None] if channels == 1 else out


class _LazyImageSource:
    """Images decoded on demand from named members (`_open(i)` gives a binary file object)."""

    def _setup(self, keys, labels, num_classes, *, channels, resize_to, resize_filter, cache):
        from PIL import Image

        self.keys = list(keys)
        if not self.keys:
            raise DataError(f"{self._where()}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.labels = np.asarray(labels, np.int32)
        self.num_classes = int(num_classes)
        self._resample = _resample(resize_filter)
        if channels not in (None, 1, 3):
            raise ValueError(f"{self.name}: channels={channels!r}; expected 1, 3 or None")

        sizes, modes = [], []
        for i in range(len(self.keys)):  # headers only: PIL decodes pixels on load()
            try:
                with self._open(i) as f, Image.open(f) as im:
                    mode = im.mode
                    if mode == "P" and "transparency" in im.info:
                        mode = "P+transparency"
                    sizes.append(im.size)
                    modes.append(mode)
            except _READ_ERRORS + (Image.DecompressionBombError,) as e:
                raise DataError(f"{self._describe(i)}: not a readable image ({e})") from e
            if mode in _UNSUPPORTED_MODES:
                raise DataError(
                    f"{self._describe(i)}: mode {mode} (16-bit or float) is not supported; "
                    "convert the images to 8-bit"
                )

        self._size = _size_hw(resize_to)
        if self._size is None:
            first = sizes[0]
            for i, s in enumerate(sizes):
                if s != first:
                    raise DataError(
                        f"{self._where()}: images differ in size: {self._describe(0)} is "
                        f"{first[0]}x{first[1]} and {self._describe(i)} is {s[0]}x{s[1]} "
                        "(width x height); set resize_to (resized with resize_filter, default "
                        "lanczos) or prepare the data with EDM's dataset_tool.py"
                    )
            self._size = (first[1], first[0])

        if channels is None:
            for i, m in enumerate(modes):
                if m != modes[0]:
                    raise DataError(
                        f"{self._where()}: images differ in mode: {self._describe(0)} is "
                        f"{modes[0]} and {self._describe(i)} is {m}; set channels (1 or 3) to "
                        "convert them (transparency is composited on black)"
                    )
            if modes[0] not in _MODE_CHANNELS:
                raise DataError(
                    f"{self._where()}: images are {modes[0]} (e.g. {self._describe(0)}); set "
                    "channels (1 or 3) to convert them (transparency is composited on black)"
                )
            channels = _MODE_CHANNELS[modes[0]]
        self.channels = int(channels)
        self._cache = {} if cache else None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self._size, self.channels)

    def __getstate__(self):  # picklable (e.g. for worker processes): locks are recreated
        return {k: v for k, v in self.__dict__.items() if not k.endswith("lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if "_zip" in state:
            self._zip_lock = threading.Lock()

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with self._open(i) as f, Image.open(f) as im:
                im.load()
                return _convert(im, self.channels, self._size, self._resample)
        except _READ_ERRORS + (Image.DecompressionBombError,) as e:
            raise DataError(
                f"{self._describe(i)}: corrupt image ({e}); re-export or remove it"
            ) from e

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _as_indices(indices, len(self), self.name)
        out = np.empty((len(indices), *self.image_shape), np.uint8)
        for k, i in enumerate(indices.tolist()):
            if self._cache is not None:
                with self._lock:
                    hit = self._cache.get(i)
                if hit is None:
                    hit = self._decode(i)
                    with self._lock:
                        self._cache[i] = hit
                out[k] = hit
            else:
                out[k] = self._decode(i)
        return out, self.labels[indices]


def _dataset_json_labels(raw: bytes, keys, where: str) -> np.ndarray | None:
    """EDM's dataset.json: {"labels": [[relative/path.png, int], ...]} or {"labels": null}."""
    try:
        table = json.loads(raw).get("labels")
    except (ValueError, AttributeError) as e:
        raise DataError(
            f"{where}: dataset.json is not valid JSON of the form "
            f'{{"labels": [[path, int], ...]}} ({e})'
        ) from e
    if table is None:
        return None
    try:
        table = {str(k).replace("\\", "/"): v for k, v in table}
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: dataset.json labels must be [[path, int], ...] ({e})") from e
    labels = []
    for key in keys:
        if key not in table:
            raise DataError(f"{where}: dataset.json has no label for {key}")
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(
                f"{where}: dataset.json label of {key} is {v!r}; only non-negative integer "
                "class labels are supported"
            )
        labels.append(v)
    return np.asarray(labels, np.int32)


class FolderSource(_LazyImageSource):
    """A folder of images, searched recursively in sorted path order (hidden entries skipped).

    labels: None (unlabelled), 'subdirs' (class = first sub-folder name, classes sorted) or
    'dataset_json' (EDM's `dataset.json` at the folder root, as in an unpacked dataset_tool zip).
    """

    def __init__(
        self,
        path,
        *,
        labels=None,
        channels=None,
        resize_to=None,
        resize_filter="lanczos",
        cache=False,
    ):
        self.root = pathlib.Path(path)
        self.name = f"folder/{self.root.resolve().name}"
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: no such folder. Put the images there (e.g. unpack AFHQv2 or FFHQ) "
                f"or use data.name='edm_zip' with a dataset_tool zip. {DATASET_TOOL_HINT}"
            )
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = pathlib.Path(dirpath).relative_to(self.root)
            for fn in filenames:
                if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                    keys.append((rel / fn).as_posix())
        keys.sort()
        self.class_names: tuple[str, ...] = ()
        if labels is None:
            label_arr, num_classes = np.full(len(keys), -1, np.int32), 0
        elif labels == "subdirs":
            top = [k.split("/")[0] if "/" in k else None for k in keys]
            if None in top:
                raise DataError(
                    f"{self.root / keys[top.index(None)]}: labels='subdirs' needs every image "
                    "inside a class sub-folder"
                )
            self.class_names = tuple(sorted(set(top)))
            lookup = {c: i for i, c in enumerate(self.class_names)}
            label_arr, num_classes = np.asarray([lookup[t] for t in top]), len(self.class_names)
        elif labels == "dataset_json":
            meta = self.root / "dataset.json"
            if not meta.is_file():
                raise DataError(f"{meta}: no such file (labels='dataset_json')")
            label_arr = _dataset_json_labels(meta.read_bytes(), keys, str(meta))
            if label_arr is None:
                raise DataError(f"{meta}: labels are null (labels='dataset_json')")
            num_classes = int(label_arr.max(initial=-1)) + 1
        else:
            raise ValueError(f"folder: labels={labels!r}; expected None, 'subdirs', 'dataset_json'")
        self._setup(
            keys,
            label_arr,
            num_classes,
            channels=channels,
            resize_to=resize_to,
            resize_filter=resize_filter,
            cache=cache,
        )

    def _where(self) -> str:
        return str(self.root)

    def _describe(self, i: int) -> str:
        return str(self.root / self.keys[i])

    def _open(self, i: int):
        return open(self.root / self.keys[i], "rb")


class EdmZipSource(_LazyImageSource):
    """A zip archive written by EDM's dataset_tool.py (`00000/img00000000.png`, ... and an
    optional `dataset.json`). Members are read lazily; one archive handle per process.

    labels: 'auto' (from dataset.json when it exists and is not null), 'dataset_json'
    (required), or None (ignore).
    """

    def __init__(
        self,
        path,
        *,
        labels="auto",
        channels=None,
        resize_to=None,
        resize_filter="lanczos",
        cache=False,
    ):
        self.path = pathlib.Path(path)
        self.name = f"edm_zip/{self.path.name}"
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file. {DATASET_TOOL_HINT}")
        self._zip, self._pid = None, None
        self._zip_lock = threading.Lock()
        try:
            names = self._archive().namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(
                f"{self.path}: not a readable zip archive ({e}); the file is truncated or "
                f"corrupt. {DATASET_TOOL_HINT}"
            ) from e
        keys = sorted(
            n for n in names if not n.endswith("/") and n.lower().endswith(IMAGE_EXTENSIONS)
        )
        label_arr = None
        if labels in ("auto", "dataset_json"):
            if "dataset.json" in names:
                try:
                    raw = self._archive().read("dataset.json")
                except _READ_ERRORS as e:
                    raise DataError(f"{self.path}: corrupt member dataset.json ({e})") from e
                label_arr = _dataset_json_labels(raw, keys, f"{self.path}:dataset.json")
            if label_arr is None and labels == "dataset_json":
                raise DataError(f"{self.path}: no labels in dataset.json (labels='dataset_json')")
        elif labels is not None:
            raise ValueError(f"edm_zip: labels={labels!r}; expected 'auto', 'dataset_json' or None")
        if label_arr is None:
            label_arr, num_classes = np.full(len(keys), -1, np.int32), 0
        else:
            num_classes = int(label_arr.max(initial=-1)) + 1
        self._setup(
            keys,
            label_arr,
            num_classes,
            channels=channels,
            resize_to=resize_to,
            resize_filter=resize_filter,
            cache=cache,
        )

    def _archive(self) -> zipfile.ZipFile:
        with self._zip_lock:
            if self._zip is None or self._pid != os.getpid():  # reopen after fork
                self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
            return self._zip

    def _where(self) -> str:
        return str(self.path)

    def _describe(self, i: int) -> str:
        return f"{self.path}:{self.keys[i]}"

    def _open(self, i: int):
        return self._archive().open(self.keys[i])

    def __getstate__(self):
        state = super().__getstate__()
        state["_zip"], state["_pid"] = None, None
        return state


# --------------------------------------------------------------------------------------------
# TFDS (prepared locally, read through ArrayRecord random access; never downloads).

RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def tfds_prepare_hint(tfds_name: str, data_dir) -> str:
    return (
        f"Prepare it on a machine with network access (most public datasets also need "
        f'TensorFlow to encode images): `python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{tfds_name}', data_dir='{data_dir}', file_format='array_record')"
        f'.download_and_prepare()"`, then copy {data_dir}/{tfds_name.split(":")[0]} here '
        "(see docs/DATA.md)"
    )


def default_tfds_data_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("TFDS_DATA_DIR") or pathlib.Path.home() / "tensorflow_datasets"
    )


def check_tfds_prepared(tfds_name: str, data_dir) -> list[pathlib.Path]:
    """The prepared version folders of `tfds_name` ('name[/config][:version]') under data_dir.

    Looks only at the file system (dataset_info.json and its `fileFormat`), so it can never start
    a download; raises DataError with the preparation command when nothing usable is there.
    """
    data_dir = pathlib.Path(data_dir)
    base, _, version = tfds_name.partition(":")
    root = data_dir / base
    if version:
        infos = [root / version / "dataset_info.json"]
    else:
        infos = sorted(root.glob("dataset_info.json")) + sorted(root.glob("*/dataset_info.json"))
        infos += sorted(root.glob("*/*/dataset_info.json"))
    infos = [p for p in infos if p.is_file() and not p.parent.name.startswith("incomplete")]
    if not infos:
        raise DataError(
            f"{root}: TFDS dataset {tfds_name!r} is not prepared under {data_dir} (no "
            f"dataset_info.json); tfds downloads are disabled. "
            + tfds_prepare_hint(tfds_name, data_dir)
        )
    usable, formats = [], []
    for p in infos:
        try:
            fmt = json.loads(p.read_text()).get("fileFormat") or "tfrecord"
        except (ValueError, OSError) as e:
            raise DataError(f"{p}: unreadable dataset_info.json ({e})") from e
        formats.append(f"{p.parent}: {fmt}")
        if fmt in RANDOM_ACCESS_FORMATS:
            usable.append(p.parent)
    if not usable:
        raise DataError(
            f"{root}: prepared as {'; '.join(formats)}, which has no random access; re-prepare "
            "with file_format='array_record'. " + tfds_prepare_hint(tfds_name, data_dir)
        )
    return usable


class TfdsSource:
    """`tfds.data_source(tfds_name, split=split, data_dir=data_dir)` on locally prepared data.

    Examples are dicts; `image_key` (uint8 [H, W, C] or [H, W]) and `label_key` (integer; None
    for unlabelled) select the features. `num_classes` comes from a ClassLabel feature unless
    given.
    """

    def __init__(
        self,
        tfds_name: str,
        *,
        split="train",
        data_dir=None,
        image_key="image",
        label_key="label",
        num_classes: int | None = None,
    ):
        data_dir = pathlib.Path(data_dir) if data_dir else default_tfds_data_dir()
        check_tfds_prepared(tfds_name, data_dir)
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError(TFDS_HINT) from e

        try:
            self._ds = tfds.data_source(
                tfds_name, split=split, data_dir=str(data_dir), download=False, try_gcs=False
            )
        except Exception as e:  # tfds raises many types; all mean "not usable"
            raise DataError(
                f"{data_dir / tfds_name.split(':')[0]}: cannot open TFDS {tfds_name!r} split "
                f"{split!r} ({type(e).__name__}: {e}). " + tfds_prepare_hint(tfds_name, data_dir)
            ) from e
        self.name = f"tfds/{tfds_name}/{split}"
        self.image_key, self.label_key = image_key, label_key
        features = getattr(getattr(self._ds, "dataset_info", None), "features", None)
        if features is not None and image_key not in features:
            raise DataError(
                f"TFDS {tfds_name!r}: no feature {image_key!r} (features: {list(features)})"
            )
        if label_key and features is not None and label_key not in features:
            raise DataError(
                f"TFDS {tfds_name!r}: no feature {label_key!r} (features: {list(features)})"
            )
        if not label_key:
            num_classes = 0
        elif num_classes is None:
            num_classes = getattr(features[label_key], "num_classes", None) if features else None
            if num_classes is None:
                raise DataError(
                    f"TFDS {tfds_name!r}: {label_key!r} is not a ClassLabel; set data.num_classes"
                )
        self.num_classes = int(num_classes)
        if len(self._ds) == 0:
            raise DataError(f"TFDS {tfds_name!r} split {split!r} is empty")
        self._shape = self._image(self._ds[0], 0).shape

    def __len__(self) -> int:
        return len(self._ds)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._shape)

    def _image(self, example, i) -> np.ndarray:
        img = np.asarray(example[self.image_key])
        if img.ndim == 2:
            img = img[..., None]
        if img.dtype != np.uint8 or img.ndim != 3:
            raise DataError(
                f"{self.name}[{i}]: {self.image_key} is {img.dtype} {img.shape}; "
                "expected uint8 [H, W, C]"
            )
        if hasattr(self, "_shape") and img.shape != self._shape:
            raise DataError(
                f"{self.name}[{i}]: image {img.shape}, the first is {self._shape}; "
                "variable-size images are not supported"
            )
        return img

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _as_indices(indices, len(self), self.name)
        images = np.empty((len(indices), *self._shape), np.uint8)
        labels = np.full(len(indices), -1, np.int32)
        for k, i in enumerate(indices.tolist()):
            ex = self._ds[i]
            images[k] = self._image(ex, i)
            if self.label_key:
                labels[k] = int(ex[self.label_key])
        return images, labels


# --------------------------------------------------------------------------------------------
# A VAE's latents of another source (latent backbones' training data).


class VAELatentSource:
    """The latents of ``images`` (a source) under a VAE (``aid_jax.latent.LatentSpace``).

    ``get`` encodes the images it has not encoded yet (posterior mean, the VAE's latent scaling;
    in chunks of ``chunk`` images, the last one padded, so one program serves every call), keeps
    them when ``cache`` is set, and returns the float32 latents z (the model's units, passed
    through by ``pipeline.to_model_range``) with the images' labels.
    """

    def __init__(self, images, space, *, cache: bool = True, chunk: int = 16):
        import jax

        from aid_jax import latent

        self.images, self.space = images, space
        self._latent_shape = space.latent_shape(images.image_shape)  # the clear size errors
        self.name = f"vae_latents/{images.name}"
        self.num_classes = images.num_classes
        self.chunk = int(chunk)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._lock = threading.Lock()
        self._encode = jax.jit(lambda p, x: latent.LatentSpace.encode(space, p, x))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._latent_shape)

    def _encode_indices(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self._latent_shape), np.float32)
        for start in range(0, len(indices), self.chunk):
            part = indices[start : start + self.chunk]
            u8, _ = self.images.get(part)
            x = u8.astype(np.float32) / 127.5 - 1.0
            pad = self.chunk - len(part)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
            z = np.asarray(self._encode(self.space.params, x))
            out[start : start + len(part)] = z[: len(part)]
        return out

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _as_indices(indices, len(self), self.name)
        if self._cache is None:
            z = self._encode_indices(indices)
        else:
            with self._lock:
                missing = np.unique([i for i in indices.tolist() if i not in self._cache])
            if missing.size:
                fresh = self._encode_indices(missing.astype(np.int64))
                with self._lock:
                    self._cache.update(zip(missing.tolist(), fresh, strict=True))
            with self._lock:
                z = (
                    np.stack([self._cache[i] for i in indices.tolist()])
                    if len(indices)
                    else (np.empty((0, *self._latent_shape), np.float32))
                )
        table = getattr(self.images, "labels", None)  # in-memory and lazy sources keep them
        if isinstance(table, np.ndarray):
            labels = table[indices]
        else:
            _, labels = self.images.get(indices)
        return z, labels


# --------------------------------------------------------------------------------------------


def _config_dict(data_config) -> dict:
    if hasattr(data_config, "to_dict"):
        return data_config.to_dict()
    return dict(data_config)


def _require_path(cfg: dict, name: str) -> str:
    path = cfg.get("path")
    if not path:
        raise ValueError(f"data.name={name!r} needs data.path")
    return path


def make_source(data_config) -> Source:
    """Build the source named by `data_config.name` (a ConfigDict or dict; see module doc)."""
    cfg = _config_dict(data_config)
    name = cfg.get("name")
    lazy = dict(
        channels=cfg.get("channels"),
        resize_to=cfg.get("resize_to"),
        resize_filter=cfg.get("resize_filter", "lanczos"),
        cache=bool(cfg.get("cache", False)),
    )
    if name in ("fashion_mnist", "fashion_mnist_bundled"):
        return fashion_mnist(
            cfg.get("split", "train"),
            cfg.get("path") or None,
            cfg.get("pad_to", 32),
            bundled=name == "fashion_mnist_bundled",
        )
    if name == "digits":
        return digits(cfg.get("split", "train"), cfg.get("pad_to"), cfg.get("upscale", 1))
    if name == "folder":
        return FolderSource(_require_path(cfg, name), labels=cfg.get("labels"), **lazy)
    if name == "edm_zip":
        return EdmZipSource(_require_path(cfg, name), labels=cfg.get("labels", "auto"), **lazy)
    if name == "tfds":
        if not cfg.get("tfds_name"):
            raise ValueError("data.name='tfds' needs data.tfds_name (e.g. 'mnist')")
        return TfdsSource(
            cfg["tfds_name"],
            split=cfg.get("split", "train"),
            data_dir=cfg.get("data_dir") or None,
            image_key=cfg.get("image_key", "image"),
            label_key=cfg.get("label_key", "label"),
            num_classes=cfg.get("num_classes"),
        )
    if name == "npz":
        return npz(
            _require_path(cfg, name),
            cfg.get("value_range", "auto"),
            cfg.get("image_key", "images"),
            cfg.get("label_key", "labels"),
            cfg.get("num_classes"),
        )
    if name == "vae_latents":
        from aid_jax import latent

        if not cfg.get("images") or not cfg.get("vae"):
            raise ValueError(
                "data.name='vae_latents' needs data.images (the image source's config) and "
                "data.vae (the VAE's config: path or random recipe)"
            )
        space = latent.space_from_config(cfg["vae"])
        return VAELatentSource(
            make_source(cfg["images"]), space, cache=bool(cfg.get("cache", True))
        )
    if name == "synthetic":
        return synthetic(
            cfg.get("num_images", 64),
            cfg.get("image_size", 8),
            cfg.get("channels", 1),
            cfg.get("seed", 0),
            cfg.get("num_classes", 0),
        )
    raise ValueError(f"data.name={name!r}; expected one of {SOURCES}")
