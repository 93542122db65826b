"""Main-mode `tune`: every baseline's main knobs searched per NFE budget on the validation images,
so each is compared at its best (issue 14, point 2).

    python -m aid_jax.main --config=configs/tune_fashion_mnist.py --workdir=runs/tune

For each method of ``tune.methods`` and each budget B of ``tune.budgets`` (or the method's own
``budgets``), every combination of the values in ``tune.space.<method>`` is one candidate; its
``num_steps`` is the largest step count whose forward NFE per sample (``methods.method_cost``)
fits B. The candidates of one (method, budget) run through the evaluation harness
(``aid_jax.evaluate``) on ``eval.num_images`` images of the validation block
(``eval.subset="validation"``: never a test image) under every mask of ``eval.masks``, with the
same per-row noise for every candidate. The choice: the lowest mean of ``tune.metric`` (LPIPS on
the hole) over the masks; next to every candidate its paired-bootstrap difference to the choice
(images × masks resampled together).

A choice at either end of a single numeric knob's values (e.g. ΠGDM's largest w) is not trusted:
the search goes one step further (the ratio of the last two values) and again while the newest
value wins, up to ``tune.max_extend`` times.

Resumable: each (method, budget) is one harness run in ``<workdir>/search/<method>_nfe<B>`` (an
extension one more, ``..._x<j>``); finished ones (results.json present) are read, not rerun.
Writes ``tuning.json``, ``tuning.md`` and, when ``tune.write`` names a file, the chosen options
as a Python module (``configs/tuned_fashion_mnist.py``, read by
``configs/eval_fashion_mnist.py:tuned``).
"""

from __future__ import annotations

import datetime
import itertools
import json
import pathlib
from typing import Any

import ml_collections
import numpy as np

from aid_jax import evaluate, methods, report


class TuneError(ValueError):
    """A bad tuning config (unknown method, a budget a method cannot meet, ...)."""


def _budgets(config, method: str) -> tuple[int, ...]:
    space = config.tune.space[method]
    budgets = tuple(int(b) for b in space.get("budgets", config.tune.budgets))
    if not budgets or any(b < 1 for b in budgets):
        raise TuneError(f"tune budgets of {method!r} must be positive ints, got {budgets}")
    return budgets


def _combinations(config, method: str) -> list[dict[str, Any]]:
    """The candidates of ``tune.space.<method>``: ``fixed`` options plus either every combination
    of the value tuples of the other keys, or the option dicts listed under ``candidates``."""
    space = config.tune.space[method].to_dict()
    space.pop("budgets", None)
    fixed = dict(space.pop("fixed", {}))
    if "candidates" in space:
        listed = space.pop("candidates")
        if space or not listed:
            raise TuneError(
                f"tune.space.{method}: 'candidates' (a tuple of option dicts) excludes value "
                f"tuples ({', '.join(space)})"
            )
        return [{**fixed, **dict(c)} for c in listed]
    for name, values in space.items():
        if not isinstance(values, list | tuple) or not values:
            raise TuneError(f"tune.space.{method}.{name} must be a non-empty tuple of values")
    names = list(space)
    return [
        {**fixed, **dict(zip(names, values, strict=True))}
        for values in itertools.product(*(space[n] for n in names))
    ]


def steps_for_budget(method: str, budget: int, options: dict[str, Any]) -> int | None:
    """The largest ``num_steps`` whose forward NFE per sample fits ``budget`` (None if none)."""
    for n in range(budget, 0, -1):
        try:
            nfe, _ = methods.method_cost(method, **{**options, "num_steps": n})
        except ValueError:
            continue  # e.g. RePaint's jump longer than n steps
        if nfe <= budget:
            return n
    return None


def plan(config) -> list[dict[str, Any]]:
    """Every candidate ``{method, budget, entry, options, steps, nfe, nfe_backward}``, checked
    before anything is loaded: unknown methods or options, and budgets a method cannot meet."""
    names = [n.strip() for n in str(config.tune.methods).split(",") if n.strip()]
    if not names:
        raise TuneError("tune.methods is empty")
    out = []
    for method in names:
        if method not in methods.REGISTRY or not methods.get(method).zero_shot:
            raise TuneError(
                f"tune.methods: {method!r} is not a zero-shot method; known: "
                f"{', '.join(n for n, m in methods.REGISTRY.items() if m.zero_shot)}"
            )
        if method not in config.tune.space:
            raise TuneError(f"tune.space has no entry for {method!r} (add its search values)")
        combos = _combinations(config, method)
        knob = _single_knob(config, method)
        for combo in combos:  # names and values (at a step count any budget would allow)
            try:
                methods.method_cost(method, **{**combo, "num_steps": 1000})
            except ValueError as e:
                raise TuneError(f"tune.space.{method}: {e}") from e
        for budget in _budgets(config, method):
            fits = []
            for i, combo in enumerate(combos):
                steps = steps_for_budget(method, budget, combo)
                if steps is None:
                    continue
                nfe, nfe_b = methods.method_cost(method, **{**combo, "num_steps": steps})
                entry = f"{method}__nfe{budget}__{i}"
                fits.append(
                    dict(
                        method=method,
                        budget=budget,
                        entry=entry,
                        options=combo,
                        steps=steps,
                        nfe=nfe,
                        nfe_backward=nfe_b,
                        knob=knob,
                    )
                )
            if not fits:
                least = min(_least_nfe(method, c) for c in combos)
                raise TuneError(
                    f"method {method!r} cannot meet an NFE budget of {budget} with any value of "
                    f"tune.space.{method} (its least NFE there is {least}); raise the budget or "
                    f"set tune.space.{method}.budgets"
                )
            out += fits
    return out


