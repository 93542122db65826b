"""EDM preconditioners (EDMPrecond, VPPrecond, VEPrecond) around SongUNet / DhariwalUNet.

D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ), labels), formed in float32
(EDM_REFERENCE.md §1). The configuration comes from the preconditioner's constructor arguments
(`_init_kwargs` of NVIDIA's pickles), so a checkpoint fully determines its network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import dhariwal_unet, layers, song_unet

PRECONDS = ("EDMPrecond", "VPPrecond", "VEPrecond")
MODEL_TYPES = {"SongUNet": song_unet, "DhariwalUNet": dhariwal_unet}

# Constructor defaults of each preconditioner (NVlabs/edm `training/networks.py`).
_PRECOND_DEFAULTS = {
    "EDMPrecond": dict(sigma_min=0.0, sigma_max=float("inf"), sigma_data=0.5),
    "VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
    "VEPrecond": dict(sigma_min=0.02, sigma_max=100.0),
}
_COMMON = ("img_resolution", "img_channels", "label_dim", "use_fp16", "model_type")


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """Static description of an EDM-family denoiser (hashable: usable as a jit static arg)."""

    precond: str
    img_resolution: int
    img_channels: int
    label_dim: int
    model_type: str
    net: song_unet.SongUNetConfig | dhariwal_unet.DhariwalUNetConfig
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    sigma_data: float = 0.5
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5
    use_fp16: bool = False  # recorded only; F always runs in float32 here

    @classmethod
    def from_init_kwargs(cls, precond: str, init_kwargs: Mapping) -> EDMConfig:
        """Build from a preconditioner class name and its constructor keyword arguments."""
        if precond not in PRECONDS:
            raise ValueError(f"unknown EDM preconditioner {precond!r}; expected one of {PRECONDS}")
        kwargs = dict(init_kwargs)
        for name in ("img_resolution", "img_channels"):
            if name not in kwargs:
                raise ValueError(f"{precond} arguments lack {name!r} (got {sorted(kwargs)})")
        # Constructor defaults: EDMPrecond -> DhariwalUNet, VP/VE -> SongUNet.
        default_type = "DhariwalUNet" if precond == "EDMPrecond" else "SongUNet"
        model_type = kwargs.pop("model_type", default_type)
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"unknown architecture model_type={model_type!r}; expected one of "
                f"{sorted(MODEL_TYPES)} (EDM2 checkpoints use class 'Precond')"
            )
        precond_kw = dict(_PRECOND_DEFAULTS[precond])
        for name in list(kwargs):
            if name in precond_kw:
                precond_kw[name] = kwargs.pop(name)
        img_resolution = int(kwargs.pop("img_resolution"))
        img_channels = int(kwargs.pop("img_channels"))
        label_dim = int(kwargs.pop("label_dim", 0))
        use_fp16 = bool(kwargs.pop("use_fp16", False))
        net_cls = {
            "SongUNet": song_unet.SongUNetConfig,
            "DhariwalUNet": dhariwal_unet.DhariwalUNetConfig,
        }
        net_cls = net_cls[model_type]
        known = {f.name for f in dataclasses.fields(net_cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"{model_type} does not accept argument(s) {unknown}; accepted: {sorted(known)}"
            )
        net_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        net = net_cls(
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **net_kw,
        )
        if precond == "VPPrecond":
            vp = {k: precond_kw[k] for k in ("beta_d", "beta_min", "M", "epsilon_t")}
            precond_kw["sigma_min"] = float(vp_sigma(vp["epsilon_t"], vp["beta_d"], vp["beta_min"]))
            precond_kw["sigma_max"] = float(vp_sigma(1.0, vp["beta_d"], vp["beta_min"]))
        return cls(
            precond=precond,
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            model_type=model_type,
            net=net,
            use_fp16=use_fp16,
            **{k: (int(v) if k == "M" else float(v)) for k, v in precond_kw.items()},
        )

    def init_kwargs(self) -> dict:
        """The constructor arguments, as NVIDIA's `_init_kwargs` would hold them (JSON-able)."""
        out = dict(
            img_resolution=self.img_resolution,
            img_channels=self.img_channels,
            label_dim=self.label_dim,
            use_fp16=self.use_fp16,
            model_type=self.model_type,
        )
        for name in _PRECOND_DEFAULTS[self.precond]:
            out[name] = getattr(self, name)
        skip = ("img_resolution", "in_channels", "out_channels", "label_dim")
        for f in dataclasses.fields(self.net):
            if f.name not in skip:
                v = getattr(self.net, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def vp_sigma(t, beta_d, beta_min):
    """σ(t) of the VP SDE: √(exp(½β_d t² + β_min t) − 1)."""
    t = np.asarray(t, np.float64)
    return np.sqrt(np.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def _net_module(cfg: EDMConfig):
    return MODEL_TYPES[cfg.model_type]


def state_shapes(cfg: EDMConfig) -> dict[str, tuple[int, ...]]:
    """Full torch state-dict keys (with the `model.` prefix) and shapes, in torch order."""
    return {f"model.{k}": s for k, s in _net_module(cfg).state_shapes(cfg.net).items()}


def num_params(cfg: EDMConfig) -> int:
    return layers.num_params_from_shapes(state_shapes(cfg), buffers=("resample_filter", "freqs"))


def _expected_buffer(cfg: EDMConfig, key: str) -> np.ndarray | None:
    if key.endswith("resample_filter"):
        r = getattr(cfg.net, "resample_filter", (1, 1))
        return layers.resample_kernel(r)[None, None]
    return None


def to_params(state: Mapping[str, np.ndarray], cfg: EDMConfig, *, consume: bool = False) -> dict:
    """Torch-layout state dict -> params pytree (nested dicts named like the torch modules).

    Conv kernels OIHW -> HWIO, linear [out, in] -> [in, out], float32. The `resample_filter`
    buffers carry nothing beyond the configured filter: they are checked and dropped. The state
    must have been validated with `validate_state` (done by `aid_jax.backbones.params_from_state`).
    With `consume=True` entries are removed from `state` (a mutable mapping) as they are converted.
    """
    params: dict = {}
    for key in list(state):
        # consume=True frees each source tensor once converted: porting then needs about one
        # copy of the weights at a time instead of two.
        value = np.asarray(state.pop(key) if consume else state[key])
        if key.endswith("resample_filter"):
            continue
        parts = key.split(".")
        if parts[-1] == "weight" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif parts[-1] == "weight" and value.ndim == 2:
            value = value.T
        node = params
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = np.ascontiguousarray(value, dtype=np.float32)
    return params


def check_buffers(state: Mapping[str, np.ndarray], cfg: EDMConfig, source: str) -> None:
    """Resample-filter buffers must equal the configured filter (they are rebuilt, not used)."""
    for key, value in state.items():
        expected = _expected_buffer(cfg, key)
        if expected is not None and not np.allclose(np.asarray(value, np.float32), expected):
            raise ValueError(
                f"{source}: buffer {key} = {np.asarray(value).ravel().tolist()} does not match the "
                f"configured resample_filter (expected {expected.ravel().tolist()})"
            )


def denoise(
    params, x, sigma, labels, cfg: EDMConfig, compute_dtype=jnp.float32, augment_labels=None
) -> jax.Array:
    """D(x; σ) for EDMPrecond / VPPrecond / VEPrecond. x [B, H, W, C]; sigma [B].

    `compute_dtype` (e.g. bfloat16) applies inside F only: preconditioning, GroupNorm statistics,
    attention softmax and D itself stay float32 (as EDM does with use_fp16).
    """
    x = x.astype(jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1)
    if cfg.label_dim:
        if labels is None:
            labels = jnp.zeros((1, cfg.label_dim), jnp.float32)  # as NVIDIA: a zero vector
        labels = jnp.broadcast_to(labels.astype(jnp.float32), (x.shape[0], cfg.label_dim))
    else:
        labels = None
    sd = np.float32(cfg.sigma_data)
    if cfg.precond == "EDMPrecond":
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
        c_in = 1 / jnp.sqrt(sd**2 + sigma**2)
        c_noise = jnp.log(sigma) / 4
    elif cfg.precond == "VPPrecond":
        c_skip = jnp.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / jnp.sqrt(sigma**2 + 1)
        bd, bm = np.float32(cfg.beta_d), np.float32(cfg.beta_min)
        t = (jnp.sqrt(bm**2 + 2 * bd * jnp.log(1 + sigma**2)) - bm) / bd  # σ⁻¹(σ) of the VP SDE
        c_noise = np.float32(cfg.M - 1) * t
    else:  # VEPrecond
        c_skip = jnp.ones_like(sigma)
        c_out = sigma
        c_in = jnp.ones_like(sigma)
        c_noise = jnp.log(0.5 * sigma)
    f = _net_module(cfg).apply(
        params["model"],
        (c_in * x).astype(compute_dtype),
        c_noise.reshape(-1),
        labels,
        cfg.net,
        augment_labels=augment_labels,
    )
    return c_skip * x + c_out * f.astype(jnp.float32)


def init_state(key: jax.Array, cfg: EDMConfig) -> dict[str, np.ndarray]:
    """Random torch-layout state dict (weights N(0, 0.05²)·, vectors around 0/1), for smoke tests
    and benchmarks. Buffers take their true values."""
    out = {}
    rng = _numpy_rng(key)
    for name, shape in state_shapes(cfg).items():
        expected = _expected_buffer(cfg, name)
        if expected is not None:
            out[name] = expected.astype(np.float32)
            continue
        noise = rng.standard_normal(shape, np.float32)
        if name.endswith("freqs"):
            out[name] = 16 * noise
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[name] = noise / np.sqrt(fan_in)
        elif ".norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.1 * noise
        else:
            out[name] = 0.1 * noise
    # NumPy 2 promotes float32 arrays with float64 scalars: store float32 as real checkpoints do.
    return {k: v.astype(np.float32) for k, v in out.items()}


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key: initialising tensor by tensor with jax.random
    would compile one XLA program per distinct shape (~100 for a UNet)."""
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel().tolist()
    return np.random.default_rng(seed)


def training_init_state(key: jax.Array, cfg: EDMConfig) -> dict[str, np.ndarray]:
    """SongUNet initialisation for training from scratch, after EDM's scheme: Xavier-uniform
    weights, zero biases, GroupNorm scale 1, the last conv of each block (`conv1`), the attention
    output (`proj`) and the output convs (`aux_conv`) scaled by 1e-5 so every residual branch
    starts near zero, qkv scaled by √0.2, Fourier frequencies N(0, 16²)."""
    if cfg.model_type != "SongUNet":
        raise ValueError(f"training init is implemented for SongUNet, not {cfg.model_type}")
    out = {}
    rng = _numpy_rng(key)
    for name, shape in state_shapes(cfg).items():
        expected = _expected_buffer(cfg, name)
        parts = name.split(".")
        if expected is not None:
            out[name] = expected.astype(np.float32)
        elif parts[-1] == "freqs":
            out[name] = 16 * rng.standard_normal(shape, np.float32)
        elif parts[-1] == "bias" or (parts[-2].startswith("norm") or parts[-2].endswith("_norm")):
            out[name] = np.ones(shape, np.float32) if parts[-1] == "weight" else np.zeros(shape)
        else:  # weight of a Linear [out, in] or Conv2d [out, in, k, k]
            receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            bound = np.sqrt(6 / (fan_in + fan_out))
            w = bound * rng.uniform(-1.0, 1.0, shape).astype(np.float32)
            if parts[-2] in ("conv1", "proj") or parts[-2].endswith("_aux_conv"):
                w = w * 1e-5
            elif parts[-2] == "qkv":
                w = w * np.sqrt(0.2)
            out[name] = w
    return {k: np.asarray(v, np.float32) for k, v in out.items()}
