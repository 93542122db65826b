"""Issue 16's target on the test protocol, read from the harness's finished jobs.

The tuned headline (``configs/eval_fashion_mnist.py:tuned``: 1,000 test images per mask, the
tuned baselines and the shipped AID/DEFT modules, the same images, masks and noise for every
entry) stores each finished (mask, method, steps) job in ``<workdir>/jobs/``. This script pairs
them per mask, in any number of workdirs (a mask may be run in its own workdir; jobs of one mask
in different workdirs must have the same masks, which is checked):

* AID at 10 NFE against every fixed-backbone baseline at ≤ 20 NFE, backward passes counted
  (ΠGDM/DPS at 10 steps are 20): LPIPS on the hole, paired Δ = AID − baseline with its 95 %
  bootstrap interval (a win: the interval is below 0), and FID_LeNet (a win: lower);
* AID at ≤ 20 NFE against DDNM at 50 NFE and RePaint at ≥ 50 NFE (within the paired interval or
  better: the interval's lower end ≤ 0);
* the amortized competitor (DEFT at 10 NFE) side by side.

    PYTHONPATH=. python benchmarks/aid_target.py runs/headline runs/headline_strokes \
        --json benchmarks/results/aid_target.json > target.md

The jobs of the 2026-12-07 run are committed in benchmarks/results/headline/ (README there).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections import defaultdict

import numpy as np

from aid_jax import report

AMORTIZED = ("aid", "aid_large", "deft", "deft_small")
CHEAP_NFE = 20  # forward + backward passes
METRIC = "lpips_hole"
MASK_ORDER = ("center_box", "half", "strokes", "random_boxes", "pixel_dropout")


def load_jobs(workdirs) -> dict:
    """{mask: {entry: {"row": row, "lpips": per-image array}}} of every finished job."""
    jobs: dict = defaultdict(dict)
    masks_of: dict = {}
    for w in map(pathlib.Path, workdirs):
        for f in sorted((w / "jobs").glob("*.npz")):
            if ".tmp" in f.name:
                continue
            with np.load(f) as z:
                row = json.loads(str(z["meta"]))["row"]
                values = np.asarray(z[f"per_image/{METRIC}"], np.float64)
            mask = row["mask"]
            with np.load(w / "masks" / f"{mask}.npz") as z:
                masks = z[z.files[0]]
            if mask in masks_of and not np.array_equal(masks_of[mask], masks):
                raise ValueError(f"{w}: the {mask} masks differ from another workdir's: unpaired")
            masks_of[mask] = masks
            jobs[mask][row["method"]] = {"row": row, "values": values}
    return dict(jobs)


def entry_budget(name: str) -> tuple[str, int] | None:
    """``(family, K)`` of a headline entry ``<family>_nfe<K>`` (configs/eval_fashion_mnist.py's
    naming), None for any other name."""
    m = re.fullmatch(r"(.+)_nfe(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else None


def ordered_masks(jobs: dict) -> list[str]:
    """The masks of ``jobs``: the headline's order first, any others sorted after."""
    return [m for m in MASK_ORDER if m in jobs] + sorted(set(jobs) - set(MASK_ORDER))


def interval(d: dict) -> str:
    """A paired difference as ``+0.0123 [+0.0100, +0.0150]``."""
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def arguments(doc: str) -> argparse.ArgumentParser:
    """The command line the job readers share: workdirs, then ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--json", default="")
    return parser


def _counted(row) -> int:
    return int(row["nfe"]) + int(row.get("nfe_backward", 0))


def _fid(row):
    return row["metrics"].get("fid_lenet", {}).get("value")


def compare(jobs: dict, aid: str = "aid_nfe10", others=None) -> dict:
    """Per mask, ``aid`` against each other entry (paired Δ of LPIPS-hole, FID)."""
    out = {}
    for mask, entries in jobs.items():
        if aid not in entries:
            continue
        a = entries[aid]
        rows = []
        for name, e in sorted(entries.items()):
            if name == aid or (others is not None and name not in others):
                continue
            if e["values"].shape != a["values"].shape:
                raise ValueError(f"{mask}/{name}: {e['values'].size} images vs {a['values'].size}")
            delta = report.paired_bootstrap(a["values"], e["values"], num_resamples=2000)
            rows.append(
                dict(
                    entry=name,
                    family=e["row"].get("family", e["row"]["method"]),
                    nfe=_counted(e["row"]),
                    lpips=float(e["values"].mean()),
                    fid=_fid(e["row"]),
                    delta=delta,
                )
            )
        out[mask] = dict(
            aid=dict(
                entry=aid,
                nfe=_counted(a["row"]),
                lpips=float(a["values"].mean()),
                fid=_fid(a["row"]),
                n=int(a["values"].size),
            ),
            rows=rows,
        )
    return out


def verdict(result: dict) -> dict:
    """The target's three lines per mask (None where an entry has not run)."""
    out = {}
    for mask, r in result.items():
        cheap = [x for x in r["rows"] if x["family"] not in AMORTIZED and x["nfe"] <= CHEAP_NFE]
        beats = [
            x["delta"]["hi"] < 0
            and r["aid"]["fid"] is not None
            and x["fid"] is not None
            and r["aid"]["fid"] < x["fid"]
            for x in cheap
        ]
        out[mask] = dict(
            cheap_baselines=[x["entry"] for x in cheap],
            beats_every_cheap_baseline=bool(cheap) and all(beats),
            lost_to=[x["entry"] for x, b in zip(cheap, beats, strict=True) if not b],
        )
    return out


def markdown(result: dict, title: str, who: str = "AID") -> str:
    lines = [f"### {title}", ""]
    for mask, r in result.items():
        a = r["aid"]
        lines += [
            f"**{mask}** — {a['entry']} ({a['nfe']} NFE): LPIPS-hole {a['lpips']:.4f}, "
            f"FID_LeNet {a['fid']:.2f}, N = {a['n']}",
            "",
            f"| entry | NFE (fwd+bwd) | LPIPS-hole | Δ {who} − entry [95 % CI] | FID_LeNet |",
            "|---|---:|---:|---:|---:|",
        ]
        for x in sorted(r["rows"], key=lambda x: (x["nfe"], x["entry"])):
            d = x["delta"]
            star = " ★" if d["hi"] < 0 or d["lo"] > 0 else ""
            fid = "—" if x["fid"] is None else f"{x['fid']:.2f}"
            lines.append(
                f"| {x['entry']} | {x['nfe']} | {x['lpips']:.4f} | {interval(d)}{star} | {fid} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--aid", default="aid", choices=("aid", "aid_large"), help="the AID module's entries"
    )
    args = parser.parse_args()
    jobs = load_jobs(args.workdirs)
    a10, a20 = f"{args.aid}_nfe10", f"{args.aid}_nfe20"
    at10 = compare(jobs, a10)
    at20 = compare(jobs, a20)
    print(markdown(at10, f"{a10} against every entry"))
    print(markdown(at20, f"{a20} against every entry"))
    v = verdict(at10)
    print("```\n" + json.dumps(v, indent=1) + "\n```")
    if args.json:
        record = {a10: at10, a20: at20, "verdict": v, "workdirs": args.workdirs}
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
