"""Issue 15's results on the test protocol, read from the harness's finished jobs: DEFT (5 % and
0.99 %) at every step count against AID and the tuned baselines, per mask (training masks and
transfer masks), with paired intervals; optionally the diversity of a multi-sample run.

The tuned headline (``configs/eval_fashion_mnist.py:tuned``) stores each finished (mask, method,
steps) job in ``<workdir>/jobs/`` (same images, masks and noise for every entry). This prints

* the NFE sweep of the amortized modules: LPIPS on the hole / FID_LeNet per mask;
* DEFT at 10 NFE (each module) against every other entry: paired Δ LPIPS with its 95 % interval
  (benchmarks/aid_target.py's pairing) and FID_LeNet;
* at each budget K of ``MATCHED_NFE``, DEFT's K-step entry against every entry tuned or trained
  for the same K (``<name>_nfe<K>``; a baseline's budget counts forward passes, its backward
  passes are in the NFE column), one compact table per K: LPIPS-hole (★: the paired interval of
  DEFT − entry excludes 0) / FID_LeNet;
* with ``--diversity``: the mean pairwise LPIPS between samples in the hole (a run with
  ``eval.samples_per_image > 1``) per mask and entry.

    PYTHONPATH=. python benchmarks/deft_headline.py benchmarks/results/headline \
        --diversity benchmarks/results/diversity/results.json \
        --json benchmarks/results/deft_headline.json
"""

from __future__ import annotations

import json
import pathlib

from benchmarks import aid_target

FAMILIES = ("deft", "deft_small", "aid", "aid_large")
REFERENCES = ("deft_nfe10", "deft_small_nfe10")
MATCHED_NFE = (5, 10, 20, 50)


def sweep(jobs: dict) -> dict:
    """{family: {nfe: {mask: (lpips, fid)}}} of the amortized entries ``<family>_nfe<K>``."""
    out: dict = {}
    for mask, entries in jobs.items():
        for name, e in entries.items():
            parsed = aid_target.entry_budget(name)
            if not parsed or parsed[0] not in FAMILIES:
                continue
            family, nfe = parsed
            lp = float(e["values"].mean())
            fid = aid_target._fid(e["row"])
            out.setdefault(family, {}).setdefault(nfe, {})[mask] = (lp, fid)
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


def matched(jobs: dict, nfe: int, ref_family: str = "deft") -> dict:
    """``<ref_family>_nfe<nfe>`` against every other ``*_nfe<nfe>`` entry, per mask (the
    pairing of benchmarks/aid_target.compare); masks where the reference has not run are left
    out."""
    ref = f"{ref_family}_nfe{nfe}"
    same = {
        n
        for entries in jobs.values()
        for n in entries
        if (aid_target.entry_budget(n) or ("", 0))[1] == nfe
    }
    return aid_target.compare(jobs, ref, others=same - {ref})


def matched_markdown(result: dict, masks: list[str]) -> str:
    """One row per entry, one column per mask: "LPIPS / FID" with ★ where DEFT is better (the
    paired interval of DEFT − entry below 0), ✗ where the entry is better (above 0), nothing
    for a tie; the reference's own row first, in bold."""
    masks = [m for m in masks if m in result]
    if not masks:
        return ""
    first = result[masks[0]]["aid"]
    cell = {first["entry"]: {}}
    nfe = {first["entry"]: first["nfe"]}
    for mask in masks:
        a = result[mask]["aid"]
        cell[a["entry"]][mask] = f"**{a['lpips']:.3f}** / {_fid_text(a['fid'])}"
        for x in result[mask]["rows"]:
            d = x["delta"]
            # ★: DEFT better (the interval of DEFT − entry is below 0); ✗: the entry better.
            star = "★" if d["hi"] < 0 else "✗" if d["lo"] > 0 else ""
            cell.setdefault(x["entry"], {})[mask] = (
                f"{x['lpips']:.3f}{star} / {_fid_text(x['fid'])}"
            )
            nfe[x["entry"]] = x["nfe"]
    lines = [
        "| entry | NFE (fwd+bwd) | " + " | ".join(masks) + " |",
        "|---|---:|" + "---|" * len(masks),
    ]
    for entry in [first["entry"]] + sorted(set(cell) - {first["entry"]}):
        cells = [cell[entry].get(m, "—") for m in masks]
        lines.append(f"| {entry} | {nfe[entry]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fid_text(fid) -> str:
    return "—" if fid is None else f"{fid:.2f}"


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
    parser = aid_target.arguments(__doc__)
    parser.add_argument("--diversity", default="", help="results.json of a k > 1 run")
    args = parser.parse_args()
    jobs = aid_target.load_jobs(args.workdirs)
    masks = aid_target.ordered_masks(jobs)
    table = sweep(jobs)
    print("### The amortized modules over step counts: LPIPS-hole / FID_LeNet\n")
    print(sweep_markdown(table, masks) + "\n")
    record: dict = dict(sweep={f: {str(k): v for k, v in t.items()} for f, t in table.items()})
    for ref in REFERENCES:
        result = aid_target.compare(jobs, ref)
        print(aid_target.markdown(result, f"{ref} against every entry", who=ref))
        record[ref] = result
    for nfe in MATCHED_NFE:
        result = matched(jobs, nfe)
        if result:
            print(
                f"### DEFT at {nfe} steps against every entry at a budget of {nfe}: LPIPS-hole "
                "(★ DEFT better, ✗ the entry better: paired 95 % interval of DEFT − entry) / "
                "FID_LeNet\n"
            )
            print(matched_markdown(result, masks) + "\n")
            record[f"matched_nfe{nfe}"] = result
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
