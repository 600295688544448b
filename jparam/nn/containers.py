"""PyTorch's containers: `Sequential`, `ModuleList`, `ModuleDict`, `ParameterList`,
`ParameterDict`, with PyTorch's names, and the one place where a PRNG key is shared out.

Containers are immutable like every module: where PyTorch's ``append``, ``extend``, ``insert``
and ``update`` change a container in place, these return a NEW container (``blocks =
blocks.append(layer)``), and the mutating spellings that cannot return one (``seq[i] = layer``,
``del d[key]``, ``pop``) raise an error that says what to write instead.

Containers named by key (`ModuleDict`, `ParameterDict`, ``Sequential(OrderedDict(...))``) keep
one field per key, in the given order, so their names and ``state_dict`` order are PyTorch's
(JAX sorts the keys of a plain dict when it flattens one, which would lose that order). Each
set of keys gets its own subclass, created once and cached, whose fields are the keys.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import jax
import numpy as np

from ..module import Module, field
from ..parameter import Buffer, Parameter
from ..paths import join
from ..tying import tie, ties, untie
from ._utils import add_context, fields_subclass

__all__ = [
    "ModuleDict",
    "ModuleList",
    "ParameterDict",
    "ParameterList",
    "Sequential",
    "takes_key",
]

M = TypeVar("M", bound=Module)


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


# -- ties: one layer or Parameter at two places of a container ---------------------------------


def _untied(container: Module) -> Any:
    """``container`` with its ties resolved (`jp.untie`), for reading items.

    One layer at two places of a container is tied (the later name holds a placeholder). A
    called container resolves its ties before ``__call__``; a container that is read instead
    (``blocks[i]``, ``for block in blocks``) resolves them here, so each item works as a layer
    and, inside ``jax.grad``, both uses still feed the one source leaf.
    """
    cls = type(container)
    if cls in _PLAIN_CLASSES or "_jp_keys" in vars(cls):  # the classes made here hold no tie
        return container
    return untie(container) if ties(container) else container


def _retie(old: Module, new: M, rename: dict[str, str]) -> M:
    """``new`` (built from ``old``'s untied items) with ``old``'s ties whose two ends were
    kept, under their new names; ``rename`` maps an old item name to its new one."""
    for target, (source, transpose) in ties(old).items():
        t_head, _, t_rest = target.partition(".")
        s_head, _, s_rest = source.partition(".")
        if t_head in rename and s_head in rename:
            new_target, new_source = join(rename[t_head], t_rest), join(rename[s_head], s_rest)
            new = tie(new, new_target, new_source, transpose=transpose)
    return new


# -- containers named by key: one field per key ------------------------------------------------


def _check_key(base: type, key: Any) -> str:
    """``key`` after PyTorch's checks for a child name (``add_module``'s rules)."""
    what = base.__name__
    if not isinstance(key, str):
        raise TypeError(f"{what} keys must be strings (they are state_dict names), got {key!r}")
    if key == "" or "." in key:
        raise KeyError(
            f"{what} key {key!r} cannot be a name: it must be non-empty and contain no '.' "
            "(names join keys with '.'), as in PyTorch"
        )
    taken = any(key in vars(c) for c in base.__mro__)  # what an instance's attribute finds
    if taken or key in getattr(base, "__dataclass_fields__", {}):
        raise KeyError(
            f"{what} key {key!r} is already an attribute of {what} ({what}.{key}); choose "
            "another key, as PyTorch requires"
        )
    return key


def _pairs(items: Any, what: str, *, sort_plain_dicts: bool = False) -> list[tuple[Any, Any]]:
    """``(key, value)`` pairs from a mapping or an iterable of pairs, in the given order.

    ``sort_plain_dicts`` follows PyTorch's ``ParameterDict``: a mapping other than an
    ``OrderedDict`` (or a container of the same kind) is taken in sorted key order.
    """
    if items is None:
        return []
    if isinstance(items, (Mapping, _Keyed)):
        pairs = list(items.items())
        ordered = isinstance(items, (OrderedDict, _Keyed))
        return sorted(pairs, key=lambda kv: kv[0]) if sort_plain_dicts and not ordered else pairs
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{what} takes a mapping or an iterable of (key, value) pairs, got "
            f"{type(items).__name__}"
        )
    pairs = []
    for i, pair in enumerate(items):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{what} item {i} must be a (key, value) pair, got {pair!r:.60}")
        pairs.append(tuple(pair))
    return pairs


if TYPE_CHECKING:  # the mixins below are only ever mixed into a jp.Module
    _ContainerBase = Module
else:
    _ContainerBase = object


class _Keyed(_ContainerBase):
    """Dict behaviour for containers named by key (the keys are the subclass's fields)."""

    _jp_keys: ClassVar[tuple[str, ...]] = ()

    def _become(self, base: type, pairs: list[tuple[str, Any]]) -> None:
        """Inside ``__init__``: switches to the keyed subclass of ``base`` and sets the fields."""
        keys = tuple(_check_key(base, k) for k, _ in pairs)
        object.__setattr__(self, "__class__", fields_subclass(base, tuple(dict.fromkeys(keys))))
        for k, value in pairs:
            setattr(self, k, value)

    def _base(self) -> type:
        return getattr(type(self), "_jp_keyed_from", type(self))

    def __getitem__(self, key: str) -> Any:
        if key not in self._jp_keys:
            raise KeyError(
                f"{type(self).__name__} has no key {key!r}; keys are {list(self._jp_keys)}"
            )
        return _untied(self).__dict__[key]

    def __contains__(self, key: object) -> bool:
        return key in self._jp_keys

    def __len__(self) -> int:
        return len(self._jp_keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._jp_keys)

    def keys(self) -> tuple[str, ...]:
        """The keys, in order."""
        return self._jp_keys

    def values(self) -> list[Any]:
        """The values, in key order."""
        d = _untied(self).__dict__
        return [d[k] for k in self._jp_keys]

    def items(self) -> list[tuple[str, Any]]:
        """``(key, value)`` pairs, in key order."""
        d = _untied(self).__dict__
        return [(k, d[k]) for k in self._jp_keys]

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        return self[key] if key in self._jp_keys else default

    def update(self, items: Any) -> Any:
        """A NEW container with ``items`` added (existing keys keep their place), PyTorch's
        ``update`` without the mutation: write ``d = d.update({...})``."""
        new_items = _pairs(items, type(self).__name__)
        merged = dict(self.items())
        merged.update(new_items)
        new = self._base()(OrderedDict(merged)).replace(training=self.training)
        replaced = {k for k, _ in new_items}
        return _retie(self, new, {k: k for k in self._jp_keys if k not in replaced})

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(
            f"{type(self).__name__} is immutable: write `d = d.update({{{key!r}: value}})` for a "
            f"new container, or `model = jp.at(model, 'path.{key}').set(value)` inside a model."
        )

    def __delitem__(self, key: str) -> None:
        raise TypeError(
            f"{type(self).__name__} is immutable: build a new one without {key!r}, e.g. "
            f"`type(d)(OrderedDict((k, v) for k, v in d.items() if k != {key!r}))`."
        )

    def pop(self, key: str, *default: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} is immutable, so pop() cannot remove {key!r}: read it with "
            "`d[key]` and build a new container without it (see `del d[key]`'s message)."
        )

    def clear(self) -> None:
        raise TypeError(
            f"{type(self).__name__} is immutable: use an empty `{type(self).__name__}()` instead."
        )


