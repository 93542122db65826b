"""EDM2 training in a frozen VAE's latent space (issue 18, point 4: the denoiser of the embedded
latent default; NVIDIA's recipe as EDM_REFERENCE.md §1/§5 describe it, written from the text).

    python -m aid_jax.main --config=configs/edm2_fashion_mnist.py --workdir=runs/edm2_fmnist
    python -m aid_jax.main --config=configs/edm2_fashion_mnist.py --config.mode=export_edm2

What is EDM2's own, and here:

* **Forced weight normalisation.** The trainable weights of every MPConv are kept at unit RMS per
  output channel: after each optimiser step w ← normalize(w) (:func:`force_normalize`), and the
  forward uses normalize(w)/√fan_in (:func:`bake`; differentiable, so the gradient is the
  tangential one). The exported parameters are the baked ones — exactly what
  ``edm2.params_from_state`` makes of an NVIDIA checkpoint, so the result loads like one.
* **The loss with learned uncertainty** (EDM2 Eq. 21): per element
  (λ(σ)/e^{u(σ)})·(D(y + σn; σ) − y)² + u(σ), λ(σ) = (σ² + σ_d²)/(σσ_d)², u the logvar head,
  ln σ ~ N(P_mean, P_std²).
* **Adam (β = 0.9, 0.99) with an inverse-square-root decay** lr_ref/√max(step/ref_steps, 1) after
  a linear warm-up.
* **Latents**: each step encodes its images with the frozen VAE — a sample of the posterior
  (StabilityVAEEncoder.encode_latents) whitened by the VAE's ``LatentScaling`` — and trains on
  those; the class labels of the images go to a class-conditional network (``model.label_dim``).

An EMA of the weights (half-life in images, pretrain's rule) is what the export writes. Everything
around the step (replication, jit with donation, resume, the loop, NaN guard, checkpoints) is
``aid_jax.train_loop``'s.
"""

from __future__ import annotations

import datetime
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import images, sampling, train_loop
from aid_jax.backbones import edm2, loader, sd_vae, vae_loader
from aid_jax.data import sources
from aid_jax.pretrain import ema_beta, fresh_state

RUN_DEFINING = ("seed", "model", "vae", "data", "optim", "loss", "train.batch_size")


def network_config(config) -> edm2.EDM2Config:
    return edm2.EDM2Config.from_init_kwargs(dict(config.model.to_dict()))


def _is_weight(path) -> bool:
    return getattr(path[-1], "key", None) == "weight"


def _row_axes(w: jax.Array) -> tuple[int, ...]:
    return tuple(range(w.ndim - 1))  # JAX layouts: the output channel is the last axis


def bake(raw: dict) -> dict:
    """Trainable parameters -> the network's: every MPConv weight normalize(w)/√fan_in (fan_in
    = the product of all but the last axis), gains and Fourier features as they are."""

    def one(path, w):
        if not _is_weight(path):
            return w
        axes = _row_axes(w)
        fan_in = math.prod(w.shape[a] for a in axes)
        return edm2.normalize(w, axes) / math.sqrt(fan_in)

    return jax.tree_util.tree_map_with_path(one, raw)


