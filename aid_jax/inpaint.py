"""``python -m aid_jax.inpaint``: inpaint your own image files (see ``--help`` and
:mod:`aid_jax.inpaint_images`).

``aid_jax.inpaint`` is also the AID deployment function (:func:`aid_jax.aid.model.inpaint`).
Importing this module (``import aid_jax.inpaint``) makes the package attribute ``aid_jax.inpaint``
this module instead of that function, so the module object stays callable:
``aid_jax.inpaint(params, x, mask, ...)`` forwards to :func:`aid_jax.aid.model.inpaint` either way.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """``aid_jax.aid.model.inpaint(*args, **kwargs)``: inpaint with a trained AID module."""
        from aid_jax.aid.model import inpaint

        return inpaint(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def main(argv=None) -> int:
    """The command line of :func:`aid_jax.inpaint_images.main`; returns the exit status."""
    from aid_jax import compile_cache
    from aid_jax.inpaint_images import main as images_main

    compile_cache.enable()  # warm starts ($AID_JAX_COMPILATION_CACHE; aid_jax/compile_cache.py)
    return images_main(argv)


if __name__ == "__main__":
    sys.exit(main())
