"""Training a small VAE of diffusers' ``AutoencoderKL`` family (issue 18, point 4: the encoder and
decoder of the embedded latent default; the architecture is ``aid_jax.backbones.sd_vae``'s, so
the result loads, encodes and decodes exactly like a ported ``sd-vae-ft-mse``).

    python -m aid_jax.main --config=configs/vae_fashion_mnist.py --workdir=runs/vae_fmnist
    python -m aid_jax.main --config=configs/vae_fashion_mnist.py --config.mode=export_vae

The loss is Stable Diffusion's autoencoder objective without its discriminator (the
discriminator only starts late in SD's training and sharpens textures, which 32×32 garments do
not need), per image and divided by the number of pixel values (so the weights do not depend on
the image size):

    Σ_pixels |x̂ − x|  +  l2_weight·Σ_pixels (x̂ − x)²  +  lpips_weight·LPIPS(x̂, x)·(pixels)
      +  kl_weight·Σ_latent KL(N(μ, σ²) ‖ N(0, 1)),

x̂ decoded from a sample z = μ + σ·ε of the posterior (the reparameterisation), images in the
VAE's pixel range [0, 1] (EDM2's convention, ``sd_vae.pixels_from_uint8``). SD uses
kl_weight = 1e-6 with the same sums: the KL only keeps the latents bounded; their scale for the
diffusion model is set afterwards by the per-channel whitening (``LatentScaling``) the export
measures on training images. Everything around the step (replication, jit with donation,
resume, the loop, NaN guard, checkpoints) is ``aid_jax.train_loop``'s.
"""

from __future__ import annotations

import datetime
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import images, train_loop
from aid_jax.backbones import loader, sd_vae, vae_loader
from aid_jax.data import sources
from aid_jax.metrics import lpips as lpips_metric
from aid_jax.pretrain import fresh_state, learning_rate  # warm-up Adam, as for EDM

# Config groups that define the run: resuming with different values is an error.
RUN_DEFINING = ("seed", "vae", "data", "optim", "loss", "train.batch_size")


def vae_config(config) -> sd_vae.VAEConfig:
    """The architecture from ``config.vae`` (diffusers' AutoencoderKL argument names)."""
    return sd_vae.VAEConfig(**config.vae.to_dict())


def to_vae_range(x: jax.Array) -> jax.Array:
    """Images in [-1, 1] (the data sources') -> the VAE's pixel range [0, 1]."""
    return 0.5 * (x + 1.0)


def make_loss(config, cfg: sd_vae.VAEConfig):
    """``(params, x [-1, 1], key) -> (loss, metrics)``: the module docstring's objective."""
    weights = config.loss
    lpips_params = None
    if weights.lpips_weight:
        lpips_params = lpips_metric.params_for_option(
            weights.lpips_net, "loss.lpips_weight > 0", "loss.lpips_weight=0"
        )

    def loss_fn(params, x, key):
        target = to_vae_range(x)
        mean, std = sd_vae.mean_std(sd_vae.encode_moments(params, target, cfg))
        z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
        recon = sd_vae.decode(params, z, cfg)
        per_value = target[0].size  # pixel values per image
        err = recon - target
        l1 = jnp.sum(jnp.abs(err), axis=(1, 2, 3)) / per_value
        l2 = jnp.sum(jnp.square(err), axis=(1, 2, 3)) / per_value
        var = jnp.square(std)
        kl = 0.5 * jnp.sum(jnp.square(mean) + var - 1.0 - jnp.log(var), axis=(1, 2, 3))
        loss = l1 + weights.l2_weight * l2 + weights.kl_weight * kl / per_value
        metrics = dict(l1=jnp.mean(l1), mse=jnp.mean(l2), kl=jnp.mean(kl))
        if lpips_params is not None:
            perceptual = lpips_metric.lpips(
                lpips_params, 2.0 * recon - 1.0, x, net=weights.lpips_net
            )
            loss = loss + weights.lpips_weight * perceptual
            metrics["lpips"] = jnp.mean(perceptual)
        metrics["loss"] = jnp.mean(loss)
        return jnp.mean(loss), metrics

    return loss_fn


