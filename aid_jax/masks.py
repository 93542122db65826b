"""Inpainting masks: seeded generators, PNG loading, validation, save/load.

Convention used throughout aid_jax: a mask is float32 ``[B, H, W, 1]`` (``[H, W, 1]`` for a
single one) with **1 = known (observed) pixel, 0 = hole**, broadcast over the channels of NHWC
images. ``validate_mask`` is the check every public API of the project runs at its boundary.

Generation is NumPy on the host. Mask ``i`` of ``make_masks(kind, num, size, seed=s)`` is drawn
from its own generator ``np.random.default_rng(np.random.SeedSequence(s).spawn(num)[i])``, so
it depends only on ``(kind, options, size, s, i)``: the same seed gives the same masks, and
asking for more masks extends the set without changing the first ones.

See docs/MASKS.md for the definitions and measured hole-ratio statistics of each family.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

MASK_TYPES = ("center_box", "random_boxes", "half", "strokes", "pixel_dropout", "png")
HALF_SIDES = ("left", "right", "top", "bottom")

# Default options of each family (the 'png' kind has a required 'paths' option).
DEFAULTS: dict[str, dict[str, Any]] = {
    "center_box": {"fraction": 0.5},
    "random_boxes": {
        "num_boxes": (1, 4),
        "box_size": (0.1, 0.5),
        "hole_ratio": (0.1, 0.5),
        "max_tries": 1000,
    },
    "half": {"side": "random"},
    "strokes": {
        "num_strokes": (1, 5),
        "num_segments": (1, 5),
        "width": (0.08, 0.2),
        "length": (0.1, 0.4),
        "max_angle": math.pi / 2,
        "hole_ratio": (0.1, 0.5),
        "max_tries": 1000,
    },
    "pixel_dropout": {"p": 0.7},
    "png": {"paths": None, "invert": False, "threshold": False, "shuffle": False},
}

_GRID_MAX = 64  # masks shown in the PNG grid written by save_masks


# ---------------------------------------------------------------------------------------------
# Argument checking helpers


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or an (H, W) pair of ints; got {image_size!r}")
    if min(hw) < 2:
        raise ValueError(
            f"image_size must be at least 2x2 (a mask needs a hole and a known pixel); got {hw}"
        )
    return hw


def _check_seed(seed) -> int:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)


def _rngs(seed: int, num: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num)]


def _is_pair(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2


def _int_range(kind: str, name: str, value, minimum: int) -> tuple[int, int]:
    """An int or an inclusive (lo, hi) int range, lo >= minimum."""
    pair = tuple(value) if _is_pair(value) else (value, value)
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair):
        raise ValueError(
            f"{kind}: {name} must be an int or a (min, max) pair of ints; got {value!r}"
        )
    lo, hi = int(pair[0]), int(pair[1])
    if not minimum <= lo <= hi:
        raise ValueError(f"{kind}: {name} must satisfy {minimum} <= min <= max; got {value!r}")
    return lo, hi


def _float_range(
    kind: str, name: str, value, lo_bound: float, hi_bound: float, *, scalar_ok: bool, hi_closed
) -> tuple[float, float]:
    """A (lo, hi) float range with lo_bound < lo <= hi < hi_bound (<= if hi_closed)."""
    if _is_pair(value):
        pair = tuple(value)
    elif scalar_ok:
        pair = (value, value)
    else:
        raise ValueError(f"{kind}: {name} must be a (min, max) pair; got {value!r}")
    if not all(isinstance(v, int | float | np.integer | np.floating) for v in pair):
        raise ValueError(f"{kind}: {name} must be numbers; got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    upper_ok = hi <= hi_bound if hi_closed else hi < hi_bound
    if not (lo_bound < lo <= hi and upper_ok and math.isfinite(lo)):
        interval = f"({lo_bound:g}, {hi_bound:g}{']' if hi_closed else ')'}"
        what = "must be in" if not _is_pair(value) else "must satisfy min <= max, both in"
        raise ValueError(f"{kind}: {name} {what} {interval}; got {value!r}")
    return lo, hi


def _fraction(kind: str, name: str, value) -> float:
    return _float_range(kind, name, value, 0.0, 1.0, scalar_ok=True, hi_closed=False)[0]


# ---------------------------------------------------------------------------------------------
# Families. Each returns bool holes [num, H, W] (True = hole).


def _center_box(rngs, hw, *, fraction):
    h, w = hw
    fraction = _fraction("center_box", "fraction", fraction)
    side_h, side_w = (int(math.floor(fraction * d + 0.5)) for d in hw)
    if min(side_h, side_w) < 1:
        raise ValueError(
            f"center_box: image {h}x{w} too small for fraction={fraction:g}: the hole side "
            f"rounds to 0 px"
        )
    if side_h == h and side_w == w:
        raise ValueError(
            f"center_box: fraction={fraction:g} on a {h}x{w} image rounds to a hole covering "
            "the whole image (no known pixel); use a smaller fraction"
        )
    top, left = (h - side_h) // 2, (w - side_w) // 2
    hole = np.zeros((len(rngs), h, w), bool)
    hole[:, top : top + side_h, left : left + side_w] = True
    return hole


def _random_boxes(rngs, hw, *, num_boxes, box_size, hole_ratio, max_tries):
    h, w = hw
    k_lo, k_hi = _int_range("random_boxes", "num_boxes", num_boxes, 1)
    s_lo, s_hi = _float_range(
        "random_boxes", "box_size", box_size, 0.0, 1.0, scalar_ok=True, hi_closed=True
    )
    r_lo, r_hi = _float_range(
        "random_boxes", "hole_ratio", hole_ratio, 0.0, 1.0, scalar_ok=False, hi_closed=False
    )
    _int_range("random_boxes", "max_tries", max_tries, 1)
    # Box sides in pixels, drawn uniformly from these inclusive integer ranges.
    bh = (int(math.floor(s_lo * h + 0.5)), int(math.floor(s_hi * h + 0.5)))
    bw = (int(math.floor(s_lo * w + 0.5)), int(math.floor(s_hi * w + 0.5)))
    if min(bh[0], bw[0]) < 1:
        raise ValueError(
            f"random_boxes: image {h}x{w} too small for box_size={box_size!r}: the smallest box "
            f"side rounds to 0 px (need box_size min >= {0.5 / min(h, w):.3g})"
        )
    most = min(1.0, k_hi * bh[1] * bw[1] / (h * w))
    least = bh[0] * bw[0] / (h * w)
    if most < r_lo or least > r_hi:
        raise ValueError(
            f"random_boxes: hole_ratio={hole_ratio!r} is unreachable on {h}x{w} images with "
            f"num_boxes={num_boxes!r}, box_size={box_size!r} (reachable: {least:.3g} to "
            f"{most:.3g}); widen hole_ratio or change num_boxes / box_size"
        )
    total = h * w
    holes = np.empty((len(rngs), h, w), bool)
    rows, cols = np.arange(h), np.arange(w)
    for i, rng in enumerate(rngs):
        for _ in range(max_tries):
            k = rng.integers(k_lo, k_hi + 1)
            bhs = rng.integers(bh[0], bh[1] + 1, size=k)
            bws = rng.integers(bw[0], bw[1] + 1, size=k)
            tops = rng.integers(0, h - bhs + 1)
            lefts = rng.integers(0, w - bws + 1)
            in_rows = (rows >= tops[:, None]) & (rows < (tops + bhs)[:, None])  # [k, H]
            in_cols = (cols >= lefts[:, None]) & (cols < (lefts + bws)[:, None])  # [k, W]
            hole = (in_rows[:, :, None] & in_cols[:, None, :]).any(axis=0)
            if r_lo <= hole.sum() / total <= r_hi:
                holes[i] = hole
                break
        else:
            raise ValueError(
                f"random_boxes: no mask with hole ratio in [{r_lo:g}, {r_hi:g}] in "
                f"max_tries={max_tries} draws (mask {i}, {h}x{w}); widen hole_ratio or change "
                "num_boxes / box_size"
            )
    return holes


def _half(rngs, hw, *, side):
    h, w = hw
    if side != "random" and side not in HALF_SIDES:
        raise ValueError(f"half: side must be one of {HALF_SIDES + ('random',)}; got {side!r}")
    if side == "random":
        sides = [HALF_SIDES[rng.integers(len(HALF_SIDES))] for rng in rngs]
    else:
        sides = [side] * len(rngs)
    holes = np.zeros((len(rngs), h, w), bool)
    for i, s in enumerate(sides):  # the hole is the first / last H // 2 rows or W // 2 columns
        if s == "left":
            holes[i, :, : w // 2] = True
        elif s == "right":
            holes[i, :, w - w // 2 :] = True
        elif s == "top":
            holes[i, : h // 2, :] = True
        else:
            holes[i, h - h // 2 :, :] = True
    return holes


def _stroke_segments(rng, hw, n_strokes, n_segments, width, length, max_angle):
    """Random walks: (p0 [S, 2], p1 [S, 2], radius [S]) in (y, x) pixel coordinates."""
    h, w = hw
    short = min(h, w)
    limit = np.array([h, w], np.float64)
    k = rng.integers(n_strokes[0], n_strokes[1] + 1)
    p0s, p1s, radii = [], [], []
    for _ in range(k):
        point = rng.uniform(0.0, 1.0, 2) * limit
        angle = rng.uniform(0.0, 2 * math.pi)
        radius = max(1.0, rng.uniform(*width) * short) / 2
        for _ in range(rng.integers(n_segments[0], n_segments[1] + 1)):
            angle += rng.uniform(-max_angle, max_angle)
            step = rng.uniform(*length) * short
            end = np.clip(point + step * np.array([math.sin(angle), math.cos(angle)]), 0, limit)
            p0s.append(point)
            p1s.append(end)
            radii.append(radius)
            point = end
    return np.array(p0s), np.array(p1s), np.array(radii)


def _draw_capsules(hw, p0, p1, radius) -> np.ndarray:
    """Pixels whose centre is within radius of a segment (a thick line with round caps)."""
    hole = np.zeros(hw, bool)
    for a, b, r in zip(p0, p1, radius, strict=True):
        # Only the segment's bounding box (grown by r) can be covered: rows y0:y1, columns x0:x1.
        y0, x0 = (max(0, int(math.floor(min(a[j], b[j]) - r))) for j in (0, 1))
        y1, x1 = (min(hw[j], int(math.ceil(max(a[j], b[j]) + r)) + 1) for j in (0, 1))
        dy = (np.arange(y0, y1) + 0.5 - a[0])[:, None]  # pixel centre minus a, [h, 1]
        dx = (np.arange(x0, x1) + 0.5 - a[1])[None, :]  # [1, w]
        vy, vx = b[0] - a[0], b[1] - a[1]
        t = np.clip((dy * vy + dx * vx) / max(vy * vy + vx * vx, 1e-12), 0.0, 1.0)
        hole[y0:y1, x0:x1] |= (dy - t * vy) ** 2 + (dx - t * vx) ** 2 <= r * r
    return hole


def _strokes(
    rngs, hw, *, num_strokes, num_segments, width, length, max_angle, hole_ratio, max_tries
):
    h, w = hw
    n_strokes = _int_range("strokes", "num_strokes", num_strokes, 1)
    n_segments = _int_range("strokes", "num_segments", num_segments, 1)
    width = _float_range("strokes", "width", width, 0.0, 1.0, scalar_ok=True, hi_closed=True)
    length = _float_range("strokes", "length", length, 0.0, 2.0, scalar_ok=True, hi_closed=True)
    if not isinstance(max_angle, int | float | np.floating) or not 0 <= max_angle <= math.pi:
        raise ValueError(f"strokes: max_angle must be in [0, pi] radians; got {max_angle!r}")
    r_lo, r_hi = _float_range(
        "strokes", "hole_ratio", hole_ratio, 0.0, 1.0, scalar_ok=False, hi_closed=False
    )
    _int_range("strokes", "max_tries", max_tries, 1)
    total = h * w
    holes = np.empty((len(rngs), h, w), bool)
    for i, rng in enumerate(rngs):
        for _ in range(max_tries):
            segs = _stroke_segments(rng, hw, n_strokes, n_segments, width, length, max_angle)
            hole = _draw_capsules(hw, *segs)
            if r_lo <= hole.sum() / total <= r_hi:
                holes[i] = hole
                break
        else:
            raise ValueError(
                f"strokes: no mask with hole ratio in [{r_lo:g}, {r_hi:g}] in "
                f"max_tries={max_tries} draws (mask {i}, {h}x{w}); widen hole_ratio or change "
                "num_strokes / num_segments / width / length"
            )
    return holes


def _pixel_dropout(rngs, hw, *, p):
    p_lo, p_hi = _float_range("pixel_dropout", "p", p, 0.0, 1.0, scalar_ok=True, hi_closed=False)
    holes = np.empty((len(rngs), *hw), bool)
    for i, rng in enumerate(rngs):
        p_i = rng.uniform(p_lo, p_hi) if p_hi > p_lo else p_lo
        while True:  # redraw the (for real sizes vanishingly rare) all-hole / all-known masks
            hole = rng.random(hw) < p_i
            if 0 < hole.sum() < hole.size:
                break
        holes[i] = hole
    return holes


_FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "center_box": _center_box,
    "random_boxes": _random_boxes,
    "half": _half,
    "strokes": _strokes,
    "pixel_dropout": _pixel_dropout,
}


# ---------------------------------------------------------------------------------------------
# PNG masks


def _png_paths(path_or_paths) -> list[pathlib.Path]:
    if isinstance(path_or_paths, str | os.PathLike):
        items = [path_or_paths]
    elif isinstance(path_or_paths, Sequence) and len(path_or_paths) > 0:
        items = list(path_or_paths)
    else:
        raise ValueError(
            f"png: expected a PNG path, a directory or a list of paths; got {path_or_paths!r}"
        )
    paths = []
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise ValueError(f"png: mask paths must be str or os.PathLike; got {item!r}")
        p = pathlib.Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.png"))
            if not found:
                raise ValueError(f"png: mask directory {str(p)!r} contains no *.png file")
            paths.extend(found)
        elif not p.is_file():
            raise ValueError(f"png: mask file not found: {str(p)!r}")
        else:
            paths.append(p)
    return paths


def _png_gray(path: pathlib.Path) -> np.ndarray:
    """8-bit single-channel values of a mask PNG; refuses colour and transparency."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError) as e:  # PIL raises UnidentifiedImageError (an OSError)
        raise ValueError(f"png: cannot read mask image {str(path)!r}: {e}") from e
    return mask_gray(img, str(path))


