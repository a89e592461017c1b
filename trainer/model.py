"""The decoder: a Llama-layout transformer in Flax linen, optionally mixture-of-experts.

Layout (as in Llama 2/3, Mistral, Qwen2): token embedding -> n_layers x [RMSNorm ->
grouped-query self-attention with rotary positions -> residual; RMSNorm -> SwiGLU FFN (or
a top-k routed mixture of SwiGLU experts) -> residual] -> RMSNorm -> logits (tied to the
embedding or a separate lm_head).

Parameter tree (Hugging Face Llama name -> ours; Dense kernels are the transpose of HF's
`[out, in]` weights, see trainer/warmstart.py):

    model.embed_tokens.weight                    embed_tokens/embedding        [vocab, d]
    model.layers.N.input_layernorm.weight        layers_N/input_layernorm/weight
    model.layers.N.self_attn.{q,k,v,o}_proj      layers_N/self_attn/{q,k,v,o}_proj/kernel
    model.layers.N.post_attention_layernorm      layers_N/post_attention_layernorm/weight
    model.layers.N.mlp.{gate,up,down}_proj       layers_N/mlp/{gate,up,down}_proj/kernel
    model.norm.weight                            norm/weight
    lm_head.weight                               lm_head/kernel (only when untied)

MoE layers hold `layers_N/mlp/router/kernel [d, E]` and stacked expert weights
`layers_N/mlp/{gate_proj,up_proj} [E, d, d_ff]`, `layers_N/mlp/down_proj [E, d_ff, d]`
(Mixtral's experts.M.{w1,w3,w2} stacked).

Rotary embeddings use the "rotate half" convention of the HF Llama code (not the
interleaved pairs of Meta's original), so HF checkpoints load without permuting q/k.

Incremental decoding uses a functional KV cache (`init_cache`, `ModelOutput.cache`):
the cache is an ordinary pytree, so beam search can reorder it with a gather.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainer.config import ModelConfig

_INIT_STD = 0.02  # GPT-2 / Llama initializer range


class KVCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # per layer [batch, slots, n_kv_heads, head_dim]
    values: tuple[jax.Array, ...]  # per layer [batch, slots, n_kv_heads, head_dim]
    mask: jax.Array  # [batch, slots] bool: the slot holds a real (non-padding) token
    index: jax.Array  # int32 scalar: the next slot to write


class ModelOutput(NamedTuple):
    logits: jax.Array  # [batch, time, vocab] float32
    # Switch/GShard auxiliary loss, already multiplied by load_balance_weight and averaged
    # over the MoE layers; 0.0 for a dense model. Add it to the training loss.
    load_balance_loss: jax.Array
    cache: KVCache | None  # the updated cache when one was passed in


def init_cache(config: ModelConfig, batch: int, slots: int) -> KVCache:
    """An empty KV cache with room for `slots` tokens per row."""
    if slots > config.max_len:
        raise ValueError(f"cache slots={slots} exceed max_len={config.max_len}")
    shape = (batch, slots, config.n_kv_heads, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    zeros_v = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    return KVCache(zeros, zeros_v, jnp.zeros((batch, slots), bool), jnp.zeros((), jnp.int32))


def _dense(features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(_INIT_STD),
        name=name,
    )


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * weight).astype(x.dtype)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [batch, time, head_dim] for integer `positions` [batch, time]."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, time, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x` [batch, time, heads, head_dim] by position (HF "rotate half" layout)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv=None):
        """x [batch, time, d]; mask [batch, time, slots] bool (True = may attend);
        kv: (cached keys, cached values, write index) or None. Returns (out, (keys, values))."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        b, t, _ = x.shape
        hd, n_kv = c.head_dim, c.n_kv_heads
        groups = c.n_heads // n_kv
        q = _dense(c.n_heads * hd, "q_proj", dtype)(x).reshape(b, t, c.n_heads, hd)
        k = _dense(n_kv * hd, "k_proj", dtype)(x).reshape(b, t, n_kv, hd)
        v = _dense(n_kv * hd, "v_proj", dtype)(x).reshape(b, t, n_kv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            cached_k, cached_v, index = kv
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), (0, index, 0, 0))
        # query head h uses kv head h // groups (HF repeat_kv order)
        q = q.reshape(b, t, n_kv, groups, hd)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(hd))
        # a finite floor, not -inf: a padding query that may attend to nothing stays finite
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype)).reshape(b, t, c.n_heads * hd)
        return _dense(c.d_model, "o_proj", dtype)(out), (k, v)


