"""Activations as modules, for `Sequential` and `MLP` (which hold modules, not functions).

Each wraps the matching ``jax.nn`` function; they have no parameters and take no key. In your
own ``__call__`` use ``jax.nn.relu`` etc. directly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..module import Module, field

__all__ = ["GELU", "Identity", "ReLU", "SiLU", "Sigmoid", "Softmax", "Tanh"]


class Identity(Module):
    """Returns its input; constructor arguments are accepted and ignored, as in PyTorch.

    Handy to switch a layer off without changing the module tree's shape elsewhere.
    """

    def __init__(self, /, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class ReLU(Module):
    """``max(x, 0)``."""

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


class Softmax(Module):
    """Softmax over axis ``dim``.

    ``dim`` is required: PyTorch's implicit choice when it is omitted is deprecated there and
    easy to get wrong.
    """

    dim: int = field(static=True)

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"Softmax dim must be an int, got {dim!r}")
        self.dim = dim

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(
                f"Softmax(dim={self.dim}) got input of shape {tuple(x.shape)}, which has no "
                f"axis {self.dim}"
            )
        return jax.nn.softmax(x, axis=self.dim)