# -- containers indexed by position ------------------------------------------------------------


def _position(index: Any, n: int, what: str) -> int:
    """``index`` as a position in ``range(n)`` (negative counts from the end), or raise."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{what} indices must be integers or slices, got {index!r}")
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of range for a {what} of {n}")
    return int(index) % n


class _Listed(_ContainerBase):
    """List behaviour for `ModuleList` and `ParameterList` (items in the inline ``entries``)."""

    entries: tuple[Any, ...]

    def __getitem__(self, index: int | slice) -> Any:
        entries = _untied(self).entries
        if isinstance(index, slice):  # PyTorch renumbers a slice of a list from 0
            kept = range(len(entries))[index]
            new = self._rebuilt([entries[i] for i in kept])
            return _retie(self, new, {str(i): str(j) for j, i in enumerate(kept)})
        return entries[_position(index, len(entries), type(self).__name__)]

    def _rebuilt(self, items: list[Any]) -> Any:
        return type(self)(items).replace(training=self.training)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Any]:
        return iter(_untied(self).entries)

    def __add__(self, other: Iterable[Any]) -> Any:
        """A NEW list with ``other``'s items appended (``blocks += more`` rebinds ``blocks``)."""
        return self.extend(other)

    def append(self, value: Any) -> Any:
        """A NEW list with ``value`` at the end: write ``blocks = blocks.append(layer)``."""
        return self.extend([value])

    def extend(self, values: Iterable[Any]) -> Any:
        """A NEW list with ``values`` at the end: write ``blocks = blocks.extend(layers)``."""
        new = self._rebuilt([*_untied(self).entries, *values])
        return _retie(self, new, {str(i): str(i) for i in range(len(self.entries))})

    def __setitem__(self, index: int, value: Any) -> None:
        raise TypeError(
            f"{type(self).__name__} is immutable: write `model = jp.at(model, 'path.{index}')"
            ".set(value)` for a changed copy, or build a new list."
        )

    def __delitem__(self, index: int | slice) -> None:
        raise TypeError(
            f"{type(self).__name__} is immutable: build a new one without the item, e.g. "
            "`ml[:i] + ml[i + 1:]`."
        )

    def pop(self, index: int = -1) -> Any:
        raise TypeError(
            f"{type(self).__name__} is immutable, so pop() cannot remove an item: read it with "
            "`ml[i]` and keep `ml[:i] + ml[i + 1:]`."
        )


