"""AID on the embedded default: train the guidance module against the shipped Fashion-MNIST
backbone, then evaluate it against the baselines with the evaluation harness.

Run:    python -m aid_jax.main --config=configs/fashion_mnist.py --workdir=runs/aid
Only train:     --config.mode=train_aid
Only evaluate:  --config.mode=evaluate --config.methods.aid.options.checkpoint=runs/aid
Recipe: AID's best on validation (main_recipe below; configs/aid_recipes.py:lpips+backprop):
        projection warm start, Ψ = LPIPS on the hole + 0.1·MSE, the actor trained with exact
        gradients through the deployed sampler; the report adds the shipped module
        (ported_weights/aid_fashion_mnist, the same recipe trained longer) as `aid_shipped`.
        The paper's likelihood-ratio estimator with the same objective and warm start:
        --config=configs/aid_recipes.py:lpips --config.train.actor=lr. Decisions and their
        measurements: docs/AID_DESIGN.md.
Sized for the 2-core CPU: training and the evaluation below take about 15 minutes together
(docs/BENCHMARKS.md); docs/RESULTS.md holds the longer runs.
Smoke:  --config=configs/fashion_mnist.py:smoke (tiny random-weight fixture backbone, synthetic
        16×16 data, a few steps; what the tests run).

Writes <workdir>/checkpoints, metrics.jsonl, samples/ (validation grids), aid_config.json and,
after evaluation, <workdir>/eval/{results.json,results.md,grid_<mask>.png,quality_vs_nfe.png}.
"""

import ml_collections

from configs import eval_fashion_mnist


def get_config(arg=None):
    """The main job: the trainer's defaults with the recipe that wins on validation
    (:func:`main_recipe`)."""
    config = trainer_defaults(arg)
    main_recipe(config, smoke=arg == "smoke")
    return config


def main_recipe(config, *, smoke: bool = False):
    """AID's best recipe on the embedded default (docs/AID_DESIGN.md, "The estimator was the
    limit"; configs/aid_recipes.py:lpips+backprop sized for the main job's 20 minutes):
    warm start at the projection sampler with the running cost on the learned residual, Ψ =
    LPIPS on the hole + 0.1·MSE to x0, the actor trained with exact gradients through the
    deterministic deployed sampler (no critic), batch 8. The shipped module
    (ported_weights/aid_fashion_mnist, the same recipe trained longer) is evaluated next to it."""
    config.aid.update(
        base="projection",
        output="denoiser_step",
        charge="residual",
        psi_mse=0.1,
        psi_lpips=1.0,
        lpips_target="x0",
    )
    config.train.update(actor="backprop", antithetic=False, batch_size=8, critic_warmup=0)
    if smoke:
        return
    config.train.update(num_steps=MAIN_STEPS, eval_every=50)
    config.methods.aid_shipped = ml_collections.ConfigDict(
        dict(method="aid", steps=(10,), options=dict(checkpoint=SHIPPED, solver="euler"))
    )
    methods = config.eval.methods.split(",")  # the trainer's rows, the shipped one after aid
    methods.insert(methods.index("aid") + 1, "aid_shipped")
    config.eval.methods = ",".join(methods)


MAIN_STEPS = 250  # what fits the 20 minutes on the 2-core CPU (docs/BENCHMARKS.md)
SHIPPED = "ported_weights/aid_fashion_mnist"


