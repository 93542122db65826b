"""Hostile checkpoints must be refused before any of their code runs.

Every payload would create ``tmp_path / "MARKER"`` (or call a trip-wired function) if it ever
ran. Payloads are built with the writer's inert :class:`ckpt_writer.Global` markers or from raw
pickle opcodes, so building them runs nothing; the tests only check that the bytes really
reference the dangerous global, that reading raises the right error naming it, and that the
marker does not exist afterwards.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable

import ckpt_writer as w
import numpy as np
import pytest

from aid_jax.backbones.checkpoint_reader import (
    CheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)

G = w.Global


class PayloadRan(BaseException):
    """Raised by trip-wired functions; a BaseException so no ``except Exception`` can hide it."""


@pytest.fixture
def tripwires(monkeypatch):
    """Replace process-spawning functions for the duration of a test; record any call."""
    calls: list[str] = []

    def wire(name: str) -> Callable:
        def tripped(*args, **kwargs):
            calls.append(name)
            raise PayloadRan(name)

        return tripped

    targets = [(os, "system"), (os, "popen"), (os, "execv"), (os, "execve"), (os, "spawnv")]
    targets += [(subprocess, "Popen"), (subprocess, "run"), (subprocess, "call")]
    targets += [(subprocess, "check_output")]
    if os.name == "posix":
        import posix

        targets.append((posix, "system"))
    for mod, attr in targets:
        if hasattr(mod, attr):
            monkeypatch.setattr(mod, attr, wire(f"{mod.__name__}.{attr}"))
    return calls


def _sh(marker: pathlib.Path) -> str:
    return f"touch {marker}"


def _py(marker: pathlib.Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _expr(marker: pathlib.Path) -> str:
    return f"open({str(marker)!r}, 'w')"


def _net(**attrs) -> w.Module:
    """A small valid network, optionally carrying extra attributes (payloads)."""
    lin = w.Module("Linear", params={"weight": w.Tensor.of(np.ones((2, 2), np.float32), True)})
    return w.Module("EDMPrecond", children={"model": lin}, attrs=attrs, init_kwargs={})


def _legacy_blob(*pickles: bytes, tail: bytes = b"") -> bytes:
    return b"".join(pickles) + tail


def _header_pickles() -> tuple[bytes, bytes, bytes]:
    return (
        pickle.dumps(w.LEGACY_MAGIC, 2),
        pickle.dumps(w.LEGACY_PROTOCOL, 2),
        pickle.dumps(w.SYS_INFO, 2),
    )


def _with_blob(blob: bytes) -> bytes:
    """An NVIDIA pickle whose one tensor uses ``blob`` as its storage's legacy bytes."""
    storage = w.Call(G("torch.storage", "_load_from_bytes"), blob)
    t = w.Tensor(storage, 0, (2,), (1,))
    return w.dumps({"ema": w.Module("Net", params={"t": t})})


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name verbatim
    return out.getvalue()


class _EvilPidPickler(w.Pickler):
    """Writes storages with a persistent id whose 'storage type' is ``os.system``."""

    def persistent_id(self, obj):
        if isinstance(obj, w.Storage):
            return ("storage", G("os", "system"), "0", "cpu", obj.data.size)
        return None


def _evil_pid_zip(marker: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    _EvilPidPickler(buf, 2).dump({"t": w.Tensor.of(np.ones(2, np.float32))})
    return w.torch_zip_bytes(None, data_pkl=buf.getvalue())


def _traversal_key_zip(marker: pathlib.Path) -> bytes:
    class P(w.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, w.Storage):
                return ("storage", G("torch", "FloatStorage"), "../../etc/x", "cpu", 2)
            return None

    buf = io.BytesIO()
    P(buf, 2).dump({"t": w.Tensor.of(np.ones(2, np.float32))})
    return w.torch_zip_bytes(None, data_pkl=buf.getvalue())


def _view_metadata_legacy(marker: pathlib.Path) -> bytes:
    class P(w.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, w.Storage):
                return ("storage", G("torch", "FloatStorage"), "1", "cpu", 2, ("2", 0, 2))
            return None

    buf = io.BytesIO()
    P(buf, 2).dump({"t": w.Tensor.of(np.ones(2, np.float32))})
    return w.torch_legacy_bytes({}, main_pickle=buf.getvalue())


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[pathlib.Path], bytes]  # marker path -> file contents
    exc: type[CheckpointError] = UnsafeCheckpointError
    payload: tuple[tuple[str, str], ...] = ()  # globals the bytes must reference
    message: tuple[str, ...] = ()  # must appear in the error message (besides the path)
    filename: str = "network-snapshot.pkl"


