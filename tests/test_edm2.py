"""Tests for the EDM2 UNet + Precond port (aid_jax.backbones.edm2).

Golden fixtures: tests/testdata/edm2_tiny_{cond,uncond}.{json,npz} (NVIDIA's own code, float16
weights, NCHW io). Layer-level float64 NumPy references cover what the whole-network fixtures
cannot pin down (EDM_REFERENCE.md §12, §14).
"""

from __future__ import annotations

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.backbones import edm2

TESTDATA = pathlib.Path(__file__).parent / "testdata"
FIXTURES = ("edm2_tiny_cond", "edm2_tiny_uncond")
TOL = 1e-5  # relative to max|ref|; a faithful float32 port lands near 1e-7 (fixtures README)

# Jitted entry points (eager op-by-op dispatch compiles every primitive separately and is slow);
# test_jit_matches_eager checks that jit and eager agree.
_denoise = jax.jit(edm2.denoise, static_argnames="cfg")
_unet = jax.jit(edm2.unet, static_argnames="cfg")


@functools.cache
def _fixture(name: str):
    meta = json.loads((TESTDATA / f"{name}.json").read_text())
    with np.load(TESTDATA / f"{name}.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    state = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    io = {k[len("io/") :]: v for k, v in arrays.items() if k.startswith("io/")}
    cfg = edm2.EDM2Config.from_init_kwargs(meta["init_kwargs"])
    return meta, cfg, state, io


@functools.cache
def _params(name: str):
    _, cfg, state, _ = _fixture(name)
    return edm2.params_from_state(state, cfg)


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------------------------------
# Whole network against NVIDIA's outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_denoiser(name):
    _, cfg, _, io = _fixture(name)
    labels = io.get("labels")
    d = _denoise(_params(name), _nhwc(io["x"]), io["sigma"], labels, cfg=cfg)
    assert d.dtype == jnp.float32
    assert d.shape == _nhwc(io["D"]).shape
    assert _rel_err(d, _nhwc(io["D"])) <= TOL


def test_uncond_recovered_raw_network_at_sigma_20():
    # out_gain scales F; at large sigma D is dominated by c_out*F, so compare F itself (§14 step 3).
    name = "edm2_tiny_uncond"
    _, cfg, _, io = _fixture(name)
    (i,) = np.flatnonzero(io["sigma"] == np.float32(20.0))
    x = _nhwc(io["x"])[i : i + 1].astype(np.float64)
    d_ref = _nhwc(io["D"])[i : i + 1].astype(np.float64)
    s, sd = float(io["sigma"][i]), cfg.sigma_data
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / math.sqrt(s**2 + sd**2)
    c_in = 1 / math.sqrt(s**2 + sd**2)
    f_ref = (d_ref - c_skip * x) / c_out
    c_noise = jnp.full((1,), math.log(s) / 4, jnp.float32)
    f = _unet(_params(name)["unet"], jnp.asarray(c_in * x, jnp.float32), c_noise, None, cfg=cfg)
    assert _rel_err(f, f_ref) <= TOL


def test_precond_coeffs_match_reference():
    sigma = np.array([0.002, 0.5, 80.0], np.float32)
    c_skip, c_out, c_in, c_noise = edm2.precond_coeffs(jnp.asarray(sigma), 0.5)
    s = sigma.astype(np.float64)
    np.testing.assert_allclose(c_skip, 0.25 / (s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, 0.5 * s / np.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-6, atol=1e-7)


def test_labels_none_means_zero_vector():
    name = "edm2_tiny_cond"
    _, cfg, _, io = _fixture(name)
    x, sigma = _nhwc(io["x"]), io["sigma"]
    zeros = np.zeros((x.shape[0], cfg.label_dim), np.float32)
    d_none = _denoise(_params(name), x, sigma, None, cfg=cfg)
    d_zero = _denoise(_params(name), x, sigma, zeros, cfg=cfg)
    np.testing.assert_allclose(d_none, d_zero, rtol=0, atol=1e-6)
    d_lab = _denoise(_params(name), x, sigma, io["labels"], cfg=cfg)
    assert np.abs(np.asarray(d_lab) - np.asarray(d_none)).max() > 1e-3  # labels matter


def test_jit_matches_eager():
    name = "edm2_tiny_cond"
    _, cfg, _, io = _fixture(name)
    args = (_params(name), _nhwc(io["x"]), io["sigma"], io["labels"])
    eager = edm2.denoise(*args, cfg)
    jitted = jax.jit(edm2.denoise, static_argnames="cfg")(*args, cfg=cfg)
    assert _rel_err(jitted, eager) <= 1e-6


def test_logvar_head():
    name = "edm2_tiny_cond"
    _, cfg, state, io = _fixture(name)
    sigma = io["sigma"]
    got = edm2.logvar(_params(name), sigma, cfg)
    assert got.shape == (sigma.shape[0],) and got.dtype == jnp.float32
    c_noise = np.log(sigma.astype(np.float64)) / 4
    freqs = state["logvar_fourier.freqs"].astype(np.float64)
    phases = state["logvar_fourier.phases"].astype(np.float64)
    y = math.sqrt(2) * np.cos(np.outer(c_noise, freqs) + phases)
    w = state["logvar_linear.weight"].astype(np.float64)  # [1, 128]
    n = w.shape[1]
    w = w / (1e-4 + np.sqrt(np.sum(w**2, axis=1, keepdims=True) / n)) / math.sqrt(n)
    np.testing.assert_allclose(got, (y @ w.T)[:, 0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Keys, shapes, counts, config
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_state_shapes_and_num_params(name):
    meta, cfg, state, _ = _fixture(name)
    shapes = edm2.state_shapes(cfg)
    assert list(shapes) == meta["state_keys"]
    assert list(shapes) == list(state)  # npz is in torch order too
    for key, shape in shapes.items():
        assert state[key].shape == shape, key
    assert edm2.num_params(cfg) == meta["num_params"]


def test_config_from_init_kwargs():
    meta, cfg, _, _ = _fixture("edm2_tiny_cond")
    assert cfg.channel_mult == (1, 2) and cfg.attn_resolutions == (8,)
    hash(cfg)  # static jit argument
    assert cfg == edm2.EDM2Config.from_init_kwargs(meta["init_kwargs"])
    with pytest.raises(ValueError, match="bogus_key") as err:
        edm2.EDM2Config.from_init_kwargs({**meta["init_kwargs"], "bogus_key": 1})
    assert "model_channels" in str(err.value)  # lists the accepted keys


def test_released_parameter_counts():
    # §10.2: exact count of the img512-XS conditional model.
    cfg = edm2.EDM2Config(img_resolution=64, img_channels=4, label_dim=1000, model_channels=128)
    assert edm2.num_params(cfg) == 124_713_253
    assert len(edm2.state_shapes(cfg)) == 203
    assert edm2.state_shapes(cfg)["unet.enc.16x16_block0.attn_qkv.weight"] == (1152, 384, 1, 1)


def test_params_layout():
    params = _params("edm2_tiny_cond")
    blk = params["unet"]["enc"]["8x8_block0"]
    assert blk["conv_res0"]["weight"].shape == (3, 3, 64, 64)  # HWIO
    assert blk["conv_skip"]["weight"].shape == (1, 1, 32, 64)
    assert blk["emb_linear"]["weight"].shape == (64, 64)  # [in, out]
    assert params["unet"]["emb_label"]["weight"].shape == (10, 64)
    assert blk["emb_gain"].shape == () and params["unet"]["out_gain"].shape == ()
    assert params["logvar_linear"]["weight"].shape == (128, 1)
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.float32


# --------------------------------------------------------------------------------------------------
# params_from_state validation
# --------------------------------------------------------------------------------------------------


def test_params_from_state_missing_key():
    _, cfg, state, _ = _fixture("edm2_tiny_cond")
    key = "unet.enc.8x8_block0.attn_qkv.weight"
    bad = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ValueError, match="missing") as err:
        edm2.params_from_state(bad, cfg)
    assert key in str(err.value) and "(192, 64, 1, 1)" in str(err.value)


def test_params_from_state_extra_key():
    _, cfg, state, _ = _fixture("edm2_tiny_cond")
    bad = {**state, "unet.enc.8x8_block0.bias": np.zeros((64,), np.float16)}
    with pytest.raises(ValueError, match="unexpected") as err:
        edm2.params_from_state(bad, cfg)
    assert "unet.enc.8x8_block0.bias" in str(err.value) and "(64,)" in str(err.value)


def test_params_from_state_wrong_shape():
    _, cfg, state, _ = _fixture("edm2_tiny_cond")
    key = "unet.dec.16x16_block1.conv_res0.weight"
    bad = {**state, key: np.zeros((32, 64, 1, 1), np.float16)}
    with pytest.raises(ValueError, match="shape mismatch") as err:
        edm2.params_from_state(bad, cfg)
    msg = str(err.value)
    assert key in msg and "(32, 64, 3, 3)" in msg and "(32, 64, 1, 1)" in msg


def test_init_state_matches_shapes_and_runs():
    cfg = _fixture("edm2_tiny_uncond")[1]
    state = edm2.init_state(jax.random.key(1), cfg)
    shapes = edm2.state_shapes(cfg)
    assert list(state) == list(shapes)
    assert all(state[k].shape == s for k, s in shapes.items())
    params = edm2.params_from_state(state, cfg)
    # Same shapes as the uncond fixture, so the jitted denoiser is reused.
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 3), jnp.float32)
    d = _denoise(params, x, jnp.array([0.3, 5.0, 40.0], jnp.float32), None, cfg=cfg)
    assert d.shape == x.shape and bool(jnp.all(jnp.isfinite(d)))


# --------------------------------------------------------------------------------------------------
# Layer-level float64 references
# --------------------------------------------------------------------------------------------------


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_normalize():
    x = _rng().normal(size=(2, 5, 7)).astype(np.float32) * 3
    x64 = x.astype(np.float64)
    for axes in ((2,), (1, 2)):
        n = math.prod(x.shape[a] for a in axes)
        ref = x64 / (1e-4 + np.sqrt(np.sum(x64**2, axis=axes, keepdims=True) / n))
        np.testing.assert_allclose(edm2.normalize(jnp.asarray(x), axes), ref, rtol=1e-6)


def test_pixel_norm_is_over_channels():
    x = _rng(1).normal(size=(2, 4, 3, 6)).astype(np.float32) * 5  # NHWC
    x64 = x.astype(np.float64)
    ref = x64 / (1e-4 + np.linalg.norm(x64, axis=-1, keepdims=True) / math.sqrt(6))
    got = np.asarray(edm2.pixel_norm(jnp.asarray(x)))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.mean(got.astype(np.float64) ** 2, -1)), 1, rtol=1e-4)


