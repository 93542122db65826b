"""Image helpers, pure NumPy/PIL on the host: [-1, 1] float NHWC <-> uint8, grids (plain and
side-by-side comparisons of named columns), the observed view of a masked image, PNG files."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_uint8(x) -> np.ndarray:
    """[-1, 1] float images -> uint8, as EDM does: (x·127.5 + 128) clipped, truncated."""
    return np.clip(np.asarray(x, np.float32) * 127.5 + 128, 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows·(H+pad)−pad, cols·(W+pad)−pad, C] image."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    return out


def save_png(image: np.ndarray, path: str | os.PathLike, upscale: int = 1) -> None:
    """Save a uint8 [H, W, C] image (C = 1, 3 or 4 drops to L / RGB); nearest upscaling."""
    if image.shape[-1] == 1:
        image = image[..., 0]
    elif image.shape[-1] not in (3, 4):
        image = image[..., :3]  # latents or other channel counts: show the first three
    pil = Image.fromarray(image)
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
    pil.save(path)


def save_png_folder(images, names: Sequence[str], folder: str | os.PathLike) -> None:
    """One PNG per image ([-1, 1] float NHWC, :func:`to_uint8`) as ``<folder>/<name>.png``: the
    layout external FID tools read."""
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    os.makedirs(folder, exist_ok=True)
    for image, name in zip(to_uint8(images), names, strict=True):
        save_png(image, os.path.join(folder, f"{name}.png"))


def observed_view(y: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """The observed image as a user sees it: known pixels, holes in mid grey (0 in [-1, 1])."""
    return np.where(mask > 0.5, y, np.float32(fill)).astype(np.float32)


def comparison_grid(
    columns: Sequence[tuple[str, np.ndarray]], pad: int = 2
) -> tuple[np.ndarray, list[str]]:
    """Stack named columns of images ([N, H, W, C] in [-1, 1], or masks in {0, 1}) side by side.

    Row i shows image i in every column (observed, mask, each method, ground truth). Returns the
    uint8 grid and the column names (the caller writes them to a legend or caption).
    """
    if not columns:
        raise ValueError("comparison_grid needs at least one column")
    n = columns[0][1].shape[0]
    shape = columns[0][1].shape[1:3]
    channels = max(c[1].shape[-1] for c in columns)
    tiles = []
    for name, arr in columns:
        if arr.shape[0] != n or arr.shape[1:3] != shape:
            raise ValueError(f"column {name!r} has shape {arr.shape}; expected [{n}, {shape}, C]")
        u8 = to_uint8(arr)
        if u8.shape[-1] != channels:
            u8 = np.repeat(u8[..., :1], channels, axis=-1)
        tiles.append(u8)
    # Interleave to row-major order: image 0 of every column, then image 1, ...
    stacked = np.stack(tiles, axis=1).reshape(n * len(tiles), *tiles[0].shape[1:])
    return grid(stacked, ncols=len(tiles), pad=pad), [c[0] for c in columns]


def mask_as_image(mask: np.ndarray) -> np.ndarray:
    """{0, 1} mask -> [-1, 1] image (known = white, hole = black) for grids."""
    return (2.0 * np.asarray(mask, np.float32) - 1.0).astype(np.float32)
