"""DEFT trainer: the h-network against a frozen backbone (docs/DEFT_DESIGN.md §2, §4).

    python -m aid_jax.main --config=configs/deft_fashion_mnist.py --config.mode=train_deft \
        --workdir=runs/deft

What is DEFT's own lives here: the state (h-network, Adam, EMA), the update step, the step's
inputs (training images and per-step seeded masks, as AID's trainer draws them) and the hooks
(validation on the held-out validation block, grids, manifest), packed as a
``train_loop.Trainer``. The run around it — replication on the mesh (NamedSharding), the donated
jitted step, Orbax checkpoints with a config fingerprint and resume, metrics, NaN guard — is
``aid_jax.train_loop``'s, shared with the backbone and AID trainers. The batch, masks, noise
levels and noises of step s are pure functions of (seed, s), so a run killed at any moment
resumes from its last checkpoint and continues exactly as an uninterrupted run would.

Per step: x0 and m from the pipeline, σ ~ ``deft.sigma_dist`` and n ~ N(0, I) from
fold_in(key, s); the backbone's D(x0 + σn; σ) forward only (no backward pass through it); the
loss of ``aid_jax.deft.losses``; Adam with warm-up and linear decay to 0 at
``optim.decay_steps``; an EMA of the h-network (evaluated and exported) with ema_pytorch's
warm-up min(β, 1 − (1 + s)^(−2/3)), the official code's EMA.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import backbones, checkpoint, guidance_module, images, sharding, train_loop
from aid_jax.aid.train import (
    mask_specs,
    masks_at,
    step_inputs,
    training_labels,
    validation_set,
)
from aid_jax.data import sources
from aid_jax.deft import api, losses, model

__all__ = [
    "RUN_DEFINING",
    "ResumeError",
    "deft_config",
    "ema_decay",
    "evaluation_config",
    "export",
    "learning_rate",
    "make_optimizer",
    "make_train_step",
    "make_trainer",
    "make_validate",
    "train",
    "write_run_manifest",
]

# Config groups that define the run: resuming with different values is an error. The learning
# rate's decay horizon is optim.decay_steps (in the configs a reference to train.num_steps), so
# a longer run is a new run, but a killed one resumes.
RUN_DEFINING = (
    "seed",
    "backbone",
    "data",
    "deft",
    "optim",
    "train.batch_size",
    "train.masks",
    "train.use_labels",
)
SCHEDULES = ("linear", "constant")

ResumeError = checkpoint.ResumeError


def deft_config(config, image_shape) -> model.DEFTConfig:
    """The static DEFTConfig from ``config.deft`` and the backbone's image shape."""
    return model.DEFTConfig(image_shape=tuple(image_shape), **dict(config.deft.to_dict()))


# ---------------------------------------------------------------------------------------------
# Optimiser, EMA and the update step


