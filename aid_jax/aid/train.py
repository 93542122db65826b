"""AID trainer: continuous-time actor–critic against a frozen backbone (AID.md §4).

    python -m aid_jax.main --config=configs/fashion_mnist.py --config.mode=train_aid \
        --workdir=runs/aid

This module holds what is AID's own: the networks and optimisers, the state, the update step, the
step's inputs (images and per-step masks) and the validation hooks (`make_trainer`); the run
around them (replication on the mesh, jit with donation, restore with a config fingerprint, the
loop with progress bar, metrics, NaN guard and checkpoints) is aid_jax.train_loop's, shared with
aid_jax.pretrain. The batch, the masks and the PRNG key of step s are pure functions of (seed, s),
so a run killed at any moment resumes from its last checkpoint and continues exactly as an
uninterrupted run would.

Per step (AID.md §4): draw (x0, m), y = m⊙x0, X_0 = σ_max·n; roll out K controlled Euler steps
under the Gaussian policy with the frozen denoiser forward only (control.rollout); the critic takes
one semi-gradient TD step (losses.critic_loss, TD(0) by default) and the actor one
likelihood-ratio step weighted by the TD errors δ_k (losses.lr_actor_loss; 'pathwise' is an
option); Adam for both, an EMA of the actor for evaluation and export.
"""

from __future__ import annotations

import datetime
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import backbones, checkpoint, images, masks, sharding, train_loop
from aid_jax.aid import api, control, losses, model
from aid_jax.data import pipeline, sources

# Config groups that define the run: resuming with different values is an error.
RUN_DEFINING = (
    "seed",
    "backbone",
    "data",
    "aid",
    "optim",
    "train.batch_size",
    "train.masks",
    "train.actor",
    "train.antithetic",
    "train.td_lambda",
    "train.adv_lambda",
    "train.adv_norm",
    "train.critic_warmup",
)
ACTORS = ("lr", "pathwise")


ResumeError = checkpoint.ResumeError


def aid_config(config, image_shape) -> model.AIDConfig:
    """The static AIDConfig from ``config.aid`` and the backbone's image shape."""
    fields = dict(config.aid.to_dict())
    return model.AIDConfig(image_shape=tuple(image_shape), **fields)


def mask_specs(config) -> list[dict]:
    """The training mask families: entries of ``config.masks`` named in ``train.masks``."""
    names = config.train.masks
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    names = [n for n in names if n]
    missing = [n for n in names if n not in config.masks]
    if not names or missing:
        raise ValueError(
            f"train.masks={config.train.masks!r}: each name must be an entry of config.masks "
            f"({', '.join(config.masks.keys())})"
        )
    return [config.masks[n].to_dict() for n in names]


def masks_at(specs: list[dict], num: int, hw, seed: int, step: int, stream: int = 0) -> np.ndarray:
    """``num`` training masks of step ``step``: each sample's family drawn uniformly from
    ``specs``; a pure function of (seed, step, stream). float32 [num, H, W, 1], 1 = known.
    Stream 0 is training, 1 the fixed validation batch."""
    rng = np.random.default_rng([int(seed), int(step), 0x41D, int(stream)])
    which = rng.integers(len(specs), size=num)
    seeds = rng.integers(0, 2**31 - 1, size=len(specs))
    out = np.empty((num, *hw, 1), np.float32)
    for i, spec in enumerate(specs):
        idx = np.flatnonzero(which == i)
        if idx.size:
            out[idx] = masks.from_config(spec, int(idx.size), hw, seed=int(seeds[i]))
    return out


# ---------------------------------------------------------------------------------------------
# Optimisers and the update step


def _schedule(config, lr: float):
    o = config.optim
    warmup = max(int(o.warmup_steps), 1)
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(int(config.train.num_steps), warmup + 1), lr * o.final_lr_frac
        )
    if o.schedule == "constant":
        return optax.linear_schedule(0.0, lr, warmup)
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {o.schedule!r}")


CRITIC_OPTIMIZERS = ("adam", "sgd")


