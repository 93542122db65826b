"""DhariwalUNet (ADM, as re-implemented in EDM) as a pure function; EDM_REFERENCE.md §4."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from aid_jax.backbones import layers
from aid_jax.backbones.layers import Conv2d, GroupNorm, Linear, UNetBlock


@dataclasses.dataclass(frozen=True)
class DhariwalUNetConfig:
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_emb: int = 4
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.10  # training only
    label_dropout: float = 0.0  # training only

    def __post_init__(self):
        if self.img_resolution % (1 << (len(self.channel_mult) - 1)):
            raise ValueError(
                f"DhariwalUNet img_resolution {self.img_resolution} is not divisible by "
                f"2**{len(self.channel_mult) - 1} (channel_mult {self.channel_mult})"
            )

    @property
    def emb_channels(self) -> int:
        return self.model_channels * self.channel_mult_emb


def _block(cfg, cin, cout, *, attention=False, up=False, down=False) -> UNetBlock:
    # ADM blocks: adaptive scale/shift, skip scale 1, eps 1e-5, 64 channels per head.
    return UNetBlock(
        cin,
        cout,
        cfg.emb_channels,
        up=up,
        down=down,
        num_heads=cout // 64 if attention else 0,
        skip_scale=1.0,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
    )


def modules(cfg: DhariwalUNetConfig) -> dict[str, list[tuple[str, object]]]:
    mc = cfg.model_channels
    mapping = []
    if cfg.augment_dim:
        mapping.append(("map_augment", Linear(cfg.augment_dim, mc, bias=False)))
    mapping.append(("map_layer0", Linear(mc, cfg.emb_channels)))
    mapping.append(("map_layer1", Linear(cfg.emb_channels, cfg.emb_channels)))
    if cfg.label_dim:
        mapping.append(("map_label", Linear(cfg.label_dim, cfg.emb_channels, bias=False)))

    enc: list[tuple[str, object]] = []
    cout = cfg.in_channels
    for level, mult in enumerate(cfg.channel_mult):
        res = cfg.img_resolution >> level
        if level == 0:
            cin, cout = cout, mc * mult
            enc.append((f"{res}x{res}_conv", Conv2d(cin, cout, 3)))
        else:
            enc.append((f"{res}x{res}_down", _block(cfg, cout, cout, down=True)))
        for idx in range(cfg.num_blocks):
            cin, cout = cout, mc * mult
            attn = res in cfg.attn_resolutions
            enc.append((f"{res}x{res}_block{idx}", _block(cfg, cin, cout, attention=attn)))
    skips = [m.out_channels for _, m in enc]

    dec: list[tuple[str, object]] = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        res = cfg.img_resolution >> level
        if level == len(cfg.channel_mult) - 1:
            dec.append((f"{res}x{res}_in0", _block(cfg, cout, cout, attention=True)))
            dec.append((f"{res}x{res}_in1", _block(cfg, cout, cout)))
        else:
            dec.append((f"{res}x{res}_up", _block(cfg, cout, cout, up=True)))
        for idx in range(cfg.num_blocks + 1):
            cin, cout = cout + skips.pop(), mc * mult
            attn = res in cfg.attn_resolutions  # every decoder block at that resolution
            dec.append((f"{res}x{res}_block{idx}", _block(cfg, cin, cout, attention=attn)))
    out = [("out_norm", GroupNorm(cout, eps=1e-5)), ("out_conv", Conv2d(cout, cfg.out_channels, 3))]
    return {"mapping": mapping, "enc": enc, "dec": dec, "out": out}


def state_shapes(cfg: DhariwalUNetConfig) -> dict[str, tuple[int, ...]]:
    m = modules(cfg)
    out = dict(layers.module_state_shapes(m["mapping"]))
    for part in ("enc", "dec"):
        for key, shape in layers.module_state_shapes(m[part]):
            out[f"{part}.{key}"] = shape
    out.update(layers.module_state_shapes(m["out"]))
    return out


def apply(
    params, x, noise_labels, class_labels, cfg: DhariwalUNetConfig, augment_labels=None
) -> jax.Array:
    """F(x; c_noise, labels) of DhariwalUNet. x [B, H, W, C] NHWC; noise_labels [B];
    `augment_labels` [B, augment_dim] (training only) or None."""
    m = modules(cfg)
    mapping = dict(m["mapping"])
    # ADM keeps [cos, sin] (no swap) and endpoint=False.
    emb = layers.positional_embedding(noise_labels, cfg.model_channels, endpoint=False)
    emb = emb.astype(x.dtype)
    if cfg.augment_dim and augment_labels is not None:
        emb = emb + mapping["map_augment"](params["map_augment"], augment_labels.astype(x.dtype))
    emb = layers.silu(mapping["map_layer0"](params["map_layer0"], emb))
    emb = mapping["map_layer1"](params["map_layer1"], emb)
    if cfg.label_dim:
        # No bias and no √label_dim factor here, unlike SongUNet.
        emb = emb + mapping["map_label"](params["map_label"], class_labels.astype(x.dtype))
    emb = layers.silu(emb)

    skips = []
    for name, block in m["enc"]:
        p = params["enc"].get(name, {})
        x = block(p, x, emb) if isinstance(block, UNetBlock) else block(p, x)
        skips.append(x)
    for name, block in m["dec"]:
        if "block" in name:
            x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = block(params["dec"].get(name, {}), x, emb)
    out = dict(m["out"])
    return out["out_conv"](params["out_conv"], layers.silu(out["out_norm"](params["out_norm"], x)))