def _module(value: Any, what: str) -> Module:
    if not isinstance(value, Module):
        kind = "a function" if callable(value) else type(value).__name__
        raise TypeError(
            f"{what} is {kind}, not a jp.Module; use the module form (nn.ReLU() rather than "
            "jax.nn.relu) or wrap it in a small jp.Module."
        )
    return value


def _parameter(value: Any, what: str) -> Parameter:
    """``value`` as a Parameter: arrays are wrapped, as PyTorch wraps tensors."""
    if isinstance(value, Parameter):
        return value
    if isinstance(value, Buffer) or not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{what} must be a jp.Parameter or an array (wrapped in a Parameter, as PyTorch "
            f"does), got {type(value).__name__}; keep buffers and other objects elsewhere."
        )
    return Parameter(value)


class ModuleList(_Listed, Module):
    """PyTorch's ``nn.ModuleList``: modules held in order, named ``0``, ``1``, ... .

    Indexing, ``len`` and iteration work as in PyTorch; a slice is a new `ModuleList` numbered
    from ``0`` (PyTorch's list slices renumber; `Sequential`'s keep their names). Not callable:
    loop over it in your module's ``__call__``. ``append``/``extend``/``insert`` and ``+``
    return a NEW list (modules are immutable): ``blocks = blocks.append(layer)``.
    """

    entries: tuple[Module, ...] = field(inline=True)

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        items = list(modules or ())
        self.entries = tuple(_module(m, f"ModuleList item {i}") for i, m in enumerate(items))

    def insert(self, index: int, module: Module) -> ModuleList:
        """A NEW list with ``module`` before position ``index`` (``list.insert``'s rule)."""
        items = list(_untied(self).entries)
        n = len(items)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"ModuleList.insert index must be an integer, got {index!r}")
        at = min(max(index + n if index < 0 else int(index), 0), n)  # list.insert's rule
        items.insert(at, module)
        new = self._rebuilt(items)
        return _retie(self, new, {str(i): str(i if i < at else i + 1) for i in range(n)})


class ParameterList(_Listed, Module):
    """PyTorch's ``nn.ParameterList``: Parameters named ``0``, ``1``, ... .

    Arrays are wrapped in `Parameter` as PyTorch wraps tensors. A slice is a new list numbered
    from ``0``, as in PyTorch; ``append``/``extend`` and ``+`` return a NEW list.
    """

    entries: tuple[Parameter, ...] = field(inline=True)

    def __init__(self, values: Iterable[Any] | None = None) -> None:
        items = list(values or ())
        self.entries = tuple(_parameter(v, f"ParameterList item {i}") for i, v in enumerate(items))


class ModuleDict(_Keyed, Module):
    """PyTorch's ``nn.ModuleDict``: modules named by key, in insertion order.

    Takes a mapping or ``(key, module)`` pairs; keys are PyTorch's child names (strings without
    ``.``, not an attribute of ``ModuleDict``), so ``d.state_dict()`` has the keys of a PyTorch
    ``ModuleDict`` built the same way, in the same order. ``d[key]``, ``d.key``, ``len``,
    iteration over keys, ``keys()``, ``values()``, ``items()`` work as in PyTorch; ``update``
    returns a NEW dict: ``d = d.update({"head": head})``. Not callable, as in PyTorch.
    """

    def __init__(self, modules: Any = None) -> None:
        pairs = _pairs(modules, "ModuleDict")
        self._become(ModuleDict, [(k, _module(m, f"ModuleDict[{k!r}]")) for k, m in pairs])


class ParameterDict(_Keyed, Module):
    """PyTorch's ``nn.ParameterDict``: Parameters named by key.

    Order is PyTorch's: an ``OrderedDict``, another ``ParameterDict`` or ``(key, value)`` pairs
    keep their order; a plain ``dict`` is taken in sorted key order, as PyTorch does. Arrays
    are wrapped in `Parameter`. ``update`` returns a NEW dict.
    """

    def __init__(self, parameters: Any = None) -> None:
        pairs = _pairs(parameters, "ParameterDict", sort_plain_dicts=True)
        self._become(ParameterDict, [(k, _parameter(v, f"ParameterDict[{k!r}]")) for k, v in pairs])


