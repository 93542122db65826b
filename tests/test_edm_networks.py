"""EDM-family networks (SongUNet, DhariwalUNet; EDM/VP/VE preconditioning) against NVIDIA fixtures
and layer-level float64 NumPy references (the blind spots of the fixtures, EDM_REFERENCE.md §12)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.backbones import edm, layers, loader

EDM_FIXTURES = [
    "edm_ddpmpp_tiny",
    "edm_ddpmpp_skip_tiny",
    "edm_ncsnpp_tiny_cond",
    "edm_adm_tiny_cond",
    "vp_ddpmpp_tiny",
    "ve_ncsnpp_tiny",
]


def load_fixture(testdata, name):
    meta = json.loads((testdata / f"{name}.json").read_text())
    z = np.load(testdata / f"{name}.npz")
    state = {k[len("state/") :]: z[k] for k in z.files if k.startswith("state/")}
    io = {k[len("io/") :]: z[k] for k in z.files if k.startswith("io/")}
    return meta, state, io


@pytest.mark.parametrize("name", EDM_FIXTURES)
def test_fixture_denoiser_matches_nvidia(testdata, name):
    meta, state, io = load_fixture(testdata, name)
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    # Key order and shapes are torch's, and the parameter count is the fixture's.
    assert list(loader.state_shapes(config)) == meta["state_keys"]
    assert loader.num_params(config) == meta["num_params"]
    params = loader.params_from_state(state, config)
    x = io["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    fn = jax.jit(lambda p, x, s, l: loader.denoise(p, x, s, l, config=config))
    d = np.asarray(fn(params, x, io["sigma"], io.get("labels"))).transpose(0, 3, 1, 2)
    ref = io["D"]
    err = np.abs(d - ref).max()
    # The ceiling is 1e-4·max|D|; a faithful float32 port lands near 1e-7, so assert 1e-5.
    assert err <= 1e-5 * np.abs(ref).max(), (name, err)


def test_param_shapes_match_converted_params(testdata):
    meta, state, _ = load_fixture(testdata, "edm_ncsnpp_tiny_cond")
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    params = loader.params_from_state(state, config)
    shapes = jax.tree.map(np.shape, params)
    assert shapes == loader.param_shapes(config)


# ---------------------------------------------------------------------------------------------
# Layer-level references (float64 NumPy, written from the definitions, not from the port).


def test_positional_embedding_endpoint_and_order():
    c = np.array([0.3, -1.7, 2.0], np.float32)
    n = 8
    for endpoint in (True, False):
        freqs = (1 / 10000) ** (np.arange(n // 2) / (n // 2 - (1 if endpoint else 0)))
        ref = np.concatenate([np.cos(np.outer(c, freqs)), np.sin(np.outer(c, freqs))], 1)
        got = layers.positional_embedding(jnp.asarray(c), n, endpoint=endpoint)
        np.testing.assert_allclose(got, ref, atol=2e-6)
    # endpoint=True makes the last frequency exactly 1/max_positions.
    got = layers.positional_embedding(jnp.ones(1), n, endpoint=True)
    np.testing.assert_allclose(got[0, n // 2 - 1], np.cos(1e-4), atol=1e-7)


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_songunet_swaps_sin_cos(embedding_type):
    from aid_jax.backbones import song_unet

    cfg = song_unet.SongUNetConfig(8, 1, 1, model_channels=8, embedding_type=embedding_type)
    c = np.array([0.7, -0.2], np.float32)
    if embedding_type == "positional":
        n = cfg.noise_channels
        freqs = (1 / 10000) ** (np.arange(n // 2) / (n // 2 - 1))  # endpoint=True
        params = {}
    else:
        freqs = np.random.default_rng(0).standard_normal(cfg.noise_channels // 2) * 16
        params = {"map_noise": {"freqs": freqs.astype(np.float32)}}
        freqs = 2 * np.pi * freqs.astype(np.float32).astype(np.float64)
    arg = np.outer(c, freqs)
    ref = np.concatenate([np.sin(arg), np.cos(arg)], 1)  # [sin, cos] after the swap
    got = song_unet.noise_embedding(params, jnp.asarray(c), cfg)
    np.testing.assert_allclose(got, ref, atol=5e-5)


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_group_norm_two_pass_eps_and_groups(eps):
    rng = np.random.default_rng(0)
    c = 64
    # Offset mean and a variance (1e-5) comparable to eps, so a wrong eps is visible and the
    # one-pass variance formula would lose precision.
    x = (1 + 0.003 * rng.standard_normal((2, 4, 4, c))).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    spec = layers.GroupNorm(c, eps=eps)
    assert spec.groups == 16  # min(32, 64 // 4)
    got = np.asarray(spec({"weight": w, "bias": b}, jnp.asarray(x)))

    def ref(eps):
        xg = x.astype(np.float64).reshape(2, 4, 4, 16, 4)
        mean = xg.mean(axis=(1, 2, 4), keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
        return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b

    np.testing.assert_allclose(got, ref(eps), atol=2e-3)
    other = 1e-5 if eps == 1e-6 else 1e-6
    assert np.abs(got - ref(other)).max() > 2e-2  # the check can tell the two eps apart


def test_songunet_blocks_use_eps_1e6_and_adm_1e5():
    song = edm.EDMConfig.from_init_kwargs(
        "EDMPrecond", dict(model_type="SongUNet", img_resolution=8, img_channels=3)
    )
    from aid_jax.backbones import dhariwal_unet, song_unet

    blocks = [m for _, m in song_unet.modules(song.net)["enc"] if isinstance(m, layers.UNetBlock)]
    assert blocks and all(b.eps == 1e-6 for b in blocks)
    adm = edm.EDMConfig.from_init_kwargs(
        "EDMPrecond", dict(model_type="DhariwalUNet", img_resolution=8, img_channels=3)
    )
    blocks = [
        m for _, m in dhariwal_unet.modules(adm.net)["enc"] if isinstance(m, layers.UNetBlock)
    ]
    assert blocks and all(b.eps == 1e-5 for b in blocks)


def test_attention_qkv_interleaving():
    rng = np.random.default_rng(1)
    b, h, w, heads, ch = 2, 3, 3, 2, 4
    qkv = rng.standard_normal((b, h, w, 3 * heads * ch)).astype(np.float32)
    got = np.asarray(layers.attention(jnp.asarray(qkv), heads))
    # Reference: torch layout (N·heads, C_head, 3, HW) from NCHW channels (head, c, j).
    t = qkv.astype(np.float64).reshape(b, h * w, heads, ch, 3)
    ref = np.zeros((b, h * w, heads, ch))
    for n in range(b):
        for hd in range(heads):
            q, k, v = t[n, :, hd, :, 0], t[n, :, hd, :, 1], t[n, :, hd, :, 2]
            logits = q @ k.T / np.sqrt(ch)
            wts = np.exp(logits - logits.max(1, keepdims=True))
            wts /= wts.sum(1, keepdims=True)
            ref[n, :, hd] = wts @ v
    np.testing.assert_allclose(got, ref.reshape(b, h, w, heads * ch), atol=1e-5)


def _ref_down(x, r):
    """Depthwise correlation with f = outer(r,r)/Σr², stride 2, pad (K−1)//2 (float64)."""
    f = np.outer(r, r) / np.sum(r) ** 2
    k = len(r)
    p = (k - 1) // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho = (xp.shape[1] - k) // 2 + 1
    out = np.zeros((x.shape[0], ho, ho, x.shape[3]))
    for i in range(ho):
        for j in range(ho):
            patch = xp[:, 2 * i : 2 * i + k, 2 * j : 2 * j + k, :]
            out[:, i, j] = np.einsum("bhwc,hw->bc", patch, f)
    return out


