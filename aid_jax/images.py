"""Image helpers: [-1, 1] float NHWC <-> uint8, and PNG grids."""

from __future__ import annotations

import math
import os

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
