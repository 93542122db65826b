"""SD VAE (diffusers AutoencoderKL) in JAX against the `sd_vae_tiny` fixture, written by diffusers
0.42.1 (see ../shared/fixtures/README.md); EDM2's latent scaling against float64 NumPy; the
full-size sd-vae-ft-mse architecture with random weights; the port round trip; bad input."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import shutil

import ckpt_writer as w
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import port
from aid_jax.backbones import BackboneError, load_backbone, sd_vae, vae_loader
from aid_jax.backbones.checkpoint_reader import read_checkpoint
from aid_jax.backbones.sd_vae import VAEConfig, VAEError

TESTDATA = pathlib.Path(__file__).parent / "testdata"
NAME = "sd_vae_tiny"
WEIGHTS = "diffusion_pytorch_model.safetensors"
# stabilityai/sd-vae-ft-mse's config.json (written by diffusers 0.4.2: no quant-conv flags).
SD_VAE_FT_MSE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture():
    with np.load(TESTDATA / f"{NAME}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads((TESTDATA / f"{NAME}.json").read_text())
    state = collections.OrderedDict((k, arrays[f"state/{k}"]) for k in meta["state_keys"])
    io = {k[3:]: arrays[k] for k in arrays if k.startswith("io/")}
    return meta, state, io


@pytest.fixture(scope="module")
def vae():
    return vae_loader.vae_from_folder(TESTDATA / NAME)


def _rel_err(got, ref) -> float:
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# Architecture and reading


def test_config_and_state_layout(fixture, vae):
    meta, _, _ = fixture
    cfg = vae.config
    assert cfg.block_out_channels == (32, 64) and cfg.layers_per_block == 1
    assert cfg.norm_num_groups == 16 and cfg.latent_channels == 4 and cfg.downsample_factor == 2
    # Keys in diffusers' state_dict() order, the fixture's parameter count.
    assert list(sd_vae.state_shapes(cfg)) == meta["state_keys"]
    assert sd_vae.num_params(cfg) == meta["num_params"] == 658_375
    # The full-size sd-vae-ft-mse layout (EDM_REFERENCE §6: 83,653,863 parameters, 248 tensors).
    full = VAEConfig.from_diffusers_config(SD_VAE_FT_MSE_CONFIG)
    assert full == VAEConfig()  # the defaults are sd-vae-ft-mse
    assert full.use_quant_conv and full.use_post_quant_conv and full.mid_block_add_attention
    shapes = sd_vae.state_shapes(full)
    assert len(shapes) == 248 and sd_vae.num_params(full) == 83_653_863
    enc = sum(math.prod(s) for k, s in shapes.items() if k.startswith(("encoder.", "quant_")))
    assert enc == 34_163_664 and full.downsample_factor == 8
    # Options: no mid-block attention (2 x 10 tensors), no quant convs (4).
    bare = VAEConfig(
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=16,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    assert len(sd_vae.state_shapes(bare)) == 124 - 20 - 4
    # The diffusers config written back reads to the same config.
    assert VAEConfig.from_diffusers_config(full.to_diffusers_config()) == full


def test_safetensors_read_bit_exact(fixture, vae):
    _, ref_state, _ = fixture
    config, state, manifest = vae_loader.read_diffusers_vae(TESTDATA / NAME)
    assert list(state) != [] and sorted(state) == sorted(ref_state)
    for key, ref in ref_state.items():
        assert state[key].dtype == ref.dtype == np.float32
        assert state[key].shape == ref.shape
        assert state[key].tobytes() == ref.tobytes(), key
    assert manifest["num_tensors"] == 124 and manifest["source_dtypes"] == ["float32"]
    assert manifest["source_format"] == "diffusers-safetensors"
    # Params: torch layouts -> HWIO / [in, out], values untouched.
    p = vae.params
    np.testing.assert_array_equal(
        p["encoder"]["conv_in"]["weight"], ref_state["encoder.conv_in.weight"].transpose(2, 3, 1, 0)
    )
    attn = p["decoder"]["mid_block"]["attentions"]["0"]
    np.testing.assert_array_equal(
        attn["to_out"]["0"]["weight"], ref_state["decoder.mid_block.attentions.0.to_out.0.weight"].T
    )
    np.testing.assert_array_equal(p["quant_conv"]["bias"], ref_state["quant_conv.bias"])
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(p))


def test_moments_and_decoded_match_fixture(fixture, vae):
    _, _, io = fixture
    moments = vae.moments(_nhwc(io["x"]))
    ref_m = _nhwc(io["moments"])
    assert moments.shape == ref_m.shape == (2, 16, 16, 8)
    err_m = _rel_err(moments, ref_m)
    decoded = sd_vae.decode(vae.params, _nhwc(io["z"]), vae.config)
    ref_d = _nhwc(io["decoded"])
    assert decoded.shape == ref_d.shape == (2, 16, 16, 3)
    err_d = _rel_err(decoded, ref_d)
    print(f"sd_vae_tiny max rel err: moments {err_m:.2e}, decoded {err_d:.2e}")
    # Pass criterion 1e-4·max|ref|; a faithful float32 port lands near 1e-6 (fixtures README).
    assert err_m <= 1e-5 and err_d <= 1e-5
    # The posterior: logvar clamped to [-30, 20], std = exp(logvar / 2).
    mean, std = sd_vae.mean_std(jnp.asarray(ref_m))
    np.testing.assert_array_equal(mean, ref_m[..., :4])
    np.testing.assert_allclose(std, np.exp(0.5 * np.clip(ref_m[..., 4:], -30, 20)), rtol=1e-6)
    big = sd_vae.mean_std(jnp.full((1, 1, 1, 8), 50.0, jnp.float32))[1]
    np.testing.assert_allclose(big, np.exp(10.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Layers against closed forms (blind spots of the whole-network tolerance)


def test_group_norm_eps_and_two_pass():
    rng = np.random.default_rng(0)
    # Variance ~1e-6 around a mean of 1: eps 1e-6 vs 1e-5, and the one-pass E[x²] - E[x]² (which
    # cancels in float32), both change the result by far more than the tolerance.
    x = (1.0 + 1e-3 * rng.standard_normal((2, 4, 4, 8))).astype(np.float32)
    p = {"weight": np.float32(1) + rng.standard_normal(8, np.float32), "bias": np.zeros(8, "f4")}
    got = np.asarray(sd_vae.group_norm(p, jnp.asarray(x), groups=4))
    xg = x.astype(np.float64).reshape(2, 4, 4, 4, 2)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    ref = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * p["weight"]
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max()
    wrong = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * p["weight"]
    assert np.abs(wrong - ref).max() > 0.1 * np.abs(ref).max()


def _np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Valid cross-correlation in float64: x [B, H, W, C] (already padded), w HWIO."""
    k = w.shape[0]
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return out + b


