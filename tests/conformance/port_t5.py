"""T5 (``transformers.T5ForConditionalGeneration``) ported to jparam.

An encoder-decoder transformer with three habits of its own:

- T5's layer norm is an RMS norm (no mean subtraction, no bias, eps 1e-6): `nn.RMSNorm`.
- Attention scores are ``q @ k.T`` *unscaled* (T5 folds ``1/sqrt(d)`` into the initialisation)
  plus a learned relative position bias. Only each stack's first self-attention owns the bias
  table (``relative_attention_bias``, one scalar per bucket and head); the stack computes the
  bias once and every layer adds it. Buckets are bidirectional in the encoder, causal in the
  decoder; cross-attention has no position bias.
- One embedding table, ``shared``, is also ``encoder.embed_tokens``, ``decoder.embed_tokens`` and
  (tied word embeddings) ``lm_head``: `jp.tie` makes them one parameter under four names. Original
  T5 scales the decoder output by ``d_model**-0.5`` before ``lm_head``; T5 v1.1
  (``tie_word_embeddings=False`` in its config) does not.

The port names its sub-layers (``self_attn``, ``cross_attn``, ``ff`` and their norms) instead of
HF's ``layer.0/1/2``; `MAPPING` translates.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jparam as jp
from jparam import nn

rename = jp.mapping.rename
MAPPING = jp.Mapping(
    [
        rename("*.block.*.layer.0.SelfAttention.*", "*.blocks.*.self_attn.*"),
        rename("*.block.*.layer.0.layer_norm.*", "*.blocks.*.self_attn_norm.*"),
        rename("decoder.block.*.layer.1.EncDecAttention.*", "decoder.blocks.*.cross_attn.*"),
        rename("decoder.block.*.layer.1.layer_norm.*", "decoder.blocks.*.cross_attn_norm.*"),
        rename("encoder.block.*.layer.1.DenseReluDense.*", "encoder.blocks.*.ff.*"),
        rename("encoder.block.*.layer.1.layer_norm.*", "encoder.blocks.*.ff_norm.*"),
        rename("decoder.block.*.layer.2.DenseReluDense.*", "decoder.blocks.*.ff.*"),
        rename("decoder.block.*.layer.2.layer_norm.*", "decoder.blocks.*.ff_norm.*"),
    ]
)

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),  # HF's "gelu_new" is the tanh approximation
    "silu": nn.SiLU,
}


def relative_position_bucket(
    relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucket of each ``key - query`` offset: exact buckets for small offsets, then
    logarithmically wider ones up to ``max_distance``. Bidirectional: half the buckets for
    keys after the query; causal: later keys share bucket 0.

    Shapes are static, so this runs in NumPy at trace time, in float32 as T5 computes it (the
    truncation of the logarithm decides the bucket at the boundaries)."""
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    scaled = np.log(np.maximum(distance, max_exact).astype(np.float32) / np.float32(max_exact))
    scaled = (
        scaled
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def additive_mask(keep: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """0 where attention is allowed, the dtype's lowest finite value where not (as HF)."""
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


class T5Attention(jp.Module):
    """Multi-head attention without the ``1/sqrt(d)`` scale; ``q, k, v, o`` have no bias.

    With ``has_relative_attention_bias`` it owns the bias table that `position_bias` reads.
    """

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    relative_attention_bias: nn.Embedding | None
    num_heads: int = jp.field(static=True)
    head_dim: int = jp.field(static=True)
    bidirectional: bool = jp.field(static=True)
    max_distance: int = jp.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        *,
        has_relative_attention_bias: bool = False,
        bidirectional: bool = True,
        num_buckets: int = 32,
        max_distance: int = 128,
        key: jax.Array,
    ) -> None:
        kq, kk, kv, ko, kb = jax.random.split(key, 5)
        inner = num_heads * head_dim
        self.q = nn.Linear(d_model, inner, bias=False, key=kq)
        self.k = nn.Linear(d_model, inner, bias=False, key=kk)
        self.v = nn.Linear(d_model, inner, bias=False, key=kv)
        self.o = nn.Linear(inner, d_model, bias=False, key=ko)
        self.relative_attention_bias = (
            nn.Embedding(num_buckets, num_heads, key=kb) if has_relative_attention_bias else None
        )
        self.num_heads, self.head_dim = num_heads, head_dim
        self.bidirectional, self.max_distance = bidirectional, max_distance

    def position_bias(self, query_length: int, key_length: int) -> jax.Array:
        """The ``(1, heads, query_length, key_length)`` bias the whole stack adds to its scores."""
        table = self.relative_attention_bias
        offsets = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        buckets = relative_position_bucket(
            offsets, self.bidirectional, table.num_embeddings, self.max_distance
        )
        return jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).swapaxes(-2, -3)

    def __call__(self, x: jax.Array, context: jax.Array, bias: jax.Array) -> jax.Array:
        """Attends from ``x`` (B, L, D) to ``context`` (B, S, D); ``bias`` holds the position
        bias and the masks, added to the scores."""
        q, k, v = self._heads(self.q(x)), self._heads(self.k(context)), self._heads(self.v(context))
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.swapaxes(-2, -3).reshape(*x.shape[:-1], -1))


class T5FeedForward(jp.Module):
    """``wo(act(wi(x)))``, or gated (T5 v1.1): ``wo(act(wi_0(x)) * wi_1(x))``; no biases."""

    wi: nn.Linear | None
    wi_0: nn.Linear | None
    wi_1: nn.Linear | None
    wo: nn.Linear
    act: jp.Module

    def __init__(self, d_model: int, d_ff: int, activation: str, gated: bool, *, key: jax.Array):
        k0, k1, k2 = jax.random.split(key, 3)
        self.wi = None if gated else nn.Linear(d_model, d_ff, bias=False, key=k0)
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False, key=k0) if gated else None
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False, key=k1) if gated else None
        self.wo = nn.Linear(d_ff, d_model, bias=False, key=k2)
        self.act = ACTIVATIONS[activation]()

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.wi(x)) if self.wi is not None else self.act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h)


