"""Tests for aid_jax.backbones.checkpoint_reader (torch-free; no torch import anywhere).

Real files: the NVIDIA-format fixtures (tests/testdata/*.pkl, made with NVIDIA's code) and files
written by torch 2.13 itself (tests/testdata/torch_saved/, see its README). Synthetic files come
from the project's own writer, tests/ckpt_writer.py. Hostile inputs are in
test_malicious_checkpoints.py.
"""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
import pickle
import struct
import zipfile

import ckpt_writer as w
import ml_dtypes
import numpy as np
import pytest

from aid_jax.backbones.checkpoint_reader import (
    CheckpointError,
    LoadedCheckpoint,
    UnsafeCheckpointError,
    read_checkpoint,
)

TESTDATA = pathlib.Path(__file__).parent / "testdata"
TORCH_SAVED = TESTDATA / "torch_saved"
FIXTURES = {"edm_ddpmpp_tiny": "EDMPrecond", "edm2_tiny_cond": "Precond"}
BF16 = np.dtype(ml_dtypes.bfloat16)


def _npz_state(path: pathlib.Path) -> collections.OrderedDict:
    with np.load(path) as z:
        return collections.OrderedDict(
            (k[len("state/") :], z[k]) for k in z.files if k.startswith("state/")
        )


def _assert_bit_exact(got: collections.OrderedDict, ref: collections.OrderedDict) -> None:
    assert list(got) == list(ref)  # same keys, same (torch) order
    for k, r in ref.items():
        g = got[k]
        assert isinstance(g, np.ndarray), k
        assert g.dtype == r.dtype and g.shape == r.shape, (k, g.dtype, r.dtype, g.shape, r.shape)
        assert g.flags.c_contiguous, k
        assert g.tobytes() == np.ascontiguousarray(r).tobytes(), k


