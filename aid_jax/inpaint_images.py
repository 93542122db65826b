"""Inpaint your own images: image files or PIL images plus masks -> inpainted PIL images / files.

Command line (``aid_jax/inpaint.py`` forwards to :func:`main`)::

    python -m aid_jax.inpaint --image in.png --mask mask.png --out out.png
    python -m aid_jax.inpaint --image photos/ --mask masks/ --out results/   # folder mode

Python::

    import aid_jax
    from PIL import Image

    out = aid_jax.inpaint_images([Image.open("in.png")], [Image.open("mask.png")])  # [PIL.Image]

The pipeline, the same for both: read each image (8-bit grayscale, RGB, palette, 16-bit
grayscale; opaque; EXIF orientation applied), convert its channels to the backbone's (RGB -> L is
PIL's ITU-R 601-2 luma, L -> RGB repeats the gray value), read its mask (gray, opaque; white =
known pixel by default), binarise it at ``threshold``, bring both to the backbone's resolution
(``resize``), map pixels to [-1, 1] (u8 / 127.5 - 1), run the inpainting method in batches, map
back to uint8 (``aid_jax.images.to_uint8``) and paste the known pixels of the input back
(exactly, in uint8). Every input is checked before anything runs or is written; a problem raises
:class:`InputError` (a ``ValueError``) naming the file and saying what to do, which the command
line prints as one line on stderr (exit status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import pathlib
import sys
import types
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from aid_jax import images as image_utils
from aid_jax import masks as mask_utils

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_METHOD",
    "DEFAULT_STEPS",
    "GREY_LIMIT",
    "InputError",
    "inpaint_images",
    "main",
    "resolve_path",
]

DEFAULT_METHOD = "ddnm"
DEFAULT_STEPS = 20  # of the default method; other methods default to their own step counts
DEFAULT_BACKBONE = "ported_weights/fashion_mnist_32"
# The trained modules shipped for the default backbone: --method aid / deft without a path.
DEFAULT_MODULES = {
    "aid": "ported_weights/aid_fashion_mnist",
    "deft": "ported_weights/deft_fashion_mnist",
}
DEFAULT_BATCH_SIZE = 8
MASK_CONVENTIONS = ("known", "hole")
RESIZE_MODES = ("error", "resize", "center-crop")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# A mask may have anti-aliased edges, but when more than this fraction of its pixels is grey
# (strictly between 10 % and 90 % of the range) it is most likely a photo passed as the mask.
GREY_LIMIT = 0.25
GREY_BAND = (0.1 * 255, 0.9 * 255)
# The checkout (or installed tree) holding aid_jax/ and ported_weights/.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

PROG = "python -m aid_jax.inpaint"
# The methods that run a trained guidance module (--method NAME --NAME PATH) -> their model.
MODULE_METHODS = {"aid": "aid_jax.aid.model", "deft": "aid_jax.deft.model"}


class InputError(ValueError):
    """A bad input (file, image, mask, label, option); the message names it and what to do."""


# ---------------------------------------------------------------------------------------------
# Paths


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
    """``path`` as given if it exists, else (when relative) under the project's root, so that
    ``ported_weights/...`` works from any working directory; the given path if neither exists."""
    p = pathlib.Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    rooted = PROJECT_ROOT / p
    return rooted if rooted.exists() else p


def _list_images(folder: pathlib.Path, what: str) -> list[pathlib.Path]:
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise InputError(
            f"{what} folder {str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
            "check the path"
        )
    return found


def _match_mask(image: pathlib.Path, mask_dir: pathlib.Path) -> pathlib.Path:
    """The mask of ``image`` in ``mask_dir``: the same file name, else the same stem with any
    image suffix (``cat.jpg`` -> ``cat.png``)."""
    same = mask_dir / image.name
    if same.is_file():
        return same
    candidates = [
        p
        for p in sorted(mask_dir.glob(f"{image.stem}.*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(
            f"no mask for image {str(image)!r} in mask folder {str(mask_dir)!r} (masks are "
            f"matched by file name: expected {image.stem}.png or another {image.stem}.* image); "
            "add it, or pass one mask file for every image"
        )
    raise InputError(
        f"image {str(image)!r} matches several masks in {str(mask_dir)!r} "
        f"({', '.join(p.name for p in candidates)}); keep one"
    )


def _sample_paths(out: pathlib.Path, num_samples: int) -> list[pathlib.Path]:
    """out.png -> [out.png] for one sample, [out_0.png, out_1.png, ...] for several."""
    if num_samples == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{j}{out.suffix}") for j in range(num_samples)]


def _write_image(img: Image.Image, path: pathlib.Path) -> None:
    """Write atomically: a hidden temporary file in the same folder, then rename."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Reading and converting images and masks


