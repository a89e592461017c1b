"""Properties and hand-computed values of the SID-v2 losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokenizer.losses import info_nce, reconstruction_loss, rq_loss


def test_reconstruction_loss_sums_per_input_means():
    x = {"a": jnp.zeros((2, 2)), "b": jnp.zeros((2, 4))}
    y = {"a": jnp.full((2, 2), 2.0), "b": jnp.ones((2, 4))}
    total, per = reconstruction_loss(x, y)
    assert float(per["a"]) == 4.0 and float(per["b"]) == 1.0
    assert float(total) == 5.0


def test_rq_loss_hand_computed_and_masked():
    r = jnp.array([[[1.0, 1.0], [3.0, 3.0]]])  # [batch 1, L 2, D 2]
    c = jnp.array([[[0.0, 1.0], [0.0, 3.0]]])
    total, cb, cm = rq_loss(r, c, jnp.array([[1.0, 1.0]]), beta=0.25)
    # level 1: mean((1,0)^2) = .5; level 2: mean((3,0)^2) = 4.5
    assert math.isclose(float(cb), 5.0) and math.isclose(float(cm), 5.0)
    assert math.isclose(float(total), 5.0 * 1.25)
    total, cb, cm = rq_loss(r, c, jnp.array([[1.0, 0.0]]), beta=0.25)
    assert math.isclose(float(cb), 0.5) and math.isclose(float(total), 0.5 * 1.25)


def test_rq_loss_codebook_term_moves_codes_and_commitment_moves_residuals():
    r = jnp.array([[[1.0, 1.0]]])
    c = jnp.array([[[0.0, 1.0]]])
    mask = jnp.ones((1, 1))
    g_r, g_c = jax.grad(lambda r, c: rq_loss(r, c, mask, beta=0.25)[0], argnums=(0, 1))(r, c)
    # d/dc mean((c - r)^2) = (c - r) (D = 2); d/dr of beta * mean((r - c)^2) = beta (r - c)
    np.testing.assert_allclose(g_c, [[[-1.0, 0.0]]])
    np.testing.assert_allclose(g_r, [[[0.25, 0.0]]])


def test_info_nce_is_log_batch_for_identical_embeddings():
    a = jnp.ones((8, 4))
    assert math.isclose(float(info_nce(a, a, 0.1)), math.log(8), rel_tol=1e-5)


def test_info_nce_aligned_pairs_beat_shuffled_pairs():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    b = a + 0.1 * jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    shuffled = b[jnp.asarray(rng.permutation(32))]
    assert float(info_nce(a, b, 0.1)) < 0.5 < math.log(32) < float(info_nce(a, shuffled, 0.1))


def test_info_nce_is_symmetric_and_scale_invariant():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    assert math.isclose(float(info_nce(a, b, 0.2)), float(info_nce(b, a, 0.2)), rel_tol=1e-5)
    assert math.isclose(float(info_nce(3 * a, b, 0.2)), float(info_nce(a, b, 0.2)), rel_tol=1e-5)