def test_mp_silu():
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    x64 = x.astype(np.float64)
    ref = x64 / (1 + np.exp(-x64)) / 0.596
    np.testing.assert_allclose(edm2.mp_silu(jnp.asarray(x)), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("t", [0.3, 0.5])
def test_mp_sum(t):
    a, b = (_rng(2).normal(size=(2, 3, 3, 8)).astype(np.float32) for _ in range(2))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = ((1 - t) * a64 + t * b64) / math.sqrt((1 - t) ** 2 + t**2)
    np.testing.assert_allclose(edm2.mp_sum(jnp.asarray(a), jnp.asarray(b), t), ref, rtol=1e-6)


@pytest.mark.parametrize("t", [0.5, 0.3])
def test_mp_cat_order_and_weights(t):
    rng = _rng(3)
    a = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    b = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
    na, nb = 3, 5
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    ref = np.concatenate(
        [
            a.astype(np.float64) * c * (1 - t) / math.sqrt(na),
            b.astype(np.float64) * c * t / math.sqrt(nb),
        ],
        axis=-1,
    )
    got = np.asarray(edm2.mp_cat(jnp.asarray(a), jnp.asarray(b), t))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # a first: the first na channels are a, not b (§12 #9).
    np.testing.assert_allclose(got[..., :na] / a, c * (1 - t) / math.sqrt(na), rtol=1e-5)
    swapped = np.asarray(edm2.mp_cat(jnp.asarray(b), jnp.asarray(a), t))
    assert swapped.shape == got.shape and np.abs(swapped - got).max() > 0.1


def test_mp_fourier():
    rng = _rng(4)
    x = rng.normal(size=(5,)).astype(np.float32)
    freqs = (2 * np.pi * rng.normal(size=(16,))).astype(np.float16)  # stored as float16, used as is
    phases = (2 * np.pi * rng.uniform(size=(16,))).astype(np.float16)
    ref = math.sqrt(2) * np.cos(
        np.outer(x.astype(np.float64), freqs.astype(np.float64)) + phases.astype(np.float64)
    )
    got = edm2.mp_fourier(jnp.asarray(x), jnp.asarray(freqs), jnp.asarray(phases))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)