def mask_gray(img: Image.Image, name: str = "mask") -> np.ndarray:
    """uint8 ``[H, W]`` gray values of a mask image (PIL), ``name`` naming it in errors.

    Grayscale, 1-bit, palette and RGB(A) images are accepted when every pixel is gray
    (R = G = B) and opaque; colour, transparency and other modes raise ``ValueError``.
    """
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(
            f"png: mask {name!r} has unsupported mode {mode!r}; save it as 8-bit "
            "grayscale (mode 'L') with white = known, black = hole"
        )
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # alpha channel
        alpha = a[..., -1]
        if (alpha != 255).any():
            raise ValueError(
                f"png: mask {name!r} (mode {img.mode!r}) has {(alpha != 255).sum()} "
                "transparent pixels; flatten it to grayscale (white = known, black = hole)"
            )
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[-1] == 3:
        coloured = (a[..., 0] != a[..., 1]) | (a[..., 1] != a[..., 2])
        if coloured.any():
            y, x = np.argwhere(coloured)[0]
            raise ValueError(
                f"png: mask {name!r} is a colour image (mode {mode!r}) with "
                f"{coloured.sum()} coloured pixels (e.g. RGB {tuple(int(c) for c in a[y, x])} at "
                f"row {y}, column {x}); a mask must be grayscale: white = known, black = hole"
            )
        a = a[..., 0]
    elif a.ndim == 3:
        a = a[..., 0]
    return a