def _unsafe(id_: str, build, *globals_: tuple[str, str], filename="evil.pkl") -> Case:
    """A case refused for its first forbidden global, which the message must name."""
    return Case(
        id_,
        build,
        UnsafeCheckpointError,
        globals_,
        (f"{globals_[0][0]}.{globals_[0][1]}",),
        filename,
    )


OS_SYSTEM = ("os", "system")

CASES = [
    # --- top-level reduce, every protocol and both global opcodes ---------------------------
    _unsafe(
        "os_system_p4_stack_global", lambda m: w.dumps(w.Call(G(*OS_SYSTEM), _sh(m))), OS_SYSTEM
    ),
    _unsafe("os_system_p2_global", lambda m: w.dumps(w.Call(G(*OS_SYSTEM), _sh(m)), 2), OS_SYSTEM),
    _unsafe(
        "posix_system_p3",
        lambda m: w.dumps(w.Call(G("posix", "system"), _sh(m)), 3),
        ("posix", "system"),
    ),
    _unsafe(
        "nt_system_p5", lambda m: w.dumps(w.Call(G("nt", "system"), _sh(m)), 5), ("nt", "system")
    ),
    _unsafe(
        "subprocess_popen_p4",
        lambda m: w.dumps(w.Call(G("subprocess", "Popen"), ["touch", str(m)])),
        ("subprocess", "Popen"),
    ),
    _unsafe(
        "builtins_exec_p4_global_opcode",
        lambda m: w.dumps(w.Call(G("builtins", "exec"), _py(m)), 4, global_opcode=True),
        ("builtins", "exec"),
    ),
    _unsafe(
        "builtins_eval_p2",
        lambda m: w.dumps(w.Call(G("builtins", "eval"), _expr(m)), 2),
        ("builtins", "eval"),
    ),
    _unsafe(
        "builtins_open_for_writing",
        lambda m: w.dumps(w.Call(G("builtins", "open"), str(m), "w")),
        ("builtins", "open"),
    ),
    _unsafe(
        "import_then_getattr_chain",
        lambda m: w.dumps(
            w.Call(
                w.Call(
                    G("builtins", "getattr"), w.Call(G("builtins", "__import__"), "os"), "system"
                ),
                _sh(m),
            )
        ),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
    ),
    _unsafe(
        "importlib_import_module",
        lambda m: w.dumps(w.Call(G("importlib", "import_module"), "os")),
        ("importlib", "import_module"),
    ),
    # --- hand-written opcodes: protocol 0 text, INST, OBJ, py2 module names -------------------
    _unsafe(
        "proto0_global_reduce",
        lambda m: b"cos\nsystem\n(V" + _sh(m).encode() + b"\ntR.",
        OS_SYSTEM,
    ),
    _unsafe(
        "proto0_py2_builtin_eval",
        lambda m: b"c__builtin__\neval\n(V" + _expr(m).encode() + b"\ntR.",
        ("__builtin__", "eval"),
    ),
    _unsafe("inst_opcode", lambda m: b"(V" + _sh(m).encode() + b"\nios\nsystem\n.", OS_SYSTEM),
    _unsafe(
        "obj_opcode",
        lambda m: b"(cbuiltins\nexec\nV" + _py(m).encode() + b"\no.",
        ("builtins", "exec"),
    ),
    _unsafe(
        "obj_opcode_binary_p2",
        lambda m: (
            b"\x80\x02(cposix\nsystem\nX" + struct.pack("<I", len(_sh(m))) + _sh(m).encode() + b"o."
        ),
        ("posix", "system"),
    ),
    # --- payloads nested inside otherwise valid NVIDIA pickles --------------------------------
    _unsafe(
        "nested_in_persistent_state",
        lambda m: w.dumps({"ema": _net(evil=w.Call(G(*OS_SYSTEM), _sh(m)))}),
        OS_SYSTEM,
    ),
    _unsafe(
        "nested_in_init_kwargs",
        lambda m: w.dumps(
            {
                "ema": w.Module(
                    "EDMPrecond",
                    init_kwargs={"model_type": w.Call(G("builtins", "eval"), _expr(m))},
                )
            }
        ),
        ("builtins", "eval"),
    ),
    _unsafe(
        "nested_in_loss_fn",
        lambda m: w.dumps(
            w.EasyDict(
                ema=_net(),
                loss_fn=w.Persistent("EDMLoss", {"P_mean": w.Call(G("runpy", "run_path"), str(m))}),
            )
        ),
        ("runpy", "run_path"),
    ),
    _unsafe(
        "module_src_is_itself_a_payload",
        lambda m: w.dumps(
            {"ema": w.Persistent("EDMPrecond", {}, module_src=w.Call(G(*OS_SYSTEM), _sh(m)))}
        ),
        OS_SYSTEM,
    ),
    _unsafe(
        "storage_type_outside_a_storage_id",
        lambda m: w.dumps({"ema": w.Call(G("torch", "FloatStorage"), 4)}),
        ("torch", "FloatStorage"),
    ),
    # --- inside legacy storage blobs (the second, stricter unpickler) -------------------------
    _unsafe(
        "storage_blob_payload_after_header",
        lambda m: _with_blob(
            _legacy_blob(*_header_pickles(), pickle_payload_p2(G(*OS_SYSTEM), _sh(m)))
        ),
        OS_SYSTEM,
    ),
    _unsafe(
        "storage_blob_payload_first",
        lambda m: _with_blob(pickle_payload_p2(G(*OS_SYSTEM), _sh(m))),
        OS_SYSTEM,
    ),
    _unsafe(
        "storage_blob_nested_load_from_bytes",
        lambda m: _with_blob(
            _legacy_blob(
                *_header_pickles(),
                pickle_payload_p2(
                    G("torch.storage", "_load_from_bytes"),
                    pickle_payload_p2(G(*OS_SYSTEM), _sh(m)),
                ),
            )
        ),
        ("torch.storage", "_load_from_bytes"),
    ),
    # --- torch.save zip archives and legacy files ---------------------------------------------
    _unsafe(
        "torch_zip_data_pkl",
        lambda m: w.torch_zip_bytes(None, data_pkl=pickle_payload_p2(G(*OS_SYSTEM), _sh(m))),
        OS_SYSTEM,
        filename="evil.pt",
    ),
    _unsafe("torch_zip_storage_type_is_payload", _evil_pid_zip, OS_SYSTEM, filename="evil.pt"),
    _unsafe(
        "torch_legacy_main_pickle",
        lambda m: w.torch_legacy_bytes({}, main_pickle=pickle_payload_p2(G(*OS_SYSTEM), _sh(m))),
        OS_SYSTEM,
        filename="evil.pth",
    ),
    _unsafe(
        "torch_legacy_payload_as_sys_info",
        lambda m: (
            pickle.dumps(w.LEGACY_MAGIC, 2)
            + pickle.dumps(w.LEGACY_PROTOCOL, 2)
            + pickle_payload_p2(G(*OS_SYSTEM), _sh(m))
        ),
        OS_SYSTEM,
        filename="evil.pth",
    ),
    # --- numpy reconstruction that could smuggle objects --------------------------------------
    Case(
        "numpy_object_array",
        lambda m: w.dumps(
            {
                "ema": _net(),
                "evil": np.array([w.Call(G(*OS_SYSTEM), _sh(m)), 1], dtype=object),
            }
        ),
        UnsafeCheckpointError,
        (OS_SYSTEM, ("numpy", "dtype")),
        ("numpy.dtype('O8')", "object"),
    ),
    Case(
        "numpy_object_scalar",
        lambda m: w.dumps(
            w.Call(
                G("numpy._core.multiarray", "scalar"),
                w.Call(G("numpy", "dtype"), "O8", False, True),
                w.Call(G(*OS_SYSTEM), _sh(m)),
            )
        ),
        UnsafeCheckpointError,
        (OS_SYSTEM,),
        ("numpy.dtype('O8')",),
    ),
    Case(
        "numpy_dtype_state_with_fields",
        lambda m: w.dumps(
            w.Call(
                G("numpy", "dtype"),
                "f8",
                False,
                True,
                state=(3, "|", None, ("a",), {"a": (str(m), 0)}, 8, 1, 63),
            )
        ),
        UnsafeCheckpointError,
        (("numpy", "dtype"),),
        ("numpy.dtype state",),
    ),
    Case(
        "numpy_reconstruct_of_other_class",
        lambda m: w.dumps(
            w.Call(
                G("numpy.core.multiarray", "_reconstruct"),
                G("collections", "OrderedDict"),
                (0,),
                b"b",
            )
        ),
        UnsafeCheckpointError,
        (("numpy.core.multiarray", "_reconstruct"),),
        ("_reconstruct refused",),
    ),
    # --- malformed structure: CheckpointError (not an unsafe global) --------------------------
    Case(
        "ext_opcode_registry_lookup",
        lambda m: b"\x80\x02\x82\x01.",
        CheckpointError,
        message=("extension",),
    ),
    Case(
        "build_slot_state_on_allowed_function",
        lambda m: (
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b."
        ),
        CheckpointError,
        (("torch._utils", "_rebuild_tensor_v2"),),
        ("unexpected BUILD",),
    ),
    Case(
        "build_on_allowed_class",
        lambda m: b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00xK\x01sb.",
        CheckpointError,
        (("collections", "OrderedDict"),),
    ),
    Case(
        "persistent_id_in_network_pickle",
        lambda m: b"\x80\x02X" + struct.pack("<I", len(_sh(m))) + _sh(m).encode() + b"Q.",
        CheckpointError,
        message=("persistent id",),
    ),
    Case(
        "build_on_persistent_object",
        lambda m: w.dumps(
            w.Call(
                G("torch_utils.persistence", "_reconstruct_persistent_obj"),
                {"type": "class", "class_name": "X", "state": {}},
                state={"__class__": str(m)},
            )
        ),
        CheckpointError,
        message=("BUILD",),
    ),
    Case(
        "zip_storage_key_path_traversal",
        _traversal_key_zip,
        CheckpointError,
        message=("malformed persistent id", "../../etc/x"),
        filename="evil.pt",
    ),
    Case(
        "legacy_storage_view_metadata",
        _view_metadata_legacy,
        CheckpointError,
        message=("malformed persistent id",),
        filename="evil.pth",
    ),
    Case(
        "zip_member_path_traversal",
        lambda m: _zip({"archive/data.pkl": pickle.dumps({}, 2), "../../evil.sh": _sh(m).encode()}),
        CheckpointError,
        message=("path traversal", "../../evil.sh"),
        filename="evil.pt",
    ),
    Case(
        "zip_member_absolute_path",
        lambda m: _zip({"archive/data.pkl": pickle.dumps({}, 2), str(m): b"x"}),
        CheckpointError,
        message=("path traversal",),
        filename="evil.pt",
    ),
    Case(
        "safetensors_huge_header_length",
        lambda m: struct.pack("<Q", 2**62) + b'{"a": {"dtype": "F32"}}',
        CheckpointError,
        message=("header claims",),
        filename="evil.safetensors",
    ),
    Case(
        "safetensors_deeply_nested_header",
        lambda m: struct.pack("<Q", 300_001) + b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        CheckpointError,
        filename="evil.safetensors",
    ),
    Case(
        "safetensors_tensor_larger_than_file",
        lambda m: _safetensors_header(
            {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
        ),
        CheckpointError,
        message=("do not fit",),
        filename="evil.safetensors",
    ),
]

# Names that look harmless or sit next to allowed ones but are not on the allowlist.
LOOKALIKES = [
    ("collections", "os"),
    ("collections", "OrderedDict.__init__"),
    ("collections", "defaultdict"),
    ("numpy", "load"),
    ("numpy", "frompyfunc"),
    ("numpy.core.multiarray", "_reconstruct.__globals__"),
    ("numpy._core.multiarray", "scalar.__self__"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "os"),
    ("torch", "load"),
    ("torch.storage", "os"),
    ("torch_utils.persistence", "persistent_class"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj.__globals__"),
    ("dnnlib.util", "call_func_by_name"),
    ("dnnlib.util", "EasyDict.__getattr__"),
    ("pty", "spawn"),
    ("webbrowser", "open"),
    ("antigravity", "fly"),
    ("aid_jax_never_imported_module", "run"),
]
CASES += [
    _unsafe(
        f"lookalike_{mod}.{name}",
        lambda m, mod=mod, name=name: w.dumps(w.Call(G(mod, name), _sh(m))),
        (mod, name),
    )
    for mod, name in LOOKALIKES
]


def pickle_payload_p2(func: w.Global, *args) -> bytes:
    return w.dumps(w.Call(func, *args), 2)


def _safetensors_header(header: dict) -> bytes:
    import json

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 16


def test_corpus_is_large_enough():
    assert len(CASES) >= 12
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malicious_file_is_refused(case: Case, tmp_path, tripwires):
    marker = tmp_path / "MARKER"
    data = case.build(marker)
    for mod, name in case.payload:  # the bytes really carry the payload (checked, never run)
        assert mod.encode() in data and name.encode() in data, (mod, name)
    path = tmp_path / case.filename
    path.write_bytes(data)
    modules_before = set(sys.modules)

    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)

    assert type(err.value) is case.exc, repr(err.value)
    assert isinstance(err.value, ValueError)
    if case.exc is UnsafeCheckpointError:
        assert isinstance(err.value, pickle.UnpicklingError)
    msg = str(err.value)
    assert str(path) in msg
    for text in case.message:
        assert text in msg, (text, msg)
    assert not marker.exists()
    assert tripwires == []
    for mod, _ in case.payload:  # nothing named in the file was imported
        assert mod in modules_before or mod not in sys.modules, mod


def test_refused_build_leaves_stand_ins_untouched(tmp_path):
    from aid_jax.backbones import torch_archive as ta

    before = ta.rebuild_tensor_v2.__defaults__, dict(ta.rebuild_tensor_v2.__dict__)
    path = tmp_path / "mutate.pkl"
    path.write_bytes(
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b."
    )
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert (ta.rebuild_tensor_v2.__defaults__, ta.rebuild_tensor_v2.__dict__) == before


@pytest.mark.parametrize(
    "name,data",
    [
        # The C unpickler would grow its memo array to 2**31 entries (16 GiB) for these.
        ("long_binput", b"\x80\x02N" + b"r" + struct.pack("<I", 2**31 - 1) + b"."),
        ("text_put", b"(lp9999999999999\n."),
        # pickle would allocate and zero 1 TiB before reading a byte.
        ("bytearray8", b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"."),
        ("binbytes8", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"."),
        ("frame", b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N."),
    ],
)
def test_allocation_bombs_are_cheap(tmp_path, name, data):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert time.perf_counter() - start < 2
    assert str(path) in str(err.value)


def test_module_src_is_never_executed(tmp_path, tripwires, monkeypatch):
    # NVIDIA's loader exec()s module_src; ours must load the weights and leave it untouched.
    marker = tmp_path / "MARKER"
    src = f"import os\nos.system({_sh(marker)!r})\nopen({str(marker)!r}, 'w').close()\n"
    lin = w.Module(
        "Linear",
        params={"weight": w.Tensor.of(np.eye(2, dtype=np.float32), True)},
        module_src=src,
    )
    net = w.Module("EDMPrecond", children={"model": lin}, module_src=src, init_kwargs={"a": 1})
    path = tmp_path / "src.pkl"
    path.write_bytes(w.dumps({"ema": net, "loss_fn": w.Persistent("EDMLoss", {}, src)}))
    read_checkpoint(path)  # warm-up: any lazy imports happen before the trip-wires go in

    def forbidden(*args, **kwargs):
        raise PayloadRan("exec/eval/compile")

    with monkeypatch.context() as mp:
        for name in ("exec", "eval", "compile"):
            mp.setattr(builtins, name, forbidden)
        ck = read_checkpoint(path)
    assert ck.class_name == "EDMPrecond" and ck.init_kwargs == {"a": 1}
    np.testing.assert_array_equal(ck.state["model.weight"], np.eye(2, dtype=np.float32))
    assert all("module_src" not in repr(v) for v in ck.extras.values())
    assert not marker.exists()
    assert tripwires == []


def test_exponential_shared_structure_is_linear(tmp_path):
    # 2**60 leaves if expanded; pickle memoisation makes the file tiny. Must not hang.
    node: list = [1]
    for _ in range(60):
        node = [node, node]
    net = w.Module("EDMPrecond", init_kwargs={"bomb": node})
    path = tmp_path / "bomb.pkl"
    path.write_bytes(w.dumps({"ema": net}))
    start = time.perf_counter()
    ck = read_checkpoint(path)
    assert time.perf_counter() - start < 5
    leaf = ck.init_kwargs["bomb"]
    for _ in range(60):
        assert leaf[0] is leaf[1]  # converted once, shared like in the pickle
        leaf = leaf[0]
    assert leaf == [1]


@pytest.mark.parametrize("where", ["tensor_metadata", "persistent_id", "top_level"])
def test_exponential_structure_in_error_message_is_cheap(tmp_path, where):
    # Error messages describe offending values; a naive repr() would expand 2**60 leaves.
    node: list = [1]
    for _ in range(60):
        node = [node, node]
    storage = w.Storage(np.ones(1, np.float32))
    if where == "tensor_metadata":
        args = (storage, 0, (1,), (1,), False, collections.OrderedDict(), {"x": node})
        data = w.dumps({"ema": w.Call(G("torch._utils", "_rebuild_tensor_v2"), *args)})
    elif where == "persistent_id":
        data = b"\x80\x04" + w.dumps(node)[2:-1] + b"Q."
    else:
        data = w.dumps({tuple([1] * 10): node, "other": node})
    path = tmp_path / f"{where}.pkl"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert time.perf_counter() - start < 2


def test_self_referencing_structure(tmp_path):
    loop: list = [1]
    loop.append(loop)
    d: dict = collections.OrderedDict(x=1)
    d["self"] = d
    net = w.Module("EDMPrecond", init_kwargs={"loop": loop, "d": d})
    path = tmp_path / "loop.pkl"
    path.write_bytes(w.dumps({"ema": net}))
    ck = read_checkpoint(path)
    assert ck.init_kwargs["loop"] == [1, None]
    assert ck.init_kwargs["d"] == {"x": 1, "self": None}


def test_exponential_module_dag_is_capped(tmp_path):
    child = w.Module("Leaf", params={"w": w.Tensor.of(np.ones(1, np.float32))})
    for i in range(40):
        child = w.Module(f"Level{i}", children={"a": child, "b": child})
    path = tmp_path / "dag.pkl"
    path.write_bytes(w.dumps({"ema": child}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="too large"):
        read_checkpoint(path)
    assert time.perf_counter() - start < 10


LIVE_CONTROLS = ["os_system_p4_stack_global", "posix_system_p3", "builtins_exec_p4_global_opcode"]


@pytest.mark.parametrize("case_id", LIVE_CONTROLS)
def test_payloads_are_live_under_plain_pickle(case_id, tmp_path):
    """Positive control: the same bytes, handed to plain `pickle.loads` in a child process, do
    create the marker. So the corpus is genuinely malicious and `not marker.exists()` above is a
    check that can fail."""
    case = next(c for c in CASES if c.id == case_id)
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(case.build(marker))
    code = f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60, capture_output=True)
    assert marker.exists()
