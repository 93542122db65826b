"""DEFT on the embedded default: train an h-transform network (Denker et al. 2024) against the
shipped Fashion-MNIST backbone, then evaluate it against the baselines with the harness
(docs/DEFT_DESIGN.md).

Run:    python -m aid_jax.main --config=configs/deft_fashion_mnist.py --workdir=runs/deft
Only train:     --config.mode=train_deft
Only evaluate:  --config.mode=evaluate --config.methods.deft.options.checkpoint=runs/deft
Sizes:  the default h-network is ≈5 % of the 1,029,905-parameter backbone (51,514 parameters,
        DEFT's own scale: the official inpainting network is 4.29 % of ADM-256);
        :small is within AID's actor budget of 1 % (10,234 parameters, AID's actor widths).
Smoke:  --config=configs/deft_fashion_mnist.py:smoke (tiny random-weight fixture backbone,
        synthetic 16×16 data, a few steps; what the tests run).

Writes <workdir>/checkpoints, metrics.jsonl, samples/ (validation grids), deft_config.json and,
after evaluation, <workdir>/eval/{results.json,results.md,grid_<mask>.png,quality_vs_nfe.png}.
"""

import ml_collections

from configs import eval_fashion_mnist

VARIANTS = ("", "small", "smoke", "validation", "small_validation")