def _png_known(path: pathlib.Path, hw, invert: bool, threshold: bool) -> np.ndarray:
    a = _png_gray(path)
    odd = (a != 0) & (a != 255)
    if odd.any() and not threshold:
        values = np.unique(a[odd])
        hint = (
            " The values are all 0/1: the file stores 0/1 instead of 0/255." if a.max() == 1 else ""
        )
        raise ValueError(
            f"png: mask {str(path)!r} is not binary: {odd.sum()} pixels have values other than "
            f"0 and 255 (e.g. {', '.join(str(v) for v in values[:5])}).{hint} Pass "
            "threshold=True to binarise at 128 (>= 128 = white = known)."
        )
    known = a >= 128  # white = known
    if known.shape != hw:
        pil = Image.fromarray(known.astype(np.uint8) * 255)
        known = np.asarray(pil.resize((hw[1], hw[0]), Image.NEAREST)) >= 128
    if invert:
        known = ~known
    if known.all():
        raise ValueError(
            f"png: mask {str(path)!r} has no hole (all white = known){' after invert' * invert}"
            f" at {hw[0]}x{hw[1]}; white = known, black = hole (pass invert=True for the "
            "opposite convention)"
        )
    if not known.any():
        raise ValueError(
            f"png: mask {str(path)!r} has no known pixel (all black = hole)"
            f"{' after invert' * invert} at {hw[0]}x{hw[1]}"
        )
    return known


