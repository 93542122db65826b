"""Issue 15's results on the test protocol, read from the harness's finished jobs: DEFT (5 % and
0.99 %) at every step count against AID and the tuned baselines, per mask (training masks and
transfer masks), with paired intervals; optionally the diversity of a multi-sample run.

The tuned headline (``configs/eval_fashion_mnist.py:tuned``) stores each finished (mask, method,
steps) job in ``<workdir>/jobs/`` (same images, masks and noise for every entry). This prints

* the NFE sweep of the amortized modules: LPIPS on the hole / FID_LeNet per mask;
* DEFT at 10 NFE (each module) against every other entry: paired Δ LPIPS with its 95 % interval
  (benchmarks/aid_target.py's pairing) and FID_LeNet;
* with ``--diversity``: the mean pairwise LPIPS between samples in the hole (a run with
  ``eval.samples_per_image > 1``) per mask and entry.

    PYTHONPATH=. python benchmarks/deft_headline.py benchmarks/results/headline \
        --diversity benchmarks/results/diversity/results.json \
        --json benchmarks/results/deft_headline.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

from benchmarks import aid_target

FAMILIES = ("deft", "deft_small", "aid", "aid_large")
REFERENCES = ("deft_nfe10", "deft_small_nfe10")


def sweep(jobs: dict) -> dict:
    """{family: {nfe: {mask: (lpips, fid)}}} of the amortized entries ``<family>_nfe<K>``."""
    out: dict = {}
    for mask, entries in jobs.items():
        for name, e in entries.items():
            m = re.fullmatch(r"(.+)_nfe(\d+)", name)
            if not m or m.group(1) not in FAMILIES:
                continue
            lp = float(e["values"].mean())
            fid = aid_target._fid(e["row"])
            out.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[mask] = (lp, fid)
    return out


def sweep_markdown(table: dict, masks: list[str]) -> str:
    lines = [
        "| module | NFE | " + " | ".join(masks) + " |",
        "|---|---:|" + "---|" * len(masks),
    ]
    for family in FAMILIES:
        for nfe in sorted(table.get(family, {})):
            cells = []
            for mask in masks:
                v = table[family][nfe].get(mask)
                fid = "—" if not v or v[1] is None else f"{v[1]:.1f}"
                cells.append("—" if not v else f"{v[0]:.3f} / {fid}")
            lines.append(f"| {family} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diversity(path: str) -> dict:
    """{mask: {method: mean diversity}} from a harness results.json with k > 1 samples."""
    rows = json.loads(pathlib.Path(path).read_text())["rows"]
    out: dict = {}
    for r in rows:
        d = r["metrics"].get("diversity")
        if d:
            out.setdefault(r["mask"], {})[r["method"]] = d
    return out


def diversity_markdown(div: dict) -> str:
    masks = list(div)
    methods = sorted({m for per in div.values() for m in per})
    lines = ["| entry | " + " | ".join(masks) + " |", "|---|" + "---:|" * len(masks)]
    for m in methods:
        cells = []
        for mask in masks:
            d = div[mask].get(m)
            cells.append("—" if not d else f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--diversity", default="", help="results.json of a k > 1 run")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    jobs = aid_target.load_jobs(args.workdirs)
    masks = [m for m in aid_target.MASK_ORDER if m in jobs] + sorted(
        set(jobs) - set(aid_target.MASK_ORDER)
    )
    table = sweep(jobs)
    print("### The amortized modules over step counts: LPIPS-hole / FID_LeNet\n")
    print(sweep_markdown(table, masks) + "\n")
    record: dict = dict(sweep={f: {str(k): v for k, v in t.items()} for f, t in table.items()})
    for ref in REFERENCES:
        result = aid_target.compare(jobs, ref)
        print(aid_target.markdown(result, f"{ref} against every entry", who=ref))
        record[ref] = result
    if args.diversity:
        div = diversity(args.diversity)
        print("### Diversity: mean pairwise LPIPS between samples, in the hole\n")
        print(diversity_markdown(div) + "\n")
        record["diversity"] = div
    if args.json:
        record["workdirs"] = args.workdirs
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
