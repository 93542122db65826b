"""Torch-free writer of checkpoint files, for tests of ``aid_jax.backbones.checkpoint_reader``.

It emits the exact pickle globals of NVIDIA network pickles and of ``torch.save`` files without
importing torch or registering fake modules: :class:`Global` markers are written as
GLOBAL/STACK_GLOBAL opcodes by a subclass of the pure-Python pickler. The same markers build
malicious payloads (``Call(Global("os", "system"), "touch ...")``); a marker raises if it is
ever called, so writing a payload can never run it.

Cross-checked once against torch 2.13: ``torch.load(weights_only=True)`` reads this writer's zip
and legacy files (views, shared storages, bfloat16 included) and ``torch.storage._load_from_bytes``
reads its storage blobs.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
SYS_INFO = {
    "protocol_version": 1001,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}

STORAGE_TYPES = {
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}

SAFETENSORS_DTYPES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}

_keys = itertools.count(94906727799184)


class Global:
    """A reference to ``module.name``, pickled verbatim as a global (interned for memoisation)."""

    _interned: dict[tuple[str, str], Global] = {}

    def __new__(cls, module: str, name: str) -> Global:
        key = (module, name)
        if key not in cls._interned:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._interned[key] = obj
        return cls._interned[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"test marker {self.module}.{self.name} must never be called")

    def __repr__(self) -> str:
        return f"Global({self.module!r}, {self.name!r})"


class Call:
    """Pickles as REDUCE(func, args) [+ BUILD(state)]: ``func`` is usually a :class:`Global`."""

    def __init__(self, func: Any, *args: Any, state: Any = None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple:
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # allowed as the func of a Call
        raise AssertionError("test marker must never be called")


class NewObj:
    """Pickles as ``cls() via NEWOBJ`` followed by BUILD(state) when state is not None."""

    def __init__(self, cls: Global, state: Any = None, args: tuple = ()):
        self.cls, self.state, self.args = cls, state, args


class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict`` (NEWOBJ + SETITEMS), like NVIDIA's EDM2 files."""


class Storage:
    """A torch storage: a 1-D array, pickled as a legacy blob or as a persistent id."""

    def __init__(self, data: np.ndarray, key: str | None = None):
        self.data = np.ascontiguousarray(np.asarray(data).reshape(-1))
        self.type_name = STORAGE_TYPES[self.data.dtype]
        self.key = key if key is not None else str(next(_keys))

    def __reduce__(self) -> tuple:  # only reached for NVIDIA pickles (no persistent ids)
        return (Global("torch.storage", "_load_from_bytes"), (legacy_storage_blob(self),))