def _open(path: pathlib.Path, what: str) -> Image.Image:
    if not path.exists():
        raise InputError(f"{what} {str(path)!r}: no such file; check the path")
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} is not a file")
    try:
        with Image.open(path) as img:
            img.load()
            # As viewers show it: a phone photo's EXIF orientation is applied (to masks too).
            return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            f"cannot read {what} {str(path)!r} ({e}); give an image file Pillow reads "
            "(PNG, JPEG, BMP, TIFF, WebP, ...)"
        ) from e


def _pixels(img: Image.Image, name: str) -> np.ndarray:
    """uint8 [H, W] (gray) or [H, W, 3] (RGB) values of an image; refuses transparency."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grayscale
        a = np.asarray(img).astype(np.float64)
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise InputError(
            f"image {name!r} has unsupported mode {mode!r}; save it as 8-bit RGB or grayscale"
        )
    a = np.asarray(img)
    if img.mode in ("LA", "RGBA"):
        alpha = a[..., -1]
        if (alpha != 255).any():
            raise InputError(
                f"image {name!r} has {int((alpha != 255).sum())} transparent pixels; flatten it "
                "onto a background (or save it without alpha) first"
            )
        a = a[..., 0] if img.mode == "LA" else a[..., :3]
    return np.ascontiguousarray(a)


def _to_channels(a: np.ndarray, channels: int, name: str) -> np.ndarray:
    """uint8 [H, W] / [H, W, 3] -> [H, W, channels] (RGB -> L: PIL's luma; L -> RGB: repeat)."""
    if channels == 3:
        return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a
    if channels == 1:
        if a.ndim == 3:
            a = np.asarray(Image.fromarray(a).convert("L"))
        return a[..., None]
    raise InputError(
        f"the backbone works on {channels}-channel arrays (a latent-space model?); images such "
        f"as {name!r} can be inpainted with 1-channel (grayscale) or 3-channel (RGB) backbones "
        "only"
    )


def _known_map(img: Image.Image, name: str, threshold: float, convention: str) -> np.ndarray:
    """bool [H, W], True = known pixel, from a mask image (white = known unless 'hole')."""
    try:
        gray = mask_utils.mask_gray(img, name)
    except ValueError as e:
        raise InputError(str(e).removeprefix("png: ")) from e
    grey = ((gray > GREY_BAND[0]) & (gray < GREY_BAND[1])).mean()
    if grey > GREY_LIMIT:
        raise InputError(
            f"mask {name!r} does not look like a mask: {grey:.0%} of its pixels are grey "
            f"(between 10% and 90% of white; at most {GREY_LIMIT:.0%} may be, for anti-aliased "
            "edges); give a black-and-white image (is it the photo instead of its mask?)"
        )
    white = gray >= threshold * 255.0
    return white if convention == "known" else ~white


def _check_known(known: np.ndarray, name: str, convention: str, where: str) -> None:
    white = "white" if convention == "known" else "black"
    if known.all():
        raise InputError(
            f"mask {name!r} has no hole {where} (every pixel is known = {white} with "
            f"--mask-convention {convention}): nothing to inpaint; check the mask or "
            "--mask-convention / --threshold"
        )
    if not known.any():
        raise InputError(
            f"mask {name!r} has no known pixel {where} (every pixel is a hole with "
            f"--mask-convention {convention}); check the mask or --mask-convention / --threshold"
        )


def _fit_geometry(a: np.ndarray, res: int, resize: str, resample) -> np.ndarray:
    """Crop (center-crop: the central square) and resize [H, W(, C)] to res x res."""
    h, w = a.shape[:2]
    if resize == "center-crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        a = a[top : top + side, left : left + side]
    if a.shape[:2] == (res, res):
        return a
    if a.dtype == np.float32:  # a mask's known map: area-averaged
        return np.asarray(Image.fromarray(a).resize((res, res), resample))
    pil = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    out = np.asarray(pil.resize((res, res), resample))
    return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass
class _Prepared:
    images: np.ndarray  # uint8 [N, H, W, C] at the backbone's shape
    known: np.ndarray  # bool [N, H, W]
    names: list[str]


def _prepare(
    pairs: Sequence[tuple[str, Image.Image, str, Image.Image]],
    image_shape: tuple[int, int, int],
    *,
    threshold: float,
    convention: str,
    resize: str,
) -> _Prepared:
    """Check and convert every (image name, image, mask name, mask) before anything runs."""
    res, _, channels = image_shape
    out_images, out_known = [], []
    for name, img, mask_name, mask in pairs:
        pixels = _to_channels(_pixels(img, name), channels, name)
        known = _known_map(mask, mask_name, threshold, convention)
        h, w = pixels.shape[:2]
        if known.shape != (h, w):
            raise InputError(
                f"mask {mask_name!r} is {known.shape[1]}x{known.shape[0]} but image {name!r} is "
                f"{w}x{h} (width x height); a mask must have its image's size"
            )
        _check_known(known, mask_name, convention, "")
        if (h, w) != (res, res):
            if resize == "error":
                raise InputError(
                    f"image {name!r} is {w}x{h} but the backbone takes {res}x{res} images; pass "
                    "--resize resize (stretch) or --resize center-crop (Python: resize=...), or "
                    "resize it yourself"
                )
            pixels = _fit_geometry(pixels, res, resize, Image.Resampling.LANCZOS)
            # A pixel of the resized mask is known only if everything it covers is known.
            frac = _fit_geometry(known.astype(np.float32), res, resize, Image.Resampling.BOX)
            known = frac >= 1.0 - 1e-4
            _check_known(known, mask_name, convention, f"after --resize {resize} to {res}x{res}")
        # The project's boundary check of a mask (float32 [1, H, W, 1], 0/1, hole and known).
        mask_utils.validate_mask(known, (res, res), name=f"mask {mask_name!r}")
        out_images.append(pixels)
        out_known.append(known)
    return _Prepared(np.stack(out_images), np.stack(out_known), [p[0] for p in pairs])


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class _Model:
    """What runs: a backbone (params, config) and a method, or a trained guidance module (AID,
    DEFT) on its backbone."""

    method: str
    steps: int
    image_shape: tuple[int, int, int]
    label_dim: int
    backbone_name: str
    params: object  # backbone params, or the module's bundle (AIDParams, DEFTParams)
    config: object  # backbone config (None for a module)
    nfe: int  # denoiser evaluations per sample, forward
    nfe_backward: int = 0  # and backward (vector-Jacobian products)


def _opt(name: str) -> str:
    """An option as both interfaces spell it: ``--num-samples (Python: num_samples=)``."""
    return f"--{name.replace('_', '-')} (Python: {name}=)"


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise InputError(f"{_opt(name)} must be an int >= {lo}; got {value!r}")
    return int(value)


def _load_backbone(backbone):
    from aid_jax import backbones

    if isinstance(backbone, backbones.Backbone):
        return backbone, "a Backbone object"
    path = resolve_path(DEFAULT_BACKBONE if backbone is None else backbone)
    if not path.exists():
        raise InputError(
            f"backbone {str(path)!r}: no such file or folder; pass --backbone (Python: "
            "backbone=) a ported folder (python -m aid_jax.port) or an NVIDIA .pkl"
        )
    return backbones.load_backbone(path), str(path)


def _load_model(method: str, backbone, aid, steps, num_samples: int, deft=None) -> _Model:
    from aid_jax import methods

    names = tuple(methods.REGISTRY)
    if method not in names:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(names)}")
    if steps is not None:
        steps = _check_int("steps", steps, 1)
    modules = {"aid": aid, "deft": deft}  # MODULE_METHODS: --method NAME takes --NAME PATH
    for option, value in modules.items():
        if value is not None and method != option:
            raise InputError(
                f"--{option} is only used with --method {option}, not with --method {method}"
            )
    if method in modules:
        return _load_module(method, modules[method], backbone, steps)
    bb, name = _load_backbone(backbone)
    if steps is None:
        steps = (
            DEFAULT_STEPS
            if method == DEFAULT_METHOD
            else methods.method_options(method)["num_steps"]
        )
    nfe, nfe_backward = methods.method_cost(method, **_options(method, steps, num_samples))
    return _Model(
        method,
        steps,
        bb.image_shape,
        int(bb.config.label_dim),
        name,
        bb.params,
        bb.config,
        nfe,
        nfe_backward,
    )


