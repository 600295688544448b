"""Affine layers: `Linear` and `Bilinear`, with PyTorch's layouts and default initialisation."""

from __future__ import annotations

import math

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
    require_key,
    shape_error,
    torch_default_params,
)

__all__ = ["Bilinear", "Linear"]


class Linear(Module):
    """``y = x @ weight.T + bias`` over the last axis, PyTorch's ``nn.Linear``.

    ``weight`` is ``(out_features, in_features)`` as in PyTorch, so a PyTorch ``state_dict``
    loads unchanged. Default init is PyTorch's: U(-1/sqrt(in_features), 1/sqrt(in_features)) for
    weight and bias. Input ``(..., in_features)``, output ``(..., out_features)``::

        layer = nn.Linear(4, 2, key=jax.random.key(0))
        y = layer(jnp.ones((5, 4)))
        assert y.shape == (5, 2)
    """

    weight: Parameter
    bias: Parameter | None
    in_features: int = field(static=True)
    out_features: int = field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "Linear")
        self.in_features = check_int("Linear", "in_features", in_features, 0)
        self.out_features = check_int("Linear", "out_features", out_features, 0)
        self.weight, self.bias = torch_default_params(
            key, (self.out_features, self.in_features), bias, self.out_features, dtype, WEIGHT_AXES
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = check_input(self, x, f"(..., {self.in_features})", sizes={-1: self.in_features})
        y = x @ self.weight.value.T
        return y if self.bias is None else y + self.bias.value


class Bilinear(Module):
    """``y[..., o] = x1 @ weight[o] @ x2 + bias[o]``, PyTorch's ``nn.Bilinear``.

    ``weight`` is ``(out_features, in1_features, in2_features)``; weight and bias start
    U(-1/sqrt(in1_features), 1/sqrt(in1_features)) as in PyTorch. Inputs ``(..., in1_features)``
    and ``(..., in2_features)`` with the same leading axes.
    """

    weight: Parameter
    bias: Parameter | None
    in1_features: int = field(static=True)
    in2_features: int = field(static=True)
    out_features: int = field(static=True)

    def __init__(
        self,
        in1_features: int,
        in2_features: int,
        out_features: int,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "Bilinear")
        self.in1_features = check_int("Bilinear", "in1_features", in1_features, 1)
        self.in2_features = check_int("Bilinear", "in2_features", in2_features, 0)
        self.out_features = check_int("Bilinear", "out_features", out_features, 0)
        bound = 1 / math.sqrt(in1_features)
        wkey, bkey = jax.random.split(key)
        shape = (self.out_features, self.in1_features, self.in2_features)
        self.weight = Parameter(
            init.uniform(wkey, shape, dtype, -bound, bound), axes=(*WEIGHT_AXES, None)
        )
        self.bias = (
            Parameter(init.uniform(bkey, (out_features,), dtype, -bound, bound), axes=OUT_AXES)
            if bias
            else None
        )

    def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
        x1 = check_input(
            self, x1, f"(..., {self.in1_features}) for x1", sizes={-1: self.in1_features}
        )
        want = (*x1.shape[:-1], self.in2_features)
        if jnp.shape(x2) != want:
            raise shape_error(self, f"{want} for x2 (x1's leading axes)", x2)
        y = jnp.einsum("...i,oij,...j->...o", x1, self.weight.value, x2)
        return y if self.bias is None else y + self.bias.value