def test_resample():
    x = _rng(5).normal(size=(2, 4, 6, 3)).astype(np.float32)
    down = x.astype(np.float64).reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(edm2.resample(jnp.asarray(x), "down"), down, rtol=1e-6)
    up = np.asarray(edm2.resample(jnp.asarray(x), "up"))
    assert up.shape == (2, 8, 12, 3)
    for dy in range(2):
        for dx in range(2):
            np.testing.assert_array_equal(up[:, dy::2, dx::2], x)
    np.testing.assert_array_equal(edm2.resample(jnp.asarray(x), "keep"), x)


def _mp_weight_ref(w: np.ndarray) -> np.ndarray:
    """float64 MPConv effective weight in torch layout: normalize(w) / sqrt(fan_in)."""
    w = w.astype(np.float64)
    fan_in = math.prod(w.shape[1:])
    axes = tuple(range(1, w.ndim))
    rms = np.sqrt(np.sum(w**2, axis=axes, keepdims=True) / fan_in)
    return w / (1e-4 + rms) / math.sqrt(fan_in)


def test_mpconv_weight_conv_and_linear():
    rng = _rng(6)
    conv = rng.normal(size=(6, 4, 3, 3)).astype(np.float16)
    conv[2] *= 7  # an un-normalised row (§12 #8)
    got = edm2.mpconv_weight(conv)
    assert got.dtype == np.float32 and got.shape == (3, 3, 4, 6)  # OIHW -> HWIO
    np.testing.assert_allclose(got, _mp_weight_ref(conv).transpose(2, 3, 1, 0), rtol=1e-6)
    lin = rng.normal(size=(5, 9)).astype(np.float32) * 0.1
    got = edm2.mpconv_weight(lin)
    assert got.shape == (9, 5)  # [out, in] -> [in, out]
    np.testing.assert_allclose(got, _mp_weight_ref(lin).T, rtol=1e-6)


