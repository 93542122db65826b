"""Class labels end to end (issue 12, item 3) on the conditional golden fixtures.

* every method of ``baselines.METHODS`` through ``make_inpainter(..., label_dim=N)``: class ids
  equal one-hot rows, other labels give other outputs, new labels never recompile, and the output
  equals the method run on a two-argument denoiser closure that passes the same one-hot rows
  itself (VIPaint: each image's row repeated to its fit / sample rows);
* ``aid_jax.inpaint(..., labels=)`` equals the controlled sampler run with a labels-bound
  denoiser; the harness form of AID passes them too;
* every label error raises before anything is traced (make_inpainter, AID, VIPaint's entry);
* the evaluation harness on a conditional backbone passes each image's labels to the methods.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aid_jax
from aid_jax import backbones, baselines, masks
from aid_jax.aid import control
from aid_jax.aid import model as aid_model
from aid_jax.backbones import BackboneError, loader, prepare_labels
from aid_jax.vipaint import model as vipaint_model

NUM_CLASSES = 10  # of every conditional fixture
TESTDATA = pathlib.Path(__file__).parent / "testdata"


def _fixture(name):
    meta = json.loads((TESTDATA / f"{name}.json").read_text())
    with np.load(TESTDATA / f"{name}.npz") as z:
        state = {k[len("state/") :]: z[k] for k in z.files if k.startswith("state/")}
    cfg = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    assert cfg.label_dim == NUM_CLASSES
    return loader.params_from_state(state, cfg), cfg


@pytest.fixture(scope="module")
def edm2_cond():
    """EDM2 (16×16×4 latents, 10 classes), NVIDIA's own random-init weights."""
    return _fixture("edm2_tiny_cond")


@pytest.fixture(scope="module")
def tiny_cond():
    """The edm_adm_tiny_cond architecture shrunk to one 8-channel level without attention, random
    weights (seeded): the fixtures' backward passes take 10–50 s each to compile on two cores,
    this one about 2 s, so every method (DPS, ΠGDM and VIPaint differentiate the denoiser) fits
    the file's time budget. The label path (map_label) is the fixture's."""
    meta = json.loads((TESTDATA / "edm_adm_tiny_cond.json").read_text())
    kwargs = dict(meta["init_kwargs"], model_channels=8, channel_mult=[1], attn_resolutions=[])
    cfg = loader.config_from_checkpoint(meta["precond"], kwargs)
    assert cfg.label_dim == NUM_CLASSES
    return backbones.init_params(jax.random.key(0), cfg), cfg


def _observed(b, size, channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (b, size, size, channels)).astype(np.float32)
    m = masks.make_masks("center_box", b, size, seed=0, fraction=0.5)
    return (x * m).astype(np.float32), m


def _denoise_with_params(cfg):
    def denoise_with_params(p, x, sigma, labels=None):
        return backbones.denoise(p, x, sigma, labels, config=cfg)

    return denoise_with_params


# ---------------------------------------------------------------------------------------------
# (a) every method through make_inpainter

# Small step counts; VIPaint: 2 samples per fitted image and M = 3 Monte Carlo rows, so the fit's
# rows (2 images × 3) and the sampling's (2 × 2) differ from each other.
OPTIONS = {
    "unguided": dict(num_steps=2),
    "replacement": dict(num_steps=2),
    "repaint": dict(num_steps=2, jump_length=1, jump_n_sample=2),
    "dps": dict(num_steps=2),
    "pigdm": dict(num_steps=2, eta=0.5),
    "ddrm": dict(num_steps=2),
    "ddnm": dict(num_steps=2),
    "ddnm_plus": dict(num_steps=2, travel_length=1, travel_repeat=2),
    "vipaint": dict(num_steps=1, samples_per_fit=2, num_iters=1, num_mc=3),
}
IDS = np.array([1, 1, 7, 7])  # rows 0, 1 (and 2, 3) share an image for VIPaint
OTHER = np.array([4, 4, 2, 2])


def test_every_method_is_covered():
    assert set(OPTIONS) == set(baselines.METHODS)