class T5Block(jp.Module):
    """Pre-norm residual sub-layers: self-attention, cross-attention (decoder only), MLP."""

    self_attn: T5Attention
    self_attn_norm: nn.RMSNorm
    cross_attn: T5Attention | None
    cross_attn_norm: nn.RMSNorm | None
    ff: T5FeedForward
    ff_norm: nn.RMSNorm

    def __init__(self, config: Any, *, decoder: bool, first: bool, key: jax.Array) -> None:
        ks, kc, kf = jax.random.split(key, 3)
        d, eps = config.d_model, config.layer_norm_epsilon

        def attention(key: jax.Array, **kwargs: Any) -> T5Attention:
            return T5Attention(d, config.num_heads, config.d_kv, key=key, **kwargs)

        self.self_attn = attention(
            ks,
            has_relative_attention_bias=first,
            bidirectional=not decoder,
            num_buckets=config.relative_attention_num_buckets,
            max_distance=config.relative_attention_max_distance,
        )
        self.self_attn_norm = nn.RMSNorm(d, eps=eps)
        self.cross_attn = attention(kc) if decoder else None
        self.cross_attn_norm = nn.RMSNorm(d, eps=eps) if decoder else None
        self.ff = T5FeedForward(d, config.d_ff, config.dense_act_fn, config.is_gated_act, key=kf)
        self.ff_norm = nn.RMSNorm(d, eps=eps)

    def __call__(
        self,
        x: jax.Array,
        self_bias: jax.Array,
        encoded: jax.Array | None = None,
        cross_bias: jax.Array | None = None,
    ) -> jax.Array:
        h = self.self_attn_norm(x)
        x = x + self.self_attn(h, h, self_bias)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_norm(x), encoded, cross_bias)
        return x + self.ff(self.ff_norm(x))


class T5Stack(jp.Module):
    """Embedding, blocks sharing the first block's position bias, final RMS norm."""

    embed_tokens: nn.Embedding
    blocks: nn.ModuleList
    final_layer_norm: nn.RMSNorm

    def __init__(self, config: Any, num_layers: int, *, decoder: bool, key: jax.Array) -> None:
        ke, *kb = jax.random.split(key, num_layers + 1)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, key=ke)
        self.blocks = nn.ModuleList(
            T5Block(config, decoder=decoder, first=i == 0, key=k) for i, k in enumerate(kb)
        )
        self.final_layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)

    def __call__(
        self,
        input_ids: jax.Array,
        keep: jax.Array,
        encoded: jax.Array | None = None,
        cross_keep: jax.Array | None = None,
    ) -> jax.Array:
        """``keep`` (B or 1, 1, L, L) says which keys each query may see; ``cross_keep``
        (B, 1, 1, S) which encoder positions the decoder may see."""
        x = self.embed_tokens(input_ids)
        length = input_ids.shape[-1]
        self_bias = self.blocks[0].self_attn.position_bias(length, length) + additive_mask(keep)
        cross_bias = None if cross_keep is None else additive_mask(cross_keep)
        for block in self.blocks:
            x = block(x, self_bias, encoded, cross_bias)
        return self.final_layer_norm(x)


class T5ForConditionalGeneration(jp.Module):
    """The encoder-decoder with its language-model head; returns the logits."""

    shared: nn.Embedding
    encoder: T5Stack
    decoder: T5Stack
    lm_head: nn.Linear
    d_model: int = jp.field(static=True)
    scale_decoder_outputs: bool = jp.field(static=True)

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        ks, ke, kd, kh = jax.random.split(key, 4)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, key=ks)
        self.encoder = T5Stack(config, config.num_layers, decoder=False, key=ke)
        self.decoder = T5Stack(config, config.num_decoder_layers, decoder=True, key=kd)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, key=kh)
        self.d_model = config.d_model
        # Recent transformers always tie lm_head and keep T5 v1.1's "no scaling" apart.
        self.scale_decoder_outputs = getattr(
            config, "scale_decoder_outputs", config.tie_word_embeddings
        )

    def __call__(
        self,
        input_ids: jax.Array,
        decoder_input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``(B, T, vocab)``; masks are ``(B, length)`` with 1 (or True) for real tokens."""
        (b, s), t = input_ids.shape, decoder_input_ids.shape[-1]
        pad = jnp.ones((b, s), bool) if attention_mask is None else attention_mask.astype(bool)
        pad = pad[:, None, None, :]
        encoded = self.encoder(input_ids, pad)
        causal = np.tril(np.ones((t, t), bool))[None, None]
        if decoder_attention_mask is not None:
            causal = decoder_attention_mask.astype(bool)[:, None, None, :] & causal
        h = self.decoder(decoder_input_ids, causal, encoded, pad)
        if self.scale_decoder_outputs:
            h = h * self.d_model**-0.5
        return self.lm_head(h)


def from_config(config: Any, *, key: jax.Array) -> T5ForConditionalGeneration:
    """The port of a ``transformers.T5Config``, embeddings tied as in HF's model."""
    model = T5ForConditionalGeneration(config, key=key)
    tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if config.tie_word_embeddings:
        tied.append("lm_head.weight")
    for name in tied:
        model = jp.tie(model, name, "shared.weight")
    return model