def test_downsample_and_upsample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    p = {"weight": rng.standard_normal((3, 3, 2, 3), np.float32), "bias": np.ones(3, "f4")}
    xd = x.astype(np.float64)
    # Downsample2D: zero-pad (left 0, right 1, top 0, bottom 1), 3x3 stride 2, no padding.
    got = np.asarray(sd_vae.downsample(p, jnp.asarray(x)))
    ref = _np_conv(np.pad(xd, ((0, 0), (0, 1), (0, 1), (0, 0))), p["weight"], p["bias"], 2)
    assert got.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    symmetric = _np_conv(np.pad(xd, ((0, 0), (1, 1), (1, 1), (0, 0))), p["weight"], p["bias"], 2)
    assert np.abs(symmetric - ref).max() > 0.5  # §12 #10: the padding matters
    # Upsample2D: nearest x2, then 3x3 with padding 1.
    got = np.asarray(sd_vae.upsample(p, jnp.asarray(x)))
    up = np.repeat(np.repeat(xd, 2, axis=1), 2, axis=2)
    ref = _np_conv(np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0))), p["weight"], p["bias"], 1)
    assert got.shape == (1, 12, 12, 3)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_attention_single_head():
    rng = np.random.default_rng(2)
    c = 8
    x = rng.standard_normal((2, 3, 3, c)).astype(np.float32)
    p = {"group_norm": {"weight": np.ones(c, "f4"), "bias": np.zeros(c, "f4")}}
    for name in ("to_q", "to_k", "to_v"):
        p[name] = {
            "weight": rng.standard_normal((c, c), np.float32),
            "bias": rng.standard_normal(c, np.float32),
        }
    p["to_out"] = {
        "0": {"weight": rng.standard_normal((c, c), np.float32), "bias": np.zeros(c, "f4")}
    }
    got = np.asarray(sd_vae.attention_block(p, jnp.asarray(x), groups=4))
    xd = x.astype(np.float64)
    xg = xd.reshape(2, 9, 4, 2)
    y = (
        (xg - xg.mean(axis=(1, 3), keepdims=True))
        / np.sqrt(xg.var(axis=(1, 3), keepdims=True) + 1e-6)
    ).reshape(2, 9, c)
    q, k, v = (y @ p[n]["weight"] + p[n]["bias"] for n in ("to_q", "to_k", "to_v"))
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(c)  # one head: scale 1/sqrt(C)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ref = xd + ((a @ v) @ p["to_out"]["0"]["weight"]).reshape(x.shape)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# Full-size architecture with random weights


