"""AID on ImageNet-512 under the latent EDM2 pipeline (docs/LATENT.md): train the guidance module
on the latents of a user's EDM2 network and SD VAE, then evaluate it against the baselines, every
method in latent space ("latent/<method>", aid_jax.latent).

Run (train, then evaluate into <workdir>/eval):
    python -m aid_jax.main --config=configs/imagenet512.py --workdir=runs/aid_in512 \\
        --config.backbone.path=edm2-img512-xs-2147483-0.135.pkl \\
        --config.vae.path=sd-vae-ft-mse \\
        --config.data.images.path=imagenet-512x512-train.zip \\
        --config.eval_data.images.path=imagenet-512x512-val.zip
Only evaluate:  --config.mode=evaluate --config.methods.aid.options.checkpoint=runs/aid_in512
Inputs: an EDM2 latent pickle (NVlabs/edm2, read without torch); the diffusers folder of
sd-vae-ft-mse (config.json + diffusion_pytorch_model.safetensors) or its ported folder
(python -m aid_jax.port); images as an EDM dataset_tool zip (data.images.name='edm_zip', labels
from its dataset.json) or a folder (data.images.name='folder', labels='subdirs' or
'dataset_json'), resized to 512 on the fly (resize_to). The networks are class-conditional: the
evaluation needs the images' labels (eval.use_labels=True: unlabelled data is an error).
Training data: the images encoded by the VAE once per image (data.name='vae_latents', posterior
mean, EDM2's scaling; cached in memory, cache=False for large sets); AID's masks are drawn on
the 64×64 latent grid, the evaluation's on the 512×512 pixels (mapped to the grid by
aid_jax.latent.latent_mask).
Smoke:  --config=configs/imagenet512.py:smoke — a random EDM2 of the tiny fixture architecture
        (tests/testdata/edm2_tiny_cond.json: 16×16×4 latents, 10 classes; EDM2-XS does not fit
        the tests' CPU budget) and a random 2-level VAE (factor 2, 32×32 images), synthetic
        data; two AID steps and a tiny evaluation (what the tests run).

Class labels: AID's training and validation give the backbone the images' classes
(train.use_labels=None: on for labelled data; False = the zero class vector). Ψ compares latents
by default; --config.aid.psi_space=pixel takes it on the decoded images (e.g. with
aid.psi_lpips). AID's validation decodes its samples, so a metrics.lpips net scores pixels; it
stays "" here because decoding 512×512 validation images at every evaluation is costly on a CPU.
"""

import ml_collections

from configs import fashion_mnist

# EDM2's ImageNet-512 sampler: ρ = 7, σ ∈ [0.002, 80] (the methods' default schedule).
TINY_EDM2 = dict(
    img_resolution=16,
    img_channels=4,
    label_dim=10,
    model_channels=32,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(8,),
    dropout=0.0,
)
SMALL_VAE = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=32,
)


def _method(method: str, steps, **options) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(method=method, steps=tuple(steps), options=ml_collections.ConfigDict(options))
    )


def latents_config(images: dict, vae) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict(
        dict(name="vae_latents", images=ml_collections.ConfigDict(images), cache=True)
    )
    data.vae = vae  # the same ConfigDict: --config.vae.path reaches the data too
    return data


def get_config(arg=None):
    config = fashion_mnist.trainer_defaults(None)
    config.workdir = "runs/aid_imagenet512"
    config.backbone = ml_collections.ConfigDict(dict(path="", random=None))
    # The VAE (aid_jax.latent.space_from_config): a diffusers or ported folder; pixel_range
    # "0_1" = EDM2's convention (the VAE sees x/255).
    config.vae = ml_collections.ConfigDict(dict(path="", random=None, pixel_range="0_1"))
    images = dict(name="edm_zip", path="", labels="auto", resize_to=512, channels=3)
    config.data = latents_config(images, config.vae)
    config.eval_data = latents_config(dict(images), config.vae)
    config.aid.update(
        num_steps=16,
        psi_space="latent",  # "pixel": Ψ on the decoded images (gradients through the decoder)
        actor_channels=(64, 128, 128),
        actor_emb_dim=64,
        critic_channels=(64, 128, 256),
        critic_hidden=256,
        critic_emb_dim=64,
    )
    config.train.update(masks="center_box,half,random_boxes", batch_size=32, num_steps=2000)
    config.train.val_images = 16
    config.eval.update(
        methods="aid,replacement,ddnm,pigdm,dps,dps_pixel",
        masks="center_box,half,strokes",
        num_images=100,
        batch_size=8,
        use_labels=True,
        png_upscale=1,
        grid_images=4,
    )
    config.methods.aid.steps = (16,)
    config.methods.aid_heun.steps = (16,)
    config.methods.unguided.steps = (32,)
    config.methods.replacement.steps = (16, 32)
    config.methods.ddnm.steps = (32,)
    config.methods.pigdm.steps = (32,)
    config.methods.dps.steps = (32,)
    # DPS with its residual on decoded pixels (gradients through the decoder, counted).
    config.methods.dps_pixel = _method("dps", (32,), likelihood="pixel", paste_pixels=False)
    config.metrics.update(
        lpips="",  # see the module docstring; --config.metrics.lpips=alex for mode=evaluate
        classifier="",  # the LeNet is Fashion-MNIST's
        inception=True,
        reference_num=10_000,
    )
    config.report.headline_metric = "psnr_hole"
    if arg == "smoke":
        config.backbone = ml_collections.ConfigDict(
            dict(path="", random=dict(precond="Precond", init_kwargs=TINY_EDM2, seed=0))
        )
        config.vae.random = dict(config=SMALL_VAE, seed=0)
        synthetic = dict(name="synthetic", image_size=32, channels=3, num_classes=10)
        config.data.images = ml_collections.ConfigDict(dict(synthetic, num_images=32, seed=0))
        # 64 images: a validation block of 12 and 52 test images.
        config.eval_data.images = ml_collections.ConfigDict(dict(synthetic, num_images=64, seed=1))
        config.aid.update(
            num_steps=2,
            actor_channels=(4, 4),
            actor_emb_dim=8,
            critic_channels=(4, 8),
            critic_hidden=8,
            critic_emb_dim=8,
        )
        config.train.update(
            masks="center_box,half",
            batch_size=16,  # 8 observations × (ε, −ε): one per device of the tests' mesh
            num_steps=2,
            critic_warmup=1,
            log_every=1,
            eval_every=2,
            checkpoint_every=2,
            val_images=8,
            tensorboard=False,
        )
        config.eval.update(
            methods="aid,replacement",  # latent/dps with likelihood="pixel": tests/test_latent.py
            masks="center_box",
            num_images=8,
            batch_size=8,
            grid_images=2,
            bootstrap=50,
        )
        config.methods.aid.steps = (2,)
        config.methods.replacement.steps = (2,)
        config.methods.dps_pixel.steps = (2,)
        config.metrics.update(inception=False, reference_num=16, kid_subsets=2)
    return config