def _method_batch(name):
    y, m = _observed(4, 8, 3)
    if name == "vipaint":  # the harness layout: rows of an image hold the same y and mask
        y, m = np.repeat(y[::2], 2, axis=0), np.repeat(m[::2], 2, axis=0)
    return y, m


VIPAINT = vipaint_model.VIPaintConfig(refine_steps=1, num_iters=1, num_mc=3)  # = OPTIONS above


@pytest.fixture(scope="module")
def vipaint_reference(tiny_cond):
    """VIPaint's fit_and_sample on a 2-argument closure that puts image i's one-hot labels on
    its rows i·r … i·r + r − 1 of every denoiser call (r = 3 in the fit, 2 in the sampling)."""
    params, cfg = tiny_cond
    y, m = _method_batch("vipaint")
    per_image = jnp.eye(NUM_CLASSES, dtype=jnp.float32)[IDS[::2]]

    def denoise(x, sigma):
        which = np.arange(x.shape[0]) // (x.shape[0] // per_image.shape[0])
        return backbones.denoise(params, x, sigma, per_image[which], config=cfg)

    run = jax.jit(lambda y_, m_: vipaint_model.fit_and_sample(denoise, y_, m_, KEY, VIPAINT, 2))
    samples, _, _ = run(jnp.asarray(y[::2]), jnp.asarray(m[::2]))
    return np.asarray(samples)  # [2 images, 2 samples, H, W, C]


