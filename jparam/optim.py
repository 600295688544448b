"""Optimizers: `Optimizer`, a small pytree over optax, and PyTorch-style parameter groups.

Plain optax works on ``jp.split(model, jp.trainable)`` as it is. `Optimizer` is the shorter
route: it keeps optax state for the trainable parameters only, keyed by parameter name (so it
survives saving and loading by name) and stored as flat dicts (so a jitted step flattens it as
cheaply as a dict of arrays). `mask`, `weight_decay_mask`, `labels`, `scale_by_metadata` and
`scale_by_name` build parameter groups from names and metadata; each returns a function of the
params tree, so the same transformation serves plain optax (a model-shaped tree) and
`Optimizer` (a dict keyed by name). The guide is ``docs/guides/optimizers.md``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax.numpy as jnp
import numpy as np
import optax
from jax import tree_util

from .conversion import abstract_errors, dtype_kind
from .filters import (
    Filter,
    FilterLike,
    Layers,
    as_filter,
    is_parameter,
    layer_flags,
    layer_view,
    require_match,
    row_mask,
    stacked_layers,
    trainable,
)
from .parameter import Parameter, Variable, dtype_shape
from .partition import Hole, merge, split
from .paths import map_variables, named_parameters, path_name, walk
from .state import match_state

__all__ = [
    "Optimizer",
    "labels",
    "mask",
    "scale_by_metadata",
    "scale_by_name",
    "weight_decay_mask",
]

M = TypeVar("M")


class _Spec(NamedTuple):
    """A recorded shape and dtype, for messages (`dtype_shape` reads ``.shape``/``.dtype``)."""

    shape: tuple
    dtype: Any


def _trainable(model: Any) -> list[tuple[str, Parameter]]:
    return [(n, p) for n, p in named_parameters(model) if p.trainable]


class Optimizer:
    """An optax transformation and its state for a model's trainable parameters.

    ``Optimizer(tx, model)`` initialises ``tx`` on ``params`` of
    ``params, rest = jp.split(model, jp.trainable)``, a ``{name: array}`` dict, so the state is
    keyed by parameter name. ``opt.update(model, grads)`` returns ``(new_model, new_opt)``;
    frozen parameters, buffers and plain arrays are never touched. The transformation and the
    names, shapes and dtypes are static (in the treedef); the state is the only dynamic part.
    Freezing or unfreezing parameters changes the names, and replacing a parameter (a new head
    via ``jp.at(...).set(jp.Parameter(...))``, ``model.half()``) changes a shape or dtype:
    `update` refuses the model then; build a new `Optimizer` for it.
    """

    __slots__ = ("names", "specs", "state", "tx")

    def __init__(self, tx: optax.GradientTransformation, model: Any) -> None:
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise TypeError(
                f"Optimizer expects an optax GradientTransformation (e.g. optax.adam(1e-3)), "
                f"got {type(tx).__name__}"
            )
        params, _ = split(model, trainable)
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters; unfreeze some first"
            )
        self.tx = tx
        self.names = tuple(params)
        self.specs = tuple((tuple(v.shape), v.dtype) for v in params.values())
        self.state = tx.init(params)

    def _split(self, model: Any) -> tuple[dict[str, Any], Any]:
        params, rest = split(model, trainable)
        if tuple(params) != self.names:
            missing = [n for n in self.names if n not in params]
            extra = [n for n in params if n not in self.names]
            got = "" if params else f" (got a {type(model).__name__} without any)"
            raise ValueError(
                "the model's trainable parameters differ from the ones this Optimizer was "
                f"built for{got} (missing: {missing or 'none'}; new: {extra or 'none'}); after "
                "freeze/unfreeze build a new jp.Optimizer(tx, model)"
            )
        changed = [
            f"{name!r} is {dtype_shape(params[name])}, was {dtype_shape(_Spec(*spec))}"
            for name, spec in zip(self.names, self.specs)
            if (tuple(params[name].shape), params[name].dtype) != spec
        ]
        if changed:
            raise ValueError(
                "the model's parameters changed shape or dtype since this Optimizer was built "
                f"({'; '.join(changed)}); its state no longer fits them. Build a new "
                "jp.Optimizer(tx, model) for the changed model (then opt.load_state_dict(...) "
                "to restore saved state that fits)"
            )
        return params, rest

    def _grads(self, grads: Any, params: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any]
        if isinstance(grads, Mapping):
            found = {k: getattr(v, "value", v) for k, v in grads.items()}
        else:
            found, _ = split(grads, is_parameter)
        out, errors = {}, []
        for name in self.names:
            if found.get(name) is None:
                errors.append(f"no gradient for trainable parameter {name!r}")
                continue
            g, p = found[name], params[name]
            if not (hasattr(g, "shape") and hasattr(g, "dtype")):
                errors.append(
                    f"gradient for {name!r} is a {type(g).__name__}, not an array "
                    f"({dtype_shape(p)} like the parameter)"
                )
            elif tuple(g.shape) != tuple(p.shape):
                errors.append(
                    f"gradient for {name!r} has shape {tuple(g.shape)}, "
                    f"the parameter has {tuple(p.shape)}"
                )
            elif dtype_kind(g.dtype) != dtype_kind(p.dtype):
                errors.append(
                    f"gradient for {name!r} is {dtype_shape(g)}, the parameter is "
                    f"{dtype_shape(p)} (a gradient has the parameter's dtype kind)"
                )
            out[name] = g
        if not found:
            errors.insert(0, f"grads is a {type(grads).__name__} holding no gradient at all")
        if errors:
            raise ValueError(
                "Optimizer.update got gradients that do not fit the model "
                "(compute them with jp.grad(loss_fn)(model, ...)):\n  " + "\n  ".join(errors)
            )
        return out

    def update(self, model: M, grads: Any, /, **extra_args: Any) -> tuple[M, Optimizer]:
        """Applies one optimizer step: returns ``(new_model, new_optimizer)``.

        ``grads`` is what `jp.grad` returns (or any tree with Parameters at the same names, or a
        ``{name: array}`` dict). ``extra_args`` go to ``tx.update`` (e.g. ``value=loss`` for
        ``optax.contrib.reduce_on_plateau``); a ``value_fn`` taking the model is adapted to
        the name-keyed parameters optax sees, and ``grad`` is converted like ``grads``.
        """
        params, rest = self._split(model)
        g = self._grads(grads, params)
        if "value_fn" in extra_args:
            value_fn = extra_args["value_fn"]
            extra_args["value_fn"] = lambda p: value_fn(merge(p, rest))
        if "grad" in extra_args:
            extra_args["grad"] = self._grads(extra_args["grad"], params)
        updates, state = self.tx.update(g, self.state, params, **extra_args)
        new_params = _keep_frozen_layers(params, optax.apply_updates(params, updates), rest)
        return merge(new_params, rest), self._with_state(state)

    def _with_state(self, state: Any) -> Optimizer:
        return _unflatten_optimizer((self.tx, self.names, self.specs), (state,))

    def state_dict(self) -> OrderedDict[str, Any]:
        """Optimizer state by name, e.g. ``"0.mu.fc.weight"`` (optax's state path + name)."""
        flat, _ = tree_util.tree_flatten_with_path(self.state)
        return OrderedDict((path_name(path), leaf) for path, leaf in flat)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Optimizer:
        """Returns a copy whose state comes from ``state_dict`` (as `state_dict` wrote it)."""
        flat, treedef = tree_util.tree_flatten_with_path(self.state)
        expected = OrderedDict((path_name(path), leaf) for path, leaf in flat)
        errors = abstract_errors(expected, state_dict)
        values, _ = match_state(expected, state_dict, strict, "Optimizer", errors)
        leaves = [values.get(name, leaf) for name, leaf in expected.items()]
        return self._with_state(tree_util.tree_unflatten(treedef, leaves))

    def __repr__(self) -> str:
        return f"Optimizer({len(self.names)} trainable parameters, tx={self.tx!r:.60})"


def _flatten_optimizer(o: Optimizer) -> tuple[tuple, tuple]:
    return (o.state,), (o.tx, o.names, o.specs)


def _flatten_optimizer_with_keys(o: Optimizer) -> tuple[tuple, tuple]:
    return ((tree_util.GetAttrKey("state"), o.state),), (o.tx, o.names, o.specs)


def _unflatten_optimizer(aux: tuple, children: Iterable[Any]) -> Optimizer:
    out = object.__new__(Optimizer)
    out.tx, out.names, out.specs = aux
    (out.state,) = children
    return out


tree_util.register_pytree_with_keys(
    Optimizer,
    _flatten_optimizer_with_keys,
    _unflatten_optimizer,
    flatten_func=_flatten_optimizer,
)


# -- parameter groups --------------------------------------------------------------------------


class _ByName:
    """A function of a params tree that maps each named leaf to a precomputed value.

    Works on a model-shaped tree (Parameter positions) and on a ``{name: array}`` dict alike,
    so one optax transformation serves both training patterns.
    """

    __slots__ = ("_describe", "_values")

    def __init__(self, values: dict[str, Any], describe: str) -> None:
        self._values = values
        self._describe = describe

    def __call__(self, tree: Any) -> Any:
        def lookup(name: str, _: Any) -> Any:
            try:
                return self._values[name]
            except KeyError:
                raise KeyError(
                    f"{self._describe}: {name!r} is not a trainable parameter of the model "
                    "this was built from"
                ) from None

        return map_variables(tree, lookup, arrays=True)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __repr__(self) -> str:
        return f"{self._describe}({self._values})"


def _check_patterns(spec: Any, names: list[str]) -> None:
    for s in spec if isinstance(spec, (list, tuple)) else [spec]:
        if isinstance(s, str):
            require_match(s, names, "trainable parameter")


# -- per-layer names: the layers of nn.Stacked arrays ----------------------------------------
class _Entry(NamedTuple):
    """A trainable parameter, with its layers when it is stacked (`nn.Stacked`)."""

    name: str
    param: Parameter
    layers: Layers | None


def _entries(model: Any) -> list[_Entry]:
    stacked = stacked_layers(walk(model))
    return [_Entry(n, p, stacked.get(n)) for n, p in _trainable(model)]


def _all_names(entries: list[_Entry]) -> list[str]:
    """Trainable names, and the per-layer names of stacked ones, for typo checks."""
    return [n for e in entries for n in (e.name, *(e.layers.names if e.layers else ()))]


def _views(e: _Entry, trainable_only: bool = True) -> list[tuple[tuple[str, ...], Any]]:
    """``(names, parameter)`` per layer of ``e`` (just ``e`` when it is not stacked): a layer
    answers to the stacked name and to its own, and filters see its own shape and flag."""
    if e.layers is None:
        return [((e.name,), e.param)]
    flags = layer_flags(e.param, e.layers.shape).reshape(-1)
    return [
        ((e.name, n), layer_view(e.param, e.layers, i))
        for i, n in enumerate(e.layers.names)
        if flags[i] or not trainable_only
    ]


def _matches(f: Filter, names: tuple[str, ...], p: Any) -> bool:
    return any(f.matches(n, p) for n in names)


def _one_value(what: str, e: _Entry, values: list[Any]) -> Any:
    """The value every trainable layer of ``e`` got, or an error naming the layers that differ.

    optax masks and labels are per array, and one stacked array holds all its layers.
    """
    if all(v == values[0] for v in values):
        return values[0]
    names = [ns[-1] for ns, _ in _views(e)]
    groups: dict[Any, list[str]] = {}
    for n, v in zip(names, values):
        groups.setdefault(v, []).append(n)
    found = "; ".join(f"{v!r} for {', '.join(ns)}" for v, ns in groups.items())
    raise ValueError(
        f"{what}: the layers of stacked parameter {e.name!r} (an nn.Stacked) would get "
        f"different values ({found}), but an optax mask or label covers a whole array. Select "
        f"all or none of its trainable layers (e.g. {e.name!r}); freeze the layers that should "
        "not train (model.freeze(\"h.[0-5]\") freezes layers 0-5 of a stack at 'h'), or scale "
        'updates per layer with jp.optim.scale_by_name(model, {"h.[0-5].*": 0.1})'
    )


def _per_layer(what: str, e: _Entry, fn: Any) -> Any:
    return _one_value(what, e, [fn(names, p) for names, p in _views(e)])


def mask(
    model: Any, include: FilterLike | None = None, exclude: FilterLike | None = None
) -> _ByName:
    """A mask for ``optax.masked`` / ``mask=`` arguments: ``True`` where a transform applies.

    Selects trainable parameters matching ``include`` (default: all) and not ``exclude``;
    filters are name globs, `jp.Filter` objects or predicates on the Parameter::

        model = nn.ModuleDict({"fc": nn.Linear(4, 4, key=jax.random.key(0)),
                               "norm": nn.LayerNorm(4)})
        tx = optax.adamw(1e-3, mask=jp.optim.mask(model, exclude=["*.bias", "*norm*"]))
        opt = jp.Optimizer(tx, model)

    An `nn.Stacked` array's layers answer to their per-layer names (``h.3.attn.w``) and
    predicates see one layer (its shape, its flag). A mask covers a whole array: a filter that
    selects some of a stack's trainable layers and not others raises, naming them (frozen
    layers never move, so they do not count).
    """
    entries = _entries(model)
    inc = None if include is None else as_filter(include)
    exc = None if exclude is None else as_filter(exclude)
    for spec in (include, exclude):
        if spec is not None:
            _check_patterns(spec, _all_names(entries))

    def selected(names: tuple[str, ...], p: Any) -> bool:
        return (inc is None or _matches(inc, names, p)) and not (
            exc is not None and _matches(exc, names, p)
        )

    return _ByName({e.name: _per_layer("mask", e, selected) for e in entries}, "mask")


def weight_decay_mask(model: Any, exclude: FilterLike | None = None, min_ndim: int = 2) -> _ByName:
    """The usual weight-decay mask: decay matrices and kernels, not biases and norm scales.

    A parameter is decayed when its ``weight_decay`` metadata says so
    (``Parameter(w, weight_decay=False)``), else when it has at least ``min_ndim`` dimensions,
    and it does not match ``exclude``. Learned tokens are not 1-D: mark a ViT's cls token and
    position embedding ``weight_decay=False`` (or pass ``exclude=["cls_token", "pos_embed"]``).
    An `nn.Stacked` array counts one layer's dimensions (a stacked bias is still a bias), and
    per-layer names work as in `mask`.
    """
    entries = _entries(model)
    if exclude is not None:
        _check_patterns(exclude, _all_names(entries))
    exc = None if exclude is None else as_filter(exclude)

    def decayed(names: tuple[str, ...], p: Any) -> bool:
        return bool(p.metadata.get("weight_decay", p.ndim >= min_ndim)) and not (
            exc is not None and _matches(exc, names, p)
        )

    values = {e.name: _per_layer("weight_decay_mask", e, decayed) for e in entries}
    return _ByName(values, "weight_decay_mask")


def labels(model: Any, rules: Mapping[FilterLike, Hashable]) -> _ByName:
    """Labels for ``optax.multi_transform``: the first rule whose filter matches wins.

    ``rules`` maps filters (name globs, `jp.Filter` objects) to labels, in order. A parameter
    that no rule matches is an error, never a silent default: end with ``"*": "default"`` if
    you want one. A ``group`` metadata entry (``Parameter(w, group="slow")``) overrides the rules.
    Per-layer names of `nn.Stacked` arrays work as in `mask`; a label covers a whole array, so
    rules that give a stack's trainable layers different labels raise (for per-layer learning
    rates use `scale_by_name`).
    """
    entries = _entries(model)
    compiled = [(as_filter(spec), label) for spec, label in rules.items()]
    values, unmatched = {}, []

    def label_of(names: tuple[str, ...], p: Any) -> Any:
        if "group" in p.metadata:
            return p.metadata["group"]
        return next((lab for f, lab in compiled if _matches(f, names, p)), _NO_LABEL)

    for e in entries:
        found = [(names[-1], label_of(names, p)) for names, p in _views(e)]
        missing = [n for n, lab in found if lab is _NO_LABEL]
        unmatched.extend(missing if len(missing) < len(found) else [e.name])
        if not missing:
            values[e.name] = _one_value("labels", e, [lab for _, lab in found])
    if unmatched:
        raise ValueError(
            f"no rule labels these trainable parameters: {', '.join(unmatched)}; add a rule "
            '(e.g. "*": "default") or freeze them'
        )
    return _ByName(values, "labels")


_NO_LABEL = object()


def _scaled(by_name: _ByName) -> optax.GradientTransformation:
    """Multiplies each update by its name's factor: a number, or one per layer of a stack."""

    def init_fn(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        def scale(name: str, u: Any) -> Any:
            s = by_name[name]
            if isinstance(s, float) and s == 1.0:
                return u
            value = u.value if isinstance(u, Variable) else u
            if isinstance(s, np.ndarray):  # per layer: rows of a stacked array
                s = jnp.asarray(s, value.dtype).reshape(s.shape + (1,) * (value.ndim - s.ndim))
            return u._with_value(value * s) if isinstance(u, Variable) else value * s

        return map_variables(updates, scale, arrays=True), state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_metadata(
    model: Any, key: str = "lr_scale", default: float = 1.0
) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its ``key`` metadata (PyTorch's per-group lr).

    Chain it after the optimizer: ``optax.chain(optax.adam(1e-3), scale_by_metadata(model))``
    gives ``Parameter(w, lr_scale=0.1)`` a ten times smaller step. (The layers of an
    `nn.Stacked` share their metadata; scale them per layer with `scale_by_name`.)
    """
    scales = {n: float(p.metadata.get(key, default)) for n, p in _trainable(model)}
    return _scaled(_ByName(scales, f"scale_by_metadata({key!r})"))


def scale_by_name(
    model: Any, rules: Mapping[FilterLike, float], default: float = 1.0
) -> optax.GradientTransformation:
    """Multiplies updates by the first rule that matches: per-layer learning rates by name.

    ``rules`` maps filters (name globs, `jp.Filter` objects) to factors, in order; parameters
    no rule matches keep ``default``. Unlike masks and labels it works per layer of an
    `nn.Stacked` array (its rows are scaled by their per-layer names), so layer-wise learning
    rates fit a scanned model::

        h = nn.Stacked(lambda k: nn.Linear(8, 8, key=k), 24, key=jax.random.key(0))
        model = nn.ModuleDict({"h": h, "head": nn.Linear(8, 2, key=jax.random.key(1))})

        tx = optax.chain(
            optax.adamw(1e-3),
            jp.optim.scale_by_name(model, {"h.[0-5].*": 0.1, "h.*": 0.5, "head.*": 1.0}),
        )
        opt = jp.Optimizer(tx, model)

    Scaling happens after the optimizer, so it scales the whole step (weight decay included),
    as a per-group learning rate does in PyTorch.
    """
    entries = _entries(model)
    compiled = []
    for spec, factor in rules.items():
        _check_patterns(spec, _all_names(entries))
        compiled.append((as_filter(spec), float(factor)))

    def factor_of(names: tuple[str, ...], p: Any) -> float:
        return next((s for f, s in compiled if _matches(f, names, p)), float(default))

    values: dict[str, Any] = {}
    for e in entries:
        found = [factor_of(names, p) for names, p in _views(e, trainable_only=False)]
        uniform = all(v == found[0] for v in found)  # always, when not stacked: one view
        if uniform or e.layers is None:
            values[e.name] = found[0]
        else:
            values[e.name] = np.asarray(found).reshape(e.layers.shape)
    return _scaled(_ByName(values, "scale_by_name"))


def _keep_frozen_layers(old: dict[str, Any], new: dict[str, Any], rest: Any) -> dict[str, Any]:
    """``new`` with the frozen layers' rows of partly frozen `nn.Stacked` arrays taken from
    ``old`` bit for bit: their gradient is zero, but weight decay and momentum would move them.
    """
    holes = tree_util.tree_leaves(rest, is_leaf=lambda x: isinstance(x, Hole))
    candidates = [(h.name, row_mask(h.aux[2])) for h in holes if isinstance(h, Hole)]
    masks = [(name, m) for name, m in candidates if m is not None and name in new]
    if not masks:
        return new
    out = dict(new)
    for name, m in masks:
        value = new[name]
        rows = jnp.asarray(m).reshape(m.shape + (1,) * (value.ndim - m.ndim))
        out[name] = jnp.where(rows, value, old[name])
    return out
