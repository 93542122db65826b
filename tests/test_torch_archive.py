"""The public API of aid_jax.backbones.torch_archive (torch-free; no torch import anywhere).

A caller's own allowlist is exact (globals other readers allow are refused too, before anything
runs), and a ``torch.save`` zip written by tests/ckpt_writer.py reads back through the public
pieces alone: archive, storage table, restricted unpickler, tensor materialisation.
"""

import collections
import os
import subprocess

import ckpt_writer as w
import numpy as np
import pytest

from aid_jax.backbones import checkpoint_reader
from aid_jax.backbones import torch_archive as ta


def _tensor_globals() -> dict:
    """A caller's allowlist for a state dict of plain tensors (no parameters, no NumPy)."""
    return {
        ("torch._utils", "_rebuild_tensor_v2"): ta.rebuild_tensor_v2,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **ta.storage_type_globals(),
    }


def _open(data: bytes, path: str = "tiny.pt") -> tuple[ta.UntrustedFile, ta.TorchZipArchive]:
    file = ta.UntrustedFile(path, data)
    return file, ta.TorchZipArchive(file, kind="torch.save", expected="expected a test archive")


@pytest.fixture
def tripwires(monkeypatch) -> list[str]:
    """Shell-running functions record their name instead of running: must stay empty."""
    calls: list[str] = []
    for mod, attr in ((os, "system"), (os, "popen"), (subprocess, "Popen"), (subprocess, "run")):
        name = f"{mod.__name__}.{attr}"
        monkeypatch.setattr(mod, attr, lambda *a, _name=name, **k: calls.append(_name))
    return calls


def test_exceptions_are_the_checkpoint_readers():
    assert checkpoint_reader.CheckpointError is ta.CheckpointError
    assert checkpoint_reader.UnsafeCheckpointError is ta.UnsafeCheckpointError
    assert issubclass(ta.UnsafeCheckpointError, ta.CheckpointError)


def test_reads_tiny_torch_zip():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    shared = w.Storage(base)
    sd = collections.OrderedDict(
        weight=w.Tensor(shared, 0, (3, 4), (4, 1)),
        weight_t=w.Tensor(shared, 0, (4, 3), (1, 4)),  # a transposed view of the same storage
        row=w.Tensor(shared, 4, (4,), (1,)),
        bias=w.Tensor.of(np.array([1, -2], np.int64)),
    )
    file, archive = _open(w.torch_zip_bytes(sd, archive="tiny"))
    assert archive.prefix == "tiny/"
    assert {"data.pkl", "byteorder", "version", "data/0", "data/1"} <= set(archive.members)
    assert bytes(archive.read("version")) == b"3\n"
    storages = archive.storages("test data.pkl")
    with file.parsing("test archive"):
        top = archive.unpickle("data.pkl", "test data.pkl", _tensor_globals(), storages)
        assert isinstance(top, collections.OrderedDict)
        assert list(top) == ["weight", "weight_t", "row", "bias"]
        assert all(isinstance(v, ta.TensorRef) for v in top.values())
        out = {k: file.materialize(v) for k, v in top.items()}
        assert file.materialize(top["weight"]) is out["weight"]  # copied once
    assert sorted(storages) == ["0", "1"] and top["weight"].storage is top["row"].storage
    assert storages["1"].dtype == np.int64 and storages["1"].numel == 2
    np.testing.assert_array_equal(out["weight"], base)
    np.testing.assert_array_equal(out["weight_t"], base.T)
    np.testing.assert_array_equal(out["row"], base[1])
    np.testing.assert_array_equal(out["bias"], [1, -2])
    assert out["bias"].dtype == np.int64 and out["weight_t"].flags.c_contiguous
    assert file.data == b"" and not file.tensor_cache  # released on leaving parsing()


@pytest.mark.parametrize(
    "refused",
    [
        ("os", "system"),
        ("builtins", "exec"),
        ("collections", "OrderedDict"),  # on checkpoint_reader's allowlist, not on the caller's
        ("torch._utils", "_rebuild_parameter"),  # likewise
        ("numpy", "ndarray"),  # a NumPy stand-in the caller left out
    ],
)
def test_callers_allowlist_refuses_other_globals(tmp_path, tripwires, refused):
    marker = tmp_path / "MARKER"
    payload = w.dumps(w.Call(w.Global(*refused), f"touch {marker}"), protocol=2)
    assert f"{refused[0]}\n{refused[1]}".encode() in payload  # the bytes really reference it
    allowed = {k: v for k, v in ta.numpy_globals().items() if k == ("numpy", "dtype")}
    unpickler = ta.RestrictedUnpickler(ta.ViewFile(payload), "evil.pkl", "test pickle", allowed)
    with pytest.raises(ta.UnsafeCheckpointError, match=f"'{refused[0]}.{refused[1]}'"):
        unpickler.load()
    assert not marker.exists() and tripwires == []


def test_refusal_message_is_the_callers(tmp_path, tripwires):
    marker = tmp_path / "MARKER"
    payload = w.dumps(w.Call(w.Global("os", "system"), f"touch {marker}"), protocol=4)
    unpickler = ta.RestrictedUnpickler(
        ta.ViewFile(payload), "evil.pkl", "test pickle", {}, refusal=lambda g: f"no {g} here"
    )
    with pytest.raises(ta.UnsafeCheckpointError, match=r"^no os\.system here$"):
        unpickler.load()
    assert not marker.exists() and tripwires == []


