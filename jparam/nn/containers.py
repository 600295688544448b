"""`Sequential`: layers applied in order, and the one place where a PRNG key is shared out."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import Any, overload

import jax

from ..module import Module, field
from ._utils import add_context

__all__ = ["Sequential", "takes_key"]


@functools.cache
def _call_takes_key(cls: type) -> bool:
    try:
        params = inspect.signature(cls.__call__).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("key")
    return p is not None and p.kind is inspect.Parameter.KEYWORD_ONLY


def takes_key(layer: Module) -> bool:
    """Whether ``layer(x, key=...)`` is how the layer wants randomness: its ``__call__`` has a
    keyword-only ``key`` parameter (`Dropout`, `Sequential`, `MLP`, your own modules)."""
    return _call_takes_key(type(layer))


class Sequential(Module):
    """Calls its layers in order, each on the previous one's output, PyTorch's ``nn.Sequential``.

    The layers live in the inline ``layers`` field, so parameter names are PyTorch's:
    ``0.weight``, ``2.bias`` ..., and a PyTorch ``nn.Sequential`` ``state_dict`` loads as it is.
    Indexing, slicing (a new `Sequential`), ``len`` and iteration work as in PyTorch.

    ``seq(x, key=key)`` is the only extra argument: the key is split into one key for each layer
    that takes a keyword-only ``key`` (see `takes_key`), so dropout anywhere inside gets fresh
    randomness; other layers are called as ``layer(x)``. Stateful layers (BatchNorm) need nothing
    from the container: run the whole model through `nn.stateful_call`::

        model = nn.Sequential(nn.Linear(4, 8, key=k1), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(8, 2, key=k2))
        y = model(x, key=jax.random.key(3))
    """

    layers: tuple[Module, ...] = field(inline=True)

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                what = "a function" if callable(layer) else type(layer).__name__
                raise TypeError(
                    f"Sequential layer {i} is {what}, not a jp.Module; use the module form "
                    "(nn.ReLU() rather than jax.nn.relu) or wrap it in a small jp.Module."
                )
        self.layers = tuple(layers)

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> Any:
        """Runs the layers in order; ``key`` (optional) is shared out as described above."""
        takers = [takes_key(layer) for layer in self.layers]
        keys = iter(jax.random.split(key, sum(takers)) if key is not None else ())
        for i, (layer, wants_key) in enumerate(zip(self.layers, takers)):
            try:
                x = layer(x, key=next(keys)) if wants_key and key is not None else layer(x)
            except Exception as e:  # say where in the container it failed, then re-raise
                add_context(e, f"(in layer {i} of {type(self).__name__}: {type(layer).__name__})")
                raise
        return x

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Module | Sequential:
        if isinstance(index, slice):
            return Sequential(*self.layers[index]).replace(training=self.training)
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)