class Tensor:
    """A strided tensor view of a :class:`Storage`; ``parameter`` wraps it like nn.Parameter."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple, parameter=False):
        self.storage, self.offset = storage, offset
        self.size, self.stride, self.parameter = tuple(size), tuple(stride), parameter
        self._plain: Tensor | None = None

    @classmethod
    def of(cls, array: np.ndarray, parameter: bool = False) -> Tensor:
        """A contiguous tensor holding ``array``."""
        a = np.array(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        stride = tuple(s // a.itemsize for s in a.strides) if a.size else (1,) * a.ndim
        return cls(Storage(a), 0, a.shape, stride, parameter)

    def __reduce__(self) -> tuple:
        if self.parameter:
            if self._plain is None:
                self._plain = Tensor(self.storage, self.offset, self.size, self.stride)
            return (
                Global("torch._utils", "_rebuild_parameter"),
                (self._plain, True, collections.OrderedDict()),
            )
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (Global("torch._utils", "_rebuild_tensor_v2"), args)


class Module:
    """An ``nn.Module`` as NVIDIA pickles it (a persistence object, or a container via NEWOBJ)."""

    def __init__(
        self,
        class_name: str,
        params: dict | None = None,
        buffers: dict | None = None,
        children: dict | None = None,
        attrs: dict | None = None,
        init_kwargs: dict | None = None,
        non_persistent: set | None = None,
        module_src: str = "# module source removed\n",
    ):
        self.class_name = class_name
        self.params, self.buffers = params or {}, buffers or {}
        self.children, self.attrs = children or {}, attrs or {}
        self.init_kwargs, self.non_persistent = init_kwargs, non_persistent or set()
        self.module_src = module_src

    def torch_state(self) -> dict:
        hooks = (
            "_backward_pre_hooks _backward_hooks _forward_hooks _forward_hooks_with_kwargs "
            "_forward_hooks_always_called _forward_pre_hooks _forward_pre_hooks_with_kwargs "
            "_state_dict_hooks _state_dict_pre_hooks _load_state_dict_pre_hooks "
            "_load_state_dict_post_hooks"
        ).split()
        state: dict[str, Any] = {
            "training": False,
            "_parameters": dict(self.params),
            "_buffers": dict(self.buffers),
            "_non_persistent_buffers_set": set(self.non_persistent),
        }
        state.update({h: collections.OrderedDict() for h in hooks})
        state["_is_full_backward_hook"] = None
        state["_modules"] = dict(self.children)
        state.update(self.attrs)
        if self.init_kwargs is not None:
            state["_init_args"] = ()
            state["_init_kwargs"] = self.init_kwargs
        return state

    def __reduce__(self) -> tuple:
        return persistent_reduce(self.class_name, self.torch_state(), self.module_src)


def persistent_reduce(class_name: str, state: Any, module_src: str = "# removed\n") -> tuple:
    meta = {
        "type": "class",
        "version": 6,
        "module_src": module_src,
        "class_name": class_name,
        "state": state,
    }
    return (Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


class Persistent:
    """A non-module ``torch_utils.persistence`` object (EDMLoss, StabilityVAEEncoder, ...)."""

    def __init__(self, class_name: str, state: dict, module_src: str = "# removed\n"):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self) -> tuple:
        return persistent_reduce(self.class_name, self.state, self.module_src)


def container(kind: str, children: dict) -> NewObj:
    """A ``torch.nn.ModuleDict`` (or ModuleList/Sequential) as NVIDIA pickles emit it."""
    state = Module(kind, children=children).torch_state()
    return NewObj(Global("torch.nn.modules.container", kind), state)


# --------------------------------------------------------------------------------------------
# The pickler.


class Pickler(pickle._Pickler):
    """Pure-Python pickler that writes :class:`Global` markers as literal globals.

    ``storage_ids``: None (storages pickle as legacy blobs, NVIDIA style), 5 (torch zip
    persistent ids) or 6 (legacy torch.save persistent ids).
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, protocol=4, storage_ids=None, global_opcode=False):
        super().__init__(file, protocol)
        self.storage_ids = storage_ids
        self.global_opcode = global_opcode
        self.storages: dict[str, Storage] = {}  # key -> storage, in first-use order
        self._zip_keys: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, Storage) or self.storage_ids is None:
            return None
        stype = Global("torch", obj.type_name)
        if self.storage_ids == 5:  # zip archives number storages "0", "1", ...
            key = self._zip_keys.setdefault(id(obj), str(len(self._zip_keys)))
            self.storages.setdefault(key, obj)
            return ("storage", stype, key, "cpu", obj.data.size)
        self.storages.setdefault(obj.key, obj)
        return ("storage", stype, obj.key, "cpu", obj.data.size, None)

    def _save_global_marker(self, obj: Global) -> None:
        if self.proto >= 4 and not self.global_opcode:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_newobj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(obj.args)
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def _save_easydict(self, obj: EasyDict) -> None:
        self.save(Global("dnnlib.util", "EasyDict"))
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        self.memoize(obj)
        self._batch_setitems(iter(obj.items()))

    dispatch[Global] = _save_global_marker
    dispatch[NewObj] = _save_newobj
    dispatch[EasyDict] = _save_easydict


def dumps(obj: Any, protocol: int = 4, global_opcode: bool = False) -> bytes:
    """Pickle ``obj`` NVIDIA-style (storages as embedded legacy blobs)."""
    buf = io.BytesIO()
    Pickler(buf, protocol, None, global_opcode).dump(obj)
    return buf.getvalue()


def legacy_storage_blob(storage: Storage) -> bytes:
    """``torch.storage._load_from_bytes`` input: a legacy torch.save of one storage."""
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO):
        pickle.dump(header, out, protocol=2)
    Pickler(out, 2, storage_ids=6).dump(storage)
    pickle.dump([storage.key], out, protocol=2)
    out.write(struct.pack("<q", storage.data.size))
    out.write(storage.data.tobytes())
    return out.getvalue()


def write_nvidia_pickle(path: os.PathLike | str, top: Any, protocol: int = 4) -> None:
    with open(path, "wb") as f:
        f.write(dumps(top, protocol))


