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

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aid_jax import backbones, checkpoint, guidance_module, images, masks, sharding, train_loop
from aid_jax.aid import api, control, losses, model
from aid_jax.aid import teacher as teacher_lib
from aid_jax.data import pipeline, sources
from aid_jax.metrics import lpips as lpips_metric

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
    "train.teacher",
    "train.use_labels",
)
ACTORS = ("lr", "pathwise", "backprop")


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
    """The training state; the critic and its optimiser only where the estimator uses them
    (``train.actor='backprop'`` has none)."""
    k_actor, k_critic = jax.random.split(key)
    with_critic = config.train.actor != "backprop"

    @jax.jit
    def build():
        actor = model.init_actor(k_actor, cfg)
        state = dict(
            step=jnp.zeros((), jnp.int32),
            actor=actor,
            actor_opt=actor_tx.init(actor),
            actor_ema=jax.tree.map(jnp.copy, actor),
        )
        if with_critic:
            critic = model.init_critic(k_critic, cfg)
            state.update(critic=critic, critic_opt=critic_tx.init(critic))
        return state

    with jax.numpy_dtype_promotion("standard"):
        return build()


def make_teacher(config, cfg: model.AIDConfig):
    """The teacher of Ψ's teacher terms (``train.teacher``), or None; an error when a teacher
    term or the teacher-seeing critic has none, or a teacher is named without a use."""
    spec = config.train.get("teacher", None)
    spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
    t = teacher_lib.make_teacher(spec, cfg.schedule)
    if cfg.uses_teacher and t is None:
        raise ValueError(
            "aid.psi_teacher > 0, aid.psi_lpips with lpips_target='teacher' or aid.critic_teacher "
            "needs a teacher: set train.teacher.method (e.g. 'pigdm') and its num_steps/options"
        )
    if t is not None and not cfg.uses_teacher:
        raise ValueError(
            f"train.teacher.method={t.method!r} is set but nothing uses it: set aid.psi_teacher, "
            "aid.psi_lpips with aid.lpips_target='teacher' or aid.critic_teacher, or clear it"
        )
    return t


def lpips_fn(cfg: model.AIDConfig):
    """``(x, target, hole) -> [B]`` LPIPS on the hole for Ψ's perceptual term, or None."""
    if not cfg.psi_lpips:
        return None
    net = cfg.lpips_net
    params = lpips_metric.params_for_option(
        net, f"AID's psi_lpips > 0 (lpips_net={net!r})", "aid.psi_lpips=0"
    )

    def fn(x, target, hole):
        if x.shape[-1] not in (1, 3):
            raise ValueError(f"LPIPS needs 1 or 3 channels, got {x.shape[-1]}")
        return lpips_metric.lpips(params, x, target, hole, net=net)

    return fn


