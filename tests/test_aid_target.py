"""benchmarks/aid_target.py: issue 16's target read from the harness's job files (synthetic)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

sys.path.insert(0, ".")
from benchmarks import aid_target  # noqa: E402

N = 64


def _job(workdir, mask, entry, family, nfe, nfe_backward, values, fid):
    (workdir / "jobs").mkdir(parents=True, exist_ok=True)
    row = dict(mask=mask, method=entry, family=family, steps=nfe, nfe=nfe)
    row.update(nfe_backward=nfe_backward, metrics=dict(fid_lenet=dict(value=fid)))
    np.savez(
        workdir / "jobs" / f"{mask}__{entry}__{nfe}.npz",
        meta=np.array(json.dumps(dict(fingerprint="x", row=row))),
        **{"per_image/lpips_hole": values},
    )


def _masks(workdir, mask, seed=0):
    (workdir / "masks").mkdir(parents=True, exist_ok=True)
    m = np.random.default_rng(seed).integers(0, 2, (N, 4, 4, 1)).astype(np.float32)
    np.savez(workdir / "masks" / f"{mask}.npz", masks=m)


def test_target_lines(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.3, N)
    a, b = tmp_path / "a", tmp_path / "b"
    for w, mask in [(a, "center_box"), (b, "strokes")]:
        _masks(w, mask)
        _job(w, mask, "aid_nfe10", "aid", 10, 0, base, 5.0)
        _job(w, mask, "ddnm_nfe10", "ddnm", 10, 0, base + 0.05, 9.0)  # AID better, FID too
        _job(w, mask, "deft_nfe10", "deft", 10, 0, base - 0.05, 4.0)  # amortized: side by side
        _job(w, mask, "dps_nfe20", "dps", 20, 20, base - 0.05, 3.0)  # 40 NFE: not "cheap"
    # On strokes a cheap baseline ties AID in LPIPS: the target fails there.
    _job(b, "strokes", "pigdm_nfe10", "pigdm", 10, 10, base + rng.normal(0, 0.01, N), 6.0)
    result = aid_target.compare(aid_target.load_jobs([a, b]))
    verdict = aid_target.verdict(result)
    assert verdict["center_box"]["cheap_baselines"] == ["ddnm_nfe10"]
    assert verdict["center_box"]["beats_every_cheap_baseline"]
    assert not verdict["strokes"]["beats_every_cheap_baseline"]
    assert verdict["strokes"]["lost_to"] == ["pigdm_nfe10"]
    rows = {x["entry"]: x for x in result["center_box"]["rows"]}
    assert rows["ddnm_nfe10"]["delta"]["mean"] == pytest.approx(-0.05)
    assert rows["dps_nfe20"]["nfe"] == 40
    assert "★" in aid_target.markdown(result, "t")


def test_jobs_of_one_mask_with_other_masks_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    values = np.full(N, 0.2)
    for w, seed in [(a, 0), (b, 1)]:
        _masks(w, "half", seed)
        _job(w, "half", "aid_nfe10" if w == a else "ddnm_nfe10", "x", 10, 0, values, 1.0)
    with pytest.raises(ValueError, match="unpaired"):
        aid_target.load_jobs([a, b])


def test_deft_headline_sweep_and_pairing(tmp_path):
    """benchmarks/deft_headline.py: the amortized entries' NFE sweep per mask, DEFT@10 paired
    against the rest, and the diversity table from a results.json."""
    from benchmarks import deft_headline

    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.3, N)
    _masks(tmp_path, "center_box")
    _job(tmp_path, "center_box", "deft_nfe10", "deft", 10, 0, base, 7.0)
    _job(tmp_path, "center_box", "deft_nfe50", "deft", 50, 0, base - 0.01, 5.0)
    _job(tmp_path, "center_box", "deft_small_nfe10", "deft_small", 10, 0, base + 0.02, 9.0)
    _job(tmp_path, "center_box", "aid_nfe10", "aid", 10, 0, base - 0.03, 12.0)
    _job(tmp_path, "center_box", "ddnm_nfe20", "ddnm", 20, 0, base + 0.04, 13.0)
    jobs = aid_target.load_jobs([tmp_path])
    table = deft_headline.sweep(jobs)
    assert set(table) == {"deft", "deft_small", "aid"} and set(table["deft"]) == {10, 50}
    assert table["deft"][50]["center_box"] == (pytest.approx(base.mean() - 0.01), 5.0)
    assert "| deft | 50 | 0.1" in deft_headline.sweep_markdown(table, ["center_box"])
    rows = {x["entry"]: x for x in aid_target.compare(jobs, "deft_nfe10")["center_box"]["rows"]}
    assert rows["aid_nfe10"]["delta"]["mean"] == pytest.approx(0.03)
    assert rows["ddnm_nfe20"]["delta"]["hi"] < 0
    # Matched budgets: DEFT@10 only against the other 10-NFE entries.
    at10 = deft_headline.matched(jobs, 10)
    assert [x["entry"] for x in at10["center_box"]["rows"]] == ["aid_nfe10", "deft_small_nfe10"]
    text = deft_headline.matched_markdown(at10, ["center_box", "half"]).splitlines()
    assert text[2].startswith("| deft_nfe10 | 10 | **0.")  # the reference first, in bold
    assert "✗ / 12.00" in text[3]  # AID better than DEFT (base − 0.03 vs base)
    assert "★ / 9.00" in text[4]  # DEFT better than DEFT-small (base vs base + 0.02)
    assert deft_headline.matched(jobs, 5) == {}  # no DEFT@5 job: no table
    results = tmp_path / "results.json"
    d = dict(mean=0.2, lo=0.19, hi=0.21)
    results.write_text(
        json.dumps(
            dict(
                rows=[
                    dict(mask="half", method="deft_nfe10", metrics=dict(diversity=d)),
                    dict(mask="half", method="ground truth", metrics=dict(fid_lenet={})),
                ]
            )
        )
    )
    div = deft_headline.diversity(str(results))
    assert div == {"half": {"deft_nfe10": d}}
    assert "0.200 [0.190, 0.210]" in deft_headline.diversity_markdown(div)


def test_baseline_table_ranks_per_budget(tmp_path):
    """benchmarks/baseline_table.py: baselines by budget per mask, the best bold, its paired Δ
    to the runner-up (resolved, a tie, or identical outputs); amortized entries left out."""
    from benchmarks import baseline_table

    rng = np.random.default_rng(2)
    base = rng.uniform(0.1, 0.3, N)
    _masks(tmp_path, "half")
    _job(tmp_path, "half", "ddnm_nfe10", "ddnm", 10, 0, base, 11.0)
    _job(tmp_path, "half", "ddrm_nfe10", "ddrm", 10, 0, base, 11.0)  # the same outputs
    _job(tmp_path, "half", "pigdm_nfe10", "pigdm", 10, 10, base + 0.02, 6.0)
    _job(tmp_path, "half", "ddnm_nfe50", "ddnm", 50, 0, base - 0.05, 3.0)
    _job(tmp_path, "half", "dps_nfe50", "dps", 50, 50, base - 0.05 + rng.normal(0, 0.01, N), 4)
    _job(tmp_path, "half", "vipaint_nfe50", "vipaint", 48, 48, base + 0.1, 9.0)  # 50 only
    _job(tmp_path, "half", "aid_nfe10", "aid", 10, 0, base - 0.1, 2.0)  # not a baseline
    tab = baseline_table.table(aid_target.load_jobs([tmp_path]))
    assert set(tab["half"]) == {10, 50} and "aid" not in tab["half"][10]
    assert tab["half"][10]["pigdm"]["nfe_backward"] == 10
    text = baseline_table.markdown(tab, ["half", "strokes"])
    assert "| pigdm | 0.2" in text and "/ 6.0 (10+10) | — |" in text
    assert "(identical outputs)" in text
    assert "| vipaint | — | 0." in text and "/ 9.0 (48+48) |" in text
    r50 = baseline_table.ranking(tab["half"][50])
    assert {r50["best"], r50["runner_up"]} == {"ddnm", "dps"}
    assert r50["delta"]["lo"] < 0 < r50["delta"]["hi"]  # noise of 0.01 per image: a tie
    assert "a tie at N = 64" in text