def from_png(
    path_or_paths, image_size, *, invert: bool = False, threshold: bool = False
) -> np.ndarray:
    """Masks from PNG files: float32 [N, H, W, 1], one per file.

    White (255) = known, black (0) = hole; ``invert=True`` swaps them. A directory stands for its
    ``*.png`` files, sorted by name. Grayscale, 1-bit, palette and RGB(A) files are accepted when
    every pixel is gray (R = G = B) and opaque. Values must be 0 or 255 unless ``threshold=True``,
    which binarises at 128. Masks of another size are resized to ``image_size`` with nearest
    neighbour (after thresholding).
    """
    hw = _image_hw(image_size)
    known = [_png_known(p, hw, bool(invert), bool(threshold)) for p in _png_paths(path_or_paths)]
    return np.stack(known).astype(np.float32)[..., None]


# ---------------------------------------------------------------------------------------------
# Public entry points


def make_masks(kind: str, num: int, image_size, *, seed: int, **options) -> np.ndarray:
    """``num`` masks of family ``kind``: float32 [num, H, W, 1], 1 = known, 0 = hole.

    ``image_size`` is an int (square) or (H, W). Options not given take the defaults in
    ``DEFAULTS[kind]``; docs/MASKS.md defines each family and its options.
    """
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_TYPES)}")
    if not isinstance(num, int | np.integer) or isinstance(num, bool) or num < 1:
        raise ValueError(f"num must be a positive int; got {num!r}")
    hw = _image_hw(image_size)
    seed = _check_seed(seed)
    unknown = sorted(set(options) - set(DEFAULTS[kind]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for mask kind {kind!r}; "
            f"accepted: {', '.join(DEFAULTS[kind])}"
        )
    opts = {**DEFAULTS[kind], **options}
    if kind == "png":
        if opts["paths"] is None:
            raise ValueError("png: the 'paths' option (PNG file, directory or list) is required")
        pool = from_png(
            opts["paths"], hw, invert=bool(opts["invert"]), threshold=bool(opts["threshold"])
        )
        if opts["shuffle"]:
            order = np.random.default_rng(seed).permutation(len(pool))
            pool = pool[order]
        return pool[np.arange(num) % len(pool)]  # cycle through the files
    holes = _FAMILIES[kind](_rngs(seed, int(num)), hw, **opts)
    return (~holes).astype(np.float32)[..., None]


def from_config(mask_config, num: int, image_size, seed: int) -> np.ndarray:
    """``make_masks`` from a ConfigDict / dict holding ``kind`` and the family's options."""
    if hasattr(mask_config, "to_dict"):
        mask_config = mask_config.to_dict()
    elif isinstance(mask_config, str):
        mask_config = {"kind": mask_config}
    if not isinstance(mask_config, dict):
        raise ValueError(
            f"mask config must be a ConfigDict or dict with a 'kind'; got {mask_config!r}"
        )
    options = dict(mask_config)
    if "kind" not in options:
        raise ValueError(
            f"mask config has no 'kind' (one of {', '.join(MASK_TYPES)}); got keys "
            f"{sorted(options)}"
        )
    kind = options.pop("kind")
    return make_masks(kind, num, image_size, seed=seed, **options)


def _as_batch(mask, name: str, channels: int = 1) -> np.ndarray:
    """[H, W] / [H, W, 1] / [B, H, W, 1] -> numeric ndarray [B, H, W, 1] (shape checks only);
    ``channels`` C > 1 also accepts per-channel masks [B, H, W, C]."""
    try:
        import jax

        if isinstance(mask, jax.core.Tracer):
            raise TypeError(
                f"{name} is a traced JAX value; masks are checked on the host, so call "
                "validate_mask outside jit / vmap"
            )
    except ImportError:  # pragma: no cover - jax is a dependency of the project
        pass
    a = np.asarray(mask)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric or bool array; got dtype {a.dtype}")
    expected = "expected [H, W], [H, W, 1] or [B, H, W, 1] with 1 = known, 0 = hole"
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        if a.shape[-1] != 1:
            raise ValueError(
                f"{name} has shape {a.shape}: the channel dim must be 1 ({expected}); "
                "for a batch of [H, W] masks add a trailing axis (mask[..., None])"
                ", for an RGB mask keep one channel"
            )
        a = a[None]
    elif a.ndim == 4:
        if a.shape[-1] not in (1, channels):
            raise ValueError(
                f"{name} has shape {a.shape}: the channel dim must be 1 ({expected}); "
                "a mask is shared by all channels of the image"
            )
    else:
        raise ValueError(f"{name} has rank {a.ndim} (shape {a.shape}); {expected}")
    if 0 in a.shape:
        raise ValueError(f"{name} is empty (shape {a.shape}); {expected}")
    return a


def hole_ratio(masks) -> np.ndarray:
    """Fraction of hole (0) pixels of each mask: float64 [B] (B = 1 for a single mask)."""
    a = _as_batch(masks, "masks").astype(np.float64)
    return 1.0 - a.mean(axis=(1, 2, 3))


def _index_list(idx: np.ndarray) -> str:
    shown = ", ".join(str(i) for i in idx[:10])
    return f"[{shown}{', ...' if len(idx) > 10 else ''}]"


def validate_mask(
    mask, image_shape=None, *, name: str = "mask", per_channel: bool = False
) -> np.ndarray:
    """Check a mask at a public API boundary and return it as float32 [B, H, W, 1].

    Accepts [H, W], [H, W, 1] or [B, H, W, 1] (numeric or bool, 1 = known, 0 = hole).
    ``image_shape`` (or an array with ``.shape``) is (H, W), (H, W, C) or (B, H, W, C); the mask
    must match its H, W, and its batch (a single mask is broadcast to B images). With
    ``per_channel=True`` and an ``image_shape`` that gives C, a [B, H, W, C] mask (one value per
    channel) is accepted too and returned as float32 [B, H, W, C]. Raises ``ValueError`` naming
    the problem: shape, size, NaN/inf, values other than 0/1, or a mask (batch index given) with
    no hole or no known pixel.
    """
    shape = None if image_shape is None else tuple(getattr(image_shape, "shape", image_shape))
    channels = int(shape[-1]) if per_channel and shape and len(shape) in (3, 4) else 1
    a = _as_batch(mask, name, channels)
    b, h, w, _ = a.shape
    if image_shape is not None:
        if len(shape) not in (2, 3, 4):
            raise ValueError(
                f"image_shape must be (H, W), (H, W, C) or (B, H, W, C); got {image_shape!r}"
            )
        img_hw = tuple(int(s) for s in (shape[:2] if len(shape) < 4 else shape[1:3]))
        if (h, w) != img_hw:
            raise ValueError(
                f"{name} is {h}x{w} (shape {a.shape}) but the image is {img_hw[0]}x{img_hw[1]} "
                f"(shape {shape}); masks must have the image's height and width"
            )
        img_b = int(shape[0]) if len(shape) == 4 else 1
        if b != img_b:
            if b != 1:
                raise ValueError(
                    f"{name} has batch {b} (shape {a.shape}) but there are {img_b} images "
                    f"(shape {shape}); give one mask per image or a single mask for all"
                )
            a = np.broadcast_to(a, (img_b, h, w, a.shape[-1]))
    if np.issubdtype(a.dtype, np.floating):
        nan = np.isnan(a)
        if nan.any():
            raise ValueError(f"{name} contains {nan.sum()} NaN values; masks must be 0/1")
        inf = np.isinf(a)
        if inf.any():
            raise ValueError(f"{name} contains {inf.sum()} infinite values; masks must be 0/1")
    odd = (a != 0) & (a != 1)
    if odd.any():
        values = np.unique(a[odd])
        shown = ", ".join(f"{v:g}" for v in values[:5].tolist())
        hint = (
            " The values look like a 0/255 image: divide by 255."
            if set(values.tolist()) <= {255}
            else ""
        )
        raise ValueError(
            f"{name} is not binary: it must contain only 0 (hole) and 1 (known), but "
            f"{odd.sum()} values are "
            f"other than 0/1 ({len(values)} distinct: {shown}{', ...' if len(values) > 5 else ''})"
            f".{hint} Threshold it first, e.g. (mask > 0.5).astype(np.float32)."
        )
    out = np.array(a, dtype=np.float32)  # a fresh, writable copy
    no_hole = np.flatnonzero(out.min(axis=(1, 2, 3)) == 1)
    if len(no_hole):
        raise ValueError(
            f"{name} has no hole (all pixels 1 = known, nothing to inpaint) at batch "
            f"index {_index_list(no_hole)} of {len(out)}"
        )
    no_known = np.flatnonzero(out.max(axis=(1, 2, 3)) == 0)
    if len(no_known):
        raise ValueError(
            f"{name} has no observed pixel (all pixels 0 = hole) at batch index "
            f"{_index_list(no_known)} of {len(out)}"
        )
    return out


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def mask_grid(masks, ncols: int | None = None, pad: int = 2, upscale: int = 1) -> np.ndarray:
    """uint8 picture of masks [N, H, W, 1]: white = known, black = hole, gray gaps between."""
    a = _as_batch(masks, "masks")[..., 0]
    n, h, w = a.shape
    if upscale > 1:
        a = a.repeat(upscale, 1).repeat(upscale, 2)
        h, w = h * upscale, w * upscale
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), 128, np.uint8)
    for i, m in enumerate(a):
        r, c = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = np.where(
            m > 0.5, 255, 0
        )
    return out