def test_full_size_architecture_random_weights():
    cfg = VAEConfig()  # sd-vae-ft-mse
    shapes = sd_vae.param_shapes(cfg)
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    # Shapes at the VAE's sample size without allocating the weights.
    encode = functools.partial(sd_vae.encode_moments, cfg=cfg)
    m = jax.eval_shape(encode, abstract, jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
    assert m.shape == (1, 32, 32, 8)
    decode = functools.partial(sd_vae.decode, cfg=cfg)
    d = jax.eval_shape(decode, abstract, jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32))
    assert d.shape == (1, 256, 256, 3)
    # A real forward at 16x16 (latent 2x2) with random weights.
    params = sd_vae.init_params(jax.random.key(0), cfg)
    assert sum(np.size(a) for a in jax.tree.leaves(params)) == 83_653_863
    vae = sd_vae.VAE(params=params, config=cfg, manifest={})
    x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3), jnp.float32)
    z = vae.encode(x)
    assert z.shape == (1, 2, 2, 4) and vae.latent_shape((16, 16, 3)) == (2, 2, 4)
    y = vae.decode(z)
    assert y.shape == (1, 16, 16, 3)
    assert np.isfinite(np.asarray(z)).all() and np.isfinite(np.asarray(y)).all()
    assert float(jnp.std(y)) > 1e-3  # the random network does not collapse to a constant


# ------------------------------------------------------------------------------------------------
# EDM2's latent scaling (NVlabs/edm2 training/encoders.py, StabilityVAEEncoder)


