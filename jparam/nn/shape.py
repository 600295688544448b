"""`Unflatten`: splits one axis into several, PyTorch's ``nn.Unflatten`` (``Flatten``'s inverse,
which lives with the pooling layers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..module import Module, field
from ._utils import describe

__all__ = ["Unflatten"]


def _is_int(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _sizes(unflattened_size: Any) -> tuple[int, ...]:
    """The target sizes as a tuple of ints (``-1`` at most once, inferred), or a clear error."""
    if not isinstance(unflattened_size, Sequence) or isinstance(unflattened_size, str):
        raise TypeError(
            f"Unflatten unflattened_size must be a tuple or list of ints, got {unflattened_size!r}"
        )
    if not all(_is_int(s) for s in unflattened_size):
        raise TypeError(
            f"Unflatten unflattened_size must be a tuple or list of ints, got {unflattened_size!r}"
        )
    sizes = tuple(int(s) for s in unflattened_size)
    if not sizes or any(s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(
            "Unflatten unflattened_size must be non-empty, of non-negative ints with at most one "
            f"-1 (inferred), got {unflattened_size!r}"
        )
    return sizes


class Unflatten(Module):
    """Splits axis ``dim`` into ``unflattened_size``, PyTorch's ``nn.Unflatten``::

        x = jnp.ones((2, 128))
        assert nn.Unflatten(1, (8, 4, 4))(x).shape == (2, 8, 4, 4)

    One entry may be ``-1``, inferred from the axis size; any other mismatch is an error.
    """

    dim: int = field(static=True)
    unflattened_size: tuple[int, ...] = field(static=True)

    def __init__(self, dim: int, unflattened_size: Sequence[int]) -> None:
        if not _is_int(dim):
            raise TypeError(f"Unflatten dim must be an int (an axis), got {dim!r}")
        self.dim = int(dim)
        self.unflattened_size = _sizes(unflattened_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Reshapes ``x``, splitting axis ``dim``."""
        x = jnp.asarray(x)
        if not -x.ndim <= self.dim < max(x.ndim, 1) or x.ndim == 0:
            raise ValueError(
                f"{describe(self)} cannot unflatten axis {self.dim} of input of shape "
                f"{tuple(x.shape)}"
            )
        axis = self.dim % x.ndim
        n, sizes = x.shape[axis], self.unflattened_size
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            fits, expected = known > 0 and n % known == 0, f"a multiple of {known}"
        else:
            fits, expected = n == known, str(known)
        if not fits:
            raise ValueError(
                f"{describe(self)} expected axis {self.dim} of size {expected}, got input of "
                f"shape {tuple(x.shape)}"
            )
        if -1 in sizes:
            sizes = tuple(n // known if s == -1 else s for s in sizes)
        return x.reshape(*x.shape[:axis], *sizes, *x.shape[axis + 1 :])
