"""`TrainedTokenizer`: a frozen SID-v2 model (networks + codebooks + input statistics).

This is what training returns, what a checkpoint restores, and what the SID service
calls: `tok.encode({"text": [N, d_text], "visual": [N, d_visual], ...}) -> codes [N, L]`.
`tok.sid_version` names it by a hash of its content, so two checkpoints with the same
weights carry the same version and any change of weights or config gives a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokenizer.config import TokenizerConfig
from tokenizer.model import SidAutoencoder, residual_quantize

# encode() pads batches to a power of two, at least this many rows, so the jitted
# function compiles for a handful of shapes instead of one per batch size.
MIN_BUCKET = 64
MAX_BUCKET = 8192


class ModalityError(ValueError):
    """Item embeddings that do not match the modalities the tokenizer was trained on."""


def build_model(config: TokenizerConfig, modalities: tuple[tuple[str, int], ...]) -> SidAutoencoder:
    return SidAutoencoder(
        modalities=modalities,
        encoder_hidden=tuple(config.encoder_hidden),
        modality_dim=config.modality_dim,
        latent_dim=config.latent_dim,
        decoder_hidden=tuple(config.decoder_hidden),
    )


def normalize(x: jax.Array, stats: Mapping[str, jax.Array]) -> jax.Array:
    return (x - stats["mean"]) / stats["std"]


class TrainedTokenizer:
    """Frozen tokenizer. `params` are the SidAutoencoder's flax params; `codebooks` one
    [K_l, latent_dim] array per level; `stats[name]` the per-dimension mean and std that
    standardise input `name` before its encoder."""

    def __init__(
        self,
        config: TokenizerConfig,
        modalities: tuple[tuple[str, int], ...],
        params: Any,
        codebooks: tuple[Any, ...],
        stats: Mapping[str, Mapping[str, Any]],
        step: int,
        history: tuple[dict[str, float], ...] = (),
    ):
        self.config = config
        self.modalities = tuple((str(n), int(d)) for n, d in modalities)
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.codebooks = tuple(jnp.asarray(cb, jnp.float32) for cb in codebooks)
        self.stats = {
            n: {
                "mean": jnp.asarray(s["mean"], jnp.float32),
                "std": jnp.asarray(s["std"], jnp.float32),
            }
            for n, s in stats.items()
        }
        self.step = int(step)
        self.history = tuple(history)
        self.model = build_model(config, self.modalities)
        self._encode_jit = jax.jit(self._encode_fn)
        self._forward_jit = jax.jit(self._forward_fn)

    # ------------------------------------------------------------------ public API

    @property
    def num_levels(self) -> int:
        return len(self.codebooks)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(int(cb.shape[0]) for cb in self.codebooks)

    @cached_property
    def sid_version(self) -> str:
        """'sidv2-<12 hex>': sha256 over the config, modalities and every array's bytes."""
        h = hashlib.sha256()
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        h.update(json.dumps(self.modalities).encode())
        for path, leaf in _sorted_leaves(self.state_tree()):
            arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
            h.update(path.encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return f"sidv2-{h.hexdigest()[:12]}"

    def encode(self, item_embeddings: Mapping[str, Any]) -> np.ndarray:
        """{name: [N, d_m]} -> codes [N, L] int32 (all L levels, no masking)."""
        inputs, n = self._check_inputs(item_embeddings)
        if n == 0:
            return np.zeros((0, self.num_levels), np.int32)
        out = [
            np.asarray(self._encode_jit(self.params, self.codebooks, self.stats, chunk))[:rows]
            for chunk, rows in _padded_chunks(inputs, n)
        ]
        return np.concatenate(out, axis=0)

    def forward(self, item_embeddings: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Everything a report needs: z, codes, and per input the standardised input and
        its reconstruction from the full L-level ẑ."""
        inputs, n = self._check_inputs(item_embeddings)
        if n == 0:
            raise ModalityError("forward() needs at least one item")
        parts = [
            jax.tree_util.tree_map(
                lambda a, r=rows: np.asarray(a)[:r],
                self._forward_jit(self.params, self.codebooks, self.stats, chunk),
            )
            for chunk, rows in _padded_chunks(inputs, n)
        ]
        return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *parts)

    def state_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint stores."""
        return {
            "params": self.params,
            "codebooks": {f"level_{i}": cb for i, cb in enumerate(self.codebooks)},
            "stats": self.stats,
        }

    # ------------------------------------------------------------------ internals

    def _check_inputs(
        self, item_embeddings: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], int]:
        names = {n for n, _ in self.modalities}
        unknown = sorted(set(item_embeddings) - names)
        missing = sorted(names - set(item_embeddings))
        if unknown or missing:
            raise ModalityError(
                f"embeddings have unknown modalities {unknown} / miss {missing}; "
                f"tokenizer {self.sid_version} expects {sorted(names)}"
            )
        inputs, sizes = {}, set()
        for name, dim in self.modalities:
            x = np.asarray(item_embeddings[name], np.float32)
            if x.ndim != 2 or x.shape[1] != dim:
                raise ModalityError(f"embedding {name!r} has shape {x.shape}, expected [N, {dim}]")
            inputs[name] = x
            sizes.add(x.shape[0])
        if len(sizes) != 1:
            raise ModalityError(f"modalities disagree on the number of items: {sorted(sizes)}")
        return inputs, sizes.pop()

    def _encode_fn(self, params, codebooks, stats, inputs):
        z = self._latent(params, stats, inputs)
        mask = jnp.ones((z.shape[0], len(codebooks)), jnp.float32)
        return residual_quantize(z, codebooks, mask).codes

    def _forward_fn(self, params, codebooks, stats, inputs):
        z = self._latent(params, stats, inputs)
        rq = residual_quantize(z, codebooks, jnp.ones((z.shape[0], len(codebooks)), jnp.float32))
        recons = self.model.apply({"params": params}, rq.z_hat, method=SidAutoencoder.decode)
        normed = {n: normalize(inputs[n], stats[n]) for n in inputs}
        return {"z": z, "codes": rq.codes, "inputs": normed, "recons": recons}

    def _latent(self, params, stats, inputs):
        normed = {n: normalize(inputs[n], stats[n]) for n in inputs}
        return self.model.apply({"params": params}, normed, method=SidAutoencoder.encode)


def _bucket(n: int) -> int:
    size = MIN_BUCKET
    while size < n:
        size *= 2
    return size


def _padded_chunks(inputs: dict[str, np.ndarray], n: int):
    """Yield ({name: [bucket, d]}, real rows) chunks of at most MAX_BUCKET rows."""
    for start in range(0, max(n, 1), MAX_BUCKET):
        rows = min(MAX_BUCKET, n - start)
        size = _bucket(rows)
        chunk = {}
        for name, x in inputs.items():
            part = x[start : start + rows]
            if size > rows:
                part = np.concatenate([part, np.zeros((size - rows, x.shape[1]), x.dtype)])
            chunk[name] = part
        yield chunk, rows


def _sorted_leaves(tree: Any) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)
