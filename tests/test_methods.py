"""aid_jax.methods: one contract, one registry (issue 13, items 2 and 5).

* one registry: every method has its run (or build), its cost and its option defaults in one
  entry; ``baselines`` re-exports it; the harness and the command line list the same names;
* the ``Inpainter`` protocol (jitted core, method, options, costs, label count, own parameters);
* the noise schedule as one option (``schedule``, an ``EDMSchedule``), given flat by configs;
* the one input validator's rules, shared by ``make_inpainter``, ``aid_jax.inpaint`` and VIPaint;
* the one pair of label helpers;
* AID as a registered method (checkpoint option, cache, placement) and the harness's
  ``evaluation_config`` / option checks before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aid_jax
from aid_jax import backbones, baselines, evaluate, masks, methods, sampling
from aid_jax.aid import control
from aid_jax.aid import model as aid_model
from aid_jax.gaussian import GaussianWorld
from aid_jax.methods import contract, registry
from aid_jax.vipaint import model as vipaint_model

ROOT = pathlib.Path(__file__).parent.parent
H = W = 6


@pytest.fixture(scope="module")
def world() -> GaussianWorld:
    return GaussianWorld.squared_exponential(H, W, length_scale=1.5, variance=0.25)


def _batch(b: int = 2, channels: int = 1):
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (b, H, W, channels)).astype(np.float32)
    m = np.ones((b, H, W, 1), np.float32)
    m[:, : H // 2] = 0.0
    return (y * m).astype(np.float32), m


# ---------------------------------------------------------------------------------------------
# One registry


def test_one_registry_every_method_has_run_or_build_cost_and_defaults():
    # Nine zero-shot methods, then the two that bring trained parameters: AID and DEFT.
    assert list(methods.REGISTRY) == [*baselines.METHODS, "aid", "deft"]
    for name, m in methods.REGISTRY.items():
        assert m.name == name and callable(m.cost) and "num_steps" in m.options
        assert (m.run is None) != (m.build is None), name  # exactly one way to build it
        if m.zero_shot:
            # The options are the function's keyword-only arguments, and the cost takes them all.
            params = inspect.signature(m.run).parameters.values()
            keyword = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
            assert set(m.options) == keyword
            assert set(inspect.signature(m.cost).parameters) <= set(m.options) or any(
                p.kind is inspect.Parameter.VAR_KEYWORD
                for p in inspect.signature(m.cost).parameters.values()
            )
            nfe, nfe_backward = methods.method_cost(name)  # the defaults are valid options
            assert isinstance(nfe, int) and isinstance(nfe_backward, int) and nfe > 0
    # The backward-compatible view is derived from the registry, never kept in sync by hand.
    assert baselines.METHODS == {n: m.run for n, m in methods.REGISTRY.items() if m.zero_shot}
    assert not hasattr(baselines, "_COSTS")
    assert baselines.make_inpainter is methods.make_inpainter
    assert baselines.method_cost is methods.method_cost
    assert baselines.validate_inputs is methods.validate_inputs
    assert baselines.InpaintResult is aid_model.InpaintResult is methods.InpaintResult
    with pytest.raises(TypeError):
        methods.REGISTRY["new"] = methods.REGISTRY["ddnm"]  # read-only


def test_costs_match_the_built_inpainters(world):
    den = world.denoiser()
    for name, m in methods.REGISTRY.items():
        if not m.zero_shot:
            continue
        opts = {"num_steps": 3}
        if name == "repaint":  # jump_length < num_steps (the default 10 has no jump point)
            opts.update(jump_length=2, jump_n_sample=2)
        if name == "vipaint":
            opts.update(num_iters=2, num_mc=1, sigmas=(1.6, 0.85))
        fn = methods.make_inpainter(name, lambda p, x, s, den=den: den(x, s), **opts)
        assert (fn.nfe, fn.nfe_backward) == methods.method_cost(name, **opts), name
    assert methods.method_cost("aid", checkpoint="runs/aid", num_steps=5, solver="heun") == (9, 0)
    assert methods.method_options("aid") == {
        "checkpoint": "",
        "num_steps": None,
        "solver": "euler",
        "S_churn": 0.0,
        "S_min": 0.0,
        "S_max": float("inf"),
        "S_noise": 1.0,
        "paste_back": False,
    }
    for bad, match in [
        (dict(checkpoint="", num_steps=5), "needs options.checkpoint"),
        (dict(checkpoint="x", num_steps=5, S_churn=-1.0), "S_churn"),
        (dict(checkpoint="x", num_steps=None), "num_steps"),
        (dict(checkpoint="x", num_steps=5, solver="rk4"), "solver"),
        (dict(checkpoint="x", num_steps=5, bogus=1), "unknown option"),
    ]:
        with pytest.raises(ValueError, match=match):
            methods.method_cost("aid", **bad)
    with pytest.raises(ValueError, match="unknown inpainting method 'nope'.*ddnm"):
        methods.get("nope")


def test_the_harness_and_the_command_line_use_the_registry():
    from aid_jax import inpaint_images, main

    parser = inpaint_images._parser()
    (action,) = [a for a in parser._actions if a.dest == "method"]
    assert tuple(action.choices) == tuple(methods.REGISTRY)
    assert set(main.RUNNERS) == set(main.MODES)
    assert not hasattr(evaluate, "_aid_inpainter") and not hasattr(evaluate, "_method_registry")


def test_the_schedule_is_one_option_given_flat_at_the_boundary(world):
    """Methods on the σ grid take one ``schedule`` option (an ``EDMSchedule``); configs and the
    command line give it flat (sigma_min, sigma_max, rho), the registry folds those keys into it,
    and records (JSON, Markdown) write it flat again with the same keys."""
    on_grid = [name for name, m in methods.REGISTRY.items() if "schedule" in m.options]
    assert on_grid == [n for n in baselines.METHODS if n != "vipaint"]
    for name in on_grid:
        opts = methods.method_options(name)
        assert opts["schedule"] == sampling.EDMSchedule() and "sigma_max" not in opts
        assert (opts["schedule"].sigma_min, opts["schedule"].sigma_max) == (0.002, 80.0)
    assert "schedule" not in methods.method_options("vipaint")
    flat = {"sigma_max": 10.0, "rho": 5.0}
    schedule = sampling.EDMSchedule(sigma_max=10.0, rho=5.0)
    merged = registry.merge_options("ddnm", {"num_steps": 3, **flat})
    assert merged == {**methods.method_options("ddnm"), "num_steps": 3, "schedule": schedule}
    given = {"schedule": sampling.EDMSchedule(sigma_min=0.01), "sigma_max": 10.0}
    assert registry.merge_options("dps", given)["schedule"] == sampling.EDMSchedule(0.01, 10.0)
    assert methods.method_cost(
        "repaint", num_steps=5, jump_length=2, **flat
    ) == methods.method_cost("repaint", num_steps=5, jump_length=2, schedule=schedule)
    for bad, match in [
        (dict(sigma_min=20.0, sigma_max=10.0), "sigma_min < sigma_max"),
        (dict(rho=0.0), "rho must be > 0"),
        (dict(schedule=(0.002, 80.0, 7.0)), "schedule must be"),
        (dict(schedule=(0.002, 80.0, 7.0), rho=5.0), "schedule must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            methods.method_cost("ddnm", **bad)
    with pytest.raises(ValueError, match="unknown option.*'sigma_max'"):
        methods.method_cost("vipaint", sigma_max=10.0)

    # Flat keys, the EDMSchedule option, and the registered function: one output.
    den = world.denoiser()
    y, m = _batch()
    key = jax.random.key(3)
    fn = methods.make_inpainter("ddnm", lambda p, x, s: den(x, s), num_steps=3, **flat)
    nested = methods.make_inpainter(
        "ddnm", lambda p, x, s: den(x, s), num_steps=3, schedule=schedule
    )
    assert fn.options == nested.options and fn.options["schedule"] == schedule
    x = np.asarray(fn(None, y, m, key).x)
    np.testing.assert_array_equal(x, nested(None, y, m, key).x)
    direct = jax.jit(lambda *a: baselines.METHODS["ddnm"](den, *a, num_steps=3, schedule=schedule))
    np.testing.assert_array_equal(x, direct(y, m, key).x)
    default = methods.make_inpainter("ddnm", lambda p, x, s: den(x, s), num_steps=3)
    assert not np.array_equal(x, default(None, y, m, key).x)  # the schedule is used

    # Records: the three keys in the schedule's place, JSON-safe; read back, the same options.
    record = json.loads(json.dumps(methods.flat_options(fn.options)))
    assert record == {
        "num_steps": 3,
        "eta": 0.85,
        "sigma_min": 0.002,
        "sigma_max": 10.0,
        "rho": 5.0,
    }
    assert list(record) == ["num_steps", "eta", "sigma_min", "sigma_max", "rho"]
    assert registry.merge_options("ddnm", record) == fn.options
    assert methods.flat_options(methods.method_options("vipaint")) == methods.method_options(
        "vipaint"
    )
    # The harness passes a config entry's flat options on, and they fold the same way.
    sys.path.insert(0, str(ROOT))
    from configs import eval_fashion_mnist

    config = eval_fashion_mnist.get_config("smoke")
    config.methods.ddnm.options = dict(flat)
    harness = evaluate.method_options(config, "ddnm", 3)
    assert registry.merge_options("ddnm", harness) == fn.options
    assert json.loads(config.to_json_best_effort())["methods"]["ddnm"]["options"] == flat


# ---------------------------------------------------------------------------------------------
# The Inpainter protocol


def test_inpainter_protocol(world):
    den = world.denoiser()
    fn = methods.make_inpainter("ddnm", lambda p, x, s: den(x, s) * p, num_steps=3)
    assert isinstance(fn, methods.Inpainter)
    assert (fn.method, fn.nfe, fn.nfe_backward, fn.label_dim) == ("ddnm", 3, 0, 0)
    assert fn.options == {**methods.method_options("ddnm"), "num_steps": 3}
    assert fn.params is None and fn.needs_backbone_params and fn.image_shape is None
    assert fn.call_params("backbone") == "backbone"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fn.nfe = 4
    y, m = _batch()
    one = jnp.float32(1.0)
    res = fn(one, y, m, jax.random.key(0))
    assert isinstance(res, methods.InpaintResult) and res.nfe == 3
    # The call is the host checks plus the jitted core on the same arguments.
    direct = fn.jitted(one, y, m, jax.random.key(0), None)
    np.testing.assert_array_equal(res.x, direct.x)
    # AOT: the core lowers and compiles on its own (what the harness times).
    exe = fn.jitted.lower(one, y, m, jax.random.key(0)).compile()
    np.testing.assert_array_equal(exe(one, y, m, jax.random.key(0)).x, res.x)
    assert "jitted" not in repr(fn) and "ddnm" in repr(fn)
    with pytest.raises(ValueError, match="denoise_with_params"):
        methods.make_inpainter("ddnm", None, num_steps=3)


# ---------------------------------------------------------------------------------------------
# The one validator


@pytest.mark.parametrize(
    "case, kwargs, match",
    [
        (lambda y, m: (y.astype(bool), m), {}, "real-valued"),
        (lambda y, m: (y[0], m), {}, "NHWC"),
        (lambda y, m: (y, m), {"image_shape": (H, W, 3)}, "expects"),
        (lambda y, m: (y, m[:, :3]), {}, "mask has shape"),
        (lambda y, m: (y, m[:1]), {"single_mask": False}, "mask has shape"),
        (lambda y, m: (y, np.repeat(m, 2, axis=-1)), {}, "channels"),
        (lambda y, m: (y, m.astype(str)), {}, "numeric or bool"),
        (lambda y, m: (y, np.where(m == 0, np.nan, m)), {}, "NaN"),
        (lambda y, m: (y, m * 0.5 + 0.25), {}, r"not binary: it must contain only 0 .hole. and 1"),
        (lambda y, m: (y, np.ones_like(m)), {}, "no hole"),
        (lambda y, m: (y, np.zeros_like(m)), {}, "no observed pixel"),
        (lambda y, m: (np.where(m == 1, np.inf, y), m), {}, "NaN/inf values at observed"),
        (lambda y, m: (y * 3, m), {}, r"\[-1, 1\]"),
    ],
)
def test_validator_rules(case, kwargs, match):
    y, m = case(*_batch())
    with pytest.raises(ValueError, match=match):
        methods.validate_inputs(y, m, **kwargs)


def test_validator_accepts_and_options():
    y, m = _batch(2, 3)
    methods.validate_inputs(y, m)  # one mask channel shared by the three
    methods.validate_inputs(y, m[:1])  # one mask for the batch
    methods.validate_inputs(y, np.repeat(m, 3, axis=-1))  # one value per channel
    methods.validate_inputs(y, m.astype(bool), (H, W, 3))
    methods.validate_inputs(np.clip(y * 10, -1.0005, 1.0005), m)  # within RANGE_TOL
    methods.validate_inputs(y * 50, m, value_range=None)  # latents: no range
    methods.validate_inputs(np.where(m == 0, np.nan, y), m)  # the hole is never read

    class Custom(ValueError):
        pass

    with pytest.raises(Custom, match="x has images of shape"):
        methods.validate_inputs(y, m, (H, W, 1), error=Custom, name="x")
    with pytest.raises(Custom, match="not binary"):  # validate_mask's message, re-typed
        methods.validate_inputs(y, m * 0.5, error=Custom)

    # Traced values: refused (host_only) or the shape checks only.
    with pytest.raises(ValueError, match="traced value"):
        jax.jit(lambda a, b: methods.validate_inputs(a, b))(y, m)
    jax.jit(lambda a, b: methods.validate_inputs(a, b, host_only=False))(y, m * 0.5)
    with pytest.raises(ValueError, match="mask has shape"):
        jax.jit(lambda a, b: methods.validate_inputs(a, b, host_only=False))(y, m[:, :2])


def test_every_entry_point_uses_the_one_validator(world, monkeypatch):
    """make_inpainter's calls, aid_jax.inpaint and VIPaint's entry points all go through
    contract.validate_inputs, each with its own settings."""
    seen = []
    original = contract.validate_inputs

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(contract, "validate_inputs", spy)
    monkeypatch.setattr(aid_model, "validate_inputs", spy)
    monkeypatch.setattr(vipaint_model, "validate_inputs", spy)
    y, m = _batch()
    den = world.denoiser()
    fn = methods.make_inpainter("ddnm", lambda p, x, s: den(x, s), num_steps=2)
    with pytest.raises(ValueError, match="not binary"):
        fn(None, y, m * 0.5, jax.random.key(0))
    with pytest.raises(ValueError, match="not binary"):
        vipaint_model.check_inputs(y, m * 0.5)
    bparams, net = _tiny_backbone()
    bundle = _aid_bundle(bparams, net)
    x8 = np.zeros((2, 8, 8, 1), np.float32)
    m8 = masks.make_masks("center_box", 2, 8, seed=0, fraction=0.5)
    with pytest.raises(aid_model.AIDError, match="not binary"):
        aid_jax.inpaint(bundle, x8, m8 * 0.5)
    assert seen[0] == {}  # the baselines: the defaults
    assert seen[1] == dict(value_range=None, single_mask=False, host_only=False)  # VIPaint
    assert seen[2]["error"] is aid_model.AIDError and seen[2]["name"] == "x"  # AID


# ---------------------------------------------------------------------------------------------
# The labels helpers, once


def test_labels_helpers():
    assert contract.check_labels(None, 3) is None
    rows = contract.check_labels(np.eye(3, dtype=np.float64)[[0, 2]], 2)
    assert rows.dtype == jnp.float32 and rows.shape == (2, 3)
    with pytest.raises(ValueError, match=r"one per image \[2, label_dim\]"):
        contract.check_labels(np.zeros((3, 3)), 2)
    calls = []

    def denoise(x, sigma, labels=None):
        calls.append(np.asarray(labels))
        return x

    assert contract.with_labels(denoise, None) is denoise
    bound = contract.with_labels(denoise, rows)
    bound(jnp.zeros((2, 1)), jnp.ones(2))  # one row per image: the labels themselves
    bound(jnp.zeros((6, 1)), jnp.ones(6))  # three rows per image, consecutive
    np.testing.assert_array_equal(calls[0], np.asarray(rows))
    np.testing.assert_array_equal(calls[1], np.repeat(np.asarray(rows), 3, axis=0))
    with pytest.raises(ValueError, match="does not split"):
        bound(jnp.zeros((3, 1)), jnp.ones(3))
    for module in (baselines, vipaint_model):
        assert not hasattr(module, "_check_labels") and not hasattr(module, "_with_labels")


# ---------------------------------------------------------------------------------------------
# AID as a registered method


def _tiny_backbone():
    """A random-weight SongUNet, 8×8×1 (the pretraining smoke network)."""
    sys.path.insert(0, str(ROOT))
    from aid_jax import pretrain
    from configs import pretrain_fashion_mnist

    net = pretrain.backbone_config(pretrain_fashion_mnist.get_config("smoke"))
    return backbones.init_params(jax.random.key(3), net), net


def _aid_bundle(bparams, net):
    shape = (net.img_resolution, net.img_resolution, net.img_channels)
    cfg = aid_model.AIDConfig(image_shape=shape, num_steps=3, actor_channels=(4, 4))
    actor = aid_model.init_actor(jax.random.key(1), cfg)
    actor = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape), actor
    )
    return aid_model.AIDParams(bparams, actor, net, cfg, "test")


def test_aid_is_a_registered_method():
    bparams, net = _tiny_backbone()
    bundle = _aid_bundle(bparams, net)
    size = net.img_resolution
    x = np.asarray(jax.random.uniform(jax.random.key(7), (2, size, size, 1), minval=-1, maxval=1))
    m = masks.make_masks("center_box", 2, size, seed=0, fraction=0.5)
    placed = []
    resources = methods.Resources(place=lambda p: placed.append(p) or p)
    with pytest.raises(ValueError, match="needs options.checkpoint"):
        methods.make_inpainter("aid", resources=resources)
    fn = methods.make_inpainter("aid", checkpoint=bundle, solver="heun", resources=resources)
    assert isinstance(fn, methods.Inpainter) and fn.params is bundle and placed == [bundle]
    assert not fn.needs_backbone_params and fn.call_params("ignored") is bundle
    assert (fn.method, fn.nfe, fn.nfe_backward, fn.label_dim) == ("aid", 5, 0, 0)
    assert fn.options == {
        "checkpoint": bundle,
        "num_steps": 3,
        "solver": "heun",
        "S_churn": 0.0,
        "S_min": 0.0,
        "S_max": float("inf"),
        "S_noise": 1.0,
        "paste_back": False,
    }
    assert fn.image_shape == (size, size, 1)
    res = fn(fn.params, x.astype(np.float32), m, jax.random.key(2))
    ref = aid_jax.inpaint(bundle, x, m, key=jax.random.key(2), solver="heun", paste_back=False)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6, atol=1e-6)
    # Another step count from the same checkpoint: loaded and placed once (the cache).
    fn4 = methods.make_inpainter("aid", checkpoint=bundle, num_steps=4, resources=resources)
    assert fn4.params is fn.params and len(placed) == 1 and fn4.nfe == 4
    assert fn4.nfe == control.controlled_nfe(4, "euler")
    with pytest.raises(ValueError, match="classes"):
        methods.make_inpainter("aid", checkpoint=bundle, label_dim=10, resources=resources)
    with pytest.raises(ValueError, match="expects"):  # the module's image shape
        fn(fn.params, np.zeros((2, size, size, 3), np.float32), m, jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# The harness's side


def test_evaluation_config_lives_in_evaluate():
    sys.path.insert(0, str(ROOT))
    from configs import eval_fashion_mnist, fashion_mnist

    config = fashion_mnist.get_config("smoke")
    out = evaluate.evaluation_config(config, "runs/x")
    assert out.data == config.eval_data
    assert out.methods.aid.options.checkpoint == "runs/x"
    assert out.methods.aid_heun.options.checkpoint == "runs/x"
    assert config.methods.aid.options.checkpoint == ""  # the input is not changed
    plain = eval_fashion_mnist.get_config("smoke")  # no eval_data, no aid entry
    assert evaluate.evaluation_config(plain, "runs/x").to_dict() == plain.to_dict()


def test_option_errors_before_anything_is_loaded(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs import eval_fashion_mnist, fashion_mnist

    config = eval_fashion_mnist.get_config("smoke")
    config.backbone.path = str(tmp_path / "missing.pkl")  # would fail if anything were loaded
    config.methods.ddnm.options = {"zeta": 1.0}
    with pytest.raises(evaluate.EvaluationError, match=r"config.methods.ddnm: unknown option"):
        evaluate.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # AID without a checkpoint (mode evaluate without --config.methods.aid.options.checkpoint).
    config = evaluate.evaluation_config(fashion_mnist.get_config("smoke"))
    with pytest.raises(
        evaluate.EvaluationError, match="aid: method 'aid' needs options.checkpoint"
    ):
        evaluate.plan(config)
    # The harness sets the samples option of VIPaint itself.
    config = eval_fashion_mnist.get_config("smoke")
    config.eval.update(methods="vipaint", samples_per_image=2, batch_size=8)
    assert evaluate.method_options(config, "vipaint", 5)["samples_per_fit"] == 2
