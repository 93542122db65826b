"""Issue 14's baseline table on the test protocol, read from the harness's finished jobs.

The tuned headline (``configs/eval_fashion_mnist.py:tuned``) stores each finished (mask, entry,
steps) job in ``<workdir>/jobs/``; its baseline entries are ``<method>_nfe<B>``: the options the
validation search chose for a budget of B forward passes (``configs/tuned_fashion_mnist.py``).
This prints one table per mask — a row per baseline, a column per budget, each cell LPIPS on the
hole / FID_LeNet (bold: the best LPIPS at that budget) — and, per budget, the paired difference
of the best baseline to the runner-up with its 95 % bootstrap interval (same images, masks and
noise), so the table says which ranks are resolved at N = 1,000 and which are ties.

    PYTHONPATH=. python benchmarks/baseline_table.py benchmarks/results/headline \
        --json benchmarks/results/baseline_table.json
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from aid_jax import report
from benchmarks import aid_target

# VIPaint is tuned at 50 and 100 only (a per-image fit needs the budget): "—" elsewhere.
BASELINES = ("unguided", "replacement", "repaint", "ddrm", "ddnm", "pigdm", "dps", "vipaint")


def table(jobs: dict) -> dict:
    """{mask: {budget: {method: cell}}}; a cell holds the row's LPIPS, FID, forward and backward
    NFE and its per-image values (for the pairing)."""
    out: dict = {}
    for mask, entries in jobs.items():
        for name, e in entries.items():
            parsed = aid_target.entry_budget(name)
            if not parsed or parsed[0] not in BASELINES:
                continue
            method, budget = parsed
            row = e["row"]
            out.setdefault(mask, {}).setdefault(budget, {})[method] = dict(
                lpips=float(e["values"].mean()),
                fid=aid_target._fid(row),
                nfe=int(row["nfe"]),
                nfe_backward=int(row.get("nfe_backward", 0)),
                values=e["values"],
            )
    return out


def ranking(per_budget: dict, num_resamples: int = 2000) -> dict:
    """The best method at one budget (lowest mean LPIPS) and its paired Δ to the runner-up."""
    order = sorted(per_budget, key=lambda m: per_budget[m]["lpips"])
    out = dict(best=order[0], runner_up=None, delta=None)
    if len(order) > 1:
        best, second = per_budget[order[0]], per_budget[order[1]]
        out.update(
            runner_up=order[1],
            delta=report.paired_bootstrap(
                best["values"], second["values"], num_resamples=num_resamples
            ),
        )
    return out


def markdown(tab: dict, masks: list[str]) -> str:
    budgets = sorted({b for per in tab.values() for b in per})
    lines = []
    for mask in masks:
        if mask not in tab:
            continue
        per = tab[mask]
        ranks = {b: ranking(per[b]) for b in budgets if b in per}
        lines += [
            f"#### `{mask}` — LPIPS-hole / FID_LeNet (NFE forward + backward)",
            "",
            "| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for method in BASELINES:
            cells = []
            for b in budgets:
                c = per.get(b, {}).get(method)
                if c is None:
                    cells.append("—")
                    continue
                lp = f"{c['lpips']:.3f}"
                if ranks[b]["best"] == method:
                    lp = f"**{lp}**"
                fid = "—" if c["fid"] is None else f"{c['fid']:.1f}"
                cost = f"{c['nfe']}" + (f"+{c['nfe_backward']}" if c["nfe_backward"] else "")
                cells.append(f"{lp} / {fid} ({cost})")
            if any(x != "—" for x in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        for b in budgets:
            r = ranks.get(b)
            if not r or r["delta"] is None:
                continue
            d = r["delta"]
            best, second = per[b][r["best"]]["values"], per[b][r["runner_up"]]["values"]
            if np.array_equal(best, second):
                resolved = "identical outputs"
            elif d["hi"] < 0:
                resolved = "resolved"
            else:
                resolved = f"a tie at N = {best.size}"
            lines.append(
                f"- NFE {b}: {r['best']} − {r['runner_up']} = {aid_target.interval(d)} ({resolved})"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = aid_target.arguments(__doc__).parse_args()
    jobs = aid_target.load_jobs(args.workdirs)
    masks = aid_target.ordered_masks(jobs)
    tab = table(jobs)
    print(markdown(tab, masks))
    if args.json:
        record = {
            mask: {
                str(b): dict(
                    cells={
                        m: {k: v for k, v in c.items() if k != "values"}
                        for m, c in per_budget.items()
                    },
                    ranking=ranking(per_budget),
                )
                for b, per_budget in sorted(tab[mask].items())
            }
            for mask in masks
            if mask in tab
        }
        record["workdirs"] = args.workdirs
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
