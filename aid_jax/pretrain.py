"""EDM training of a backbone (the embedded default is a SongUNet on Fashion-MNIST).

    python -m aid_jax.main --config=configs/pretrain_fashion_mnist.py --workdir=runs/pretrain

This module holds what is pretraining's own: the model and optimiser, the state, the update step
(EDM loss, Adam with warm-up, EMA), the step's inputs and the EMA sample grids (`make_trainer`).
The run around them (replication on the mesh, jit with donation, restore with a config
fingerprint, the loop with progress bar, metrics, NaN guard and checkpoints) is
aid_jax.train_loop's, shared with the AID trainer. The batch of step s is a pure function of
(seed, s) and the PRNG key of step s is fold_in(key, s), so a run killed at any moment resumes
from its last checkpoint and continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from aid_jax import checkpoint, distributed, images, losses, sampling, sharding, train_loop
from aid_jax.backbones import edm, loader
from aid_jax.data import sources

# Config groups that define the run: resuming with different values is an error.
RUN_DEFINING = ("seed", "model", "data", "optim", "loss", "train.batch_size")


ResumeError = checkpoint.ResumeError


def backbone_config(config) -> edm.EDMConfig:
    kwargs = dict(config.model.to_dict())
    precond = kwargs.pop("precond", "EDMPrecond")
    return edm.EDMConfig.from_init_kwargs(precond, kwargs)


def learning_rate(config, step):
    """Adam learning rate with a linear warm-up over `optim.warmup_steps`."""
    warmup = max(int(config.optim.warmup_steps), 1)
    return config.optim.lr * jnp.minimum((jnp.asarray(step, jnp.float32) + 1) / warmup, 1.0)


def ema_beta(config, step):
    """EDM's EMA: half-life in images, ramped up as a fraction of the images seen so far."""
    batch = config.train.batch_size
    seen = (jnp.asarray(step, jnp.float32) + 1) * batch
    halflife = jnp.minimum(config.optim.ema_halflife_images, config.optim.ema_rampup * seen)
    return 0.5 ** (batch / jnp.maximum(halflife, 1e-8))