KEY = jax.random.key(3)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_method_labels(tiny_cond, vipaint_reference, name):
    params, cfg = tiny_cond
    y, m = _method_batch(name)
    key = KEY
    fn = baselines.make_inpainter(
        name, _denoise_with_params(cfg), label_dim=NUM_CLASSES, **OPTIONS[name]
    )
    assert fn.label_dim == NUM_CLASSES
    out = np.asarray(fn(params, y, m, key, labels=IDS).x)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[IDS]
    np.testing.assert_array_equal(np.asarray(fn(params, y, m, key, labels=onehot).x), out)
    other = np.asarray(fn(params, y, m, key, labels=OTHER).x)
    assert np.isfinite(out).all() and np.abs(other - out).max() > 1e-3  # the labels matter
    assert fn.jitted._cache_size() == 1  # labels are an argument: no retracing

    # Independent route: the method itself on a 2-argument closure passing the one-hot rows.
    if name == "vipaint":
        ref = vipaint_reference.reshape(out.shape)
    else:

        def reference(p, y_, m_, k, rows):
            def denoise(x, sigma):
                return backbones.denoise(p, x, sigma, rows, config=cfg)

            return baselines.METHODS[name](denoise, y_, m_, k, **OPTIONS[name]).x

        ref = jax.jit(reference)(params, y, m, key, jnp.asarray(onehot))
    np.testing.assert_allclose(out, np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_zero_rows_are_the_unconditional_zero_vector(tiny_cond):
    """labels = zero rows (the explicit opt-out) equal the backbone's labels=None sampling."""
    params, cfg = tiny_cond
    y, m = _observed(2, 8, 3)
    key = jax.random.key(0)
    cond = baselines.make_inpainter("ddnm", _denoise_with_params(cfg), label_dim=10, num_steps=2)
    zeros = np.zeros((2, NUM_CLASSES), np.float32)
    a = cond(params, y, m, key, labels=zeros).x
    # label_dim=0: the 3-argument route, backbones.denoise(..., labels=None).
    plain = baselines.make_inpainter("ddnm", _denoise_with_params(cfg), num_steps=2)
    np.testing.assert_allclose(a, plain(params, y, m, key).x, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (b) AID


@pytest.fixture(scope="module")
def aid_bundle(tiny_cond):
    bparams, bcfg = tiny_cond
    cfg = aid_model.AIDConfig(image_shape=(8, 8, 3), num_steps=3, actor_channels=(4, 4))
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(lambda: aid_model.init_actor(jax.random.key(1), cfg))
    actor = jax.tree.map(  # random and non-zero (init_actor's last conv is zero), so it matters
        lambda a: 0.1 * rng.standard_normal(a.shape).astype(np.float32), shapes
    )
    return aid_model.AIDParams(bparams, actor, bcfg, cfg, "test")


def test_aid_inpaint_labels(aid_bundle):
    p = aid_bundle
    assert p.label_dim == NUM_CLASSES
    x, m = _observed(4, 8, 3, seed=1)
    key = jax.random.key(5)
    out = aid_jax.inpaint(p, x, m, key=key, labels=IDS, paste_back=False)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[IDS]

    @jax.jit
    def reference(bparams, actor, x, m, rows):
        """The guided sampler of AID.md §6 with a labels-bound backbone denoiser."""
        y = jnp.where(m > 0.5, x, 0.0)
        mu = aid_model.guidance_mean_fn(actor, p.config, y, m)

        def denoise(x_, sigma):
            return backbones.denoise(bparams, x_, sigma, rows, config=p.backbone_config)

        x_init = p.config.sigma_max * jax.random.normal(key, x.shape, jnp.float32)
        return control.controlled_sample(denoise, mu, x_init, p.config.sigmas(3)).x

    ref = reference(p.backbone, p.actor, jnp.asarray(x), jnp.asarray(m), jnp.asarray(onehot))
    np.testing.assert_allclose(out.x, ref, rtol=1e-5, atol=1e-5)
    again = aid_jax.inpaint(p, x, m, key=key, labels=onehot, paste_back=False)
    np.testing.assert_array_equal(again.x, out.x)  # ids ≡ one-hot
    other = aid_jax.inpaint(p, x, m, key=key, labels=OTHER, paste_back=False)
    assert float(jnp.abs(other.x - out.x).max()) > 1e-3
    # The harness form passes them the same way, and new labels do not recompile.
    fn = aid_model.make_inpainter(p, num_steps=3, paste_back=False)
    assert fn.label_dim == NUM_CLASSES
    np.testing.assert_allclose(fn(p, x, m, key, labels=IDS).x, out.x, rtol=1e-5, atol=1e-5)
    fn(p, x, m, key, labels=OTHER)
    assert fn.jitted._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# (c) errors, all before tracing


def _counted(cfg):
    traces = []

    def denoise_with_params(p, x, sigma, labels=None):
        traces.append(1)  # trace time only
        return backbones.denoise(p, x, sigma, labels, config=cfg)

    return denoise_with_params, traces


def _label_errors(b):
    return [
        (None, "class-conditional \\(10 classes\\): pass labels="),
        (np.array([0, 10]), r"lie in \[0, 10\)"),
        (np.array([-1, 3]), r"lie in \[0, 10\)"),
        (11, r"lie in \[0, 10\)"),
        (np.arange(b + 1), f"for a batch of {b} images"),
        (np.zeros((b, 9), np.float32), "shape"),
        (np.zeros((b + 1, 10), np.float32), "shape"),
        (np.zeros((b, 2, 10), np.float32), "shape"),
        (np.array([0.5, 2.0]), "non-integer"),
        (np.array([np.nan, 2.0]), "non-integer"),
        (np.array([True, False]), "dtype"),
        (np.full((b, 10), np.nan, np.float32), "NaN"),
        (np.array(["a", "b"]), "dtype"),
    ]


def test_make_inpainter_label_errors_before_tracing(edm2_cond):
    params, cfg = edm2_cond
    y, m = _observed(2, 16, 4)
    dwp, traces = _counted(cfg)
    fn = baselines.make_inpainter("ddnm", dwp, label_dim=NUM_CLASSES, num_steps=2)
    for labels, match in _label_errors(2):
        with pytest.raises(BackboneError, match=match):
            fn(params, y, m, jax.random.key(0), labels=labels)
    unconditional = baselines.make_inpainter("ddnm", dwp, num_steps=2)
    with pytest.raises(BackboneError, match="unconditional .* drop labels="):
        unconditional(params, y, m, jax.random.key(0), labels=np.array([1, 2]))
    with pytest.raises(ValueError, match="not an option"):
        baselines.make_inpainter("ddnm", dwp, labels=IDS)
    with pytest.raises(ValueError, match="label_dim"):
        baselines.make_inpainter("ddnm", dwp, label_dim=-1)
    assert traces == []  # nothing was traced or compiled


def test_aid_label_errors_before_tracing(aid_bundle):
    p = aid_bundle
    x, m = _observed(2, 8, 3)
    before = aid_model._sample._cache_size()
    for labels, match in _label_errors(2):
        with pytest.raises(BackboneError, match=match):
            aid_jax.inpaint(p, x, m, labels=labels)
    fn = aid_model.make_inpainter(p, num_steps=2)
    with pytest.raises(BackboneError, match="class-conditional"):
        fn(p, x, m, jax.random.key(0))
    unconditional = dataclasses.replace(
        p, backbone_config=dataclasses.replace(p.backbone_config, label_dim=0)
    )
    with pytest.raises(BackboneError, match="unconditional"):
        aid_jax.inpaint(unconditional, x, m, labels=np.array([1, 2]))
    assert aid_model._sample._cache_size() == before and fn.jitted._cache_size() == 0


def test_vipaint_entry_labels(tiny_cond, vipaint_reference):
    """VIPaint's own entry: label_dim from the caller; errors first; the labels reach the fit and
    the sampling (its two programs give the labels-bound fit_and_sample's samples)."""
    params, cfg = tiny_cond
    y, m = _method_batch("vipaint")
    y, m = y[::2], m[::2]  # one row per image

    def denoise(x, sigma, labels=None):
        return backbones.denoise(params, x, sigma, labels, config=cfg)

    for kwargs, match in [
        (dict(label_dim=NUM_CLASSES), "class-conditional"),
        (dict(labels=np.array([1, 2])), "label_dim="),
        (dict(labels=np.array([1, 2]), label_dim=0), "unconditional"),
        (dict(labels=np.array([1, 12]), label_dim=NUM_CLASSES), r"\[0, 10\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            vipaint_model.inpaint(denoise, y, m, KEY, VIPAINT, 2, **kwargs)
    assert not any(sig[0] is denoise for sig in vipaint_model._PROGRAMS)  # nothing compiled
    res = vipaint_model.inpaint(denoise, y, m, KEY, VIPAINT, 2, labels=IDS[::2], label_dim=10)
    np.testing.assert_allclose(res.x, vipaint_reference, rtol=1e-5, atol=1e-5)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[IDS[::2]]
    same = vipaint_model.inpaint(denoise, y, m, KEY, VIPAINT, 2, labels=onehot)  # dim inferred
    np.testing.assert_array_equal(same.x, res.x)


def test_prepare_labels_forms():
    rows = np.asarray(prepare_labels(np.array([2, 0, 2]), 4, 3))
    np.testing.assert_array_equal(rows, np.eye(4, dtype=np.float32)[[2, 0, 2]])
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(prepare_labels(3, 4, 2), np.eye(4, dtype=np.float32)[[3, 3]])
    np.testing.assert_array_equal(prepare_labels(np.array([2.0, 0.0, 2.0]), 4, 3), rows)
    soft = np.full((3, 4), 0.25, np.float64)
    np.testing.assert_array_equal(prepare_labels(soft, 4, 3), soft.astype(np.float32))
    np.testing.assert_array_equal(prepare_labels(rows.astype(np.int32), 4, 3), rows)
    assert prepare_labels(None, 0, 3) is None
    # Inside jit: shapes only; ids become one-hot rows.
    traced = jax.jit(lambda ids: prepare_labels(ids, 4, 3))(jnp.array([2, 0, 2]))
    np.testing.assert_array_equal(traced, rows)


# ---------------------------------------------------------------------------------------------
# (d) the evaluation harness


def _harness_config():
    import ml_collections

    from configs import eval_fashion_mnist

    config = eval_fashion_mnist.get_config("smoke")
    config.backbone.path = str(TESTDATA / "edm2_tiny_cond.pkl")  # 16×16×4, 10 classes
    config.data = ml_collections.ConfigDict(
        dict(name="synthetic", num_images=16, image_size=16, channels=4, seed=0, num_classes=10)
    )
    config.eval.update(methods="ddnm", masks="center_box", num_images=8, batch_size=8)
    return config


def test_harness_passes_the_labels(tmp_path, monkeypatch):
    from aid_jax import evaluate
    from aid_jax.data import pipeline, sources

    config = _harness_config()
    seen = []
    original = backbones.denoise

    def spy(p, x, sigma, labels=None, **kw):
        seen.append(None if labels is None else tuple(labels.shape))
        return original(p, x, sigma, labels, **kw)

    monkeypatch.setattr(backbones, "denoise", spy)
    results = evaluate.run(config, str(tmp_path / "on"))
    monkeypatch.undo()
    assert results["data"]["labels"]["used"] is True
    # Every denoiser call got its rows' labels (the harness runs each row under vmap with its
    # own key, so a traced call sees one row).
    assert seen and set(seen) == {(1, NUM_CLASSES)}

    # The saved outputs are make_inpainter's with the images' own labels, row for row.
    source = sources.make_source(config.data)
    idx = pipeline.eval_indices(len(source), 8, config.eval.seed, subset=config.eval.subset)
    gt_u8, ids = source.get(idx)
    gt = pipeline.to_model_range(gt_u8)
    m = masks.from_config(config.masks.center_box.to_dict(), 8, (16, 16), seed=0)
    backbone = backbones.load_backbone(config.backbone.path)
    fn = baselines.make_inpainter(
        "ddnm", _denoise_with_params(backbone.config), label_dim=NUM_CLASSES, num_steps=2
    )
    key = evaluate.row_keys(config.seed, "center_box", idx, 1)  # one key per row
    direct = np.clip(np.asarray(fn(backbone.params, m * gt, m, key, labels=ids).x), -1, 1)
    saved = np.load(tmp_path / "on" / "outputs" / "center_box__ddnm__2.npz")["x"]
    np.testing.assert_allclose(saved, direct, rtol=1e-5, atol=1e-5)
    fives = np.clip(np.asarray(fn(backbone.params, m * gt, m, key, labels=5).x), -1, 1)
    assert np.abs(saved - fives).max() > 1e-3  # other labels would have given other outputs


def test_harness_label_choice():
    """eval.use_labels: auto / on / off on conditional and unconditional backbones (checked
    before anything is compiled)."""
    from aid_jax import evaluate

    def cfg(use):
        return types.SimpleNamespace(eval={"use_labels": use} if use != "absent" else {})

    cond = types.SimpleNamespace(config=types.SimpleNamespace(label_dim=3))
    uncond = types.SimpleNamespace(config=types.SimpleNamespace(label_dim=0))
    labelled = types.SimpleNamespace(num_classes=3, name="d")
    unlabelled = types.SimpleNamespace(num_classes=0, name="d")
    ids, none = np.array([2, 0]), np.array([-1, -1])
    rows = np.array([0, 0, 1, 1])  # 2 samples per image
    for use in (None, True, "absent"):
        got, used, _ = evaluate._eval_labels(cfg(use), cond, labelled, ids, rows)
        assert used and got.dtype == np.float32
        np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[2, 2, 0, 0]])
    for c, source, lab in [(cfg(False), labelled, ids), (cfg(None), unlabelled, none)]:
        got, used, note = evaluate._eval_labels(c, cond, source, lab, rows)
        assert not used and "zero class vector" in note
        np.testing.assert_array_equal(got, np.zeros((4, 3), np.float32))
    for use in (None, False):
        assert evaluate._eval_labels(cfg(use), uncond, labelled, ids, rows)[:2] == (None, False)
    for c, backbone, source, lab, match in [
        (cfg(True), uncond, labelled, ids, "unconditional"),
        (cfg(True), cond, unlabelled, none, "no class label"),
        (cfg(None), cond, labelled, np.array([2, 5]), r"\[0, 3\)"),
        (cfg("yes"), cond, labelled, ids, "True, False or None"),
    ]:
        with pytest.raises(evaluate.EvaluationError, match=match):
            evaluate._eval_labels(c, backbone, source, lab, rows)


# ---------------------------------------------------------------------------------------------
# (e) the trainers: AID and DEFT give a class-conditional backbone the batch's classes


def _trainer_step(trainer: str, image_shape, backbone_config):
    """(jitted step, initial state) of the AID or DEFT trainer's smoke config on ``image_shape``."""
    import sys

    sys.path.insert(0, str(TESTDATA.parent.parent))
    if trainer == "aid":
        from aid_jax.aid import train
        from configs import fashion_mnist

        config = fashion_mnist.trainer_defaults("smoke")
        cfg = train.aid_config(config, image_shape)
        actor_tx, critic_tx = train.make_optimizers(config)
        state = train.init_state(config, cfg, actor_tx, critic_tx, jax.random.key(1))
        step = train.make_train_step(config, cfg, backbone_config, actor_tx, critic_tx)
        return jax.jit(step), state, "terminal_loss"
    from aid_jax.deft import train
    from configs import deft_fashion_mnist

    config = deft_fashion_mnist.get_config("smoke")
    cfg = train.deft_config(config, image_shape)
    tx = train.make_optimizer(config)
    state = train.init_state(cfg, tx, jax.random.key(1))
    return jax.jit(train.make_train_step(config, cfg, backbone_config, tx)), state, "loss"


@pytest.mark.parametrize("trainer", ["aid", "deft"])
def test_trainers_give_the_backbone_the_batch_classes(tiny_cond, trainer, monkeypatch):
    """Every denoiser call of a training step gets one-hot rows of the batch (AID's antithetic
    pairs: each row's class twice), and other classes give another step."""
    params, cfg = tiny_cond
    seen = []
    original = backbones.denoise

    def spy(p, x, sigma, labels=None, **kw):
        seen.append(None if labels is None else (x.shape[0], *labels.shape))
        return original(p, x, sigma, labels, **kw)

    monkeypatch.setattr(backbones, "denoise", spy)
    step, state, loss = _trainer_step(trainer, (8, 8, 3), cfg)
    x0 = np.asarray(jax.random.uniform(jax.random.key(2), (4, 8, 8, 3), minval=-1, maxval=1))
    mask = masks.make_masks("center_box", 4, 8, seed=0, fraction=0.5)
    key = jax.random.key(3)
    _, m_a = step(state, params, x0, mask, key, prepare_labels(np.array([1, 7, 3, 3]), 10, 4))
    assert seen and all(s is not None and s[0] == s[1] and s[2] == NUM_CLASSES for s in seen)
    _, m_b = step(state, params, x0, mask, key, prepare_labels(np.array([4, 2, 0, 9]), 10, 4))
    _, m_zero = step(state, params, x0, mask, key, jnp.zeros((4, NUM_CLASSES), jnp.float32))
    assert float(m_a[loss]) != float(m_b[loss]) and float(m_a[loss]) != float(m_zero[loss])


def test_trainer_label_choice():
    """train.use_labels: the harness's rules (auto / on / off), checked before compiling; the
    rows are one-hot, an unlabelled or out-of-range id an error naming the data."""
    from aid_jax import train_loop

    labelled = types.SimpleNamespace(num_classes=3, name="d")
    unlabelled = types.SimpleNamespace(num_classes=0, name="u")
    assert train_loop.use_class_labels(None, 3, labelled) is True
    assert train_loop.use_class_labels(True, 3, labelled) is True
    assert train_loop.use_class_labels(False, 3, labelled) is False
    assert train_loop.use_class_labels(None, 3, unlabelled) is False  # the zero class vector
    assert train_loop.use_class_labels(None, 0, labelled) is False  # unconditional
    for option, dim, source, match in [
        (True, 0, labelled, "unconditional"),
        (True, 3, unlabelled, "no class labels"),
        ("yes", 3, labelled, "True, False or None"),
    ]:
        with pytest.raises(ValueError, match=match):
            train_loop.use_class_labels(option, dim, source)
    rows = train_loop.class_label_rows(np.array([2, 0]), 3, "data d")
    np.testing.assert_array_equal(rows, np.eye(3, dtype=np.float32)[[2, 0]])
    for ids in (np.array([2, -1]), np.array([3, 0])):
        with pytest.raises(ValueError, match="data d"):
            train_loop.class_label_rows(ids, 3, "data d")