def make_optimizer(config) -> optax.GradientTransformation:
    parts = []
    if config.optim.grad_clip:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(optax.adam(lambda step: learning_rate(config, step), b1=0.5, b2=0.9))
    return optax.chain(*parts)


def make_train_step(config, cfg: sd_vae.VAEConfig, tx: optax.GradientTransformation):
    """One step: (state, images, key) -> (state, metrics). Pure; jit at the caller."""
    loss_fn = make_loss(config, cfg)
    decay = float(config.optim.ema)

    def train_step(state, x, base_key):
        key = jax.random.fold_in(base_key, state["step"])  # deterministic, nothing stored
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x, key)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stepf = state["step"].astype(jnp.float32)
        beta = jnp.minimum(decay, (1.0 + stepf) / (10.0 + stepf))  # EMA with a ramp
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state["ema"], params)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=learning_rate(config, stepf))
        new_state = dict(step=state["step"] + 1, params=params, opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


def init_state(cfg: sd_vae.VAEConfig, tx, key):
    return fresh_state(sd_vae.init_params(key, cfg), tx)


def _check_shapes(cfg: sd_vae.VAEConfig, source) -> None:
    shape = tuple(source.image_shape)
    if shape[-1] != cfg.in_channels or cfg.out_channels != cfg.in_channels:
        raise ValueError(
            f"data images have {shape[-1]} channel(s); set vae.in_channels and "
            f"vae.out_channels to {shape[-1]} (now {cfg.in_channels} and {cfg.out_channels})"
        )
    sd_vae.check_image_shape((1, *shape), cfg)


def reconstruct(params, x, cfg: sd_vae.VAEConfig) -> jax.Array:
    """[-1, 1] images -> their reconstructions from the posterior mean, in [-1, 1]."""
    mean, _ = sd_vae.mean_std(sd_vae.encode_moments(params, to_vae_range(x), cfg))
    return 2.0 * sd_vae.decode(params, mean, cfg) - 1.0


def make_trainer(config, mesh: jax.sharding.Mesh) -> train_loop.Trainer:
    """The VAE run for aid_jax.train_loop: checks, state, step, inputs, reconstruction grids."""
    source = sources.make_source(config.data)
    cfg = vae_config(config)
    _check_shapes(cfg, source)
    batch = int(config.train.batch_size)
    if batch % mesh.devices.size:
        raise ValueError(f"train.batch_size={batch} must divide over {mesh.devices.size} devices")
    tx = make_optimizer(config)
    init_key, train_key = jax.random.split(jax.random.key(int(config.seed)))

    def inputs_at(step):
        x = train_loop.host_images(source, step, batch, config.seed)
        return (*train_loop.global_batch(mesh, x), train_key)

    held_out = sources.make_source(config.eval_data)
    num = int(config.train.num_samples)
    val_x = jnp.asarray(train_loop.host_images(held_out, 0, num, config.seed + 1))
    recon_fn = jax.jit(reconstruct, static_argnums=2)

    def on_step(step, state, writer):
        every = int(config.train.sample_every)
        if not every or step % every:
            return
        recon = np.asarray(recon_fn(state["ema"], val_x, cfg))
        x = np.asarray(val_x)
        writer.write_scalars(step, dict(val_mse=float(np.mean((recon - x) ** 2) / 4.0)))
        pairs = np.concatenate([x, np.clip(recon, -1, 1)], axis=0)
        train_loop.save_grid(writer, step, "reconstructions", images.grid(images.to_uint8(pairs)))

    return train_loop.Trainer(
        name="train VAE",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(cfg, tx, init_key),
        step_fn=make_train_step(config, cfg, tx),
        inputs_at=inputs_at,
        loss="loss",
        parameters=lambda state: dict(vae=state["params"]),
        postfix=lambda m: dict(l1=f"{m['l1']:.4f}", kl=f"{m['kl']:.1f}"),
        on_step=on_step,
        summary=dict(config=cfg),
    )


def train(config, workdir: str) -> dict:
    """Train (or resume) in ``workdir``."""
    from aid_jax import sharding

    return train_loop.run(make_trainer(config, sharding.make_mesh()), workdir)


def latent_statistics(params, cfg: sd_vae.VAEConfig, x: np.ndarray, batch: int = 256):
    """Per-channel (mean, std) of the posterior means of ``x`` ([-1, 1] images): the raw-latent
    statistics EDM2's whitening needs (StabilityVAEEncoder's raw_mean / raw_std)."""
    moments = jax.jit(sd_vae.encode_moments, static_argnums=2)
    means = []
    for i in range(0, len(x), batch):
        m, _ = sd_vae.mean_std(moments(params, to_vae_range(jnp.asarray(x[i : i + batch])), cfg))
        means.append(np.asarray(m, np.float64))
    z = np.concatenate(means).reshape(-1, cfg.latent_channels)
    return z.mean(axis=0), z.std(axis=0)


def reconstruction_quality(params, cfg: sd_vae.VAEConfig, x: np.ndarray, batch: int = 256):
    """Mean squared error (in [-1, 1]), PSNR (peak-to-peak 2) and L1 of the posterior-mean
    reconstructions of ``x``."""
    fn = jax.jit(reconstruct, static_argnums=2)
    recon = np.concatenate(
        [
            np.asarray(fn(params, jnp.asarray(x[i : i + batch]), cfg))
            for i in range(0, len(x), batch)
        ]
    )
    recon = np.clip(recon, -1.0, 1.0)
    mse = np.mean((recon - x) ** 2, axis=(1, 2, 3))
    return dict(
        num_images=len(x),
        mse=float(mse.mean()),
        psnr=float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12)))),
        l1=float(np.mean(np.abs(recon - x))),
    ), recon


