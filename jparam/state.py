"""`state_dict` and `load_state_dict`: a model's arrays by PyTorch name, and back.

``load_state_dict`` takes JAX arrays, NumPy arrays or anything with ``__array__`` (a PyTorch
``state_dict()`` passes as it is, bfloat16 included). It checks every entry before building the
new module and reports all problems in one error. Values are cast to the model's dtype within the
same kind (float64 -> float32, like PyTorch's ``copy_``); a kind change (float <-> int) or a
shape change is an error, never a silent cast or broadcast.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np
from jax import tree_util

from .conversion import abstract_errors, convert_or_report
from .mapping import as_mapping, torch_parametrization_names
from .parameter import Buffer, Variable
from .paths import get_at, map_variables, update_at, walk
from .placeholder import Placeholder, resolve_placeholders

__all__ = [
    "IncompatibleKeys",
    "StateDictError",
    "incompatible_keys",
    "load_state_dict",
    "state_dict",
]

T = TypeVar("T")


class IncompatibleKeys(NamedTuple):
    """The names `load_state_dict(..., strict=False)` skips, as PyTorch reports them; see
    `incompatible_keys`."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(ValueError):
    """Raised by `load_state_dict` with every problem found, one per line."""


def _persistent(node: Any) -> bool:
    return not isinstance(node, Buffer) or node.persistent


# -- state views: modules saved under other names than their fields -----------------------------
# The state-view protocol. A module class may store its arrays in one form and save them in
# another: `nn.Stacked` keeps N layers as one layer with stacked arrays and saves them under
# PyTorch's per-layer names. Such a class defines two methods:
#   ``state_view(self) -> Module``: a module whose names are the saved names;
#   ``from_state_view(self, view) -> Self``: ``self`` rebuilt from a (loaded) view, ``self``
#   giving everything static.
# `state_dict`, `load_state_dict` and `summary` go through views (outermost first: a view may
# hold modules with views of their own); `named_parameters`, `split` and gradients see the
# stored form.
_HAS_VIEW: dict[type, bool] = {}


def _has_view(node: Any) -> bool:
    cls = type(node)
    try:
        return _HAS_VIEW[cls]
    except KeyError:
        return _HAS_VIEW.setdefault(cls, callable(getattr(cls, "state_view", None)))


def _abstract(tree: Any) -> Any:
    return tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _replace_at(tree: Any, name: str, new: Any) -> Any:
    return new if name == "" else update_at(tree, name, lambda _: new)


def _with_views(tree: Any, names: list[str]) -> tuple[Any, list[tuple[str, Any]]]:
    """``tree`` with the module at each of ``names`` (outermost first, as `saved_variables`
    lists them) replaced by its state view; also each ``(name, owner)`` replaced."""
    owners = []
    for name in names:
        owner = get_at(tree, name) if name else tree
        owners.append((name, owner))
        tree = _replace_at(tree, name, owner.state_view())
    return tree, owners


def _from_views(tree: Any, owners: list[tuple[str, Any]]) -> Any:
    """The inverse of `_with_views`, innermost first: each owner rebuilt from its view."""
    for name, owner in reversed(owners):
        tree = _replace_at(tree, name, owner.from_state_view(get_at(tree, name) if name else tree))
    return tree


def saved_variables(
    tree: Any,
    prefix: str = "",
    views: list[str] | None = None,
    *,
    abstract: bool = False,
    all_buffers: bool = False,
) -> OrderedDict[str, Any]:
    """``{name: Parameter | Buffer | Placeholder}`` under saved names, in PyTorch's order.

    Placeholders are the named ones (a tie), which `resolve_placeholders` turns into what they
    stand for.

    A module with a state view is walked as its view (its name goes to ``views``); with
    ``abstract=True`` views are built from shapes and dtypes only (enough for `summary`), so no
    array is sliced or copied. Non-persistent buffers are left out unless ``all_buffers``.
    """
    found: OrderedDict[str, Any] = OrderedDict()
    skip = None  # the name (plus ".") of a module whose view was walked instead of its fields
    for name, node in walk(tree, prefix, placeholders=True):
        if skip is not None:
            if skip == "" or name.startswith(skip):
                continue
            skip = None
        if isinstance(node, Variable):
            if all_buffers or _persistent(node):
                _put(found, {name: node})
        elif isinstance(node, Placeholder):  # walk(placeholders=True) yields only named ones
            _put(found, {name: node})
        elif _has_view(node):
            if views is not None:
                views.append(name)
            view = (_abstract(node) if abstract else node).state_view()
            _put(
                found,
                saved_variables(view, name, views, abstract=abstract, all_buffers=all_buffers),
                f"{type(node).__name__} at {name or 'the root'} saves",
            )
            skip = f"{name}." if name else ""
    return found