def force_normalize(raw: dict) -> dict:
    """EDM2's forced weight normalisation of the stored weights (unit RMS per output channel)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, w: edm2.normalize(w, _row_axes(w)) if _is_weight(path) else w, raw
    )


def init_raw(key: jax.Array, cfg: edm2.EDM2Config) -> dict:
    """Random trainable parameters: NVIDIA's init (weights N(0, 1), so unit RMS rows) in JAX
    layouts; ``bake(init_raw(...))`` equals ``params_from_state(init_state(...))``."""
    baked = edm2.params_from_state(edm2.init_state(key, cfg), cfg)
    return force_normalize(baked)  # normalize is scale-free: back to unit-RMS rows


def learning_rate(config, step):
    """lr_ref · min(1, (step + 1)/warm-up) / √max(step/ref_steps, 1) (EDM2's schedule in steps)."""
    o = config.optim
    s = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum((s + 1.0) / max(int(o.warmup_steps), 1), 1.0)
    return o.lr * warm / jnp.sqrt(jnp.maximum(s / max(float(o.ref_steps), 1.0), 1.0))


def edm2_loss(raw, latents, labels, key, cfg: edm2.EDM2Config, P_mean: float, P_std: float):
    """EDM2's uncertainty-weighted loss on a batch of latents; (loss, metrics)."""
    k_sigma, k_noise = jax.random.split(key)
    b = latents.shape[0]
    sigma = jnp.exp(P_mean + P_std * jax.random.normal(k_sigma, (b,), jnp.float32))
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    s = sigma[:, None, None, None]
    params = bake(raw)
    denoised = edm2.denoise(params, latents + s * noise, sigma, labels, cfg)
    sd2 = cfg.sigma_data**2
    weight = (s**2 + sd2) / (s**2 * sd2)
    u = edm2.logvar(params, sigma, cfg)[:, None, None, None]
    err = jnp.square(denoised - latents)
    loss = jnp.mean(weight / jnp.exp(u) * err + u)
    return loss, dict(loss=loss, edm_loss=jnp.mean(weight * err), logvar=jnp.mean(u))


def make_optimizer(config) -> optax.GradientTransformation:
    parts = []
    if config.optim.grad_clip:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(optax.adam(lambda s: learning_rate(config, s), b1=0.9, b2=0.99, eps=1e-8))
    return optax.chain(*parts)


def encode_batch(vae_params, vae, x, key):
    """[-1, 1] images -> whitened latents sampled from the VAE's posterior (EDM2's encoder:
    encode_pixels, then encode_latents with a sample of N(μ, σ²)); the VAE's parameters are an
    argument (replicated on the mesh), its config and scaling static."""
    moments = sd_vae.encode_moments(vae_params, 0.5 * (x + 1.0), vae.config)
    mean, std = sd_vae.mean_std(moments)
    return vae.scaling.to_final(mean + std * jax.random.normal(key, mean.shape, mean.dtype))


def make_train_step(config, cfg, tx, vae):
    def train_step(state, vae_params, x, labels, base_key):
        key = jax.random.fold_in(base_key, state["step"])
        k_vae, k_loss = jax.random.split(key)
        latents = jax.lax.stop_gradient(encode_batch(vae_params, vae, x, k_vae))
        (_, metrics), grads = jax.value_and_grad(edm2_loss, has_aux=True)(
            state["params"], latents, labels, k_loss, cfg, config.loss.P_mean, config.loss.P_std
        )
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = force_normalize(optax.apply_updates(state["params"], updates))
        beta = ema_beta(config, state["step"])
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state["ema"], params)
        metrics = dict(
            metrics, grad_norm=optax.tree.norm(grads), lr=learning_rate(config, state["step"])
        )
        return dict(step=state["step"] + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step


def init_state(cfg, tx, key):
    return fresh_state(init_raw(key, cfg), tx)


def _check(cfg, vae, source) -> None:
    latent = vae.latent_shape(tuple(source.image_shape))
    if (cfg.img_resolution, cfg.img_resolution, cfg.img_channels) != latent:
        raise ValueError(
            f"the VAE maps the data's {tuple(source.image_shape)} images to {latent} latents; set "
            f"model.img_resolution={latent[0]} and model.img_channels={latent[2]}"
        )
    classes = int(getattr(source, "num_classes", 0) or 0)
    if cfg.label_dim and cfg.label_dim != classes:
        raise ValueError(
            f"model.label_dim={cfg.label_dim} but the data has {classes} classes; set "
            f"model.label_dim to {classes} (or 0 for an unconditional network)"
        )


def make_trainer(config, mesh: jax.sharding.Mesh) -> train_loop.Trainer:
    from aid_jax import sharding

    source = sources.make_source(config.data)
    vae = vae_loader.load_vae(config.vae.path)
    cfg = network_config(config)
    _check(cfg, vae, source)
    batch = int(config.train.batch_size)
    if batch % mesh.devices.size:
        raise ValueError(f"train.batch_size={batch} must divide over {mesh.devices.size} devices")
    tx = make_optimizer(config)
    init_key, train_key, sample_key = jax.random.split(jax.random.key(int(config.seed)), 3)
    vae_params = sharding.replicate(vae.params, mesh)

    def inputs_at(step):
        rows = train_loop.host_batch(source, step, batch, config.seed)
        labels = jax.nn.one_hot(rows["label"], cfg.label_dim) if cfg.label_dim else None
        (x,) = train_loop.global_batch(mesh, rows["image"])
        lab = None if labels is None else train_loop.global_batch(mesh, np.asarray(labels))[0]
        return vae_params, x, lab, train_key

    num = int(config.train.num_samples)
    latent_shape = (cfg.img_resolution, cfg.img_resolution, cfg.img_channels)
    noise = jax.random.normal(sample_key, (num, *latent_shape))
    sample_labels = (
        jax.nn.one_hot(jnp.arange(num) % cfg.label_dim, cfg.label_dim) if cfg.label_dim else None
    )
    draw = loader.make_sampler(
        cfg,
        sampling.SamplerConfig(solver="heun", num_steps=int(config.train.sample_steps)),
        labels=sample_labels,
    )

    bake_jit = jax.jit(bake)  # one program, not one eager op per leaf at every grid

    def on_step(step, state, writer):
        every = int(config.train.sample_every)
        if every and step % every == 0:
            z = draw(bake_jit(state["ema"]), noise)  # unit noise: the sampler scales by σ_max
            x = 2.0 * np.asarray(vae.decode(z)) - 1.0
            train_loop.save_grid(writer, step, "samples", images.grid(images.to_uint8(x)))

    return train_loop.Trainer(
        name="train EDM2",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(cfg, tx, init_key),
        step_fn=make_train_step(config, cfg, tx, vae),
        inputs_at=inputs_at,
        loss="loss",
        parameters=lambda state: dict(denoiser=state["params"]),
        postfix=lambda m: dict(loss=f"{m['loss']:.4f}", edm=f"{m['edm_loss']:.4f}"),
        on_step=on_step,
        summary=dict(config=cfg),
    )


def train(config, workdir: str) -> dict:
    from aid_jax import sharding

    return train_loop.run(make_trainer(config, sharding.make_mesh()), workdir)


def export_backbone(config, workdir: str, out: str, *, quality: dict | None = None):
    """The baked EMA weights of the newest checkpoint as a ported EDM2 backbone folder (loads
    with ``load_backbone``), with the VAE it was trained on recorded in the manifest."""
    cfg = network_config(config)
    tx = make_optimizer(config)
    step, state = train_loop.newest_checkpoint(workdir, init_state(cfg, tx, jax.random.key(0)))
    params = jax.tree.map(np.asarray, bake(force_normalize(state["ema"])))
    vae = vae_loader.load_vae(config.vae.path)
    manifest = dict(
        format_version=loader.FORMAT_VERSION,
        source_name=f"aid_jax train_edm2 {pathlib.Path(workdir).name} step {step}",
        source_format="aid_jax-train",
        class_name=loader.class_name(cfg),
        init_kwargs=loader.init_kwargs(cfg),
        num_params=edm2.num_params(cfg),
        source_dtypes=["float32"],
        param_dtype="float32",
        latent=dict(
            vae=str(config.vae.path),
            vae_params_sha256=vae.manifest.get("params_sha256"),
            latent_scaling=vae.scaling.to_json(),
        ),
        training=train_loop.training_record(config, step),
        quality=quality or {},
        exported=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    return loader.save_backbone(loader.Backbone(params=params, config=cfg, manifest=manifest), out)


__all__ = [
    "bake",
    "edm2_loss",
    "export_backbone",
    "force_normalize",
    "init_raw",
    "learning_rate",
    "make_trainer",
    "network_config",
    "train",
]