def save_masks(path, masks, **meta) -> None:
    """Write masks (validated) to ``path`` (.npz: uint8 0/1 ``masks`` + JSON ``meta``).

    ``meta`` is any JSON-able metadata (e.g. kind, options, seed; tuples come back as lists).
    A PNG grid of the first 64 masks (white = known, black = hole) is written next to it, with
    the same name and suffix ``.png``.
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"mask file must end in .npz; got {str(path)!r}")
    m = validate_mask(masks, name="masks")
    try:
        meta_json = json.dumps(meta, default=_json_default, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_masks: metadata must be JSON-able: {e}") from e
    np.savez_compressed(path, masks=m.astype(np.uint8), meta=np.array(meta_json))
    shown = m[:_GRID_MAX]
    upscale = max(1, 64 // max(m.shape[1:3]))
    Image.fromarray(mask_grid(shown, upscale=upscale)).save(path.with_suffix(".png"))


def load_masks(path) -> tuple[np.ndarray, dict]:
    """Read a ``save_masks`` file: (float32 [B, H, W, 1] masks, metadata dict)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"mask file not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "masks" not in f or "meta" not in f:
                raise ValueError(
                    f"{str(path)!r} is not a save_masks file (arrays {sorted(f.files)}; "
                    "expected 'masks' and 'meta')"
                )
            masks, meta = f["masks"], json.loads(str(f["meta"]))
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read mask file {str(path)!r}: {e}") from e
    return validate_mask(masks, name=f"masks in {path.name}"), meta