def test_edm2_latent_scaling_float64_round_trip():
    s = sd_vae.EDM2_LATENT_SCALING
    raw_mean = np.array([5.81, 3.25, 0.12, -2.15])
    raw_std = np.array([4.17, 4.62, 3.71, 3.28])
    # The float32 constants stored in EDM2 pickles (EDM_REFERENCE §6 table) ...
    np.testing.assert_allclose(s.scale, [0.11990407, 0.10822511, 0.13477089, 0.15243903], rtol=1e-6)
    np.testing.assert_allclose(
        s.bias, [-0.69664264, -0.3517316, -0.01617251, 0.32774392], rtol=1e-6
    )
    # ... are exactly those of the tiny EDM2 fixture pickle's encoder record.
    record = read_checkpoint(TESTDATA / "edm2_tiny_cond.pkl").extras["encoder"]
    from_pickle = sd_vae.LatentScaling.from_encoder_record(record)
    assert from_pickle == s
    np.testing.assert_array_equal(np.float32(s.scale), record["scale"])
    np.testing.assert_array_equal(np.float32(s.bias), record["bias"])
    # encode: z = (z_raw - raw_mean)·final_std/raw_std + final_mean, against float64 NumPy.
    rng = np.random.default_rng(3)
    z_raw = (raw_mean + raw_std * rng.standard_normal((2, 5, 5, 4))).astype(np.float32)
    ref = (z_raw.astype(np.float64) - raw_mean) * (0.5 / raw_std) + 0.0
    final = np.asarray(s.to_final(jnp.asarray(z_raw)))
    assert final.dtype == np.float32
    assert np.abs(final - ref).max() <= 1e-6 * np.abs(ref).max()
    assert abs(ref.std() - 0.5) < 0.1  # final latents have std ≈ final_std
    # decode inverts it: back to the raw latents to float32 rounding.
    back = np.asarray(s.to_raw(jnp.asarray(final)))
    assert np.abs(back - z_raw.astype(np.float64)).max() <= 1e-6 * np.abs(z_raw).max()
    # Other statistics; channel mismatch refused.
    other = sd_vae.LatentScaling.from_statistics(
        [1.0, 2.0], [2.0, 4.0], final_mean=1.0, final_std=1.0
    )
    np.testing.assert_allclose(other.to_final(jnp.array([[3.0, 6.0]], jnp.float32)), [[2.0, 2.0]])
    with pytest.raises(VAEError, match="channels"):
        s.to_final(jnp.zeros((1, 2, 2, 3), jnp.float32))
    with pytest.raises(VAEError, match="StabilityVAEEncoder"):
        sd_vae.LatentScaling.from_encoder_record({"class_name": "StandardRGBEncoder"})


def test_vae_encode_decode_with_scaling(fixture, vae):
    _, _, io = fixture
    s = vae.scaling
    moments = _nhwc(io["moments"]).astype(np.float64)
    mean = moments[..., :4]
    std = np.exp(0.5 * np.clip(moments[..., 4:], -30, 20))
    scale, bias = np.float32(s.scale).astype(np.float64), np.float32(s.bias).astype(np.float64)
    # The posterior mean ...
    z = np.asarray(vae.encode(_nhwc(io["x"])))
    ref = mean * scale + bias
    assert np.abs(z - ref).max() <= 1e-5 * np.abs(ref).max()
    # ... or a sample mean + std·ε with ε = normal(key) (StabilityVAEEncoder.encode_latents).
    key = jax.random.key(7)
    eps = np.asarray(jax.random.normal(key, mean.shape, jnp.float32)).astype(np.float64)
    sampled = np.asarray(vae.encode(_nhwc(io["x"]), key))
    ref = (mean + std * eps) * scale + bias
    assert np.abs(sampled - ref).max() <= 1e-5 * np.abs(ref).max()
    # decode(final) = VAE decode of the raw latents (z - bias) / scale.
    final = np.asarray(s.to_final(jnp.asarray(_nhwc(io["z"]))))
    decoded = np.asarray(vae.decode(final))
    assert _rel_err(decoded, _nhwc(io["decoded"])) <= 1e-5
    # EDM2's pixel conventions: x/255 in, clamp(0, 1)·255 truncated to uint8 out.
    u8 = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_allclose(sd_vae.pixels_from_uint8(u8), u8 / 255.0, rtol=1e-7)
    out = sd_vae.uint8_from_pixels(jnp.array([-0.2, 0.0, 0.999, 254.9 / 255, 1.0, 1.5]))
    np.testing.assert_array_equal(out, [0, 0, 254, 254, 255, 255])


# ------------------------------------------------------------------------------------------------
# Porting