def _load_module(method: str, module, backbone, steps: int | None) -> _Model:
    """A trained guidance module (``--method aid --aid PATH``, ``--method deft --deft PATH``):
    its bundle on the backbone it records (or on ``backbone``, which must be that one), run for
    ``steps`` steps (default: the module's training step count)."""
    from aid_jax import guidance_module, methods

    kind = guidance_module.get_kind(method)
    title, bundle = kind.title, kind.bundle.__name__
    article = "an" if title[0] in "AEIOU" else "a"
    if module is None:
        if backbone is not None:
            raise InputError(
                f"--method {method} with --backbone needs --{method} PATH (Python: {method}=), "
                f"a {title} module trained for that backbone (the shipped "
                f"{DEFAULT_MODULES[method]} is for {DEFAULT_BACKBONE})"
            )
        module = DEFAULT_MODULES[method]
    if isinstance(module, kind.bundle):
        params, name = module, f"of the given {bundle}"
    elif isinstance(module, str | os.PathLike):
        path = resolve_path(module)
        if not path.is_dir():
            raise InputError(
                f"{title} module {str(path)!r}: no such folder; give {article} {title} training "
                f"workdir or an exported module ({kind.state_file} inside)"
            )
        if backbone is not None:
            backbone, _ = _load_backbone(backbone)
        params, name = kind.load(path, backbone=backbone), f"of the {title} module {module}"
    else:
        raise InputError(
            f"--{method} (Python: {method}=) must be a path or {article} {bundle}; got "
            f"{type(module).__name__}"
        )
    k = params.config.num_steps if steps is None else steps
    nfe, nfe_backward = methods.method_cost(method, checkpoint=params, num_steps=k)
    shape = tuple(params.config.image_shape)
    return _Model(method, k, shape, params.label_dim, name, params, None, nfe, nfe_backward)