def torch_zip_bytes(
    obj: Any,
    archive: str = "archive",
    extra: dict | None = None,
    compression: int = zipfile.ZIP_STORED,
    data_pkl: bytes | None = None,
) -> bytes:
    """A ``torch.save`` zip archive of ``obj`` (stored entries, like torch writes).

    ``extra`` adds members verbatim; ``data_pkl`` replaces the pickle (for malicious tests).
    """
    pkl = io.BytesIO()
    p = Pickler(pkl, 2, storage_ids=5)
    p.dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        z.writestr(f"{archive}/data.pkl", pkl.getvalue() if data_pkl is None else data_pkl)
        z.writestr(f"{archive}/byteorder", b"little")
        for key, st in p.storages.items():
            z.writestr(f"{archive}/data/{key}", st.data.tobytes())
        z.writestr(f"{archive}/version", b"3\n")
        z.writestr(f"{archive}/.data/serialization_id", b"0123456789")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return out.getvalue()


def torch_legacy_bytes(obj: Any, main_pickle: bytes | None = None) -> bytes:
    """A legacy (non-zip) ``torch.save`` file of ``obj``; ``main_pickle`` overrides its pickle."""
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO):
        pickle.dump(header, out, protocol=2)
    pkl = io.BytesIO()
    p = Pickler(pkl, 2, storage_ids=6)
    p.dump(obj)
    out.write(main_pickle if main_pickle is not None else pkl.getvalue())
    keys = sorted(p.storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        data = p.storages[key].data
        out.write(struct.pack("<q", data.size))
        out.write(data.tobytes())
    return out.getvalue()


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict | None = None) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    chunks, offset = [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


# --------------------------------------------------------------------------------------------
# Hostile files (tests/test_hostile_files.py, benchmarks/hostile_files.py): the attacks of
# issue 17, built from raw opcodes and raw zip records, plus a seeded mutation fuzzer.


def deep_tuple(depth: int) -> bytes:
    """Opcodes pushing ``((((),),),...)`` nested ``depth`` deep (one byte per level)."""
    return pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth


def deep_tuple_pickle(use: str, depth: int = 300_000) -> bytes:
    """A pickle that hashes a ``depth``-deep tuple: as a dict key (SETITEM or DICT), in
    ``builtins.set``, in FROZENSET or ADDITEMS. CPython's tuple hash recurses without a guard."""
    deep = deep_tuple(depth)
    if use == "setitem":
        return b"\x80\x02}" + deep + b"Ns."
    if use == "dict":
        return b"\x80\x02(" + deep + b"Nd."
    if use == "set":
        return b"\x80\x02cbuiltins\nset\n]" + deep + b"a\x85R."
    if use == "frozenset":
        return b"\x80\x04(" + deep + b"\x91."
    if use == "additems":
        return b"\x80\x04\x8f(" + deep + b"\x90."
    raise ValueError(use)


def append_setitem(valid: bytes, key: bytes, value: bytes) -> bytes:
    """``valid`` (a pickle of a dict) with one more SETITEM before its STOP: ``key`` and
    ``value`` are opcodes pushing one object each."""
    assert valid.endswith(pickle.STOP)
    return valid[:-1] + key + value + pickle.SETITEM + pickle.STOP


def shared_levels(levels: int, fanout: int, container: bytes) -> bytes:
    """Opcodes pushing a container holding the previous one ``fanout`` times, ``levels`` times
    over, starting from an empty one: ~(3 + 2*fanout) bytes per level, fanout**levels leaves
    when expanded ("billion laughs"). ``container`` is LIST or TUPLE."""
    out = pickle.EMPTY_LIST if container == pickle.LIST else pickle.EMPTY_TUPLE
    for _ in range(levels):
        out += b"q\x00" + pickle.POP + pickle.MARK + b"h\x00" * fanout + container
    return out


def binunicode(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def laughs_pickle(valid: bytes, key: str = "dataset_kwargs", levels: int = 40) -> bytes:
    """``valid`` with ``key`` set to a 40-level list holding the previous level 10 times."""
    return append_setitem(valid, binunicode(key), shared_levels(levels, 10, pickle.LIST))


def tuple_hash_bomb(levels: int = 40) -> bytes:
    """A dict keyed by a tuple of 10 references to a tuple of 10 ... (10**40 to hash)."""
    return b"\x80\x02}" + shared_levels(levels, 10, pickle.TUPLE) + b"Ns."


def empty_set_bomb(count: int = 20_000_000) -> bytes:
    """``PROTO 4, MARK, EMPTY_SET x count, LIST, STOP``: ~230 bytes of sets per file byte."""
    return b"\x80\x04(" + pickle.EMPTY_SET * count + b"l."


def set_copy_bomb(elements: int = 100_000, calls: int = 10_000) -> bytes:
    """``set(L)`` called ``calls`` times on one memoised list of ``elements`` distinct ints, the
    sets kept on the stack (~4 MB each for 6 bytes of pickle)."""
    body = b"\x80\x02cbuiltins\nset\nq\x01](" + b"".join(
        b"J" + struct.pack("<i", i) for i in range(elements)
    )
    body += b"eq\x020"
    body += (b"h\x01h\x02\x85R") * calls
    return body + b"N."


def raw_zip(members: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip from raw records ``(name, method, stored bytes, crc, uncompressed size)``: members
    whose compressed bytes are made once and repeated (zipfile would compress each again)."""
    out = io.BytesIO()
    central = []
    for name, method, stored, crc, size in members:
        offset = out.tell()
        raw_name = name.encode()
        fields = (20, 0, method, 0, 0x21, crc, len(stored), size, len(raw_name), 0)
        out.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields) + raw_name + stored)
        head = (20, 20, 0, method, 0, 0x21, crc, len(stored), size, len(raw_name), 0, 0, 0, 0)
        central.append(
            b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", *head, 0, offset) + raw_name
        )
    start = out.tell()
    cd = b"".join(central)
    out.write(cd)
    n = len(members)
    out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, n, n, len(cd), start, 0))
    return out.getvalue()


def zip_bomb(method: int, members: int = 100, member_bytes: int = 64 * 2**20) -> bytes:
    """A torch zip whose ``members`` storages are ``member_bytes`` of zeros each, compressed
    with ``method`` (zipfile.ZIP_BZIP2 or ZIP_DEFLATED) once and stored ``members`` times."""
    import bz2
    import zlib

    zeros = bytes(2**20)
    crc = 0
    for _ in range(member_bytes // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    if method == zipfile.ZIP_BZIP2:
        comp = bz2.BZ2Compressor(9)
    else:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = b"".join(comp.compress(zeros) for _ in range(member_bytes // len(zeros)))
    stored += comp.flush()
    numel = member_bytes // 4
    state = {}
    for i in range(members):
        st = Storage(np.zeros(1, np.float32))
        st.data = np.broadcast_to(np.zeros(1, np.float32), (numel,))  # no memory; size numel
        state[f"w{i}"] = Tensor(st, 0, (numel,), (1,))
    pkl = io.BytesIO()
    Pickler(pkl, 2, storage_ids=5).dump(state)
    records = [("archive/data.pkl", 0, pkl.getvalue()), ("archive/byteorder", 0, b"little")]
    out = [(n, m, d, zlib.crc32(d), len(d)) for n, m, d in records]
    out += [(f"archive/data/{i}", method, stored, crc, member_bytes) for i in range(members)]
    return raw_zip(out)


def safetensors_header_bomb(size: int = 100 * 2**20) -> bytes:
    """A safetensors file whose header is ``size`` bytes of ``{"x": [{}, {}, ...]}``."""
    head = b'{"x":['
    tail = b"{}]}"
    count = (size - len(head) - len(tail)) // 3
    text = head + b"{}," * count + tail
    text += b" " * (size - len(text))
    return struct.pack("<Q", len(text)) + text


def safetensors_overlap_bomb(entries: int = 100_000, nbytes: int = 2**20) -> bytes:
    """``entries`` tensors all pointing at the same ``nbytes`` of data (copied once each)."""
    spec = {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}
    text = json.dumps({f"t{i}": spec for i in range(entries)}).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(nbytes)


# ---- the fuzzer --------------------------------------------------------------------------------

# Opcodes worth splicing in: containers, memo, marks, calls, frames, long lengths.
_SPLICE = [
    b")\x85" * 50,
    b"\x8f" * 64,
    b"(" * 32,
    b"]",
    b"}",
    b"q\x00h\x00h\x00",
    b"\x94",
    b"R",
    b"b",
    b"s",
    b"u",
    b"a",
    b"e",
    b"\x90",
    b"\x91",
    b"t",
    b"0",
    b"2",
    b"1",
    b"\x95" + struct.pack("<Q", 2**40),
    b"\x8e" + struct.pack("<Q", 2**33),
    b"r" + struct.pack("<I", 2**31 - 1),
    b"cbuiltins\nset\n",
    b"cos\nsystem\n",
    b"\x81",
    b"\x92",
]
_INTS = [0, 1, 2**7, 2**8 - 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1]


def mutate(data: bytes, rng) -> bytes:
    """One to four random edits of ``data``: flips, interesting bytes and integers, spliced
    opcodes, deleted/duplicated spans, truncation. ``rng`` is a ``random.Random``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf += bytes([rng.randrange(256)])
        op = rng.randrange(8)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(_INTS) % (1 << (8 * width))
            buf[i : i + width] = value.to_bytes(width, "little")
        elif op == 3:
            buf[i:i] = rng.choice(_SPLICE)
        elif op == 4:
            del buf[i : i + rng.randint(1, 64)]
        elif op == 5:
            j = rng.randrange(len(buf))
            buf[j:j] = buf[i : i + rng.randint(1, 256)] * rng.randint(1, 8)
        elif op == 6:
            del buf[i:]
        else:
            buf[i : i + 1] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def mutate_zip(data: bytes, rng) -> bytes:
    """A torch zip with one member (the pickle mostly) mutated and the archive rewritten, so
    CRCs stay valid and the mutation reaches the unpickler; members may get compressed."""
    import zlib

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    k = next((j for j, (n, _) in enumerate(members) if n.endswith("data.pkl")), 0)
    if rng.random() > 0.7:
        k = rng.randrange(len(members))
    members[k] = (members[k][0], mutate(members[k][1], rng))
    records = []
    for name, raw in members:
        method = rng.choice([zipfile.ZIP_STORED] * 3 + [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
        if method == zipfile.ZIP_DEFLATED:
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            stored = comp.compress(raw) + comp.flush()
        elif method == zipfile.ZIP_BZIP2:
            import bz2

            stored = bz2.compress(raw)
        else:
            stored = raw
        records.append((name, method, stored, zlib.crc32(raw), len(raw)))
    return raw_zip(records)


def fuzz_seeds(marker: str) -> dict[str, tuple[str, bytes]]:
    """Small valid (and two malicious) files the fuzzer mutates: ``{name: (format, bytes)}``.
    The malicious ones would create ``marker`` if any of their code ran."""
    rng = np.random.default_rng(0)

    def t(*shape, dtype=np.float32):
        return Tensor.of(rng.standard_normal(shape).astype(dtype), parameter=True)

    conv = Module("Conv2d", params={"weight": t(2, 1, 3, 3), "bias": t(2)})
    lin = Module("Linear", params={"weight": t(3, 2)}, buffers={"b": t(3, dtype=np.float16)})
    seq = container("ModuleList", {"0": conv, "1": lin})
    net = Module(
        "EDMPrecond",
        children={"model": seq},
        init_kwargs={"img_resolution": 8, "channels": [1, 2], "label_dim": 0},
    )
    top = {"ema": net, "loss_fn": Persistent("EDMLoss", {"P_mean": -1.2}), "step": 7}
    sd = {"a.weight": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.int64)}
    tensors = {k: Tensor.of(v) for k, v in sd.items()}
    evil = Call(Global("os", "system"), f"touch {marker}")
    evil_exec = Call(Global("builtins", "exec"), f"open({marker!r}, 'w').close()")
    return {
        "nvidia_p4": ("pickle", dumps(top, 4)),
        "nvidia_p2": ("pickle", dumps(top, 2)),
        "evil_system": ("pickle", dumps({"ema": net, "x": evil}, 4)),
        "evil_exec_p2": ("pickle", dumps({"x": evil_exec}, 2, global_opcode=True)),
        "legacy": ("pickle", torch_legacy_bytes(collections.OrderedDict(tensors))),
        "zip": ("zip", torch_zip_bytes(collections.OrderedDict(tensors))),
        "zip_evil": ("zip", torch_zip_bytes({"x": evil, **tensors})),
        "safetensors": ("safetensors", safetensors_bytes(sd, {"k": "v"})),
    }


def fuzz_case(seeds: dict, index: int, seed: int, rng_factory) -> tuple[str, str, bytes]:
    """Mutation ``index`` of run ``seed``: (seed file name, its format, mutated bytes). The
    same arguments always give the same bytes. ``rng_factory`` is ``random.Random``."""
    rng = rng_factory(f"hostile-{seed}-{index}")
    name = rng.choice(sorted(seeds))
    fmt, data = seeds[name]
    if fmt == "zip" and rng.random() < 0.7:
        return name, fmt, mutate_zip(data, rng)
    if fmt == "safetensors" and rng.random() < 0.7:
        n = struct.unpack_from("<Q", data)[0]  # mutate inside the header mostly
        return name, fmt, data[:8] + mutate(data[8 : 8 + n], rng) + data[8 + n :]
    return name, fmt, mutate(data, rng)
