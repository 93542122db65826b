"""aid_jax: inpainting with frozen EDM/EDM2 diffusion backbones, in JAX."""

from aid_jax.backbones import Backbone, BackboneError, load_backbone

__version__ = "0.1.0"

__all__ = ["Backbone", "BackboneError", "load_backbone"]
