"""Hardened inputs (issue 17, point 3): O(1) upper bounds on the size options before anything is
built, the empty batch refused, backbone params checked against the backbone config (the first
mismatch named), and one dtype policy for every method (methods/contract.py's docstring)."""

from __future__ import annotations

import pathlib
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import backbones, baselines, methods, sampling
from aid_jax.gaussian import GaussianWorld
from aid_jax.methods import contract
from aid_jax.methods import primitives as prim
from aid_jax.vipaint import model as vipaint_model

ROOT = pathlib.Path(__file__).parent.parent
H = W = 6
HUGE = 10**9


@pytest.fixture(scope="module")
def world() -> GaussianWorld:
    return GaussianWorld.squared_exponential(H, W, length_scale=1.5, variance=0.25)


def _small(name: str) -> dict:
    """Small valid options of method ``name`` (RePaint's jumps shorter than its 3 steps)."""
    opts = dict(num_steps=3)
    if name == "repaint":
        opts.update(jump_length=2, jump_n_sample=2)
    return opts


def _batch(b: int = 2):
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (b, H, W, 1)).astype(np.float32)
    m = np.ones((b, H, W, 1), np.float32)
    m[:, : H // 2] = 0.0
    return (y * m).astype(np.float32), m


# ---------------------------------------------------------------------------------------------
# Size options: an O(1) upper bound, checked before any schedule or buffer is built

# (method, options) whose size option is far above the limit; the option the error names.
HUGE_OPTIONS = [
    *[(name, dict(num_steps=HUGE), "num_steps") for name in baselines.METHODS],
    ("repaint", dict(jump_length=HUGE), "jump_length"),
    ("repaint", dict(num_steps=50, jump_length=5, jump_n_sample=HUGE), "jump_n_sample"),
    ("ddnm_plus", dict(travel_length=HUGE), "travel_length"),
    ("ddnm_plus", dict(travel_repeat=HUGE), "travel_repeat"),
    ("vipaint", dict(samples_per_fit=HUGE), "samples_per_fit"),
    ("vipaint", dict(num_iters=HUGE), "num_iters"),
    ("vipaint", dict(num_mc=HUGE), "num_mc"),
    ("aid", dict(checkpoint="runs/aid", num_steps=HUGE), "num_steps"),
    ("deft", dict(checkpoint="runs/deft", num_steps=HUGE), "num_steps"),
]


@pytest.mark.parametrize(
    "name, options, option", HUGE_OPTIONS, ids=[f"{n}-{o}" for n, _, o in HUGE_OPTIONS]
)
def test_huge_size_options_are_refused_before_anything_is_built(name, options, option):
    """make_inpainter(num_steps=10**9) once built an O(n) host schedule while checking options
    (10**8: 3.2 GB; 10**9: OOM-killed). Now the limit is checked first: the refusal allocates
    (almost) nothing, whatever the value."""
    match = rf"{option} must be at most 10,000 .*MAX_COUNT.*got {HUGE}"
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            methods.method_cost(name, **options)
        with pytest.raises(ValueError, match=match):
            methods.make_inpainter(name, lambda p, x, s: x, **options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # < 1 MiB: no schedule, grid or buffer of HUGE entries


def test_the_pure_functions_check_the_limits_too(world):
    """Called directly (not through the registry), the methods and the schedule builder refuse
    the same values, in O(1)."""
    y, m = _batch()
    den = world.denoiser()
    for fn, options, option in [
        (baselines.repaint, dict(num_steps=HUGE), "num_steps"),
        (baselines.ddnm_plus, dict(travel_repeat=HUGE), "jump_n_sample"),
        (baselines.dps, dict(num_steps=HUGE), "num_steps"),
        (baselines.unguided, dict(num_steps=HUGE), "num_steps"),
        (baselines.vipaint, dict(num_iters=HUGE), "num_iters"),
    ]:
        with pytest.raises(ValueError, match=f"{option} must be at most 10,000"):
            fn(den, y, m, jax.random.key(0), **options)
    with pytest.raises(ValueError, match="num_steps must be at most 10,000"):
        prim.time_travel_schedule(HUGE, 10, 10)
    # Each count within the limit but the schedule too long: its length in closed form.
    with pytest.raises(ValueError, match=r"19,799,021 entries, above the maximum 1,000,000"):
        methods.method_cost("repaint", num_steps=1000, jump_length=10, jump_n_sample=10_000)


def test_the_limits_are_inclusive_and_valid_values_unchanged():
    assert prim.MAX_COUNT == 10_000 and prim.MAX_SCHEDULE == 1_000_000
    assert methods.method_cost("ddnm", num_steps=10_000) == (10_000, 0)
    assert methods.method_cost("unguided", num_steps=10_000, solver="euler") == (10_000, 0)
    with pytest.raises(ValueError, match="num_steps must be at most 10,000"):
        methods.method_cost("ddnm", num_steps=10_001)
    # The lower bounds keep their messages.
    with pytest.raises(ValueError, match="jump_length must be an int >= 1"):
        methods.method_cost("repaint", num_steps=5, jump_length=0)
    assert methods.method_cost("repaint") == (2410, 0)  # N = 250, L = 10, r = 10


def test_time_travel_size_is_the_built_schedule_s_length_and_nfe():
    for n in (1, 2, 3, 5, 7, 10, 23):
        for length in (1, 2, 3, 4, 10, 30):
            for r in (1, 2, 3, 5):
                sched = prim.time_travel_schedule(n, length, r)
                entries, down = prim.time_travel_size(n, length, r)
                assert entries == len(sched), (n, length, r)
                assert (
                    down == int(np.sum(sched[1:] > sched[:-1])) == prim.schedule_cost(n, length, r)
                )
    assert prim.time_travel_size(250, 10, 10) == (4571, 2410)


# ---------------------------------------------------------------------------------------------
# The empty batch


def test_an_empty_batch_is_refused_by_the_one_validator(world):
    y, m = _batch()
    with pytest.raises(ValueError, match=r"y is an empty batch \(shape \(0, 6, 6, 1\)\)"):
        methods.validate_inputs(y[:0], m[:0])
    with pytest.raises(ValueError, match="empty batch"):  # a shape rule: traced values too
        jax.jit(lambda a, b: methods.validate_inputs(a, b, host_only=False))(y[:0], m[:0])
    traces = []

    def denoise(p, x, s):
        traces.append(1)
        return world.denoiser()(x, s)

    for name in baselines.METHODS:
        fn = methods.make_inpainter(name, denoise, **_small(name))
        with pytest.raises(ValueError, match="empty batch"):
            fn(None, y[:0], m[:1], jax.random.key(0))
    assert traces == []  # refused before anything was traced or compiled
    with pytest.raises(ValueError, match="empty batch"):
        vipaint_model.check_inputs(y[:0], m[:0])


# ---------------------------------------------------------------------------------------------
# Backbone params against the backbone config


@pytest.fixture(scope="module")
def tiny():
    """A random-weight SongUNet, 8x8x1 (the pretraining smoke network), and its config."""
    sys.path.insert(0, str(ROOT))
    from aid_jax import pretrain
    from configs import pretrain_fashion_mnist

    net = pretrain.backbone_config(pretrain_fashion_mnist.get_config("smoke"))
    return backbones.init_params(jax.random.key(3), net), net


def _other_network(testdata):
    return backbones.load_backbone(testdata / "edm_ddpmpp_tiny.pkl").params  # 16x16x3 DDPM++


def test_backbone_params_are_checked_against_the_config(tiny, testdata):
    params, net = tiny
    backbones.check_params(params, net)  # the right ones
    other = _other_network(testdata)
    renamed = {"net": params["model"]}  # the right tensors under another name
    reshaped = jax.tree.map(lambda a: a, params)
    first = next(iter(_leaf_paths(reshaped)))
    _set(reshaped, first, np.zeros((2, 2), np.float32))
    cases = [
        ({}, "got an empty tree"),
        (None, "got NoneType None, expected a nested dict of arrays"),
        (other, r"parameter \S+ (has shape|is missing|is not part)"),
        (renamed, r"parameter \S+ is missing"),
        (reshaped, rf"parameter {first} has shape \(2, 2\), expected"),
        ({**params, "bogus": np.zeros(3)}, "parameter bogus is not part of this architecture"),
    ]
    for bad, match in cases:
        with pytest.raises(backbones.BackboneError, match=match) as info:
            backbones.check_params(bad, net)
        assert "do not fit the backbone config (EDMPrecond 8x8x1" in str(info.value)


def test_every_inpainter_call_names_the_first_mismatch(tiny, testdata):
    """The raw ``KeyError: 'weight'`` while tracing is now a BackboneError (a ValueError) naming
    the first mismatch: ``backbones.denoise`` checks its params, at trace time (names and shapes
    are static), for every caller."""
    params, net = tiny
    size = net.img_resolution
    y = np.zeros((1, size, size, 1), np.float32)
    m = np.ones((1, size, size, 1), np.float32)
    m[:, : size // 2] = 0.0

    def denoise(p, x, s):
        return backbones.denoise(p, x, s, config=net)

    fn = methods.make_inpainter("ddnm", denoise, num_steps=2)
    for bad, match in [
        ({}, "empty tree"),
        (None, "NoneType"),
        (_other_network(testdata), "parameter"),
    ]:
        with pytest.raises(backbones.BackboneError, match=match):
            fn(bad, y, m, jax.random.key(0))
    out = fn(params, y, m, jax.random.key(0))  # the right ones still run
    assert out.x.shape == y.shape and bool(jnp.isfinite(out.x).all())
    draw = backbones.make_sampler(net, sampling.SamplerConfig(solver="euler", num_steps=2))
    with pytest.raises(backbones.BackboneError, match="empty tree"):  # the sampler too
        draw({}, jnp.zeros((1, size, size, 1)), jax.random.key(0))


def _leaf_paths(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaf_paths(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _set(tree, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[last] = value


# ---------------------------------------------------------------------------------------------
# One dtype policy


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16, np.float64])
def test_float_images_are_accepted_and_converted_to_float32(world, dtype):
    y, m = _batch()
    y = y.astype(dtype)  # the values the float32 reference gets
    den = world.denoiser()
    for name in ("ddnm", "repaint", "dps"):
        fn = methods.make_inpainter(name, lambda p, x, s: den(x, s), **_small(name))
        got = fn(None, y, m, jax.random.key(0))
        want = fn(None, y.astype(np.float32), m, jax.random.key(0))
        assert got.x.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got.x), np.asarray(want.x))
        assert fn.jitted._cache_size() == 1  # one program: y reaches it as float32
    methods.validate_inputs(y, m.astype(jnp.bfloat16))  # masks of these dtypes too
    vipaint_model.check_inputs(y, m)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.bool_, np.complex64])
