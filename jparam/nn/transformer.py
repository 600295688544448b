"""PyTorch's transformer layers: ``nn.TransformerEncoderLayer`` ... ``nn.Transformer``.

Names, layouts, arguments and numerics are PyTorch's, so ``torch.nn.Transformer`` state_dicts
load as they are. Dropout takes jparam's ``key=`` in the call (split among the layer's dropouts
and its attention); in ``.eval()`` mode, or with ``dropout=0``, no key is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter
from ._utils import check_int, check_probability, describe, require_key
from .attention import MultiheadAttention
from .containers import ModuleList
from .dropout_layer import Dropout
from .linear import Linear
from .normalization import LayerNorm

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]

Activation = str | Callable[[jax.Array], jax.Array]
T = TypeVar("T")


def _activation(layer: str, activation: Activation) -> Activation:
    """PyTorch's ``activation`` argument: ``"relu"``, ``"gelu"`` or a callable."""
    if callable(activation) or activation in ("relu", "gelu"):
        return activation
    raise ValueError(f'{layer} activation must be "relu", "gelu" or a callable, got {activation!r}')


def _apply_activation(activation: Activation, x: jax.Array) -> jax.Array:
    if activation == "relu":
        return jax.nn.relu(x)
    if activation == "gelu":
        return jax.nn.gelu(x, approximate=False)  # PyTorch's F.gelu: the exact erf form
    return cast(Callable[[jax.Array], jax.Array], activation)(x)  # any other is a function


def _keys(
    layer: TransformerEncoderLayer | TransformerDecoderLayer, key: jax.Array | None, n: int
) -> list[jax.Array | None]:
    """``n`` keys for the dropouts in training mode; ``None``s when no dropout is active."""
    if not layer.training or layer.dropout_p == 0:
        return [None] * n
    if key is None:
        raise ValueError(
            f"{describe(layer)} is in training mode with dropout={layer.dropout_p} and needs a "
            "PRNG key: call it as layer(..., key=key), or call `.eval()` for inference."
        )
    return list(jax.random.split(key, n))


def _check_dims(layer: str, d_model: Any, nhead: Any, dim_feedforward: Any) -> tuple[int, int, int]:
    return (
        check_int(layer, "d_model", d_model, 1),
        check_int(layer, "nhead", nhead, 1),
        check_int(layer, "dim_feedforward", dim_feedforward, 1),
    )


