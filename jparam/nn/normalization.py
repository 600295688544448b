"""Normalisation over features: `LayerNorm`, `RMSNorm`, `GroupNorm` and `LocalResponseNorm`
(PyTorch's semantics).

Statistics of float16/bfloat16 inputs are computed in float32 and the result is cast back, so
low-precision models normalise as accurately as PyTorch's fused kernels. These layers take no
PRNG key: their parameters start as ones (scale) and zeros (shift), as in PyTorch.
The batch and instance norms live in `jparam.nn.batchnorm` because they carry state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter
from ._utils import (
    affine,
    check_eps,
    check_input,
    check_int,
    compute_dtype,
    norm_axes,
    shape_error,
    standardize,
)

__all__ = ["GroupNorm", "LayerNorm", "LocalResponseNorm", "RMSNorm"]


def _shape_tuple(layer: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """``normalized_shape`` as a non-empty tuple of positive ints, or a clear error."""
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        shape: tuple[Any, ...] = (normalized_shape,)
    elif isinstance(normalized_shape, Sequence) and not isinstance(normalized_shape, str):
        shape = tuple(normalized_shape)
    else:
        shape = (normalized_shape,)  # reported as not an int below
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(
            f"{layer} normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}"
        )
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            f"{layer} normalized_shape must be a positive int or a non-empty tuple of positive "
            f"ints (the trailing axes to normalise), got {normalized_shape!r}"
        )
    return shape


def _ones(shape: tuple[int, ...], dtype: DTypeLike) -> Parameter:
    return Parameter(init.ones(None, shape, dtype), axes=norm_axes(len(shape)))


def _zeros(shape: tuple[int, ...], dtype: DTypeLike) -> Parameter:
    return Parameter(init.zeros(None, shape, dtype), axes=norm_axes(len(shape)))


def _check_trailing(layer: Module, x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    sizes = {i - len(shape): d for i, d in enumerate(shape)}
    return check_input(layer, x, f"(..., {', '.join(map(str, shape))})", sizes=sizes)


class LayerNorm(Module):
    """Normalises each sample over its trailing ``normalized_shape`` axes, PyTorch's LayerNorm.

    ``weight`` (ones) and ``bias`` (zeros) have ``normalized_shape``; ``elementwise_affine=False``
    drops both and ``bias=False`` drops the shift. The variance is the biased one, as in PyTorch.
    """

    weight: Parameter | None
    bias: Parameter | None
    normalized_shape: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)
    elementwise_affine: bool = field(static=True)

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        shape = _shape_tuple("LayerNorm", normalized_shape)
        self.normalized_shape = shape
        self.eps = check_eps("LayerNorm", eps)
        self.elementwise_affine = elementwise_affine
        self.weight = _ones(shape, dtype) if elementwise_affine else None
        self.bias = _zeros(shape, dtype) if elementwise_affine and bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` of shape ``(..., *normalized_shape)``; the output has x's dtype."""
        x = _check_trailing(self, x, self.normalized_shape)
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        y, _, _ = standardize(x, axes, self.eps)
        return affine(y, self.weight, self.bias).astype(x.dtype)