def learning_rate(config, step):
    """Linear warm-up over ``optim.warmup_steps``, then constant or a linear decay to 0 at
    ``optim.decay_steps`` (``optim.schedule``; the official code decays linearly to 0)."""
    o = config.optim
    if o.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    s = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum((s + 1.0) / max(int(o.warmup_steps), 1), 1.0)
    if o.schedule == "constant":
        return o.lr * warm
    horizon = max(int(o.decay_steps), 1)
    return o.lr * warm * jnp.clip(1.0 - s / horizon, 0.0, 1.0)


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam (``optim.b1``, ``optim.b2``) with the schedule of :func:`learning_rate` and optional
    global-norm clipping."""
    o = config.optim
    learning_rate(config, 0)  # checks the schedule's name
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    parts.append(optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=1e-8))
    return optax.chain(*parts)


def ema_decay(config, step):
    """min(β, 1 − (1 + s)^(−2/3)): ema_pytorch's warm-up (the official code's EMA)."""
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(float(config.optim.ema), 1.0 - (1.0 + s) ** (-2.0 / 3.0))


def init_state(cfg: model.DEFTConfig, tx, key):
    @jax.jit
    def build():
        hnet = model.init_hnet(key, cfg)
        return dict(
            step=jnp.zeros((), jnp.int32),
            hnet=hnet,
            opt=tx.init(hnet),
            ema=jax.tree.map(jnp.copy, hnet),
        )

    with jax.numpy_dtype_promotion("standard"):
        return build()


def make_train_step(config, cfg: model.DEFTConfig, backbone_config, tx):
    """One step: (state, backbone_params, x0, mask, key, labels=None) -> (state, metrics). Pure;
    jit at the caller. The backbone runs forward only, outside the differentiated function;
    ``labels`` are one-hot rows for a class-conditional backbone (train.use_labels) or None."""

    def train_step(state, backbone_params, x0, mask, base_key, labels=None):
        step = state["step"]
        key = jax.random.fold_in(base_key, step)
        k_sigma, k_noise = jax.random.split(key)
        sigma = model.sample_sigmas(cfg, k_sigma, x0.shape[0])
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)

        def denoise(x, s):
            return backbones.denoise(backbone_params, x, s, labels, config=backbone_config)

        x, denoised = losses.noisy_batch(denoise, x0, sigma, noise)

        def objective(hnet):
            per, aux = losses.deft_loss(
                model.hnet_apply_fn(hnet, cfg), cfg, x0, x, denoised, mask, sigma
            )
            return jnp.mean(per), aux

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state["hnet"])
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
            updates, opt = tx.update(grads, state["opt"], state["hnet"])
        lr = learning_rate(config, step)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        hnet = optax.apply_updates(state["hnet"], updates)
        decay = ema_decay(config, step)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], hnet)
        unguided = jnp.mean(aux["unguided"])
        metrics = dict(
            loss=loss,
            loss_unguided=unguided,
            gain=unguided - loss,  # > 0: the h-network improves on the backbone alone
            u_rms=jnp.mean(aux["u_rms"]),
            gamma_mean=jnp.mean(aux["gamma"]),
            sigma_median=jnp.median(sigma),
            grad_norm=optax.tree.norm(grads),
            lr=lr,
            ema_decay=decay,
        )
        return dict(step=step + 1, hnet=hnet, opt=opt, ema=ema), metrics

    return train_step


# ---------------------------------------------------------------------------------------------
# Validation: the deployed sampler and the loss on a fixed batch of the validation block


def make_validate(cfg: model.DEFTConfig, backbone_config, backbone_sha256: str):
    """jitted ``(backbone_params, hnet, x0, mask, key, labels=None) -> (samples, hole MSE [B],
    loss [B], unguided loss [B])``: Euler with ``cfg.num_steps`` steps, pasted back; the loss at
    noise levels and noises fixed by ``key``; ``labels`` as in the training step."""

    @jax.jit
    def validate(backbone_params, hnet, x0, mask, key, labels=None):
        k_sample, k_sigma, k_noise = jax.random.split(key, 3)
        p = model.DEFTParams(backbone_params, hnet, backbone_config, cfg, backbone_sha256)
        x = model.inpaint(p, x0, mask, key=k_sample, labels=labels, paste_back=True).x
        hole = 1.0 - mask
        mse = jnp.sum(jnp.square(x - x0) * hole, axis=(1, 2, 3)) / jnp.maximum(
            jnp.sum(hole, axis=(1, 2, 3)) * x0.shape[-1], 1.0
        )
        sigma = model.sample_sigmas(cfg, k_sigma, x0.shape[0])
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        xn, denoised = losses.noisy_batch(lambda x_, s: p.denoise(x_, s, labels), x0, sigma, noise)
        loss, aux = losses.deft_loss(
            model.hnet_apply_fn(hnet, cfg), cfg, x0, xn, denoised, mask, sigma
        )
        return x, mse, loss, aux["unguided"]

    return validate


# ---------------------------------------------------------------------------------------------
# The run


def make_trainer(config, mesh: jax.sharding.Mesh) -> train_loop.Trainer:
    """The DEFT run for ``aid_jax.train_loop``: checks, state, step, inputs, validation hooks."""
    t = config.train
    backbone = backbones.backbone_from_config(config.backbone)
    shape = backbone.image_shape
    cfg = deft_config(config, shape)
    specs = mask_specs(config)
    source = sources.make_source(config.data)
    if tuple(source.image_shape) != tuple(shape):
        raise ValueError(
            f"data images are {source.image_shape} but the backbone makes {shape}; set data.pad_to"
        )
    batch = int(t.batch_size)
    if batch < 1 or batch % mesh.devices.size:
        raise ValueError(
            f"train.batch_size={batch} must be a positive multiple of the {mesh.devices.size} "
            "devices"
        )
    sha = backbone.params_sha256
    tx = make_optimizer(config)
    init_key, train_key, val_key = jax.random.split(jax.random.key(int(config.seed)), 3)
    backbone_params = sharding.replicate(backbone.params, mesh)

    label_dim, labels_at = training_labels(config, backbone, source)

    def inputs_at(step):
        rows = train_loop.host_batch(source, step, batch, config.seed)
        m = train_loop.process_rows(masks_at(specs, batch, shape[:2], int(config.seed), step))
        labels = labels_at(rows["label"])
        return step_inputs(mesh, backbone_params, train_key, rows["image"], m, labels)

    validate = sharding.replicated_outputs(make_validate(cfg, backbone.config, sha), mesh)
    val_x0, val_mask, val_labels = validation_set(config, shape, specs, label_dim)
    val_x0_d = sharding.shard_batch(val_x0, mesh)
    val_mask_d = sharding.shard_batch(val_mask, mesh)
    val_labels_d = None if val_labels is None else sharding.shard_batch(val_labels, mesh)
    summary = dict(config=cfg, val_mse_hole=None, val_mse_hole_init=None)

    def on_start(state, writer):
        if train_loop.is_main_process():
            write_run_manifest(writer.workdir, cfg, config, sha)
        zero = jax.tree.map(jnp.zeros_like, state["hnet"])  # U ≡ 0, γ ≡ 0: the backbone alone
        _, mse, _, _ = validate(backbone_params, zero, val_x0_d, val_mask_d, val_key, val_labels_d)
        summary["val_mse_hole_init"] = float(np.mean(np.asarray(mse)))

    def on_step(step, state, writer):
        if (t.eval_every and step % int(t.eval_every) == 0) or step == int(t.num_steps):
            x_val, mse, loss, unguided = validate(
                backbone_params, state["ema"], val_x0_d, val_mask_d, val_key, val_labels_d
            )
            summary["val_mse_hole"] = float(np.mean(np.asarray(mse)))
            writer.write_scalars(
                step,
                {
                    "val_mse_hole": summary["val_mse_hole"],
                    "val_mse_hole_init": summary["val_mse_hole_init"],
                    "val_loss": float(np.mean(np.asarray(loss))),
                    "val_loss_unguided": float(np.mean(np.asarray(unguided))),
                },
            )
            _write_grid(writer, step, val_x0, val_mask, np.asarray(x_val))

    return train_loop.Trainer(
        name="train DEFT",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(cfg, tx, init_key),
        step_fn=make_train_step(config, cfg, backbone.config, tx),
        inputs_at=inputs_at,
        loss="loss",
        parameters=lambda state: dict(hnet=state["hnet"]),
        postfix=lambda m: dict(loss=f"{m['loss']:.4f}", gain=f"{m['gain']:.3g}"),
        resumed="resumed DEFT training",
        on_start=on_start,
        on_step=on_step,
        summary=summary,
    )


def train(config, workdir: str) -> dict:
    """Train (or resume) DEFT in ``workdir``; returns the final state and a summary. The
    workdir is checked and locked before the backbone and data load (one writer per workdir)."""
    with train_loop.workdir_lock(workdir):
        return train_loop.run(make_trainer(config, sharding.make_mesh()), workdir)


def _write_grid(writer, step, x0, mask, x, num: int = 8):
    cols = [
        ("observed", images.observed_view(x0[:num], mask[:num])),
        ("DEFT", x[:num]),
        ("ground truth", x0[:num]),
    ]
    img, _ = images.comparison_grid(cols)
    train_loop.save_grid(writer, step, "validation", img)


# ---------------------------------------------------------------------------------------------
# What a workdir or an export holds, for aid_jax.deft.api.load


def write_run_manifest(directory: pathlib.Path, cfg: model.DEFTConfig, config, sha: str) -> None:
    """``<directory>/deft_config.json``: the DEFTConfig, the backbone record, the parameter
    count, the data and the date (``guidance_module.write_run_manifest``)."""
    guidance_module.write_run_manifest(directory, api.KIND, cfg, config, sha)


def export(workdir: str, out: str) -> pathlib.Path:
    """Write the EMA h-network of the newest checkpoint in ``workdir`` as ``out/hnet`` (Orbax)
    plus ``out/deft_config.json`` and a README.md (``guidance_module.export``: step, data,
    validation metrics, parameter counts; movable); ``aid_jax.deft.api.load(out)`` reads it."""
    return guidance_module.export(workdir, out, api.KIND)


def evaluation_config(config, workdir: str):
    """The harness config after a DEFT run: every ``deft`` method entry without a checkpoint
    pointed at ``workdir`` (the run just trained), then ``evaluate.evaluation_config`` (the test
    split of ``eval_data``; AID entries likewise). The input config is not changed."""
    from aid_jax import evaluate

    out = config.copy_and_resolve_references()
    with out.unlocked():
        for entry in out.get("methods", {}).values():
            if entry.get("method") == "deft" and not entry.options.get("checkpoint"):
                entry.options.checkpoint = str(workdir)
    return evaluate.evaluation_config(out, workdir)
