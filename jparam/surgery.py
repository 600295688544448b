"""Functional tree surgery by name: ``jp.at(model, "blocks.3.mlp").set(new_mlp)``.

Nothing is mutated: each call returns a new tree that shares every untouched part with the old
one. ``__init__`` is never re-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import jax
import numpy as np

from . import globs
from .conversion import convert_value
from .filters import (
    Filter,
    as_filter,
    require_match,
    set_layer_flags,
    stacked_layers,
    with_layer_flags,
)
from .modulebase import ModuleBase
from .parameter import Parameter, Variable, can_train
from .paths import get_at, map_variables, update_at, walk
from .placeholder import Placeholder

__all__ = ["at", "selected_names", "set_trainable"]

T = TypeVar("T")


def selected_names(tree: Any, where: str | Filter) -> list[str]:
    """The names selected by an exact name, a glob or a filter (raises if none)."""
    if isinstance(where, str) and not globs.has_wildcards(where):
        return [where]
    if isinstance(where, str):
        names = [n for n, _ in walk(tree) if n and globs.matches(where, n)]
        # Keep the outermost matches: setting "blocks.*" should not also visit its insides.
        names = [n for n in names if not any(n.startswith(m + ".") for m in names)]
    else:
        f = as_filter(where)
        names = [n for n, node in walk(tree) if n and f.matches(n, node)]
    if not names:
        raise KeyError(f"jp.at: {where!r} selects nothing in this {type(tree).__name__}")
    return list(dict.fromkeys(names))


_SET_HINT = (
    "; a raw array is a value update and keeps the parameter's shape and dtype kind. To change "
    "them, set a new jp.Parameter/jp.Buffer (e.g. `.set(jp.Parameter(x))` or "
    "`.apply(lambda p: p.astype(dtype))`)"
)


def _assign(old: Any, new: Any, name: str) -> Any:
    # A raw value assigned where a Parameter/Buffer was is a value update: it keeps the flag,
    # the metadata, the shape and the dtype (cast within its kind, as load_state_dict does).
    # None removes it (like PyTorch's ``module.bias = None``); a new Parameter replaces it.
    if isinstance(old, Variable) and new is not None and not isinstance(new, Variable):
        what = f"the value set at {name!r}"
        return old._with_value(convert_value(name, old, new, what=what, hint=_SET_HINT))
    if isinstance(new, (jax.Array, np.ndarray)):
        # A raw array where a tie or a module (a parametrized weight) was would silently drop
        # the tie or the constraint: say what was there and how to do what was meant.
        alias = _alias(name, old)
        if alias is not None:
            raise TypeError(
                f"{name!r} is {old.describe(name)} and holds no array of its own: set {alias!r} "
                f"instead (both names follow it), or set a jp.Parameter at {name!r} to give it "
                "its own array (jp.untie(model) does that for every tie)"
            )
        if isinstance(old, ModuleBase):
            inner = ", e.g. the raw value at '{name}.original'" if hasattr(old, "original") else ""
            raise TypeError(
                f"{name!r} holds a {type(old).__name__}, not a Parameter; setting a raw array "
                f"would replace the whole module. Set the array inside it{inner.format(name=name)}"
                f", or pass a jp.Parameter(...) to replace it on purpose"
            )
    return new


class _At(Generic[T]):
    __slots__ = ("_many", "_names", "_tree")

    def __init__(self, tree: T, names: list[str], many: bool) -> None:
        self._tree = tree
        self._names = names
        self._many = many

    def get(self) -> Any:
        """The selected node (a list of nodes when a glob or filter selected several)."""
        found = [get_at(self._tree, n) for n in self._names]
        return found if self._many else found[0]

    def apply(self, fn: Callable[[Any], Any]) -> T:
        """Returns a new tree with each selected node ``x`` replaced by ``fn(x)``."""
        tree = self._tree
        for n in self._names:

            def put(old: Any, n: str = n) -> Any:
                return _assign(old, fn(old), n)

            tree = update_at(tree, n, put)
        return tree

    def set(self, value: Any) -> T:
        """Returns a new tree with the selected node(s) replaced by ``value``.

        Setting a raw array where a Parameter or Buffer was updates its value: flag, metadata,
        shape and dtype stay. The shape must match exactly (never broadcast) and the dtype is
        cast within its kind (float64 -> float32), as `load_state_dict` does; another kind
        (int into float), a string or ``None``-like junk is an error naming the path. Setting a
        `jp.Parameter` replaces the parameter on purpose, so its shape and dtype may change
        (how a head is swapped); ``None`` removes it, like PyTorch's ``module.bias = None``.
        """
        return self.apply(lambda old: value)


def at(tree: T, where: str | Filter) -> _At[T]:
    """Selects part of ``tree`` by dotted name, glob or filter, for `set`, `apply` or `get`.

    ::

        block = lambda i: nn.ModuleDict({"attn": nn.Dropout(0.1),
                                         "mlp": nn.Linear(8, 8, key=jax.random.key(i))})
        model = nn.ModuleDict({"blocks": nn.ModuleList([block(i) for i in range(4)]),
                               "head": nn.Linear(8, 2, key=jax.random.key(4))})
        new_mlp = nn.Linear(8, 8, key=jax.random.key(5))

        model = jp.at(model, "blocks.3.mlp").set(new_mlp)
        model = jp.at(model, "head.weight").apply(lambda w: w * 0.1)
        model = jp.at(model, "blocks.*.attn").apply(lambda a: a.eval())
        assert not model["blocks"][0]["attn"].training
    """
    many = not isinstance(where, str) or globs.has_wildcards(where)
    return _At(tree, selected_names(tree, where), many)


def _alias(name: str, node: Any) -> str | None:
    """The name whose Parameter the placeholder at ``name`` is another name for (a tie)."""
    return node.alias_of(name) if isinstance(node, Placeholder) else None


def _check_unfreezable(patterns: tuple, walked: list, stacked: dict) -> None:
    """Refuses an `unfreeze` glob that selects only integer parameters (they cannot train)."""
    floating = []
    for n, node in walked:
        if _alias(n, node) is not None or (isinstance(node, Parameter) and can_train(node.dtype)):
            floating.append(n)
            floating.extend(stacked[n].names if n in stacked else ())
    for p in patterns:
        if not any(globs.matches(p, n) for n in floating):
            raise TypeError(
                f"unfreeze({p!r}) selects only integer parameters; only floating and complex "
                "parameters can be trainable (as in PyTorch). Cast them to a floating dtype "
                "first to train them, or leave them frozen."
            )


def set_trainable(tree: T, flag: bool, patterns: Iterable[str]) -> T:
    """`Module.freeze`/`unfreeze`: set the flag on parameters whose names match any glob."""
    patterns = tuple(patterns)
    # a tied name selects its source: both are one parameter
    names: list[str] = []
    aliases: dict[str, list[str]] = {}
    walked = list(walk(tree, placeholders=True))
    stacked = stacked_layers(walked)  # per-layer names of nn.Stacked arrays: "h.0.attn.w"
    for n, node in walked:
        if isinstance(node, Parameter):
            names.append(n)
            names.extend(stacked[n].names if n in stacked else ())
        elif (alias := _alias(n, node)) is not None:
            names.append(n)
            aliases.setdefault(alias, []).append(n)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"freeze/unfreeze take name globs (strings), got {p!r}")
        require_match(p, names, "parameter")
    if flag:
        _check_unfreezable(patterns, walked, stacked)

    def visit(name: str, x: Any) -> Any:
        if not isinstance(x, Parameter) or (flag and not can_train(x.dtype)):
            return x  # integer parameters stay frozen, as PyTorch refuses requires_grad on them
        layers = stacked.get(name)
        if layers is None and x.trainable == flag:
            return x
        known = (name, *aliases.get(name, ()))
        if patterns and not any(globs.matches(p, n) for p in patterns for n in known):
            # a stacked parameter: only the layers whose per-layer names match
            return x if layers is None else set_layer_flags(x, layers, flag, patterns)
        if layers is not None:  # all its layers
            return with_layer_flags(x, np.full(layers.shape, flag))
        return x.replace(trainable=flag)

    return map_variables(tree, visit)
