"""`Dropout` with an explicit PRNG key: randomness is an argument, never hidden state."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..module import Module, field
from ._utils import check_probability, describe

__all__ = ["Dropout", "dropout"]


def dropout(x: jax.Array, p: float, key: jax.Array) -> jax.Array:
    """Zeroes each element with probability ``p`` and scales the rest by ``1 / (1 - p)``.

    The expected value of every element is unchanged, so evaluation needs no rescaling.
    ``p == 1`` gives zeros.
    """
    x = jnp.asarray(x)
    if p == 0:
        return x
    if p == 1:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
    return jnp.where(keep, x / (1.0 - p), 0).astype(x.dtype)


class Dropout(Module):
    """Randomly zeroes elements in training mode, PyTorch's ``nn.Dropout``.

    Call it as ``drop(x, key=key)`` in training mode; it is the identity when ``training`` is
    False (``.eval()``) or ``p == 0``, and then needs no key. `Sequential` and `MLP` split their
    ``key`` among the layers that take one::

        drop, x = nn.Dropout(0.1), jnp.ones((5, 8))
        y = drop(x, key=jax.random.key(1))    # training mode (the default)
        y = drop.eval()(x)                    # identity
        assert (y == x).all()
    """

    p: float = field(static=True)

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability("Dropout", "p", p)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        if not self.training or self.p == 0:
            return x
        if key is None:
            raise ValueError(
                f"{describe(self)} is in training mode and needs a PRNG key: call it as "
                "layer(x, key=key) (Sequential/MLP take one key and split it), or call "
                "`.eval()` on the model for inference."
            )
        return dropout(x, self.p, key)