class SwiGLU(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        gate = _dense(c.d_ff, "gate_proj", dtype)(x)
        up = _dense(c.d_ff, "up_proj", dtype)(x)
        return _dense(c.d_model, "down_proj", dtype)(nn.silu(gate) * up)


def load_balance_loss(router_probs: jax.Array, expert_index: jax.Array, token_mask: jax.Array):
    """Switch/GShard auxiliary loss  E * sum_e f_e * P_e  (unweighted).

    router_probs [tokens, E] softmax of the router; expert_index [tokens, k] the chosen
    experts; token_mask [tokens] which tokens count (padding does not). f_e = share of
    the k*tokens assignments that go to expert e, P_e = mean router probability of e.
    Both are distributions over experts; under uniform routing f_e = P_e = 1/E and the
    loss is exactly 1, the value it is designed to push towards (the gradient flows
    through P only, f is a count).
    """
    num_experts = router_probs.shape[-1]
    m = token_mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    dispatch = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.float32).sum(-2)  # [tok, E]
    f = (dispatch * m[:, None]).sum(0) / (n * expert_index.shape[-1])
    p = (router_probs * m[:, None]).sum(0) / n
    return num_experts * jnp.sum(f * p)


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts (Mixtral-style: softmax router, top-k weights renormalised).

    Every expert is evaluated on every token and the outputs are mixed by the (sparse)
    routing weights: exact and simple, but costs E/k times the FLOPs of real dispatch.
    Fine for the tiny/small models; paper scale needs capacity-based dispatch (not done).
    Sows the routing weights [batch, time, E] as intermediates/router_weights.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, token_mask):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        e, k = c.num_experts, c.moe_top_k
        b, t, d = x.shape
        router_logits = _dense(e, "router", jnp.float32)(x.astype(jnp.float32))  # [b, t, E]
        probs = jax.nn.softmax(router_logits, axis=-1)
        top_p, top_i = jax.lax.top_k(probs, k)  # [b, t, k]
        top_w = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
        weights = jnp.sum(jax.nn.one_hot(top_i, e) * top_w[..., None], axis=-2)  # [b, t, E]
        self.sow("intermediates", "router_weights", weights)
        init = nn.initializers.normal(_INIT_STD)
        gate = self.param("gate_proj", init, (e, d, c.d_ff), jnp.float32).astype(dtype)
        up = self.param("up_proj", init, (e, d, c.d_ff), jnp.float32).astype(dtype)
        down = self.param("down_proj", init, (e, c.d_ff, d), jnp.float32).astype(dtype)
        h = nn.silu(jnp.einsum("btd,edf->btef", x, gate)) * jnp.einsum("btd,edf->btef", x, up)
        y = jnp.einsum("btef,efd,bte->btd", h, down, weights.astype(dtype))
        aux = load_balance_loss(
            probs.reshape(b * t, e), top_i.reshape(b * t, k), token_mask.reshape(b * t)
        )
        return y, aux


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, token_mask, kv=None, train: bool = False):
        c = self.config
        drop = nn.Dropout(c.dropout, deterministic=not train)
        attn, new_kv = Attention(c, name="self_attn")(
            RMSNorm(c.norm_eps, name="input_layernorm")(x), cos, sin, mask, kv
        )
        x = x + drop(attn)
        h = RMSNorm(c.norm_eps, name="post_attention_layernorm")(x)
        if c.is_moe:
            ff, aux = MoEFeedForward(c, name="mlp")(h, token_mask)
        else:
            ff, aux = SwiGLU(c, name="mlp")(h), jnp.zeros((), jnp.float32)
        return x + drop(ff), aux, new_kv