def _ref_up(x, r):
    """Transposed depthwise conv with 4f, stride 2, padding (K−1)//2, by its scatter definition."""
    f = 4 * np.outer(r, r) / np.sum(r) ** 2
    k = len(r)
    p = (k - 1) // 2
    b, h, w, c = x.shape
    full = np.zeros((b, 2 * (h - 1) + k, 2 * (w - 1) + k, c))
    for i in range(h):
        for j in range(w):
            full[:, 2 * i : 2 * i + k, 2 * j : 2 * j + k, :] += (
                x[:, i, j, None, None, :] * f[None, :, :, None]
            )
    return full[:, p : p + 2 * h, p : p + 2 * w]


@pytest.mark.parametrize("r", [(1, 1), (1, 3, 3, 1)])
def test_resample_against_definition(r):
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(layers.downsample(jnp.asarray(x), r), _ref_down(x, r), atol=1e-5)
    np.testing.assert_allclose(layers.upsample(jnp.asarray(x), r), _ref_up(x, r), atol=1e-5)


def test_resample_11_is_mean_pool_and_nearest():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    down = np.asarray(layers.downsample(jnp.asarray(x), (1, 1)))
    np.testing.assert_array_equal(down, x.reshape(2, 2, 2, 2, 2, 1).mean(axis=(2, 4)))
    up = np.asarray(layers.upsample(jnp.asarray(x), (1, 1)))
    np.testing.assert_array_equal(up, x.repeat(2, 1).repeat(2, 2))


