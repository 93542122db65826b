"""Deployment options of a trained AID module, chosen on the validation block (never a test
image): the shipped module at 10 Euler steps, deterministic (the default) and with EDM's churn
(S_churn, in its window [S_min, S_max] with S_noise; no extra NFE) — one run, so every entry has
the same images, masks and noise (paired), 1,000 images per mask with FID_LeNet.

Run:    python -m aid_jax.main --config=configs/aid_deploy_sweep.py --workdir=runs/aid_churn
Other module:  --config.module=runs/aid/best
"""

import ml_collections

from configs import eval_fashion_mnist

# entry -> S_churn (per-step γ = min(S_churn / K, √2 − 1): 0.1, 0.2, 0.414 at K = 10)
CHURN = {"aid": 0.0, "aid_churn1": 1.0, "aid_churn2": 2.0, "aid_churn5": 5.0}
WINDOW = dict(S_min=0.05, S_max=50.0, S_noise=1.003)  # EDM's ImageNet-64 settings


def get_config(arg=None):
    config = eval_fashion_mnist.get_config(None)
    config.module = "ported_weights/aid_fashion_mnist"
    config.eval.update(
        subset="validation",
        num_images=1000,
        masks="center_box,half,strokes",
        batch_size=100,
        methods=",".join(CHURN),
    )
    entries = {}
    for name, churn in CHURN.items():
        options = dict(checkpoint=config.get_ref("module"), solver="euler", S_churn=churn)
        if churn:
            options.update(WINDOW)
        entries[name] = eval_fashion_mnist._method("aid", (10,), **options)
        entries[name].family = name  # one point each (they share the NFE)
    config.methods = ml_collections.ConfigDict(entries)
    if arg == "smoke":
        config.eval.update(num_images=8, batch_size=8, masks="center_box")
        config.metrics.update(lpips="", classifier="")
        config.report.headline_metric = "psnr_hole"
    return config
