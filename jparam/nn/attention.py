"""`MultiheadAttention` with PyTorch's arguments, parameters, layouts and masks."""

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
    describe,
    require_key,
)
from .functional import attention_core
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


def _pad_last(x: jax.Array | None, extra: int, value: bool | float) -> jax.Array | None:
    """``x`` with ``extra`` columns of ``value`` appended on the key axis (the last)."""
    if x is None or extra == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, extra)]
    return jnp.pad(x, widths, constant_values=value)


class MultiheadAttention(Module):
    """Scaled dot-product attention over ``num_heads`` heads, PyTorch's ``nn.MultiheadAttention``.

    Constructor arguments are PyTorch's, ``batch_first=False`` included: by default query is
    ``(L, N, E)`` and key/value ``(S, N, kdim)``/``(S, N, vdim)``, as in PyTorch, so code and
    checkpoints port unchanged; ``batch_first=True`` takes ``(N, L, E)``. Parameters have
    PyTorch's names, layouts and init, so PyTorch weights load as they are:

    - ``in_proj_weight`` ``(3E, E)`` (query, key, value rows) when ``kdim == vdim == E``;
      otherwise ``q_proj_weight`` ``(E, E)``, ``k_proj_weight`` ``(E, kdim)`` and
      ``v_proj_weight`` ``(E, vdim)`` (xavier-uniform);
    - ``in_proj_bias`` ``(3E,)`` and ``out_proj.bias`` (zeros) with ``bias=True``;
    - ``bias_k``/``bias_v`` ``(1, 1, E)`` (xavier-normal) with ``add_bias_kv=True``: one more
      key/value position appended after projection; ``add_zero_attn=True`` appends one more of
      zeros. Masks get a column (not masked) for each, as in PyTorch.

    The call follows PyTorch and returns ``(output, weights)``:

    - ``key_padding_mask`` ``(N, S)`` and ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)``
      are bool (True = may *not* attend) or float (added to the logits), as in PyTorch.
    - ``is_causal=True`` applies a causal mask (query i sees keys ``<= i``) on top of any
      ``attn_mask``; unlike PyTorch it needs no ``attn_mask`` to go with it. It masks the S
      real keys only: ``bias_k`` and the zero position stay visible, as with PyTorch's causal
      ``attn_mask`` (PyTorch's ``need_weights=False`` path hides them instead).
    - ``need_weights=True`` (PyTorch's default) also returns the attention weights ``(N, L, S)``,
      averaged over heads unless ``average_attn_weights=False`` (then ``(N, num_heads, L, S)``).
      ``need_weights=False`` returns ``(output, None)`` through ``jax.nn.dot_product_attention``,
      which lets JAX pick a fused kernel: use it whenever the weights are not needed.
    - Attention dropout (``dropout > 0`` in training mode) needs ``dropout_key=``; the name
      differs from other layers' ``key=`` because ``key`` is the key sequence here.

    Fully masked query rows give NaN, as in PyTorch.
    """

    in_proj_weight: Parameter | None
    q_proj_weight: Parameter | None
    k_proj_weight: Parameter | None
    v_proj_weight: Parameter | None
    in_proj_bias: Parameter | None
    bias_k: Parameter | None
    bias_v: Parameter | None
    out_proj: Linear
    embed_dim: int = field(static=True)
    num_heads: int = field(static=True)
    dropout: float = field(static=True)
    kdim: int = field(static=True)
    vdim: int = field(static=True)
    add_zero_attn: bool = field(static=True)
    batch_first: bool = field(static=True)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "MultiheadAttention")
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
        self.kdim = embed_dim if kdim is None else check_int("MultiheadAttention", "kdim", kdim, 1)
        self.vdim = embed_dim if vdim is None else check_int("MultiheadAttention", "vdim", vdim, 1)
        self.add_zero_attn = bool(add_zero_attn)
        self.batch_first = bool(batch_first)
        wkey, qkey, kkey, vkey, bkey, okey = jax.random.split(key, 6)
        xavier = lambda k, cols: Parameter(
            init.xavier_uniform(k, (embed_dim, cols), dtype), axes=WEIGHT_AXES
        )
        if self.kdim == self.vdim == embed_dim:
            self.in_proj_weight = Parameter(
                init.xavier_uniform(wkey, (3 * embed_dim, embed_dim), dtype), axes=WEIGHT_AXES
            )
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = xavier(qkey, embed_dim)
            self.k_proj_weight = xavier(kkey, self.kdim)
            self.v_proj_weight = xavier(vkey, self.vdim)
        self.in_proj_bias = (
            Parameter(init.zeros(None, (3 * embed_dim,), dtype), axes=OUT_AXES) if bias else None
        )
        if add_bias_kv:
            kb, vb = jax.random.split(bkey)
            axes = (None, None, *OUT_AXES)
            self.bias_k = Parameter(init.xavier_normal(kb, (1, 1, embed_dim), dtype), axes=axes)
            self.bias_v = Parameter(init.xavier_normal(vb, (1, 1, embed_dim), dtype), axes=axes)
        else:
            self.bias_k = self.bias_v = None
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
        """Projects ``(N, T, ·)`` with the query/key/value block ``index`` -> ``(N, H, T, D)``."""
        e = self.embed_dim
        if self.in_proj_weight is not None:
            w = self.in_proj_weight.value[index * e : (index + 1) * e]
        else:
            separate = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[index]
            assert separate is not None  # no in_proj_weight: the three separate ones are there
            w = separate.value
        y = x @ w.T
        if self.in_proj_bias is not None:
            y = y + self.in_proj_bias.value[index * e : (index + 1) * e]
        y = y.reshape(*y.shape[:2], self.num_heads, self.head_dim)
        return jnp.swapaxes(y, 1, 2)

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

    def _inputs(
        self, query: jax.Array, key: jax.Array, value: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Checks the three inputs' shapes and returns them batch-first."""
        e, kd, vd = self.embed_dim, self.kdim, self.vdim
        b, t = (0, 1) if self.batch_first else (1, 0)  # the batch axis and the sequence axis

        def shape(n: int | str, length: int | str, d: int) -> str:
            return f"({n}, {length}, {d})" if self.batch_first else f"({length}, {n}, {d})"

        query = check_input(self, query, f"{shape('N', 'L', e)} for query", (3,), {2: e})
        n = query.shape[b]
        key = check_input(self, key, f"{shape(n, 'S', kd)} for key", (3,), {b: n, 2: kd})
        s = key.shape[t]
        value = check_input(self, value, f"{shape(n, s, vd)} for value", (3,), {b: n, t: s, 2: vd})
        if not self.batch_first:
            query, key, value = (jnp.swapaxes(x, 0, 1) for x in (query, key, value))
        return query, key, value

    def _extra_positions(self, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``k``, ``v`` ``(N, H, S, D)`` with ``bias_k``/``bias_v`` and the zero position."""
        n, h, _, d = k.shape
        if self.bias_k is not None:
            assert self.bias_v is not None  # add_bias_kv makes both
            heads = lambda b: jnp.broadcast_to(b.reshape(1, h, 1, d), (n, h, 1, d))
            k = jnp.concatenate([k, heads(self.bias_k.value).astype(k.dtype)], axis=2)
            v = jnp.concatenate([v, heads(self.bias_v.value).astype(v.dtype)], axis=2)
        if self.add_zero_attn:
            k = jnp.concatenate([k, jnp.zeros((n, h, 1, d), k.dtype)], axis=2)
            v = jnp.concatenate([v, jnp.zeros((n, h, 1, d), v.dtype)], axis=2)
        return k, v

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
        query, key, value = self._inputs(query, key, value)
        (n, lq, _), s = query.shape, key.shape[1]
        use_dropout = self.training and self.dropout > 0
        if use_dropout and dropout_key is None:
            raise ValueError(
                f"{describe(self)} is in training mode with attention dropout and needs "
                "dropout_key=...; call `.eval()` for inference."
            )
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        keep, bias = self._masks(key_padding_mask, attn_mask, n, lq, s)
        extra = (self.bias_k is not None) + self.add_zero_attn
        if extra:
            if is_causal:  # the causal mask covers the S real keys; the extra ones stay visible
                keep = _merge(keep, jnp.tril(jnp.ones((lq, s), bool)), jnp.logical_and)
                is_causal = False
            k, v = self._extra_positions(k, v)
            keep, bias = _pad_last(keep, extra, True), _pad_last(bias, extra, 0.0)
        out, weights = attention_core(
            q,
            k,
            v,
            keep,
            bias,
            scale=1 / math.sqrt(self.head_dim),
            is_causal=is_causal,
            dropout_p=self.dropout if use_dropout else 0.0,
            dropout_key=dropout_key,
            need_weights=need_weights,
        )
        out = self.out_proj(jnp.swapaxes(out, 1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = jnp.swapaxes(out, 0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(axis=1)
        return out, weights