def _write(tmp_path: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------------------------
# NVIDIA fixtures (made with NVIDIA's own code)


@pytest.mark.parametrize("name", FIXTURES)
def test_nvidia_fixture_bit_exact(name):
    path = TESTDATA / f"{name}.pkl"
    ck = read_checkpoint(path)
    meta = json.loads((TESTDATA / f"{name}.json").read_text())
    ref = _npz_state(TESTDATA / f"{name}.npz")
    assert ck.format == "nvidia-pickle"
    assert ck.path == str(path)
    assert ck.class_name == FIXTURES[name]
    assert ck.init_kwargs == meta["init_kwargs"]
    assert list(ck.state) == meta["state_keys"]
    _assert_bit_exact(ck.state, ref)
    assert ck.extras["network_key"] == "ema"
    assert ck.extras["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ck.extras["modules"][""]["class_name"] == FIXTURES[name]


def test_edm_fixture_extras():
    ck = read_checkpoint(TESTDATA / "edm_ddpmpp_tiny.pkl")
    assert all(v.dtype == np.float32 for v in ck.state.values())
    loss = ck.extras["loss_fn"]
    assert loss["class_name"] == "EDMLoss"
    assert (loss["P_mean"], loss["P_std"], loss["sigma_data"]) == (-1.2, 1.2, 0.5)
    assert ck.extras["augment_pipe"]["class_name"] == "AugmentPipe"
    assert ck.extras["augment_pipe"]["p"] == 0.12
    assert ck.extras["dataset_kwargs"]["resolution"] == 16
    # Class attributes of sub-modules are exposed for config checks (plain Python values).
    mods = ck.extras["modules"]
    assert mods[""]["sigma_data"] == 0.5
    skip_scales = [m["skip_scale"] for m in mods.values() if "skip_scale" in m]
    assert skip_scales and all(type(s) is float for s in skip_scales)
    assert mods["model.enc"]["class_name"] == "ModuleDict"


def test_edm2_fixture_extras():
    ck = read_checkpoint(TESTDATA / "edm2_tiny_cond.pkl")
    assert all(v.dtype == np.float16 for v in ck.state.values())  # stored dtype is kept
    loss = ck.extras["loss_fn"]
    assert loss["class_name"] == "EDM2Loss"
    assert (loss["P_mean"], loss["P_std"]) == (-0.4, 1.0)
    enc = ck.extras["encoder"]
    assert enc["class_name"] == "StabilityVAEEncoder"
    assert enc["vae_name"] == "stabilityai/sd-vae-ft-mse"
    assert enc["scale"].dtype == np.float32 and enc["bias"].dtype == np.float32
    # EDM_REFERENCE §6 table (8 significant digits).
    scale = [0.11990407, 0.10822511, 0.13477089, 0.15243903]
    bias = [-0.69664264, -0.3517316, -0.01617251, 0.32774392]
    np.testing.assert_allclose(enc["scale"], scale, rtol=1e-6)
    np.testing.assert_allclose(enc["bias"], bias, rtol=1e-6)
    assert ck.extras["dataset_kwargs"]["use_labels"] is True
    assert list(ck.state)[-3:] == [
        "logvar_fourier.freqs",
        "logvar_fourier.phases",
        "logvar_linear.weight",
    ]


def test_returned_arrays_are_private_copies():
    a = read_checkpoint(TESTDATA / "edm_ddpmpp_tiny.pkl")
    b = read_checkpoint(TESTDATA / "edm_ddpmpp_tiny.pkl")
    k = next(iter(a.state))
    a.state[k][...] = 0  # writeable, and not shared with the file buffer or another load
    assert np.any(b.state[k] != 0)
    assert "tensors=197" in repr(a) and len(repr(a)) < 300


def test_network_key_selects_and_missing_key_is_explained(tmp_path):
    ck = read_checkpoint(TESTDATA / "edm2_tiny_cond.pkl", network_key="ema")
    assert ck.class_name == "Precond"
    with pytest.raises(CheckpointError, match="'net'") as e:
        read_checkpoint(TESTDATA / "edm2_tiny_cond.pkl", network_key="net")
    assert "edm2_tiny_cond.pkl" in str(e.value) and "ema" in str(e.value)


def test_format_is_sniffed_not_taken_from_extension(tmp_path):
    p = _write(tmp_path, "weights.safetensors", (TESTDATA / "edm_ddpmpp_tiny.pkl").read_bytes())
    assert read_checkpoint(p).format == "nvidia-pickle"
    st = w.safetensors_bytes({"x": np.arange(3, dtype=np.float32)})
    assert read_checkpoint(_write(tmp_path, "model.pkl", st)).format == "safetensors"


# --------------------------------------------------------------------------------------------
# Synthetic NVIDIA pickles from the project's writer


def _synthetic_network():
    """A module tree exercising every tensor layout; returns (network, expected state)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    half = rng.standard_normal(20).astype(np.float16)
    shared = w.Storage(half)
    bf = rng.standard_normal(5).astype(BF16)
    w64 = rng.standard_normal((2, 3, 1, 1))
    lin_w = rng.standard_normal((3, 2)).astype(np.float32)
    tied = w.Tensor.of(rng.standard_normal(4).astype(np.float32))
    conv = w.Module(
        "Conv2d",
        params={"weight": w.Tensor.of(w64, parameter=True), "bias": None},
        buffers={
            "resample_filter": w.Tensor.of(np.full((1, 1, 2, 2), 0.25, np.float32)),
            "scratch": w.Tensor.of(np.ones(3, np.float32)),  # non-persistent: not in state
            "unset": None,
        },
        non_persistent={"scratch"},
        attrs={"up": False, "down": True, "eps": 1e-6},
    )
    lin = w.Module(
        "Linear",
        params={"weight": w.Tensor.of(lin_w, parameter=True), "bias": tied},
        buffers={
            "mask": w.Tensor.of(np.array([True, False, True])),
            "count": w.Tensor.of(np.array(7, np.int64)),
        },
        attrs={"in_features": 2, "skip_scale": np.float64(0.5) ** 0.5},
    )
    enc = w.container("ModuleDict", {"16x16_conv": conv, "16x16_lin": lin})
    net = w.Module(
        "EDMPrecond",
        params={
            "transposed": w.Tensor(w.Storage(base), 0, (6, 4), (1, 6), parameter=True),
            "offset_view": w.Tensor(shared, 5, (3, 4), (4, 1)),
        },
        buffers={"shared_head": w.Tensor(shared, 0, (8,), (1,)), "bf16": w.Tensor.of(bf)},
        children={"model": w.Module("SongUNet", children={"enc": enc}), "absent": None},
        attrs={"sigma_data": 0.5, "label_dim": 0},
        init_kwargs={"img_resolution": 16, "channel_mult": (1, 2), "dropout": np.float64(0.1)},
    )
    expected = collections.OrderedDict(
        [
            ("transposed", base.T),
            ("offset_view", half[5:17].reshape(3, 4)),
            ("shared_head", half[:8]),
            ("bf16", bf),
            ("model.enc.16x16_conv.weight", w64),
            ("model.enc.16x16_conv.resample_filter", np.full((1, 1, 2, 2), 0.25, np.float32)),
            ("model.enc.16x16_lin.weight", lin_w),
            ("model.enc.16x16_lin.bias", tied.storage.data),
            ("model.enc.16x16_lin.mask", np.array([True, False, True])),
            ("model.enc.16x16_lin.count", np.array(7, np.int64)),
        ]
    )
    return net, expected


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_synthetic_nvidia_pickle_round_trip(tmp_path, protocol):
    net, expected = _synthetic_network()
    top = w.EasyDict(
        ema=net,
        loss_fn=w.Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "_init_kwargs": {}}),
        encoder=w.Persistent("StabilityVAEEncoder", {"scale": np.arange(4, dtype=np.float32)}),
        dataset_kwargs={"resolution": 16},
    )
    p = _write(tmp_path, "net.pkl", w.dumps(top, protocol))
    ck = read_checkpoint(p)
    assert ck.format == "nvidia-pickle" and ck.class_name == "EDMPrecond"
    _assert_bit_exact(ck.state, expected)
    assert ck.init_kwargs == {"img_resolution": 16, "channel_mult": [1, 2], "dropout": 0.1}
    assert ck.extras["loss_fn"] == {
        "class_name": "EDMLoss",
        "P_mean": -1.2,
        "P_std": 1.2,
        "init_kwargs": {},
    }
    np.testing.assert_array_equal(ck.extras["encoder"]["scale"], np.arange(4, dtype=np.float32))
    assert ck.extras["dataset_kwargs"] == {"resolution": 16}
    mods = ck.extras["modules"]
    assert mods["model.enc.16x16_conv"] == {
        "class_name": "Conv2d",
        "up": False,
        "down": True,
        "eps": 1e-6,
    }
    assert mods["model.enc.16x16_lin"]["skip_scale"] == 0.5**0.5
    # The same tensor object under one key is materialised once.
    assert ck.state["model.enc.16x16_lin.bias"].dtype == np.float32


def test_synthetic_plain_dict_top_and_bare_network(tmp_path):
    net, expected = _synthetic_network()
    ck = read_checkpoint(_write(tmp_path, "a.pkl", w.dumps({"net": net})), network_key="net")
    _assert_bit_exact(ck.state, expected)
    ck = read_checkpoint(_write(tmp_path, "b.pkl", w.dumps(net)))  # the network on its own
    _assert_bit_exact(ck.state, expected)


@pytest.mark.parametrize("protocol,numpy1_names", [(2, False), (4, False), (5, False), (2, True)])
def test_numpy_values_in_extras(tmp_path, protocol, numpy1_names):
    values = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 2), np.float16),
        "f32_scalar": np.float32(0.25),
        "i64_scalar": np.int64(-3),
        "tuple": (1, "a", None, 2.5, b"raw", b""),
        "set": {3},
    }
    data = w.dumps({"ema": _synthetic_network()[0], "values": values}, protocol)
    if protocol == 2:  # bytes and sets take the _codecs.encode / builtins.set globals here
        assert b"c_codecs\nencode\n" in data and b"set\n" in data
    if numpy1_names:  # numpy 1.x wrote numpy.core.*; protocol-2 GLOBAL lines can be renamed
        data = data.replace(b"numpy._core.", b"numpy.core.")
        assert b"cnumpy.core.multiarray\n" in data
    got = read_checkpoint(_write(tmp_path, "v.pkl", data)).extras["values"]
    for k in ("f32", "fortran", "big_endian", "bool", "empty"):
        assert got[k].dtype == values[k].dtype and got[k].flags.c_contiguous, k
        np.testing.assert_array_equal(got[k], values[k])
    assert got["f32_scalar"] == 0.25 and type(got["f32_scalar"]) is float
    assert got["i64_scalar"] == -3 and type(got["i64_scalar"]) is int
    assert got["tuple"] == [1, "a", None, 2.5, b"raw", b""]
    assert got["set"] == [3]


def test_shared_tensor_object_under_two_keys(tmp_path):
    t = w.Tensor.of(np.arange(6, dtype=np.float32).reshape(2, 3))
    a = w.Module("Linear", params={"weight": t})
    b = w.Module("Linear", params={"weight": t})
    net = w.Module("Net", children={"a": a, "b": b})
    ck = read_checkpoint(_write(tmp_path, "tied.pkl", w.dumps({"ema": net})))
    assert list(ck.state) == ["a.weight", "b.weight"]
    assert ck.init_kwargs is None  # no _init_kwargs in this synthetic network
    np.testing.assert_array_equal(ck.state["a.weight"], ck.state["b.weight"])


# --------------------------------------------------------------------------------------------
# torch.save zip / legacy files and safetensors from the writer


def _synthetic_state_dict():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 6)).astype(np.float32)
    half = np.arange(24, dtype=np.float16)
    shared = w.Storage(half)
    bf = rng.standard_normal(7).astype(BF16)
    sd = collections.OrderedDict(
        [
            ("conv.weight", w.Tensor.of(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))),
            ("conv.bias", w.Tensor.of(rng.standard_normal(4).astype(np.float32), parameter=True)),
            ("bf16", w.Tensor.of(bf)),
            ("transposed", w.Tensor(w.Storage(base), 0, (6, 5), (1, 6))),
            ("offset_view", w.Tensor(shared, 5, (3, 4), (4, 1))),
            ("shared_a", w.Tensor(shared, 0, (8,), (1,))),
            ("scalar", w.Tensor.of(np.array(2.5))),
            ("steps", w.Tensor.of(np.array(3, np.int64))),
            ("empty", w.Tensor.of(np.zeros((0, 3), np.float32))),
        ]
    )
    expected = collections.OrderedDict(
        [
            ("conv.weight", sd["conv.weight"].storage.data.reshape(4, 3, 3, 3)),
            ("conv.bias", sd["conv.bias"].storage.data),
            ("bf16", bf),
            ("transposed", base.T),
            ("offset_view", half[5:17].reshape(3, 4)),
            ("shared_a", half[:8]),
            ("scalar", np.array(2.5)),
            ("steps", np.array(3, np.int64)),
            ("empty", np.zeros((0, 3), np.float32)),
        ]
    )
    return sd, expected


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("archive", ["archive", "my_model"])
def test_torch_zip_round_trip(tmp_path, compression, archive):
    sd, expected = _synthetic_state_dict()
    data = w.torch_zip_bytes(sd, archive=archive, compression=compression)
    ck = read_checkpoint(_write(tmp_path, "m.pt", data))
    assert ck.format == "torch-zip" and ck.class_name is None and ck.init_kwargs is None
    _assert_bit_exact(ck.state, expected)
    assert ck.extras["archive_name"] == archive


@pytest.mark.parametrize("key", ["state_dict", "ema", "model", "net"])
def test_torch_zip_nested_state_dict(tmp_path, key):
    sd, expected = _synthetic_state_dict()
    top = {key: sd, "epoch": 12, "optimizer": {"m": w.Tensor.of(np.ones(2, np.float32))}}
    ck = read_checkpoint(_write(tmp_path, "m.pt", w.torch_zip_bytes(top)))
    _assert_bit_exact(ck.state, expected)
    assert ck.extras["state_dict_key"] == key
    assert ck.extras["epoch"] == 12
    assert ck.extras["skipped_keys"] == ["optimizer"]  # tensors outside the state dict


def test_torch_legacy_round_trip(tmp_path):
    sd, expected = _synthetic_state_dict()
    ck = read_checkpoint(_write(tmp_path, "m.pth", w.torch_legacy_bytes(sd)))
    assert ck.format == "torch-legacy"
    _assert_bit_exact(ck.state, expected)
    ck = read_checkpoint(_write(tmp_path, "n.pth", w.torch_legacy_bytes({"state_dict": sd})))
    _assert_bit_exact(ck.state, expected)


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {
        "f64": rng.standard_normal((2, 3)),
        "f32": rng.standard_normal((3, 1, 2)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "bf16": rng.standard_normal((2, 2)).astype(BF16),
        "i64": np.array([-(2**40), 3]),
        "i32": np.arange(3, dtype=np.int32),
        "i16": np.arange(3, dtype=np.int16),
        "i8": np.array([-3, 4], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    meta = {"format": "pt"}
    ck = read_checkpoint(_write(tmp_path, "m.safetensors", w.safetensors_bytes(tensors, meta)))
    assert ck.format == "safetensors"
    _assert_bit_exact(ck.state, collections.OrderedDict(tensors))
    assert ck.extras["__metadata__"] == meta and "metadata" not in ck.extras


def test_diffusers_safetensors_fixture():
    """The diffusers `sd_vae_tiny` folder (written by diffusers 0.42.1) equals its .npz state."""
    path = TESTDATA / "sd_vae_tiny" / "diffusion_pytorch_model.safetensors"
    ck = read_checkpoint(path)
    ref = _npz_state(TESTDATA / "sd_vae_tiny.npz")
    assert ck.extras["__metadata__"] == {"format": "pt"}
    assert sorted(ck.state) == sorted(ref)
    _assert_bit_exact(collections.OrderedDict((k, ck.state[k]) for k in ref), ref)


# --------------------------------------------------------------------------------------------
# Files written by real torch (see tests/testdata/torch_saved/README.md)


def _torch_expected():
    with np.load(TORCH_SAVED / "expected.npz") as z:
        keys = [str(k) for k in z["keys"]]
        return collections.OrderedDict((k, z[f"state/{k}"]) for k in keys)


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("state_dict_zip.pt", "torch-zip"),
        ("state_dict_legacy.pth", "torch-legacy"),
        ("wrapped_zip.pt", "torch-zip"),
    ],
)
def test_real_torch_saved_files(name, fmt):
    ck = read_checkpoint(TORCH_SAVED / name)
    assert ck.format == fmt
    expected = _torch_expected()
    got = collections.OrderedDict(ck.state)
    assert got["extra.bf16"].dtype == BF16
    got["extra.bf16"] = got["extra.bf16"].view(np.uint16)  # the npz holds its raw bits
    _assert_bit_exact(got, expected)
    if name == "wrapped_zip.pt":
        assert ck.extras["state_dict_key"] == "state_dict"
        assert (ck.extras["epoch"], ck.extras["note"]) == (3, "wrapped")


def test_real_torch_whole_module_save_is_refused():
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules") as e:
        read_checkpoint(TORCH_SAVED / "whole_module.pt")
    assert "whole_module.pt" in str(e.value) and "state_dict()" in str(e.value)


# --------------------------------------------------------------------------------------------
# Bad input: always a CheckpointError that names the path


def _raises_with_path(path, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)
    if match is not None:
        assert match in str(e.value), str(e.value)
    return e.value


@pytest.mark.parametrize("frac", [0.0001, 0.01, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("name", FIXTURES)
def test_truncated_fixture(tmp_path, name, frac):
    data = (TESTDATA / f"{name}.pkl").read_bytes()
    p = _write(tmp_path, "cut.pkl", data[: max(1, int(len(data) * frac))])
    err = _raises_with_path(p)
    assert not isinstance(err, UnsafeCheckpointError)


def test_fixture_minus_last_byte_and_with_trailing_garbage(tmp_path):
    data = (TESTDATA / "edm_ddpmpp_tiny.pkl").read_bytes()
    _raises_with_path(_write(tmp_path, "a.pkl", data[:-1]))
    _raises_with_path(_write(tmp_path, "b.pkl", data + b"garbage"), "unexpected bytes")


def test_flipped_bytes_never_escape_as_other_errors(tmp_path):
    # A flipped byte inside tensor data is undetectable in a pickle (no checksum), so a load
    # may succeed; anything else must surface as CheckpointError, never another exception.
    data = (TESTDATA / "edm_ddpmpp_tiny.pkl").read_bytes()
    rng = np.random.default_rng(0)
    # The first few kB are mostly opcodes and the first storage blob's header.
    positions = list(rng.integers(2, 3000, 30)) + list(rng.integers(0, len(data), 30))
    failures = 0
    for i, pos in enumerate(positions):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        p = _write(tmp_path, f"flip{i}.pkl", bytes(bad))
        try:
            ck = read_checkpoint(p)
        except CheckpointError as e:
            assert str(p) in str(e)
            failures += 1
        else:
            assert isinstance(ck, LoadedCheckpoint)
    assert failures > 0


def test_flipped_byte_in_zip_storage_fails_crc(tmp_path):
    sd, _ = _synthetic_state_dict()
    data = bytearray(w.torch_zip_bytes(sd))
    with zipfile.ZipFile(_write(tmp_path, "ok.pt", bytes(data))) as zf:
        info = zf.getinfo("archive/data/0")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 3] ^= 0x10
    _raises_with_path(_write(tmp_path, "bad.pt", bytes(data)), "CRC")


@pytest.mark.parametrize(
    "name,data,match",
    [
        ("empty.pkl", b"", "empty"),
        ("image.pkl", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"),
        ("notes.pt", b"hello, this is not a checkpoint\n", "text file"),
        ("page.pkl", b"<!DOCTYPE html><html>404</html>", "HTML"),
        ("gz.pkl", b"\x1f\x8b\x08\x00" + b"\0" * 20, "gzip"),
        ("future.pkl", b"\x80\x09abc.", "protocol"),
        ("junk.bin", bytes(range(256)) * 4, "unknown format"),
    ],
)
def test_wrong_file_types(tmp_path, name, data, match):
    _raises_with_path(_write(tmp_path, name, data), match)


def test_directory_and_missing_path(tmp_path):
    _raises_with_path(tmp_path, "directory")
    missing = tmp_path / "nope" / "network-snapshot.pkl"
    err = _raises_with_path(missing, "no such file")
    assert "download" in str(err)  # says what to do


def test_zip_without_data_pkl(tmp_path):
    buf = tmp_path / "a.pt"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/version", b"3\n")
        z.writestr("archive/data/0", b"\0" * 16)
    _raises_with_path(buf, "data.pkl")
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(3))
    _raises_with_path(npz, "numpy.load")


def test_zip_missing_storage_entry_and_wrong_size(tmp_path):
    sd, _ = _synthetic_state_dict()
    data = w.torch_zip_bytes(sd)
    with zipfile.ZipFile(_write(tmp_path, "full.pt", data)) as src:
        members = {n: src.read(n) for n in src.namelist()}
    for name, mutate, match in [
        ("drop.pt", lambda m: m.pop("archive/data/1"), "lacks the storage"),
        ("short.pt", lambda m: m.update({"archive/data/1": b"\0" * 4}), "bytes, expected"),
        ("bigend.pt", lambda m: m.update({"archive/byteorder": b"big"}), "big-endian"),
    ]:
        m = dict(members)
        mutate(m)
        p = tmp_path / name
        with zipfile.ZipFile(p, "w") as z:
            for n, d in m.items():
                z.writestr(n, d)
        _raises_with_path(p, match)


def test_safetensors_bad_offsets_and_header(tmp_path):
    good = w.safetensors_bytes({"a": np.arange(4, dtype=np.float32)})
    (n,) = struct.unpack_from("<Q", good)
    header = json.loads(good[8 : 8 + n])

    def make(h: dict, tail: bytes = b"\0" * 16) -> bytes:
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + tail

    cases = {
        "beyond.safetensors": (make({"a": {**header["a"], "data_offsets": [8, 24]}}), "fit"),
        "size.safetensors": (make({"a": {**header["a"], "shape": [5]}}), "fit"),
        "dtype.safetensors": (make({"a": {**header["a"], "dtype": "OBJ"}}), "dtype"),
        "neg.safetensors": (make({"a": {**header["a"], "shape": [-4]}}), "shape"),
        "meta.safetensors": (make({"__metadata__": {"k": 1}, **header}), "__metadata__"),
        "overlap.safetensors": (
            make({"a": header["a"], "b": {**header["a"], "data_offsets": [8, 24]}}, b"\0" * 24),
            "overlap",
        ),
        "json.safetensors": (struct.pack("<Q", 12) + b'{"a": [1, 2' + b" " * 8, "JSON"),
        "trunc.safetensors": (good[:-4], "fit"),
    }
    for name, (data, match) in cases.items():
        _raises_with_path(_write(tmp_path, name, data), match)


@pytest.mark.parametrize(
    "offset,size,stride", [(8, (3,), (1,)), (0, (4, 4), (4, 1)), (0, (2, 3), (9, 1))]
)
def test_tensor_view_outside_storage_is_refused(tmp_path, offset, size, stride):
    # Reading past the storage would copy stray memory; it must be a CheckpointError instead.
    t = w.Tensor(w.Storage(np.arange(10, dtype=np.float32)), offset, size, stride)
    for fmt, data in [
        ("pt", w.torch_zip_bytes({"t": t})),
        ("pth", w.torch_legacy_bytes({"t": t})),
        ("pkl", w.dumps({"ema": w.Module("Net", params={"t": t})})),
    ]:
        _raises_with_path(_write(tmp_path, f"v.{fmt}", data), "beyond its storage")


def test_empty_view_past_the_end_is_fine(tmp_path):
    t = w.Tensor(w.Storage(np.arange(10, dtype=np.float32)), 11, (0, 5), (5, 1))
    ck = read_checkpoint(_write(tmp_path, "z.pt", w.torch_zip_bytes({"t": t})))
    assert ck.state["t"].shape == (0, 5) and ck.state["t"].dtype == np.float32


def test_zero_stride_memory_bomb_is_refused(tmp_path):
    st = w.Storage(np.ones(1, np.float32))
    t = w.Tensor(st, 0, (2**20, 2**20), (0, 0))  # 4 TiB if expanded
    _raises_with_path(_write(tmp_path, "bomb.pt", w.torch_zip_bytes({"t": t})), "budget")


def test_legacy_file_corruptions(tmp_path):
    sd, _ = _synthetic_state_dict()
    data = w.torch_legacy_bytes(sd)
    _raises_with_path(_write(tmp_path, "cut.pth", data[:-3]), None)
    _raises_with_path(_write(tmp_path, "long.pth", data + b"\0"), "unexpected bytes")
    bad_proto = data.replace(struct.pack("<H", 1001), struct.pack("<H", 1002), 1)
    _raises_with_path(_write(tmp_path, "proto.pth", bad_proto), "protocol version")


def test_storage_blob_corruptions(tmp_path):
    good = w.Storage(np.arange(6, dtype=np.float32), key="7")
    blob = w.legacy_storage_blob(good)

    cases = {
        "numel": (blob[:-32] + struct.pack("<q", 5) + blob[-24:], "elements"),
        "short": (blob[:-4], "data bytes"),
        "long": (blob + b"\0\0\0\0", "data bytes"),
        "magic": (blob.replace(pickle.dumps(w.LEGACY_MAGIC, 2), pickle.dumps(7, 2)), "magic"),
        "keys": (blob.replace(b"X\x01\x00\x00\x007", b"X\x01\x00\x00\x008", 1), "key list"),
        "notbytes": ("a string", "bytes"),
    }
    for name, (b, match) in cases.items():
        t = w.Tensor(w.Call(w.Global("torch.storage", "_load_from_bytes"), b), 0, (6,), (1,))
        data = w.dumps({"ema": w.Module("Net", params={"t": t})})
        _raises_with_path(_write(tmp_path, f"{name}.pkl", data), match)


def test_tensors_are_freed_without_the_cyclic_gc(testdata):
    """Porting frees each tensor as it is converted; a reference cycle through the reader would
    keep every tensor (and the file bytes) alive until the cyclic GC runs (porting memory)."""
    import gc
    import weakref

    gc.disable()
    try:
        ckpt = read_checkpoint(testdata / "edm_ddpmpp_tiny.pkl")
        refs = [weakref.ref(ckpt.state.pop(key)) for key in list(ckpt.state)]
        assert refs and all(r() is None for r in refs)
    finally:
        gc.enable()
