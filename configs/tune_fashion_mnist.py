"""Baseline tuning on the validation images: every baseline's main knobs per NFE budget, chosen by
LPIPS on the hole (aid_jax/tune.py; the table in docs/EVALUATION.md).

Run:    python -m aid_jax.main --config=configs/tune_fashion_mnist.py --workdir=runs/tune
        (resumable: finished (method, budget) groups are kept; the chosen options are written to
        configs/tuned_fashion_mnist.py, which configs/eval_fashion_mnist.py:tuned reads)
Choose: --config.tune.budgets=10,20 --config.tune.methods=dps,ddnm
Smoke:  --config=configs/tune_fashion_mnist.py:smoke (tiny random backbone; what the tests run).
"""

import ml_collections

from configs import eval_fashion_mnist


def get_config(arg=None):
    config = eval_fashion_mnist.get_config("smoke" if arg == "smoke" else None)
    config.mode = "tune"
    config.workdir = "runs/tune"
    config.eval.update(
        subset="validation",  # the held-out block of the test split: never a test image
        num_images=64,
        masks="center_box,half,strokes",  # AID's training masks
        grid_images=8,
        bootstrap=1000,
    )
    config.metrics.classifier = ""  # the choice is by LPIPS; no FID on 64 images
    config.tune = ml_collections.ConfigDict(
        dict(
            methods="unguided,replacement,repaint,ddrm,ddnm,pigdm,dps,vipaint",
            budgets=(5, 10, 20, 50, 100),  # forward NFE per sample
            metric="lpips_hole",
            write="configs/tuned_fashion_mnist.py",  # "" = only <workdir>/tuning.*
            max_extend=3,  # a choice at the end of a one-knob grid: search up to 3 steps beyond
            # Per method: value tuples (every combination is a candidate) or `candidates` (a
            # tuple of option dicts), `fixed` options, optionally its own `budgets`. num_steps is
            # set per budget (the most steps whose forward NFE fits).
            space=dict(
                unguided=dict(solver=("euler", "heun")),
                replacement=dict(solver=("euler", "heun")),
                repaint=dict(
                    candidates=(
                        dict(jump_length=1, jump_n_sample=1),  # no time travel
                        dict(jump_length=2, jump_n_sample=2),
                        dict(jump_length=5, jump_n_sample=2),
                        dict(jump_length=2, jump_n_sample=3),
                        dict(jump_length=5, jump_n_sample=3),
                        dict(jump_length=10, jump_n_sample=2),
                    )
                ),
                ddrm=dict(eta=(0.5, 0.85, 1.0)),
                ddnm=dict(eta=(0.0, 0.5, 0.85, 1.0)),
                pigdm=dict(w=(0.5, 1.0, 2.0, 4.0)),
                dps=dict(zeta=(0.05, 0.2, 0.5, 1.0, 2.0)),
                vipaint=dict(
                    num_iters=(5, 10, 20),
                    fixed=dict(num_mc=1),
                    budgets=(50, 100),  # its per-image fit alone costs more than 20 NFE
                ),
            ),
        )
    )
    if arg == "smoke":
        config.data.num_images = 64  # a validation block of 12 synthetic images
        config.eval.update(num_images=8, batch_size=8, masks="center_box,half", bootstrap=100)
        config.metrics.lpips = ""
        config.tune.update(
            methods="replacement,ddnm",
            budgets=(3,),
            metric="psnr_hole",
            write="",
            max_extend=1,
        )
        config.tune.space.ddnm.eta = (0.5, 1.0)  # two candidates; a choice at 0.5 is extended
    return config