def test_port_round_trip(tmp_path, vae, capsys):
    dst = tmp_path / "ported"
    assert port.main([str(TESTDATA / NAME), str(dst)]) == 0
    assert "AutoencoderKL" in capsys.readouterr().out
    manifest = json.loads((dst / "manifest.json").read_text())
    weights = (TESTDATA / NAME / WEIGHTS).read_bytes()
    assert manifest["sha256"] == hashlib.sha256(weights).hexdigest()
    assert manifest["class_name"] == "AutoencoderKL" and manifest["num_params"] == 658_375
    assert manifest["init_kwargs"]["block_out_channels"] == [32, 64]
    assert manifest["ported_param_count"] == 658_375 and manifest["downsample_factor"] == 2
    assert manifest["diffusers_config"]["_diffusers_version"] == "0.42.1"
    ported = vae_loader.load_vae(dst)
    assert ported.config == vae.config and ported.scaling == vae.scaling
    # Bit-identical parameters and outputs after the Orbax round trip.
    jax.tree.map(np.testing.assert_array_equal, ported.params, vae.params)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(ported.moments(x), vae.moments(x))
    # Refuses to overwrite; the weights file's path ports its folder; load_backbone declines.
    assert port.main([str(TESTDATA / NAME), str(dst)]) == 1
    assert "already holds" in capsys.readouterr().err
    port.port(str(TESTDATA / NAME / WEIGHTS), str(tmp_path / "via_file"))
    assert (
        json.loads((tmp_path / "via_file" / "manifest.json").read_text())["params_sha256"]
        == (manifest["params_sha256"])
    )
    with pytest.raises(BackboneError, match="AutoencoderKL"):
        load_backbone(dst)
    # The latent scaling travels in the manifest (EDM2's by default, or the VAE's own).
    assert manifest["latent_scaling"] == sd_vae.EDM2_LATENT_SCALING.to_json()
    custom = sd_vae.LatentScaling.from_statistics([1, 2, 3, 4], [2, 4, 8, 16], 0.5, 1.0)
    vae_loader.save_vae(dataclasses.replace(vae, scaling=custom), tmp_path / "custom")
    assert vae_loader.load_vae(tmp_path / "custom").scaling == custom
    with pytest.raises(VAEError, match="3 channels"):
        sd_vae.VAE(vae.params, vae.config, {}, sd_vae.LatentScaling.identity(3))


def test_legacy_attention_names_load_identically(fixture, tmp_path, vae):
    """Checkpoints of diffusers < 0.15 (sd-vae-ft-mse) name the attention query/key/value/
    proj_attn, sometimes as [C, C, 1, 1] convs."""
    _, state, _ = fixture
    legacy = {}
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for key, value in state.items():
        for new, old in names.items():
            if f".attentions.0.{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                if key.endswith("weight") and old in ("query", "value"):
                    value = value[:, :, None, None]
        legacy[key] = value
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(TESTDATA / NAME / "config.json", folder)
    (folder / WEIGHTS).write_bytes(w.safetensors_bytes(legacy, {"format": "pt"}))
    old = vae_loader.vae_from_folder(folder)
    assert old.manifest["legacy_attention_keys"] == 16
    jax.tree.map(np.testing.assert_array_equal, old.params, vae.params)


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors before anything compiles


def _vae_folder(tmp_path, name, *, config=None, state=None):
    folder = tmp_path / name
    folder.mkdir()
    cfg = json.loads((TESTDATA / NAME / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg if config is None else config(cfg)))
    if state is None:
        shutil.copy(TESTDATA / NAME / WEIGHTS, folder)
    else:
        (folder / WEIGHTS).write_bytes(w.safetensors_bytes(state, {"format": "pt"}))
    return folder