def get_config(arg=None):
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of deft_fashion_mnist; choose from {VARIANTS}")
    if arg.endswith("validation"):
        return _validation(get_config(arg.removesuffix("validation").rstrip("_")))
    config = eval_fashion_mnist.get_config(None)
    config.mode = "deft"  # train_deft, then evaluate
    config.workdir = "runs/deft_small" if arg == "small" else "runs/deft"
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="train", path="", pad_to=32)
    )
    config.eval_data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="test", path="", pad_to=32)
    )
    # The h-network and its training problem (aid_jax.deft.model.DEFTConfig; DEFT_DESIGN §4).
    config.deft = ml_collections.ConfigDict(
        dict(
            num_steps=10,  # default deployment steps (validation sampler; sampler_grid's grid)
            sigma_min=0.002,
            sigma_max=80.0,
            rho=7.0,
            sigma_data=0.5,
            output_scale="sigma",  # s(σ) = σ, the official ε-form; "c_out"
            # D + s·U + γr (the Gaussian study's choice, DEFT_DESIGN §7); "scaled": D + s·(U + γr),
            # the official form
            gate_units="denoiser",
            gate_init=0.0,  # γ at init (0: start exactly at the backbone; official: scaled, −0.01)
            sigma_dist="deft_vp",  # "deft_vp" | "edm" | "sampler_grid"
            sigma_clip=True,  # deft_vp restricted to [sigma_min, sigma_max]
            P_mean=-1.2,
            P_std=1.2,
            channels=(16, 20, 20),  # 49,369 UNet parameters
            emb_dim=32,
            gate_hidden=32,  # gate MLP 32-32-1 on the σ-embedding: 2,145 parameters
            gate_layers=2,
        )
    )
    if arg == "small":  # AID's actor widths: 10,089 + a 145-parameter gate = 0.99 %
        config.deft.update(channels=(8, 8, 8), emb_dim=16, gate_hidden=8, gate_layers=1)
    config.train = ml_collections.ConfigDict(
        dict(
            masks="center_box,half,strokes",  # entries of config.masks, mixed per sample
            batch_size=64,
            num_steps=5000,
            log_every=50,
            eval_every=500,
            checkpoint_every=250,
            keep=3,
            val_images=32,  # fixed batch of the validation block of config.eval_data
            tensorboard=True,
            # Class-conditional backbones: None = the images' classes when the data has them,
            # False = the zero class vector (train_loop.use_class_labels).
            use_labels=ml_collections.FieldReference(None, field_type=bool),
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-3,  # the official Hydra default (inpainting: 1e-4 at batch 4)
            b1=0.9,
            b2=0.999,
            warmup_steps=50,
            schedule="linear",  # linear decay to 0 at decay_steps (official); "constant"
            decay_steps=0,
            grad_clip=1.0,
            ema=0.999,
        )
    )
    # The decay horizon follows train.num_steps (also when overridden on the command line); a
    # run resumed with another length is a new run (optim is run-defining).
    config.optim.decay_steps = config.train.get_ref("num_steps")
    # Multi-process (multi-host) training (aid_jax/distributed.py; off here). The environment
    # overrides each field (AID_JAX_DISTRIBUTED, AID_JAX_COORDINATOR, AID_JAX_NUM_PROCESSES,
    # AID_JAX_PROCESS_ID, AID_JAX_DISTRIBUTED_TIMEOUT). coordinator "" / num_processes 0 /
    # process_id -1: detected by JAX (Cloud TPU pods, SLURM, Open MPI).
    config.distributed = ml_collections.ConfigDict(
        dict(enabled=False, coordinator="", num_processes=0, process_id=-1, timeout_s=300)
    )
    # The harness with DEFT added; the evaluation reads the trained module from <workdir>
    # unless methods.deft.options.checkpoint says otherwise.
    config.methods.deft = ml_collections.ConfigDict(
        dict(method="deft", steps=(5, 10), options=dict(checkpoint="", solver="euler"))
    )
    config.methods.deft_heun = ml_collections.ConfigDict(
        dict(method="deft", steps=(10,), options=dict(checkpoint="", solver="heun"))
    )
    config.eval.methods = "deft,deft_heun,unguided,replacement,repaint,ddnm,pigdm,dps"
    config.eval.num_images = 32
    config.methods.unguided.steps = (6, 10)
    config.methods.replacement.steps = (6, 10)
    config.methods.ddnm.steps = (10, 20)
    config.methods.pigdm.steps = (10,)
    config.methods.dps.steps = (10,)
    if arg == "smoke":
        config.backbone.path = "tests/testdata/edm_ddpmpp_tiny.pkl"
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=32, image_size=16, channels=3, seed=0)
        )
        # 64 images: a validation block of 12 (≥ val_images) and 52 test images.
        config.eval_data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=64, image_size=16, channels=3, seed=1)
        )
        config.deft.update(num_steps=3, channels=(4, 4), emb_dim=8, gate_hidden=4, gate_layers=1)
        config.train.update(
            masks="center_box,half",
            batch_size=16,  # two per device of the tests' 8-device mesh
            num_steps=4,
            log_every=2,
            eval_every=2,
            checkpoint_every=2,
            val_images=8,
            tensorboard=False,
        )
        config.optim.warmup_steps = 1
        config.eval.update(
            methods="deft,replacement",
            masks="center_box,half",
            num_images=8,
            batch_size=8,
            grid_images=4,
            bootstrap=100,
        )
        config.methods.deft.steps = (3,)
        config.methods.replacement.steps = (3,)
        config.metrics.update(lpips="", classifier="", reference_num=32, kid_subsets=5)
        config.report.headline_metric = "psnr_hole"
    return config


def _validation(config):
    """The trained module on the validation block (64 images × the three training masks, never a
    test image), paired with the tuning search's baselines by benchmarks/aid_vs_tuned.py:
        python -m aid_jax.main --config=configs/deft_fashion_mnist.py:validation \
            --config.mode=evaluate --workdir=runs/deft_val \
            --config.methods.deft.options.checkpoint=runs/deft
        PYTHONPATH=. python benchmarks/aid_vs_tuned.py runs/deft_val --method deft --steps 10
    """
    from configs import tuned_fashion_mnist

    config.eval.update(subset="validation", num_images=64, masks="center_box,half,strokes")
    ddnm = dict(tuned_fashion_mnist.TUNED["ddnm"][10])
    config.methods.ddnm_nfe10 = eval_fashion_mnist._method("ddnm", (ddnm.pop("num_steps"),), **ddnm)
    config.methods.deft.steps = (5, 10)
    config.eval.methods = "deft,ddnm_nfe10"
    config.metrics.classifier = ""  # FID at 64 images ranks nothing
    return config
