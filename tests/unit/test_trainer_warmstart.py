"""Warm start from a Llama-style safetensors checkpoint the test writes itself."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from trainer.config import TINY
from trainer.model import Transformer, init_params
from trainer.vocab import Vocab, train_text_tokenizer
from trainer.warmstart import (
    CheckpointMismatchError,
    config_from_hf,
    load_base_token_ids,
    read_safetensors,
    warm_start,
    write_hf_checkpoint,
)

BASE_CORPUS = ["the quick brown fox jumps over the lazy dog", "a video about cats and dogs"] * 30
LEVELS = (6, 4)


def _hf_tensors(rng, vocab_rows, cfg, tied):
    """Random weights under Hugging Face Llama names, [out, in] as HF stores them."""
    d, hd = cfg.d_model, cfg.head_dim
    t = {
        "model.embed_tokens.weight": rng.normal(0.3, 1.0, (vocab_rows, d)),
        "model.norm.weight": rng.normal(1.0, 0.1, d),
    }
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rng.normal(1.0, 0.1, d)
        t[p + "post_attention_layernorm.weight"] = rng.normal(1.0, 0.1, d)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.05, (cfg.n_heads * hd, d))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.05, (cfg.n_kv_heads * hd, d))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.05, (cfg.n_kv_heads * hd, d))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.05, (d, cfg.n_heads * hd))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.05, (cfg.d_ff, d))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.05, (cfg.d_ff, d))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.05, (d, cfg.d_ff))
        t[p + "self_attn.rotary_emb.inv_freq"] = np.ones(hd // 2)  # a buffer, ignored
    if not tied:
        t["lm_head.weight"] = rng.normal(-0.2, 1.0, (vocab_rows, d))
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base checkpoint directory: tokenizer.json, config.json, model.safetensors."""
    directory = tmp_path_factory.mktemp("base")
    tok = train_text_tokenizer(BASE_CORPUS, 300, special_tokens=("<s>", "</s>", "<unk>"))
    tok.save(str(directory / "tokenizer.json"))
    rows = tok.get_vocab_size() + 4  # HF embeddings are often padded past the tokenizer
    cfg = dataclasses.replace(TINY, vocab_size=rows, tie_embeddings=False)
    tensors = _hf_tensors(np.random.default_rng(0), rows, cfg, tied=False)
    save_file(tensors, str(directory / "model.safetensors"))
    hf = {
        "vocab_size": rows,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_len,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    (directory / "config.json").write_text(json.dumps(hf))
    return directory, tensors


def _ours(base_dir, vocab, **overrides):
    hf = json.loads((base_dir / "config.json").read_text())
    return config_from_hf(hf, **overrides).with_vocab(vocab.size)


def test_base_vocab_as_text_part_keeps_old_rows_exactly_and_new_rows_near_the_mean(base):
    base_dir, tensors = base
    vocab = Vocab.from_base_tokenizer(base_dir / "tokenizer.json", LEVELS, disambiguation_size=2)
    cfg = _ours(base_dir, vocab)
    ws = warm_start(read_safetensors(base_dir), cfg, vocab, seed=1, noise_scale=0.1)
    emb = ws.params["embed_tokens"]["embedding"]
    old = tensors["model.embed_tokens.weight"]
    n_text = vocab.text_size
    assert emb.shape == (vocab.size, cfg.d_model)
    np.testing.assert_array_equal(emb[:n_text], old[:n_text])
    assert ws.kept_rows == n_text and ws.new_rows == vocab.size - n_text
    # new rows: SID, feature and our special tokens the base lacks (<pad>, <bos>, ...)
    new = emb[n_text:]
    noise_std = 0.1 * old.std()
    assert np.abs(new - old.mean(0)).max() < 6 * noise_std
    assert new.std(0).mean() == pytest.approx(noise_std, rel=0.3)  # there is noise, seeded
    again = warm_start(read_safetensors(base_dir), cfg, vocab, seed=1, noise_scale=0.1)
    np.testing.assert_array_equal(again.params["embed_tokens"]["embedding"], emb)
    # the untied head is expanded the same way
    head = ws.params["lm_head"]["kernel"].T
    np.testing.assert_array_equal(head[:n_text], tensors["lm_head.weight"][:n_text])
    old_head = tensors["lm_head.weight"]
    assert np.abs(head[n_text:] - old_head.mean(0)).max() < 6 * 0.1 * old_head.std()
    # layer weights arrive transposed into flax kernels
    np.testing.assert_array_equal(
        ws.params["layers_1"]["self_attn"]["k_proj"]["kernel"],
        tensors["model.layers.1.self_attn.k_proj.weight"].T,
    )
    out = jax.jit(Transformer(cfg).apply)({"params": ws.params}, jnp.arange(6)[None])
    assert np.isfinite(np.asarray(out.logits)).all()


def test_rows_are_mapped_by_token_string_for_a_different_tokenizer(base):
    base_dir, tensors = base
    ours = train_text_tokenizer(["dogs and cats in the video"] * 30 + BASE_CORPUS[:4], 300)
    vocab = Vocab(ours, LEVELS)
    cfg = _ours(base_dir, vocab, tie_embeddings=True)
    base_ids = load_base_token_ids(base_dir)
    ws = warm_start(read_safetensors(base_dir), cfg, vocab, base_token_to_id=base_ids)
    emb = ws.params["embed_tokens"]["embedding"]
    old = tensors["model.embed_tokens.weight"]
    shared = [t for t in vocab.tokens() if t in base_ids]
    assert 100 < len(shared) == ws.kept_rows  # the 256 byte symbols at least
    for token in shared:
        np.testing.assert_array_equal(emb[vocab.token_to_id(token)], old[base_ids[token]])
    assert np.abs(emb[vocab.token_to_id("<pad>")] - old.mean(0)).max() < 6 * 0.1 * old.std()
    assert "lm_head" not in ws.params  # tied


def test_our_export_warm_starts_back_to_the_same_model(tmp_path):
    vocab = Vocab(train_text_tokenizer(BASE_CORPUS, 300), LEVELS)
    cfg = dataclasses.replace(TINY, tie_embeddings=False).with_vocab(vocab.size)
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(0))
    write_hf_checkpoint(params, cfg, tmp_path)
    # our own checkpoint: every token is "shared", mapped by string onto itself
    same = {t: i for i, t in enumerate(vocab.tokens())}
    ws = warm_start(read_safetensors(tmp_path), cfg, vocab, base_token_to_id=same)
    assert ws.new_rows == 0
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ws.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_moe_config_is_upcycled_from_the_dense_mlp(base):
    base_dir, tensors = base
    vocab = Vocab.from_base_tokenizer(base_dir / "tokenizer.json", LEVELS)
    cfg = _ours(base_dir, vocab, num_experts=3, moe_top_k=1)
    mlp = warm_start(read_safetensors(base_dir), cfg, vocab).params["layers_0"]["mlp"]
    assert mlp["gate_proj"].shape == (3, cfg.d_model, cfg.d_ff)
    for e in range(3):
        np.testing.assert_array_equal(
            mlp["down_proj"][e], tensors["model.layers.0.mlp.down_proj.weight"].T
        )


def test_mismatched_checkpoints_are_rejected_with_the_tensor_name(base):
    base_dir, tensors = base
    vocab = Vocab.from_base_tokenizer(base_dir / "tokenizer.json", LEVELS)
    cfg = _ours(base_dir, vocab)
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(CheckpointMismatchError, match="lacks model.layers.1.mlp.up_proj"):
        warm_start(missing, cfg, vocab)
    extra = {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}
    with pytest.raises(CheckpointMismatchError, match="q_proj.bias"):
        warm_start(extra, cfg, vocab)
    with pytest.raises(CheckpointMismatchError, match="k_proj"):
        warm_start(tensors, dataclasses.replace(cfg, n_kv_heads=4), vocab)
