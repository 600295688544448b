"""`Placeholder`: the protocol for nodes that stand where a Parameter or Buffer was.

Features above the core put placeholders into a model's tree: `jp.split` leaves a `Hole` where
it took a leaf out, `jp.tie` a `TiedTo` at a tied name. The core's walks know them only through
this protocol, never by class:

- a placeholder is a pytree node without children whose whole static part is its ``aux``
  attribute (hashable): it survives every flatten and unflatten, costs one comparison on a
  ``jax.jit`` cache lookup, and unflattens without running ``__init__``. Subclasses are
  registered with JAX when they are defined.
- ``named`` (class attribute): whether the walks that ask for placeholders
  (``paths.walk(..., placeholders=True)``) yield it under its name, in a Parameter's place.
  A tied name is named (``state_dict`` writes it); a split's hole is not.
- ``stands_for(name, params)``: the Parameter the placeholder at ``name`` stands for, given the
  walked ``{name: Parameter}``; ``None`` when it stands for none of them. This is how
  ``named_parameters(remove_duplicate=False)`` lists a tied name under its source's array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from jax import tree_util

__all__ = ["Placeholder"]


class Placeholder:
    """Base class of placeholder nodes; see the module docstring for the protocol."""

    __slots__ = ("aux",)
    aux: Any  # the whole static part (hashable); its layout is each subclass's own
    named: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

        def unflatten(aux: tuple, children: Iterable[Any]) -> Any:
            out = object.__new__(cls)
            out.aux = aux
            return out

        def flatten(node: Any) -> tuple[tuple, Any]:
            return (), node.aux

        tree_util.register_pytree_with_keys(cls, flatten, unflatten, flatten_func=flatten)

    def stands_for(self, name: str, params: Mapping[str, Any]) -> Any:
        """The Parameter that the placeholder at ``name`` stands for, or ``None``."""
        return None
