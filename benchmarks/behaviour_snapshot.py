"""Behaviour snapshot: the numbers a refactor must not change (issue 13's acceptance check).

    python benchmarks/behaviour_snapshot.py --out runs/before.npz          # before
    python benchmarks/behaviour_snapshot.py --out runs/after.npz --compare runs/before.npz

At fixed seeds it records (1) every registered inpainting method's output on a fixed batch of four
test images of the embedded default (centre box and half masks, small step counts, default
options otherwise), (2) `aid_jax.inpaint` with a fixed, non-zero guidance module (the initialised
actor plus seeded noise, so the guidance is active) with Euler and Heun, (3) the plain EDM sampler,
and (4) every metric of the main job's smoke run (`configs/fashion_mnist.py:smoke`: train 4
steps, evaluate, report). `--compare` prints, per entry, whether it is bitwise equal and the
largest absolute difference, and exits 1 if anything differs by more than `--atol`.
Everything runs on the host CPU; the snapshot is specific to the machine that wrote it (XLA's CPU
code differs between processors), so compare two snapshots taken on one machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = {"repaint": 4, "vipaint": 3}  # others: 4 steps
OPTIONS = {
    "repaint": dict(jump_length=2, jump_n_sample=2),
    "vipaint": dict(num_iters=2, num_mc=1),  # refinement: num_steps
}


def _batch():
    from aid_jax import masks
    from aid_jax.data import pipeline, sources

    test = sources.make_source({"name": "fashion_mnist_bundled", "split": "test"})
    images, _ = test.get(np.arange(4))
    x = pipeline.to_model_range(images)
    return x, {
        "center_box": masks.make_masks("center_box", 4, 32, seed=0),
        "half": masks.make_masks("half", 4, 32, seed=1),
    }


def methods_snapshot(out: dict) -> None:
    import aid_jax
    from aid_jax import backbones, baselines

    backbone = aid_jax.load_backbone(ROOT / "ported_weights/fashion_mnist_32")
    x, mask_sets = _batch()
    for name in baselines.METHODS:
        fn = baselines.make_inpainter(
            name,
            lambda p, x, s: backbones.denoise(p, x, s, config=backbone.config),
            num_steps=STEPS.get(name, 4),
            **OPTIONS.get(name, {}),
        )
        for mask_name, mask in mask_sets.items():
            res = fn(backbone.params, (mask * x).astype(np.float32), mask, jax.random.key(7))
            out[f"method/{name}/{mask_name}"] = np.asarray(res.x)
            out[f"nfe/{name}/{mask_name}"] = np.asarray([res.nfe, res.nfe_backward])


def aid_snapshot(out: dict) -> None:
    import aid_jax
    from aid_jax.aid import model, train
    from configs import fashion_mnist

    config = fashion_mnist.trainer_defaults(None)
    backbone = aid_jax.load_backbone(ROOT / config.backbone.path)
    cfg = train.aid_config(config, backbone.image_shape)
    actor = model.init_actor(jax.random.key(0), cfg)
    leaves, treedef = jax.tree.flatten(actor)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    params = model.AIDParams(
        backbone=backbone.params,
        actor=jax.tree.unflatten(treedef, leaves),
        backbone_config=backbone.config,
        config=cfg,
        backbone_sha256=backbone.params_sha256,
    )
    x, mask_sets = _batch()
    for solver in ("euler", "heun"):
        for mask_name, mask in mask_sets.items():
            res = aid_jax.inpaint(
                params, x, mask, key=jax.random.key(3), solver=solver, num_steps=5
            )
            out[f"aid/{solver}/{mask_name}"] = np.asarray(res.x)


def sampler_snapshot(out: dict) -> None:
    import aid_jax
    from aid_jax import sampling

    backbone = aid_jax.load_backbone(ROOT / "ported_weights/fashion_mnist_32")
    z = jax.random.normal(jax.random.key(5), (4, 32, 32, 1))
    for solver in ("euler", "heun"):
        config = sampling.SamplerConfig(solver=solver, num_steps=6)
        out[f"sampler/{solver}"] = np.asarray(
            sampling.sample(backbone.denoise_fn(), z, config=config).x
        )


def main_job_snapshot(out: dict) -> None:
    from aid_jax import evaluate
    from aid_jax.aid import train
    from configs import fashion_mnist

    config = fashion_mnist.trainer_defaults("smoke")
    config.backbone.path = str(ROOT / config.backbone.path)
    with tempfile.TemporaryDirectory() as tmp:
        train.train(config, tmp)
        config_eval = _evaluation_config(config, tmp)
        evaluate.run(config_eval, f"{tmp}/eval")
        rows = json.loads(pathlib.Path(f"{tmp}/eval/results.json").read_text())["rows"]
    for row in rows:
        for metric, value in row["metrics"].items():
            number = value.get("mean", value.get("value")) if isinstance(value, dict) else value
            key = f"main/{row['mask']}/{row['method']}/{row['steps']}/{metric}"
            out[key] = np.asarray(number, np.float64)


def _evaluation_config(config, workdir):
    """The harness config of an AID run, wherever the refactor puts the function."""
    from aid_jax import evaluate

    if hasattr(evaluate, "evaluation_config"):
        return evaluate.evaluation_config(config, workdir)
    from aid_jax.aid import train

    return train.evaluation_config(config, workdir)


def compare(new: dict, old_path: str, atol: float, skipped: tuple[str, ...] = ()) -> int:
    """Entry by entry; keys starting with a `skipped` prefix (parts not run) are left out."""
    with np.load(old_path) as f:
        old = {k: f[k] for k in f.files if not (skipped and k.startswith(skipped))}
    bad = 0
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            print(f"{key}: only in {'new' if key in new else 'old'}")
            bad += 1
            continue
        a, b = np.asarray(new[key]), np.asarray(old[key])
        if a.shape != b.shape:
            print(f"{key}: shape {a.shape} vs {b.shape}")
            bad += 1
            continue
        equal = np.array_equal(a, b, equal_nan=True)
        delta = np.abs(a.astype(np.float64) - b)
        diff = float(np.nanmax(delta)) if np.isfinite(delta).any() else 0.0
        status = "bitwise" if equal else f"max |Δ| = {diff:.3g}"
        if not equal and not diff <= atol:
            bad += 1
            status += "  <-- CHANGED"
        print(f"{key}: {status}")
    print(f"{len(new)} entries, {bad} changed beyond atol={atol}")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default="")
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args(argv)
    out: dict = {}
    methods_snapshot(out)
    aid_snapshot(out)
    sampler_snapshot(out)
    if not args.skip_main_job:
        main_job_snapshot(out)
    np.savez(args.out, **out)
    print(f"wrote {len(out)} entries to {args.out}")
    skipped = ("main/",) if args.skip_main_job else ()
    return compare(out, args.compare, args.atol, skipped) if args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
