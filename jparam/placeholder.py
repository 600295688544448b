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

A named placeholder that is a second name for another name's Parameter (a tie) also says so,
and the features above the core ask it instead of testing for its class:

- ``alias_of(name)``: the full name of the Parameter it is another name for (``None`` if it is
  no alias). ``freeze``/``unfreeze`` select both names as one parameter, ``summary`` counts it
  once, and ``jp.at(...).set`` refuses a raw array there (it would silently undo the alias).
- ``describe(name)``: a few words for tables and messages, e.g. ``"tied to wte.weight"``.
- ``prepare_load(expected, placeholders, state, errors)`` (classmethod): given a checkpoint's
  ``{name: array}``, returns it with the entries at this class's placeholder names turned into
  entries under the names that hold arrays, as ``load_state_dict`` then loads them; problems
  go to ``errors``. The default leaves ``state`` as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from jax import tree_util

__all__ = ["Placeholder", "resolve_placeholders"]


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

    def alias_of(self, name: str) -> str | None:
        """The full name of the Parameter this name is another name for, or ``None``."""
        return None

    def describe(self, name: str) -> str:
        """A few words for tables and error messages."""
        return type(self).__name__

    @classmethod
    def prepare_load(
        cls,
        expected: Mapping[str, Any],
        placeholders: Mapping[str, Any],
        state: Any,
        errors: list[str],
    ) -> Any:
        """``state`` with its entries at ``placeholders``' names moved to the names that load.

        ``expected`` maps every saved name to what it stands for (placeholders resolved);
        ``placeholders`` holds this class's placeholders by name.
        """
        return state


def resolve_placeholders(entries: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """``{name: variable | placeholder}`` with each placeholder replaced by what it stands for.

    For ``state_dict`` and ``summary``: a placeholder that stands for nothing among ``entries``
    (a tie whose source is frozen in a gradient tree, or outside the rest of ``jp.split``) is
    left out.
    """
    if not any(isinstance(node, Placeholder) for node in entries.values()):
        return entries if isinstance(entries, OrderedDict) else OrderedDict(entries)
    out: OrderedDict[str, Any] = OrderedDict()
    for name, node in entries.items():
        if isinstance(node, Placeholder):
            node = node.stands_for(name, entries)
            if node is None:
                continue
        out[name] = node
    return out
