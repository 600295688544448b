"""Activations as modules, for `Sequential` and `MLP` (which hold modules, not functions).

Each is PyTorch's layer of the same name: the same constructor arguments and defaults, the same
values and the same gradients, including at the kinks (``Hardtanh``'s gradient at its bounds is
0, ``LeakyReLU``'s at 0 is the slope, ``Softplus`` switches to the identity where
``beta * x > threshold``). Hyperparameters are static fields; only `PReLU` has a parameter, and
none takes a key. ``inplace=`` is accepted where PyTorch has it and ignored: JAX arrays are
immutable and XLA reuses buffers by itself. In your own ``__call__`` use ``jax.nn.relu`` etc.
directly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from .. import init as _init
from ..module import Module, field
from ..parameter import Parameter
from ._utils import NORM_AXES, check_int

__all__ = [
    "CELU",
    "ELU",
    "GELU",
    "GLU",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "Identity",
    "LeakyReLU",
    "LogSoftmax",
    "Mish",
    "PReLU",
    "ReLU",
    "ReLU6",
    "SELU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softmin",
    "Softplus",
    "Tanh",
    "Threshold",
]

# SELU's constants, as PyTorch (and the paper) give them.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _number(layer: str, name: str, value: Any) -> float:
    """``value`` as a Python float (weakly typed: the input's dtype is kept), or an error.

    A NaN is refused too: it is a static field, and NaN != NaN would recompile on every call.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{layer} {name} must be a real number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{layer} {name} must be a real number, got {name}=nan")
    return float(value)


def _inplace(layer: str, inplace: Any) -> None:
    """Checks ``inplace`` (accepted for PyTorch compatibility, then ignored)."""
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(
            f"{layer} inplace must be a bool (it is accepted and ignored: JAX arrays are "
            f"immutable), got {inplace!r}"
        )


def _dim(layer: str, dim: Any) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{layer} dim must be an int, got {dim!r}")
    return int(dim)


class Identity(Module):
    """Returns its input; constructor arguments are accepted and ignored, as in PyTorch.

    Handy to switch a layer off without changing the module tree's shape elsewhere.
    """

    def __init__(self, /, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class ReLU(Module):
    """``max(x, 0)``; the gradient at 0 is 0, as in PyTorch."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("ReLU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class GELU(Module):
    """Gaussian error linear unit; ``approximate="tanh"`` uses the tanh approximation (GPT-2's)."""

    approximate: str = field(static=True, default="none")

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=self.approximate == "tanh")


class SiLU(Module):
    """``x * sigmoid(x)`` (also called swish)."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("SiLU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x)


class Sigmoid(Module):
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(x)


class LeakyReLU(Module):
    """``x`` where ``x > 0``, else ``negative_slope * x``; the gradient at 0 is the slope."""

    negative_slope: float = field(static=True)

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False) -> None:
        self.negative_slope = _number("LeakyReLU", "negative_slope", negative_slope)
        _inplace("LeakyReLU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x > 0, x, self.negative_slope * x)


class PReLU(Module):
    """`LeakyReLU` with a learned slope: ``x`` where ``x > 0``, else ``weight * x``.

    ``weight`` has shape ``(num_parameters,)`` and starts at ``init``, as in PyTorch. With one
    parameter the slope is shared by every element; with more, there is one per channel, and
    the channel axis is axis 1 of the input (``(N, C, ...)``), which must have
    ``num_parameters`` entries. PyTorch's docs advise against weight decay on the slopes:
    exclude ``*.weight`` of PReLU layers by name when building the optimizer.

    The count is read from ``weight``'s shape rather than stored, because ``num_parameters()``
    is `jp.Module`'s method (which returns the same number here).
    """

    weight: Parameter

    def __init__(
        self, num_parameters: int = 1, init: float = 0.25, *, dtype: DTypeLike = jnp.float32
    ) -> None:
        shape = (check_int("PReLU", "num_parameters", num_parameters, 1),)
        value = _number("PReLU", "init", init)
        self.weight = Parameter(_init.constant(None, shape, dtype, value), axes=NORM_AXES)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        weight = self.weight.value
        n = weight.shape[0]
        if n == 1:
            return jnp.where(x > 0, x, weight.reshape(()) * x)
        if x.ndim < 2 or x.shape[1] != n:
            raise ValueError(
                f"PReLU(num_parameters={n}) expected input of shape (N, {n}, ...) with the "
                f"channels on axis 1, got shape {tuple(x.shape)}"
            )
        return jnp.where(x > 0, x, weight.reshape((n,) + (1,) * (x.ndim - 2)) * x)


class ELU(Module):
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""

    alpha: float = field(static=True)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        self.alpha = _number("ELU", "alpha", alpha)
        _inplace("ELU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _elu(x, self.alpha)


def _elu(x: jax.Array, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> jax.Array:
    """PyTorch's shared ELU kernel: ``scale * x`` for ``x > 0``, else
    ``scale * alpha * (exp(input_scale * x) - 1)``. The negative branch sees only non-positive
    inputs, so a large ``x`` cannot overflow it and turn its (unused) gradient into NaN."""
    negative = jnp.where(x > 0, 0.0, x)
    return scale * jnp.where(x > 0, x, alpha * jnp.expm1(input_scale * negative))


class SELU(Module):
    """Self-normalising ELU: ``scale * ELU(x, alpha)`` with PyTorch's fixed constants."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("SELU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _elu(x, _SELU_ALPHA, _SELU_SCALE)


class CELU(Module):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``; ``alpha`` must not be 0."""

    alpha: float = field(static=True)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        self.alpha = _number("CELU", "alpha", alpha)
        if self.alpha == 0:
            raise ValueError("CELU alpha cannot be 0 (the input is divided by it)")
        _inplace("CELU", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _elu(x, self.alpha, input_scale=1 / self.alpha)


class Softplus(Module):
    """``log(1 + exp(beta * x)) / beta``, and ``x`` itself where ``beta * x > threshold``.

    The switch is PyTorch's (a strict ``>``), so values and gradients match on both sides of
    it. ``beta`` must not be 0.
    """

    beta: float = field(static=True)
    threshold: float = field(static=True)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta = _number("Softplus", "beta", beta)
        if self.beta == 0:
            raise ValueError("Softplus beta cannot be 0 (the output is divided by it)")
        self.threshold = _number("Softplus", "threshold", threshold)

    def __call__(self, x: jax.Array) -> jax.Array:
        z = x * self.beta
        linear = z > self.threshold
        soft = jnp.log1p(jnp.exp(jnp.where(linear, 0.0, z))) / self.beta
        return jnp.where(linear, x, soft)


class Mish(Module):
    """``x * tanh(softplus(x))``."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("Mish", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.mish(x)


class Hardswish(Module):
    """``x * relu6(x + 3) / 6``, with PyTorch's gradient at the kinks (0 at -3, 1 at 3)."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("Hardswish", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x <= -3, 0.0, jnp.where(x < 3, x * (x + 3) / 6, x))


class Hardsigmoid(Module):
    """``relu6(x + 3) / 6``; the gradient is 0 at -3 and 3, as in PyTorch."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("Hardsigmoid", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        inside = (x > -3) & (x < 3)
        return jnp.where(inside, x / 6 + 0.5, jnp.where(x <= -3, 0.0, 1.0))


def _hardtanh(x: jax.Array, low: float, high: float) -> jax.Array:
    """``clip(x, low, high)`` whose gradient is 0 at the bounds (``jnp.clip`` gives 0.5 there)."""
    return jnp.where(x <= low, low, jnp.where(x >= high, high, x))


class Hardtanh(Module):
    """``x`` clipped to ``[min_val, max_val]``; the gradient is 0 at and beyond the bounds.

    ``min_value``/``max_value`` are PyTorch's deprecated spellings, accepted with its warning.
    """

    min_val: float = field(static=True)
    max_val: float = field(static=True)

    def __init__(
        self,
        min_val: float = -1.0,
        max_val: float = 1.0,
        inplace: bool = False,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> None:
        for old, new, given in (
            ("min_value", "min_val", min_value),
            ("max_value", "max_val", max_value),
        ):
            if given is not None:
                warnings.warn(
                    f"Hardtanh keyword argument {old} is deprecated; use {new}",
                    FutureWarning,
                    stacklevel=2,
                )
        min_val = min_val if min_value is None else min_value
        max_val = max_val if max_value is None else max_value
        self.min_val = _number("Hardtanh", "min_val", min_val)
        self.max_val = _number("Hardtanh", "max_val", max_val)
        if not self.max_val > self.min_val:
            raise ValueError(
                f"Hardtanh max_val must be greater than min_val, got min_val={self.min_val}, "
                f"max_val={self.max_val}"
            )
        _inplace("Hardtanh", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _hardtanh(x, self.min_val, self.max_val)


class ReLU6(Module):
    """``min(max(x, 0), 6)``, PyTorch's ``Hardtanh(0, 6)``: the gradient is 0 at 0 and 6."""

    def __init__(self, inplace: bool = False) -> None:
        _inplace("ReLU6", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _hardtanh(x, 0.0, 6.0)


class Threshold(Module):
    """``x`` where ``x > threshold``, else ``value`` (both arguments required, as in PyTorch)."""

    threshold: float = field(static=True)
    value: float = field(static=True)

    def __init__(self, threshold: float, value: float, inplace: bool = False) -> None:
        self.threshold = _number("Threshold", "threshold", threshold)
        self.value = _number("Threshold", "value", value)
        _inplace("Threshold", inplace)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x > self.threshold, x, self.value)


class _AlongDim(Module):
    """An activation over one axis ``dim`` of its input, checked when called.

    ``dim`` is required (PyTorch's ``Softmax``/``LogSoftmax``/``Softmin`` guess it when
    omitted, a choice deprecated there and easy to get wrong).
    """

    dim: int = field(static=True)

    def __init__(self, dim: int) -> None:
        self.dim = _dim(type(self).__name__, dim)

    def _checked(self, x: Any) -> jax.Array:
        x = jnp.asarray(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(
                f"{type(self).__name__}(dim={self.dim}) got input of shape {tuple(x.shape)}, "
                f"which has no axis {self.dim}"
            )
        return x


class Softmax(_AlongDim):
    """Softmax over axis ``dim``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(self._checked(x), axis=self.dim)


class LogSoftmax(_AlongDim):
    """``log(softmax(x))`` over axis ``dim``, computed stably (pair it with NLL losses)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self._checked(x), axis=self.dim)


class Softmin(_AlongDim):
    """``softmax(-x)`` over axis ``dim``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(-self._checked(x), axis=self.dim)


class GLU(_AlongDim):
    """Gated linear unit: ``a * sigmoid(b)`` for the two halves ``a, b`` of axis ``dim``.

    The axis must have an even size; the output has half of it.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._checked(x)
        if x.shape[self.dim] % 2:
            raise ValueError(
                f"GLU(dim={self.dim}) halves axis {self.dim}, which must have an even size; got "
                f"input of shape {tuple(x.shape)}"
            )
        a, b = jnp.split(x, 2, axis=self.dim)
        return a * jax.nn.sigmoid(b)