def make_train_step(config, net: edm.EDMConfig, tx: optax.GradientTransformation):
    """One optimisation step: (state, images, key) -> (state, metrics). Pure; jit at the caller."""

    def loss_fn(params, batch_images, key):
        def denoise(x, sigma):
            return edm.denoise(params, x, sigma, None, net)

        return losses.edm_loss(
            denoise,
            batch_images,
            key,
            P_mean=config.loss.P_mean,
            P_std=config.loss.P_std,
            sigma_data=net.sigma_data,
        )

    def train_step(state, batch_images, base_key):
        step = state["step"]
        key = jax.random.fold_in(base_key, step)  # deterministic, nothing stored
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch_images, key
        )
        # optax's bias correction mixes Python floats with int32 counts, which the tests' strict
        # dtype promotion rejects; the optimiser is not ours, so allow standard promotion here.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        lr_scale = learning_rate(config, step) / config.optim.lr
        updates = jax.tree.map(lambda u: u * lr_scale, updates)
        params = optax.apply_updates(state["params"], updates)
        beta = ema_beta(config, step)
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state["ema"], params)
        metrics = dict(
            metrics,
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            lr=learning_rate(config, step),
            ema_beta=beta,
        )
        new_state = dict(step=step + 1, params=params, opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


def make_optimizer(config) -> optax.GradientTransformation:
    # Adam (EDM: β = 0.9, 0.999, ε = 1e-8); the warm-up multiplies the update in train_step so
    # the schedule is a visible function of the step; optional global-norm clipping.
    parts = []
    if config.optim.grad_clip:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(optax.adam(config.optim.lr, b1=0.9, b2=0.999, eps=1e-8))
    return optax.chain(*parts)


def fresh_state(params, tx: optax.GradientTransformation) -> dict:
    """A step-0 state {step, params, opt_state, ema} around ``params`` (every trainer of a
    network with an optimiser and an EMA: pretrain, vae_train, edm2_train). One jitted program
    builds it (eager per-leaf ops would compile per shape)."""

    @jax.jit
    def assemble(params):
        return dict(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema=jax.tree.map(jnp.copy, params),
        )

    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
        return assemble(params)


def init_state(config, net, tx, key):
    return fresh_state(loader.params_from_state(edm.training_init_state(key, net), net), tx)


def make_trainer(config, mesh: jax.sharding.Mesh) -> train_loop.Trainer:
    """The pretraining run for aid_jax.train_loop: checks, state, step, inputs, sample hook."""
    # ------------------------------------------------------------------ data
    source = sources.make_source(config.data)
    net = backbone_config(config)
    if source.image_shape != (net.img_resolution, net.img_resolution, net.img_channels):
        raise ValueError(
            f"data images are {source.image_shape} but model.img_resolution/img_channels are "
            f"{net.img_resolution}/{net.img_channels}; set data.pad_to or the model size"
        )
    batch = config.train.batch_size
    if batch % mesh.devices.size:
        raise ValueError(f"train.batch_size={batch} must divide over {mesh.devices.size} devices")

    # ------------------------------------------------------------------ model and optimiser
    tx = make_optimizer(config)
    root_key = jax.random.key(config.seed)
    init_key, train_key, sample_key = jax.random.split(root_key, 3)

    def inputs_at(step):
        x = train_loop.host_images(source, step, batch, config.seed)
        return (*train_loop.global_batch(mesh, x), train_key)

    # ------------------------------------------------------------------ EMA sample grids
    draw = loader.make_sampler(
        net, sampling.SamplerConfig(solver="heun", num_steps=config.train.sample_steps)
    )
    latents = jax.random.normal(sample_key, (config.train.num_samples, *source.image_shape))

    def write_samples(step, state, writer):
        if config.train.sample_every and step % config.train.sample_every == 0:
            x = np.asarray(draw(state["ema"], latents))
            train_loop.save_grid(writer, step, "samples", images.grid(images.to_uint8(x)))

    return train_loop.Trainer(
        name="pretrain",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(config, net, tx, init_key),
        step_fn=make_train_step(config, net, tx),
        inputs_at=inputs_at,
        loss="loss",
        parameters=lambda state: dict(denoiser=state["params"]),
        postfix=lambda metrics: dict(loss=f"{metrics['loss']:.4f}"),
        on_step=write_samples,
        summary=dict(config=net),
    )


def train_and_evaluate(config, workdir: str) -> dict:
    """Train (or resume) in `workdir`; returns the final state and a summary."""
    # The workdir is checked (writable) and locked (one writer) before any set-up.
    with train_loop.workdir_lock(workdir):
        trainer = make_trainer(config, sharding.make_mesh())
        # Resume order: this workdir's newest checkpoint > train.resume_from (a saved step
        # folder, e.g. the training state shipped next to the exported backbone) > from scratch.
        if distributed.is_main_process():  # one writer; the others wait for the copy
            _seed_workdir(pathlib.Path(workdir), config.train.get("resume_from", ""))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("aid_jax.pretrain: workdir seeded")
        return train_loop.run(trainer, workdir)


def _seed_workdir(workdir: pathlib.Path, resume_from: str) -> None:
    """Copy a saved step folder into an empty workdir so training continues from it.

    `resume_from` is a step folder (named by its step, holding state/ and meta/) or a folder of
    such step folders, of which the newest is taken.
    """
    ckpts = workdir / "checkpoints"
    if not resume_from or (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
        return
    src = pathlib.Path(resume_from)
    if src.is_dir() and not src.name.isdigit():
        steps = sorted((p for p in src.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        src = steps[-1] if steps else src
    if not src.is_dir() or not src.name.isdigit() or not (src / "state").is_dir():
        raise FileNotFoundError(
            f"train.resume_from={resume_from!r}: expected a checkpoint step folder (named by its "
            "step, holding state/ and meta/) or a folder of them. Set it to '' to start afresh."
        )
    ckpts.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, ckpts / src.name)
    print(f"seeded {ckpts} with {src}")


def export_backbone(config, workdir: str, out: str, *, quality: dict | None = None) -> pathlib.Path:
    """Write the EMA weights of the newest checkpoint as a ported backbone folder."""
    net = backbone_config(config)
    tx = make_optimizer(config)
    # The initialisation runs in NumPy (not traceable), so build the target concretely once.
    step, state = train_loop.newest_checkpoint(
        workdir, init_state(config, net, tx, jax.random.key(0))
    )
    params = jax.tree.map(np.asarray, state["ema"])
    manifest = dict(
        format_version=loader.FORMAT_VERSION,
        source_name=f"aid_jax pretrain {pathlib.Path(workdir).name} step {step}",
        source_format="aid_jax-train",
        class_name=net.precond,
        init_kwargs=net.init_kwargs(),
        num_params=loader.num_params(net),
        source_dtypes=["float32"],
        param_dtype="float32",
        training=train_loop.training_record(config, step),
        quality=quality or {},
    )
    backbone = loader.Backbone(params=params, config=net, manifest=manifest)
    out = pathlib.Path(out)
    loader.save_backbone(backbone, out)
    return out


__all__ = [
    "ResumeError",
    "backbone_config",
    "export_backbone",
    "make_train_step",
    "make_trainer",
    "train_and_evaluate",
]