def make_train_step(
    config, cfg: model.AIDConfig, backbone_config, actor_tx, critic_tx, teacher=None, space=None
):
    """One actor–critic iteration: (state, backbone_params, x0, mask, key) -> (state, metrics).

    Pure; jit at the caller. With ``train.antithetic`` the batch (x0, mask) holds B/2 distinct
    observations, each rolled out twice with policy noises ε and −ε from the same X_0. With a
    ``teacher`` (:func:`make_teacher`) the starts X_0 are the teacher's, one key per
    observation, and its output T enters Ψ (and the critic, ``aid.critic_teacher``).

    ``aid.psi_space='pixel'`` (a latent backbone): ``space`` is the ``latent.LatentSpace`` of the
    training latents, the step's second argument is ``(backbone_params, vae_params)``, and Ψ is
    taken on decoded pixels (:func:`pixel_view`).
    """
    t = config.train
    if t.actor not in ACTORS:
        raise ValueError(f"train.actor must be one of {ACTORS}, got {t.actor!r}")
    if t.actor == "backprop" and t.antithetic:
        raise ValueError(
            "train.actor='backprop' draws no policy noise, so antithetic pairs would only repeat "
            "each observation: set train.antithetic=False"
        )
    if cfg.uses_teacher and teacher is None:
        raise ValueError("this AIDConfig needs a teacher (make_teacher(config, cfg))")
    pixel_psi = cfg.psi_space == "pixel"
    if pixel_psi and space is None:
        raise ValueError(
            "aid.psi_space='pixel' decodes Ψ's input with the training latents' VAE: train on "
            "data.name='vae_latents' (or pass space=), or set aid.psi_space='latent'"
        )
    perceptual = lpips_fn(cfg)
    sigmas = cfg.sigmas()
    lam = cfg.lam
    per_step = cfg.beta_weighting != "uniform"
    beta = jnp.asarray(cfg.betas()) if per_step else cfg.beta
    policy_std = jnp.asarray(cfg.policy_stds()) if per_step else cfg.policy_std
    ema_decay = float(config.optim.ema)
    warmup = int(t.critic_warmup)

    def ema_update(state, actor):  # EMA with a ramp (young runs average over their short past)
        stepf = state["step"].astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + stepf) / (10.0 + stepf))
        return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["actor_ema"], actor)

    def backprop_step(state, denoise, x_init, x0, mask, reference, psi):
        """train.actor='backprop': one exact-gradient step of the deterministic deployed sampler
        (losses.backprop_actor_loss); the state has no critic."""
        y = mask * x0

        def actor_objective(ap):
            mu = model.guidance_mean_fn(ap, cfg, y, mask)
            return losses.backprop_actor_loss(
                denoise, mu, x_init, sigmas, psi, beta=beta, reference=reference, has_aux=True
            )

        (a_loss, aux), a_grads = jax.value_and_grad(actor_objective, has_aux=True)(state["actor"])
        with jax.numpy_dtype_promotion("standard"):
            a_updates, actor_opt = actor_tx.update(a_grads, state["actor_opt"], state["actor"])
        actor = optax.apply_updates(state["actor"], a_updates)
        hole = 1.0 - mask
        hole_mse = jnp.sum(jnp.square(aux["x"] - x0) * hole) / jnp.maximum(
            jnp.sum(hole) * x0.shape[-1], 1.0
        )
        metrics = dict(
            actor_loss=a_loss,
            terminal_loss=jnp.mean(aux["terminal"]),
            terminal_mse_hole=hole_mse,
            running_cost=jnp.mean(aux["running"]),
            guidance_rms=aux["charged_rms"],
            actor_grad_norm=optax.tree.norm(a_grads),
        )
        new_state = dict(
            state,
            step=state["step"] + 1,
            actor=actor,
            actor_opt=actor_opt,
            actor_ema=ema_update(state, actor),
        )
        return new_state, metrics

    def train_step(state, backbone_params, x0, mask, base_key, labels=None):
        """``labels``: one-hot rows for a class-conditional backbone (train.use_labels), else
        None (an unconditional backbone, or its zero class vector)."""
        if pixel_psi:
            backbone_params, vae_params = backbone_params
        step = state["step"]
        key = jax.random.fold_in(base_key, step)
        k_init, k_policy = jax.random.split(key)

        def bind(rows):  # the backbone with the batch's classes (methods may pass their own)
            def denoise(x, sigma, class_labels=None):
                given = rows if class_labels is None else class_labels
                return backbones.denoise(backbone_params, x, sigma, given, config=backbone_config)

            return denoise

        if teacher is None:
            x_init = cfg.sigma_max * jax.random.normal(k_init, x0.shape, jnp.float32)
            target = None
        else:  # X_0 and T from one key per observation (aid_jax.aid.teacher)
            row_keys = jax.random.split(k_init, x0.shape[0])
            x_init = teacher.starts(row_keys, x0.shape[1:])
            target = teacher(bind(None), mask * x0, mask, row_keys, labels)
        if t.antithetic:
            x0, mask, x_init, target, labels = control.pair_up((x0, mask, x_init, target, labels))
        denoise = bind(labels)
        y = mask * x0

        reference = model.reference_fn(cfg, y, mask) if cfg.charge == "residual" else None
        # Ψ's world: the state's space, or decoded pixels (aid.psi_space='pixel').
        if pixel_psi:
            view, (x0_psi, mask_psi, target_psi) = pixel_view(space, vae_params, x0, mask, target)
        else:
            view, x0_psi, mask_psi, target_psi = (lambda v: v), x0, mask, target
        weight = losses.hole_weights(mask_psi, cfg.hole_weight)

        def psi(xk):  # the terminal cost Ψ (AIDConfig.psi_*)
            xk = view(xk)
            out = jnp.zeros(xk.shape[:1], jnp.float32)
            if cfg.psi_mse:
                out = out + cfg.psi_mse * losses.terminal_cost(xk, x0_psi, weight)
            if cfg.psi_observed:
                out = out + cfg.psi_observed * losses.observed_cost(xk, mask_psi * x0_psi, mask_psi)
            if cfg.psi_teacher:
                out = out + cfg.psi_teacher * losses.terminal_cost(xk, target_psi)
            if cfg.psi_lpips:
                ref = target_psi if cfg.lpips_target == "teacher" else x0_psi
                hole = jnp.broadcast_to(1.0 - mask_psi, xk.shape[:3] + (1,))
                out = out + cfg.psi_lpips * perceptual(jnp.clip(xk, -1.0, 1.0), ref, hole)
            return out

        if t.actor == "backprop":  # exact gradients through the deployed sampler, no critic
            return backprop_step(state, denoise, x_init, x0, mask, reference, psi)

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
            reference=reference,
        )
        terminal = psi(ro.xs[-1])

        # Critic: semi-gradient TD(τ) on the rollout (AID.md §4).
        def critic_objective(cp):
            v = model.value_fn(cp, cfg, y, mask, x0, target)
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
            v_frozen = model.value_fn(state["critic"], cfg, y, mask, x0, target)

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
        actor_ema = ema_update(state, actor)

        values = aux["values"]
        mc = losses.lambda_returns(aux["costs"], values, 1.0)  # realised costs-to-go
        hole = 1.0 - mask
        hole_mse = jnp.sum(jnp.square(ro.xs[-1] - x0) * hole) / jnp.maximum(
            jnp.sum(hole) * x0.shape[-1], 1.0
        )
        extra = {}
        if target is not None:
            extra["teacher_mse_hole"] = jnp.sum(jnp.square(target - x0) * hole) / jnp.maximum(
                jnp.sum(hole) * x0.shape[-1], 1.0
            )
            extra["terminal_teacher_mse"] = jnp.mean(jnp.square(ro.xs[-1] - target))
        metrics = dict(
            **extra,
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


def pixel_view(space, vae_params, x0, mask, target=None):
    """Ψ on decoded pixels (``aid.psi_space='pixel'``): ``(decode, (x0_px, mask_px, T_px))`` with
    ``decode`` the VAE's decoder (latents -> pixels in [-1, 1], unclamped; differentiated
    through), x0_px = dec(x0) — the ground truth as the VAE can render it, the best any latent
    sample can reach —, the latent mask upsampled to its f×f pixel patches (the inverse of
    ``latent.latent_mask`` on masks it made), and the teacher's output decoded (or None). The
    references carry no gradient."""

    def decode(z):
        return space.decode(vae_params, z)

    f = space.factor
    mask_px = jnp.repeat(jnp.repeat(mask, f, axis=1), f, axis=2)
    refs = (x0, None if target is None else target)
    x0_px, target_px = (None if r is None else jax.lax.stop_gradient(decode(r)) for r in refs)
    return decode, (x0_px, mask_px, target_px)


# ---------------------------------------------------------------------------------------------
# Validation: the deterministic deployed sampler on a fixed batch


def make_validate(cfg: model.AIDConfig, backbone_config, backbone_sha256: str):
    """jitted ``(backbone_params, actor, x0, mask, key, labels=None) -> (samples, hole MSE per
    image)``; ``labels`` one-hot rows for a class-conditional backbone (None: its zero class
    vector, or an unconditional backbone)."""

    @jax.jit
    def validate(backbone_params, actor, x0, mask, key, labels=None):
        p = model.AIDParams(backbone_params, actor, backbone_config, cfg, backbone_sha256)
        x = model.inpaint(p, x0, mask, key=key, labels=labels, paste_back=True).x
        hole = 1.0 - mask
        mse = jnp.sum(jnp.square(x - x0) * hole, axis=(1, 2, 3)) / jnp.maximum(
            jnp.sum(hole, axis=(1, 2, 3)) * x0.shape[-1], 1.0
        )
        return x, mse

    return validate


def validation_set(config, image_shape, specs, label_dim: int = 0):
    """The fixed validation batch (x0, masks, labels) of a guidance-module run (AID, DEFT);
    labels are one-hot rows when ``label_dim`` > 0 (the trainer gives the backbone classes),
    else None."""
    source = sources.make_source(config.eval_data)
    n = int(config.train.val_images)
    # The held-out validation block of the evaluation split: never a test image.
    idx = pipeline.eval_indices(len(source), n, int(config.seed), subset="validation")
    images, ids = source.get(idx)
    x0 = pipeline.to_model_range(images)
    m = masks_at(specs, n, image_shape[:2], int(config.seed), 0, stream=1)
    labels = None
    if label_dim:
        labels = train_loop.class_label_rows(ids, label_dim, f"eval_data {source.name}")
    return x0, m, labels


def step_inputs(mesh, backbone_params, key, x0, mask, labels):
    """A guidance-module training step's inputs after the state: ``(backbone_params, x0, mask,
    key)`` with this process's rows split over the mesh, and the one-hot ``labels`` last when
    the backbone gets classes (AID and DEFT steps take ``labels=None`` otherwise)."""
    if labels is None:
        return (backbone_params, *train_loop.global_batch(mesh, x0, mask), key)
    x0, mask, labels = train_loop.global_batch(mesh, x0, mask, labels)
    return (backbone_params, x0, mask, key, labels)


def training_labels(config, backbone, source):
    """(label_dim the trainer feeds, 0 for none; ``labels_at(ids)`` -> one-hot rows or None):
    the images' classes for a class-conditional backbone unless ``train.use_labels`` says
    otherwise (train_loop.use_class_labels)."""
    label_dim = int(getattr(backbone.config, "label_dim", 0) or 0)
    use = train_loop.use_class_labels(config.train.get("use_labels", None), label_dim, source)
    if not use:
        return 0, lambda ids: None
    return label_dim, lambda ids: train_loop.class_label_rows(ids, label_dim, f"data {source.name}")


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

    teacher = make_teacher(config, cfg)  # before anything compiles: bad names fail here
    # Latent training data carries its VAE: Ψ on pixels (aid.psi_space) and pixel validation.
    space = getattr(source, "space", None)
    if cfg.psi_space == "pixel" and space is None:
        raise ValueError(
            f"aid.psi_space='pixel' needs latent training data (data.name='vae_latents', whose "
            f"VAE decodes Ψ's input); data {source.name!r} is already pixels: set "
            "aid.psi_space='latent'"
        )

    # ------------------------------------------------------------------ networks, optimisers
    actor_tx, critic_tx = make_optimizers(config)
    root = jax.random.key(int(config.seed))
    init_key, train_key, val_key = jax.random.split(root, 3)
    backbone_params = sharding.replicate(backbone.params, mesh)
    frozen = backbone_params  # the step's frozen networks: the backbone (and the VAE for Ψ)
    if cfg.psi_space == "pixel":
        frozen = (backbone_params, sharding.replicate(space.params, mesh))

    label_dim, labels_at = training_labels(config, backbone, source)

    def inputs_at(step):
        batch_rows = train_loop.host_batch(source, step, rows, config.seed)
        m = train_loop.process_rows(masks_at(specs, rows, shape[:2], int(config.seed), step))
        labels = labels_at(batch_rows["label"])
        return step_inputs(mesh, frozen, train_key, batch_rows["image"], m, labels)

    # ------------------------------------------------------------------ validation hooks
    validate = sharding.replicated_outputs(make_validate(cfg, backbone.config, sha), mesh)
    val_x0, val_mask, val_labels = validation_set(config, shape, specs, label_dim)
    val_x0_d = sharding.shard_batch(val_x0, mesh)
    val_mask_d = sharding.shard_batch(val_mask, mesh)
    val_labels_d = None if val_labels is None else sharding.shard_batch(val_labels, mesh)
    net = config.get("metrics", {}).get("lpips", "") if "metrics" in config else ""
    lpips = lpips_metric.LPIPS.load(net, batch_size=len(val_x0)) if net else None
    # Selection (issue 16): by LPIPS on the hole (hole MSE rewards the blur of the conditional
    # mean); only runs without LPIPS (the smoke configs) fall back to hole MSE.
    select = "val_lpips_hole" if lpips is not None else "val_mse_hole"
    summary = dict(config=cfg, val_mse_hole=None, val_mse_hole_init=None, select=select)

    # What people look at and LPIPS reads: pixels (latent runs: decoded, the mask upsampled).
    to_pixels = _pixel_views(space)
    val_x0_px, val_mask_px = to_pixels(val_x0, val_mask)

    def val_metrics(actor):
        x_val, mse = validate(backbone_params, actor, val_x0_d, val_mask_d, val_key, val_labels_d)
        x_val, _ = to_pixels(np.asarray(x_val), val_mask)
        out = {"val_mse_hole": float(np.mean(np.asarray(mse)))}
        if lpips is not None:
            x_in = np.clip(x_val, -1.0, 1.0)
            out["val_lpips_hole"] = float(np.mean(lpips(x_in, val_x0_px, 1.0 - val_mask_px)))
        return x_val, out

    def keep_best(workdir, step, actor, metrics):
        """``<workdir>/best``: the best validated EMA actor so far (an export folder for
        aid_jax.load), the zero network of the start included, so the selected module is never
        worse on validation than the start."""
        if not train_loop.is_main_process():  # process 0 writes (aid_jax.distributed)
            return
        best = pathlib.Path(workdir) / "best"
        record = best / "best.json"
        if record.is_file():
            prev = json.loads(record.read_text())
            if prev.get("select") == select and prev["value"] <= metrics[select]:
                return
        info = dict(select=select, value=metrics[select], step=int(step), **metrics)
        manifest = guidance_module.run_manifest(best, api.KIND, cfg, config, sha)
        manifest.update(step=int(step), validation=dict(metrics, step=int(step)))
        # Written whole beside the old one, then swapped in: an interruption leaves one of them.
        new, old = best.with_name("best.new"), best.with_name("best.old")
        for stale in (new, old):
            shutil.rmtree(stale, ignore_errors=True)
        guidance_module.save_module(
            new, api.KIND, jax.tree.map(np.asarray, actor), manifest, final=best
        )
        (new / "best.json").write_text(json.dumps(info, indent=1) + "\n")
        if best.exists():
            best.rename(old)
        new.rename(best)
        shutil.rmtree(old, ignore_errors=True)
        summary["best"] = info

    def on_start(state, writer):
        if train_loop.is_main_process():
            write_run_manifest(writer.workdir, cfg, config, sha)
        # The zero network: the unguided sampler (aid.base = "none") or the projection sampler.
        zero_actor = jax.tree.map(jnp.zeros_like, state["actor"])
        _, init = val_metrics(zero_actor)
        summary["val_mse_hole_init"] = init["val_mse_hole"]
        summary["init"] = init
        keep_best(writer.workdir, 0, zero_actor, init)

    def on_step(step, state, writer):  # validation grids and metrics every eval_every steps
        if (t.eval_every and step % int(t.eval_every) == 0) or step == int(t.num_steps):
            x_val, metrics = val_metrics(state["actor_ema"])
            summary["val_mse_hole"] = metrics["val_mse_hole"]
            scalars = dict(metrics, **{f"{k}_init": v for k, v in summary["init"].items()})
            writer.write_scalars(step, scalars)
            _write_grid(writer, step, val_x0_px, val_mask_px, x_val)
            keep_best(writer.workdir, step, state["actor_ema"], metrics)

    return train_loop.Trainer(
        name="train AID",
        config=config,
        run_defining=RUN_DEFINING,
        mesh=mesh,
        init_state=lambda: init_state(config, cfg, actor_tx, critic_tx, init_key),
        step_fn=make_train_step(config, cfg, backbone.config, actor_tx, critic_tx, teacher, space),
        inputs_at=inputs_at,
        loss="actor_loss" if t.actor == "backprop" else "critic_loss",
        parameters=lambda state: {k: state[k] for k in ("actor", "critic") if k in state},
        postfix=lambda m: dict(
            psi=f"{m['terminal_loss']:.4f}", delta=f"{m.get('delta_std', float('nan')):.3g}"
        ),
        resumed="resumed AID training",
        on_start=on_start,
        on_step=on_step,
        summary=summary,
    )


def train(config, workdir: str) -> dict:
    """Train (or resume) AID in ``workdir``; returns the final state and a summary. The
    workdir is checked and locked before the backbone and data load (one writer per workdir)."""
    with train_loop.workdir_lock(workdir):
        return train_loop.run(make_trainer(config, sharding.make_mesh()), workdir)


def _pixel_views(space):
    """``(x, mask) -> (pixels, pixel mask)`` as NumPy: the identity for pixel data; for latents
    (``space``, a ``latent.LatentSpace``) the decoded images and the mask upsampled to its
    f×f pixel patches (validation LPIPS and grids then read pixels, not latents)."""
    if space is None:
        return lambda x, mask: (x, mask)
    decode = jax.jit(space.decode)
    f = space.factor

    def views(x, mask):
        px = np.asarray(decode(space.params, jnp.asarray(x, jnp.float32)))
        return px, np.repeat(np.repeat(np.asarray(mask), f, axis=1), f, axis=2)

    return views


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
    """``<directory>/aid_config.json``: the AIDConfig, the backbone record, the parameter count,
    the data and the date (``guidance_module.write_run_manifest``)."""
    guidance_module.write_run_manifest(directory, api.KIND, cfg, config, sha)


def export(workdir: str, out: str) -> pathlib.Path:
    """Write the EMA actor of the newest checkpoint in ``workdir`` as ``out/actor`` (Orbax) plus
    ``out/aid_config.json`` and a README.md (``guidance_module.export``: step, data, validation
    metrics, parameter counts; movable); ``aid_jax.load(out)`` reads it."""
    return guidance_module.export(workdir, out, api.KIND)


__all__ = [
    "ResumeError",
    "aid_config",
    "export",
    "make_train_step",
    "make_trainer",
    "masks_at",
    "train",
]