def _put(found: dict[str, Any], new: Mapping[str, Any], who: str = "") -> None:
    """Adds ``new`` to ``found``; a name both already have is an error, never a merge."""
    clash = [k for k in new if k in found]
    if clash:
        raise ValueError(
            f"{who or 'the model has'} entries under names that other entries already have: "
            f"{clash}; a state view's saved names and the other names of the model "
            "must differ. Rename one of them"
        )
    found.update(new)


def _entries(
    tree: Any, prefix: str = "", views: list[str] | None = None
) -> OrderedDict[str, Variable]:
    # A tied name gets its source's value, as in PyTorch.
    return resolve_placeholders(saved_variables(tree, prefix, views))


def state_dict(tree: Any, prefix: str = "", keep_vars: bool = False) -> OrderedDict[str, Any]:
    """Ordered ``name -> array`` of every parameter and persistent buffer in ``tree``.

    Keys and order are PyTorch's; a parameter used in two places appears under both names.
    ``keep_vars=True`` returns the Parameter/Buffer objects instead of their arrays.
    """
    # PyTorch's spelling ends the prefix with a dot (``prefix="model."``); join it only once.
    entries = _entries(tree, prefix[:-1] if prefix.endswith(".") else prefix)
    if keep_vars:
        return entries
    return OrderedDict((name, node.value) for name, node in entries.items())


def _key_errors(keys: IncompatibleKeys) -> list[str]:
    return [f"missing key: {n}" for n in keys.missing_keys] + [
        f"unexpected key: {k}" for k in keys.unexpected_keys
    ]


def match_state(
    expected: Mapping[str, Any],
    state: Mapping[str, Any],
    strict: bool,
    what: str,
    errors: Sequence[str] = (),
) -> tuple[dict[str, Any], IncompatibleKeys]:
    """Checks ``state`` against ``expected`` (name -> anything with shape and dtype).

    Returns the converted arrays by name and the missing/unexpected keys, or raises one
    `StateDictError` listing every problem (``errors``: ones found before, reported with them).
    Shared by modules, optimizers and checkpoints.
    """
    _require_mapping(state)
    keys = IncompatibleKeys(
        [n for n in expected if n not in state], [k for k in state if k not in expected]
    )
    errors = list(errors)
    values: dict[str, Any] = {}
    for name, target in expected.items():
        if name in state:
            value = convert_or_report(name, target, state[name], errors)
            if value is not None:
                values[name] = value
    if strict:
        errors = _key_errors(keys) + errors
    if errors:
        raise StateDictError(
            f"{len(errors)} error(s) loading state_dict into {what}:\n  " + "\n  ".join(errors)
        )
    return values, keys


def _require_mapping(state: Any) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must map names to arrays, got {type(state).__name__}")


class _Resolved(NamedTuple):
    """A state dict's names resolved against a model, as `load_state_dict` loads them."""

    state: Mapping[str, Any]  # after the mapping and PyTorch's parametrization names
    expected: OrderedDict[str, Variable]  # every saved name (a tied one: its source's node)
    placeholders: dict[str, Placeholder]  # saved names that hold no array of their own
    views: list[str]  # modules saved through a state view, outermost first
    keys: IncompatibleKeys  # what a non-strict load skips


def _resolve(tree: Any, state: Any, mapping: Any) -> _Resolved:
    """The one name resolution behind `load_state_dict` and `incompatible_keys`."""
    mapping = as_mapping(mapping)
    if mapping is not None:
        state = mapping(state)
    _require_mapping(state)
    views: list[str] = []
    found = saved_variables(tree, "", views)
    expected = resolve_placeholders(found)
    state = torch_parametrization_names(state, expected)
    placeholders = {n: node for n, node in found.items() if isinstance(node, Placeholder)}
    aliases = {n: node.alias_of(n) for n, node in placeholders.items()}
    # An alias (a tied name) may come with its source, alone (standing in for the source), or
    # not at all; it is missing when its source is.
    given = set(state) | {s for a, s in aliases.items() if a in state and s is not None}
    missing = [n for n in expected if n not in placeholders and n not in given]
    missing += [a for a, s in aliases.items() if s in missing]
    keys = IncompatibleKeys(missing, [k for k in state if k not in expected])
    return _Resolved(state, expected, placeholders, views, keys)