def trainer_defaults(arg=None):
    """The trainer's defaults (the critic-based estimators, Ψ = MSE to x0, no warm start): what
    configs/aid_recipes.py varies, what configs/afhq.py and ffhq.py start from, and the tests'
    fixture for the critic machinery."""
    config = eval_fashion_mnist.get_config(None)
    config.mode = "aid"  # train_aid, then evaluate
    config.workdir = "runs/aid"
    # The Fashion-MNIST subset that ships with the package (first 10k training images, the whole
    # test split), so the main job needs nothing but pip; the full 60k training split from
    # Debian's dataset-fashion-mnist: --config.data.name=fashion_mnist (docs/DATA.md).
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="train", path="", pad_to=32)
    )
    config.eval_data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="test", path="", pad_to=32)
    )
    # The guidance module and the relaxed control problem (aid_jax.aid.model.AIDConfig).
    config.aid = ml_collections.ConfigDict(
        dict(
            num_steps=10,  # K: training sampler steps (Euler, NFE K)
            sigma_min=0.002,
            sigma_max=80.0,
            rho=7.0,
            sigma_data=0.5,
            lam=0.001,  # temperature λ: policy std √(2λ/β) = 0.45 per coordinate
            beta=0.01,  # running cost (β/2)‖u‖²/d; 0.1 held the module back (docs/AID_DESIGN.md)
            hole_weight=1.0,  # Ψ weight of hole pixels (1: plain MSE)
            # Ψ = psi_mse·MSE to x0 + psi_observed·‖m⊙(x − y)‖²/d; the MSE's optimum is the
            # conditional mean (blur), observed-only with beta_weighting="inv_sigma2" (β_k =
            # β/σ_k²) samples the posterior in the LQ world (docs/AID_DESIGN.md).
            psi_mse=1.0,
            psi_observed=0.0,
            beta_weighting="uniform",  # "uniform" | "inv_sigma2"
            actor_channels=(8, 8, 8),
            actor_emb_dim=16,
            critic_channels=(8, 16, 32),
            critic_hidden=32,
            critic_emb_dim=16,
            critic_x0=False,
            output="denoiser",  # μ = c(σ)·n: n corrects D (docs/AID_DESIGN.md); "drift": μ = n
            base="none",  # "projection": n is added to m⊙(y − D) (warm start at DDNM, η = 0)
            charge="total",  # "residual": the running cost charges only n, not the base
            output_scale="none",  # "sigma": n × σ/σ_data (even conditioning with β/σ²)
            control_sigma_min=0.0,  # the learned guidance acts only at σ ≥ this
            # Ψ's teacher and perceptual terms (train.teacher names the teacher):
            # + psi_teacher·‖x − T‖²/d + psi_lpips·LPIPS_hole(x, x0 | T).
            psi_teacher=0.0,
            psi_lpips=0.0,
            lpips_target="x0",  # "x0" | "teacher"
            lpips_net="alex",
            critic_teacher=False,  # the critic also sees T (never the actor)
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            masks="center_box,half,strokes",  # entries of config.masks, mixed per sample
            batch_size=32,  # rollouts per step (antithetic: 16 observations × (ε, −ε))
            num_steps=300,
            actor="pathwise",  # "pathwise" | "lr" (the paper's; docs/AID_DESIGN.md)
            antithetic=True,
            td_lambda=0.0,  # critic: 0 = TD(0) (the paper), 1 = Monte-Carlo returns
            adv_lambda=0.0,  # actor weight: 0 = δ_k (the paper)
            adv_norm="per_step",  # "none" | "per_step" | "global"
            critic_warmup=20,  # critic-only steps before the actor moves
            # Class-conditional backbones: None = the images' classes when the data has them,
            # False = the zero class vector (train_loop.use_class_labels).
            use_labels=ml_collections.FieldReference(None, field_type=bool),
            # A registered sampler run from the rollout's own X_0 (aid_jax/aid/teacher.py), for
            # aid.psi_teacher / lpips_target="teacher" / critic_teacher; "" = none.
            teacher=dict(method="", num_steps=0, options=dict()),
            step_map="vmap",  # networks over the K steps at once ("map": less memory)
            log_every=10,
            eval_every=100,
            checkpoint_every=50,
            keep=3,
            val_images=32,  # fixed batch of the validation block of config.eval_data
            tensorboard=True,
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            actor_lr=1e-3,
            critic_lr=3e-3,
            critic_opt="adam",  # "adam" | "sgd" (the LQ benchmark's choice; docs/AID_DESIGN.md)
            warmup_steps=10,
            schedule="constant",  # "constant" | "cosine"
            final_lr_frac=0.1,
            grad_clip=1.0,
            ema=0.99,
        )
    )
    # Multi-process (multi-host) training (aid_jax/distributed.py; off here). The environment
    # overrides each field (AID_JAX_DISTRIBUTED, AID_JAX_COORDINATOR, AID_JAX_NUM_PROCESSES,
    # AID_JAX_PROCESS_ID, AID_JAX_DISTRIBUTED_TIMEOUT). coordinator "" / num_processes 0 /
    # process_id -1: detected by JAX (Cloud TPU pods, SLURM, Open MPI).
    config.distributed = ml_collections.ConfigDict(
        dict(enabled=False, coordinator="", num_processes=0, process_id=-1, timeout_s=300)
    )
    # The harness (configs/eval_fashion_mnist.py) with AID added; the evaluation reads the
    # trained module from <workdir> unless methods.aid.options.checkpoint says otherwise.
    config.methods.aid = ml_collections.ConfigDict(
        # Largest step count last: the grids show it (10 = the training K).
        dict(method="aid", steps=(5, 10), options=dict(checkpoint="", solver="euler"))
    )
    config.methods.aid_heun = ml_collections.ConfigDict(
        dict(method="aid", steps=(10,), options=dict(checkpoint="", solver="heun"))
    )
    config.eval.methods = "aid,aid_heun,unguided,replacement,repaint,ddnm,pigdm,dps"
    config.eval.num_images = 32
    # Every baseline at AID's NFE (10 Euler steps) and, where a 2-core CPU affords it, above:
    # RePaint's 25 jumped steps are 105 NFE (≥ 10× AID's); DPS and ΠGDM pay a backward pass per
    # step. docs/RESULTS.md adds the higher step counts of configs/eval_fashion_mnist.py.
    config.methods.unguided.steps = (6, 10)  # Heun: 11 and 19 NFE
    config.methods.replacement.steps = (6, 10)
    config.methods.ddnm.steps = (10, 20)
    config.methods.pigdm.steps = (10,)
    config.methods.dps.steps = (10,)
    if arg == "smoke":
        config.backbone.path = "tests/testdata/edm_ddpmpp_tiny.pkl"
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=32, image_size=16, channels=3, seed=0)
        )
        # 64 images: a validation block of 12 (the validation batch) and 52 test images.
        config.eval_data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=64, image_size=16, channels=3, seed=1)
        )
        config.aid.update(num_steps=3, actor_channels=(4, 4), critic_channels=(4, 8))
        config.train.update(
            masks="center_box,half",
            batch_size=16,  # 8 observations × (ε, −ε): one per device of the tests' 8-device mesh
            num_steps=4,
            critic_warmup=1,
            log_every=2,
            eval_every=2,
            checkpoint_every=2,
            val_images=8,
            tensorboard=False,
        )
        config.eval.update(
            methods="aid,replacement",
            masks="center_box,half",
            num_images=8,
            batch_size=8,
            grid_images=4,
            bootstrap=100,
        )
        config.methods.aid.steps = (3,)
        config.methods.replacement.steps = (3,)
        config.metrics.update(lpips="", classifier="", reference_num=32, kid_subsets=5)
        config.report.headline_metric = "psnr_hole"
    return config