class RMSNorm(Module):
    """Scales each sample by the reciprocal root mean square of its trailing axes, PyTorch's
    ``nn.RMSNorm``: ``x / sqrt(mean(x**2) + eps) * weight``.

    Cheaper than LayerNorm (no mean, no shift), the norm of most recent transformers.
    ``eps=None`` uses the machine epsilon of the input's dtype, as in PyTorch.
    """

    weight: Parameter | None
    normalized_shape: tuple[int, ...] = field(static=True)
    eps: float | None = field(static=True)
    elementwise_affine: bool = field(static=True)

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        shape = _shape_tuple("RMSNorm", normalized_shape)
        self.normalized_shape = shape
        self.eps = None if eps is None else check_eps("RMSNorm", eps)
        self.elementwise_affine = elementwise_affine
        self.weight = _ones(shape, dtype) if elementwise_affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` of shape ``(..., *normalized_shape)``; the output has x's dtype."""
        x = _check_trailing(self, x, self.normalized_shape)
        eps = jnp.finfo(x.dtype).eps if self.eps is None else self.eps
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        xc = x.astype(compute_dtype(x.dtype))
        y = xc * jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=axes, keepdims=True) + eps)
        return affine(y, self.weight, None).astype(x.dtype)


class GroupNorm(Module):
    """Normalises ``(N, C, *)`` inputs over groups of ``C / num_groups`` channels (and all
    spatial positions), PyTorch's ``nn.GroupNorm``.

    Independent of the batch size, so it behaves the same in training and evaluation.
    ``weight``/``bias`` are per channel, ones and zeros; ``affine=False`` drops them.
    """

    weight: Parameter | None
    bias: Parameter | None
    num_groups: int = field(static=True)
    num_channels: int = field(static=True)
    eps: float = field(static=True)
    affine: bool = field(static=True)

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        num_groups = check_int("GroupNorm", "num_groups", num_groups, 1)
        num_channels = check_int("GroupNorm", "num_channels", num_channels, 1)
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm needs num_channels divisible by num_groups, got "
                f"num_channels={num_channels}, num_groups={num_groups}"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = check_eps("GroupNorm", eps)
        self.affine = affine
        self.weight = _ones((num_channels,), dtype) if affine else None
        self.bias = _zeros((num_channels,), dtype) if affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` of shape ``(N, num_channels, *)``; the output has x's dtype."""
        c, g = self.num_channels, self.num_groups
        x = check_input(self, x, f"(N, {c}, *)", sizes={1: c})
        grouped = x.reshape(x.shape[0], g, c // g, *x.shape[2:])
        y, _, _ = standardize(grouped, tuple(range(2, grouped.ndim)), self.eps)
        y = y.reshape(x.shape)
        y = affine(y, self.weight, self.bias, (c,) + (1,) * (x.ndim - 2))
        return y.astype(x.dtype)


def _check_number(layer: str, name: str, value: Any) -> float:
    """A real-number hyperparameter (not a bool, a string or an array), or a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer} {name} must be a number, got {value!r}")
    return float(value)


class LocalResponseNorm(Module):
    """Divides each value by a power of the mean square of its neighbours across channels,
    PyTorch's ``nn.LocalResponseNorm`` (AlexNet's normalisation): ``y[n, c] = x[n, c] / (k +
    alpha / size * sum(x[n, c'] ** 2 for c' near c)) ** beta``. The window covers ``size``
    channels (``size // 2`` before, ``(size - 1) // 2`` after, zeros beyond the edges). Inputs
    are ``(N, C, *)`` with at least one spatial axis::

        lrn = nn.LocalResponseNorm(size=3, alpha=0.1, beta=0.75, k=1.0)
        x = jnp.linspace(-2.0, 2.0, 40).reshape(2, 5, 4)            # (N, C, L)
        sq = jnp.pad(x**2, ((0, 0), (1, 1), (0, 0)))                 # 1 before, 1 after
        window = sum(sq[:, i : i + 5] for i in range(3))             # c - 1, c, c + 1
        assert jnp.allclose(lrn(x), x / (1.0 + 0.1 / 3 * window) ** 0.75, atol=1e-6)
    """

    size: int = field(static=True)
    alpha: float = field(static=True)
    beta: float = field(static=True)
    k: float = field(static=True)

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        self.size = check_int("LocalResponseNorm", "size", size, 1)
        self.alpha = _check_number("LocalResponseNorm", "alpha", alpha)
        self.beta = _check_number("LocalResponseNorm", "beta", beta)
        self.k = _check_number("LocalResponseNorm", "k", k)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` of shape ``(N, C, *)`` (3 or more axes); keeps x's dtype."""
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise shape_error(self, "(N, C, *) with 3 or more axes", x)
        if x.size == 0:
            return x
        xc = x.astype(compute_dtype(x.dtype))
        window = [1] * x.ndim
        window[1] = self.size
        padding = [(0, 0)] * x.ndim
        padding[1] = (self.size // 2, (self.size - 1) // 2)
        total = jax.lax.reduce_window(
            jnp.square(xc), 0.0, jax.lax.add, window, (1,) * x.ndim, padding
        )
        div = (total / self.size * self.alpha + self.k) ** self.beta
        return (xc / div).astype(x.dtype)