def _single_knob(config, method: str) -> str | None:
    """The option searched when ``tune.space.<method>`` is a grid over one numeric option (else
    None): a choice at either end of its values is then extended (:func:`_extension`)."""
    space = config.tune.space[method].to_dict()
    grid = {k: v for k, v in space.items() if k not in ("budgets", "fixed", "candidates")}
    if "candidates" in space or len(grid) != 1:
        return None
    ((name, values),) = grid.items()
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return name if numeric and len(values) >= 2 else None


def _extension(group: list[dict]) -> dict | None:
    """When the group's choice sits at the end of its knob's values, the options one step beyond
    (the ratio of the last two values, or their difference when a value is not positive); None
    when the choice is inside the range or the group has no single numeric knob."""
    best = next(c for c in group if c.get("chosen"))
    knob = best.get("knob")
    if knob is None:
        return None
    values = sorted({c["options"][knob] for c in group})
    v = best["options"][knob]
    if v not in (values[0], values[-1]) or len(values) < 2:
        return None
    a, b = (values[-2], values[-1]) if v == values[-1] else (values[1], values[0])
    nxt = b * (b / a) if a > 0 and b > 0 else b + (b - a)
    if isinstance(b, int) and float(nxt).is_integer():
        nxt = int(nxt)
    return {**best["options"], knob: nxt}


def _least_nfe(method: str, options: dict) -> int | str:
    for n in range(1, 4097):
        try:
            return methods.method_cost(method, **{**options, "num_steps": n})[0]
        except ValueError:
            continue
    return "unknown"


def _fits(method: str, budget: int, options: dict) -> int | None:
    """``steps_for_budget`` for valid options; None for options the method refuses."""
    try:
        methods.method_cost(method, **{**options, "num_steps": 1000})
    except ValueError:
        return None
    return steps_for_budget(method, budget, options)


def _harness_config(config, candidates: list[dict]):
    harness = config.copy_and_resolve_references()
    with harness.unlocked():
        harness.mode = "evaluate"
        harness.methods = ml_collections.ConfigDict(
            {
                c["entry"]: dict(method=c["method"], steps=(c["steps"],), options=c["options"])
                for c in candidates
            }
        )
        harness.eval.methods = ",".join(c["entry"] for c in candidates)
    return harness


def _scores(config, workdir: pathlib.Path, candidates: list[dict]) -> None:
    """Adds ``metric`` (per mask and mean) to every candidate of a finished group (each read from
    its harness run ``candidate["run"]``), the group's choice and every candidate's paired
    difference to it (the runs share images, masks and per-row noise)."""
    metric = config.tune.metric
    values = {}
    for c in candidates:
        run_dir = workdir / c["run"]
        results = json.loads((run_dir / "results.json").read_text())
        masks = list(results["masks"])
        with np.load(run_dir / "per_image.npz") as per_image:
            values[c["entry"]] = np.concatenate(
                [per_image[f"{m}/{c['entry']}/{c['steps']}/{metric}"] for m in masks]
            )
        rows = [r for r in results["rows"] if r["method"] == c["entry"]]
        c["per_mask"] = {r["mask"]: r["metrics"][metric]["mean"] for r in rows}
        c["score"] = float(np.mean([c["per_mask"][m] for m in masks]))
    lower = metric.startswith(report.LOWER_IS_BETTER)
    best = (min if lower else max)(candidates, key=lambda c: c["score"])
    boot = dict(num_resamples=int(config.eval.bootstrap), seed=int(config.eval.seed))
    for c in candidates:
        c["chosen"] = c is best
        c["delta_vs_chosen"] = report.paired_bootstrap(
            values[c["entry"]], values[best["entry"]], **boot
        )


def _run_group(config, workdir: pathlib.Path, group: list[dict], name: str, label: str) -> None:
    """One harness run for ``group`` into ``search/<name>`` unless it finished before."""
    for c in group:
        c["run"] = f"search/{name}"
    if not (workdir / "search" / name / "results.json").exists():
        print(label)
        evaluate.run(_harness_config(config, group), str(workdir / "search" / name))