def incompatible_keys(
    tree: Any, state: Mapping[str, Any], *, mapping: Any = None
) -> IncompatibleKeys:
    """The names ``load_state_dict(tree, state, strict=False, mapping=mapping)`` skips.

    ``(missing_keys, unexpected_keys)``, as PyTorch's ``load_state_dict(strict=False)`` reports
    them, resolved exactly as the load resolves them (the mapping, tied weights, state views
    such as `nn.Stacked`'s per-layer names, PyTorch's parametrization names). Nothing is
    loaded or converted. The PyTorch habit becomes::

        model = nn.Linear(3, 2, key=jax.random.key(0))
        sd = {"weight": np.ones((2, 3), np.float32), "extra": np.zeros(1)}
        missing, unexpected = jp.incompatible_keys(model, sd)
        model = model.load_state_dict(sd, strict=False)
        assert (missing, unexpected) == (["bias"], ["extra"])
    """
    return _resolve(tree, state, mapping).keys


def load_state_dict(
    tree: T, state: Mapping[str, Any], strict: bool = True, *, mapping: Any = None
) -> T:
    """Returns a copy of ``tree`` with the arrays of ``state`` put in by name.

    ``strict=True`` raises `StateDictError` listing every missing key, unexpected key, shape
    and dtype-kind mismatch. ``strict=False`` skips missing and unexpected names (shape and kind
    mismatches still raise, as in PyTorch) and returns the new tree all the same; ask
    `incompatible_keys` which names it skips (PyTorch's ``missing, unexpected =
    model.load_state_dict(sd, strict=False)`` becomes ``missing, unexpected =
    jp.incompatible_keys(model, sd)`` and ``model = model.load_state_dict(sd, strict=False)``).
    ``mapping`` (a `jp.Mapping` or a list of `jp.mapping` rules) turns the checkpoint's names
    and layouts into the model's first. PyTorch's parametrization names
    (``parametrizations.weight.original0``) load into `jp.parametrize`'s by themselves.
    """
    r = _resolve(tree, state, mapping)
    errors = (_key_errors(r.keys) if strict else []) + abstract_errors(r.expected, r.state)
    state = r.state
    for kind in dict.fromkeys(type(node) for node in r.placeholders.values()):
        own = {n: node for n, node in r.placeholders.items() if type(node) is kind}
        state = kind.prepare_load(r.expected, own, state, errors)
    plain = OrderedDict((n, v) for n, v in r.expected.items() if n not in r.placeholders)
    values, _ = match_state(plain, state, False, type(tree).__name__, errors)
    viewed, owners = _with_views(tree, r.views)  # modules that save under other names
    new = _from_views(
        map_variables(viewed, lambda n, v: v.replace(values[n]) if n in values else v), owners
    )
    if any(not isinstance(v, jax.ShapeDtypeStruct) for v in values.values()):
        _check_no_abstract_leftovers(new)
    return new


def _check_no_abstract_leftovers(tree: Any) -> None:
    """Refuses a real load that leaves a non-persistent Buffer abstract: no checkpoint holds
    one, so a model built with ``jax.eval_shape`` would keep a shape without numbers there and
    fail at its first call with an error about a ``ShapeDtypeStruct``."""
    left = [
        name
        for name, node in walk(tree)
        if isinstance(node, Buffer)
        and not node.persistent
        and isinstance(node.value, jax.ShapeDtypeStruct)
    ]
    if left:
        raise StateDictError(
            f"{', '.join(left)}: non-persistent jp.Buffer(s) of an abstract model (built with "
            "jax.eval_shape) stay without values, since no state_dict holds them. Fill them "
            'before loading, e.g. `model = jp.at(model, "name").set(jp.Buffer(values, '
            "persistent=False))`, compute them from static fields inside __call__, or build "
            "the model for real instead of with jax.eval_shape."
        )
