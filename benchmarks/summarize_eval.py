"""Compact tables from one or more evaluation results (``<workdir>/results.json`` of
``aid_jax.evaluate``): one Markdown table per mask, a row per (label, method, steps), the chosen
metrics as mean [95% CI]. Used to build docs/RESULTS.md from the harness's own output.

    python benchmarks/summarize_eval.py main=runs/aid/eval/results.json \
        long=runs/eval_long/results.json --metrics=lpips_hole,psnr_hole,fid_lenet,class_acc \
        --json=benchmarks/results/aid_results_fashion_mnist.json

A row whose method starts with ``aid`` is labelled with its file's label; baseline rows are taken
from the first file that has them (all files must share images, masks and seeds, which is
checked).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _fmt(metric: dict | None) -> str:
    """Per-image metrics carry mean and a 95% bootstrap CI (lo, hi); set metrics a value."""
    if not metric:
        return "—"
    if "mean" in metric:
        return f"{metric['mean']:.3f} [{metric['lo']:.3f}, {metric['hi']:.3f}]"
    return f"{metric['value']:.2f}"


def _protocol(results: dict) -> tuple:
    ev = results["config"]["eval"]
    return (ev["seed"], ev["mask_seed"], tuple(results["data"]["indices"]))


def summarize(named: dict[str, dict], metrics: list[str]) -> tuple[str, list[dict]]:
    protocols = {label: _protocol(r) for label, r in named.items()}
    if len(set(protocols.values())) > 1:
        raise SystemExit(f"results do not share images/masks/seeds: {protocols}")
    rows, seen = [], set()
    for label, results in named.items():
        for row in results["rows"]:
            if row["method"] in ("ground truth", "observed"):
                continue
            is_aid = row["method"].startswith("aid")
            key = (row["mask"], label if is_aid else "", row["method"], row["steps"])
            if key in seen or (
                not is_aid and any(k[2:] == key[2:] and k[0] == key[0] for k in seen)
            ):
                continue
            seen.add(key)
            rows.append(
                dict(
                    mask=row["mask"],
                    method=f"{row['method']} ({label})" if is_aid else row["method"],
                    steps=row["steps"],
                    nfe=row["nfe"],
                    nfe_backward=row["nfe_backward"],
                    seconds_per_image=row["seconds_per_image"],
                    metrics={m: row["metrics"].get(m) for m in metrics},
                )
            )
    out = []
    for mask in dict.fromkeys(r["mask"] for r in rows):
        out.append(f"\n#### `{mask}`\n")
        out.append("| method | steps | NFE fwd/bwd | " + " | ".join(metrics) + " |")
        out.append("|---|---:|---:|" + "---:|" * len(metrics))
        for r in (r for r in rows if r["mask"] == mask):
            cells = " | ".join(_fmt(r["metrics"][m]) for m in metrics)
            out.append(
                f"| {r['method']} | {r['steps']} | {r['nfe']}/{r['nfe_backward']} | {cells} |"
            )
    return "\n".join(out), rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="label=path/to/results.json")
    parser.add_argument("--metrics", default="lpips_hole,psnr_hole,fid_lenet,class_acc")
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)
    named = {}
    for item in args.results:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"expected label=path, got {item!r}")
        p = pathlib.Path(path)
        if not p.is_file():
            parser.error(f"{p} does not exist; run the evaluation first")
        named[label] = json.loads(p.read_text())
    table, rows = summarize(named, args.metrics.split(","))
    print(table)
    if args.json:
        meta = {label: dict(date=r["date"], device=r["device"]) for label, r in named.items()}
        pathlib.Path(args.json).write_text(json.dumps(dict(sources=meta, rows=rows), indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