def _options(method: str, steps: int, num_samples: int) -> dict:
    """A zero-shot method's options here: ``num_steps`` and, for a method whose sample rows
    share work (VIPaint's one fit per image), its samples option = ``num_samples``."""
    from aid_jax import methods

    options = {"num_steps": steps}
    samples_option = methods.get(method).samples_option
    if samples_option:
        options[samples_option] = num_samples
    return options


@functools.lru_cache(maxsize=16)
def _inpainter(method: str, config, options: tuple):
    """The jitted baseline (an ``Inpainter``), cached per (method, backbone config, options):
    repeated calls with the same setup (a notebook, the tests) compile once. Parameters stay a
    call argument."""
    from aid_jax import backbones, methods

    def denoise(params, x, sigma, labels=None):
        return backbones.denoise(params, x, sigma, labels, config=config)

    return methods.make_inpainter(method, denoise, label_dim=int(config.label_dim), **dict(options))


def _check_labels(labels, n: int, model: _Model) -> np.ndarray | None:
    """int64 [n] class ids (one per image) or None; refuses what the backbone cannot take."""
    if labels is None:
        if model.label_dim:
            raise InputError(
                f"the backbone ({model.backbone_name}) is class-conditional ({model.label_dim} "
                f"classes): pass --labels ID (Python: labels=), a class id in "
                f"0..{model.label_dim - 1}"
            )
        return None
    if not model.label_dim:
        raise InputError(
            f"--labels (Python: labels=) given but the backbone ({model.backbone_name}) is "
            "unconditional (no classes); drop --labels"
        )
    ids = [labels] if isinstance(labels, int | np.integer) else list(labels)
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in ids):
        raise InputError(f"labels must be int class ids; got {labels!r}")
    if len(ids) not in (1, n):
        raise InputError(
            f"{len(ids)} labels for {n} images: give one class id for all images or one per "
            "image (in the images' order; in folder mode, sorted by file name)"
        )
    bad = [int(i) for i in ids if not 0 <= i < model.label_dim]
    if bad:
        raise InputError(
            f"label(s) {bad} out of range: the backbone ({model.backbone_name}) has "
            f"{model.label_dim} classes, ids 0..{model.label_dim - 1}"
        )
    return np.broadcast_to(np.asarray(ids, np.int64), (n,)).copy()


