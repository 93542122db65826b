"""Inpainting methods behind one contract (``contract``), sharing EDM primitives
(``primitives``), one file per method, and one registry (``registry``).

    from aid_jax import methods

    fn = methods.make_inpainter("ddnm", denoise_with_params, num_steps=50)  # an Inpainter
    res = fn(params, y, mask, key)            # InpaintResult(x, nfe, nfe_backward)
    methods.method_options("dps"), methods.method_cost("repaint", num_steps=50)

Method files: ``unguided``, ``replacement``, ``repaint``, ``dps``, ``pigdm``, ``ddrm``, ``ddnm``,
``ddnm_plus`` (zero-shot, pure functions of a ``denoise(x, sigma)`` closure), ``vipaint`` (a
per-image fit, ``aid_jax.vipaint``), ``aid`` (a trained guidance module, ``aid_jax.aid``) and
``deft`` (a trained h-transform network, ``aid_jax.deft``).
The registry is imported on first use: the contract alone stays light (``aid_jax.aid`` and
``aid_jax.vipaint`` import it).
"""

from aid_jax.methods.contract import (
    DenoiseFn,
    Inpainter,
    InpaintResult,
    Resources,
    check_key,
    check_labels,
    validate_inputs,
    with_labels,
)

__all__ = [
    "REGISTRY",
    "DenoiseFn",
    "InpaintResult",
    "Inpainter",
    "Method",
    "Resources",
    "check_key",
    "check_labels",
    "flat_options",
    "get",
    "make_inpainter",
    "method_cost",
    "method_options",
    "validate_inputs",
    "with_labels",
]

_REGISTRY_NAMES = (
    "REGISTRY",
    "Method",
    "flat_options",
    "get",
    "make_inpainter",
    "method_cost",
    "method_options",
)


def __getattr__(name):
    if name in _REGISTRY_NAMES:
        from aid_jax.methods import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'aid_jax.methods' has no attribute {name!r}")
