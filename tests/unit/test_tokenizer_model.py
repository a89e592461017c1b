"""Residual quantization, progressive masking and the SID-v2 networks, by hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizer.model import SidAutoencoder, nearest_code, progressive_mask, residual_quantize

BOOKS = (
    jnp.array([[0.0, 0.0], [10.0, 0.0]]),  # level 1
    jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),  # level 2
)


def test_residual_quantize_hand_computed_codes_residuals_and_sum():
    z = jnp.array([[9.0, 0.8], [0.2, -0.9]])
    out = residual_quantize(z, BOOKS, jnp.ones((2, 2)))
    # item 0: nearest of level 1 is [10, 0]; residual [-1, .8] is nearest to [-1, 0]
    # item 1: nearest of level 1 is [0, 0]; residual [.2, -.9]: distances 1.45, 3.65, 2.25
    np.testing.assert_array_equal(out.codes, [[1, 2], [0, 0]])
    np.testing.assert_allclose(out.residuals[0], [[9.0, 0.8], [-1.0, 0.8]], atol=1e-6)
    np.testing.assert_allclose(out.residuals[1], [[0.2, -0.9], [0.2, -0.9]], atol=1e-6)
    np.testing.assert_allclose(out.codewords[0], [[10.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(out.quantized, [[9.0, 0.0], [1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(out.z_hat, out.quantized, atol=1e-6)


def test_masking_drops_later_levels_but_keeps_their_codes():
    z = jnp.array([[9.0, 0.8], [9.0, 0.8]])
    out = residual_quantize(z, BOOKS, jnp.array([[1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out.quantized, [[10.0, 0.0], [9.0, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(out.codes, [[1, 2], [1, 2]])


def test_code_choice_is_the_nearest_codeword():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((50, 4)).astype(np.float32)
    book = rng.standard_normal((17, 4)).astype(np.float32)
    brute = np.argmin(((r[:, None, :] - book[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_code(jnp.asarray(r), jnp.asarray(book)), brute)


def test_straight_through_gradient_is_identity_to_z():
    z = jnp.array([[9.0, 0.8], [0.2, -0.9]])
    w = jnp.array([[1.0, 2.0], [3.0, -4.0]])

    def f(z):
        return jnp.sum(w * residual_quantize(z, BOOKS, jnp.ones((2, 2))).z_hat)

    np.testing.assert_allclose(jax.grad(f)(z), w)


def test_codebooks_get_no_gradient_through_z_hat():
    z = jnp.array([[9.0, 0.8]])

    def f(books):
        return jnp.sum(residual_quantize(z, books, jnp.ones((1, 2))).z_hat)

    for g in jax.grad(f)(BOOKS):
        np.testing.assert_array_equal(g, 0.0)


def test_progressive_mask_rows_are_prefixes_covering_every_depth():
    m = np.asarray(progressive_mask(jax.random.PRNGKey(0), 600, 3))
    depth = m.sum(axis=1).astype(int)
    assert set(depth) == {1, 2, 3}
    for row, r in zip(m, depth, strict=True):
        np.testing.assert_array_equal(row, [1.0] * r + [0.0] * (3 - r))
    np.testing.assert_array_equal(progressive_mask(jax.random.PRNGKey(0), 4, 3, enabled=False), 1.0)


@pytest.mark.parametrize("latent", [8])
def test_autoencoder_shapes_per_modality(latent):
    mods = (("audio", 5), ("text", 7))
    model = SidAutoencoder(mods, (16,), 8, latent, (16,))
    x = {"audio": jnp.ones((3, 5)), "text": jnp.ones((3, 7))}
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    assert {"enc_audio", "enc_text", "dec_audio", "dec_text", "project"} <= set(params)
    z = model.apply({"params": params}, x, method=SidAutoencoder.encode)
    assert z.shape == (3, latent)
    out = model.apply({"params": params}, z, method=SidAutoencoder.decode)
    assert {k: v.shape for k, v in out.items()} == {"audio": (3, 5), "text": (3, 7)}
