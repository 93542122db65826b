"""Torch-free, code-free reader for EDM/EDM2 checkpoints.

Reads four formats into a NumPy state dict with torch's key names, key order, layouts and dtypes:

* ``nvidia-pickle``: NVIDIA's network pickles (``network-snapshot-*.pkl``; plain ``pickle.dump``
  of a dict/EasyDict holding ``torch_utils.persistence`` objects, one legacy ``torch.save`` blob
  per storage).
* ``torch-zip``: ``torch.save`` zip archives (``.pt``/``.pth``/``.bin``) holding a state dict.
* ``torch-legacy``: pre-1.6 ``torch.save`` files (``_use_new_zipfile_serialization=False``).
* ``safetensors``.

Safety model: pickles are read with :class:`aid_jax.backbones.torch_archive.RestrictedUnpickler`
(pickle's pure-Python ``Unpickler`` whose ``find_class`` consults an exact ``(module, name)``
allowlist and returns inert stand-ins); nothing named in the file is ever imported, and nothing it
names outside the allowlist is ever called. Everything the stand-ins receive is validated (types,
ranges, buffer bounds) before it is used, so a corrupt file raises :class:`CheckpointError` instead
of reading stray memory. The allowlists of this module add to ``torch_archive``'s tensor and NumPy
stand-ins only what NVIDIA pickles and state dicts need. The embedded ``module_src`` of NVIDIA's
persistence wrapper is never read, let alone executed. The formats are described in
``docs/EDM_REFERENCE.md`` §8.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from aid_jax.backbones import torch_archive as ta
from aid_jax.backbones.torch_archive import CheckpointError, UnsafeCheckpointError

__all__ = ["CheckpointError", "LoadedCheckpoint", "UnsafeCheckpointError", "read_checkpoint"]

_EXPECTED = (
    "expected an NVIDIA EDM/EDM2 network pickle (.pkl), a torch.save file of a state dict "
    "(.pt/.pth/.bin, zip or legacy format) or a .safetensors file"
)


@dataclasses.dataclass(repr=False)
class LoadedCheckpoint:
    """Result of :func:`read_checkpoint`; arrays are in torch layouts (NCHW/OIHW)."""

    path: str
    format: str
    state: collections.OrderedDict[str, np.ndarray]
    class_name: str | None = None
    init_kwargs: dict | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # the default repr would print every array
        n = sum(int(v.size) for v in self.state.values())
        return (
            f"LoadedCheckpoint(path={self.path!r}, format={self.format!r}, "
            f"class_name={self.class_name!r}, tensors={len(self.state)}, elements={n})"
        )


# --------------------------------------------------------------------------------------------
# Constants of the torch formats.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # = 119547037146038801333356
_LEGACY_PROTOCOL = 1001
# LONG1 encoding of the magic number; a legacy torch.save file starts with a pickle of it.
_LEGACY_MAGIC_OPCODES = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# Limits of this reader (with torch_archive's MAX_*/..._BUDGET_* limits, listed in
# docs/ARCHITECTURE.md); exceeding one raises CheckpointError naming the limit and the file.
MAX_SAFETENSORS_HEADER = 100 * 2**20  # bytes; the reference implementation's own limit
# JSON tokens (strings, commas, colons, brackets) of a safetensors header, counted by a scan
# that stops at the limit before the header is parsed: a legitimate header has ~15 per tensor,
# while 100 MiB of "{}," would make ~30 million Python objects (~2.8 GB).
MAX_SAFETENSORS_HEADER_TOKENS = 2_000_000
MAX_SAFETENSORS_HEADER_DEPTH = 3  # {name: {"shape": [...]}}: the format's own nesting
_SAFETENSORS_MAX_HEADER = MAX_SAFETENSORS_HEADER
# A string (possessive: no backtracking; an unterminated one runs to the end) or a structural
# character.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|[\[\]{},:]', re.DOTALL)

# Keys under which torch checkpoints commonly nest their state dict.
_STATE_DICT_KEYS = ("state_dict", "ema", "model", "net")
_MAX_DEPTH = 200  # nesting limit for converting pickled data to plain Python
_MAX_MODULE_VISITS = 50_000  # EDM/EDM2 networks have a few hundred modules
_BLOB_HEADER_MAX = 4096  # a legacy storage blob's five header pickles take ~300 bytes


# --------------------------------------------------------------------------------------------
# Inert stand-ins for the globals of NVIDIA pickles (tensors, storages and NumPy arrays are
# torch_archive's). BUILD (``__setstate__``) is refused wherever the real format never uses it.


class _PersistentObj(ta.Inert):
    """Stand-in for an object of a ``torch_utils.persistence`` class: its name and __dict__."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: Any):
        self.class_name = class_name
        self.state = state