def _run(
    model: _Model,
    prepared: _Prepared,
    labels: np.ndarray | None,
    *,
    seed: int,
    num_samples: int,
    batch_size: int,
    paste_back: bool,
    progress: bool,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first image index, uint8 [b, num_samples, H, W, C]) batch by batch.

    Batch k holds images k·batch_size … (the last batch padded with copies of its last image,
    so every batch has one shape and compiles once); row i·num_samples + j is sample j of image
    i of the batch; its noise comes from ``fold_in(key(seed), k)``.
    """
    import jax
    from tqdm import tqdm

    n = len(prepared.images)
    bsz = min(batch_size, n)
    run_batch = _batch_runner(model, num_samples)
    key = jax.random.key(seed)
    with tqdm(total=n, unit="img", desc="inpaint", disable=not progress, leave=False) as bar:
        for k, start in enumerate(range(0, n, bsz)):
            idx = np.minimum(np.arange(start, start + bsz), n - 1)
            u8 = np.repeat(prepared.images[idx], num_samples, axis=0)
            known = np.repeat(prepared.known[idx], num_samples, axis=0)[..., None]
            y = u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
            mask = known.astype(np.float32)
            rows = None if labels is None else np.repeat(labels[idx], num_samples)
            x = run_batch(y, mask, jax.random.fold_in(key, k), rows)
            out = image_utils.to_uint8(x)
            if paste_back:
                out = np.where(known, u8, out)
            b = min(bsz, n - start)
            yield start, out.reshape(bsz, num_samples, *out.shape[1:])[:b]
            bar.update(b)


def _batch_runner(model: _Model, num_samples: int):
    """(y, mask, key, labels) -> raw samples as a NumPy array."""
    if model.method in MODULE_METHODS:  # the module's own inpaint (aid_jax.inpaint for aid)
        inpaint = importlib.import_module(MODULE_METHODS[model.method]).inpaint

        def run_module(y, mask, key, rows):
            extra = {} if rows is None else {"labels": rows}
            res = inpaint(
                model.params, y, mask, key=key, num_steps=model.steps, paste_back=False, **extra
            )
            return np.asarray(res.x)

        return run_module
    options = _options(model.method, model.steps, num_samples)
    fn = _inpainter(model.method, model.config, tuple(sorted(options.items())))

    def run_baseline(y, mask, key, rows):
        return np.asarray(fn(model.params, y, mask, key, labels=rows).x)

    return run_baseline


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)  # mode L or RGB


def _check_options(seed, num_samples, mask_convention, threshold, resize, batch_size):
    _check_int("seed", seed, 0)
    _check_int("num_samples", num_samples, 1)
    _check_int("batch_size", batch_size, 1)
    if mask_convention not in MASK_CONVENTIONS:
        raise InputError(
            f"{_opt('mask_convention')} must be one of {', '.join(MASK_CONVENTIONS)}; got "
            f"{mask_convention!r}"
        )
    if resize not in RESIZE_MODES:
        raise InputError(
            f"{_opt('resize')} must be one of {', '.join(RESIZE_MODES)}; got {resize!r}"
        )
    if not isinstance(threshold, int | float | np.floating) or not 0 < threshold <= 1:
        raise InputError(
            f"{_opt('threshold')} must be in (0, 1] (a fraction of white); got {threshold!r}"
        )


# ---------------------------------------------------------------------------------------------
# Python API


def inpaint_images(
    images,
    masks,
    *,
    method: str = DEFAULT_METHOD,
    backbone=None,
    aid=None,
    deft=None,
    steps: int | None = None,
    seed: int = 0,
    num_samples: int = 1,
    labels=None,
    mask_convention: str = "known",
    threshold: float = 0.5,
    resize: str = "error",
    paste_back: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
):
    """Inpaint PIL images with their masks; what ``python -m aid_jax.inpaint`` runs.

    Args:
        images: A PIL image or a list of them (file paths are read too).
        masks: One mask (PIL image or path) for every image, or a list with one per image.
            Gray values are thresholded at ``threshold`` (a fraction of white: 0.5 -> values
            >= 127.5 are white); with ``mask_convention='known'`` white = known pixel, black =
            hole, with ``'hole'`` the opposite. Masks must have their image's size, be gray and
            opaque, have at most ``GREY_LIMIT`` (25 %) grey pixels (between 10 % and 90 % of
            white: anti-aliased edges, not a photo), and have both a hole and a known pixel.
        method: ``'ddnm'`` (default, 20 steps; needs no trained module), any other name of
            ``aid_jax.methods.REGISTRY`` (``'aid'`` and ``'deft'`` use ``aid`` / ``deft``, by
            default the modules shipped for the default backbone, ``DEFAULT_MODULES``).
        backbone: A ported folder, an NVIDIA pickle or a ``Backbone``; default
            ``ported_weights/fashion_mnist_32`` (relative paths that do not exist from the
            working directory are looked up in the project's root). With ``method='aid'`` or
            ``'deft'`` the default is the backbone the module records.
        aid: A trained AID module (workdir or export folder, or ``AIDParams``), for ``'aid'``;
            default ``ported_weights/aid_fashion_mnist`` (the default backbone's).
        deft: A trained DEFT h-network (workdir or export folder, or ``DEFTParams``), for
            ``'deft'``; default ``ported_weights/deft_fashion_mnist``.
        steps: Sampler steps (default: 20 for ddnm, the method's default otherwise, the module's
            training step count for aid and deft).
        seed: Seed of the noise. Batch k's noise is ``fold_in(key(seed), k)``: the same seed,
            images (in order) and ``batch_size`` give the same outputs.
        num_samples: Samples per image.
        labels: Class id(s) for a class-conditional backbone: one int for all images or one per
            image. Required by conditional backbones, refused by unconditional ones.
        mask_convention: ``'known'`` (white = known pixel) or ``'hole'`` (white = hole).
        threshold: Mask binarisation threshold in (0, 1], a fraction of white.
        resize: For images whose size differs from the backbone's: ``'error'`` (refuse),
            ``'resize'`` (stretch to the backbone's size) or ``'center-crop'`` (crop the central
            square, then resize). Images use Lanczos resampling; a pixel of the resized mask is
            known only if everything it covers is known.
        paste_back: Copy the known pixels of the (converted, resized) input into the output,
            exactly; ``False`` returns the method's raw sample.
        batch_size: Images per batch (each with ``num_samples`` rows).
        progress: Show a tqdm progress bar.

    Returns:
        One PIL image per input image at the backbone's resolution, with the backbone's channels
        (mode ``'L'`` or ``'RGB'``): a list for ``num_samples == 1``, else a list of lists
        ``out[i][j]`` = sample j of image i. (A single image in gives a list of one.)

    Raises:
        InputError (a ValueError): for any bad input, naming it and saying what to do.
    """
    _check_options(seed, num_samples, mask_convention, threshold, resize, batch_size)
    image_list = [images] if isinstance(images, Image.Image | str | os.PathLike) else list(images)
    if not image_list:
        raise InputError("no images given")
    if isinstance(masks, Image.Image | str | os.PathLike):
        mask_list = [masks] * len(image_list)
    else:
        mask_list = list(masks)
        if len(mask_list) == 1:
            mask_list = mask_list * len(image_list)
    if len(mask_list) != len(image_list):
        raise InputError(
            f"{len(mask_list)} masks for {len(image_list)} images: give one mask for all images "
            "or one per image"
        )
    pairs = [
        (*_named(img, f"image {i}", "image"), *_named(mask, f"mask {i}", "mask"))
        for i, (img, mask) in enumerate(zip(image_list, mask_list, strict=True))
    ]
    model = _load_model(method, backbone, aid, steps, num_samples, deft)
    prepared = _prepare(
        pairs, model.image_shape, threshold=threshold, convention=mask_convention, resize=resize
    )
    ids = _check_labels(labels, len(pairs), model)
    out: list = []
    for _, batch in _run(
        model,
        prepared,
        ids,
        seed=seed,
        num_samples=num_samples,
        batch_size=batch_size,
        paste_back=paste_back,
        progress=progress,
    ):
        for samples in batch:
            pils = [_pil(s) for s in samples]
            out.append(pils[0] if num_samples == 1 else pils)
    return out


def _named(item, default: str, what: str) -> tuple[str, Image.Image]:
    if isinstance(item, str | os.PathLike):
        return str(item), _open(pathlib.Path(item), what)
    if not isinstance(item, Image.Image):
        raise InputError(f"{default} must be a PIL image or a file path; got {type(item).__name__}")
    return getattr(item, "filename", "") or default, ImageOps.exif_transpose(item)


# ---------------------------------------------------------------------------------------------
# Command line

# Shown by --help; README.md quotes them and tests/test_readme.py runs them.
EXAMPLES = (
    "python -m aid_jax.inpaint --image docs/examples/pullover.png "
    "--mask docs/examples/center_box_mask.png --out pullover_inpainted.png",
    "python -m aid_jax.inpaint --method aid --image docs/examples "
    "--mask docs/examples/center_box_mask.png --out runs/inpainted --num-samples 4",
)
_DESCRIPTION = """\
Inpaint your own images with a frozen diffusion backbone.

Single file:  python -m aid_jax.inpaint --image in.png --mask mask.png --out out.png
Folder mode:  python -m aid_jax.inpaint --image imgs/ --mask masks/ --out results/
              (--mask a folder: masks matched by file name stem; --mask a file: one mask for
              every image, skipped if it lies in the image folder; outputs
              <out>/<image stem>.png)
Try it (from a checkout; README.md quotes and tests these):
{examples}
Mask convention (default --mask-convention known): WHITE = KNOWN pixel (kept), BLACK = HOLE
(inpainted); --mask-convention hole swaps them. Mask gray values are thresholded at
--threshold (default 0.5 of white: >= 128 is white). Masks must have their image's size, be
gray and opaque, have at most 25% grey pixels (10%..90% of white: anti-aliased edges are
fine, a photo is not) and both a hole and a known pixel.
""".replace("{examples}", "".join(f"  {command}\n" for command in EXAMPLES) + "\n")

_EPILOG = """\
Images are read as 8-bit RGB or grayscale (palette and 16-bit gray are converted, EXIF
orientation applied; transparency is refused) and converted to the backbone's channels: RGB ->
grayscale for a 1-channel backbone (PIL's ITU-R 601-2 luma), grayscale -> RGB (repeated) for a
3-channel one. Outputs have the backbone's resolution and channels; folder mode writes PNGs, a
single --out file's suffix picks the format (PNG keeps the known pixels exact). With
--num-samples N > 1, out.png becomes out_0.png ... out_{N-1}.png. Noise: batch k of
--batch-size images draws from fold_in(key(--seed), k), so the same seed, images and batch size
give the same outputs. Nothing is written until every input is checked; files are written under
a temporary name and renamed. Exit status: 0 done, 1 bad input (one line on stderr), 2 bad
command line.
"""


def _parser():
    from aid_jax import methods

    names = tuple(methods.REGISTRY)
    p = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--image", required=True, metavar="PATH", help="an image file, or a folder of images"
    )
    io.add_argument(
        "--mask",
        required=True,
        metavar="PATH",
        help="a mask file (used for every image), or a folder of masks matched by file name",
    )
    io.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output image file (e.g. out.png), or a folder (created if needed) in folder mode",
    )
    io.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (default: refuse)"
    )
    m = p.add_argument_group("method")
    m.add_argument(
        "--method",
        choices=names,
        default=DEFAULT_METHOD,
        help=f"inpainting method (default: {DEFAULT_METHOD} with {DEFAULT_STEPS} steps; aid and "
        f"deft use the modules shipped for the default backbone, {DEFAULT_MODULES['aid']} and "
        f"{DEFAULT_MODULES['deft']}, unless --aid / --deft name another)",
    )
    m.add_argument(
        "--steps",
        type=int,
        metavar="N",
        default=None,
        help=f"sampler steps (default: {DEFAULT_STEPS} for {DEFAULT_METHOD}, the method's own "
        "default otherwise, the module's training step count for aid and deft)",
    )
    m.add_argument(
        "--backbone",
        default=None,
        metavar="PATH",
        help=f"ported backbone folder or NVIDIA .pkl (default: {DEFAULT_BACKBONE}, found from any "
        "working directory; for --method aid / deft: the backbone the module records)",
    )
    m.add_argument(
        "--aid",
        default=None,
        metavar="PATH",
        help=f"trained AID module (workdir or export folder; default {DEFAULT_MODULES['aid']})",
    )
    m.add_argument(
        "--deft",
        default=None,
        metavar="PATH",
        help="trained DEFT h-network (workdir or export folder; default "
        f"{DEFAULT_MODULES['deft']})",
    )
    m.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        metavar="ID",
        help="class id(s) for a class-conditional backbone: one for all images, or one per image "
        "(folder mode: in sorted file-name order)",
    )
    m.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed (default: 0)")
    m.add_argument(
        "--num-samples", type=int, default=1, metavar="N", help="samples per image (default: 1)"
    )
    m.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        default=DEFAULT_BATCH_SIZE,
        help=f"images per batch (default: {DEFAULT_BATCH_SIZE})",
    )
    k = p.add_argument_group("masks and images")
    k.add_argument(
        "--mask-convention",
        choices=MASK_CONVENTIONS,
        default="known",
        help="known (default): white = known pixel, black = hole; hole: white = hole",
    )
    k.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        default=0.5,
        help="mask binarisation threshold, a fraction of white in (0, 1] (default: 0.5, i.e. "
        "gray >= 128 is white)",
    )
    k.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="error",
        help="images whose size differs from the backbone's: error (default: refuse), resize "
        "(stretch), center-crop (central square, then resize); masks follow",
    )
    k.add_argument(
        "--paste-back",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the known input pixels into the output exactly (default: on)",
    )
    k.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    return p


def _plan(args) -> tuple[list[tuple[pathlib.Path, pathlib.Path]], list[list[pathlib.Path]]]:
    """[(image, mask)] and the output paths of each image; checks files and outputs."""
    image = pathlib.Path(args.image).expanduser()
    mask = pathlib.Path(args.mask).expanduser()
    out = pathlib.Path(args.out).expanduser()
    if not image.exists():
        raise InputError(f"--image {str(image)!r}: no such file or folder; check the path")
    if not mask.exists():
        raise InputError(f"--mask {str(mask)!r}: no such file or folder; check the path")
    folder = image.is_dir()
    image_files = _list_images(image, "image") if folder else [image]
    if folder and mask.is_file():  # a mask kept among the images is not an image to inpaint
        image_files = [f for f in image_files if f.resolve() != mask.resolve()]
        if not image_files:
            raise InputError(f"image folder {str(image)!r} holds no image besides the mask")
    if mask.is_dir():
        if folder and mask.resolve() == image.resolve():
            raise InputError(
                f"--mask {str(mask)!r} is the --image folder; keep the masks in their own folder "
                "(matched by file name) or pass one mask file"
            )
        pairs = [(f, _match_mask(f, mask)) for f in image_files]
    else:
        pairs = [(f, mask) for f in image_files]
    if folder:
        if out.resolve() == image.resolve():
            raise InputError(
                f"--out {str(out)!r} is the --image folder; give another output folder"
            )
        if out.exists() and not out.is_dir():
            raise InputError(
                f"--out {str(out)!r} is a file, but --image is a folder: give an output folder"
            )
        bases = [out / f"{f.stem}.png" for f in image_files]
    elif out.is_dir():
        bases = [out / f"{image.stem}.png"]
    else:
        if out.suffix.lower() not in Image.registered_extensions():
            raise InputError(
                f"--out {str(out)!r}: give an image file name such as out.png (the suffix picks "
                "the format; PNG keeps the known pixels exact), or an existing folder"
            )
        bases = [out]
    outputs = [_sample_paths(b, args.num_samples) for b in bases]
    flat = [p for paths in outputs for p in paths]
    if len(set(flat)) != len(flat):
        seen: set[pathlib.Path] = set()
        dup = next(p for p in flat if p in seen or seen.add(p))
        same = [str(f) for f, b in zip(image_files, bases, strict=True) if b.stem == dup.stem]
        raise InputError(
            f"images {', '.join(same)} would all be written to {str(dup)!r}; rename one of them"
        )
    inputs = {p.resolve() for pair in pairs for p in pair}
    for p in flat:
        if p.resolve() in inputs:
            raise InputError(
                f"output {str(p)!r} is one of the inputs; choose another --out (outputs never "
                "replace inputs)"
            )
    existing = [p for p in flat if p.exists()]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(
            f"output {str(existing[0])!r} exists{more}; pass --overwrite to replace it, or choose "
            "another --out"
        )
    return pairs, outputs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aid_jax.inpaint``: see ``--help``. Returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_options(
            args.seed,
            args.num_samples,
            args.mask_convention,
            args.threshold,
            args.resize,
            args.batch_size,
        )
        pairs, outputs = _plan(args)
        opened = [
            (str(img), _open(img, "image"), str(mask), _open(mask, "mask")) for img, mask in pairs
        ]
        model = _load_model(
            args.method,
            args.backbone,
            args.aid,
            args.steps,
            args.num_samples,
            args.deft,
        )
        prepared = _prepare(
            opened,
            model.image_shape,
            threshold=args.threshold,
            convention=args.mask_convention,
            resize=args.resize,
        )
        ids = _check_labels(args.labels, len(opened), model)
        folder = pathlib.Path(args.image).expanduser().is_dir()
        for parent in sorted({p.parent for paths in outputs for p in paths}):
            parent.mkdir(parents=True, exist_ok=True)  # everything is checked: now write
        written = 0
        for start, batch in _run(
            model,
            prepared,
            ids,
            seed=args.seed,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            paste_back=args.paste_back,
            progress=folder and not args.quiet,
        ):
            for i, samples in enumerate(batch, start):
                for path, sample in zip(outputs[i], samples, strict=True):
                    _write_image(_pil(sample), path)
                    written += 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # InputError, BackboneError, AIDError, DEFTError, files
        message = " ".join(str(e).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    if not args.quiet:
        files = [str(p) for paths in outputs for p in paths]
        shown = ", ".join(files) if len(files) <= 3 else f"{len(files)} files ({files[0]}, ...)"
        back = f" + {model.nfe_backward} backward" if model.nfe_backward else ""
        print(
            f"wrote {shown} ({model.method}, {model.steps} steps, NFE {model.nfe}{back} per sample)"
        )
    return 0


class _CallableModule(types.ModuleType):
    """``aid_jax.inpaint_images`` names this module and its function: the first use of the lazy
    package attribute imports this module, which makes the attribute this module object from
    then on. Calling it calls :func:`inpaint_images`, so ``aid_jax.inpaint_images(...)`` always
    works."""

    def __call__(self, *args, **kwargs):
        return inpaint_images(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