def _build(
    layer: Module,
    attention: tuple[str, ...],
    d_model: Any,
    nhead: Any,
    dim_feedforward: Any,
    dropout: Any,
    activation: Activation,
    layer_norm_eps: float,
    batch_first: bool,
    norm_first: bool,
    bias: bool,
    key: jax.Array,
    dtype: DTypeLike,
) -> None:
    """Checks the arguments and builds the fields both transformer layers have, under PyTorch's
    names: the attention layers named in ``attention``, ``linear1``/``dropout``/``linear2``, and
    ``normI``/``dropoutI`` for each of the ``len(attention) + 1`` sublayers."""
    name = type(layer).__name__
    require_key(key, name)
    d_model, nhead, dim_feedforward = _check_dims(name, d_model, nhead, dim_feedforward)
    layer.dropout_p = check_probability(name, "dropout", dropout)
    layer.activation = _activation(name, activation)
    layer.norm_first = bool(norm_first)
    *attention_keys, k1, k2 = jax.random.split(key, len(attention) + 2)
    for field_name, k in zip(attention, attention_keys):
        attn = MultiheadAttention(
            d_model, nhead, dropout, bias, batch_first=batch_first, key=k, dtype=dtype
        )
        setattr(layer, field_name, attn)
    layer.linear1 = Linear(d_model, dim_feedforward, bias, key=k1, dtype=dtype)
    layer.dropout = Dropout(dropout)
    layer.linear2 = Linear(dim_feedforward, d_model, bias, key=k2, dtype=dtype)
    for i in range(1, len(attention) + 2):
        setattr(layer, f"norm{i}", LayerNorm(d_model, layer_norm_eps, bias=bias, dtype=dtype))
        setattr(layer, f"dropout{i}", Dropout(dropout))


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, PyTorch's ``nn.TransformerEncoderLayer``.

    Inputs are ``(S, N, E)`` (PyTorch's default) or ``(N, S, E)`` with ``batch_first=True``.
    ``norm_first=True`` normalises before each block (pre-norm) instead of after. Submodules:
    ``self_attn``, ``linear1``, ``dropout``, ``linear2``, ``norm1``, ``norm2``, ``dropout1``,
    ``dropout2``.
    """

    self_attn: MultiheadAttention
    linear1: Linear
    dropout: Dropout
    linear2: Linear
    norm1: LayerNorm
    norm2: LayerNorm
    dropout1: Dropout
    dropout2: Dropout
    norm_first: bool = field(static=True)
    activation: Activation = field(static=True)
    dropout_p: float = field(static=True)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        _build(
            self,
            ("self_attn",),
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            key,
            dtype,
        )

    def _feed_forward(self, x: jax.Array, k1: Any, k2: Any) -> jax.Array:
        h = self.dropout(_apply_activation(self.activation, self.linear1(x)), key=k1)
        return self.dropout2(self.linear2(h), key=k2)

    def __call__(
        self,
        src: jax.Array,
        src_mask: jax.Array | None = None,
        src_key_padding_mask: jax.Array | None = None,
        is_causal: bool = False,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes ``src``; masks as `MultiheadAttention`'s ``attn_mask``/``key_padding_mask``."""
        ka, k0, k1, k2 = _keys(self, key, 4)

        def attend(x: jax.Array) -> jax.Array:
            out, _ = self.self_attn(
                x,
                x,
                x,
                src_key_padding_mask,
                False,
                src_mask,
                is_causal=is_causal,
                dropout_key=ka,
            )
            return self.dropout1(out, key=k0)

        x = jnp.asarray(src)
        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + self._feed_forward(self.norm2(x), k1, k2)
        x = self.norm1(x + attend(x))
        return self.norm2(x + self._feed_forward(x, k1, k2))


class TransformerDecoderLayer(Module):
    """Self-attention, attention over ``memory``, then a feed-forward block: PyTorch's
    ``nn.TransformerDecoderLayer`` (submodules ``self_attn``, ``multihead_attn``, ``linear1``,
    ``dropout``, ``linear2``, ``norm1``-``norm3``, ``dropout1``-``dropout3``)."""

    self_attn: MultiheadAttention
    multihead_attn: MultiheadAttention
    linear1: Linear
    dropout: Dropout
    linear2: Linear
    norm1: LayerNorm
    norm2: LayerNorm
    norm3: LayerNorm
    dropout1: Dropout
    dropout2: Dropout
    dropout3: Dropout
    norm_first: bool = field(static=True)
    activation: Activation = field(static=True)
    dropout_p: float = field(static=True)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        _build(
            self,
            ("self_attn", "multihead_attn"),
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            key,
            dtype,
        )

    def __call__(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        tgt_mask: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
        tgt_key_padding_mask: jax.Array | None = None,
        memory_key_padding_mask: jax.Array | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Decodes ``tgt`` attending to ``memory`` (the encoder's output)."""
        ks, km, k0, k1, k2, k3 = _keys(self, key, 6)
        memory = jnp.asarray(memory)

        def self_block(x: jax.Array) -> jax.Array:
            out, _ = self.self_attn(
                x, x, x, tgt_key_padding_mask, False, tgt_mask,
                is_causal=tgt_is_causal, dropout_key=ks,
            )  # fmt: skip
            return self.dropout1(out, key=k0)

        def cross_block(x: jax.Array) -> jax.Array:
            out, _ = self.multihead_attn(
                x, memory, memory, memory_key_padding_mask, False, memory_mask,
                is_causal=memory_is_causal, dropout_key=km,
            )  # fmt: skip
            return self.dropout2(out, key=k1)

        def feed_forward(x: jax.Array) -> jax.Array:
            h = self.dropout(_apply_activation(self.activation, self.linear1(x)), key=k2)
            return self.dropout3(self.linear2(h), key=k3)

        x = jnp.asarray(tgt)
        if self.norm_first:
            x = x + self_block(self.norm1(x))
            x = x + cross_block(self.norm2(x))
            return x + feed_forward(self.norm3(x))
        x = self.norm1(x + self_block(x))
        x = self.norm2(x + cross_block(x))
        return self.norm3(x + feed_forward(x))


def _copies(layer: Module, num_layers: int, owner: str) -> ModuleList:
    """``num_layers`` independent copies of ``layer`` (PyTorch deep-copies it), untied."""
    num_layers = check_int(owner, "num_layers", num_layers, 1)
    if not isinstance(layer, Module):
        raise TypeError(f"{owner} expected a layer module, got {type(layer).__name__}")
    return ModuleList(jax.tree.map(jnp.copy, layer) for _ in range(num_layers))


def _split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


class TransformerEncoder(Module):
    """``num_layers`` copies of ``encoder_layer`` (``layers.0``, ``layers.1``, ...) and an
    optional final ``norm``, PyTorch's ``nn.TransformerEncoder``. The copies start equal, as
    PyTorch's deep copies do; they are separate parameters."""

    layers: ModuleList
    norm: Module | None
    num_layers: int = field(static=True)

    def __init__(
        self,
        encoder_layer: TransformerEncoderLayer,
        num_layers: int,
        norm: Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ) -> None:
        del enable_nested_tensor, mask_check  # PyTorch fast-path switches: nothing to switch
        self.layers = _copies(encoder_layer, num_layers, "TransformerEncoder")
        self.num_layers = len(self.layers)
        self.norm = norm

    def __call__(
        self,
        src: jax.Array,
        mask: jax.Array | None = None,
        src_key_padding_mask: jax.Array | None = None,
        is_causal: bool | None = None,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Runs ``src`` through every layer, then ``norm``."""
        x = src
        for layer, k in zip(self.layers, _split_key(key, self.num_layers)):
            x = layer(x, mask, src_key_padding_mask, bool(is_causal), key=k)
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(Module):
    """``num_layers`` copies of ``decoder_layer`` and an optional final ``norm``, PyTorch's
    ``nn.TransformerDecoder``."""

    layers: ModuleList
    norm: Module | None
    num_layers: int = field(static=True)

    def __init__(
        self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None
    ) -> None:
        self.layers = _copies(decoder_layer, num_layers, "TransformerDecoder")
        self.num_layers = len(self.layers)
        self.norm = norm

    def __call__(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        tgt_mask: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
        tgt_key_padding_mask: jax.Array | None = None,
        memory_key_padding_mask: jax.Array | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Runs ``tgt`` through every layer (each attending to ``memory``), then ``norm``."""
        x = tgt
        for layer, k in zip(self.layers, _split_key(key, self.num_layers)):
            x = layer(
                x, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                memory_key_padding_mask, bool(tgt_is_causal), memory_is_causal, key=k,
            )  # fmt: skip
        return x if self.norm is None else self.norm(x)


def _xavier_matrices(model: T, key: jax.Array) -> T:
    """Every parameter with two or more dimensions re-drawn xavier-uniform (PyTorch's
    ``Transformer._reset_parameters``)."""
    leaves, treedef = jax.tree.flatten(model, is_leaf=lambda x: isinstance(x, Parameter))
    keys = jax.random.split(key, len(leaves))
    new = [
        p.replace(init.xavier_uniform(k, p.value.shape, p.value.dtype))
        if isinstance(p, Parameter) and p.value.ndim > 1
        else p
        for p, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, new)


class Transformer(Module):
    """An encoder-decoder transformer, PyTorch's ``nn.Transformer``: ``encoder`` (``layers.*``
    and a final ``norm``) and ``decoder`` likewise. Matrices start xavier-uniform, as PyTorch's.
    """

    encoder: Module
    decoder: Module
    d_model: int = field(static=True)
    nhead: int = field(static=True)
    batch_first: bool = field(static=True)

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        custom_encoder: Module | None = None,
        custom_decoder: Module | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "Transformer")
        ke, kd, kx = jax.random.split(key, 3)
        args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps)
        flags: dict[str, Any] = dict(
            batch_first=batch_first, norm_first=norm_first, bias=bias, dtype=dtype
        )

        def norm() -> LayerNorm:
            return LayerNorm(d_model, layer_norm_eps, bias=bias, dtype=dtype)

        if custom_encoder is None:
            encoder_layer = TransformerEncoderLayer(*args, key=ke, **flags)
            custom_encoder = TransformerEncoder(encoder_layer, num_encoder_layers, norm())
        if custom_decoder is None:
            decoder_layer = TransformerDecoderLayer(*args, key=kd, **flags)
            custom_decoder = TransformerDecoder(decoder_layer, num_decoder_layers, norm())
        self.encoder = custom_encoder
        self.decoder = custom_decoder
        self.d_model, self.nhead, self.batch_first = d_model, nhead, bool(batch_first)
        self.encoder, self.decoder = _xavier_matrices((self.encoder, self.decoder), kx)

    def __call__(
        self,
        src: jax.Array,
        tgt: jax.Array,
        src_mask: jax.Array | None = None,
        tgt_mask: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
        src_key_padding_mask: jax.Array | None = None,
        tgt_key_padding_mask: jax.Array | None = None,
        memory_key_padding_mask: jax.Array | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes ``src`` and decodes ``tgt`` against it."""
        ke, kd = _split_key(key, 2)
        memory = self.encoder(src, src_mask, src_key_padding_mask, src_is_causal, key=ke)
        return self.decoder(
            tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
            memory_key_padding_mask, tgt_is_causal, memory_is_causal, key=kd,
        )  # fmt: skip

    @staticmethod
    def generate_square_subsequent_mask(sz: int, dtype: DTypeLike = jnp.float32) -> jax.Array:
        """PyTorch's causal float mask: ``-inf`` above the diagonal, ``0`` elsewhere."""
        return jnp.triu(jnp.full((sz, sz), -jnp.inf, dtype), 1)
