"""AID on the embedded LATENT default: the project's small VAE and the EDM2 network trained in its
latent space on Fashion-MNIST (issue 18, point 4; docs/LATENT.md) — train the guidance module on
the latents, then evaluate it against the latent baselines, every method as "latent/<method>"
(encode once, sample on the 8×8×4 latents, decode once).

Run:    python -m aid_jax.main --config=configs/fashion_mnist_latent.py --workdir=runs/aid_latent
Only train:     --config.mode=train_aid
Only evaluate:  --config.mode=evaluate --config.methods.aid.options.checkpoint=runs/aid_latent
Networks: ported_weights/vae_fashion_mnist (configs/vae_fashion_mnist.py) and
ported_weights/edm2_fashion_mnist_latent (configs/edm2_fashion_mnist.py), both trained here.
Recipe: the pixel default's (configs/fashion_mnist.py, main_recipe: projection warm start,
Ψ = LPIPS on the hole + 0.1·MSE, exact gradients through the deployed sampler) with Ψ on the
decoded images (aid.psi_space="pixel": LPIPS has no meaning on latents), the class labels of
the images given to the class-conditional EDM2 in training and evaluation.
Masks: the evaluation draws them on the 32×32 pixels; a latent cell (4×4 pixels) is known only
when all its pixels are (aid_jax.latent.latent_mask), so thin strokes become large latent holes.
Smoke:  --config=configs/fashion_mnist_latent.py:smoke (a random tiny VAE and EDM2, synthetic
        16×16 grey images, two AID steps with the pixel Ψ and pixel-space validation LPIPS, a
        tiny evaluation; what the tests run).
"""

import ml_collections

from configs import fashion_mnist, imagenet512

VAE = "ported_weights/vae_fashion_mnist"
EDM2 = "ported_weights/edm2_fashion_mnist_latent"
# The smoke networks: a two-level VAE (factor 2) on grey images and a tiny unconditional EDM2.
SMOKE_VAE = dict(
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 8),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
SMOKE_EDM2 = dict(
    img_resolution=8,
    img_channels=4,
    label_dim=0,
    model_channels=16,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
)


def get_config(arg=None):
    config = fashion_mnist.get_config(None)  # the pixel main job's recipe and harness
    config.workdir = "runs/aid_latent"
    config.backbone = ml_collections.ConfigDict(dict(path=EDM2, random=None))
    config.vae = ml_collections.ConfigDict(dict(path=VAE, random=None, pixel_range="0_1"))
    images = dict(name="fashion_mnist_bundled", split="train", path="", pad_to=32)
    config.data = imagenet512.latents_config(images, config.vae)
    config.eval_data = imagenet512.latents_config(dict(images, split="test"), config.vae)
    config.aid.update(psi_space="pixel")
    config.train.update(masks="center_box,half,strokes")
    config.eval.update(
        # The latent baselines at AID's budget and above; DPS also with its residual on decoded
        # pixels (gradients through the decoder, counted in decoder_backward).
        methods="aid,unguided,replacement,repaint,ddnm,pigdm,dps,dps_pixel",
        use_labels=True,
    )
    config.methods.dps_pixel = ml_collections.ConfigDict(
        dict(method="dps", steps=(10,), options=dict(likelihood="pixel"))
    )
    if arg == "smoke":
        config.backbone = ml_collections.ConfigDict(
            dict(path="", random=dict(precond="Precond", init_kwargs=SMOKE_EDM2, seed=0))
        )
        config.vae.path = ""
        config.vae.random = dict(config=SMOKE_VAE, seed=0)
        synthetic = dict(name="synthetic", image_size=16, channels=1)
        config.data.images = ml_collections.ConfigDict(dict(synthetic, num_images=32, seed=0))
        # 64 images: a validation block of 12 and 52 test images.
        config.eval_data.images = ml_collections.ConfigDict(dict(synthetic, num_images=64, seed=1))
        config.aid.update(num_steps=2, actor_channels=(4, 4))
        config.train.update(
            masks="center_box,half",
            batch_size=8,
            num_steps=2,
            log_every=1,
            eval_every=2,
            checkpoint_every=2,
            val_images=8,
            tensorboard=False,
        )
        config.eval.update(
            methods="aid,dps_pixel",
            masks="center_box",
            num_images=8,
            batch_size=8,
            grid_images=2,
            bootstrap=50,
            use_labels=None,
        )
        config.methods.aid.steps = (2,)
        config.methods.dps_pixel.steps = (2,)
        # LPIPS stays on: AID's validation scores decoded pixels (aid/train.py).
        config.metrics.update(classifier="", reference_num=16, kid_subsets=2)
        config.report.headline_metric = "psnr_hole"
    return config
