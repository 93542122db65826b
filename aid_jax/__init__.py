"""aid_jax: inpainting with frozen EDM/EDM2 diffusion backbones, in JAX."""

__version__ = "0.1.0"