def test_zip_refuses_global_outside_callers_allowlist(tmp_path, tripwires):
    # The tiny archive's tensors pickle their backward hooks as collections.OrderedDict(): an
    # allowlist without it refuses the archive, naming the global.
    sd = {"w": w.Tensor.of(np.ones(3, np.float32))}
    file, archive = _open(w.torch_zip_bytes(sd))
    allowed = _tensor_globals()
    del allowed[("collections", "OrderedDict")]
    with pytest.raises(ta.UnsafeCheckpointError, match=r"^tiny\.pt: .*'collections\.OrderedDict'"):
        with file.parsing("test archive"):
            archive.unpickle("data.pkl", "test data.pkl", allowed, archive.storages("t"))
    # A malicious data.pkl in an otherwise valid archive: refused before anything runs.
    marker = tmp_path / "MARKER"
    evil = w.dumps(w.Call(w.Global("os", "system"), f"touch {marker}"), protocol=2)
    file, archive = _open(w.torch_zip_bytes(None, data_pkl=evil))
    with pytest.raises(ta.UnsafeCheckpointError, match="'os.system'"):
        archive.unpickle("data.pkl", "test data.pkl", _tensor_globals(), archive.storages("t"))
    assert not marker.exists() and tripwires == []


def test_allowlisted_function_cannot_be_mutated_by_build():
    payload = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b."
    before = ta.rebuild_tensor_v2.__defaults__
    unpickler = ta.RestrictedUnpickler(ta.ViewFile(payload), "m.pkl", "test", _tensor_globals())
    with pytest.raises(ta.CheckpointError, match="BUILD"):
        unpickler.load()
    assert ta.rebuild_tensor_v2.__defaults__ == before


def test_archive_and_storage_errors_name_the_file():
    sd = {"w": w.Tensor.of(np.ones(3, np.float32))}
    data = w.torch_zip_bytes(sd)
    with pytest.raises(ta.CheckpointError, match=r"^x\.zip: .*data\.pkl.*expected a test"):
        _open(w.torch_zip_bytes(None, archive="a/b"), path="x.zip")  # no '<folder>/data.pkl'
    with pytest.raises(ta.CheckpointError, match=r"^x\.zip: corrupt or truncated zip"):
        _open(b"PK\x03\x04 not a zip", path="x.zip")
    file, archive = _open(data)
    with pytest.raises(ta.CheckpointError, match="lacks the entry archive/constants.pkl"):
        archive.read("constants.pkl")
    table = archive.storages("test data.pkl")
    stype = ta.storage_type_globals()[("torch", "FloatStorage")]
    with pytest.raises(ta.CheckpointError, match="lacks the storage entry archive/data/7"):
        table(("storage", stype, "7", "cpu", 3))
    with pytest.raises(ta.CheckpointError, match=r"has 12 bytes, expected 16"):
        table(("storage", stype, "0", "cpu", 4))
    assert table(("storage", stype, "0", "cpu", 3)).array.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ta.CheckpointError, match="declared with two different types"):
        table(("storage", ta.storage_type_globals()[("torch", "IntStorage")], "0", "cpu", 3))
    with pytest.raises(ta.CheckpointError, match="malformed persistent id"):
        table(("storage", stype, "../0", "cpu", 3))
    legacy = ta.StorageTable(file, "legacy", pid_length=6)  # data filled in by the caller
    assert legacy(("storage", stype, "k", "cpu", 2, None)).array is None and list(legacy) == ["k"]


def test_materialize_is_bounds_checked_and_budgeted():
    file = ta.UntrustedFile("t.bin", b"\0" * 16)
    st = ta.Storage(np.dtype("<f4"), 4, "0")
    st.array = file.frombuffer(file.data, st.dtype, 4, 0)
    with pytest.raises(ta.CheckpointError, match="reads beyond its storage"):
        file.materialize(ta.rebuild_tensor_v2(st, 1, (2, 2), (2, 1)))
    with pytest.raises(ta.CheckpointError, match="exceeds the memory budget"):
        file.materialize(ta.rebuild_tensor_v2(st, 0, (2**20, 2**20), (0, 0)))
    assert file.materialize(ta.rebuild_tensor_v2(st, 0, (3, 2), (0, 1))).shape == (3, 2)


def test_parsing_turns_any_error_into_checkpoint_error():
    file = ta.UntrustedFile("bad.pt", b"1234")
    msg = r"^bad\.pt: corrupt or truncated thing \(KeyError: 'x'\); try again$"
    with pytest.raises(ta.CheckpointError, match=msg):
        with file.parsing("thing", "; try again"):
            raise KeyError("x")
    assert file.data == b""
    file = ta.UntrustedFile("bad.pt", b"1234")
    with pytest.raises(ta.UnsafeCheckpointError, match=r"^bad\.pt: nope$"):
        with file.parsing("thing"):
            raise ta.UnsafeCheckpointError("nope")


def test_module_record_is_inert():
    cls = ta.ModuleRecord.subclass("__torch__.m.Net")
    assert cls.__name__ == "Net" and cls.qualified_name == "__torch__.m.Net"
    with pytest.raises(ta.CheckpointError, match="constructor arguments for __torch__.m.Net"):
        cls("rm -rf /")
    rec = cls()
    rec.__setstate__({"training": False})
    assert rec.state == {"training": False} and repr(rec) == "<__torch__.m.Net>"
    with pytest.raises(ta.CheckpointError, match="built twice"):
        rec.__setstate__({})
    with pytest.raises(ta.CheckpointError, match="dict of attributes"):
        cls().__setstate__({1: 2})
