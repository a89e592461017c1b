"""SID-v2 model (PLUM section 2.1): fused multi-modal RQ-VAE.

Each named content embedding x_m goes through its own MLP encoder E_m; the outputs are
concatenated and projected to one latent z. z is written as L discrete codes by residual
quantization over multi-resolution codebooks (level l has base / 2^(l-1) codes); a decoder
per input reconstructs x_m from the quantized ẑ.

The networks are flax.linen modules; the quantization is a pure function over an explicit
list of codebooks so it can be tested by hand and reused by the service's frozen encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(self.out)(x)


class SidAutoencoder(nn.Module):
    """Encoders E_m + fusion projection to z, and one reconstruction decoder per input.

    `modalities` is an ordered tuple of (name, dim) so the module is hashable and the
    concatenation order is fixed by the checkpoint, not by dict order of the caller.
    """

    modalities: tuple[tuple[str, int], ...]
    encoder_hidden: tuple[int, ...]
    modality_dim: int
    latent_dim: int
    decoder_hidden: tuple[int, ...]

    def setup(self) -> None:
        self.encoders = {
            name: MLP(self.encoder_hidden, self.modality_dim, name=f"enc_{name}")
            for name, _ in self.modalities
        }
        self.project = nn.Dense(self.latent_dim, name="project")
        self.decoders = {
            name: MLP(self.decoder_hidden, dim, name=f"dec_{name}") for name, dim in self.modalities
        }

    def encode(self, inputs: Mapping[str, jax.Array]) -> jax.Array:
        """{name: [batch, d_m]} -> z [batch, latent_dim]."""
        parts = [nn.gelu(self.encoders[name](inputs[name])) for name, _ in self.modalities]
        return self.project(jnp.concatenate(parts, axis=-1))

    def decode(self, z_hat: jax.Array) -> dict[str, jax.Array]:
        """ẑ [batch, latent_dim] -> {name: [batch, d_m]}."""
        return {name: self.decoders[name](z_hat) for name, _ in self.modalities}

    def __call__(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return self.decode(self.encode(inputs))


class RQOutput(NamedTuple):
    codes: jax.Array  # [batch, L] int32, nearest code per level (defined for every level)
    z_hat: jax.Array  # [batch, D] masked sum of codewords, straight-through to z
    quantized: jax.Array  # [batch, D] the same sum without straight-through
    residuals: jax.Array  # [batch, L, D] r_l, the input of level l (r_1 = z)
    codewords: jax.Array  # [batch, L, D] c_l, the codeword chosen at level l


def nearest_code(r: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the codeword nearest (squared L2) to each row of r. r [B, D], codebook [K, D]."""
    # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2; ||r||^2 is the same for every c.
    dist = jnp.sum(codebook**2, axis=-1)[None, :] - 2.0 * r @ codebook.T  # [B, K]
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def residual_quantize(
    z: jax.Array, codebooks: Sequence[jax.Array], num_levels_mask: jax.Array
) -> RQOutput:
    """Residual quantization of z over `codebooks` (one [K_l, D] array per level).

    r_1 = z; c_l = nearest codeword to r_l in codebook l; r_{l+1} = r_l - sg[c_l].
    ẑ = Σ_l m_l c_l where `num_levels_mask` [batch, L] holds m_l (1 for the levels an
    example uses, 0 for the rest; progressive masking sets m_l = 1 for l <= r). Codes are
    computed for every level regardless of the mask. `z_hat` is the straight-through form
    z + sg[ẑ - z]: its value is ẑ and its gradient with respect to z is the identity.
    The residual chain stops gradients at c_l so the commitment term of the RQ loss
    trains the encoder only and the codebook term trains codebook l only.
    """
    r = z
    codes, residuals, codewords = [], [], []
    for codebook in codebooks:
        idx = nearest_code(r, codebook)
        c = codebook[idx]  # [B, D]
        codes.append(idx)
        residuals.append(r)
        codewords.append(c)
        r = r - jax.lax.stop_gradient(c)
    codewords_ = jnp.stack(codewords, axis=1)  # [B, L, D]
    mask = num_levels_mask.astype(z.dtype)[..., None]  # [B, L, 1]
    quantized = jnp.sum(mask * codewords_, axis=1)
    z_hat = z + jax.lax.stop_gradient(quantized - z)
    return RQOutput(
        codes=jnp.stack(codes, axis=1),
        z_hat=z_hat,
        quantized=quantized,
        residuals=jnp.stack(residuals, axis=1),
        codewords=codewords_,
    )


def progressive_mask(
    key: jax.Array, batch: int, num_levels: int, enabled: bool = True
) -> jax.Array:
    """m [batch, L]: with r ~ U{1..L} per example, m_l = 1 for l <= r (all ones if disabled)."""
    if not enabled:
        return jnp.ones((batch, num_levels), jnp.float32)
    r = jax.random.randint(key, (batch, 1), 1, num_levels + 1)
    return (jnp.arange(num_levels)[None, :] < r).astype(jnp.float32)
