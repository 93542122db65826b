"""benchmarks/aid_vs_tuned.py: a module's per-image metrics paired with the tuning search's."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

sys.path.insert(0, ".")
from benchmarks import aid_vs_tuned  # noqa: E402


def _fake(tmp_path, shift=0.0):
    rng = np.random.default_rng(0)
    tune = tmp_path / "tune"
    cands = []
    for method, budget, steps in [("ddnm", 10, 10), ("pigdm", 10, 10), ("ddnm", 20, 20)]:
        run = f"search/{method}_nfe{budget}"
        (tune / run).mkdir(parents=True)
        entry = f"{method}__nfe{budget}__0"
        vals = {
            f"{m}/{entry}/{steps}/lpips_hole": rng.uniform(0.1, 0.3, 16) for m in aid_vs_tuned.MASKS
        }
        np.savez(tune / run / "per_image.npz", **vals)
        cands.append(
            dict(method=method, budget=budget, entry=entry, steps=steps, run=run, chosen=True)
        )
    (tune / "tuning.json").write_text(json.dumps(dict(candidates=cands)))
    ddnm = np.load(tune / "search/ddnm_nfe10/per_image.npz")
    pig = np.load(tune / "search/pigdm_nfe10/per_image.npz")
    ev = tmp_path / "eval"
    ev.mkdir()
    ours = {}
    for m in aid_vs_tuned.MASKS:
        ours[f"{m}/ddnm_nfe10/10/lpips_hole"] = ddnm[f"{m}/ddnm__nfe10__0/10/lpips_hole"] + shift
        ours[f"{m}/aid/10/lpips_hole"] = pig[f"{m}/pigdm__nfe10__0/10/lpips_hole"] - 0.05
    np.savez(ev / "per_image.npz", **ours)
    return ev, tune


def test_paired_differences_and_the_pairing_check(tmp_path):
    ev, tune = _fake(tmp_path)
    result = aid_vs_tuned.compare(ev, tune, "aid", 10)
    assert result["pairing_checked"] == 48
    d = result["rows"]["pigdm@10"]["all"]["delta"]
    assert d["mean"] == pytest.approx(-0.05) and d["hi"] < 0  # exactly 0.05 better everywhere
    assert set(result["rows"]) == {"ddnm@10", "pigdm@10", "ddnm@20"}
    assert "pigdm@10" in aid_vs_tuned.markdown(result)
    ev2, tune2 = _fake(tmp_path / "other", shift=0.01)
    with pytest.raises(ValueError, match="not be paired"):
        aid_vs_tuned.compare(ev2, tune2, "aid", 10)


def test_other_modules_on_the_same_block(tmp_path):
    """--also: another module's eval folder joins as a row, paired image by image, and its own
    DDNM@10 must match the tuning's too."""
    ev, tune = _fake(tmp_path)
    other = tmp_path / "other_eval"
    other.mkdir()
    mine = np.load(ev / "per_image.npz")
    vals = {k: mine[k] for k in mine.files if "ddnm_nfe10" in k}
    for m in aid_vs_tuned.MASKS:
        vals[f"{m}/deft/10/lpips_hole"] = mine[f"{m}/aid/10/lpips_hole"] + 0.02
    np.savez(other / "per_image.npz", **vals)
    spec = aid_vs_tuned.parse_also(f"deft={other}:deft@10")
    result = aid_vs_tuned.compare(ev, tune, "aid", 10, also=[spec])
    d = result["rows"]["deft"]["all"]["delta"]
    assert d["mean"] == pytest.approx(-0.02) and d["hi"] < 0
    assert result["pairing_checked"] == 96
    vals = {k: v + 0.01 if "ddnm_nfe10" in k else v for k, v in vals.items()}
    np.savez(other / "per_image.npz", **vals)
    with pytest.raises(ValueError, match="not be paired"):
        aid_vs_tuned.compare(ev, tune, "aid", 10, also=[spec])
    with pytest.raises(ValueError, match="NAME=EVAL_DIR"):
        aid_vs_tuned.parse_also("deft")
