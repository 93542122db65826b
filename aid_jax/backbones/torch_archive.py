"""Safe, torch-free reading of torch's pickle-based files: the layer under every weight reader.

`aid_jax.backbones.checkpoint_reader` (EDM/EDM2 checkpoints), `aid_jax.metrics.inception`
(a TorchScript archive) and `aid_jax.metrics.lpips` (pickled NumPy dicts) all read untrusted
pickles through the pieces here, each with its own allowlist:

* :class:`RestrictedUnpickler` — pickle's pure-Python unpickler whose ``find_class`` resolves
  globals only through a caller-given exact ``{(module, name): stand-in}`` allowlist; anything
  else raises :class:`UnsafeCheckpointError` naming the global before it can run. Nothing named
  in a file is ever imported; functions are wrapped so a pickle cannot BUILD (mutate) them;
  extension codes and oversized ``BYTEARRAY8`` are refused.
* Allowlist building blocks, all inert stand-ins that validate what they receive:
  :func:`numpy_globals` (plain numeric arrays, scalars and dtypes → :class:`PickledArray`),
  :func:`storage_type_globals` (``torch.<Type>Storage`` → :class:`StorageType`),
  :func:`rebuild_tensor_v2` / :func:`rebuild_parameter` (→ :class:`TensorRef`),
  :meth:`ModuleRecord.subclass` (module classes → attribute dicts).
* :class:`UntrustedFile` — a file's bytes: errors prefixed with its path, bounds-checked NumPy
  views, :meth:`~UntrustedFile.materialize` (strided tensor views copied out under a byte budget
  of a few times the file size) and :meth:`~UntrustedFile.parsing`, which turns any exception
  raised while parsing into a :class:`CheckpointError` naming the file.
* :class:`TorchZipArchive` — a ``torch.save`` or ``torch.jit.save`` zip opened safely (no path
  traversal or duplicate members, one ``<folder>/data.pkl``, little-endian, encrypted members
  refused, CRC-checked zero-copy reads within the budget) with :meth:`~TorchZipArchive.unpickle`
  and :meth:`~TorchZipArchive.storages`.
* :class:`StorageTable` — the one ``persistent_load`` for torch storage ids
  ``('storage', torch.<Type>Storage, key, location, numel[, None])`` (5 fields in zip archives,
  6 in legacy files), loading each storage's bytes on first use where the format allows.

Everything the stand-ins receive is validated (types, ranges, buffer bounds) before it is used,
so a corrupt file raises :class:`CheckpointError` instead of reading stray memory.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import math
import pickle
import re
import reprlib
import struct
import types
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "INFLATE_BUDGET_BASE",
    "INFLATE_BUDGET_RATIO",
    "MAX_HASHED_ELEMENTS",
    "MAX_NESTING_DEPTH",
    "MAX_PICKLE_OBJECTS",
    "MAX_PICKLE_OPCODES",
    "MAX_ZIP_MEMBERS",
    "PICKLE_COPY_BASE",
    "PICKLE_COPY_RATIO",
    "CheckpointError",
    "PickleBudget",
    "Inert",
    "ModuleRecord",
    "PickledArray",
    "PickledDType",
    "RestrictedUnpickler",
    "Storage",
    "StorageTable",
    "StorageType",
    "TensorRef",
    "TorchZipArchive",
    "UnsafeCheckpointError",
    "UntrustedFile",
    "ViewFile",
    "brief",
    "check_int",
    "check_shape",
    "numpy_globals",
    "parse_storage_pid",
    "rebuild_parameter",
    "rebuild_tensor_v2",
    "storage_type_globals",
]


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message names the file and what was expected."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A pickle referenced a global (or object kind) that is not on the allowlist."""


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
_BYTES = (bytes, bytearray, memoryview)


# --------------------------------------------------------------------------------------------
# Limits. Every reader path is bounded by these (docs/ARCHITECTURE.md lists them with the limits
# of checkpoint_reader, loader and checkpoint); exceeding one raises CheckpointError naming the
# limit and the file. None is near what a legitimate checkpoint needs.