def test_weight_normalisation_is_applied_in_params_from_state():
    # A row with norm far from 1 must come out with unit norm (per output channel), and rescaling
    # any row of the stored weight must not change the baked weight (§5 MPConv, §12 #8).
    _, cfg, state, _ = _fixture("edm2_tiny_cond")
    key = "unet.enc.16x16_block0.conv_res0.weight"
    scaled = dict(state)
    w = state[key].astype(np.float32).copy()
    w[0] *= 10.0
    w[5] *= 0.05
    scaled[key] = w
    baked = np.asarray(
        edm2.params_from_state(scaled, cfg)["unet"]["enc"]["16x16_block0"]["conv_res0"]["weight"]
    )
    row_norms = np.linalg.norm(baked.reshape(-1, baked.shape[-1]).astype(np.float64), axis=0)
    np.testing.assert_allclose(row_norms, 1.0, rtol=2e-3)  # eps 1e-4 relative to RMS ~ 0.05..10
    ref = np.asarray(
        _params("edm2_tiny_cond")["unet"]["enc"]["16x16_block0"]["conv_res0"]["weight"]
    )
    np.testing.assert_allclose(baked, ref, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(baked, _mp_weight_ref(w).transpose(2, 3, 1, 0), rtol=1e-6)


def test_attention_interleaved_heads():
    # float64 NCHW reference of §5 step 8: qkv channels (head, c_head, 3), per-head pixel norm of
    # q/k/v, softmax over keys with 1/sqrt(c_head), proj, then mp_sum with attn_balance.
    rng = _rng(7)
    n, c, h, w, heads = 2, 16, 3, 4, 2
    ch = c // heads
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    wqkv = rng.normal(size=(3 * c, c, 1, 1)).astype(np.float32)
    wproj = rng.normal(size=(c, c, 1, 1)).astype(np.float32)
    x64 = x.astype(np.float64)
    y = np.einsum("oi,nihw->nohw", _mp_weight_ref(wqkv)[:, :, 0, 0], x64)
    y = y.reshape(n, heads, ch, 3, h * w)
    y = y / (1e-4 + np.linalg.norm(y, axis=2, keepdims=True) / math.sqrt(ch))
    q, k, v = y[:, :, :, 0], y[:, :, :, 1], y[:, :, :, 2]
    logits = np.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(ch))
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    a = np.einsum("nhqk,nhck->nhcq", wts, v).reshape(n, c, h, w)
    yproj = np.einsum("oi,nihw->nohw", _mp_weight_ref(wproj)[:, :, 0, 0], a)
    ref = (0.7 * x64 + 0.3 * yproj) / math.sqrt(0.7**2 + 0.3**2)

    cfg = edm2.EDM2Config(img_resolution=4, img_channels=3, channel_mult=(1,))
    p = {
        "attn_qkv": {"weight": jnp.asarray(edm2.mpconv_weight(wqkv))},
        "attn_proj": {"weight": jnp.asarray(edm2.mpconv_weight(wproj))},
    }
    got = edm2._attention(p, jnp.asarray(_nhwc(x)), heads, cfg)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
