"""Torch-free, code-free reader for EDM/EDM2 checkpoints.

Reads four formats into a NumPy state dict with torch's key names, key order, layouts and dtypes:

* ``nvidia-pickle``: NVIDIA's network pickles (``network-snapshot-*.pkl``; plain ``pickle.dump``
  of a dict/EasyDict holding ``torch_utils.persistence`` objects, one legacy ``torch.save`` blob
  per storage).
* ``torch-zip``: ``torch.save`` zip archives (``.pt``/``.pth``/``.bin``) holding a state dict.
* ``torch-legacy``: pre-1.6 ``torch.save`` files (``_use_new_zipfile_serialization=False``).
* ``safetensors``.

Safety model: pickles are read with a subclass of pickle's (pure-Python) ``Unpickler`` whose
``find_class`` consults an exact ``(module, name)`` allowlist and returns inert stand-ins written
here; nothing named in the file is ever imported, and nothing it names outside the allowlist is
ever called. Everything the
stand-ins receive is validated (types, ranges, buffer bounds) before it is used, so a corrupt file
raises :class:`CheckpointError` instead of reading stray memory. The embedded ``module_src`` of
NVIDIA's persistence wrapper is never read, let alone executed. The formats are described in
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
import pickle
import re
import reprlib
import struct
import types
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "LoadedCheckpoint", "UnsafeCheckpointError", "read_checkpoint"]

_EXPECTED = (
    "expected an NVIDIA EDM/EDM2 network pickle (.pkl), a torch.save file of a state dict "
    "(.pt/.pth/.bin, zip or legacy format) or a .safetensors file"
)


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message names the file and what was expected."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A pickle referenced a global (or object kind) that is not on the allowlist."""


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

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}

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
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the reference implementation's own limit

# Keys under which torch checkpoints commonly nest their state dict.
_STATE_DICT_KEYS = ("state_dict", "ema", "model", "net")
_MAX_DEPTH = 200  # nesting limit for converting pickled data to plain Python
_MAX_MODULE_VISITS = 50_000  # EDM/EDM2 networks have a few hundred modules
_BLOB_HEADER_MAX = 4096  # a legacy storage blob's five header pickles take ~300 bytes


# --------------------------------------------------------------------------------------------
# Inert stand-ins for the allowlisted globals. None of them has behaviour beyond recording and
# validating data; BUILD (``__setstate__``) is refused wherever the real format never uses it.


class _Inert:
    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"unexpected BUILD of a {type(self).__name__} object")


class _StorageType(_Inert):
    """Stand-in for ``torch.<Type>Storage``: only carries the element dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError(f"storage type torch.{self.name} may only appear in a storage id")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage(_Inert):
    """One typed storage; ``array`` is a 1-D read-only view once its bytes are located."""

    __slots__ = ("dtype", "numel", "key", "array")

    def __init__(self, dtype: np.dtype, numel: int, key: str):
        self.dtype = dtype
        self.numel = numel
        self.key = key
        self.array: np.ndarray | None = None


class _TensorRef(_Inert):
    """A tensor as (storage, offset, size, stride); materialised into a copy after loading."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _PersistentObj(_Inert):
    """Stand-in for an object of a ``torch_utils.persistence`` class: its name and __dict__."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: Any):
        self.class_name = class_name
        self.state = state


class _ModuleStub:
    """Stand-in for torch container modules (ModuleDict etc.), created by NEWOBJ + BUILD."""

    __slots__ = ("state",)
    torch_class = "Module"

    def __new__(cls, *args: Any, **kwargs: Any):
        if args or kwargs:
            raise CheckpointError(f"unexpected constructor arguments for {cls.torch_class}")
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Pickle's INST/OBJ paths call the class; only argument-free construction is valid.
        if args or kwargs:
            raise CheckpointError(f"unexpected constructor arguments for {self.torch_class}")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or hasattr(self, "state"):
            raise CheckpointError(f"malformed state for {self.torch_class}")
        self.state = state


_MODULE_STUBS = {
    name: type(name, (_ModuleStub,), {"__slots__": (), "torch_class": name})
    for name in ("ModuleDict", "ModuleList", "Sequential")
}


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (no attribute magic, no __dict__)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if state:
            raise CheckpointError("unexpected BUILD state for dnnlib.util.EasyDict")


class _NDArrayMarker(_Inert):
    """Stand-in for the ``numpy.ndarray`` class; only valid as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError("numpy.ndarray may only be used through numpy _reconstruct")


