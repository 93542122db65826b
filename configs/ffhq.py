"""AID on NVIDIA's FFHQ-64 EDM backbone (edm-ffhq-64x64-uncond-vp.pkl; same DDPM++ architecture
as AFHQv2, dropout 0.05): configs/afhq.py with FFHQ's names.

    python -m aid_jax.main --config=configs/ffhq.py --workdir=runs/aid_ffhq \
        --config.backbone.path=/data/edm-ffhq-64x64-uncond-vp.pkl \
        --config.data.path=/data/ffhq-64x64.zip --config.eval_data.path=/data/ffhq-test

Smoke: --config=configs/ffhq.py:smoke (random full-architecture backbone, synthetic data).
"""

from configs import afhq


def get_config(arg=None):
    return afhq.get_config(arg, name="ffhq", dropout=0.05)
