"""EDM2 in the latent space of the project's small VAE on Fashion-MNIST: the denoiser of the
embedded latent default (issue 18, point 4; aid_jax/edm2_train.py, docs/LATENT.md).

Run:    python -m aid_jax.main --config=configs/edm2_fashion_mnist.py --workdir=runs/edm2_fmnist
        (needs the VAE: configs/vae_fashion_mnist.py, exported to ported_weights/vae_fashion_mnist)
Resume: the same command (continues from the newest checkpoint; another config is refused).
Export: the same command with --config.mode=export_edm2 (the baked EMA weights ->
        config.export.out; loads with aid_jax.load_backbone like a ported NVIDIA EDM2 pickle).
Smoke:  --config=configs/edm2_fashion_mnist.py:smoke (synthetic 8×8 images, a tiny VAE given by
        --config.vae.path, a tiny network, 4 steps).
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.mode = "train_edm2"
    config.seed = 0
    config.workdir = "runs/edm2_fmnist"
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="train", path="", pad_to=32)
    )
    config.vae = ml_collections.ConfigDict(dict(path="ported_weights/vae_fashion_mnist"))
    # EDM2's Precond + UNet on the VAE's 8×8×4 latents, class-conditional on the ten garment
    # classes (as EDM2's ImageNet networks are on theirs): 2,269,823 parameters, 9.1 MB float32;
    # with the 3.8 MB VAE the latent default is 12.9 MB (issue 18: ≤ 15 MB).
    config.model = ml_collections.ConfigDict(
        dict(
            img_resolution=8,
            img_channels=4,
            label_dim=10,
            model_channels=48,
            channel_mult=(1, 2),
            num_blocks=2,
            attn_resolutions=(4,),
            channels_per_head=32,
            dropout=0.0,
        )
    )
    # EDM2's ImageNet-512 latent settings: ln σ ~ N(−0.4, 1.0²).
    config.loss = ml_collections.ConfigDict(dict(P_mean=-0.4, P_std=1.0))
    config.optim = ml_collections.ConfigDict(
        dict(
            lr=0.01,  # EDM2's reference rate (XS: 0.012) for unit-RMS weights
            ref_steps=2000,  # 1/√ decay after this many steps
            warmup_steps=200,
            grad_clip=0.0,
            ema_halflife_images=100_000,
            ema_rampup=0.05,
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=64,
            num_steps=10_000,
            log_every=50,
            checkpoint_every=250,
            keep=3,
            sample_every=1000,
            num_samples=40,  # four per class
            sample_steps=18,
            tensorboard=True,
        )
    )
    config.export = ml_collections.ConfigDict(dict(out="ported_weights/edm2_fashion_mnist_latent"))
    if arg == "smoke":
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=64, image_size=8, channels=1, seed=0)
        )
        config.vae.path = ""  # the test writes a tiny VAE and sets it
        config.model.update(
            img_resolution=4,
            label_dim=0,
            model_channels=8,
            channel_mult=(1,),
            num_blocks=1,
            attn_resolutions=(),
            channels_per_head=8,
        )
        config.optim.update(warmup_steps=1, ref_steps=2)
        config.train.update(
            batch_size=8,
            num_steps=4,
            log_every=2,
            checkpoint_every=2,
            sample_every=2,
            num_samples=4,
            sample_steps=2,
            tensorboard=False,
        )
        config.export.out = ""
    return config