_NDARRAY = _NDArrayMarker()
_DTYPE_SPEC = re.compile(r"[biufc][0-9]{1,2}\Z")


class _DType:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` + BUILD; only plain numeric dtypes.

    Object, structured, string and void dtypes are refused: a pickled object array carries
    arbitrary pickled objects, and structured dtypes can nest object fields.
    """

    __slots__ = ("spec", "order", "_built")

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = True):
        if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
            raise UnsafeCheckpointError(
                f"numpy.dtype({spec!r}) refused: only plain numeric dtypes are allowed "
                "(object/structured dtypes can smuggle pickled code)"
            )
        try:
            np.dtype(spec)
        except TypeError as e:
            raise CheckpointError(f"invalid numpy dtype {spec!r}") from e
        self.spec = spec
        self.order = "="
        self._built = False

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags[,
        # metadata]); every field beyond the byte order must be empty for a numeric dtype.
        ok = (
            not self._built
            and isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=")
            and state[2] is None
            and state[3] is None
            and state[4] is None
            and all(type(x) is int for x in state[5:8])
            and state[7] == 0
            and (len(state) == 8 or not state[8])
        )
        if not ok:
            raise UnsafeCheckpointError(
                f"numpy.dtype state {_brief(state)} refused: only plain numeric dtypes are allowed"
            )
        self.order = state[1]
        self._built = True

    def resolve(self) -> np.dtype:
        if not hasattr(self, "spec"):
            raise CheckpointError("numpy.dtype created without arguments")
        dt = np.dtype(self.spec)
        if self.order in "<>":
            dt = dt.newbyteorder(self.order)
        return dt


class _ArrayStub:
    """Stand-in for ``numpy._core.multiarray._reconstruct(ndarray, ...)`` + BUILD."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise CheckpointError("numpy array built twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise CheckpointError(f"malformed numpy array state {_brief(state)}")
        _, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _DType):
            raise UnsafeCheckpointError(
                "numpy array refused: its dtype is not a plain numeric numpy.dtype"
            )
        if not isinstance(raw, _BYTES):
            raise UnsafeCheckpointError(
                "numpy array refused: its data is not raw bytes (object arrays are not allowed)"
            )
        shape = _check_shape(shape, "numpy array shape")
        dt = dtype.resolve()
        n = math.prod(shape)
        if len(raw) != n * dt.itemsize:
            raise CheckpointError(
                f"numpy array data has {len(raw)} bytes, expected {n * dt.itemsize} for "
                f"shape {shape} and dtype {dt}"
            )
        flat = np.frombuffer(raw, dtype=dt, count=n) if n else np.zeros(0, dt)
        order = "F" if is_fortran else "C"
        self.array = np.array(flat.reshape(shape, order=order), order="C", copy=True)

    def resolve(self) -> np.ndarray:
        if self.array is None:
            raise CheckpointError("numpy array reconstructed without data")
        return self.array


def _np_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _ArrayStub:
    if cls is not _NDARRAY:
        raise UnsafeCheckpointError(
            "numpy _reconstruct refused: only plain numpy.ndarray may be reconstructed"
        )
    return _ArrayStub()


def _np_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, _DType):
        raise UnsafeCheckpointError("numpy scalar refused: dtype is not a plain numeric dtype")
    if not isinstance(data, _BYTES):
        raise UnsafeCheckpointError("numpy scalar refused: data is not raw bytes (object scalar)")
    dt = dtype.resolve()
    if len(data) != dt.itemsize:
        raise CheckpointError(f"numpy scalar of dtype {dt} has {len(data)} bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0].copy()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStub:
    # Protocol-5 pickles of arrays: numpy._core.numeric._frombuffer(bytes, dtype, shape, order).
    if not isinstance(dtype, _DType):
        raise UnsafeCheckpointError("numpy array refused: dtype is not a plain numeric dtype")
    if not isinstance(buf, _BYTES) or order not in ("C", "F"):
        raise CheckpointError("malformed protocol-5 numpy array")
    stub = _ArrayStub()
    stub.__setstate__((1, shape, dtype, order == "F", buf))
    return stub  # (a built stub refuses a second BUILD; a real ndarray would accept one)


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


class _BriefRepr(reprlib.Repr):
    """Bounded repr for error messages: depth 3, a few items per container.

    Plain ``repr`` is unsafe on unpickled data: a pickle can share one list exponentially
    often, and reprlib itself falls back to full ``repr`` for subclasses such as OrderedDict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 80, 80

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, dict):
            return self.repr_dict(x, level)
        if isinstance(x, list):
            return self.repr_list(x, level)
        if isinstance(x, tuple):
            return self.repr_tuple(x, level)
        if isinstance(x, set | frozenset):
            return self.repr_frozenset(frozenset(x), level)
        if isinstance(x, bytes | bytearray | memoryview):
            return repr(bytes(x[:40])) + ("..." if len(x) > 40 else "")
        if isinstance(x, _Inert | _ModuleStub | _DType | _ArrayStub | np.generic):
            return super().repr_instance(x, level)
        return f"<{type(x).__name__}>"


_REPR = _BriefRepr()


def _brief(obj: Any) -> str:
    try:
        return _REPR.repr(obj)
    except Exception:  # an odd object must not hide the real error
        return f"<{type(obj).__name__}>"


def _check_int(x: Any, what: str, minimum: int = 0) -> int:
    if type(x) is not int or x < minimum:
        raise CheckpointError(f"{what} must be an integer >= {minimum}, got {_brief(x)}")
    return x


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, tuple | list) or len(shape) > 64:
        raise CheckpointError(f"{what} must be a tuple of at most 64 integers, got {_brief(shape)}")
    return tuple(_check_int(s, what) for s in shape)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage must be a torch storage, got {type(storage)!r}")
    offset = _check_int(storage_offset, "tensor storage offset")
    size = _check_shape(size, "tensor size")
    stride = _check_shape(stride, "tensor stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if type(requires_grad) is not bool:
        raise CheckpointError("tensor requires_grad must be a bool")
    if backward_hooks is not None and not isinstance(backward_hooks, dict):
        raise CheckpointError("tensor backward hooks must be a dict")
    if metadata:
        # Negative/conjugate views would need value changes we do not implement.
        raise CheckpointError(f"unsupported tensor metadata {_brief(metadata)}")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(
    data: Any, requires_grad: Any = True, backward_hooks: Any = None, state: Any = None
) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"parameter data must be a tensor, got {type(data)!r}")
    return data


def _reconstruct_persistent_obj(meta: Any) -> _PersistentObj:
    # meta['module_src'] is deliberately never looked at: NVIDIA's own loader exec()s it.
    if not isinstance(meta, dict) or dict.get(meta, "type") != "class":
        raise CheckpointError("malformed torch_utils.persistence object (expected type 'class')")
    class_name = dict.get(meta, "class_name")
    if not isinstance(class_name, str):
        raise CheckpointError("torch_utils.persistence object without a class_name")
    return _PersistentObj(class_name, dict.get(meta, "state"))


# Storage-type stand-ins are immutable (slots, BUILD refused), so one shared set suffices.
_STORAGE_TYPE_GLOBALS = {("torch", n): _StorageType(n, dt) for n, dt in _STORAGE_DTYPES.items()}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {("numpy", "dtype"): _DType, ("numpy", "ndarray"): _NDARRAY}
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out[(mod, "scalar")] = _np_scalar
        out[(mod, "_reconstruct")] = _np_reconstruct
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        out[(mod, "_frombuffer")] = _np_frombuffer
    return out


def _common_globals() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): _make_set,
        ("builtins", "frozenset"): _make_frozenset,
        ("__builtin__", "set"): _make_set,
        ("__builtin__", "frozenset"): _make_frozenset,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("dnnlib.util", "EasyDict"): _EasyDict,
    }
    out.update(_numpy_globals())
    return out


# --------------------------------------------------------------------------------------------
# The restricted unpickler.


_BYTES = (bytes, bytearray, memoryview)


class _ViewFile:
    """Read-only file over a buffer for the unpickler; large reads are zero-copy views.

    Pickled storages (megabytes each) then stay views of the file's bytes until the final
    tensor copies, which keeps peak memory near twice the file size instead of three times.
    """

    __slots__ = ("_buf", "_pos")
    _COPY_BELOW = 1 << 16  # small reads return bytes, as pickle's own code expects

    def __init__(self, buf: Any):
        self._buf = memoryview(buf).cast("B")
        self._pos = 0

    def __len__(self) -> int:
        return len(self._buf)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = min(max(base + offset, 0), len(self._buf))
        return self._pos

    def read(self, n: int = -1) -> bytes | memoryview:
        start = self._pos
        end = len(self._buf) if n is None or n < 0 else min(start + n, len(self._buf))
        self._pos = end
        view = self._buf[start:end]
        return view if end - start >= self._COPY_BELOW else view.tobytes()

    def readline(self) -> bytes:  # protocol-0 text opcodes
        start = pos = self._pos
        end = len(self._buf)
        while pos < end:
            i = self._buf[pos : pos + 4096].tobytes().find(b"\n")
            if i >= 0:
                end = pos + i + 1
                break
            pos += 4096
        self._pos = end
        return self._buf[start:end].tobytes()


class _Callable:
    """Wraps a stand-in function so a pickle cannot BUILD (mutate) it: no __dict__, no setstate.

    Without this, BUILD on a function object fetched through GLOBAL would write to its
    ``__dict__`` or, via slot state, ``setattr`` e.g. its ``__defaults__``, process-wide.
    """

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Callable[..., Any], name: str):
        self._fn = fn
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"unexpected BUILD of {self._name}")


# The pure-Python unpickler is used on purpose (it is as fast here: the work is in a few large
# opcodes). The C one grows its memo *array* to the index named by PUT/LONG_BINPUT, so a 5-byte
# opcode such as LONG_BINPUT 2**31 makes it allocate and zero gigabytes; the Python one keeps
# its memo in a dict. Both call the overridden find_class/persistent_load identically.
class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves globals only through an exact allowlist of inert stand-ins."""

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(
        self,
        file: _ViewFile | io.BytesIO,
        path: str,
        context: str,
        allowed: Mapping[tuple[str, str], Any],
        persistent: Callable[[Any], Any] | None = None,
    ):
        super().__init__(file)
        pos = file.tell()
        self._size = file.seek(0, io.SEEK_END)  # bounds BYTEARRAY8 allocations
        file.seek(pos)
        self._path = path
        self._context = context
        self._allowed = allowed
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        # Called for GLOBAL, STACK_GLOBAL, INST and EXT before anything is invoked; nothing is
        # imported, so a refused name never runs and an allowed one maps to our stand-in.
        try:
            obj = self._allowed[(module, name)]
        except (KeyError, TypeError):
            pass
        else:
            if isinstance(obj, types.FunctionType | types.MethodType):
                return _Callable(obj, f"{module}.{name}")
            return obj
        full = f"{module}.{name}"
        if len(full) > 200:
            full = full[:200] + "..."
        hint = ""
        if isinstance(module, str) and (module.startswith("torch.nn") or module == "__main__"):
            hint = (
                " This looks like a whole-module save; only state dicts can be read without "
                "running code: re-save it with torch.save(model.state_dict(), ...)."
            )
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to load: the {self._context} references the global "
            f"{full!r}, which is not on the allowlist of this code-free reader (unpickling it "
            f"could run arbitrary code).{hint} If you trust the file, open it with its original "
            "code in a sandbox and re-save the weights as safetensors."
        )

    def _load_bytearray8(self) -> None:
        # pickle allocates (and zero-fills) the declared size before reading: bound it first.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise CheckpointError(f"{self._path}: bytearray of {n} bytes exceeds the file size")
        buf = bytearray(n)
        self.readinto(buf)
        self.append(buf)

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def get_extension(self, code: int) -> Any:
        # EXT1/2/4 resolve through copyreg's process-wide registry and cache, which would
        # bypass find_class; neither torch nor NVIDIA ever writes them.
        raise CheckpointError(
            f"{self._path}: pickle extension code {code} in the {self._context} is not supported"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CheckpointError(
                f"{self._path}: unexpected persistent id {_brief(pid)} in the {self._context}"
            )
        return self._persistent(pid)


def _parse_storage_pid(pid: Any, length: int, path: str, context: str) -> tuple:
    """Validate ('storage', torch.<Type>Storage, key, location, numel[, None])."""
    ok = (
        isinstance(pid, tuple)
        and len(pid) == length
        and pid[0] == "storage"
        and isinstance(pid[1], _StorageType)
        and isinstance(pid[2], str)
        and re.fullmatch(r"[A-Za-z0-9_]{1,64}", pid[2]) is not None
        and isinstance(pid[3], str)
        and type(pid[4]) is int
        and pid[4] >= 0
        and (length == 5 or pid[5] is None)
    )
    if not ok:
        tail = ", None" if length == 6 else ""
        raise CheckpointError(
            f"{path}: malformed persistent id {_brief(pid)} in the {context}; expected "
            f"('storage', torch.<Type>Storage, key, location, numel{tail})"
        )
    return pid


# --------------------------------------------------------------------------------------------
# The reader.


class _Reader:
    def __init__(self, path: str, data: bytes):
        self.path = path
        self.data = data
        # Materialised tensors may not exceed a few times the file size: guards against
        # zero-stride "expanded" tensors declaring absurd sizes.
        self.budget = 4 * len(data) + 64 * 2**20
        self.tensor_cache: dict[int, np.ndarray] = {}
        self.plain_memo: dict[int, Any] = {}
        self.plain_active: set[int] = set()

    def error(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {msg}")

    # ---- pickles ------------------------------------------------------------------------------

    def load_plain(self, f: _ViewFile | io.BytesIO, context: str) -> Any:
        """Unpickle one small pickle that may reference no globals at all."""
        return _RestrictedUnpickler(f, self.path, context, {}).load()

    def load_from_bytes(self, blob: Any) -> _Storage:
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
        declared: list[_Storage] = []

        def persistent(pid: Any) -> _Storage:
            _parse_storage_pid(pid, 6, self.path, ctx)
            if declared:
                raise self.error(f"{ctx} declares more than one storage")
            st = _Storage(pid[1].dtype, pid[4], pid[2])
            declared.append(st)
            return st

        st = _RestrictedUnpickler(f, self.path, ctx, _STORAGE_TYPE_GLOBALS, persistent).load()
        if not isinstance(st, _Storage):
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
            raise self.error(f"{ctx} has malformed system info {_brief(info)}")
        if dict.get(info, "little_endian") is not True:
            raise self.error(f"{ctx} was written on a big-endian machine; not supported")

    def frombuffer(self, buf: Any, dtype: np.dtype, numel: int, offset: int) -> np.ndarray:
        if numel == 0:
            return np.zeros(0, dtype)
        arr = np.frombuffer(buf, dtype=dtype, count=numel, offset=offset)
        if dtype == np.bool_ and (arr.view(np.uint8) > 1).any():
            raise self.error("boolean storage holds bytes other than 0 and 1")
        return arr

    # ---- tensors ------------------------------------------------------------------------------

    def materialize(self, ref: _TensorRef) -> np.ndarray:
        """Copy a (storage, offset, size, stride) view out of its storage, bounds-checked."""
        cached = self.tensor_cache.get(id(ref))
        if cached is not None:
            return cached
        st = ref.storage
        if st.array is None:
            raise self.error(f"storage {st.key!r} is referenced but its data is missing")
        n = math.prod(ref.size)
        nbytes = n * st.dtype.itemsize
        if nbytes > self.budget:
            raise self.error(
                f"tensor of size {ref.size} ({nbytes} bytes) exceeds the memory budget for a "
                f"{len(self.data)}-byte file; the file is corrupt"
            )
        if n == 0:
            out = np.zeros(ref.size, st.dtype)
        else:
            # Torch strides are non-negative element counts; dimensions of size 1 never move.
            last = ref.offset + sum((s - 1) * t for s, t in zip(ref.size, ref.stride, strict=True))
            if last >= st.numel:
                raise self.error(
                    f"tensor view (offset {ref.offset}, size {ref.size}, stride {ref.stride}) "
                    f"reads beyond its storage of {st.numel} elements; the file is corrupt"
                )
            item = st.dtype.itemsize
            strides = tuple(
                t * item if s > 1 else 0 for s, t in zip(ref.size, ref.stride, strict=True)
            )
            view = np.lib.stride_tricks.as_strided(
                st.array[ref.offset :], shape=ref.size, strides=strides, writeable=False
            )
            out = np.array(view, order="C", copy=True)
        self.budget -= nbytes
        self.tensor_cache[id(ref)] = out
        return out

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
        if isinstance(obj, _ArrayStub):
            return obj.resolve()
        if isinstance(obj, _DType):
            return str(obj.resolve())
        if isinstance(obj, _TensorRef):
            return self.materialize(obj)
        if isinstance(obj, _StorageType):
            return f"torch.{obj.name}"
        if isinstance(obj, _ModuleStub):
            return {"class_name": obj.torch_class}
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
        return _brief(k)  # (tuple keys too: converting shared tuples could blow up)

    def describe(self, obj: _PersistentObj, depth: int = 0) -> dict:
        """A persistent object as {'class_name', public attributes..., 'init_kwargs'}."""
        out: dict[str, Any] = {"class_name": obj.class_name}
        state = obj.state
        if not isinstance(state, dict):
            return out
        for k, v in dict.items(state):
            if isinstance(k, str) and not k.startswith("_") and k != "training":
                if isinstance(v, _PersistentObj | _ModuleStub):
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
            if not isinstance(mod, _PersistentObj | _ModuleStub) or not isinstance(st, dict):
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
            cls = mod.class_name if isinstance(mod, _PersistentObj) else mod.torch_class
            attrs: dict[str, Any] = {"class_name": cls}
            for k, v in dict.items(st):
                if isinstance(k, str) and not k.startswith("_") and k != "training":
                    if not isinstance(v, _PersistentObj | _ModuleStub | _TensorRef):
                        attrs[k] = self.plain(v)
            modules[prefix[:-1]] = attrs
            for kind, items in (("parameter", params), ("buffer", buffers)):
                for name, t in dict.items(items):
                    if t is None or (kind == "buffer" and name in skip):
                        continue
                    if not isinstance(name, str) or not isinstance(t, _TensorRef):
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
                isinstance(k, str) and isinstance(v, _TensorRef) for k, v in dict.items(x)
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
                f"{_brief(keys)}. Whole-module saves are not supported: re-save with "
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
        f = _ViewFile(self.data)
        top = _RestrictedUnpickler(f, self.path, "pickle", allowed).load()
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
                f"torch_utils.persistence network object; found {_brief(keys)}. Pass "
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
        try:
            zf = zipfile.ZipFile(io.BytesIO(self.data))
            infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
            raise self.error(f"corrupt or truncated zip archive ({e}); {_EXPECTED}") from e
        for info in infos:
            name = info.filename
            parts = name.split("/")
            if (
                name.startswith("/")
                or "\\" in name
                or "\0" in name
                or ":" in parts[0]
                or ".." in parts
            ):
                raise self.error(f"zip member name {name!r:.200} is unsafe (path traversal)")
        names = {i.filename: i for i in infos}
        if len(names) != len(infos):
            raise self.error("zip archive contains duplicate member names")
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            what = "no" if not pkls else "more than one"
            hint = (
                " (a .npz file? use numpy.load)" if any(n.endswith(".npy") for n in names) else ""
            )
            raise self.error(
                f"zip archive has {what} '<folder>/data.pkl' entry, so it is not a torch.save "
                f"archive{hint}; {_EXPECTED}"
            )
        prefix = pkls[0][: -len("data.pkl")]
        order = names.get(prefix + "byteorder")
        if order is not None and bytes(self.zip_member(zf, order)).strip() != b"little":
            raise self.error("torch.save archive was written big-endian; not supported")
        ctx = "torch.save archive (data.pkl)"
        storages: dict[str, _Storage] = {}

        def persistent(pid: Any) -> _Storage:
            _parse_storage_pid(pid, 5, self.path, ctx)
            _, stype, key, _, numel = pid
            st = storages.get(key)
            if st is not None:
                if st.dtype != stype.dtype or st.numel != numel:
                    raise self.error(f"storage {key!r} is declared with two different types")
                return st
            info = names.get(f"{prefix}data/{key}")
            if info is None:
                raise self.error(f"torch.save archive lacks the storage entry {prefix}data/{key}")
            raw = self.zip_member(zf, info)
            if len(raw) != numel * stype.dtype.itemsize:
                raise self.error(
                    f"storage {prefix}data/{key} has {len(raw)} bytes, expected "
                    f"{numel * stype.dtype.itemsize} ({numel} x {stype.dtype})"
                )
            st = _Storage(stype.dtype, numel, key)
            st.array = self.frombuffer(raw, stype.dtype, numel, 0)
            storages[key] = st
            return st

        allowed = _common_globals()
        allowed.update(_STORAGE_TYPE_GLOBALS)
        pkl = self.zip_member(zf, names[pkls[0]])
        # data.pkl is small (storages live in their own members): C-level reads are faster.
        pkl_file = io.BytesIO(bytes(pkl))
        top = _RestrictedUnpickler(pkl_file, self.path, ctx, allowed, persistent).load()
        result = self.torch_result(top, "torch-zip", network_key)
        result.extras["archive_name"] = prefix[:-1]
        if prefix + "version" in names:
            version = bytes(self.zip_member(zf, names[prefix + "version"]))
            result.extras["archive_version"] = version.decode("ascii", "replace").strip()
        return result

    def zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> memoryview:
        """A member's bytes: a zero-copy, CRC-checked view for stored members."""
        if info.flag_bits & 0x1:
            raise self.error(f"zip member {info.filename!r} is encrypted")
        if info.file_size > self.budget:
            raise self.error(f"zip member {info.filename!r} is implausibly large")
        if info.compress_type != zipfile.ZIP_STORED:
            return memoryview(zf.read(info))  # zipfile checks the CRC
        h = info.header_offset
        data = self.data
        if h < 0 or h + 30 > len(data) or data[h : h + 4] != b"PK\x03\x04":
            raise self.error(f"zip member {info.filename!r} has a corrupt local header")
        n, e = struct.unpack_from("<HH", data, h + 26)
        start = h + 30 + n + e
        end = start + info.file_size
        if info.compress_size != info.file_size or end > len(data):
            raise self.error(f"zip member {info.filename!r} is truncated")
        view = memoryview(data)[start:end]
        if zlib.crc32(view) != info.CRC:
            raise self.error(f"zip member {info.filename!r} fails its CRC check (file corrupted)")
        return view

    def read_torch_legacy(self, network_key: str) -> LoadedCheckpoint:
        ctx = "legacy torch.save file"
        f = io.BytesIO(self.data)  # shares the bytes; storages follow the pickles, unread by it
        if self.load_plain(f, ctx) != _LEGACY_MAGIC:
            raise self.error(f"{ctx} does not start with torch's magic number")
        if self.load_plain(f, ctx) != _LEGACY_PROTOCOL:
            raise self.error(f"{ctx} has an unsupported protocol version (expected 1001)")
        self.check_sys_info(self.load_plain(f, ctx), ctx)
        storages: dict[str, _Storage] = {}

        def persistent(pid: Any) -> _Storage:
            _parse_storage_pid(pid, 6, self.path, ctx)
            _, stype, key, _, numel, _ = pid
            st = storages.get(key)
            if st is None:
                st = storages[key] = _Storage(stype.dtype, numel, key)
            elif st.dtype != stype.dtype or st.numel != numel:
                raise self.error(f"storage {key!r} is declared with two different types")
            return st

        allowed = _common_globals()
        allowed.update(_STORAGE_TYPE_GLOBALS)
        top = _RestrictedUnpickler(f, self.path, ctx, allowed, persistent).load()
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

        try:
            header = json.loads(
                bytes(data[8 : 8 + n]).decode("utf-8"), object_pairs_hook=no_duplicates
            )
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
        for name, info in header.items():
            if not isinstance(info, dict):
                raise self.error(f"safetensors entry {name!r:.80} is not an object")
            dt = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
            if dt is None:
                raise self.error(f"safetensors tensor {name!r:.80} has unsupported dtype")
            shape = _check_shape(info.get("shape"), f"safetensors shape of {name!r:.80}")
            offs = info.get("data_offsets")
            if not (isinstance(offs, list) and len(offs) == 2):
                raise self.error(f"safetensors tensor {name!r:.80} has malformed data_offsets")
            b = _check_int(offs[0], "data offset")
            e = _check_int(offs[1], "data offset")
            numel = math.prod(shape)
            if not b <= e <= buf_len or e - b != numel * dt.itemsize:
                raise self.error(
                    f"safetensors tensor {name!r:.80} has data_offsets [{b}, {e}] that do not "
                    f"fit shape {shape} x {dt} inside the {buf_len}-byte data buffer"
                )
            spans.append((b, e, name))
            arr = self.frombuffer(data, dt, numel, base + b)
            state[name] = np.array(arr.reshape(shape), order="C", copy=True)
        spans.sort()
        for (_, e0, n0), (b1, _, n1) in itertools.pairwise(spans):
            if b1 < e0:
                raise self.error(f"safetensors tensors {n0!r} and {n1!r} overlap")
        extras: dict[str, Any] = {"__metadata__": meta}
        return LoadedCheckpoint(self.path, "safetensors", state, None, None, extras)


def _contains_tensor(obj: Any, depth: int = 0, seen: set | None = None) -> bool:
    if isinstance(obj, _TensorRef):
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
    try:
        if fmt == "safetensors":
            result = reader.read_safetensors()
        elif fmt == "torch-zip":
            result = reader.read_torch_zip(network_key)
        elif fmt == "torch-legacy":
            result = reader.read_torch_legacy(network_key)
        else:
            result = reader.read_nvidia_pickle(network_key)
    except CheckpointError as e:
        if path in str(e):
            raise
        cls = UnsafeCheckpointError if isinstance(e, UnsafeCheckpointError) else CheckpointError
        raise cls(f"{path}: {e}") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: data nested too deeply; the file is corrupt") from e
    except Exception as e:
        # Anything else raised while parsing untrusted bytes (truncation, bad opcodes, wrong
        # argument types for a stand-in, ...) means the file is damaged.
        raise CheckpointError(
            f"{path}: corrupt or truncated {fmt} checkpoint ({type(e).__name__}: {e!s:.300}); "
            f"{_EXPECTED}. Re-download or re-export the file."
        ) from e
    finally:
        # The stand-ins bound into the unpickler's allowlist reference the reader, forming a
        # cycle that would keep the file bytes and every cached tensor alive until the cyclic
        # GC runs; drop them now so callers can free tensors one by one (porting memory).
        reader.data = b""
        reader.tensor_cache.clear()
        reader.plain_memo.clear()
    result.extras["sha256"] = hashlib.sha256(data).hexdigest()
    return result
