"""`MultiheadAttention` with PyTorch's parameters, batch-first inputs and PyTorch's masks."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter
from ._utils import (
    OUT_AXES,
    WEIGHT_AXES,
    check_input,
    check_int,
    check_probability,
    compute_dtype,
    describe,
    require_key,
    shape_error,
)
from .dropout import dropout as apply_dropout
from .linear import Linear

__all__ = ["MultiheadAttention"]


def _mask_parts(
    layer: Module, mask: jax.Array, shape: tuple[int, ...], what: str
) -> tuple[jax.Array | None, jax.Array | None]:
    """PyTorch's mask convention -> ``(keep, bias)``: bool True means *masked out*, floats add."""
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        return ~mask.reshape(shape), None
    if jnp.issubdtype(mask.dtype, jnp.floating):
        return None, mask.reshape(shape)
    raise TypeError(f"{describe(layer)}: {what} must be bool or floating, got dtype {mask.dtype}")


def _merge(
    a: jax.Array | None, b: jax.Array | None, op: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array | None:
    """``op(a, b)``, or whichever of the two is not ``None``."""
    return b if a is None else a if b is None else op(a, b)


class MultiheadAttention(Module):
    """Scaled dot-product attention over ``num_heads`` heads, PyTorch's ``nn.MultiheadAttention``.

    **Batch-first only**: query is ``(N, L, E)``, key and value ``(N, S, E)``, as with PyTorch's
    ``batch_first=True`` (passing ``batch_first=False`` raises). Parameters have PyTorch's names
    and layouts — ``in_proj_weight`` ``(3E, E)`` (query, key, value rows), ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias`` — and init (xavier-uniform ``in_proj_weight``, zero
    biases), so PyTorch weights load as they are.

    The call follows PyTorch and returns ``(output, weights)``:

    - ``key_padding_mask`` ``(N, S)`` and ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)``
      are bool (True = may *not* attend) or float (added to the logits), as in PyTorch.
    - ``is_causal=True`` applies a causal mask (query i sees keys ``<= i``) on top of any
      ``attn_mask``; unlike PyTorch it needs no ``attn_mask`` to go with it.
    - ``need_weights=True`` (PyTorch's default) also returns the attention weights, averaged
      over heads unless ``average_attn_weights=False`` (then ``(N, num_heads, L, S)``).
      ``need_weights=False`` returns ``(output, None)`` through ``jax.nn.dot_product_attention``,
      which lets JAX pick a fused kernel: use it whenever the weights are not needed.
    - Attention dropout (``dropout > 0`` in training mode) needs ``dropout_key=``; the name
      differs from other layers' ``key=`` because ``key`` is the key sequence here.

    Fully masked query rows give NaN, as in PyTorch.
    """

    in_proj_weight: Parameter
    in_proj_bias: Parameter | None
    out_proj: Linear
    embed_dim: int = field(static=True)
    num_heads: int = field(static=True)
    dropout: float = field(static=True)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        *,
        batch_first: bool = True,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "MultiheadAttention")
        if batch_first is not True:
            raise ValueError(
                "MultiheadAttention is batch-first only: inputs are (batch, seq, embed). "
                "Transpose sequence-first inputs with jnp.swapaxes(x, 0, 1) instead."
            )
        embed_dim = check_int("MultiheadAttention", "embed_dim", embed_dim, 1)
        num_heads = check_int("MultiheadAttention", "num_heads", num_heads, 1)
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiheadAttention embed_dim must be divisible by num_heads, got "
                f"embed_dim={embed_dim}, num_heads={num_heads}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = check_probability("MultiheadAttention", "dropout", dropout)
        wkey, okey = jax.random.split(key)
        self.in_proj_weight = Parameter(
            init.xavier_uniform(wkey, (3 * embed_dim, embed_dim), dtype), axes=WEIGHT_AXES
        )
        self.in_proj_bias = (
            Parameter(init.zeros(None, (3 * embed_dim,), dtype), axes=OUT_AXES) if bias else None
        )
        out_proj = Linear(embed_dim, embed_dim, bias, key=okey, dtype=dtype)
        if bias:
            out_proj = out_proj.replace(
                bias=Parameter(init.zeros(None, (embed_dim,), dtype), axes=OUT_AXES)
            )
        self.out_proj = out_proj

    @property
    def head_dim(self) -> int:
        """Features per head, ``embed_dim // num_heads``."""
        return self.embed_dim // self.num_heads

    def _project(self, x: jax.Array, index: int) -> jax.Array:
        """Projects ``(N, T, E)`` with the query/key/value block ``index``, split into heads."""
        e = self.embed_dim
        y = x @ self.in_proj_weight.value[index * e : (index + 1) * e].T
        if self.in_proj_bias is not None:
            y = y + self.in_proj_bias.value[index * e : (index + 1) * e]
        return y.reshape(*y.shape[:2], self.num_heads, self.head_dim)

    def _masks(
        self,
        key_padding_mask: jax.Array | None,
        attn_mask: jax.Array | None,
        n: int,
        lq: int,
        s: int,
    ) -> tuple[jax.Array | None, jax.Array | None]:
        """``(keep, bias)`` broadcastable to ``(N, heads, L, S)`` from PyTorch's two masks."""
        keep = bias = None
        if key_padding_mask is not None:
            if jnp.shape(key_padding_mask) != (n, s):
                raise ValueError(
                    f"{describe(self)} expected key_padding_mask of shape {(n, s)}, got "
                    f"shape {tuple(jnp.shape(key_padding_mask))}"
                )
            keep, bias = _mask_parts(self, key_padding_mask, (n, 1, 1, s), "key_padding_mask")
        if attn_mask is not None:
            shape = tuple(jnp.shape(attn_mask))
            if shape == (lq, s):
                target = (1, 1, lq, s)
            elif shape == (n * self.num_heads, lq, s):
                target = (n, self.num_heads, lq, s)
            else:
                raise ValueError(
                    f"{describe(self)} expected attn_mask of shape {(lq, s)} or "
                    f"{(n * self.num_heads, lq, s)}, got shape {shape}"
                )
            k2, b2 = _mask_parts(self, attn_mask, target, "attn_mask")
            keep, bias = _merge(keep, k2, jnp.logical_and), _merge(bias, b2, jnp.add)
        return keep, bias

    def __call__(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        key_padding_mask: jax.Array | None = None,
        need_weights: bool = True,
        attn_mask: jax.Array | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Attends from ``query`` to ``key``/``value``; returns ``(output, weights or None)``."""
        e = self.embed_dim
        query = check_input(self, query, f"(N, L, {e}) for query", (3,), {2: e})
        n, lq = query.shape[:2]
        key = check_input(self, key, f"({n}, S, {e}) for key", (3,), {0: n, 2: e})
        s = key.shape[1]
        value = jnp.asarray(value)
        if value.shape != key.shape:
            raise shape_error(self, f"{tuple(key.shape)} for value (the key's shape)", value)
        use_dropout = self.training and self.dropout > 0
        if use_dropout and dropout_key is None:
            raise ValueError(
                f"{describe(self)} is in training mode with attention dropout and needs "
                "dropout_key=...; call `.eval()` for inference."
            )
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        keep, bias = self._masks(key_padding_mask, attn_mask, n, lq, s)
        if not need_weights and not use_dropout:
            if bias is not None:
                bias = bias.astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, bias, keep, is_causal=is_causal)
            weights = None
        else:
            # Softmax in at least float32, as fused attention kernels do.
            logits = jnp.einsum("nlhd,nshd->nhls", q / math.sqrt(self.head_dim), k)
            logits = logits.astype(compute_dtype(logits.dtype))
            if bias is not None:
                logits = logits + bias
            if is_causal:
                keep = _merge(keep, jnp.tril(jnp.ones((lq, s), bool)), jnp.logical_and)
            if keep is not None:
                logits = jnp.where(keep, logits, -jnp.inf)
            weights = jax.nn.softmax(logits, axis=-1)
            if use_dropout:
                weights = apply_dropout(weights, self.dropout, dropout_key)
            out = jnp.einsum("nhls,nshd->nlhd", weights.astype(v.dtype), v)
            if average_attn_weights:
                weights = weights.mean(axis=1)
        out = self.out_proj(out.reshape(n, lq, e))
        return out, (weights if need_weights else None)