def run(config, workdir: str) -> dict:
    """Search every (method, budget); returns the record also written to tuning.json."""
    candidates = plan(config)
    workdir = pathlib.Path(workdir)
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in candidates:
        groups.setdefault((c["method"], c["budget"]), []).append(c)
    # Smallest budgets first: an interrupted search has finished the cheap groups of every method.
    order = sorted(groups, key=lambda mb: mb[1])
    for i, (method, budget) in enumerate(order):
        group = groups[(method, budget)]
        name = f"{method}_nfe{budget}"
        label = f"[{i + 1}/{len(groups)}] {method} at {budget} NFE: {len(group)} candidates"
        _run_group(config, workdir, group, name, label)
        _scores(config, workdir, group)
        # A choice at the end of its knob's range: search one step further, up to max_extend.
        for j in range(int(config.tune.get("max_extend", 0))):
            options = _extension(group)
            steps = None if options is None else _fits(method, budget, options)
            if steps is None:
                break
            nfe, nfe_b = methods.method_cost(method, **{**options, "num_steps": steps})
            extra = dict(
                group[0],
                entry=f"{method}__nfe{budget}__x{j}",
                options=options,
                steps=steps,
                nfe=nfe,
                nfe_backward=nfe_b,
            )
            group.append(extra)
            label = f"    {method} at {budget} NFE: the choice is at the edge, trying {options}"
            _run_group(config, workdir, [extra], f"{name}_x{j}", label)
            _scores(config, workdir, group)
    candidates = [c for key in groups for c in groups[key]]
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "metric": config.tune.metric,
        "data": {
            "subset": str(config.eval.subset),
            "num_images": int(config.eval.num_images),
            "masks": str(config.eval.masks),
        },
        "chosen": chosen_options(candidates),
        "candidates": [_jsonable(c) for c in candidates],
    }
    (workdir / "tuning.json").write_text(json.dumps(record, indent=1) + "\n")
    (workdir / "tuning.md").write_text(markdown(config, candidates))
    if config.tune.get("write"):
        write_tuned_module(config.tune.write, record)
        print(f"wrote the chosen options to {config.tune.write}")
    print(f"wrote {workdir / 'tuning.md'} and {workdir / 'tuning.json'}")
    return record


def chosen_options(candidates: list[dict]) -> dict[str, dict[int, dict]]:
    """method -> budget -> the chosen options with their ``num_steps``."""
    out: dict[str, dict[int, dict]] = {}
    for c in candidates:
        if c.get("chosen"):
            out.setdefault(c["method"], {})[c["budget"]] = {**c["options"], "num_steps": c["steps"]}
    return out


def _jsonable(c: dict) -> dict:
    return json.loads(json.dumps(c, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def markdown(config, candidates: list[dict]) -> str:
    metric = config.tune.metric
    arrow = "↓" if metric.startswith(report.LOWER_IS_BETTER) else "↑"
    masks = [m.strip() for m in str(config.eval.masks).split(",")]
    lines = [
        f"# Baseline tuning — {metric} {arrow} on the validation images",
        "",
        f"{config.eval.num_images} images of the validation block (never a test image) × masks "
        f"{', '.join(masks)}; the same per-row noise for every candidate. Score: the mean of "
        f"{metric} over the masks. Δ: paired difference to the chosen candidate, mean [95% "
        f"bootstrap CI] over images × masks. **Bold**: chosen. "
        f"{datetime.date.today().isoformat()}.",
        "",
        "| method | NFE budget | options | steps | NFE fwd/bwd | "
        + " | ".join(masks)
        + " | score | Δ vs chosen |",
        "|---|---:|---|---:|---:|" + "---:|" * (len(masks) + 2),
    ]
    for c in candidates:
        opts = ", ".join(f"{k}={v}" for k, v in c["options"].items())
        bold = "**" if c.get("chosen") else ""
        cells = [
            c["method"],
            str(c["budget"]),
            f"{bold}{opts}{bold}",
            str(c["steps"]),
            f"{c['nfe']}/{c['nfe_backward']}",
            *(f"{c['per_mask'].get(m, float('nan')):.4f}" for m in masks),
            f"{bold}{c['score']:.4f}{bold}",
            report.format_metric(c["delta_vs_chosen"], 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    """A Python literal in ruff's style (double quotes)."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        items = ", ".join(_value(x) for x in v)
        return f"({items},)" if len(v) == 1 else f"({items})"
    return repr(v)


def _literal(chosen: dict) -> str:
    """``{method: {budget: {option: value}}}`` laid out as ``ruff format`` lays it out."""
    lines = ["{"]
    for method, by_budget in chosen.items():
        lines.append(f"    {_value(method)}: {{")
        for budget, options in by_budget.items():
            inner = ", ".join(f"{_value(k)}: {_value(v)}" for k, v in options.items())
            lines.append(f"        {budget}: {{{inner}}},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


def write_tuned_module(path, record: dict) -> None:
    """The chosen options as an importable Python module (``TUNED``)."""
    text = (
        '"""Baseline options chosen by `python -m aid_jax.main '
        "--config=configs/tune_fashion_mnist.py`\non the validation images "
        f"({record['data']['num_images']} images × masks {record['data']['masks']}, "
        f"{record['metric']}; {record['date'][:10]}).\n"
        "Generated by aid_jax/tune.py: rerun the search instead of editing. "
        'The table: docs/EVALUATION.md."""\n\n'
        "# method -> NFE budget -> options (num_steps included)\n"
        f"TUNED = {_literal(record['chosen'])}\n"
    )
    pathlib.Path(path).write_text(text)
