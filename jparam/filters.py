"""Filters: predicates that pick parameters, buffers and arrays for `split`, `freeze` and optax.

A filter is any of:

- a `Filter` such as `jp.trainable`, `jp.frozen`, `jp.is_parameter`, `jp.is_buffer`;
- a string: a glob over names (``"encoder.*"``, ``"*.bias"``: ``*`` matches dots too, as in
  `jp.Mapping`); a glob also matches everything below a matching name, so ``"encoder"``
  selects the whole encoder;
- a type (``jp.Buffer``) or a one-argument callable (``lambda p: p.ndim == 2``);
- a list or tuple of filters (any of them).

Filters combine with ``&``, ``|`` and ``~``::

    model = nn.Sequential(nn.Linear(4, 4, key=jax.random.key(0)), nn.LayerNorm(4))
    params, rest = jp.split(model, jp.trainable & ~jp.name("*.bias"))
    assert list(params) == ["0.weight", "1.weight"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import numpy as np

from . import globs
from .parameter import Buffer, Parameter, Variable, intern_aux, rebuild_variable

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

#: Metadata key of a stacked Parameter whose layers are partly frozen: per-layer trainable flags.
LAYER_TRAINABLE = "layer_trainable"


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


def require_match(pattern: str, names: list[str], what: str) -> None:
    """A glob that selects none of ``names`` is almost always a typo: raise, listing some."""
    if not any(globs.matches(pattern, n) for n in names):
        sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"pattern {pattern!r} matches no {what}; {what}s are: {sample}")


def name(*patterns: str) -> Filter:
    """Selects nodes whose name matches any of the globs (``jp.name("*.bias", "*.norm*")``)."""
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"name patterns must be strings, got {p!r}")
    return Filter(
        lambda n, x: any(globs.matches(p, n) for p in patterns),
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


# -- per-layer names of stacked arrays ----------------------------------------------------------
# A module class that stores N layers as one layer with arrays stacked on a leading axis
# (`nn.Stacked`) defines ``_jp_stacked_layers(self) -> tuple[str, int]``: the field holding the
# stacked layer and N. Its arrays then also have per-layer names, the field's name replaced by
# the layer index (``h.layers.attn.w`` -> ``h.0.attn.w`` ... ``h.11.attn.w``), the names its
# `state_dict` uses. Freezing, parameter groups and NaN reports accept those names.
#
# A stacked Parameter whose layers are partly frozen is trainable (so it gets a gradient and
# optimizer state) and carries the per-layer flags as ``layer_trainable`` metadata: nested tuples
# of bools over its leading layer axes. The module applying the layers stops the gradient of the
# frozen rows and `jp.Optimizer` leaves them bit-identical. All-trainable and all-frozen stacks
# carry no such entry, so they are exactly the Parameters they were before.


class Layers(NamedTuple):
    """A stacked array's leading layer axes and its per-layer names (row-major over them).

    ``keys`` sort rows into `state_dict` order (layer by layer) among the walk's other
    variables, whose key is ``(position in the walk,)``.
    """

    shape: tuple[int, ...]
    names: tuple[str, ...]
    keys: tuple[tuple[int, ...], ...]


def _stacks_of(walked: Iterable[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], dict]:
    """The walk as a list, and ``{field path: (field name, N, position in the walk)}`` of each
    stacked module."""
    walked = list(walked)
    stacks = {}
    for pos, (name, node) in enumerate(walked):
        hook = getattr(type(node), "_jp_stacked_layers", None)
        if hook is not None and not isinstance(node, Variable):
            field, n = hook(node)
            stacks[f"{name}.{field}" if name else field] = (field, int(n), pos)
    return walked, stacks


def _per_layer(name: str, pos: int, stacks: dict) -> Layers | None:
    found = [(path, *stacks[path]) for path in stacks if name.startswith(path + ".")]
    if not found:
        return None
    found.sort(key=lambda f: len(f[0]))  # outer stacks first
    shape = tuple(n for _, _, n, _ in found)
    names, keys = [], []
    for index in np.ndindex(*shape):
        out = name
        for (path, field, _, _), i in reversed(list(zip(found, index))):
            start = len(path) - len(field)
            out = f"{out[:start]}{i}{out[len(path) :]}"
        names.append(out)
        keys.append((*(k for (*_, at), i in zip(found, index) for k in (at, i)), pos))
    return Layers(shape, tuple(names), tuple(keys))


def stacked_layers(walked: Iterable[tuple[str, Any]]) -> dict[str, Layers]:
    """``{stacked name: Layers}`` for each Parameter/Buffer under a stacked module.

    ``walked`` is a walk of the tree, ``(name, node)`` pairs (`jparam.paths.walk`); names of
    variables that are not stacked are absent.
    """
    walked, stacks = _stacks_of(walked)
    if not stacks:
        return {}
    out = {}
    for pos, (name, node) in enumerate(walked):
        if isinstance(node, Variable):
            layers = _per_layer(name, pos, stacks)
            if layers is not None:
                out[name] = layers
    return out


def layer_flags(p: Parameter, shape: tuple[int, ...]) -> np.ndarray:
    """``p``'s per-layer trainable flags, a bool array of the stack's ``shape``."""
    mask = p.metadata.get(LAYER_TRAINABLE)
    if mask is None:
        return np.full(shape, bool(p.trainable))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(
            f"{LAYER_TRAINABLE} metadata has shape {mask.shape}, the stack has layers {shape}"
        )
    return mask


def row_mask(p: Any) -> np.ndarray | None:
    """The per-layer trainable flags of a partly frozen stacked Parameter, else ``None``.

    ``p`` is a Parameter or its static metadata (``p.aux``).
    """
    meta = p.aux if isinstance(p, Variable) else p
    if meta is None or meta[0] is None:
        return None
    mask = dict(meta[1]).get(LAYER_TRAINABLE)
    return None if mask is None else np.asarray(mask, dtype=bool)


def _nested(mask: np.ndarray) -> Any:
    return tuple(_nested(m) for m in mask) if mask.ndim > 1 else tuple(bool(b) for b in mask)


def layer_meta(meta: tuple, mask: np.ndarray) -> tuple:
    """Parameter metadata ``meta`` with per-layer flags ``mask``: a plain flag when uniform."""
    rest = dict(meta[1])
    rest.pop(LAYER_TRAINABLE, None)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim and not mask.all() and mask.any():
        rest[LAYER_TRAINABLE] = _nested(mask)
        return intern_aux(True, rest)
    return intern_aux(bool(mask.all()), rest)


def with_layer_flags(p: Parameter, mask: np.ndarray) -> Parameter:
    """``p`` with per-layer trainable flags ``mask`` (uniform flags become the plain flag)."""
    meta = layer_meta(p.aux, mask)
    if meta is p.aux:
        return p
    if meta[0] and not p.trainable:
        p.replace(trainable=True)  # raises, naming the dtype, if p cannot be trainable
    return rebuild_variable(type(p), meta, p._value)


def set_layer_flags(
    p: Parameter, layers: Layers, flag: bool, patterns: tuple[str, ...]
) -> Parameter:
    """`freeze`/`unfreeze` of the layers of stacked ``p`` whose per-layer names match a glob.

    A glob on the stacked name itself (``h.layers.attn``) or matching every layer sets all
    of them; ``p`` is returned as it is when no layer matches.
    """
    hit = [any(globs.matches(pat, n) for pat in patterns) for n in layers.names]
    if not any(hit):
        return p
    mask = layer_flags(p, layers.shape).copy()
    mask[np.asarray(hit).reshape(layers.shape)] = flag
    return with_layer_flags(p, mask)


def layer_view(p: Any, layers: Layers, flat_index: int) -> Any:
    """An abstract per-layer copy of stacked ``p`` (shape, dtype, flag, metadata) for filters."""
    shape = tuple(p.shape)[len(layers.shape) :]
    value = jax.ShapeDtypeStruct(shape, p.dtype)
    if not isinstance(p, Parameter):
        return rebuild_variable(type(p), p.aux, value)
    flag = layer_flags(p, layers.shape).reshape(-1)[flat_index]
    return rebuild_variable(type(p), layer_meta(p.aux, np.asarray(flag)), value)


def trainable_size(p: Parameter) -> int:
    """How many of ``p``'s entries train: all, none, or the rows of its trainable layers."""
    mask = row_mask(p)
    if mask is None:
        return p.size if p.trainable else 0
    return p.size // mask.size * int(mask.sum())