# Containers (tuple/list/dict/set/frozenset) inside containers, as a pickle builds them. Tuples
# are checked when they are created, before anything can hash them: CPython hashes (and
# compares) nested tuples recursively in C without a depth guard, so a 300k-deep tuple used as
# a dict key or set element crashes the process.
MAX_NESTING_DEPTH = 100
# Elements of one tuple counted with repetition (what hashing it visits): a few hundred bytes of
# shared tuples (``t = (t,) * 10``, 40 times) would otherwise hash for ever.
MAX_HASHED_ELEMENTS = 1_000_000
# Opcodes interpreted per file, over all its pickles (NVIDIA pickles embed one per storage).
MAX_PICKLE_OPCODES = 20_000_000
# Objects a file's pickles may create (opcodes that allocate: containers, strings, numbers,
# calls, memo entries, marks). One-byte opcodes such as EMPTY_SET make ~230x their size.
MAX_PICKLE_OBJECTS = 1_000_000
# What allowlisted callables and BUILD may copy (bytes of str/bytes arguments, 64 units per
# container element), per file: PICKLE_COPY_RATIO x file size + PICKLE_COPY_BASE. A memoised
# argument can be passed to many calls (``set(big_list)`` a million times).
PICKLE_COPY_RATIO = 4
PICKLE_COPY_BASE = 64 * 2**20
# Bytes inflated from compressed zip members, charged while inflating, over all members:
# INFLATE_BUDGET_RATIO x file size + INFLATE_BUDGET_BASE; a member may not inflate beyond its
# declared size (nor a storage beyond numel x itemsize).
INFLATE_BUDGET_RATIO = 4
INFLATE_BUDGET_BASE = 64 * 2**20
# Members of a zip archive (torch writes one per storage plus a few).
MAX_ZIP_MEMBERS = 100_000
# Materialised tensors: UntrustedFile.budget (4 x file size + 64 MiB), see below.
_INFLATE_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Inert stand-ins for allowlisted globals. None of them has behaviour beyond recording and
# validating data; BUILD (``__setstate__``) is refused wherever the real format never uses it.


class Inert:
    """Base of the stand-ins: slotted, and a pickle BUILD on one is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"unexpected BUILD of a {type(self).__name__} object")


class StorageType(Inert):
    """Stand-in for ``torch.<Type>Storage``: only carries the element dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError(f"storage type torch.{self.name} may only appear in a storage id")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class Storage(Inert):
    """One typed storage; ``array`` is a 1-D read-only view once its bytes are located."""

    __slots__ = ("dtype", "numel", "key", "array")

    def __init__(self, dtype: np.dtype, numel: int, key: str):
        self.dtype = dtype
        self.numel = numel
        self.key = key
        self.array: np.ndarray | None = None


class TensorRef(Inert):
    """A tensor as (storage, offset, size, stride); :meth:`UntrustedFile.materialize` copies it."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class ModuleRecord:
    """Inert stand-in for a pickled module class (``torch.nn.ModuleDict``, ``__torch__.*``).

    Pickles create such objects without arguments (NEWOBJ, or a call for INST/OBJ) and then give
    them their attribute dict with one BUILD; the record keeps that dict as ``state`` and has no
    behaviour. Constructing one with arguments, building it twice or with anything but a dict of
    str keys is refused. :meth:`subclass` makes one class per pickled class name, as pickle's
    NEWOBJ needs a class.
    """

    __slots__ = ("state",)
    qualified_name = "Module"  # the pickled class, for messages and callers

    def __new__(cls, *args: Any, **kwargs: Any):
        if args or kwargs:
            raise CheckpointError(f"unexpected constructor arguments for {cls.qualified_name}")
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:  # pickle's INST/OBJ paths call the class
            raise CheckpointError(f"unexpected constructor arguments for {self.qualified_name}")

    def __setstate__(self, state: Any) -> None:
        if hasattr(self, "state"):
            raise CheckpointError(f"{self.qualified_name} object built twice")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in dict.keys(state)):
            raise CheckpointError(
                f"{self.qualified_name}: BUILD state must be a dict of attributes"
            )
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name}>"

    @classmethod
    def subclass(cls, qualified_name: str) -> type[ModuleRecord]:
        """A slotted subclass standing in for the class `qualified_name` (``a.b.Name``)."""
        name = qualified_name.rsplit(".", 1)[-1]
        return type(name, (cls,), {"__slots__": (), "qualified_name": qualified_name})


class _NDArrayMarker(Inert):
    """Stand-in for the ``numpy.ndarray`` class; only valid as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError("numpy.ndarray may only be used through numpy _reconstruct")


_NDARRAY = _NDArrayMarker()
_DTYPE_SPEC = re.compile(r"[biufc][0-9]{1,2}\Z")


class PickledDType:
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
                f"numpy.dtype state {brief(state)} refused: only plain numeric dtypes are allowed"
            )
        self.order = state[1]
        self._built = True

    def resolve(self) -> np.dtype:
        """The validated NumPy dtype."""
        if not hasattr(self, "spec"):
            raise CheckpointError("numpy.dtype created without arguments")
        dt = np.dtype(self.spec)
        if self.order in "<>":
            dt = dt.newbyteorder(self.order)
        return dt


class PickledArray:
    """Stand-in for ``numpy._core.multiarray._reconstruct(ndarray, ...)`` + BUILD.

    :meth:`resolve` gives the array: a C-contiguous copy of a plain numeric dtype.
    """

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise CheckpointError("numpy array built twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise CheckpointError(f"malformed numpy array state {brief(state)}")
        _, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, PickledDType):
            raise UnsafeCheckpointError(
                "numpy array refused: its dtype is not a plain numeric numpy.dtype"
            )
        if not isinstance(raw, _BYTES):
            raise UnsafeCheckpointError(
                "numpy array refused: its data is not raw bytes (object arrays are not allowed)"
            )
        shape = check_shape(shape, "numpy array shape")
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
        """The reconstructed array; raises if the pickle never gave it data."""
        if self.array is None:
            raise CheckpointError("numpy array reconstructed without data")
        return self.array