# Torch container modules (ModuleDict etc.), created by NEWOBJ + BUILD; named as torch does in
# state-dict module listings ("ModuleDict").
_MODULE_STUBS = {
    name: ta.ModuleRecord.subclass(name) for name in ("ModuleDict", "ModuleList", "Sequential")
}


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (no attribute magic, no __dict__)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if state:
            raise CheckpointError("unexpected BUILD state for dnnlib.util.EasyDict")


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol-2 pickles encode bytes objects as _codecs.encode(text, 'latin1'); nothing else.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafeCheckpointError("_codecs.encode refused: only (str, 'latin1') is allowed")
    return obj.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    # Protocol-2 pickles write b"" as bytes(); any argument (bytes(2**40)!) is refused.
    if args:
        raise CheckpointError("bytes() with arguments is not allowed")
    return b""


def _make_set(items: Any = ()) -> set:
    return set(_check_iterable(items))


def _make_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_check_iterable(items))


def _check_iterable(items: Any) -> Any:
    if not isinstance(items, list | tuple | set | frozenset):
        raise CheckpointError("set() argument must be a list")
    return items


def _reconstruct_persistent_obj(meta: Any) -> _PersistentObj:
    # meta['module_src'] is deliberately never looked at: NVIDIA's own loader exec()s it.
    if not isinstance(meta, dict) or dict.get(meta, "type") != "class":
        raise CheckpointError("malformed torch_utils.persistence object (expected type 'class')")
    class_name = dict.get(meta, "class_name")
    if not isinstance(class_name, str):
        raise CheckpointError("torch_utils.persistence object without a class_name")
    return _PersistentObj(class_name, dict.get(meta, "state"))


def _common_globals() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): ta.rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): ta.rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): ta.rebuild_parameter,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): _make_set,
        ("builtins", "frozenset"): _make_frozenset,
        ("__builtin__", "set"): _make_set,
        ("__builtin__", "frozenset"): _make_frozenset,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("dnnlib.util", "EasyDict"): _EasyDict,
    }
    out.update(ta.numpy_globals())
    return out


_BYTES = (bytes, bytearray, memoryview)


# --------------------------------------------------------------------------------------------
# The reader.


