"""A small VAE of the SD ``AutoencoderKL`` family on Fashion-MNIST: the encoder/decoder of the
embedded latent default (issue 18, point 4; aid_jax/vae_train.py, docs/LATENT.md).

Run:    python -m aid_jax.main --config=configs/vae_fashion_mnist.py --workdir=runs/vae_fmnist
Resume: the same command (continues from the newest checkpoint; another config is refused).
Export: the same command with --config.mode=export_vae (EMA weights, the latent whitening
        measured on training images and the held-out reconstruction error -> config.export.out).
Smoke:  --config=configs/vae_fashion_mnist.py:smoke (synthetic 8×8 data, a tiny VAE, 4 steps).
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.mode = "train_vae"
    config.seed = 0
    config.workdir = "runs/vae_fmnist"
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="train", path="", pad_to=32)
    )
    config.eval_data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="test", path="", pad_to=32)
    )
    # AutoencoderKL (diffusers' names): three levels, so 32×32×1 images <-> 8×8×4 latents (the
    # downsampling factor 4; sd-vae-ft-mse has 8 on 512×512×3), one resnet per level, the mid
    # block's attention kept.
    config.vae = ml_collections.ConfigDict(
        dict(
            in_channels=1,
            out_channels=1,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=32,
            mid_block_add_attention=True,
        )
    )
    config.loss = ml_collections.ConfigDict(
        dict(l2_weight=0.0, lpips_weight=0.5, lpips_net="alex", kl_weight=1e-6)
    )
    config.optim = ml_collections.ConfigDict(
        dict(lr=1e-3, warmup_steps=200, grad_clip=1.0, ema=0.999)
    )
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=64,
            # The shipped VAE: 2,500 steps (held-out MSE 0.0015 on [0, 1] pixels, still falling
            # slowly; ~1.6 s/step on one core — longer runs are a resume away).
            num_steps=2500,
            log_every=50,
            checkpoint_every=250,
            keep=3,
            sample_every=500,  # reconstructions of num_samples held-out images
            num_samples=32,
            tensorboard=True,
        )
    )
    config.export = ml_collections.ConfigDict(
        dict(out="ported_weights/vae_fashion_mnist", stat_images=4096, quality_images=2000)
    )
    if arg == "smoke":
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=64, image_size=8, channels=1, seed=0)
        )
        config.eval_data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=32, image_size=8, channels=1, seed=1)
        )
        config.vae.update(block_out_channels=(8, 8), norm_num_groups=4, sample_size=8)
        config.loss.lpips_weight = 0.0
        config.optim.warmup_steps = 1
        config.train.update(
            batch_size=8,
            num_steps=4,
            log_every=2,
            checkpoint_every=2,
            sample_every=2,
            num_samples=8,
            tensorboard=False,
        )
        config.export.update(out="", stat_images=16, quality_images=8)
    return config
