"""SongUNet (DDPM++ and NCSN++ of EDM) as a pure function; EDM_REFERENCE.md §3.

`SongUNetConfig` mirrors the PyTorch constructor. `modules(cfg)` lists the named layer specs in
torch's registration order; from it come the state-dict keys and shapes and the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from aid_jax.backbones import layers
from aid_jax.backbones.layers import Conv2d, GroupNorm, Linear, UNetBlock

EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")


@dataclasses.dataclass(frozen=True)
class SongUNetConfig:
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.10  # training only
    label_dropout: float = 0.0  # training only
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: tuple[int, ...] = (1, 1)

    def __post_init__(self):
        for field, value, allowed in (
            ("embedding_type", self.embedding_type, EMBEDDING_TYPES),
            ("encoder_type", self.encoder_type, ENCODER_TYPES),
            ("decoder_type", self.decoder_type, DECODER_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"SongUNet {field}={value!r}; expected one of {allowed}")
        if self.img_resolution % (1 << (len(self.channel_mult) - 1)):
            raise ValueError(
                f"SongUNet img_resolution {self.img_resolution} is not divisible by "
                f"2**{len(self.channel_mult) - 1} (channel_mult {self.channel_mult})"
            )

    @property
    def emb_channels(self) -> int:
        return self.model_channels * self.channel_mult_emb

    @property
    def noise_channels(self) -> int:
        return self.model_channels * self.channel_mult_noise


def _block_kwargs(cfg: SongUNetConfig) -> dict:
    # Fixed SongUNet block settings (EDM_REFERENCE.md §3): one head, skip scale √½, eps 1e-6.
    return dict(
        emb_channels=cfg.emb_channels,
        skip_scale=float(np.sqrt(0.5)),
        eps=1e-6,
        resample_filter=cfg.resample_filter,
        resample_proj=True,
        adaptive_scale=False,
    )


def modules(cfg: SongUNetConfig) -> dict[str, list[tuple[str, object]]]:
    """Named layer specs of the mapping network, encoder and decoder, in torch order."""
    kw = _block_kwargs(cfg)
    heads = 1
    r = cfg.resample_filter
    mapping = []
    if cfg.embedding_type == "fourier":
        mapping.append(("map_noise", _FourierBuffer(cfg.noise_channels)))
    if cfg.label_dim:
        mapping.append(("map_label", Linear(cfg.label_dim, cfg.noise_channels)))
    if cfg.augment_dim:
        mapping.append(("map_augment", Linear(cfg.augment_dim, cfg.noise_channels, bias=False)))
    mapping.append(("map_layer0", Linear(cfg.noise_channels, cfg.emb_channels)))
    mapping.append(("map_layer1", Linear(cfg.emb_channels, cfg.emb_channels)))

    enc: list[tuple[str, object]] = []
    cout = caux = cfg.in_channels
    for level, mult in enumerate(cfg.channel_mult):
        res = cfg.img_resolution >> level
        if level == 0:
            cin, cout = cout, cfg.model_channels
            enc.append((f"{res}x{res}_conv", Conv2d(cin, cout, 3)))
        else:
            enc.append((f"{res}x{res}_down", UNetBlock(cout, cout, down=True, **kw)))
            if cfg.encoder_type == "skip":
                enc.append(
                    (f"{res}x{res}_aux_down", Conv2d(caux, caux, 0, down=True, resample_filter=r))
                )
                enc.append((f"{res}x{res}_aux_skip", Conv2d(caux, cout, 1)))
            if cfg.encoder_type == "residual":
                aux = Conv2d(caux, cout, 3, down=True, resample_filter=r, fused_resample=True)
                enc.append((f"{res}x{res}_aux_residual", aux))
                caux = cout
        for idx in range(cfg.num_blocks):
            cin, cout = cout, cfg.model_channels * mult
            attn = heads if res in cfg.attn_resolutions else 0
            enc.append((f"{res}x{res}_block{idx}", UNetBlock(cin, cout, num_heads=attn, **kw)))
    skips = [m.out_channels for name, m in enc if "aux" not in name]

    dec: list[tuple[str, object]] = []
    top = len(cfg.channel_mult) - 1
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        res = cfg.img_resolution >> level
        if level == top:
            dec.append((f"{res}x{res}_in0", UNetBlock(cout, cout, num_heads=heads, **kw)))
            dec.append((f"{res}x{res}_in1", UNetBlock(cout, cout, **kw)))
        else:
            dec.append((f"{res}x{res}_up", UNetBlock(cout, cout, up=True, **kw)))
        for idx in range(cfg.num_blocks + 1):
            cin, cout = cout + skips.pop(), cfg.model_channels * mult
            # Attention only in the last decoder block of an attention level (unlike the encoder).
            attn = heads if idx == cfg.num_blocks and res in cfg.attn_resolutions else 0
            dec.append((f"{res}x{res}_block{idx}", UNetBlock(cin, cout, num_heads=attn, **kw)))
        if cfg.decoder_type == "skip" or level == 0:
            if cfg.decoder_type == "skip" and level < top:
                oc = cfg.out_channels
                dec.append((f"{res}x{res}_aux_up", Conv2d(oc, oc, 0, up=True, resample_filter=r)))
            dec.append((f"{res}x{res}_aux_norm", GroupNorm(cout, eps=1e-6)))
            dec.append((f"{res}x{res}_aux_conv", Conv2d(cout, cfg.out_channels, 3)))
    return {"mapping": mapping, "enc": enc, "dec": dec}


@dataclasses.dataclass(frozen=True)
class _FourierBuffer:
    num_channels: int

    def state_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield "freqs", (self.num_channels // 2,)


def state_shapes(cfg: SongUNetConfig) -> dict[str, tuple[int, ...]]:
    """Torch state-dict keys (relative to the UNet) and shapes, in torch order."""
    m = modules(cfg)
    out = dict(layers.module_state_shapes(m["mapping"]))
    for part in ("enc", "dec"):
        for key, shape in layers.module_state_shapes(m[part]):
            out[f"{part}.{key}"] = shape
    return out


def noise_embedding(params, noise_labels, cfg: SongUNetConfig) -> jax.Array:
    """The noise embedding fed to map_layer0, halves swapped to [sin, cos] (§3, step 2)."""
    if cfg.embedding_type == "positional":
        emb = layers.positional_embedding(noise_labels, cfg.noise_channels, endpoint=True)
    else:
        emb = layers.fourier_embedding(noise_labels, params["map_noise"]["freqs"])
    half = emb.shape[1] // 2
    return jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)


def apply(
    params, x, noise_labels, class_labels, cfg: SongUNetConfig, augment_labels=None
) -> jax.Array:
    """F(x; c_noise, labels) of SongUNet. x [B, H, W, C] NHWC; noise_labels [B].

    `augment_labels` [B, augment_dim] condition on EDM's augmentation pipeline (training only;
    samplers pass none, which is the same as zeros).
    """
    m = modules(cfg)
    mapping = dict(m["mapping"])
    emb = noise_embedding(params, noise_labels, cfg).astype(x.dtype)
    if cfg.label_dim:
        scaled = class_labels.astype(x.dtype) * math.sqrt(cfg.label_dim)
        emb = emb + mapping["map_label"](params["map_label"], scaled)
    if cfg.augment_dim and augment_labels is not None:
        emb = emb + mapping["map_augment"](params["map_augment"], augment_labels.astype(x.dtype))
    emb = layers.silu(mapping["map_layer0"](params["map_layer0"], emb))
    emb = layers.silu(mapping["map_layer1"](params["map_layer1"], emb))

    skips = []
    aux = x
    p_enc = params["enc"]
    for name, block in m["enc"]:
        p = p_enc.get(name, {})
        if "aux_down" in name:
            aux = block(p, aux)
        elif "aux_skip" in name:
            x = skips[-1] = x + block(p, aux)
        elif "aux_residual" in name:
            x = skips[-1] = aux = (x + block(p, aux)) / math.sqrt(2)
        else:
            x = block(p, x, emb) if isinstance(block, UNetBlock) else block(p, x)
            skips.append(x)

    aux = tmp = None
    p_dec = params["dec"]
    for name, block in m["dec"]:
        p = p_dec.get(name, {})
        if "aux_up" in name:
            aux = block(p, aux)
        elif "aux_norm" in name:
            tmp = block(p, x)
        elif "aux_conv" in name:
            tmp = block(p, layers.silu(tmp))
            aux = tmp if aux is None else tmp + aux
        else:
            if "block" in name:
                x = jnp.concatenate([x, skips.pop()], axis=-1)  # x first, then the skip
            x = block(p, x, emb)
    return aux
