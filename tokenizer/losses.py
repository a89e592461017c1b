"""The SID-v2 training losses, as pure functions of arrays.

    total = recon_weight * reconstruction + rq_weight * rq + contrastive_weight * contrastive

Squared errors are averaged over feature dimensions (so inputs of different widths weigh
alike) and over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def reconstruction_loss(
    inputs: Mapping[str, jax.Array], recons: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Σ_m mean ||x_m - x̂_m||² over inputs m; also returns each input's term."""
    per = {name: jnp.mean((recons[name] - x) ** 2) for name, x in inputs.items()}
    return sum(per.values()), per


def rq_loss(
    residuals: jax.Array, codewords: jax.Array, num_levels_mask: jax.Array, beta: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RQ loss (PLUM eq. 2, as in RQ-VAE): Σ_l m_l (||sg[r_l] - c_l||² + β ||r_l - sg[c_l]||²).

    residuals, codewords: [batch, L, D]; num_levels_mask: [batch, L]. Levels an example does
    not use (m_l = 0) contribute nothing. Returns (total, codebook term, commitment term),
    the last two unweighted by β.
    """
    sg = jax.lax.stop_gradient
    mask = num_levels_mask.astype(residuals.dtype)
    codebook = jnp.mean((sg(residuals) - codewords) ** 2, axis=-1)  # [B, L]
    commitment = jnp.mean((residuals - sg(codewords)) ** 2, axis=-1)  # [B, L]
    codebook_term = jnp.mean(jnp.sum(mask * codebook, axis=-1))
    commitment_term = jnp.mean(jnp.sum(mask * commitment, axis=-1))
    return codebook_term + beta * commitment_term, codebook_term, commitment_term


def info_nce(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
    """Symmetric in-batch InfoNCE over co-occurring pairs (a_i, b_i), a, b: [batch, D].

    With s_ij = cos(a_i, b_j) / τ, the loss is the mean over i of
    -log softmax_j(s_ij)[i], averaged with the same from b to a; the other pairs of the
    batch are the negatives. The paper's eq. 1 writes this ratio without the log; we use
    the standard log form, which is what makes it a cross-entropy with well-scaled
    gradients. If all embeddings are identical every logit is equal and the loss is
    log(batch), the value of a uniform guess.
    """
    a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
    b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
    logits = a @ b.T / temperature  # [batch, batch]
    diag = jnp.arange(a.shape[0])
    a_to_b = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diag, diag])
    b_to_a = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag])
    return 0.5 * (a_to_b + b_to_a)