def test_bad_vae_folders(fixture, tmp_path):
    _, state, _ = fixture
    # A missing tensor: the weights file and the key are named.
    partial = {k: v for k, v in state.items() if k != "decoder.mid_block.attentions.0.to_k.bias"}
    folder = _vae_folder(tmp_path, "missing", state=partial)
    with pytest.raises(VAEError, match=r"diffusion_pytorch_model.safetensors.*missing 1 key.*to_k"):
        vae_loader.load_vae(folder)
    # A wrong shape.
    wrong = dict(state, **{"quant_conv.bias": np.zeros(7, np.float32)})
    folder = _vae_folder(tmp_path, "shape", state=wrong)
    with pytest.raises(VAEError, match=r"quant_conv.bias has shape \(7,\), expected \(8,\)"):
        vae_loader.load_vae(folder)
    # A config that does not describe the weights.
    folder = _vae_folder(tmp_path, "layers", config=lambda c: dict(c, layers_per_block=2))
    with pytest.raises(VAEError, match="do not fit the config's architecture.*missing"):
        vae_loader.load_vae(folder)
    # Other architectures, refused from config.json before the weights are read.
    others = {
        "class": (lambda c: dict(c, _class_name="UNet2DConditionModel"), "another architecture"),
        "blocks": (
            lambda c: dict(c, down_block_types=["AttnDownEncoderBlock2D"] * 2),
            "down_block_types",
        ),
        "act": (lambda c: dict(c, act_fn="gelu"), "act_fn"),
        "option": (lambda c: dict(c, norm_type="spatial"), "unsupported AutoencoderKL option"),
        "groups": (lambda c: dict(c, norm_num_groups=24), "divisible by norm_num_groups"),
        "flag": (lambda c: dict(c, use_quant_conv="no"), "use_quant_conv must be true or false"),
        "required": (
            lambda c: {k: v for k, v in c.items() if k != "layers_per_block"},
            "required key",
        ),
    }
    for name, (edit, message) in others.items():
        folder = _vae_folder(tmp_path, name, config=edit, state={})
        with pytest.raises(VAEError, match=message) as info:
            vae_loader.load_vae(folder)
        assert "config.json" in str(info.value), name
    # Missing files, bad JSON, no folder.
    folder = _vae_folder(tmp_path, "noweights")
    (folder / WEIGHTS).unlink()
    with pytest.raises(VAEError, match="no weights file"):
        vae_loader.load_vae(folder)
    for text in ("{not json", "[" * 100_000):  # the second: too deep for Python's json
        (folder / "config.json").write_text(text)
        with pytest.raises(VAEError, match="config.json: not valid JSON"):
            vae_loader.load_vae(folder)
    (folder / "config.json").unlink()
    with pytest.raises(VAEError, match="config.json: no such file"):
        vae_loader.load_vae(folder)
    with pytest.raises(VAEError, match="no such folder"):
        vae_loader.load_vae(tmp_path / "nope")
    assert port.main([str(folder), str(tmp_path / "out")]) == 1


def test_bad_ported_folders(tmp_path):
    dst = tmp_path / "ported"
    port.port(str(TESTDATA / NAME), str(dst))
    manifest = json.loads((dst / "manifest.json").read_text())
    broken = tmp_path / "broken"
    shutil.copytree(dst, broken)
    (broken / "manifest.json").write_text(json.dumps(dict(manifest, params_sha256="0" * 64)))
    with pytest.raises(VAEError, match="params_sha256"):
        vae_loader.load_vae(broken)
    other = dict(manifest, init_kwargs=dict(manifest["init_kwargs"], block_out_channels=[32, 32]))
    (broken / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(VAEError, match="cannot restore parameters"):
        vae_loader.load_vae(broken)
    (broken / "manifest.json").write_text(json.dumps(dict(manifest, class_name="Precond")))
    with pytest.raises(VAEError, match="load_backbone"):
        vae_loader.load_vae(broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(VAEError, match="corrupt manifest"):
        vae_loader.load_vae(broken)


def test_bad_images_and_latents(vae):
    cfg = vae.config
    with pytest.raises(VAEError, match="not a multiple of the VAE's downsampling factor 2"):
        vae.encode(np.zeros((1, 31, 32, 3), np.float32))
    with pytest.raises(VAEError, match="NHWC"):
        vae.encode(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(VAEError, match=r"factor 8.*Resize, crop or pad them to a multiple of 8"):
        sd_vae.check_images(np.zeros((1, 60, 64, 3)), VAEConfig())
    with pytest.raises(VAEError, match="latents have shape"):
        sd_vae.decode(vae.params, np.zeros((1, 8, 8, 3), np.float32), cfg)
    with pytest.raises(VAEError, match="channels"):
        vae.decode(np.zeros((1, 8, 8, 8), np.float32))
    with pytest.raises(VAEError, match="do not fit the VAE config"):
        sd_vae.encode_moments({}, np.zeros((1, 4, 4, 3), np.float32), cfg)
    full = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        sd_vae.param_shapes(VAEConfig()),
        is_leaf=lambda s: isinstance(s, tuple),
    )
    with pytest.raises(VAEError, match="is missing|has shape"):
        sd_vae.decode(full, jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32), cfg)
