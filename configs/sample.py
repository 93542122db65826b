"""Sample images from a frozen backbone with the EDM Heun sampler and write a PNG grid.

Run:   python -m aid_jax.main --config=configs/sample.py --workdir=runs/sample
Other backbone: --config.backbone.path=path/to/edm-afhqv2-64x64-uncond-vp.pkl (or a folder
written by `python -m aid_jax.port`), --config.sampler.num_steps=40.
Expected: runs/sample/samples.png, samples.npz, summary.json (NFE 2·num_steps − 1 for Heun).

The default backbone is the project's own Fashion-MNIST SongUNet in ported_weights/fashion_mnist_32
(docs/PRETRAIN.md). The `:smoke` variant samples the tiny random-weight EDM test fixture straight
from its NVIDIA-format pickle (read without executing any code from it).
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.mode = "sample"
    config.seed = 0
    config.workdir = "runs/sample"
    config.backbone = ml_collections.ConfigDict({"path": "ported_weights/fashion_mnist_32"})
    config.sampler = ml_collections.ConfigDict(
        dict(
            solver="heun",
            num_steps=18,
            sigma_min=0.002,
            sigma_max=80.0,
            rho=7.0,
            S_churn=0.0,
            S_min=0.0,
            S_max=float("inf"),
            S_noise=1.0,
        )
    )
    config.sample = ml_collections.ConfigDict(
        dict(num_images=64, batch_size=32, class_label=0, png_upscale=3)
    )
    if arg == "smoke":
        config.backbone.path = "tests/testdata/edm_ddpmpp_tiny.pkl"
        config.sampler.num_steps = 4
        config.sample.update(num_images=4, batch_size=4)
    return config
