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