def export_vae(config, workdir: str, out: str, *, quality: dict | None = None) -> pathlib.Path:
    """The EMA weights of the newest checkpoint as a ported VAE folder (``vae_loader.load_vae``
    reads it), with the whitening measured on ``export.stat_images`` training images and the
    reconstruction quality on ``export.quality_images`` held-out images in the manifest."""
    cfg = vae_config(config)
    tx = make_optimizer(config)
    step, state = train_loop.newest_checkpoint(workdir, init_state(cfg, tx, jax.random.key(0)))
    params = jax.tree.map(np.asarray, state["ema"])
    source = sources.make_source(config.data)
    x_train = train_loop.host_images(source, 0, int(config.export.stat_images), config.seed + 2)
    raw_mean, raw_std = latent_statistics(params, cfg, x_train)
    scaling = sd_vae.LatentScaling.from_statistics(raw_mean, raw_std, 0.0, 0.5)
    held_out = sources.make_source(config.eval_data)
    x_test = train_loop.host_images(held_out, 0, int(config.export.quality_images), config.seed + 3)
    measured, _ = reconstruction_quality(params, cfg, x_test)
    manifest = dict(
        format_version=loader.FORMAT_VERSION,
        source_name=f"aid_jax train_vae {pathlib.Path(workdir).name} step {step}",
        source_format="aid_jax-train",
        class_name=vae_loader.CLASS_NAME,
        init_kwargs=cfg.to_diffusers_config(),
        num_params=sd_vae.num_params(cfg),
        source_dtypes=["float32"],
        downsample_factor=cfg.downsample_factor,
        pixel_range=[0.0, 1.0],
        raw_latent_mean=[float(v) for v in raw_mean],
        raw_latent_std=[float(v) for v in raw_std],
        training=train_loop.training_record(config, step),
        quality=dict(reconstruction=measured, **(quality or {})),
        exported=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    vae = sd_vae.VAE(params=params, config=cfg, manifest=manifest, scaling=scaling)
    return vae_loader.save_vae(vae, out)


__all__ = [
    "RUN_DEFINING",
    "export_vae",
    "latent_statistics",
    "make_trainer",
    "reconstruct",
    "reconstruction_quality",
    "train",
    "vae_config",
]
