"""Filters: predicates that pick parameters, buffers and arrays for `split`, `freeze` and optax.

A filter is any of:

- a `Filter` such as `jp.trainable`, `jp.frozen`, `jp.is_parameter`, `jp.is_buffer`;
- a string: a glob over names (``"encoder.*"``, ``"*.bias"``); a glob also matches everything
  below a matching name, so ``"encoder"`` selects the whole encoder;
- a type (``jp.Buffer``) or a one-argument callable (``lambda p: p.ndim == 2``);
- a list or tuple of filters (any of them).

Filters combine with ``&``, ``|`` and ``~``::

    params, rest = jp.split(model, jp.trainable & ~jp.name("*.bias"))
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from .parameter import Buffer, Parameter

__all__ = [
    "Filter",
    "FilterLike",
    "as_filter",
    "frozen",
    "is_buffer",
    "is_parameter",
    "name",
    "trainable",
]


class Filter:
    """A predicate over ``(name, node)``; calling it with a node alone ignores names."""

    __slots__ = ("_fn", "_repr")

    def __init__(self, fn: Callable[[str, Any], bool], description: str) -> None:
        self._fn = fn
        self._repr = description

    def matches(self, name: str, node: Any) -> bool:
        """Whether ``node``, found at ``name``, is selected."""
        return bool(self._fn(name, node))

    def __call__(self, node: Any, name: str = "") -> bool:
        return self.matches(name, node)

    def __and__(self, other: FilterLike) -> Filter:
        o = as_filter(other)
        return Filter(lambda n, x: self._fn(n, x) and o._fn(n, x), f"({self!r} & {o!r})")

    def __or__(self, other: FilterLike) -> Filter:
        o = as_filter(other)
        return Filter(lambda n, x: self._fn(n, x) or o._fn(n, x), f"({self!r} | {o!r})")

    def __rand__(self, other: FilterLike) -> Filter:
        return as_filter(other) & self

    def __ror__(self, other: FilterLike) -> Filter:
        return as_filter(other) | self

    def __invert__(self) -> Filter:
        return Filter(lambda n, x: not self._fn(n, x), f"~{self!r}")

    def __repr__(self) -> str:
        return self._repr


FilterLike = Filter | str | type | Callable[[Any], bool] | list | tuple


def glob_matches(pattern: str, name: str) -> bool:
    """``fnmatch`` on a dotted name; a pattern also matches every name below a match."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def require_match(pattern: str, names: list[str], what: str) -> None:
    """A glob that selects none of ``names`` is almost always a typo: raise, listing some."""
    if not any(glob_matches(pattern, n) for n in names):
        sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"pattern {pattern!r} matches no {what}; {what}s are: {sample}")


def name(*patterns: str) -> Filter:
    """Selects nodes whose name matches any of the globs (``jp.name("*.bias", "*.norm*")``)."""
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"name patterns must be strings, got {p!r}")
    return Filter(
        lambda n, x: any(glob_matches(p, n) for p in patterns),
        f"name({', '.join(map(repr, patterns))})",
    )


def as_filter(spec: FilterLike) -> Filter:
    """Normalises any accepted filter form to a `Filter` (raises `TypeError` otherwise)."""
    if isinstance(spec, Filter):
        return spec
    if isinstance(spec, str):
        return name(spec)
    if isinstance(spec, type):
        return Filter(lambda n, x: isinstance(x, spec), spec.__name__)
    if isinstance(spec, (list, tuple)):
        parts = [as_filter(s) for s in spec]
        return Filter(
            lambda n, x: any(p._fn(n, x) for p in parts), f"any_of({', '.join(map(repr, parts))})"
        )
    if callable(spec):
        return Filter(lambda n, x: spec(x), getattr(spec, "__name__", repr(spec)))
    raise TypeError(
        f"a filter must be a jp.Filter, a name glob, a type, a callable or a list of those; "
        f"got {type(spec).__name__} {spec!r:.60}"
    )


is_parameter = Filter(lambda n, x: isinstance(x, Parameter), "is_parameter")
is_buffer = Filter(lambda n, x: isinstance(x, Buffer), "is_buffer")
trainable = Filter(lambda n, x: isinstance(x, Parameter) and x.trainable, "trainable")
frozen = Filter(lambda n, x: isinstance(x, Parameter) and not x.trainable, "frozen")
