"""EDM training of the embedded default backbone: SongUNet (DDPM++) on Fashion-MNIST at 32×32.

Run:    python -m aid_jax.main --config=configs/pretrain_fashion_mnist.py \
          --workdir=runs/pretrain_fmnist
Resume: the same command (continues from the newest checkpoint; a different config is refused).
Export: the same command with --config.mode=export (EMA weights -> config.export.out).
Smoke:  --config=configs/pretrain_fashion_mnist.py:smoke (synthetic 8×8 data, tiny net, 4 steps).

Data: `apt-get install -y dataset-fashion-mnist` (Debian), images padded 28 -> 32 with black.
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.mode = "pretrain"
    config.seed = 0
    config.workdir = "runs/pretrain_fmnist"
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist", split="train", path="", pad_to=32)
    )
    # EDMPrecond + SongUNet DDPM++ (positional embedding, standard encoder/decoder, [1,1]
    # resampling), sized for 2-core CPUs: 1,029,905 parameters (4 MB float32); a training step
    # at batch 32 takes 1.34 s on one core, and D runs at ~106 images/s per core
    # (measurements: docs/PRETRAIN.md).
    config.model = ml_collections.ConfigDict(
        dict(
            precond="EDMPrecond",
            model_type="SongUNet",
            img_resolution=32,
            img_channels=1,
            label_dim=0,
            sigma_data=0.5,
            model_channels=16,
            channel_mult=(1, 2, 4),
            num_blocks=2,
            attn_resolutions=(8,),
            dropout=0.0,  # not used: no dropout in training (decision: docs/PRETRAIN.md)
            embedding_type="positional",
            encoder_type="standard",
            decoder_type="standard",
            resample_filter=(1, 1),
        )
    )
    config.export = ml_collections.ConfigDict(dict(out="ported_weights/fashion_mnist_32"))
    config.loss = ml_collections.ConfigDict(dict(P_mean=-1.2, P_std=1.2))
    config.optim = ml_collections.ConfigDict(
        dict(
            lr=5e-4,
            warmup_steps=500,
            grad_clip=1.0,
            ema_halflife_images=50_000,
            ema_rampup=0.05,
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=32,
            num_steps=8_000,
            log_every=50,
            checkpoint_every=250,
            keep=3,
            sample_every=5000,
            num_samples=64,
            sample_steps=18,
            tensorboard=True,
            # Step folder (or folder of step folders) to continue from when the workdir is empty.
            # Empty: a fresh workdir trains from scratch, reproducing the shipped backbone
            # (training is deterministic given the seed; docs/PRETRAIN.md).
            resume_from="",
        )
    )
    if arg == "smoke":
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=64, image_size=8, channels=1, seed=0)
        )
        config.model.update(
            img_resolution=8,
            model_channels=8,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(4,),
        )
        config.train.update(
            batch_size=8,
            num_steps=4,
            log_every=1,
            checkpoint_every=2,
            sample_every=4,
            num_samples=4,
            sample_steps=2,
            tensorboard=False,
            resume_from="",
        )
        config.optim.warmup_steps = 2
    return config