# ---------------------------------------------------------------------------------------------
# python -m aid_jax.masks table | examples OUT.png  (the numbers and picture in docs/MASKS.md)


def _example_pngs(folder: pathlib.Path, size: int = 64) -> list[pathlib.Path]:
    """A few hand-drawn-like PNG masks (white = known) for the 'png' row of the examples."""
    from PIL import ImageDraw

    s = size
    shapes = [
        lambda d: d.ellipse((s * 0.25, s * 0.3, s * 0.75, s * 0.7), fill=0),
        lambda d: d.polygon([(s * 0.5, s * 0.1), (s * 0.9, s * 0.85), (s * 0.1, s * 0.85)], 0),
        lambda d: d.rectangle((0, s * 0.6, s, s * 0.8), fill=0),
        lambda d: d.line([(s * 0.1, s * 0.1), (s * 0.5, s * 0.6), (s * 0.9, s * 0.2)], 0, 6),
        lambda d: d.ellipse((s * 0.05, s * 0.05, s * 0.45, s * 0.45), fill=0),
        lambda d: d.rectangle((s * 0.3, 0, s * 0.5, s), fill=0),
        lambda d: d.pieslice((s * 0.1, s * 0.1, s * 0.9, s * 0.9), 0, 120, fill=0),
        lambda d: d.regular_polygon((s * 0.5, s * 0.5, s * 0.3), 5, fill=0),
    ]
    paths = []
    for i, draw in enumerate(shapes):
        img = Image.new("L", (s, s), 255)
        draw(ImageDraw.Draw(img))
        paths.append(folder / f"example_{i}.png")
        img.save(paths[-1])
    return paths


