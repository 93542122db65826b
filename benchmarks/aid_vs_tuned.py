"""A trained AID (or DEFT) module against the tuned baselines on the validation block, paired.

The tuning search (configs/tune_fashion_mnist.py) already ran every baseline candidate on the
validation block — 64 images × center_box, half, strokes, one key per (mask, image) row — and kept
the per-image metrics (benchmarks/results/tune/search/<method>_nfe<B>/per_image.npz). A module
evaluated by the harness on the same block (``eval.subset="validation"``, the same image count,
masks and seeds: configs/aid_recipes.py) has the same images, masks and noise, so the two can be
compared image by image without rerunning the baselines:

    PYTHONPATH=. python benchmarks/aid_vs_tuned.py runs/aid_lpips/eval --method aid --steps 10

(``--also deft=runs/deft_val:deft@10`` adds other modules evaluated on the same block — their
pairing is checked the same way) prints, per mask and over the three masks, the module's mean
LPIPS on the hole and the paired difference to each chosen baseline at NFE 10 and 20 (forward
NFE; ΠGDM/DPS also pay as many backward passes) with its 95 % bootstrap interval; ``--out``
writes JSON. Validation only: this never reads a test image, so it is what selection may use.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from aid_jax import report

MASKS = ("center_box", "half", "strokes")


def chosen_baselines(tune_dir: pathlib.Path, budgets) -> dict[str, dict[str, np.ndarray]]:
    """{"<method>@<budget>": {mask: per-image metric array}} of the tuning's chosen candidates."""
    tuning = json.loads((tune_dir / "tuning.json").read_text())
    out = {}
    for cand in tuning["candidates"]:
        if not cand.get("chosen") or cand["budget"] not in budgets:
            continue
        if cand["method"] in ("unguided",):
            continue
        per_image = np.load(tune_dir / cand["run"] / "per_image.npz")
        out[f"{cand['method']}@{cand['budget']}"] = dict(
            per_image=per_image, entry=cand["entry"], steps=cand["steps"], cand=cand
        )
    return out


def module_values(eval_dir: pathlib.Path, method: str, steps: int, metric: str) -> dict:
    per_image = np.load(eval_dir / "per_image.npz")
    out = {}
    for mask in MASKS:
        key = f"{mask}/{method}/{steps}/{metric}"
        if key not in per_image:
            raise KeyError(f"{eval_dir}/per_image.npz has no {key}; evaluate {method}@{steps}")
        out[mask] = np.asarray(per_image[key], np.float64)
    return out


def check_pairing(eval_dir: pathlib.Path, baselines: dict, metric: str) -> int:
    """The harness run's DDNM at 10 NFE (configs/aid_recipes.py runs it) must equal the tuning's
    image by image: same images, masks and noise. Returns the number of values compared."""
    per_image = np.load(eval_dir / "per_image.npz")
    b = baselines["ddnm@10"]
    n = 0
    for mask in MASKS:
        key = f"{mask}/ddnm_nfe10/{b['steps']}/{metric}"
        if key not in per_image:
            raise KeyError(f"{eval_dir} has no {key}: run the recipe's evaluation (ddnm_nfe10)")
        ref = b["per_image"][f"{mask}/{b['entry']}/{b['steps']}/{metric}"]
        if not np.allclose(per_image[key], ref, rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"{mask}: DDNM@10 differs from the tuning's on the same block — the images, masks "
                "or noise are not the tuning's, so the comparison would not be paired"
            )
        n += ref.size
    return n


def parse_also(spec: str) -> tuple[str, pathlib.Path, str, int]:
    """``NAME=EVAL_DIR:METHOD@STEPS`` -> (name, eval_dir, method, steps)."""
    try:
        name, rest = spec.split("=", 1)
        folder, what = rest.rsplit(":", 1)
        method, steps = what.split("@")
        return name, pathlib.Path(folder), method, int(steps)
    except ValueError:
        raise ValueError(f"--also {spec!r}: write NAME=EVAL_DIR:METHOD@STEPS") from None


def compare(
    eval_dir, tune_dir, method, steps, metric="lpips_hole", budgets=(10, 20), also=()
) -> dict:
    """``also``: (name, eval_dir, method, steps) of other modules evaluated on the same block
    (their pairing is checked on DDNM@10 too); they become rows next to the baselines."""
    ours = module_values(pathlib.Path(eval_dir), method, steps, metric)
    baselines = chosen_baselines(pathlib.Path(tune_dir), budgets)
    checked = check_pairing(pathlib.Path(eval_dir), baselines, metric)
    for name, other_dir, other_method, other_steps in also:
        checked += check_pairing(pathlib.Path(other_dir), baselines, metric)
        values = module_values(pathlib.Path(other_dir), other_method, other_steps, metric)
        entry = f"{other_method}@{other_steps}"
        baselines = dict(baselines)
        baselines[name] = dict(
            per_image={f"{m}/{entry}/0/{metric}": values[m] for m in MASKS}, entry=entry, steps=0
        )
    rows = {}
    for name, b in baselines.items():
        row = {}
        for mask in MASKS + ("all",):
            if mask == "all":
                a = np.concatenate([ours[m] for m in MASKS])
                c = np.concatenate(
                    [b["per_image"][f"{m}/{b['entry']}/{b['steps']}/{metric}"] for m in MASKS]
                )
            else:
                a = ours[mask]
                c = b["per_image"][f"{mask}/{b['entry']}/{b['steps']}/{metric}"]
            d = report.paired_bootstrap(a, c)
            row[mask] = dict(baseline=float(np.mean(c)), ours=float(np.mean(a)), delta=d)
        rows[name] = row
    return dict(method=method, steps=steps, metric=metric, pairing_checked=checked, rows=rows)


def markdown(result: dict) -> str:
    m = result["metric"]
    head = "| baseline | " + " | ".join(
        f"{k}: {m} (base / Δ ours − base)" for k in MASKS + ("all",)
    )
    lines = [head + " |", "|---|" + "---:|" * (len(MASKS) + 1)]
    for name, row in sorted(result["rows"].items()):
        cells = []
        for mask in MASKS + ("all",):
            r = row[mask]
            d = r["delta"]
            star = " ★" if d["lo"] > 0 or d["hi"] < 0 else ""
            cells.append(
                f"{r['baseline']:.3f} / {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ours = {k: v for k, v in next(iter(result["rows"].values())).items()}
    lines.append(
        f"\n{result['method']}@{result['steps']}: "
        + ", ".join(f"{k} {v['ours']:.3f}" for k, v in ours.items())
        + " (★: the paired 95 % interval excludes 0; negative Δ = the module is better)"
    )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("eval_dir", help="the harness's output folder for the module (per_image.npz)")
    p.add_argument("--tune-dir", default="benchmarks/results/tune")
    p.add_argument("--method", default="aid")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--metric", default="lpips_hole")
    p.add_argument("--out", default="")
    p.add_argument(
        "--also",
        nargs="*",
        default=[],
        help="other modules on the same block, NAME=EVAL_DIR:METHOD@STEPS",
    )
    args = p.parse_args()
    also = [parse_also(a) for a in args.also]
    result = compare(args.eval_dir, args.tune_dir, args.method, args.steps, args.metric, also=also)
    print(markdown(result))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