class _Reader(ta.UntrustedFile):
    """The file's bytes plus the checkpoint formats (tensors: :class:`ta.UntrustedFile`)."""

    def __init__(self, path: str, data: bytes):
        super().__init__(path, data)
        self.plain_memo: dict[int, Any] = {}
        self.plain_active: set[int] = set()

    def release(self) -> None:
        super().release()
        self.plain_memo.clear()

    # ---- pickles ------------------------------------------------------------------------------

    def load_plain(self, f: ta.ViewFile | io.BytesIO, context: str) -> Any:
        """Unpickle one small pickle that may reference no globals at all."""
        return ta.RestrictedUnpickler(f, self.path, context, {}, budget=self.pickle_budget).load()

    def load_from_bytes(self, blob: Any) -> ta.Storage:
        """Stand-in for ``torch.storage._load_from_bytes``: parse one legacy storage blob."""
        if not isinstance(blob, _BYTES):
            raise self.error("torch.storage._load_from_bytes expects a bytes argument")
        ctx = "legacy storage blob"
        # The five header pickles take ~300 bytes; parse them from a small copy with C-level
        # reads (much faster than a Python file object), the data stays a view of the file.
        head = bytes(blob[:_BLOB_HEADER_MAX])
        f = io.BytesIO(head)
        if self.load_plain(f, ctx) != _LEGACY_MAGIC:
            raise self.error(f"{ctx} does not start with torch's magic number")
        if self.load_plain(f, ctx) != _LEGACY_PROTOCOL:
            raise self.error(f"{ctx} has an unsupported protocol version (expected 1001)")
        self.check_sys_info(self.load_plain(f, ctx), ctx)
        declared: list[ta.Storage] = []

        def persistent(pid: Any) -> ta.Storage:
            ta.parse_storage_pid(pid, 6, self.path, ctx)
            if declared:
                raise self.error(f"{ctx} declares more than one storage")
            st = ta.Storage(pid[1].dtype, pid[4], pid[2])
            declared.append(st)
            return st

        st = ta.RestrictedUnpickler(
            f, self.path, ctx, ta.storage_type_globals(), persistent, budget=self.pickle_budget
        ).load()
        if not isinstance(st, ta.Storage):
            raise self.error(f"{ctx} does not contain a storage")
        if self.load_plain(f, ctx) != [st.key]:
            raise self.error(f"{ctx} key list does not match its storage key {st.key!r}")
        pos = f.tell()
        if pos + 8 > len(blob):
            raise self.error(f"{ctx} is truncated before its element count")
        if pos >= len(head) and len(head) < len(blob):
            raise self.error(f"{ctx} header is longer than {_BLOB_HEADER_MAX} bytes; corrupt")
        numel = int.from_bytes(blob[pos : pos + 8], "little", signed=True)
        if numel != st.numel:
            raise self.error(f"{ctx} holds {numel} elements but declares {st.numel}")
        if pos + 8 + numel * st.dtype.itemsize != len(blob):
            raise self.error(
                f"{ctx} has {len(blob) - pos - 8} data bytes, expected "
                f"{numel * st.dtype.itemsize} ({numel} x {st.dtype})"
            )
        st.array = self.frombuffer(blob, st.dtype, numel, pos + 8)
        return st

    def check_sys_info(self, info: Any, ctx: str) -> None:
        if not isinstance(info, dict) or dict.get(info, "protocol_version") != _LEGACY_PROTOCOL:
            raise self.error(f"{ctx} has malformed system info {ta.brief(info)}")
        if dict.get(info, "little_endian") is not True:
            raise self.error(f"{ctx} was written on a big-endian machine; not supported")

    def scan_header(self, raw: bytes) -> None:
        """Count a safetensors header's JSON tokens and nesting before it is parsed (the scan
        stops at the limits, so it costs little on a hostile header)."""
        depth = 0
        for count, m in enumerate(_JSON_TOKEN.finditer(raw), 1):
            if count > MAX_SAFETENSORS_HEADER_TOKENS:
                raise _scan_limit(
                    self.path,
                    "the number of JSON tokens in the safetensors header",
                    f"MAX_SAFETENSORS_HEADER_TOKENS = {MAX_SAFETENSORS_HEADER_TOKENS:,}",
                )
            c = raw[m.start()]
            if c in b"[{":
                depth += 1
                if depth > MAX_SAFETENSORS_HEADER_DEPTH:
                    raise _scan_limit(
                        self.path,
                        "the nesting of the safetensors header",
                        f"MAX_SAFETENSORS_HEADER_DEPTH = {MAX_SAFETENSORS_HEADER_DEPTH}",
                    )
            elif c in b"]}":
                depth -= 1

    # ---- conversion to plain Python ---------------------------------------------------------

    def plain(self, obj: Any, depth: int = 0) -> Any:
        """Convert unpickled data to dict/list/int/float/str/bool/None (+ ndarray/bytes)."""
        if depth > _MAX_DEPTH:
            raise self.error("data nested too deeply")
        if isinstance(obj, np.generic):
            return obj.item()
        if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
            return obj
        if isinstance(obj, memoryview | bytearray):  # large pickled bytes are file views
            return bytes(obj)
        if isinstance(obj, np.ndarray):
            return obj
        if isinstance(obj, ta.PickledArray):
            return obj.resolve()
        if isinstance(obj, ta.PickledDType):
            return str(obj.resolve())
        if isinstance(obj, ta.TensorRef):
            return self.materialize(obj)
        if isinstance(obj, ta.StorageType):
            return f"torch.{obj.name}"
        if isinstance(obj, ta.ModuleRecord):
            return {"class_name": obj.qualified_name}
        if not isinstance(obj, _PersistentObj | dict | list | tuple | set | frozenset):
            raise self.error(f"unexpected object of type {type(obj).__name__} in the checkpoint")
        # Pickles can share one container many times (exponential if expanded naively) or
        # make it contain itself: convert each container once, and cut cycles with None.
        key = id(obj)
        if key in self.plain_memo:
            return self.plain_memo[key]
        if key in self.plain_active:
            return None
        self.plain_active.add(key)
        try:
            if isinstance(obj, _PersistentObj):
                out = self.describe(obj, depth)
            elif isinstance(obj, dict):
                out = {self.plain_key(k): self.plain(v, depth + 1) for k, v in dict.items(obj)}
            else:
                out = [self.plain(v, depth + 1) for v in obj]
        finally:
            self.plain_active.discard(key)
        self.plain_memo[key] = out
        return out

    def plain_key(self, k: Any) -> Any:
        if k is None or isinstance(k, bool | int | float | str):
            return k
        if isinstance(k, np.generic):
            return k.item()
        return ta.brief(k)  # (tuple keys too: converting shared tuples could blow up)

    def describe(self, obj: _PersistentObj, depth: int = 0) -> dict:
        """A persistent object as {'class_name', public attributes..., 'init_kwargs'}."""
        out: dict[str, Any] = {"class_name": obj.class_name}
        state = obj.state
        if not isinstance(state, dict):
            return out
        for k, v in dict.items(state):
            if isinstance(k, str) and not k.startswith("_") and k != "training":
                if isinstance(v, _PersistentObj | ta.ModuleRecord):
                    continue  # sub-modules live in _modules and are described separately
                out[k] = self.plain(v, depth + 1)
        if "_init_kwargs" in state:
            out["init_kwargs"] = self.plain(state["_init_kwargs"], depth + 1)
        return out

    # ---- state dicts --------------------------------------------------------------------------

    def module_state_dict(
        self, root: Any
    ) -> tuple[collections.OrderedDict[str, np.ndarray], dict[str, dict]]:
        """Walk a module stub tree exactly like ``torch.nn.Module.state_dict()``."""
        state: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        modules: dict[str, dict] = {}

        visits = [0]

        def walk(mod: Any, prefix: str, depth: int) -> None:
            # A pickle can reference one child many times; torch would visit it each time, so
            # do the same, but cap the total so a crafted DAG cannot blow up exponentially.
            visits[0] += 1
            if depth > _MAX_DEPTH or visits[0] > _MAX_MODULE_VISITS:
                raise self.error("module tree nested too deeply or too large")
            st = getattr(mod, "state", None)
            if not isinstance(mod, _PersistentObj | ta.ModuleRecord) or not isinstance(st, dict):
                raise self.error(f"module {prefix or '<root>'!r} is not a torch module object")
            params, buffers, children = (
                dict.get(st, k) for k in ("_parameters", "_buffers", "_modules")
            )
            if not all(isinstance(x, dict) for x in (params, buffers, children)):
                raise self.error(
                    f"module {prefix or '<root>'!r} lacks _parameters/_buffers/_modules; "
                    "expected a torch.nn.Module"
                )
            skip = dict.get(st, "_non_persistent_buffers_set") or set()
            if not isinstance(skip, set | frozenset | list | tuple):
                raise self.error(f"module {prefix!r} has a malformed _non_persistent_buffers_set")
            cls = mod.class_name if isinstance(mod, _PersistentObj) else mod.qualified_name
            attrs: dict[str, Any] = {"class_name": cls}
            for k, v in dict.items(st):
                if isinstance(k, str) and not k.startswith("_") and k != "training":
                    if not isinstance(v, _PersistentObj | ta.ModuleRecord | ta.TensorRef):
                        attrs[k] = self.plain(v)
            modules[prefix[:-1]] = attrs
            for kind, items in (("parameter", params), ("buffer", buffers)):
                for name, t in dict.items(items):
                    if t is None or (kind == "buffer" and name in skip):
                        continue
                    if not isinstance(name, str) or not isinstance(t, ta.TensorRef):
                        raise self.error(f"{kind} {prefix}{name!s:.80} is not a tensor")
                    state[prefix + name] = self.materialize(t)
            for name, child in dict.items(children):
                if child is not None:
                    if not isinstance(name, str):
                        raise self.error(f"module {prefix!r} has a non-string child name")
                    walk(child, f"{prefix}{name}.", depth + 1)

        walk(root, "", 0)
        return state, modules

    def tensor_mapping(self, top: Any, network_key: str) -> tuple[Mapping, str | None] | None:
        """Locate a state dict (str -> tensor) at the top level or under a usual key."""

        def is_sd(x: Any) -> bool:
            return isinstance(x, dict) and all(
                isinstance(k, str) and isinstance(v, ta.TensorRef) for k, v in dict.items(x)
            )

        if is_sd(top):
            return top, None
        if isinstance(top, dict):
            for key in (network_key, *_STATE_DICT_KEYS):
                if key in top and is_sd(top[key]):
                    return top[key], key
        return None

    def state_from_mapping(self, sd: Mapping) -> collections.OrderedDict[str, np.ndarray]:
        return collections.OrderedDict((k, self.materialize(v)) for k, v in dict.items(sd))

    def extras_from_container(self, top: Any, used_key: str | None) -> dict:
        """Plain copies of a torch checkpoint's other top-level entries, tensors excluded."""
        extras: dict[str, Any] = {}
        if used_key is None or not isinstance(top, dict):
            return extras
        extras["state_dict_key"] = used_key
        skipped = []
        for k, v in dict.items(top):
            if k == used_key:
                continue
            if _contains_tensor(v):
                skipped.append(self.plain_key(k))  # e.g. optimizer state: not loaded
            else:
                extras[self.plain_key(k)] = self.plain(v)
        if skipped:
            extras["skipped_keys"] = skipped
        return extras

    def torch_result(self, top: Any, fmt: str, network_key: str) -> LoadedCheckpoint:
        found = self.tensor_mapping(top, network_key)
        if found is None:
            keys = list(dict.keys(top))[:20] if isinstance(top, dict) else type(top).__name__
            raise self.error(
                f"the {fmt} file does not hold a state dict (a mapping of names to tensors at "
                f"the top level or under one of {[network_key, *_STATE_DICT_KEYS]}); found "
                f"{ta.brief(keys)}. Whole-module saves are not supported: re-save with "
                "torch.save(model.state_dict(), path)."
            )
        sd, used = found
        state = self.state_from_mapping(sd)
        return LoadedCheckpoint(
            self.path, fmt, state, None, None, self.extras_from_container(top, used)
        )

    # ---- formats ------------------------------------------------------------------------------

    def read_nvidia_pickle(self, network_key: str) -> LoadedCheckpoint:
        allowed = _common_globals()
        allowed[("torch_utils.persistence", "_reconstruct_persistent_obj")] = (
            _reconstruct_persistent_obj
        )
        allowed[("torch.storage", "_load_from_bytes")] = self.load_from_bytes
        for name, stub in _MODULE_STUBS.items():
            allowed[("torch.nn.modules.container", name)] = stub
        f = ta.ViewFile(self.data)
        top = ta.RestrictedUnpickler(
            f, self.path, "pickle", allowed, budget=self.pickle_budget
        ).load()
        if f.tell() != len(self.data):
            raise self.error(
                f"{len(self.data) - f.tell()} unexpected bytes after the end of the pickle"
            )

        if isinstance(top, _PersistentObj):  # a network pickled on its own
            net, top = top, {network_key: top}
        elif isinstance(top, dict) and isinstance(dict.get(top, network_key), _PersistentObj):
            net = top[network_key]
        else:
            found = self.tensor_mapping(top, network_key)
            if found is not None:  # a plain pickle.dump of a state dict
                result = self.torch_result(top, "nvidia-pickle", network_key)
                return result
            keys = list(dict.keys(top))[:20] if isinstance(top, dict) else type(top).__name__
            raise self.error(
                f"expected an NVIDIA network pickle: a dict with key {network_key!r} holding a "
                f"torch_utils.persistence network object; found {ta.brief(keys)}. Pass "
                "network_key=... to pick another entry."
            )

        state, modules = self.module_state_dict(net)
        net_state = net.state if isinstance(net.state, dict) else {}
        init_kwargs = self.plain(dict.get(net_state, "_init_kwargs"))
        if not isinstance(init_kwargs, dict):  # absent: weights still load, config unknown
            init_kwargs = None
        extras: dict[str, Any] = {"network_key": network_key, "modules": modules}
        init_args = dict.get(net_state, "_init_args")
        if init_args:
            extras["init_args"] = self.plain(init_args)
        for k, v in dict.items(top):
            if k != network_key:
                extras[self.plain_key(k)] = self.plain(v)
        return LoadedCheckpoint(
            self.path, "nvidia-pickle", state, net.class_name, init_kwargs, extras
        )

    def read_torch_zip(self, network_key: str) -> LoadedCheckpoint:
        archive = ta.TorchZipArchive(self, kind="torch.save", expected=_EXPECTED)
        ctx = "torch.save archive (data.pkl)"
        allowed = _common_globals()
        allowed.update(ta.storage_type_globals())
        top = archive.unpickle("data.pkl", ctx, allowed, archive.storages(ctx))
        result = self.torch_result(top, "torch-zip", network_key)
        result.extras["archive_name"] = archive.prefix[:-1]
        if "version" in archive.members:
            version = bytes(archive.read("version"))
            result.extras["archive_version"] = version.decode("ascii", "replace").strip()
        return result

    def read_torch_legacy(self, network_key: str) -> LoadedCheckpoint:
        ctx = "legacy torch.save file"
        f = io.BytesIO(self.data)  # shares the bytes; storages follow the pickles, unread by it
        if self.load_plain(f, ctx) != _LEGACY_MAGIC:
            raise self.error(f"{ctx} does not start with torch's magic number")
        if self.load_plain(f, ctx) != _LEGACY_PROTOCOL:
            raise self.error(f"{ctx} has an unsupported protocol version (expected 1001)")
        self.check_sys_info(self.load_plain(f, ctx), ctx)
        storages = ta.StorageTable(self, ctx, pid_length=6)  # data follows the pickle
        allowed = _common_globals()
        allowed.update(ta.storage_type_globals())
        top = ta.RestrictedUnpickler(
            f, self.path, ctx, allowed, storages, budget=self.pickle_budget
        ).load()
        keys = self.load_plain(f, ctx)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise self.error(f"{ctx} has a malformed storage key list")
        if sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
            raise self.error(f"{ctx}: storage key list does not match the storages used")
        pos = f.tell()
        data = self.data
        for key in keys:
            st = storages[key]
            if pos + 8 > len(data):
                raise self.error(f"{ctx} is truncated in the data of storage {key!r}")
            numel = int.from_bytes(data[pos : pos + 8], "little", signed=True)
            nbytes = numel * st.dtype.itemsize
            if numel != st.numel or pos + 8 + nbytes > len(data):
                raise self.error(f"{ctx}: storage {key!r} is truncated or has a wrong size")
            st.array = self.frombuffer(data, st.dtype, numel, pos + 8)
            pos += 8 + nbytes
        if pos != len(data):
            raise self.error(f"{ctx} has {len(data) - pos} unexpected bytes at the end")
        return self.torch_result(top, "torch-legacy", network_key)

    def read_safetensors(self) -> LoadedCheckpoint:
        data = self.data
        if len(data) < 8:
            raise self.error("file is too short for a safetensors header")
        (n,) = struct.unpack_from("<Q", data, 0)
        if n > min(len(data) - 8, _SAFETENSORS_MAX_HEADER):
            raise self.error(
                f"safetensors header claims {n} bytes but the file has {len(data)} bytes "
                f"(limit {_SAFETENSORS_MAX_HEADER}); the file is truncated or not safetensors"
            )

        def no_duplicates(pairs: list) -> dict:
            d = dict(pairs)
            if len(d) != len(pairs):
                raise self.error("safetensors header has duplicate keys")
            return d

        raw = bytes(data[8 : 8 + n])
        self.scan_header(raw)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.error(f"safetensors header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise self.error("safetensors header must be a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise self.error("safetensors __metadata__ must map strings to strings")
        base = 8 + n
        buf_len = len(data) - base
        state: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        spans = []
        entries = []
        for name, info in header.items():
            if not isinstance(info, dict):
                raise self.error(f"safetensors entry {name!r:.80} is not an object")
            dt = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
            if dt is None:
                raise self.error(f"safetensors tensor {name!r:.80} has unsupported dtype")
            shape = ta.check_shape(info.get("shape"), f"safetensors shape of {name!r:.80}")
            offs = info.get("data_offsets")
            if not (isinstance(offs, list) and len(offs) == 2):
                raise self.error(f"safetensors tensor {name!r:.80} has malformed data_offsets")
            b = ta.check_int(offs[0], "data offset")
            e = ta.check_int(offs[1], "data offset")
            numel = math.prod(shape)
            if not b <= e <= buf_len or e - b != numel * dt.itemsize:
                raise self.error(
                    f"safetensors tensor {name!r:.80} has data_offsets [{b}, {e}] that do not "
                    f"fit shape {shape} x {dt} inside the {buf_len}-byte data buffer"
                )
            spans.append((b, e, name))
            entries.append((name, dt, shape, numel, b))
        spans.sort()
        for (_, e0, n0), (b1, _, n1) in itertools.pairwise(spans):
            if b1 < e0:  # (checked before copying: overlaps could copy one span many times)
                raise self.error(f"safetensors tensors {n0!r} and {n1!r} overlap")
        for name, dt, shape, numel, b in entries:
            arr = self.frombuffer(data, dt, numel, base + b)
            state[name] = np.array(arr.reshape(shape), order="C", copy=True)
        extras: dict[str, Any] = {"__metadata__": meta}
        return LoadedCheckpoint(self.path, "safetensors", state, None, None, extras)


def _scan_limit(path: str, what: str, limit: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {what} exceeds the reader's limit {limit}; the file is corrupt or hostile"
    )


def _contains_tensor(obj: Any, depth: int = 0, seen: set | None = None) -> bool:
    if isinstance(obj, ta.TensorRef):
        return True
    seen = set() if seen is None else seen
    if depth > _MAX_DEPTH or id(obj) in seen:  # shared containers are searched once
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        return any(_contains_tensor(v, depth + 1, seen) for v in dict.values(obj))
    if isinstance(obj, list | tuple):
        return any(_contains_tensor(v, depth + 1, seen) for v in obj)
    return False


# --------------------------------------------------------------------------------------------
# Entry point.


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; {_EXPECTED}. Check the path, or download the checkpoint "
            "first (NVIDIA's pickles are listed in the EDM/EDM2 READMEs)."
        ) from None
    except IsADirectoryError:
        raise CheckpointError(
            f"{path}: is a directory, not a checkpoint file; {_EXPECTED}. For a diffusers "
            "folder pass its diffusion_pytorch_model.safetensors."
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _sniff(path: str, data: bytes) -> str:
    """Decide the format from the bytes (never from the extension)."""
    if not data:
        raise CheckpointError(
            f"{path}: file is empty (0 bytes); {_EXPECTED}. The download or copy probably "
            "failed; fetch the file again."
        )
    if len(data) >= 10 and data[8:9] == b"{":
        (n,) = struct.unpack_from("<Q", data, 0)
        if n <= len(data) - 8 and data[8 + n - 1 : 8 + n] in (b"}", b" "):
            return "safetensors"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch-zip"
    if data[0] == 0x80:
        if len(data) < 2 or data[1] > 5:
            raise CheckpointError(
                f"{path}: unsupported pickle protocol {data[1] if len(data) > 1 else '?'} "
                f"(expected 0-5); {_EXPECTED}"
            )
        if _LEGACY_MAGIC_OPCODES in data[:32]:
            return "torch-legacy"
        return "nvidia-pickle"
    if data[:1] in (b"(", b"c", b"}", b"]", b")") and data.rstrip()[-1:] == b".":
        return "nvidia-pickle"  # protocol 0/1 pickle; the allowlist decides what it may hold
    if len(data) >= 9 and data[8:9] == b"{":
        return "safetensors"  # header length is off; read_safetensors explains
    known = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"\x1f\x8b": "gzip-compressed (decompress it first)",
        b"\x93NUMPY": "a NumPy .npy array (use numpy.load)",
        b"\x89HDF": "an HDF5 file",
        b"<": "an HTML/XML document (a failed download?)",
    }
    what = next((v for k, v in known.items() if data.startswith(k)), None)
    if what is None:
        try:
            data[:512].decode("utf-8")
            what = "a text file"
        except UnicodeDecodeError:
            what = f"of unknown format (starts with {data[:8]!r})"
    raise CheckpointError(f"{path}: the file is {what}, not a checkpoint; {_EXPECTED}.")


