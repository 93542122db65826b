"""aid_jax: inpainting with frozen EDM/EDM2 diffusion backbones, in JAX.

params = aid_jax.load("runs/aid")                # trained guidance + its frozen backbone
out = aid_jax.inpaint(params, x, mask)           # x NHWC in [-1, 1], mask 1 = known pixel
"""

from aid_jax.backbones import Backbone, BackboneError, load_backbone

__version__ = "0.1.0"

__all__ = [
    "AIDParams",
    "Backbone",
    "BackboneError",
    "inpaint",
    "inpaint_images",
    "load",
    "load_backbone",
]

_LAZY = {  # AID pulls in Flax; import it on first use only
    "inpaint": ("aid_jax.aid.model", "inpaint"),
    "AIDParams": ("aid_jax.aid.model", "AIDParams"),
    "load": ("aid_jax.aid.api", "load"),
    "inpaint_images": ("aid_jax.inpaint_images", "inpaint_images"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'aid_jax' has no attribute {name!r}")
