"""`ModelConfig` (the decoder's sizes) and `VocabConfig` (the token vocabulary's text part).

    cfg = load_model_config("configs/test.toml").with_vocab(vocab.size)

`[trainer_model]` and `[trainer_vocab]` of a config TOML spell out every field; the
Python presets below (`tiny`, `small`, `paper`) are the same numbers for code and tests
(tests/unit/test_trainer_config.py checks that configs/test.toml's section is `tiny`).
`vocab_size` is 0 in every file: it is a property of the vocabulary, filled in when the
model is built (`with_vocab`), never configured by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plum.config import from_mapping, load_section
from streams.contracts.sid import disambiguation_size_field

MODEL_SECTION = "trainer_model"
VOCAB_SECTION = "trainer_vocab"

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-layout decoder (RMSNorm pre-norm, RoPE, SwiGLU, GQA), optionally MoE.

    Defaults are the `small` preset (the demo model).
    """

    vocab_size: int = 0  # filled from the vocabulary at build time; 0 = not yet known
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: n_heads % n_kv_heads == 0
    d_ff: int = 768  # SwiGLU hidden width (per expert when MoE)
    max_len: int = 512  # longest sequence (prompt + generated SID tokens)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # True: logits use embed_tokens; False: a separate lm_head
    # --- mixture of experts (num_experts = 0: dense SwiGLU FFN in every layer)
    num_experts: int = 0
    moe_top_k: int = 2  # experts per token
    load_balance_weight: float = 0.01  # weight of the Switch/GShard auxiliary loss
    # --- numerics: activations in `dtype`; parameters, norms, softmax and logits in float32
    dtype: str = "float32"
    # --- regularisation: dropout on the embeddings and on each residual branch, in training
    # steps only (evaluation, beam search and serving never drop); 0 = none
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 0 (0 = filled at build)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.num_experts < 0:
            raise ValueError(f"num_experts={self.num_experts} must be >= 0 (0 = dense)")
        if self.num_experts and not 1 <= self.moe_top_k <= self.num_experts:
            raise ValueError(
                f"moe_top_k={self.moe_top_k} must be in [1, num_experts={self.num_experts}]"
            )
        if self.load_balance_weight < 0:
            raise ValueError(f"load_balance_weight={self.load_balance_weight} must be >= 0")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {_DTYPES}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This config with the vocabulary's size filled in (what the model is built with)."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size} must be >= 1")
        return dataclasses.replace(self, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        return from_mapping(cls, data, MODEL_SECTION, env={})


# Tests: compiles in about a second on CPU; 2 kv heads for 4 query heads exercises GQA.
TINY = ModelConfig(
    d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_len=128, tie_embeddings=True
)
# The demo model: ~3M parameters outside the embeddings, trains at a useful rate on 2 cores.
SMALL = ModelConfig()
# Paper-like. PLUM (arXiv 2510.07784) adapts Gemini-family MoE LLMs and reports a scaling
# study over MoE sizes, but does not publish layer counts or widths; these numbers are ours:
# a Mixtral-style sparse decoder in the Llama layout, ~1.1B active of ~3.6B total parameters
# (embeddings not counted): attention 10.5M + 8 experts x 17.3M per layer, 24 layers.
PAPER = ModelConfig(
    d_model=2048,
    n_layers=24,
    n_heads=16,
    n_kv_heads=4,
    d_ff=2816,
    max_len=1536,
    rope_theta=500_000.0,
    norm_eps=1e-5,
    tie_embeddings=False,
    num_experts=8,
    moe_top_k=2,
    load_balance_weight=0.01,
    dtype="bfloat16",
)
PRESETS: dict[str, ModelConfig] = {"tiny": TINY, "small": SMALL, "paper": PAPER}


def model_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


def load_model_config(
    path: Path | str | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> ModelConfig:
    """`[trainer_model]` of the TOML at `path`, then PLUM_TRAINER_MODEL__* env overrides."""
    return load_section(ModelConfig, path, MODEL_SECTION, env=env, **overrides)


@dataclass(frozen=True)
class VocabConfig:
    """The text part of the vocabulary; SID levels come from the SID index being served,
    feature buckets are fixed in trainer/vocab.py (and saved with each vocabulary)."""

    text_vocab_size: int = 4096  # byte-level BPE size, its special tokens included
    min_frequency: int = 2  # BPE merges need a pair seen at least this often
    # Codes of the disambiguation level (items sharing all L codes): derived from [sid],
    # the range the SID service hands out (streams/contracts/sid.py). 0 = SIDs without a
    # disambiguation level (tests only). See trainer/vocab.py for how codes map to tokens.
    disambiguation_size: int = disambiguation_size_field()

    def __post_init__(self) -> None:
        if self.text_vocab_size < 300:
            # 256 byte symbols + the special tokens must fit
            raise ValueError(f"text_vocab_size={self.text_vocab_size} must be >= 300")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency={self.min_frequency} must be >= 1")
        if self.disambiguation_size < 0:
            raise ValueError(f"disambiguation_size={self.disambiguation_size} must be >= 0")


def load_vocab_config(
    path: Path | str | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> VocabConfig:
    """`[trainer_vocab]` of the TOML at `path`, then PLUM_TRAINER_VOCAB__* env overrides."""
    return load_section(VocabConfig, path, VOCAB_SECTION, env=env, **overrides)