class Transformer(nn.Module):
    """tokens [batch, time] int -> ModelOutput (logits [batch, time, vocab] float32).

    attention_mask [batch, time]: 1 for real tokens, 0 for padding (left or right); a
    padding key is never attended to. Causality is by position in the sequence (slot).
    positions [batch, time]: rotary positions; by default the count of real tokens
    before each one (so left padding does not shift positions), continued from the cache.
    cache: a KVCache (see init_cache); the new tokens are written at cache.index.
    train: apply `config.dropout` (needs a "dropout" rng when it is above 0).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, tokens, *, attention_mask=None, positions=None, cache=None, train: bool = False
    ) -> ModelOutput:
        c = self.config
        if c.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size is 0: build with config.with_vocab(n)")
        dtype = jnp.dtype(c.dtype)
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = attention_mask.astype(bool)
        seen = 0 if cache is None else jnp.sum(cache.mask, axis=-1, keepdims=True)
        if positions is None:
            positions = jnp.maximum(seen + jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        if cache is None:
            if t > c.max_len:
                raise ValueError(f"sequence length {t} exceeds max_len={c.max_len}")
            key_mask = attention_mask  # [b, slots = t]
            q_slots = jnp.arange(t)
        else:
            key_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.index))
            q_slots = cache.index + jnp.arange(t)
        k_slots = jnp.arange(key_mask.shape[1])
        mask = key_mask[:, None, :] & (k_slots[None, :] <= q_slots[:, None])[None]  # [b, t, s]

        embed = nn.Embed(
            c.vocab_size,
            c.d_model,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(_INIT_STD),
            name="embed_tokens",
        )
        x = nn.Dropout(c.dropout, deterministic=not train)(embed(tokens))
        cos, sin = rope_angles(positions, c.head_dim, c.rope_theta)
        aux_total = jnp.zeros((), jnp.float32)
        new_keys, new_values = [], []
        for i in range(c.n_layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
            x, aux, (k, v) = DecoderLayer(c, name=f"layers_{i}")(
                x, cos, sin, mask, attention_mask, kv, train
            )
            aux_total = aux_total + aux
            new_keys.append(k)
            new_values.append(v)
        x = RMSNorm(c.norm_eps, name="norm")(x).astype(jnp.float32)
        if c.tie_embeddings:
            logits = x @ embed.embedding.astype(jnp.float32).T
        else:
            logits = _dense(c.vocab_size, "lm_head", jnp.float32)(x)
        balance = c.load_balance_weight * aux_total / c.n_layers if c.is_moe else aux_total
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_keys), tuple(new_values), key_mask, cache.index + t)
        return ModelOutput(logits, balance, new_cache)


def init_params(config: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Freshly initialised parameters for `config` (vocab_size must be set)."""
    tokens = jnp.zeros((1, min(seq_len, config.max_len)), jnp.int32)
    return Transformer(config).init(rng, tokens)["params"]


# --- Shared-prefix decoding (beam search) ---------------------------------------------
#
# Beam search continues one prompt with many beams. Instead of copying the prompt's KV
# cache into every beam (and re-gathering it whenever beams are reordered), the prompt's
# keys/values are kept once per request (PrefixCache) and each beam keeps only its own
# generated tokens (BeamCache). A decode token attends to softmax(prompt keys of its
# request ∪ its beam's generated keys) -- the same attention as the full-cache path of
# Transformer.__call__, by the same parameters; training does not use this code.


class PrefixCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # per layer [batch, prompt, n_kv_heads, head_dim]
    values: tuple[jax.Array, ...]  # per layer [batch, prompt, n_kv_heads, head_dim]
    mask: jax.Array  # [batch, prompt] bool: a real (non-padding) prompt token
    length: jax.Array  # [batch] int32: real prompt tokens (rotary position of the next one)


class BeamCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # per layer [batch, beams, generated, n_kv_heads, head_dim]
    values: tuple[jax.Array, ...]  # per layer [batch, beams, generated, n_kv_heads, head_dim]

    @property
    def generated(self) -> int:
        return int(self.keys[0].shape[2])

    def reorder(self, parent: jax.Array) -> BeamCache:
        """Beam q of each request continues beam parent[b, q] ([batch, beams] int)."""
        take = lambda a: jnp.take_along_axis(a, parent[:, :, None, None, None], axis=1)  # noqa: E731
        return BeamCache(tuple(map(take, self.keys)), tuple(map(take, self.values)))


def empty_beam_cache(config: ModelConfig, batch: int, beams: int) -> BeamCache:
    shape = (batch, beams, 0, config.n_kv_heads, config.head_dim)
    empty = tuple(jnp.zeros(shape, jnp.dtype(config.dtype)) for _ in range(config.n_layers))
    return BeamCache(empty, empty)


