"""aid_jax.backbones.layers.conv's hand-written input gradient (fast inside lax.scan on CPU):
the adjoint identity in float64, both cotangents equal to JAX's own rule, inside a scan, and for
a mixed-precision input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax.backbones import layers

CASES = [(3, 1), (1, 0), (3, 2), (1, 1), (3, 0), (5, 2)]  # (kernel, padding)


def _reference(x, w, padding):  # JAX's own transpose rule
    return layers._correlate(x, w, padding)


@pytest.mark.parametrize("k,padding", CASES)
def test_adjoint_identity_in_float64(k, padding):
    """⟨conv(x), g⟩ = ⟨x, conv_input_grad(g)⟩ exactly (to float64 rounding)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(k * 10 + padding)
        x = rng.standard_normal((2, 7, 6, 3))
        w = rng.standard_normal((k, k, 3, 4))
        y = np.asarray(layers.conv(jnp.asarray(x), jnp.asarray(w), padding))
        g = rng.standard_normal(y.shape)
        dx = np.asarray(layers.conv_input_grad(jnp.asarray(g), jnp.asarray(w), padding))
        assert dx.shape == x.shape
        np.testing.assert_allclose(np.sum(y * g), np.sum(x * dx), rtol=1e-12)


@pytest.mark.parametrize("k,padding", CASES)
def test_both_cotangents_match_jax(k, padding):
    rng = np.random.default_rng(k + padding)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 4, 5)), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: layers.conv(a, b, padding), x, w)
    y_ref, vjp_ref = jax.vjp(lambda a, b: _reference(a, b, padding), x, w)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_inside_a_scan_and_in_half_precision():
    """The gradient of a scanned stack of convolutions equals the unrolled one; a float16 input
    with a float32 kernel gives cotangents in their own dtypes."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)) * 0.2, jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)

    def loss(x, w, unroll):
        out, _ = jax.lax.scan(
            lambda h, _: (jnp.tanh(layers.conv(h, w, 1)), None), x, None, length=4, unroll=unroll
        )
        return jnp.sum(out**2)

    scanned = jax.grad(loss, argnums=(0, 1))(x, w, 1)
    unrolled = jax.grad(loss, argnums=(0, 1))(x, w, 4)
    for a, b in zip(scanned, unrolled, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

    dx, dw = jax.grad(lambda a, b: jnp.sum(layers.conv(a, b, 1)), argnums=(0, 1))(
        x.astype(jnp.float16), w
    )
    assert dx.dtype == jnp.float16 and dw.dtype == jnp.float32