def read_checkpoint(path: str | os.PathLike, *, network_key: str = "ema") -> LoadedCheckpoint:
    """Read a checkpoint without torch and without running any code stored in it.

    Args:
      path: an NVIDIA network pickle, a ``torch.save`` file (zip or legacy) or a safetensors
        file; the format is sniffed from the bytes.
      network_key: for NVIDIA pickles the top-level entry holding the network (``'ema'``); for
        torch files tried before ``'state_dict'``, ``'ema'``, ``'model'``, ``'net'``.

    Returns:
      A :class:`LoadedCheckpoint` whose ``state`` has torch's keys, order, layouts and dtypes.

    Raises:
      UnsafeCheckpointError: the pickle references a global outside the allowlist.
      CheckpointError: the file is missing, of the wrong type, truncated or corrupt.
    """
    path = os.fsdecode(os.fspath(path))
    data = _read_bytes(path)
    fmt = _sniff(path, data)
    reader = _Reader(path, data)
    advice = f"; {_EXPECTED}. Re-download or re-export the file."
    with reader.parsing(f"{fmt} checkpoint", advice):  # errors name the file; frees the bytes
        if fmt == "safetensors":
            result = reader.read_safetensors()
        elif fmt == "torch-zip":
            result = reader.read_torch_zip(network_key)
        elif fmt == "torch-legacy":
            result = reader.read_torch_legacy(network_key)
        else:
            result = reader.read_nvidia_pickle(network_key)
    result.extras["sha256"] = hashlib.sha256(data).hexdigest()
    return result