def _np_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> PickledArray:
    if cls is not _NDARRAY:
        raise UnsafeCheckpointError(
            "numpy _reconstruct refused: only plain numpy.ndarray may be reconstructed"
        )
    return PickledArray()


def _np_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, PickledDType):
        raise UnsafeCheckpointError("numpy scalar refused: dtype is not a plain numeric dtype")
    if not isinstance(data, _BYTES):
        raise UnsafeCheckpointError("numpy scalar refused: data is not raw bytes (object scalar)")
    dt = dtype.resolve()
    if len(data) != dt.itemsize:
        raise CheckpointError(f"numpy scalar of dtype {dt} has {len(data)} bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0].copy()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> PickledArray:
    # Protocol-5 pickles of arrays: numpy._core.numeric._frombuffer(bytes, dtype, shape, order).
    if not isinstance(dtype, PickledDType):
        raise UnsafeCheckpointError("numpy array refused: dtype is not a plain numeric dtype")
    if not isinstance(buf, _BYTES) or order not in ("C", "F"):
        raise CheckpointError("malformed protocol-5 numpy array")
    stub = PickledArray()
    stub.__setstate__((1, shape, dtype, order == "F", buf))
    return stub  # (a built stub refuses a second BUILD; a real ndarray would accept one)


def numpy_globals() -> dict[tuple[str, str], Any]:
    """Allowlist entries for pickled NumPy arrays, scalars and dtypes (plain numeric only).

    Covers ``numpy.dtype``, ``numpy.ndarray`` and, in numpy 1.x and 2.x spellings,
    ``multiarray._reconstruct`` / ``multiarray.scalar`` and protocol 5's ``numeric._frombuffer``.
    Arrays unpickle to :class:`PickledArray` (``.resolve()`` gives the copy), scalars to NumPy
    scalars. Take a subset for a stricter allowlist. A new dict each call.
    """
    out: dict[tuple[str, str], Any] = {
        ("numpy", "dtype"): PickledDType,
        ("numpy", "ndarray"): _NDARRAY,
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out[(mod, "scalar")] = _np_scalar
        out[(mod, "_reconstruct")] = _np_reconstruct
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        out[(mod, "_frombuffer")] = _np_frombuffer
    return out


# Storage-type stand-ins are immutable (slots, BUILD refused), so one shared set suffices.
_STORAGE_TYPE_GLOBALS = {("torch", n): StorageType(n, dt) for n, dt in _STORAGE_DTYPES.items()}


def storage_type_globals() -> dict[tuple[str, str], StorageType]:
    """Allowlist entries ``('torch', '<Type>Storage')`` → :class:`StorageType` (a new dict)."""
    return dict(_STORAGE_TYPE_GLOBALS)


# --------------------------------------------------------------------------------------------
# Validation helpers and bounded reprs for error messages.


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
        if isinstance(x, Inert | PickledDType | PickledArray | np.generic):
            return super().repr_instance(x, level)
        return f"<{type(x).__name__}>"


_REPR = _BriefRepr()


def brief(obj: Any) -> str:
    """A short repr of unpickled data for error messages; never raises, never blows up."""
    try:
        return _REPR.repr(obj)
    except Exception:  # an odd object must not hide the real error
        return f"<{type(obj).__name__}>"


def check_int(x: Any, what: str, minimum: int = 0) -> int:
    """`x` if it is a plain int >= `minimum`, else :class:`CheckpointError` naming `what`."""
    if type(x) is not int or x < minimum:
        raise CheckpointError(f"{what} must be an integer >= {minimum}, got {brief(x)}")
    return x


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """A tuple/list of at most 64 non-negative ints, as a tuple; else :class:`CheckpointError`."""
    if not isinstance(shape, tuple | list) or len(shape) > 64:
        raise CheckpointError(f"{what} must be a tuple of at most 64 integers, got {brief(shape)}")
    return tuple(check_int(s, what) for s in shape)


# --------------------------------------------------------------------------------------------
# Tensors.


def rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a validated :class:`TensorRef`."""
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor storage must be a torch storage, got {type(storage)!r}")
    offset = check_int(storage_offset, "tensor storage offset")
    size = check_shape(size, "tensor size")
    stride = check_shape(stride, "tensor stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if type(requires_grad) is not bool:
        raise CheckpointError("tensor requires_grad must be a bool")
    if backward_hooks is not None and not isinstance(backward_hooks, dict):
        raise CheckpointError("tensor backward hooks must be a dict")
    if metadata:
        # Negative/conjugate views would need value changes we do not implement.
        raise CheckpointError(f"unsupported tensor metadata {brief(metadata)}")
    return TensorRef(storage, offset, size, stride)


def rebuild_parameter(
    data: Any, requires_grad: Any = True, backward_hooks: Any = None, state: Any = None
) -> TensorRef:
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: the tensor itself."""
    if not isinstance(data, TensorRef):
        raise CheckpointError(f"parameter data must be a tensor, got {type(data)!r}")
    return data


# --------------------------------------------------------------------------------------------
# The restricted unpickler.


class ViewFile:
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


class PickleBudget:
    """What the pickles of one file may still spend: opcodes, objects and copied units.

    One budget is shared by every :class:`RestrictedUnpickler` reading the same file (an NVIDIA
    pickle embeds a legacy pickle per storage), so nested pickles cannot multiply the limits:
    :data:`MAX_PICKLE_OPCODES`, :data:`MAX_PICKLE_OBJECTS` and the copy budget
    (:data:`PICKLE_COPY_RATIO` x file size + :data:`PICKLE_COPY_BASE`).
    """

    __slots__ = ("path", "opcodes", "objects", "copy", "copy_limit")

    def __init__(self, path: str, file_size: int):
        self.path = path
        self.opcodes = MAX_PICKLE_OPCODES
        self.objects = MAX_PICKLE_OBJECTS
        self.copy_limit = PICKLE_COPY_RATIO * file_size + PICKLE_COPY_BASE
        self.copy = self.copy_limit

    def exceeded(self, what: str, limit: str) -> CheckpointError:
        """The error for an exhausted limit: names the file, what ran out and the limit."""
        return CheckpointError(
            f"{self.path}: {what} exceeds the reader's limit {limit}; the file is corrupt or "
            "hostile (no legitimate checkpoint comes near it)"
        )

    def charge_copy(self, units: int) -> None:
        self.copy -= units
        if self.copy < 0:
            raise self.exceeded(
                "the data copied by the pickle's calls",
                f"PICKLE_COPY_RATIO x file size + PICKLE_COPY_BASE = {self.copy_limit:,} units",
            )


# Opcodes that allocate nothing (or a cached singleton); every other opcode counts as one
# object against MAX_PICKLE_OBJECTS (MARK makes a list, PUT/MEMOIZE a memo entry, ...).
_FREE_OPCODES = (
    pickle.POP
    + pickle.POP_MARK
    + pickle.DUP
    + pickle.GET
    + pickle.BINGET
    + pickle.LONG_BINGET
    + pickle.STOP
    + pickle.PROTO
    + pickle.FRAME
    + pickle.APPEND
    + pickle.APPENDS
    + pickle.SETITEM
    + pickle.SETITEMS
    + pickle.ADDITEMS
    + pickle.NONE
    + pickle.NEWTRUE
    + pickle.NEWFALSE
    + pickle.EMPTY_TUPLE
    + pickle.BININT1
    + pickle.BUILD
)
_OBJECT_COST = bytes(0 if i in _FREE_OPCODES else 1 for i in range(256))
_CONTAINERS = (tuple, list, dict, set, frozenset)


def _copy_units(x: Any, inner: bool = True) -> int:
    """What copying `x` may cost: bytes of str/bytes, 64 per container element; tuples (call
    arguments, BUILD states) are looked into one level."""
    if isinstance(x, str | bytes | bytearray):
        return len(x)
    if isinstance(x, memoryview):
        return x.nbytes
    if isinstance(x, tuple):
        return 64 * len(x) + (sum(_copy_units(y, False) for y in x) if inner else 0)
    if isinstance(x, list | dict | set | frozenset):
        return 64 * len(x)
    return 1


# The pure-Python unpickler is used on purpose (it is as fast here: the work is in a few large
# opcodes). The C one grows its memo *array* to the index named by PUT/LONG_BINPUT, so a 5-byte
# opcode such as LONG_BINPUT 2**31 makes it allocate and zero gigabytes; the Python one keeps
# its memo in a dict. Both call the overridden find_class/persistent_load identically.
class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves globals only through an exact allowlist of inert stand-ins.

    Args:
      file: the pickle (:class:`ViewFile` for large files, ``io.BytesIO`` for small ones).
      path: the file's path, for messages.
      context: what is being read ("torch.save archive (data.pkl)"), for messages.
      allowed: ``{(module, name): stand-in}``; looked up with ``allowed[(module, name)]``, so a
        Mapping may compute entries (a ``KeyError`` refuses). Functions are wrapped so BUILD
        cannot mutate them. Nothing outside it is imported or called.
      persistent: ``persistent_load`` for persistent ids (e.g. a :class:`StorageTable`); without
        one, any persistent id is refused.
      refusal: builds the :class:`UnsafeCheckpointError` message from the refused global's
        dotted name (cut at 200 characters); the default names path, context and the remedy.
      budget: the file's :class:`PickleBudget`, shared by all its pickles; a new one (sized by
        this pickle) if omitted.

    Limits: :data:`MAX_PICKLE_OPCODES` and :data:`MAX_PICKLE_OBJECTS` are charged before each
    opcode runs, :data:`MAX_NESTING_DEPTH` and :data:`MAX_HASHED_ELEMENTS` as containers are
    built (tuples before anything can hash them), the copy budget before each call or BUILD.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(
        self,
        file: ViewFile | io.BytesIO,
        path: str,
        context: str,
        allowed: Mapping[tuple[str, str], Any],
        persistent: Callable[[Any], Any] | None = None,
        *,
        refusal: Callable[[str], str] | None = None,
        budget: PickleBudget | None = None,
    ):
        super().__init__(file)
        pos = file.tell()
        self._size = file.seek(0, io.SEEK_END)  # bounds BYTEARRAY8 allocations
        file.seek(pos)
        self._path = path
        self._context = context
        self._allowed = allowed
        self._persistent = persistent
        self._refusal = refusal
        self._budget = budget if budget is not None else PickleBudget(path, self._size)
        # id(container) -> (nesting depth, elements counted with repetition, container) for the
        # containers this pickle built with depth >= 2 (the container keeps its id unique).
        self._nesting: dict[int, tuple[int, int, Any]] = {}

    def load(self) -> Any:
        """pickle's ``load`` loop, charging each opcode to the budget before it runs."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        cost = _OBJECT_COST
        budget = self._budget
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                op = key[0]
                budget.opcodes -= 1
                budget.objects -= cost[op]
                if budget.opcodes < 0 or budget.objects < 0:
                    self._exhausted()
                dispatch[op](self)
        except pickle._Stop as stop:
            return stop.value

    def _exhausted(self) -> None:
        b = self._budget
        if b.opcodes < 0:
            raise b.exceeded(
                f"the number of opcodes in the {self._context}",
                f"MAX_PICKLE_OPCODES = {MAX_PICKLE_OPCODES:,}",
            )
        raise b.exceeded(
            f"the number of objects the {self._context} creates",
            f"MAX_PICKLE_OBJECTS = {MAX_PICKLE_OBJECTS:,}",
        )

    # ---- nesting: every container records its depth as it is built -------------------------

    def _nest(self, obj: Any, items: Any) -> None:
        """Record that container `obj` now holds `items`; refuse too deep or too large tuples."""
        rec = self._nesting
        r = rec.get(id(obj))
        depth = r[0] if r is not None else 1
        is_tuple = type(obj) is tuple
        expanded = len(obj) if is_tuple else 0
        for x in items:
            if isinstance(x, _CONTAINERS):
                c = rec.get(id(x))
                d, e = (c[0], c[1]) if c is not None else (1, len(x))
                if d >= depth:
                    depth = d + 1
                if is_tuple and type(x) is tuple:
                    expanded += e
        if depth > MAX_NESTING_DEPTH:
            raise self._budget.exceeded(
                f"the nesting of containers in the {self._context}",
                f"MAX_NESTING_DEPTH = {MAX_NESTING_DEPTH}",
            )
        if expanded > MAX_HASHED_ELEMENTS:
            raise self._budget.exceeded(
                f"a tuple of the {self._context} (its elements counted with repetition)",
                f"MAX_HASHED_ELEMENTS = {MAX_HASHED_ELEMENTS:,}",
            )
        if depth > 1:
            rec[id(obj)] = (depth, expanded, obj)

    def _built(self) -> None:  # TUPLE, TUPLE1-3, LIST, DICT, FROZENSET: the new container on top
        obj = self.stack[-1]
        self._nest(obj, [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj)

    # Tuples are checked as soon as they exist, before the next opcode can put them into a dict
    # or set: CPython hashes nested tuples recursively in C, without a depth guard.
    def _tuple1(self) -> None:
        pickle._Unpickler.load_tuple1(self)
        self._built()

    def _tuple2(self) -> None:
        pickle._Unpickler.load_tuple2(self)
        self._built()

    def _tuple3(self) -> None:
        pickle._Unpickler.load_tuple3(self)
        self._built()

    def _tuple(self) -> None:
        pickle._Unpickler.load_tuple(self)
        self._built()

    def _list(self) -> None:
        pickle._Unpickler.load_list(self)
        self._built()

    def _frozenset(self) -> None:
        pickle._Unpickler.load_frozenset(self)
        self._built()

    def _dict(self) -> None:
        pickle._Unpickler.load_dict(self)  # (its keys' tuples were checked when built)
        self._built()

    def _append(self) -> None:
        self._nest(self.stack[-2], self.stack[-1:])
        pickle._Unpickler.load_append(self)

    def _appends(self) -> None:
        if self.metastack:
            self._nest(self.metastack[-1][-1], self.stack)
        pickle._Unpickler.load_appends(self)

    def _setitem(self) -> None:
        self._nest(self.stack[-3], self.stack[-2:])
        pickle._Unpickler.load_setitem(self)

    def _setitems(self) -> None:
        if self.metastack:
            self._nest(self.metastack[-1][-1], self.stack)
        pickle._Unpickler.load_setitems(self)

    def _additems(self) -> None:
        if self.metastack:
            self._nest(self.metastack[-1][-1], self.stack)
        pickle._Unpickler.load_additems(self)

    # ---- copies: calls and BUILD are charged for what they may copy --------------------------

    def _reduce(self) -> None:
        self._budget.charge_copy(_copy_units(self.stack[-1]))
        pickle._Unpickler.load_reduce(self)

    def _newobj(self) -> None:
        self._budget.charge_copy(_copy_units(self.stack[-1]))
        pickle._Unpickler.load_newobj(self)

    def _newobj_ex(self) -> None:
        self._budget.charge_copy(_copy_units(self.stack[-1]) + _copy_units(self.stack[-2]))
        pickle._Unpickler.load_newobj_ex(self)

    def _obj(self) -> None:
        self._budget.charge_copy(_copy_units(tuple(self.stack)))
        pickle._Unpickler.load_obj(self)

    def _inst(self) -> None:
        self._budget.charge_copy(_copy_units(tuple(self.stack)))
        pickle._Unpickler.load_inst(self)

    def _build(self) -> None:
        self._budget.charge_copy(_copy_units(self.stack[-1]))
        pickle._Unpickler.load_build(self)

    for _code, _method in (
        (pickle.TUPLE1, _tuple1),
        (pickle.TUPLE2, _tuple2),
        (pickle.TUPLE3, _tuple3),
        (pickle.TUPLE, _tuple),
        (pickle.LIST, _list),
        (pickle.FROZENSET, _frozenset),
        (pickle.DICT, _dict),
        (pickle.APPEND, _append),
        (pickle.APPENDS, _appends),
        (pickle.SETITEM, _setitem),
        (pickle.SETITEMS, _setitems),
        (pickle.ADDITEMS, _additems),
        (pickle.REDUCE, _reduce),
        (pickle.NEWOBJ, _newobj),
        (pickle.NEWOBJ_EX, _newobj_ex),
        (pickle.OBJ, _obj),
        (pickle.INST, _inst),
        (pickle.BUILD, _build),
    ):
        dispatch[_code[0]] = _method
    del _code, _method

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
        if self._refusal is not None:
            raise UnsafeCheckpointError(self._refusal(full))
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
                f"{self._path}: unexpected persistent id {brief(pid)} in the {self._context}"
            )
        return self._persistent(pid)


# --------------------------------------------------------------------------------------------
# Storages.


def parse_storage_pid(pid: Any, length: int, path: str, context: str) -> tuple:
    """Validate ('storage', torch.<Type>Storage, key, location, numel[, None]); return it.

    `length` is 5 for zip archives (``torch.save``, ``torch.jit.save``) and 6 for legacy files.
    """
    ok = (
        isinstance(pid, tuple)
        and len(pid) == length
        and pid[0] == "storage"
        and isinstance(pid[1], StorageType)
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
            f"{path}: malformed persistent id {brief(pid)} in the {context}; expected "
            f"('storage', torch.<Type>Storage, key, location, numel{tail})"
        )
    return pid


class StorageTable(Mapping[str, Storage]):
    """``persistent_load`` for torch storage ids; a Mapping of the storages seen, by key.

    Each key is one :class:`Storage`; a second declaration must agree on dtype and size.
    `load(key, dtype, numel)` supplies a new storage's data at once (zip archives: see
    :meth:`TorchZipArchive.storages`); without it ``array`` stays None for the caller to fill
    (legacy files, whose data follows the pickle).
    """

    def __init__(
        self,
        file: UntrustedFile,
        context: str,
        *,
        pid_length: int = 5,
        load: Callable[[str, np.dtype, int], np.ndarray] | None = None,
    ):
        self._file = file
        self._context = context
        self._pid_length = pid_length
        self._load = load
        self._storages: dict[str, Storage] = {}

    def __call__(self, pid: Any) -> Storage:
        parse_storage_pid(pid, self._pid_length, self._file.path, self._context)
        stype, key, numel = pid[1], pid[2], pid[4]
        st = self._storages.get(key)
        if st is not None:
            if st.dtype != stype.dtype or st.numel != numel:
                raise self._file.error(f"storage {key!r} is declared with two different types")
            return st
        st = Storage(stype.dtype, numel, key)
        if self._load is not None:
            st.array = self._load(key, stype.dtype, numel)
        self._storages[key] = st
        return st

    def __getitem__(self, key: str) -> Storage:
        return self._storages[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._storages)

    def __len__(self) -> int:
        return len(self._storages)


# --------------------------------------------------------------------------------------------
# Files and archives.


class UntrustedFile:
    """The bytes of one untrusted file, with its path for messages and a materialisation budget.

    Materialised tensors may not exceed a few times the file size in total (``budget``, in
    bytes): this guards against zero-stride "expanded" tensors declaring absurd sizes.
    """

    def __init__(self, path: str, data: bytes):
        self.path = path
        self.data = data
        self.budget = 4 * len(data) + 64 * 2**20
        self.tensor_cache: dict[int, np.ndarray] = {}
        # Shared by every pickle of the file, and by every compressed zip member.
        self.pickle_budget = PickleBudget(path, len(data))
        self.inflate_limit = INFLATE_BUDGET_RATIO * len(data) + INFLATE_BUDGET_BASE
        self.inflate_budget = self.inflate_limit

    def error(self, msg: str) -> CheckpointError:
        """A :class:`CheckpointError` whose message starts with the path."""
        return CheckpointError(f"{self.path}: {msg}")

    def frombuffer(self, buf: Any, dtype: np.dtype, numel: int, offset: int) -> np.ndarray:
        """A read-only view of `numel` elements of `buf` from byte `offset`; booleans checked."""
        if numel == 0:
            return np.zeros(0, dtype)
        arr = np.frombuffer(buf, dtype=dtype, count=numel, offset=offset)
        if dtype == np.bool_ and (arr.view(np.uint8) > 1).any():
            raise self.error("boolean storage holds bytes other than 0 and 1")
        return arr

    def materialize(self, ref: TensorRef) -> np.ndarray:
        """Copy a (storage, offset, size, stride) view out of its storage, bounds-checked.

        The copy is C-contiguous in torch's layout and dtype, charged to the budget, and
        cached: a tensor referenced twice is copied once.
        """
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

    def release(self) -> None:
        """Drop the file's bytes and the tensor cache.

        The stand-ins bound into an unpickler's allowlist may reference this object, forming a
        cycle that would keep the bytes and every cached tensor alive until the cyclic GC runs;
        releasing lets callers free tensors one by one.
        """
        self.data = b""
        self.tensor_cache.clear()

    @contextlib.contextmanager
    def parsing(self, what: str, advice: str = "") -> Iterator[None]:
        """Parse inside ``with file.parsing(...)``: errors name the file; released at the end.

        A :class:`CheckpointError` gains the path if it lacks it (an
        :class:`UnsafeCheckpointError` stays one); a RecursionError or any other exception,
        raised while parsing untrusted bytes, means the file is damaged and becomes
        "corrupt or truncated `what` (...)`advice`".
        """
        path = self.path
        try:
            yield
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
                f"{path}: corrupt or truncated {what} ({type(e).__name__}: {e!s:.300}){advice}"
            ) from e
        finally:
            self.release()


class TorchZipArchive:
    """A ``torch.save`` / ``torch.jit.save`` zip archive, opened safely.

    Opening refuses unsafe member names (path traversal), duplicate members, archives without
    exactly one ``<folder>/data.pkl`` and big-endian archives. Reads refuse encrypted members
    and members larger than the file's budget, and CRC-check stored members, which are
    returned as zero-copy views of the file's bytes.

    Args:
      file: the archive's bytes.
      kind: the archive kind for messages ("torch.save", "TorchScript").
      expected: what the caller expected, appended to "not a torch archive" errors.

    Attributes:
      prefix: the archive's folder with its slash (``"archive/"``).
      members: ``{name relative to prefix: ZipInfo}`` of the members under ``prefix``, in
        archive order.
    """

    def __init__(self, file: UntrustedFile, *, kind: str, expected: str):
        self.file = file
        self.kind = kind
        try:
            zf = zipfile.ZipFile(io.BytesIO(file.data))
            infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
            raise file.error(f"corrupt or truncated zip archive ({e}); {expected}") from e
        self._zip = zf
        if len(infos) > MAX_ZIP_MEMBERS:
            raise file.pickle_budget.exceeded(
                f"the number of zip members ({len(infos):,})",
                f"MAX_ZIP_MEMBERS = {MAX_ZIP_MEMBERS:,}",
            )
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
                raise file.error(f"zip member name {name!r:.200} is unsafe (path traversal)")
        names = {i.filename: i for i in infos}
        if len(names) != len(infos):
            raise file.error("zip archive contains duplicate member names")
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            what = "no" if not pkls else "more than one"
            hint = (
                " (a .npz file? use numpy.load)" if any(n.endswith(".npy") for n in names) else ""
            )
            raise file.error(
                f"zip archive has {what} '<folder>/data.pkl' entry, so it is not a {kind} "
                f"archive{hint}; {expected}"
            )
        self.prefix = pkls[0][: -len("data.pkl")]
        self.members: dict[str, zipfile.ZipInfo] = {
            n[len(self.prefix) :]: i for n, i in names.items() if n.startswith(self.prefix)
        }
        order = self.members.get("byteorder")
        if order is not None and bytes(self.read_member(order)).strip() != b"little":
            raise file.error(f"{kind} archive was written big-endian; not supported")

    def read(self, name: str) -> memoryview:
        """The bytes of member ``prefix + name``; a CheckpointError if it is absent."""
        info = self.members.get(name)
        if info is None:
            raise self.file.error(f"{self.kind} archive lacks the entry {self.prefix}{name}")
        return self.read_member(info)

    def read_member(self, info: zipfile.ZipInfo) -> memoryview:
        """A member's CRC-checked bytes: a zero-copy view of a stored member; a deflate or
        bzip2 member is inflated in chunks, charged to the file's inflate budget as it grows
        and stopped as soon as it exceeds its declared size."""
        if info.flag_bits & 0x1:
            raise self.file.error(f"zip member {info.filename!r} is encrypted")
        if info.file_size > self.file.budget:
            raise self.file.error(f"zip member {info.filename!r} is implausibly large")
        h = info.header_offset
        data = self.file.data
        if h < 0 or h + 30 > len(data) or data[h : h + 4] != b"PK\x03\x04":
            raise self.file.error(f"zip member {info.filename!r} has a corrupt local header")
        n, e = struct.unpack_from("<HH", data, h + 26)
        start = h + 30 + n + e
        if info.compress_type != zipfile.ZIP_STORED:
            end = start + info.compress_size
            if end > len(data):
                raise self.file.error(f"zip member {info.filename!r} is truncated")
            return self._inflate(info, memoryview(data)[start:end])
        end = start + info.file_size
        if info.compress_size != info.file_size or end > len(data):
            raise self.file.error(f"zip member {info.filename!r} is truncated")
        view = memoryview(data)[start:end]
        if zlib.crc32(view) != info.CRC:
            raise self.file.error(
                f"zip member {info.filename!r} fails its CRC check (file corrupted)"
            )
        return view

    def _inflate(self, info: zipfile.ZipInfo, raw: memoryview) -> memoryview:
        # zipfile.read would inflate a whole bzip2 block (gigabytes from kilobytes) before any
        # size check; here every chunk is bounded and charged before the next one is made.
        name = info.filename
        if info.compress_type == zipfile.ZIP_DEFLATED:
            dec: Any = zlib.decompressobj(-15)
        elif info.compress_type == zipfile.ZIP_BZIP2:
            dec = bz2.BZ2Decompressor()
        else:
            raise self.file.error(
                f"zip member {name!r} uses compression method {info.compress_type}; only "
                "stored, deflate and bzip2 members are read"
            )
        out = bytearray()
        crc = 0
        pending: Any = raw
        while True:
            want = min(_INFLATE_CHUNK, info.file_size - len(out) + 1)
            piece = dec.decompress(pending, want)
            if isinstance(dec, bz2.BZ2Decompressor):
                pending = b""  # it keeps unconsumed input itself
                stalled = not piece and dec.needs_input
            else:
                pending = dec.unconsumed_tail
                stalled = not piece and not pending
            self.file.inflate_budget -= len(piece)
            if self.file.inflate_budget < 0:
                raise self.file.pickle_budget.exceeded(
                    f"the bytes inflated from compressed zip members (at {name!r})",
                    "INFLATE_BUDGET_RATIO x file size + INFLATE_BUDGET_BASE = "
                    f"{self.file.inflate_limit:,} bytes",
                )
            if len(out) + len(piece) > info.file_size:
                raise self.file.error(
                    f"zip member {name!r} inflates beyond its declared {info.file_size} bytes "
                    "(a decompression bomb or a corrupt archive)"
                )
            out += piece
            crc = zlib.crc32(piece, crc)
            if dec.eof:
                break
            if stalled:
                raise self.file.error(f"zip member {name!r} is truncated (compressed data ends)")
        if len(out) != info.file_size or crc != info.CRC:
            raise self.file.error(
                f"zip member {name!r} fails its size or CRC check (file corrupted)"
            )
        return memoryview(out).toreadonly()

    def unpickle(
        self,
        name: str,
        context: str,
        allowed: Mapping[tuple[str, str], Any],
        persistent: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Unpickle member ``prefix + name`` with a :class:`RestrictedUnpickler`."""
        # Pickles in archives are small (storages live in their own members): C-level reads
        # from a copy are faster than a ViewFile.
        pkl = io.BytesIO(bytes(self.read(name)))
        return RestrictedUnpickler(
            pkl, self.file.path, context, allowed, persistent, budget=self.file.pickle_budget
        ).load()

    def storages(self, context: str) -> StorageTable:
        """The ``persistent_load`` of this archive's pickles: storage `key` is ``data/<key>``."""
        return StorageTable(self.file, context, pid_length=5, load=self._load_storage)

    def _load_storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"data/{key}"
        info = self.members.get(name)
        if info is None:
            raise self.file.error(
                f"{self.kind} archive lacks the storage entry {self.prefix}{name}"
            )
        if info.file_size != numel * dtype.itemsize:  # checked before anything is inflated
            raise self.file.error(
                f"storage {self.prefix}{name} has {info.file_size} bytes, expected "
                f"{numel * dtype.itemsize} ({numel} x {dtype})"
            )
        raw = self.read_member(info)
        if len(raw) != numel * dtype.itemsize:
            raise self.file.error(
                f"storage {self.prefix}{name} has {len(raw)} bytes, expected "
                f"{numel * dtype.itemsize} ({numel} x {dtype})"
            )
        return self.file.frombuffer(raw, dtype, numel, 0)