def _logits(config: ModelConfig, params, x: jax.Array) -> jax.Array:
    """Final norm + vocabulary projection of hidden states x [..., d] (float32 logits)."""
    x = RMSNorm(config.norm_eps).apply({"params": params["norm"]}, x).astype(jnp.float32)
    if config.tie_embeddings:
        return x @ params["embed_tokens"]["embedding"].astype(jnp.float32).T
    lm_head = _dense(config.vocab_size, "lm_head", jnp.float32)
    return lm_head.apply({"params": params["lm_head"]}, x)


def _embed(config: ModelConfig, params, tokens: jax.Array) -> jax.Array:
    embed = nn.Embed(config.vocab_size, config.d_model, dtype=jnp.dtype(config.dtype))
    return embed.apply({"params": params["embed_tokens"]}, tokens)


def prefill(config: ModelConfig, params, tokens, attention_mask) -> tuple[jax.Array, PrefixCache]:
    """Run prompts tokens [batch, time] (attention_mask [batch, time], 1 = real) through the
    model: (logits of the LAST position [batch, vocab], the prompts' PrefixCache).

    Same numbers as Transformer.__call__ without a cache (it runs the same layers), but the
    vocabulary projection is done for the last position only.
    """
    c = config
    b, t = tokens.shape
    if t > c.max_len:
        raise ValueError(f"sequence length {t} exceeds max_len={c.max_len}")
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    slots = jnp.arange(t)
    mask = attention_mask[:, None, :] & (slots[None, :] <= slots[:, None])[None]  # [b, t, s]
    x = _embed(c, params, tokens)
    cos, sin = rope_angles(positions, c.head_dim, c.rope_theta)
    keys, values = [], []
    for i in range(c.n_layers - 1):
        x, _, (k, v) = DecoderLayer(c).apply(
            {"params": params[f"layers_{i}"]}, x, cos, sin, mask, attention_mask
        )
        keys.append(k)
        values.append(v)
    x, (k, v) = _last_position_layer(
        c, params[f"layers_{c.n_layers - 1}"], x, cos, sin, attention_mask
    )
    keys.append(k)
    values.append(v)
    length = jnp.sum(attention_mask, axis=-1, dtype=jnp.int32)
    prefix = PrefixCache(tuple(keys), tuple(values), attention_mask, length)
    return _logits(c, params, x), prefix


def _feed_forward(c: ModelConfig, p, x: jax.Array) -> jax.Array:
    """The second half of a DecoderLayer: x + FFN(RMSNorm(x)) (aux loss dropped)."""
    h = RMSNorm(c.norm_eps).apply({"params": p["post_attention_layernorm"]}, x)
    if c.is_moe:
        token_mask = jnp.ones(x.shape[:-1], bool)
        ff, _ = MoEFeedForward(c).apply({"params": p["mlp"]}, h, token_mask)
    else:
        ff = SwiGLU(c).apply({"params": p["mlp"]}, h)
    return x + ff


def _last_position_layer(c: ModelConfig, p, x, cos, sin, attention_mask):
    """A DecoderLayer whose output is needed at the last position only (the last layer of
    the prefill): keys/values for every position (the cache), the query, attention, output
    projection and FFN for the last position. Returns (x [batch, d], (keys, values))."""
    dtype = jnp.dtype(c.dtype)
    b, t, _ = x.shape
    hd, n_kv = c.head_dim, c.n_kv_heads
    groups = c.n_heads // n_kv
    h = RMSNorm(c.norm_eps).apply({"params": p["input_layernorm"]}, x)
    a = p["self_attn"]

    def proj(heads, name, inputs):
        return _dense(heads * hd, name, dtype).apply({"params": a[name]}, inputs)

    k = apply_rope(proj(n_kv, "k_proj", h).reshape(b, t, n_kv, hd), cos, sin)
    v = proj(n_kv, "v_proj", h).reshape(b, t, n_kv, hd)
    q = proj(c.n_heads, "q_proj", h[:, -1:]).reshape(b, 1, c.n_heads, hd)
    q = apply_rope(q, cos[:, -1:], sin[:, -1:]).reshape(b, 1, n_kv, groups, hd)
    f32 = jnp.float32
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=f32) / jnp.sqrt(
        f32(hd)
    )  # the last slot may attend to every real slot
    scores = jnp.where(attention_mask[:, None, None, None, :], scores, jnp.finfo(f32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype)).reshape(b, 1, c.n_heads * hd)
    x = x[:, -1:] + _dense(c.d_model, "o_proj", dtype).apply({"params": a["o_proj"]}, out)
    return _feed_forward(c, p, x)[:, 0], (k, v)


