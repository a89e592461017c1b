"""The decoder: shapes, causal and padding masks, GQA, KV cache, MoE routing and its loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import TINY
from trainer.model import Transformer, init_cache, init_params, load_balance_loss

VOCAB = 61
CFG = TINY.with_vocab(VOCAB)
MOE = dataclasses.replace(CFG, num_experts=4, moe_top_k=2, load_balance_weight=0.5)


def _apply_fn(cfg):
    model = Transformer(cfg)

    @jax.jit
    def apply(params, tokens, mask):
        return model.apply({"params": params}, tokens, attention_mask=mask)

    return apply


@pytest.fixture(scope="module")
def dense():
    params = jax.jit(lambda k: init_params(CFG, k))(jax.random.PRNGKey(0))
    return params, _apply_fn(CFG)


@pytest.fixture(scope="module")
def moe_params():
    return jax.jit(lambda k: init_params(MOE, k))(jax.random.PRNGKey(3))


def _tokens(shape, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB)


def test_logits_have_batch_time_vocab_shape_and_are_finite(dense):
    params, apply = dense
    out = apply(params, _tokens((3, 11)), jnp.ones((3, 11), bool))
    assert out.logits.shape == (3, 11, VOCAB) and out.logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(out.logits)).all()
    assert float(out.load_balance_loss) == 0.0 and out.cache is None


def test_parameter_names_follow_llama_layout(dense):
    params, _ = dense
    assert set(params) == {"embed_tokens", "norm", "layers_0", "layers_1"}
    layer = params["layers_0"]
    assert set(layer) == {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
    assert set(layer["self_attn"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(layer["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
    hd = CFG.head_dim
    assert layer["self_attn"]["k_proj"]["kernel"].shape == (CFG.d_model, CFG.n_kv_heads * hd)
    assert params["embed_tokens"]["embedding"].shape == (VOCAB, CFG.d_model)


def test_untied_model_has_an_lm_head():
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    assert shapes["lm_head"]["kernel"].shape == (CFG.d_model, VOCAB)


def test_changing_a_future_token_does_not_change_earlier_logits(dense):
    params, apply = dense
    a = _tokens((2, 12))
    b = a.at[:, 7].set((a[:, 7] + 1) % VOCAB)
    mask = jnp.ones((2, 12), bool)
    la, lb = apply(params, a, mask).logits, apply(params, b, mask).logits
    np.testing.assert_allclose(la[:, :7], lb[:, :7], atol=1e-6)
    assert np.abs(np.asarray(la[:, 7:] - lb[:, 7:])).max() > 1e-4


def test_padding_is_invisible_left_padded_equals_unpadded(dense):
    params, apply = dense
    seq = _tokens((1, 6))
    plain = apply(params, seq, jnp.ones((1, 6), bool)).logits
    for pad_token in (0, 5):  # what sits in the padding must not matter
        padded = jnp.concatenate([jnp.full((1, 3), pad_token), seq], axis=1)
        mask = jnp.concatenate([jnp.zeros((1, 3), bool), jnp.ones((1, 6), bool)], axis=1)
        np.testing.assert_allclose(apply(params, padded, mask).logits[:, 3:], plain, atol=1e-5)


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads(dense):
    params, apply = dense
    mha_cfg = dataclasses.replace(CFG, n_kv_heads=CFG.n_heads)
    groups, hd = CFG.n_heads // CFG.n_kv_heads, CFG.head_dim
    mha = jax.tree_util.tree_map(lambda x: x, params)
    for i in range(CFG.n_layers):
        attn = dict(mha[f"layers_{i}"]["self_attn"])
        for name in ("k_proj", "v_proj"):
            w = attn[name]["kernel"].reshape(CFG.d_model, CFG.n_kv_heads, hd)
            attn[name] = {"kernel": jnp.repeat(w, groups, axis=1).reshape(CFG.d_model, -1)}
        mha[f"layers_{i}"] = {**mha[f"layers_{i}"], "self_attn": attn}
    tokens, mask = _tokens((2, 9)), jnp.ones((2, 9), bool)
    np.testing.assert_allclose(
        apply(params, tokens, mask).logits, _apply_fn(mha_cfg)(mha, tokens, mask).logits, atol=1e-5
    )


def test_incremental_decoding_with_kv_cache_matches_full_forward(dense):
    params, apply = dense
    model = Transformer(CFG)
    tokens = _tokens((2, 10))
    mask = jnp.ones((2, 10), bool).at[1, :3].set(False)  # row 1 left-padded
    full = apply(params, tokens, mask).logits

    @jax.jit
    def step(params, tok, m, cache):
        return model.apply({"params": params}, tok, attention_mask=m, cache=cache)

    out = step(params, tokens[:, :6], mask[:, :6], init_cache(CFG, 2, 10))
    got = [out.logits]
    cache = out.cache
    for t in range(6, 10):
        out = step(params, tokens[:, t : t + 1], mask[:, t : t + 1], cache)
        cache = out.cache
        got.append(out.logits)
    got = jnp.concatenate(got, axis=1)
    np.testing.assert_allclose(got[0], full[0], atol=1e-5)
    np.testing.assert_allclose(got[1, 3:], full[1, 3:], atol=1e-5)
    assert int(cache.index) == 10


def test_moe_routes_each_token_to_exactly_top_k_experts(moe_params):
    params = moe_params
    model = Transformer(MOE)
    out, state = jax.jit(lambda p, t: model.apply({"params": p}, t, mutable=["intermediates"]))(
        params, _tokens((2, 8))
    )
    assert out.logits.shape == (2, 8, VOCAB)
    for i in range(MOE.n_layers):
        (w,) = state["intermediates"][f"layers_{i}"]["mlp"]["router_weights"]
        assert ((np.asarray(w) > 0).sum(-1) == MOE.moe_top_k).all()
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)
    assert params["layers_0"]["mlp"]["gate_proj"].shape == (4, MOE.d_model, MOE.d_ff)


def test_uniform_router_gives_load_balance_loss_equal_to_its_weight(moe_params):
    params = jax.tree_util.tree_map(lambda x: x, moe_params)  # a copy to edit
    for i in range(MOE.n_layers):  # a zero router: every expert has probability 1/E
        params[f"layers_{i}"]["mlp"]["router"]["kernel"] = jnp.zeros((MOE.d_model, 4))
    out = _apply_fn(MOE)(params, _tokens((2, 8)), jnp.ones((2, 8), bool))
    np.testing.assert_allclose(float(out.load_balance_loss), MOE.load_balance_weight, rtol=1e-6)


def test_load_balance_loss_hand_computed():
    # E = 2, k = 1, three real tokens and one padding token that must not count
    probs = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.0, 1.0]])
    index = jnp.array([[0], [0], [1], [1]])
    mask = jnp.array([1, 1, 1, 0])
    # f = (2/3, 1/3), P = (2/3, 1/3): 2 * (4/9 + 1/9) = 10/9
    np.testing.assert_allclose(float(load_balance_loss(probs, index, mask)), 10 / 9, rtol=1e-6)
    uniform = jnp.full((6, 4), 0.25)
    balanced = jnp.array([[0, 1], [2, 3], [0, 2], [1, 3], [0, 3], [1, 2]])
    np.testing.assert_allclose(float(load_balance_loss(uniform, balanced, jnp.ones(6))), 1.0)
    collapsed = jnp.tile(jnp.array([[1.0, 0, 0, 0]]), (6, 1))
    assert float(load_balance_loss(collapsed, jnp.zeros((6, 1), int), jnp.ones(6))) == 4.0