def test_fused_down_conv_order():
    """NCSN++'s aux_residual convolves first (padding w_pad + f_pad), then filters with stride 2."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 8, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)  # HWIO
    spec = layers.Conv2d(2, 3, 3, down=True, resample_filter=(1, 3, 3, 1), fused_resample=True)
    got = np.asarray(spec({"weight": w, "bias": np.zeros(3, np.float32)}, jnp.asarray(x)))
    xp = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
    conv = np.zeros((1, 10, 10, 3))
    for i in range(10):
        for j in range(10):
            conv[:, i, j] = np.einsum("bhwi,hwio->bo", xp[:, i : i + 3, j : j + 3], w)
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    ref = np.zeros((1, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            ref[:, i, j] = np.einsum(
                "bhwc,hw->bc", conv[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4], f
            )
    np.testing.assert_allclose(got, ref, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Preconditioning.


def _identity_net_config(precond):
    return edm.EDMConfig.from_init_kwargs(
        precond,
        dict(
            model_type="SongUNet",
            img_resolution=8,
            img_channels=1,
            model_channels=4,
            channel_mult=[1],
            num_blocks=1,
            attn_resolutions=[],
        ),
    )


def test_edm_precond_limits_and_float32():
    config = _identity_net_config("EDMPrecond")
    params = loader.init_params(jax.random.key(0), config)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)).astype(jnp.bfloat16)
    d = loader.denoise(params, x, jnp.array([1e-5, 1e-5]), config=config)
    assert d.dtype == jnp.float32  # D is always formed in float32
    # σ → 0: c_skip → 1 and c_out → 0, so D(x) → x.
    np.testing.assert_allclose(d, np.asarray(x, np.float32), atol=1e-4)


def test_vp_sigma_range_from_schedule():
    config = _identity_net_config("VPPrecond")
    assert config.sigma_min == pytest.approx(0.0010005, rel=1e-4)
    assert config.sigma_max == pytest.approx(152.167, rel=1e-4)
    ve = _identity_net_config("VEPrecond")
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)


def test_init_kwargs_round_trip(testdata):
    meta, _, _ = load_fixture(testdata, "edm_ncsnpp_tiny_cond")
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    again = loader.config_from_checkpoint(config.precond, loader.init_kwargs(config))
    assert again == config
    json.dumps(loader.init_kwargs(config))  # JSON-able for the manifest


def test_augment_conditioning(testdata):
    """map_augment adds W·a to the noise embedding (no bias); zeros = none (the sampler's case)."""
    meta, state, io = load_fixture(testdata, "edm_ddpmpp_tiny")  # augment_dim 9
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    params = loader.params_from_state(state, config)
    x = io["x"].transpose(0, 2, 3, 1)
    fn = jax.jit(lambda p, a: edm.denoise(p, x, io["sigma"], None, config, augment_labels=a))
    base = np.asarray(fn(params, None))
    np.testing.assert_array_equal(np.asarray(fn(params, jnp.zeros((3, 9)))), base)
    aug = jax.random.normal(jax.random.key(0), (3, 9))
    assert np.abs(np.asarray(fn(params, aug)) - base).max() > 1e-5
    # Same effect as shifting map_layer0's input by W·a, i.e. its bias by W·a·W0 per image:
    # check on one image by folding W·a into the noise embedding through map_layer0's bias.
    shift = np.asarray(aug[:1]) @ params["model"]["map_augment"]["weight"]  # [1, noise]
    folded = jax.tree.map(lambda a: a, params)
    folded["model"]["map_layer0"]["bias"] = (
        params["model"]["map_layer0"]["bias"] + (shift @ params["model"]["map_layer0"]["weight"])[0]
    )
    want = np.asarray(fn(folded, None))[:1]
    np.testing.assert_allclose(np.asarray(fn(params, aug))[:1], want, atol=1e-6)
