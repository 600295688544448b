"""Functional attention with PyTorch's signature: `scaled_dot_product_attention`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._utils import compute_dtype
from .dropout_layer import dropout as apply_dropout

__all__ = ["scaled_dot_product_attention"]


def _merge_keep(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """Both boolean keep-masks combined (``a & b``), or whichever one is given."""
    return b if a is None else a if b is None else jnp.logical_and(a, b)


def attention_core(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    keep: jax.Array | None,
    bias: jax.Array | None,
    *,
    scale: float,
    is_causal: bool,
    dropout_p: float,
    dropout_key: jax.Array | None,
    need_weights: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """Attention on ``(B, H, L, D)`` queries and ``(B, Hk, S, D)`` keys/values.

    ``keep`` (True = may attend) and ``bias`` broadcast to ``(B, H, L, S)``. Without dropout
    or returned weights it runs `jax.nn.dot_product_attention` (a fused kernel where the
    backend has one: cuDNN flash attention on GPU); otherwise an explicit softmax, in at least
    float32. Returns ``(output (B, H, L, Dv), weights (B, H, L, S) or None)``.
    """
    use_dropout = dropout_p > 0
    fused_ok = q.shape[-1] == v.shape[-1] and k.shape[1] == v.shape[1]
    if not need_weights and not use_dropout and fused_ok:
        to_jax = lambda x: jnp.swapaxes(x, 1, 2)  # (B, H, T, D) <-> (B, T, H, D)
        if bias is not None:
            bias = bias.astype(q.dtype)
        out = jax.nn.dot_product_attention(
            to_jax(q), to_jax(k), to_jax(v), bias, keep, scale=scale, is_causal=is_causal
        )
        return to_jax(out), None
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
    logits = jnp.einsum("bhld,bhsd->bhls", q * scale, k)
    logits = logits.astype(compute_dtype(logits.dtype))
    if bias is not None:
        logits = logits + bias
    if is_causal:
        lq, s = logits.shape[-2:]
        keep = _merge_keep(keep, jnp.tril(jnp.ones((lq, s), bool)))
    if keep is not None:
        logits = jnp.where(keep, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    if use_dropout:
        assert dropout_key is not None  # every caller requires a key with dropout
        weights = apply_dropout(weights, dropout_p, dropout_key)
    out = jnp.einsum("bhls,bhsd->bhld", weights.astype(v.dtype), v)
    return out, (weights if need_weights else None)


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, enable_gqa: bool) -> None:
    """PyTorch's shape rules: ``(..., H, L, E)``, ``(..., Hk, S, E)``, ``(..., Hk, S, Ev)``."""
    where = "scaled_dot_product_attention"
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"{where} expected query (..., L, E), key (..., S, E) and value (..., S, Ev) of "
            f"one rank >= 2, got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{where} expected key (..., S, {q.shape[-1]}) and value (..., S, Ev) with the "
            f"same S, got key {k.shape} and value {v.shape} for query {q.shape}"
        )
    if q.shape[:-3] != k.shape[:-3] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"{where} expected the same batch dimensions for query, key and value, got "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        hq, hk = q.shape[-3], k.shape[-3]
        if not enable_gqa or hq % hk:
            raise ValueError(
                f"{where} expected as many key/value heads as query heads, got {hk} and {hq}; "
                "pass enable_gqa=True for grouped-query attention (query heads a multiple "
                "of key/value heads)"
            )


def _as_4d(x: jax.Array) -> jax.Array:
    """``(..., H, T, D)`` as ``(B, H, T, D)`` (a missing head axis becomes one head)."""
    if x.ndim == 2:
        return x[None, None]
    return x.reshape(-1, *x.shape[-3:])


def scaled_dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    attn_mask: jax.Array | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    key_rng: jax.Array | None = None,
) -> jax.Array:
    """PyTorch's ``F.scaled_dot_product_attention``: ``softmax(q k^T * scale + mask) v``.

    ``query`` is ``(..., H, L, E)``, ``key`` ``(..., Hk, S, E)``, ``value`` ``(..., Hk, S, Ev)``
    as in PyTorch; the result is ``(..., H, L, Ev)``. ``attn_mask`` broadcasts to
    ``(..., H, L, S)``: bool True means *may attend* (PyTorch's sdpa convention, the opposite of
    `MultiheadAttention`'s masks), floats are added to the logits. ``is_causal`` masks key
    ``j > i`` for query ``i`` (top-left aligned), on top of any ``attn_mask`` as PyTorch does.
    ``scale`` defaults to ``1 / sqrt(E)``. ``enable_gqa`` lets ``H`` be a multiple of ``Hk``.

    Runs on `jax.nn.dot_product_attention` (cuDNN flash attention on GPU) unless dropout is on
    or ``Ev != E``; dropout (``dropout_p > 0``) needs ``key_rng=`` (the name ``key`` is the key
    tensor, as in PyTorch). Unlike PyTorch there is no global training flag: pass
    ``dropout_p=0.0`` for inference.
    """
    q, k, v = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    _check_shapes(q, k, v, enable_gqa)
    if not 0.0 <= float(dropout_p) <= 1.0:
        raise ValueError(
            f"scaled_dot_product_attention dropout_p must be in [0, 1], got {dropout_p}"
        )
    if dropout_p > 0 and key_rng is None:
        raise ValueError(
            f"scaled_dot_product_attention with dropout_p={dropout_p} needs key_rng=<PRNG key>; "
            "pass dropout_p=0.0 for inference"
        )
    keep = bias = None
    if attn_mask is not None:
        mask = jnp.asarray(attn_mask)
        target = (*q.shape[:-1], k.shape[-2])
        try:
            mask = jnp.broadcast_to(mask, target)
        except ValueError:
            raise ValueError(
                f"scaled_dot_product_attention expected attn_mask broadcastable to {target} "
                f"(..., H, L, S), got shape {mask.shape}"
            ) from None
        if mask.dtype == jnp.bool_:
            keep = _as_4d(mask)
        elif jnp.issubdtype(mask.dtype, jnp.floating):
            bias = _as_4d(mask)
        else:
            raise TypeError(
                f"scaled_dot_product_attention attn_mask must be bool or floating, got dtype "
                f"{mask.dtype}"
            )
    out, _ = attention_core(
        _as_4d(q),
        _as_4d(k),
        _as_4d(v),
        keep,
        bias,
        scale=1 / math.sqrt(q.shape[-1]) if scale is None else scale,
        is_causal=is_causal,
        dropout_p=float(dropout_p),
        dropout_key=key_rng,
        need_weights=False,
    )
    return out.reshape(*q.shape[:-1], v.shape[-1])
