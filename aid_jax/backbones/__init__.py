"""Frozen EDM / EDM2 backbones: safe loading, porting and pure-function denoisers."""

from aid_jax.backbones.loader import (
    Backbone,
    BackboneError,
    backbone_from_config,
    check_params,
    config_from_checkpoint,
    denoise,
    init_params,
    load_backbone,
    make_sampler,
    num_params,
    params_from_state,
    prepare_labels,
    save_backbone,
)

__all__ = [
    "Backbone",
    "BackboneError",
    "backbone_from_config",
    "check_params",
    "config_from_checkpoint",
    "denoise",
    "init_params",
    "load_backbone",
    "make_sampler",
    "num_params",
    "params_from_state",
    "prepare_labels",
    "save_backbone",
]
