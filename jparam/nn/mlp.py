"""`MLP`: the multi-layer perceptron block of torchvision (``torchvision.ops.MLP``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from ..module import Module, field
from ._utils import require_key
from .activation import ReLU
from .containers import Sequential
from .dropout_layer import Dropout
from .linear import Linear

__all__ = ["MLP"]


class MLP(Sequential):
    """``Linear -> [norm] -> activation -> Dropout`` per hidden layer, then ``Linear -> Dropout``.

    The layout of ``torchvision.ops.MLP``: ``hidden_channels`` lists every layer's width, the
    last being the output size. It is a `Sequential`, so names are torchvision's
    (``0.weight``, ``3.weight`` ...) and ``mlp(x, key=key)`` feeds the dropout layers.

    ``norm_layer`` and ``activation_layer`` are callables returning a module (a class such as
    ``nn.LayerNorm``/``nn.GELU``, or a ``functools.partial``); ``norm_layer`` gets the width.
    Every Linear is initialised as PyTorch's, from ``key``::

        key, x = jax.random.key(0), jnp.ones((5, 4))
        mlp = nn.MLP(4, [8, 8, 2], activation_layer=nn.GELU, dropout=0.1, key=key)
        y = mlp(x, key=jax.random.key(1))      # training mode: dropout active
        assert y.shape == (5, 2)
    """

    in_channels: int = field(static=True)
    hidden_channels: tuple[int, ...] = field(static=True)

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Sequence[int],
        norm_layer: Callable[[int], Module] | None = None,
        activation_layer: Callable[[], Module] | None = ReLU,
        bias: bool = True,
        dropout: float = 0.0,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "MLP")
        hidden = tuple(hidden_channels)
        if not hidden:
            raise ValueError("MLP needs at least one entry in hidden_channels (the output size)")
        keys = jax.random.split(key, len(hidden))
        layers: list[Module] = []
        width = in_channels
        for i, (out, k) in enumerate(zip(hidden, keys)):
            layers.append(Linear(width, out, bias, key=k, dtype=dtype))
            if i < len(hidden) - 1:
                if norm_layer is not None:
                    layers.append(norm_layer(out))
                if activation_layer is not None:
                    layers.append(activation_layer())
            layers.append(Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.in_channels = in_channels
        self.hidden_channels = hidden
