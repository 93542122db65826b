"""Baseline tuning (issue 14, point 2): candidates per NFE budget, the validation images, the choice
and its paired table, resumption, the written module, and bad budgets refused up front."""

from __future__ import annotations

import importlib.util
import json

import pytest

from aid_jax import evaluate, methods, tune
from configs import tune_fashion_mnist


def test_plan_fits_every_candidate_into_its_budget():
    config = tune_fashion_mnist.get_config()
    cands = tune.plan(config)
    assert {c["method"] for c in cands} == set(config.tune.methods.split(","))
    for c in cands:
        assert c["nfe"] <= c["budget"]
        # The most steps that fit: one more step would not.
        more = tune.steps_for_budget(c["method"], c["budget"], c["options"])
        assert more == c["steps"]
        try:
            nfe_more = methods.method_cost(c["method"], **{**c["options"], "num_steps": more + 1})[
                0
            ]
        except ValueError:
            nfe_more = None
        assert nfe_more is None or nfe_more > c["budget"]
    heun = [c for c in cands if c["options"].get("solver") == "heun" and c["budget"] == 10]
    assert heun and all((c["steps"], c["nfe"]) == (5, 9) for c in heun)
    assert config.eval.subset == "validation"


def test_budget_a_method_cannot_meet_is_refused_before_anything_runs():
    config = tune_fashion_mnist.get_config()
    config.tune.methods = "vipaint"
    config.tune.space.vipaint.budgets = (10,)
    with pytest.raises(tune.TuneError, match="cannot meet an NFE budget of 10.*least NFE"):
        tune.plan(config)
    config = tune_fashion_mnist.get_config()
    config.tune.space.dps.zeta = (-1.0,)
    with pytest.raises(tune.TuneError, match="zeta"):
        tune.plan(config)
    config = tune_fashion_mnist.get_config()
    config.tune.methods = "aid"
    with pytest.raises(tune.TuneError, match="not a zero-shot method"):
        tune.plan(config)


def test_smoke_search_chooses_writes_and_resumes(tmp_path, monkeypatch):
    config = tune_fashion_mnist.get_config("smoke")
    config.tune.write = str(tmp_path / "tuned.py")
    record = tune.run(config, str(tmp_path / "run"))
    groups = {(c["method"], c["budget"]) for c in record["candidates"]}
    assert groups == {("replacement", 3), ("ddnm", 3)}
    for method, budget in groups:
        group = [c for c in record["candidates"] if (c["method"], c["budget"]) == (method, budget)]
        (best,) = [c for c in group if c["chosen"]]
        assert best["score"] == max(c["score"] for c in group)  # psnr_hole: higher is better
        assert best["delta_vs_chosen"]["mean"] == 0.0
        assert record["chosen"][method][budget]["num_steps"] == best["steps"]
    # A choice at the end of a one-knob grid was searched one step further (max_extend=1).
    for method, budget in groups:
        group = [c for c in record["candidates"] if (c["method"], c["budget"]) == (method, budget)]
        extended = [c for c in group if "__x" in c["entry"]]
        first = [c for c in group if "__x" not in c["entry"]]
        for c in first:
            c["chosen"] = c["score"] == max(x["score"] for x in first)
        nxt = tune._extension(first)
        if nxt is not None and tune._fits(method, budget, nxt) is not None:
            assert [c["options"] for c in extended] == [nxt]
        else:
            assert not extended
    # The harness ran on validation images only.
    res = json.loads((tmp_path / "run/search/ddnm_nfe3/results.json").read_text())
    from aid_jax.data import pipeline

    block = set(pipeline.validation_block(64).tolist())  # the smoke data: 64 images
    assert set(res["data"]["indices"]) <= block
    # The written module holds the choice.
    spec = importlib.util.spec_from_file_location("tuned", tmp_path / "tuned.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TUNED == json.loads(json.dumps(record["chosen"]), object_hook=_int_keys)
    assert "Bold" in (tmp_path / "run/tuning.md").read_text()
    # The generated module is committed: it must pass the project's formatter as written.
    import subprocess
    import sys

    check = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(tmp_path / "tuned.py")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # Resumption: finished groups are read, not rerun.
    monkeypatch.setattr(evaluate, "run", lambda *a, **k: pytest.fail("reran a finished group"))
    again = tune.run(config, str(tmp_path / "run"))
    assert again["chosen"] == record["chosen"]


def _int_keys(d):
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


def test_a_choice_at_the_edge_of_its_knob_is_extended():
    def group(values, chosen):
        return [dict(options={"w": v, "eta": 0.0}, knob="w", chosen=(v == chosen)) for v in values]

    assert tune._extension(group((0.5, 1.0, 2.0), 2.0)) == {"w": 4.0, "eta": 0.0}
    assert tune._extension(group((0.5, 1.0, 2.0), 0.5)) == {"w": 0.25, "eta": 0.0}
    assert tune._extension(group((0.5, 1.0, 2.0), 1.0)) is None  # inside: trusted
    assert tune._extension(group((0.0, 0.5), 0.0)) == {"w": -0.5, "eta": 0.0}  # linear step
    no_knob = [dict(options={"a": 1}, knob=None, chosen=True)]
    assert tune._extension(no_knob) is None
    # Options the method refuses end the extension (ddnm's η ≤ 1).
    assert tune._fits("ddnm", 10, {"eta": 1.2}) is None
    assert tune._fits("ddnm", 10, {"eta": 0.3}) == 10
    config = tune_fashion_mnist.get_config()
    assert tune._single_knob(config, "pigdm") == "w"
    assert tune._single_knob(config, "repaint") is None  # listed candidates
    assert tune._single_knob(config, "unguided") is None  # not numeric