def _shared_prefix_attention(c: ModelConfig, p, x, cos, sin, prefix_kv, prefix_mask, beam_kv):
    """Self-attention of one new token per beam. x [batch, beams, d]; prefix_kv: the
    request's prompt keys/values [batch, prompt, n_kv, hd]; beam_kv: each beam's generated
    keys/values [batch, beams, generated, n_kv, hd]. Returns (out [batch, beams, d], the
    beam keys/values with this token appended)."""
    dtype = jnp.dtype(c.dtype)
    b, q_n, _ = x.shape
    hd, n_kv = c.head_dim, c.n_kv_heads
    groups = c.n_heads // n_kv
    flat = x.reshape(b * q_n, 1, -1)  # rows as [batch, time = 1] for the projections/rope

    def proj(heads, name):
        return _dense(heads * hd, name, dtype).apply({"params": p[name]}, flat)

    q = proj(c.n_heads, "q_proj").reshape(b * q_n, 1, c.n_heads, hd)
    k = proj(n_kv, "k_proj").reshape(b * q_n, 1, n_kv, hd)
    v = proj(n_kv, "v_proj").reshape(b * q_n, 1, n_kv, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    prefix_k, prefix_v = prefix_kv
    beam_k, beam_v = beam_kv
    beam_k = jnp.concatenate([beam_k, k.astype(beam_k.dtype).reshape(b, q_n, 1, n_kv, hd)], 2)
    beam_v = jnp.concatenate([beam_v, v.astype(beam_v.dtype).reshape(b, q_n, 1, n_kv, hd)], 2)
    # query head h uses kv head h // groups (HF repeat_kv order); q indexes the beams
    q = q.reshape(b, q_n, n_kv, groups, hd)
    f32 = jnp.float32
    s_prefix = jnp.einsum("bqngd,bsnd->bnqgs", q, prefix_k, preferred_element_type=f32)
    s_beam = jnp.einsum("bqngd,bqjnd->bnqgj", q, beam_k, preferred_element_type=f32)
    scale = jnp.sqrt(f32(hd))
    s_prefix = jnp.where(prefix_mask[:, None, None, None, :], s_prefix / scale, jnp.finfo(f32).min)
    scores = jnp.concatenate([s_prefix, s_beam / scale], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    p_prefix, p_beam = probs[..., : prefix_k.shape[1]], probs[..., prefix_k.shape[1] :]
    out = jnp.einsum("bnqgs,bsnd->bqngd", p_prefix, prefix_v.astype(dtype)) + jnp.einsum(
        "bnqgj,bqjnd->bqngd", p_beam, beam_v.astype(dtype)
    )
    out = _dense(c.d_model, "o_proj", dtype).apply(
        {"params": p["o_proj"]}, out.reshape(b, q_n, c.n_heads * hd)
    )
    return out, (beam_k, beam_v)


def decode_beams(
    config: ModelConfig, params, tokens, prefix: PrefixCache, cache: BeamCache
) -> tuple[jax.Array, BeamCache]:
    """One decode step for every beam: tokens [batch, beams] continue the prompt of their
    request (prefix) and their beam's generated tokens (cache). Returns (logits [batch,
    beams, vocab] float32, the cache with these tokens appended).

    Equal (up to float rounding) to Transformer.__call__ on a KV cache holding that prompt
    followed by that beam's tokens: rotary position = real prompt tokens + tokens so far.
    """
    c = config
    b, q_n = tokens.shape
    positions = jnp.broadcast_to(prefix.length[:, None] + cache.generated, (b, q_n))
    cos, sin = rope_angles(positions.reshape(b * q_n, 1), c.head_dim, c.rope_theta)
    x = _embed(c, params, tokens)  # [b, beams, d]
    new_keys, new_values = [], []
    for i in range(c.n_layers):
        p = params[f"layers_{i}"]
        h = RMSNorm(c.norm_eps).apply({"params": p["input_layernorm"]}, x)
        attn, (k, v) = _shared_prefix_attention(
            c,
            p["self_attn"],
            h,
            cos,
            sin,
            (prefix.keys[i], prefix.values[i]),
            prefix.mask,
            (cache.keys[i], cache.values[i]),
        )
        x = _feed_forward(c, p, x + attn)
        new_keys.append(k)
        new_values.append(v)
    return _logits(c, params, x), BeamCache(tuple(new_keys), tuple(new_values))
