"""Warm start: a pre-trained Llama-style safetensors checkpoint -> our params, vocab expanded.

    tensors = read_safetensors("base/")                 # HF names, e.g. model.layers.0...
    cfg = config_from_hf(json.load(open("base/config.json"))).with_vocab(vocab.size)
    ws = warm_start(tensors, cfg, vocab, base_token_to_id=load_base_token_ids("base/"))

Rows of the embedding (and of an untied lm_head) are mapped token by token: our token
string -> the base tokenizer's id (`base_token_to_id`), or, without a mapping, our text
ids are taken to be the base ids (true for `Vocab.from_base_tokenizer`). Every other row
(SID, feature and missing special tokens) starts at the mean of the base rows plus
Gaussian noise of std `noise_scale * std(base rows)`, seeded: new tokens start "average"
instead of random, so the first CPT steps do not blow up the loss on text tokens.

An MoE config is warm-started by sparse upcycling: every expert starts as a copy of the
dense MLP and the router starts small and random (seeded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from trainer.config import ModelConfig
from trainer.model import init_params
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

# buffers some exporters write that carry no parameters
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointMismatchError(ValueError):
    """A base checkpoint whose tensors do not fit the config (missing, extra, wrong shape)."""


class WarmStart(NamedTuple):
    params: dict[str, Any]  # our parameter tree (numpy float32 leaves)
    kept_rows: int  # vocabulary rows copied from the base embedding
    new_rows: int  # rows initialised as mean + noise


def read_safetensors(path: Path | str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file, or of every *.safetensors in a directory
    (sharded HF checkpoints), as float32 numpy arrays keyed by their HF names."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    out: dict[str, np.ndarray] = {}
    for file in files:
        # framework="flax" reads bfloat16 too (plain numpy has no bfloat16)
        with safe_open(str(file), framework="flax") as fh:
            for name in fh.keys():
                if name in out:
                    raise CheckpointMismatchError(f"tensor {name} appears in two shards ({file})")
                out[name] = np.asarray(fh.get_tensor(name), dtype=np.float32)
    return out


def load_base_token_ids(checkpoint_dir: Path | str) -> dict[str, int]:
    """token string -> id from the base checkpoint's tokenizer.json (added tokens included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json"))
    return tok.get_vocab(with_added_tokens=True)


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Our ModelConfig from a HF LlamaConfig dict (config.json); vocab_size stays the base's."""
    values = {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "d_ff": hf["intermediate_size"],
        "max_len": hf.get("max_position_embeddings", 2048),
        "rope_theta": float(hf.get("rope_theta", 10_000.0)),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        raise CheckpointMismatchError(f"head_dim={head_dim} != hidden_size / heads: unsupported")
    values.update(overrides)
    return ModelConfig(**values)


def row_map(
    vocab: Vocab, base_rows: int, base_token_to_id: Mapping[str, int] | None = None
) -> np.ndarray:
    """[vocab.size] int: the base row each of our tokens starts from, -1 for a new token."""
    out = np.full(vocab.size, -1, np.int64)
    if base_token_to_id is None:
        if base_rows < vocab.text_size:
            raise CheckpointMismatchError(
                f"base embedding has {base_rows} rows but our text part has {vocab.text_size} "
                "tokens; pass base_token_to_id to map tokens by string"
            )
        out[: vocab.text_size] = np.arange(vocab.text_size)
        return out
    for i, token in enumerate(vocab.tokens()):
        j = base_token_to_id.get(token)
        if j is not None and 0 <= j < base_rows:
            out[i] = j
    return out


def expand_rows(
    base: np.ndarray, rows: np.ndarray, rng: np.random.Generator, noise_scale: float
) -> np.ndarray:
    """base [base_rows, d] -> [len(rows), d]: row i = base[rows[i]], or mean + noise if -1."""
    base = base.astype(np.float32)
    out = np.empty((len(rows), base.shape[1]), np.float32)
    kept = rows >= 0
    out[kept] = base[rows[kept]]
    n_new = int((~kept).sum())
    noise = rng.normal(0.0, noise_scale * float(base.std()), (n_new, base.shape[1]))
    out[~kept] = base.mean(axis=0) + noise.astype(np.float32)
    return out


def warm_start(
    tensors: Mapping[str, np.ndarray],
    config: ModelConfig,
    vocab: Vocab,
    *,
    base_token_to_id: Mapping[str, int] | None = None,
    seed: int = 0,
    noise_scale: float = 0.1,
) -> WarmStart:
    """Our params from HF-named `tensors`, vocabulary expanded to `vocab` (see module doc)."""
    if config.vocab_size != vocab.size:
        raise ValueError(f"config.vocab_size={config.vocab_size} != vocab.size={vocab.size}")
    rng = np.random.default_rng(seed)
    expected = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), seq_len=1))
    used: set[str] = set()

    def take(name: str, transpose: bool = False) -> np.ndarray:
        if name not in tensors:
            raise CheckpointMismatchError(f"base checkpoint lacks {name}")
        used.add(name)
        t = np.asarray(tensors[name], np.float32)
        return t.T if transpose else t

    embed_base = take("model.embed_tokens.weight")
    if embed_base.shape[1] != config.d_model:
        raise CheckpointMismatchError(
            f"model.embed_tokens.weight is {embed_base.shape}; d_model={config.d_model}"
        )
    rows = row_map(vocab, embed_base.shape[0], base_token_to_id)
    params: dict[str, Any] = {
        "embed_tokens": {"embedding": expand_rows(embed_base, rows, rng, noise_scale)}
    }
    for i in range(config.n_layers):
        pre = f"model.layers.{i}."
        layer: dict[str, Any] = {
            "input_layernorm": {"weight": take(pre + "input_layernorm.weight")},
            "post_attention_layernorm": {"weight": take(pre + "post_attention_layernorm.weight")},
            "self_attn": {
                p: {"kernel": take(f"{pre}self_attn.{p}.weight", transpose=True)}
                for p in ("q_proj", "k_proj", "v_proj", "o_proj")
            },
        }
        mlp = {
            p: take(f"{pre}mlp.{p}.weight", transpose=True)
            for p in ("gate_proj", "up_proj", "down_proj")
        }
        if config.is_moe:  # sparse upcycling
            e = config.num_experts
            layer["mlp"] = {p: np.repeat(w[None], e, axis=0) for p, w in mlp.items()}
            router = rng.normal(0.0, 0.02, (config.d_model, e)).astype(np.float32)
            layer["mlp"]["router"] = {"kernel": router}
        else:
            layer["mlp"] = {p: {"kernel": w} for p, w in mlp.items()}
        params[f"layers_{i}"] = layer
    params["norm"] = {"weight": take("model.norm.weight")}
    if not config.tie_embeddings:
        head = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
        head_base = take(head)
        params["lm_head"] = {"kernel": expand_rows(head_base, rows, rng, noise_scale).T.copy()}
    elif "lm_head.weight" in tensors:
        used.add("lm_head.weight")
        log.warning("config ties embeddings: the base checkpoint's lm_head.weight is dropped")

    unused = sorted(n for n in set(tensors) - used if not n.endswith(_IGNORED_SUFFIXES))
    if unused:
        raise CheckpointMismatchError(
            f"base checkpoint tensors not mapped: {unused[:8]}{' ...' if len(unused) > 8 else ''}"
        )
    _check_shapes(params, expected)
    kept = int((rows >= 0).sum())
    log.info("warm start: %d vocabulary rows kept from the base, %d new", kept, vocab.size - kept)
    return WarmStart(params, kept, vocab.size - kept)