class Sequential(Module):
    """Calls its layers in order, each on the previous one's output, PyTorch's ``nn.Sequential``.

    The layers live in the inline ``layers`` field, so parameter names are PyTorch's:
    ``0.weight``, ``2.bias`` ..., and a PyTorch ``nn.Sequential`` ``state_dict`` loads as it is.
    Indexing, slicing (a new `Sequential`), ``len`` and iteration work as in PyTorch.

    ``nn.Sequential(OrderedDict([("conv1", conv), ("relu", nn.ReLU())]))`` keeps the given
    names, as PyTorch does: ``state_dict`` keys ``conv1.weight`` ..., ``seq.conv1`` reads a
    layer, and ``seq[0]`` still indexes by position (a plain ``dict`` works too).

    A slice keeps each layer's original name, as PyTorch's does: ``seq[1:]`` of a four-layer
    ``seq`` names its layers ``1``, ``2``, ``3``, so a checkpoint of PyTorch's ``seq[1:]`` loads
    into it. The dropped positions stay in ``layers`` as ``None`` (they hold nothing and are
    skipped); ``len``, iteration and ``seq[i]`` count the layers that are there.

    ``seq(x, key=key)`` is the only extra argument: the key is split into one key for each layer
    that takes a keyword-only ``key`` (see `takes_key`), so dropout anywhere inside gets fresh
    randomness; other layers are called as ``layer(x)``. Stateful layers (BatchNorm) need nothing
    from the container: run the whole model through `nn.stateful_call`::

        k1, k2, x = jax.random.key(1), jax.random.key(2), jnp.ones((5, 4))
        model = nn.Sequential(nn.Linear(4, 8, key=k1), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(8, 2, key=k2))
        y = model(x, key=jax.random.key(3))
        assert y.shape == (5, 2)
    """

    layers: tuple[Module | None, ...] = field(inline=True)
    _jp_keys: ClassVar[tuple[str, ...] | None] = None  # the names, when built from a mapping

    @overload
    def __init__(self, layers: Mapping[str, Module], /) -> None: ...
    @overload
    def __init__(self, *layers: Module) -> None: ...
    def __init__(self, *layers: Any) -> None:
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            self._named(_pairs(layers[0], "Sequential"))
            return
        for i, layer in enumerate(layers):
            _module(layer, f"Sequential layer {i}")
        self.layers = tuple(layers)

    def _named(self, pairs: list[tuple[str, Any]]) -> None:
        """Inside ``__init__``: one field per name (see `ModuleDict`), no positional layers."""
        pairs = [(k, _module(m, f"Sequential layer {k!r}")) for k, m in pairs]
        keys = tuple(_check_key(Sequential, k) for k, _ in pairs)
        if len(set(keys)) != len(keys):
            raise KeyError(f"Sequential names must be unique, got {list(keys)}")
        object.__setattr__(self, "__class__", fields_subclass(Sequential, keys))
        self.layers = ()
        for k, m in pairs:
            setattr(self, k, m)

    def _named_layers(self) -> list[tuple[str, Module]]:
        """``(name, layer)`` for the layers that are there (a slice leaves ``None`` gaps)."""
        if self._jp_keys is not None:
            return [(k, self.__dict__[k]) for k in self._jp_keys]
        return [(str(i), layer) for i, layer in enumerate(self.layers) if layer is not None]

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
        named = _untied(self)._named_layers()
        if isinstance(index, slice):
            return self._slice(named, index)
        return named[_position(index, len(named), "Sequential")][1]

    def _slice(self, named: list[tuple[str, Module]], index: slice) -> Sequential:
        """A new `Sequential` with the chosen layers under their original names."""
        if self._jp_keys is not None:
            chosen = named[index]
            new = Sequential(OrderedDict(chosen)).replace(training=self.training)
            return _retie(self, new, {k: k for k, _ in chosen})
        if index.step is not None and index.step < 0:
            raise ValueError(
                f"Sequential slices with a negative step ({index}) are not supported: layer "
                "names are positions, which cannot run backwards. Build the reversed model "
                "explicitly: nn.Sequential(*reversed(list(seq)))."
            )
        kept = [(int(i), layer) for i, layer in named[index]]
        layers: list[Module | None] = [None] * (kept[-1][0] + 1 if kept else 0)
        for i, layer in kept:
            layers[i] = layer
        new = Sequential().replace(layers=tuple(layers), training=self.training)
        return _retie(self, new, {str(i): str(i) for i, _ in kept})

    def __len__(self) -> int:
        return len(self._named_layers())

    def __iter__(self) -> Iterator[Module]:
        return (layer for _, layer in _untied(self)._named_layers())


_PLAIN_CLASSES = frozenset({ModuleList, ParameterList, Sequential})