def make_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(actor, critic) optimisers: Adam for the actor; Adam or plain SGD (``optim.critic_opt``)
    for the critic — on the LQ benchmark an SGD critic was what made the actor converge
    (docs/AID_DESIGN.md). Both with the warm-up schedule and optional global-norm clipping."""
    clip = [optax.clip_by_global_norm(config.optim.grad_clip)] if config.optim.grad_clip else []
    critic_opt = config.optim.get("critic_opt", "adam")
    if critic_opt not in CRITIC_OPTIMIZERS:
        raise ValueError(f"optim.critic_opt must be one of {CRITIC_OPTIMIZERS}, got {critic_opt!r}")
    actor = optax.chain(*clip, optax.adam(_schedule(config, config.optim.actor_lr)))
    critic_lr = _schedule(config, config.optim.critic_lr)
    critic = optax.adam(critic_lr) if critic_opt == "adam" else optax.sgd(critic_lr)
    return actor, optax.chain(*clip, critic)


def init_state(config, cfg: model.AIDConfig, actor_tx, critic_tx, key):
    k_actor, k_critic = jax.random.split(key)

    @jax.jit
    def build():
        actor = model.init_actor(k_actor, cfg)
        critic = model.init_critic(k_critic, cfg)
        return dict(
            step=jnp.zeros((), jnp.int32),
            actor=actor,
            critic=critic,
            actor_opt=actor_tx.init(actor),
            critic_opt=critic_tx.init(critic),
            actor_ema=jax.tree.map(jnp.copy, actor),
        )

    with jax.numpy_dtype_promotion("standard"):
        return build()


def make_train_step(config, cfg: model.AIDConfig, backbone_config, actor_tx, critic_tx):
    """One actor–critic iteration: (state, backbone_params, x0, mask, key) -> (state, metrics).

    Pure; jit at the caller. With ``train.antithetic`` the batch (x0, mask) holds B/2 distinct
    observations, each rolled out twice with policy noises ε and −ε from the same X_0.
    """
    t = config.train
    if t.actor not in ACTORS:
        raise ValueError(f"train.actor must be one of {ACTORS}, got {t.actor!r}")
    sigmas = cfg.sigmas()
    lam = cfg.lam
    per_step = cfg.beta_weighting != "uniform"
    beta = jnp.asarray(cfg.betas()) if per_step else cfg.beta
    policy_std = jnp.asarray(cfg.policy_stds()) if per_step else cfg.policy_std
    ema_decay = float(config.optim.ema)
    warmup = int(t.critic_warmup)

    def train_step(state, backbone_params, x0, mask, base_key):
        step = state["step"]
        key = jax.random.fold_in(base_key, step)
        k_init, k_policy = jax.random.split(key)
        x_init = cfg.sigma_max * jax.random.normal(k_init, x0.shape, jnp.float32)
        if t.antithetic:
            x0, mask, x_init = control.pair_up((x0, mask, x_init))
        y = mask * x0

        def denoise(x, sigma):
            return backbones.denoise(backbone_params, x, sigma, config=backbone_config)

        mu_fn = model.guidance_mean_fn(state["actor"], cfg, y, mask)
        ro = control.rollout(
            denoise,
            mu_fn,
            x_init,
            sigmas,
            k_policy,
            policy_std=policy_std,
            antithetic=bool(t.antithetic),
            per_step=per_step,
        )
        weight = losses.hole_weights(mask, cfg.hole_weight)

        def psi(xk):  # the terminal cost Ψ (AIDConfig.psi_mse, psi_observed)
            out = jnp.zeros(xk.shape[:1], jnp.float32)
            if cfg.psi_mse:
                out = out + cfg.psi_mse * losses.terminal_cost(xk, x0, weight)
            if cfg.psi_observed:
                out = out + cfg.psi_observed * losses.observed_cost(xk, y, mask)
            return out

        terminal = psi(ro.xs[-1])

        # Critic: semi-gradient TD(τ) on the rollout (AID.md §4).
        def critic_objective(cp):
            v = model.value_fn(cp, cfg, y, mask, x0)
            return losses.critic_loss(
                v,
                ro,
                terminal,
                beta=beta,
                lam=lam,
                td_lambda=float(t.td_lambda),
                step_map=t.step_map,
            )

        (c_loss, aux), c_grads = jax.value_and_grad(critic_objective, has_aux=True)(state["critic"])
        deltas = aux["td_errors"]

        # Actor: the paper's likelihood-ratio gradient, or the pathwise option.
        if t.actor == "lr":
            adv = losses.advantages(deltas, float(t.adv_lambda))
            adv = losses.normalize_advantages(adv, t.adv_norm)

            def actor_objective(ap):
                mu = model.guidance_mean_fn(ap, cfg, y, mask)
                return losses.lr_actor_loss(mu, ro, adv, step_map=t.step_map)
        else:
            v_frozen = model.value_fn(state["critic"], cfg, y, mask, x0)

            def actor_objective(ap):
                mu = model.guidance_mean_fn(ap, cfg, y, mask)
                return losses.pathwise_actor_loss(
                    mu,
                    v_frozen,
                    ro,
                    psi,
                    beta=beta,
                    lam=lam,
                    step_map=t.step_map,
                )

        a_loss, a_grads = jax.value_and_grad(actor_objective)(state["actor"])

        # optax mixes Python floats with int32 counts (strict promotion in the tests rejects it).
        with jax.numpy_dtype_promotion("standard"):
            c_updates, critic_opt = critic_tx.update(c_grads, state["critic_opt"], state["critic"])
            a_updates, actor_opt = actor_tx.update(a_grads, state["actor_opt"], state["actor"])
        actor_on = (step >= warmup).astype(jnp.float32)  # critic-only warm-up
        a_updates = jax.tree.map(lambda u: actor_on * u, a_updates)
        critic = optax.apply_updates(state["critic"], c_updates)
        actor = optax.apply_updates(state["actor"], a_updates)
        # EMA with a ramp (young runs average over their short past only).
        stepf = step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + stepf) / (10.0 + stepf))
        actor_ema = jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * p, state["actor_ema"], actor
        )

        values = aux["values"]
        mc = losses.lambda_returns(aux["costs"], values, 1.0)  # realised costs-to-go
        hole = 1.0 - mask
        hole_mse = jnp.sum(jnp.square(ro.xs[-1] - x0) * hole) / jnp.maximum(
            jnp.sum(hole) * x0.shape[-1], 1.0
        )
        metrics = dict(
            critic_loss=c_loss,
            actor_loss=a_loss,
            delta_mean=jnp.mean(deltas),
            delta_std=jnp.std(deltas),
            critic_error=jnp.sqrt(jnp.mean(jnp.square(values[:-1] - mc))),
            critic_error_v0=jnp.sqrt(jnp.mean(jnp.square(values[0] - mc[0]))),
            guidance_rms=jnp.sqrt(jnp.mean(jnp.square(ro.means))),
            terminal_loss=jnp.mean(terminal),
            terminal_mse_hole=hole_mse,
            running_cost=jnp.mean(jnp.sum(aux["costs"], axis=0)),
            actor_grad_norm=optax.tree.norm(a_grads),
            critic_grad_norm=optax.tree.norm(c_grads),
        )
        new_state = dict(
            step=step + 1,
            actor=actor,
            critic=critic,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            actor_ema=actor_ema,
        )
        return new_state, metrics

    return train_step


# ---------------------------------------------------------------------------------------------
# Validation: the deterministic deployed sampler on a fixed batch


def make_validate(cfg: model.AIDConfig, backbone_config, backbone_sha256: str):
    """jitted ``(backbone_params, actor, x0, mask, key) -> (samples, hole MSE per image)``."""

    @jax.jit
    def validate(backbone_params, actor, x0, mask, key):
        p = model.AIDParams(backbone_params, actor, backbone_config, cfg, backbone_sha256)
        x = model.inpaint(p, x0, mask, key=key, paste_back=True).x
        hole = 1.0 - mask
        mse = jnp.sum(jnp.square(x - x0) * hole, axis=(1, 2, 3)) / jnp.maximum(
            jnp.sum(hole, axis=(1, 2, 3)) * x0.shape[-1], 1.0
        )
        return x, mse

    return validate


def validation_set(config, image_shape, specs):
    """The fixed validation batch (x0, masks) of a guidance-module run (AID, DEFT)."""
    source = sources.make_source(config.eval_data)
    n = int(config.train.val_images)
    # The held-out validation block of the evaluation split: never a test image.
    idx = pipeline.eval_indices(len(source), n, int(config.seed), subset="validation")
    x0 = pipeline.to_model_range(source.get(idx)[0])
    m = masks_at(specs, n, image_shape[:2], int(config.seed), 0, stream=1)
    return x0, m


# ---------------------------------------------------------------------------------------------
# The run: aid_jax.train_loop with AID's state, step, inputs and validation hooks


def make_trainer(config, mesh: jax.sharding.Mesh) -> train_loop.Trainer:
    """The AID run for aid_jax.train_loop: checks, state, step, inputs, validation hooks."""
    t = config.train

    # ------------------------------------------------------------------ backbone, data
    backbone = backbones.backbone_from_config(config.backbone)
    shape = backbone.image_shape
    cfg = aid_config(config, shape)
    specs = mask_specs(config)
    source = sources.make_source(config.data)
    if tuple(source.image_shape) != tuple(shape):
        raise ValueError(
            f"data images are {source.image_shape} but the backbone makes {shape}; set data.pad_to"
        )
    batch = int(t.batch_size)
    rows = batch // 2 if t.antithetic else batch  # distinct observations per step
    if (t.antithetic and batch % 2) or rows % mesh.devices.size:
        raise ValueError(
            f"train.batch_size={batch} must be even with antithetic pairs and its "
            f"{'half' if t.antithetic else 'value'} must divide over {mesh.devices.size} devices"
        )
    sha = backbone.params_sha256

    # ------------------------------------------------------------------ networks, optimisers
    actor_tx, critic_tx = make_optimizers(config)
    root = jax.random.key(int(config.seed))
    init_key, train_key, val_key = jax.random.split(root, 3)
    backbone_params = sharding.replicate(backbone.params, mesh)

    def inputs_at(step):
        x0 = train_loop.host_images(source, step, rows, config.seed)
        m = masks_at(specs, x0.shape[0], shape[:2], int(config.seed), step)
        return (backbone_params, *train_loop.global_batch(mesh, x0, m), train_key)

    # ------------------------------------------------------------------ validation hooks
    validate = make_validate(cfg, backbone.config, sha)
    val_x0, val_mask = validation_set(config, shape, specs)
    val_x0_d = sharding.shard_batch(val_x0, mesh)
    val_mask_d = sharding.shard_batch(val_mask, mesh)
    summary = dict(config=cfg, val_mse_hole=None, val_mse_hole_init=None)

    def on_start(state, writer):
        write_run_manifest(writer.workdir, cfg, config, sha)
        # The zero network: the unguided sampler (aid.base = "none") or the projection sampler.
        zero_actor = jax.tree.map(jnp.zeros_like, state["actor"])
        _, init_mse = validate(backbone_params, zero_actor, val_x0_d, val_mask_d, val_key)
        summary["val_mse_hole_init"] = float(np.mean(np.asarray(init_mse)))

    def on_step(step, state, writer):  # validation grids and MSE every eval_every steps
        if (t.eval_every and step % int(t.eval_every) == 0) or step == int(t.num_steps):
            x_val, mse = validate(
                backbone_params, state["actor_ema"], val_x0_d, val_mask_d, val_key
            )
            summary["val_mse_hole"] = float(np.mean(np.asarray(mse)))
            writer.write_scalars(
                step,
                {
                    "val_mse_hole": summary["val_mse_hole"],
                    "val_mse_hole_init": summary["val_mse_hole_init"],
                },
            )
            _write_grid(writer, step, val_x0, val_mask, np.asarray(x_val))

    return train_loop.Trainer(
        name="train AID",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(config, cfg, actor_tx, critic_tx, init_key),
        step_fn=make_train_step(config, cfg, backbone.config, actor_tx, critic_tx),
        inputs_at=inputs_at,
        loss="critic_loss",
        parameters=lambda state: dict(actor=state["actor"], critic=state["critic"]),
        postfix=lambda m: dict(psi=f"{m['terminal_loss']:.4f}", delta=f"{m['delta_std']:.3g}"),
        resumed="resumed AID training",
        on_start=on_start,
        on_step=on_step,
        summary=summary,
    )


def train(config, workdir: str) -> dict:
    """Train (or resume) AID in ``workdir``; returns the final state and a summary."""
    return train_loop.run(make_trainer(config, sharding.make_mesh()), workdir)


def _write_grid(writer, step, x0, mask, x, num: int = 8):
    cols = [
        ("observed", images.observed_view(x0[:num], mask[:num])),
        ("AID", x[:num]),
        ("ground truth", x0[:num]),
    ]
    img, _ = images.comparison_grid(cols)
    train_loop.save_grid(writer, step, "validation", img)


# ---------------------------------------------------------------------------------------------
# What a workdir or an export holds, for aid_jax.load


def write_run_manifest(directory: pathlib.Path, cfg: model.AIDConfig, config, sha: str) -> None:
    manifest = dict(
        format="aid_jax-guidance",
        format_version=1,
        aid_config=cfg.to_dict(),
        backbone=api.backbone_record(config.backbone.to_dict(), sha, directory),
        date=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    (directory / api.STATE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def export(workdir: str, out: str) -> pathlib.Path:
    """Write the EMA actor of the newest checkpoint in ``workdir`` as ``out/actor`` (Orbax) plus
    ``out/aid_config.json``; ``aid_jax.load(out)`` reads it."""
    params, manifest = api.load_actor(workdir)
    out = pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    out.mkdir(parents=True)
    checkpoint.save_pytree(out / "actor", params)
    # Re-anchor the backbone's relative path at the export (found from the workdir first).
    found = api.find_recorded_backbone(manifest.get("backbone", {}), pathlib.Path(workdir))
    if found is not None:
        manifest["backbone"] = api.anchor_backbone_path(manifest["backbone"], found, out)
    (out / api.STATE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


__all__ = [
    "ResumeError",
    "aid_config",
    "export",
    "make_train_step",
    "make_trainer",
    "masks_at",
    "train",
]