def _main(argv=None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="hole-ratio statistics of the default options (markdown)")
    t.add_argument("--num", type=int, default=1000)
    t.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("examples", help="PNG grid: one row per family")
    e.add_argument("out")
    e.add_argument("--size", type=int, default=32)
    e.add_argument("--cols", type=int, default=8)
    e.add_argument("--upscale", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "table":
        print("| kind | size | mean | std | min | max |")
        print("|---|---|---|---|---|---|")
        for kind in MASK_TYPES[:-1]:
            for size in args.sizes:
                r = hole_ratio(make_masks(kind, args.num, size, seed=args.seed))
                print(
                    f"| {kind} | {size}x{size} | {r.mean():.4f} | {r.std():.4f} | "
                    f"{r.min():.4f} | {r.max():.4f} |"
                )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _example_pngs(pathlib.Path(tmp))
            rows = [
                make_masks(kind, args.cols, args.size, seed=0, paths=tmp)
                if kind == "png"
                else make_masks(kind, args.cols, args.size, seed=0)
                for kind in MASK_TYPES
            ]
        grid = mask_grid(np.concatenate(rows), ncols=args.cols, pad=2, upscale=args.upscale)
        Image.fromarray(grid).save(args.out)
        print(f"wrote {args.out}: rows = {', '.join(MASK_TYPES)}")


if __name__ == "__main__":
    _main()
