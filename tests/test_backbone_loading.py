"""load_backbone / port: NVIDIA pickles -> same D as the fixture; Orbax round trip; bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aid_jax
from aid_jax import port, sampling
from aid_jax.backbones import BackboneError, load_backbone, loader


def _io(testdata, name):
    z = np.load(testdata / f"{name}.npz")
    labels = z["io/labels"] if "io/labels" in z.files else None
    return z["io/x"].transpose(0, 2, 3, 1), z["io/sigma"], labels, z["io/D"].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["edm_ddpmpp_tiny", "edm2_tiny_cond"])
def test_pickle_gives_fixture_denoiser(testdata, name):
    backbone = load_backbone(testdata / f"{name}.pkl")
    x, sigma, labels, ref = _io(testdata, name)
    d = np.asarray(backbone.denoise(x, sigma, labels))
    assert np.abs(d - ref).max() <= 1e-5 * np.abs(ref).max()
    meta = json.loads((testdata / f"{name}.json").read_text())
    assert backbone.manifest["num_params"] == meta["num_params"]
    assert backbone.manifest["num_tensors"] == len(meta["state_keys"])
    expected_dtype = "float16" if name.startswith("edm2") else "float32"
    assert backbone.manifest["source_dtypes"] == [expected_dtype]


@pytest.mark.parametrize("name", ["edm_ddpmpp_tiny", "edm2_tiny_cond"])
def test_port_round_trip(testdata, tmp_path, name, capsys):
    dst = tmp_path / "ported"
    assert port.main([str(testdata / f"{name}.pkl"), str(dst)]) == 0
    assert "ported" in capsys.readouterr().out
    manifest = json.loads((dst / "manifest.json").read_text())
    for field in ("source_name", "sha256", "init_kwargs", "num_params", "source_dtypes"):
        assert field in manifest
    import hashlib

    assert manifest["sha256"] == hashlib.sha256((testdata / f"{name}.pkl").read_bytes()).hexdigest()
    direct = load_backbone(testdata / f"{name}.pkl")
    ported = aid_jax.load_backbone(dst)
    assert ported.config == direct.config
    # Bit-identical parameters after the Orbax round trip.
    jax.tree.map(np.testing.assert_array_equal, ported.params, direct.params)
    x, sigma, labels, _ = _io(testdata, name)
    d_ported = ported.denoise(x, sigma, labels)
    np.testing.assert_array_equal(d_ported, direct.denoise(x, sigma, labels))
    # Porting again into the same folder is refused rather than silently overwriting.
    assert port.main([str(testdata / f"{name}.pkl"), str(dst)]) == 1
    assert "already holds" in capsys.readouterr().err


def test_ported_folder_errors(testdata, tmp_path):
    dst = tmp_path / "ported"
    port.port(str(testdata / "edm_ddpmpp_tiny.pkl"), str(dst))
    broken = tmp_path / "broken"
    shutil.copytree(dst, broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(BackboneError, match="corrupt manifest"):
        load_backbone(broken)
    shutil.rmtree(broken / "params")
    (broken / "manifest.json").write_text((dst / "manifest.json").read_text())
    with pytest.raises(BackboneError, match="params"):
        load_backbone(broken)
    with pytest.raises(BackboneError, match="not a ported backbone"):
        load_backbone(tmp_path)
    with pytest.raises(BackboneError, match="no such file"):
        load_backbone(tmp_path / "nope.pkl")
    # A manifest whose architecture does not match the stored params.
    other = tmp_path / "other"
    shutil.copytree(dst, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["init_kwargs"]["model_channels"] = 32
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackboneError, match=r"enc\.16x16_conv\.weight has shape|expected"):
        load_backbone(other)


def test_state_dict_mismatches_name_the_key(testdata):
    z = np.load(testdata / "edm_ddpmpp_tiny.npz")
    meta = json.loads((testdata / "edm_ddpmpp_tiny.json").read_text())
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    state = {k[6:]: z[k] for k in z.files if k.startswith("state/")}
    missing = dict(state)
    del missing["model.enc.16x16_conv.weight"]
    with pytest.raises(BackboneError, match=r"missing 1 key.*16x16_conv\.weight"):
        loader.params_from_state(missing, config, source="f.pkl")
    extra = dict(state, **{"model.bogus.weight": np.zeros(3, np.float32)})
    with pytest.raises(BackboneError, match=r"unexpected 1 key.*bogus"):
        loader.params_from_state(extra, config, source="f.pkl")
    bad = dict(state)
    bad["model.map_layer0.bias"] = np.zeros(7, np.float32)
    with pytest.raises(BackboneError, match=r"map_layer0\.bias has shape \(7,\), expected \(64,\)"):
        loader.params_from_state(bad, config, source="f.pkl")
    wrong_filter = dict(state)
    wrong_filter["model.enc.8x8_down.conv0.resample_filter"] = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(BackboneError, match="resample_filter"):
        loader.params_from_state(wrong_filter, config, source="f.pkl")


def test_unknown_architecture_errors():
    with pytest.raises(BackboneError, match="unknown architecture 'iDDPMPrecond'"):
        loader.config_from_checkpoint("iDDPMPrecond", {"img_resolution": 8, "img_channels": 3})
    with pytest.raises(BackboneError, match="model_type='Transformer'"):
        loader.config_from_checkpoint(
            "EDMPrecond", {"img_resolution": 8, "img_channels": 3, "model_type": "Transformer"}
        )
    with pytest.raises(BackboneError, match="does not accept argument"):
        loader.config_from_checkpoint(
            "EDMPrecond",
            {"img_resolution": 8, "img_channels": 3, "model_type": "SongUNet", "wings": 2},
        )
    with pytest.raises(BackboneError, match="does not record its architecture"):
        loader.config_from_checkpoint(None, None, source="sd.safetensors")


def test_input_checks(testdata):
    backbone = load_backbone(testdata / "edm_ddpmpp_tiny.pkl")
    with pytest.raises(BackboneError, match=r"expects \[B, 16, 16, 3\]"):
        backbone.denoise(np.zeros((1, 32, 32, 3), np.float32), jnp.ones(1))
    with pytest.raises(BackboneError, match=r"expects \[B, 16, 16, 3\]"):
        backbone.denoise(np.zeros((1, 3, 16, 16), np.float32), jnp.ones(1))  # NCHW by mistake
    with pytest.raises(BackboneError, match="unconditional"):
        backbone.denoise(np.zeros((1, 16, 16, 3), np.float32), jnp.ones(1), jnp.ones((1, 10)))


def test_sampler_matches_edm_fixture(testdata):
    """EDM Heun (Alg. 1, last step Euler) on the edm_ddpmpp_tiny network, 4 and 8 steps."""
    backbone = load_backbone(testdata / "edm_ddpmpp_tiny.pkl")
    z = np.load(testdata / "edm_sampler_tiny.npz")
    latents = z["latents"].transpose(0, 2, 3, 1)
    for steps in (4, 8):
        cfg = sampling.SamplerConfig(solver="heun", num_steps=steps, sigma_min=0.002, sigma_max=80)
        result = sampling.sample(backbone.denoise_fn(), latents, config=cfg)
        ref = z[f"heun_{steps}"].transpose(0, 2, 3, 1)
        assert result.nfe == 2 * steps - 1
        err = np.abs(np.asarray(result.x, np.float64) - ref).max()
        assert err <= 1e-4 * np.abs(ref).max(), (steps, err)


@pytest.mark.parametrize("name", ["edm_ddpmpp_tiny", "edm_adm_tiny_cond", "edm2_tiny_cond"])
def test_bfloat16_compute_is_close_and_returns_float32(testdata, name):
    z = np.load(testdata / f"{name}.npz")
    meta = json.loads((testdata / f"{name}.json").read_text())
    config = loader.config_from_checkpoint(meta["precond"], meta["init_kwargs"])
    params = loader.params_from_state({k[6:]: z[k] for k in z.files if k[:6] == "state/"}, config)
    x, sigma, labels, ref = _io(testdata, name)
    fn = jax.jit(
        lambda p, x, s, l: loader.denoise(p, x, s, l, config=config, compute_dtype=jnp.bfloat16)
    )
    d = fn(params, x, sigma, labels)
    assert d.dtype == jnp.float32
    err = float(np.abs(np.asarray(d) - ref).max() / np.abs(ref).max())
    # bfloat16 has an 8-bit mantissa: errors of ~1e-2 relative are expected, not 1e-5.
    assert 1e-6 < err < 5e-2, err


def test_denoise_does_not_retrace(testdata):
    backbone = load_backbone(testdata / "edm_ddpmpp_tiny.pkl")
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (2, 16, 16, 3))
        backbone.denoise(x, jnp.full((2,), 0.5 + seed))
    assert backbone._denoise._cache_size() == 1