def test_other_image_dtypes_are_refused_by_every_method(world, dtype):
    """Baselines once accepted uint8/int32 images that AID refused, and bfloat16 was refused with
    an unclear message; now every entry point applies the one rule."""
    y, m = _batch()
    bad = (m * 255).astype(dtype) if dtype is not np.complex64 else y.astype(dtype)
    match = (
        r"integer dtype .*scale them first, e\.g\. uint8 -> x / 127\.5 - 1"
        if np.issubdtype(dtype, np.integer)
        else r"must be a real-valued image array of a float dtype \(float32, float16, bfloat16"
    )
    den = world.denoiser()
    for name in baselines.METHODS:
        fn = methods.make_inpainter(name, lambda p, x, s: den(x, s), **_small(name))
        with pytest.raises(ValueError, match=match):
            fn(None, bad, m, jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        vipaint_model.check_inputs(bad, m)

    class Custom(ValueError):  # AID's and DEFT's entry points: their own error class
        pass

    with pytest.raises(Custom, match=match):
        methods.validate_inputs(bad, m, host_only=False, error=Custom, name="x")


def test_the_policy_is_said_in_one_place():
    doc = contract.__doc__
    assert "The dtype policy" in doc and "bfloat16" in doc and "integer" in doc
    assert contract.IMAGE_DTYPES == tuple(
        np.dtype(d) for d in (np.float32, np.float16, jnp.bfloat16, np.float64)
    )
    assert prim.MAX_COUNT == 10_000 and "MAX_COUNT" in prim.__doc__


def test_aid_step_count_is_capped_before_any_schedule():
    """AID's own entry point checks num_steps in O(1) too (not only the registry's path)."""
    import tracemalloc

    from aid_jax import backbones
    from aid_jax.aid import model as aid_model

    bb = backbones.load_backbone("tests/testdata/edm_ddpmpp_tiny.pkl")
    res = bb.config.img_resolution
    cfg = aid_model.AIDConfig(image_shape=(res, res, bb.config.img_channels), actor_channels=(4,))
    params = aid_model.AIDParams(
        bb.params, aid_model.init_actor(jax.random.key(0), cfg), bb.config, cfg
    )
    x = np.zeros((1, res, res, bb.config.img_channels), np.float32)
    mask = np.ones((1, res, res, 1), np.float32)
    mask[:, : res // 2] = 0
    tracemalloc.start()
    with pytest.raises(aid_model.AIDError, match="at most 10,000"):
        aid_model.inpaint(params, x, mask, num_steps=10**9)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20