def _check_shapes(params: Any, expected: Any) -> None:
    got = jax.tree_util.tree_structure(params)
    want = jax.tree_util.tree_structure(jax.tree_util.tree_map(lambda _: 0, expected))
    if got != want:
        raise CheckpointMismatchError(f"parameter tree {got} does not match the model's {want}")
    for (path, leaf), exp in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        if tuple(leaf.shape) != tuple(exp.shape):
            raise CheckpointMismatchError(
                f"{jax.tree_util.keystr(path)}: base gives {leaf.shape}, the model needs {exp.shape}"
            )


def save_params_as_hf(params: Mapping[str, Any], config: ModelConfig, path: Path | str) -> None:
    """The inverse mapping for a dense model (HF names, [out, in] weights): lets tests and
    tools write a Llama-style checkpoint from our params."""
    from safetensors.numpy import save_file

    if config.is_moe:
        raise NotImplementedError("HF export of MoE params is not implemented")
    out: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": np.asarray(params["embed_tokens"]["embedding"]),
        "model.norm.weight": np.asarray(params["norm"]["weight"]),
    }
    for i in range(config.n_layers):
        layer, pre = params[f"layers_{i}"], f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{pre}{norm}.weight"] = np.asarray(layer[norm]["weight"])
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{pre}self_attn.{p}.weight"] = np.asarray(layer["self_attn"][p]["kernel"]).T
        for p in ("gate_proj", "up_proj", "down_proj"):
            out[f"{pre}mlp.{p}.weight"] = np.asarray(layer["mlp"][p]["kernel"]).T
    if not config.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, str(path))


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """A LlamaConfig-style dict for `config` (config.json next to an exported checkpoint)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_len,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
    }


def write_hf_checkpoint(
    params: Mapping[str, Any], config: ModelConfig, directory: Path | str
) -> Path:
    """model.safetensors + config.json in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_params_as_hf(params, config, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config), indent=1))
    return directory


def to_device(params: Mapping[str, Any]) -> Any:
    """The numpy tree as jax arrays (default device)."""
    return jax.tree_util.tree_map(jnp.asarray, dict(params))
