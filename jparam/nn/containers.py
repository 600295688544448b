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

    A slice keeps each layer's original name, as PyTorch's does: ``seq[1:]`` of a four-layer
    ``seq`` names its layers ``1``, ``2``, ``3``, so a checkpoint of PyTorch's ``seq[1:]`` loads
    into it. The dropped positions stay in ``layers`` as ``None`` (they hold nothing and are
    skipped); ``len``, iteration and ``seq[i]`` count the layers that are there.

    ``seq(x, key=key)`` is the only extra argument: the key is split into one key for each layer
    that takes a keyword-only ``key`` (see `takes_key`), so dropout anywhere inside gets fresh
    randomness; other layers are called as ``layer(x)``. Stateful layers (BatchNorm) need nothing
    from the container: run the whole model through `nn.stateful_call`::

        model = nn.Sequential(nn.Linear(4, 8, key=k1), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(8, 2, key=k2))
        y = model(x, key=jax.random.key(3))
    """

    layers: tuple[Module | None, ...] = field(inline=True)

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                what = "a function" if callable(layer) else type(layer).__name__
                raise TypeError(
                    f"Sequential layer {i} is {what}, not a jp.Module; use the module form "
                    "(nn.ReLU() rather than jax.nn.relu) or wrap it in a small jp.Module."
                )
        self.layers = tuple(layers)

    def _named_layers(self) -> list[tuple[int, Module]]:
        """``(name, layer)`` for the layers that are there (a slice leaves ``None`` gaps)."""
        return [(i, layer) for i, layer in enumerate(self.layers) if layer is not None]

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> Any:
        """Runs the layers in order; ``key`` (optional) is shared out as described above."""
        named = self._named_layers()
        takers = [takes_key(layer) for _, layer in named]
        keys = iter(jax.random.split(key, sum(takers)) if key is not None else ())
        for (i, layer), wants_key in zip(named, takers):
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
        named = self._named_layers()
        if isinstance(index, slice):
            return self._slice(named, index)
        if not -len(named) <= index < len(named):
            raise IndexError(f"index {index} is out of range for a Sequential of {len(named)}")
        return named[index][1]

    def _slice(self, named: list[tuple[int, Module]], index: slice) -> Sequential:
        """A new `Sequential` with the chosen layers at their original positions (names)."""
        if index.step is not None and index.step < 0:
            raise ValueError(
                f"Sequential slices with a negative step ({index}) are not supported: layer "
                "names are positions, which cannot run backwards. Build the reversed model "
                "explicitly: nn.Sequential(*reversed(list(seq)))."
            )
        chosen = named[index]
        layers: list[Module | None] = [None] * (chosen[-1][0] + 1 if chosen else 0)
        for i, layer in chosen:
            layers[i] = layer
        return Sequential().replace(layers=tuple(layers), training=self.training)

    def __len__(self) -> int:
        return len(self._named_layers())

    def __iter__(self) -> Iterator[Module]:
        return (layer for _, layer in self._named_layers())
