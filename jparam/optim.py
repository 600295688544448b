"""Optimizers: `Optimizer`, a small pytree over optax, and PyTorch-style parameter groups.

Plain optax works on ``jp.split(model, jp.trainable)`` as it is. `Optimizer` is the shorter
route: it keeps optax state for the trainable parameters only, keyed by parameter name (so it
survives saving and loading by name) and stored as flat dicts (so a jitted step flattens it as
cheaply as a dict of arrays)::

    opt = jp.Optimizer(optax.adamw(1e-3), model)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(model, opt, x, y):
        loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
        model, opt = opt.update(model, grads)
        return model, opt, loss

Parameter groups come from names and metadata, for ``optax.masked``, ``optax.multi_transform``
and ``add_decayed_weights``::

    tx = optax.adamw(1e-3, weight_decay=0.05, mask=jp.optim.weight_decay_mask(model))
    tx = optax.multi_transform(
        {"slow": optax.adam(1e-5), "fast": optax.adam(1e-3)},
        jp.optim.labels(model, {"backbone.*": "slow", "*": "fast"}),
    )
    tx = optax.chain(optax.adam(1e-3), jp.optim.scale_by_metadata(model, "lr_scale"))

Each helper returns a function of the params tree, so the same ``tx`` serves the plain-optax
pattern (a model-shaped tree) and `Optimizer` (a dict keyed by name).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import optax
from jax import tree_util

from .filters import FilterLike, as_filter, is_parameter, require_match, trainable
from .parameter import Parameter, _Variable
from .partition import merge, split
from .paths import map_variables, named_parameters, path_name
from .state import match_state

__all__ = [
    "Optimizer",
    "labels",
    "mask",
    "scale_by_metadata",
    "weight_decay_mask",
]

M = TypeVar("M")


def _trainable(model: Any) -> list[tuple[str, Parameter]]:
    return [(n, p) for n, p in named_parameters(model) if p.trainable]


class Optimizer:
    """An optax transformation and its state for a model's trainable parameters.

    ``Optimizer(tx, model)`` initialises ``tx`` on ``params`` of
    ``params, rest = jp.split(model, jp.trainable)``, a ``{name: array}`` dict, so the state is
    keyed by parameter name. ``opt.update(model, grads)`` returns ``(new_model, new_opt)``;
    frozen parameters, buffers and plain arrays are never touched. The transformation and the
    names are static (in the treedef); the state is the only dynamic part. Freezing or
    unfreezing parameters changes the names: build a new `Optimizer` then.
    """

    __slots__ = ("names", "state", "tx")

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
        self.state = tx.init(params)

    def _split(self, model: Any) -> tuple[dict[str, Any], Any]:
        params, rest = split(model, trainable)
        if tuple(params) != self.names:
            missing = [n for n in self.names if n not in params]
            extra = [n for n in params if n not in self.names]
            raise ValueError(
                "the model's trainable parameters differ from the ones this Optimizer was "
                f"built for (missing: {missing or 'none'}; new: {extra or 'none'}); after "
                "freeze/unfreeze build a new jp.Optimizer(tx, model)"
            )
        return params, rest

    def _grads(self, grads: Any, params: dict[str, Any]) -> dict[str, Any]:
        if isinstance(grads, Mapping):
            found = {k: getattr(v, "value", v) for k, v in grads.items()}
        else:
            found, _ = split(grads, is_parameter)
        out, errors = {}, []
        for name in self.names:
            if found.get(name) is None:
                errors.append(f"no gradient for trainable parameter {name!r}")
                continue
            g = found[name]
            if tuple(g.shape) != tuple(params[name].shape):
                errors.append(
                    f"gradient for {name!r} has shape {tuple(g.shape)}, "
                    f"the parameter has {tuple(params[name].shape)}"
                )
            out[name] = g
        if errors:
            raise ValueError(
                "Optimizer.update got gradients that do not fit the model "
                "(compute them with jp.grad(loss_fn)(model, ...)):\n  " + "\n  ".join(errors)
            )
        return out

    def update(self, model: M, grads: Any, **extra_args: Any) -> tuple[M, Optimizer]:
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
        new_params = optax.apply_updates(params, updates)
        return merge(new_params, rest), self._with_state(state)

    def _with_state(self, state: Any) -> Optimizer:
        return _unflatten_optimizer((self.tx, self.names), (state,))

    def state_dict(self) -> OrderedDict[str, Any]:
        """Optimizer state by name, e.g. ``"0.mu.fc.weight"`` (optax's state path + name)."""
        flat, _ = tree_util.tree_flatten_with_path(self.state)
        return OrderedDict((path_name(path), leaf) for path, leaf in flat)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Optimizer:
        """Returns a copy whose state comes from ``state_dict`` (as `state_dict` wrote it)."""
        flat, treedef = tree_util.tree_flatten_with_path(self.state)
        expected = OrderedDict((path_name(path), leaf) for path, leaf in flat)
        values, _ = match_state(expected, state_dict, strict, "Optimizer")
        leaves = [values.get(name, leaf) for name, leaf in expected.items()]
        return self._with_state(treedef.unflatten(leaves))

    def __repr__(self) -> str:
        return f"Optimizer({len(self.names)} trainable parameters, tx={self.tx!r:.60})"


def _flatten_optimizer(o: Optimizer) -> tuple[tuple, tuple]:
    return (o.state,), (o.tx, o.names)


def _flatten_optimizer_with_keys(o: Optimizer) -> tuple[tuple, tuple]:
    return ((tree_util.GetAttrKey("state"), o.state),), (o.tx, o.names)


def _unflatten_optimizer(aux: tuple, children: tuple) -> Optimizer:
    out = object.__new__(Optimizer)
    out.tx, out.names = aux
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


def mask(
    model: Any, include: FilterLike | None = None, exclude: FilterLike | None = None
) -> _ByName:
    """A mask for ``optax.masked`` / ``mask=`` arguments: ``True`` where a transform applies.

    Selects trainable parameters matching ``include`` (default: all) and not ``exclude``;
    filters are name globs, `jp.Filter` objects or predicates on the Parameter::

        tx = optax.adamw(1e-3, mask=jp.optim.mask(model, exclude=["*.bias", "*norm*"]))
    """
    params = _trainable(model)
    names = [n for n, _ in params]
    inc = None if include is None else as_filter(include)
    exc = None if exclude is None else as_filter(exclude)
    for spec in (include, exclude):
        if spec is not None:
            _check_patterns(spec, names)
    values = {
        n: (inc is None or inc.matches(n, p)) and not (exc is not None and exc.matches(n, p))
        for n, p in params
    }
    return _ByName(values, "mask")


def weight_decay_mask(model: Any, exclude: FilterLike | None = None, min_ndim: int = 2) -> _ByName:
    """The usual weight-decay mask: decay matrices and kernels, not biases and norm scales.

    A parameter is decayed when its ``weight_decay`` metadata says so
    (``Parameter(w, weight_decay=False)``), else when it has at least ``min_ndim`` dimensions,
    and it does not match ``exclude``. Learned tokens are not 1-D: mark a ViT's cls token and
    position embedding ``weight_decay=False`` (or pass ``exclude=["cls_token", "pos_embed"]``).
    """
    params = _trainable(model)
    if exclude is not None:
        _check_patterns(exclude, [n for n, _ in params])
    exc = None if exclude is None else as_filter(exclude)
    values = {
        n: bool(p.metadata.get("weight_decay", p.ndim >= min_ndim))
        and not (exc is not None and exc.matches(n, p))
        for n, p in params
    }
    return _ByName(values, "weight_decay_mask")


def labels(model: Any, rules: Mapping[FilterLike, Hashable]) -> _ByName:
    """Labels for ``optax.multi_transform``: the first rule whose filter matches wins.

    ``rules`` maps filters (name globs, `jp.Filter` objects) to labels, in order. A parameter
    that no rule matches is an error, never a silent default: end with ``"*": "default"`` if
    you want one. A ``group`` metadata entry (``Parameter(w, group="slow")``) overrides the rules.
    """
    params = _trainable(model)
    compiled = [(as_filter(spec), label) for spec, label in rules.items()]
    values, unmatched = {}, []
    for n, p in params:
        if "group" in p.metadata:
            values[n] = p.metadata["group"]
            continue
        label = next((lab for f, lab in compiled if f.matches(n, p)), _NO_LABEL)
        if label is _NO_LABEL:
            unmatched.append(n)
        values[n] = label
    if unmatched:
        raise ValueError(
            f"no rule labels these trainable parameters: {', '.join(unmatched)}; add a rule "
            '(e.g. "*": "default") or freeze them'
        )
    return _ByName(values, "labels")


_NO_LABEL = object()


def scale_by_metadata(
    model: Any, key: str = "lr_scale", default: float = 1.0
) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its ``key`` metadata (PyTorch's per-group lr).

    Chain it after the optimizer: ``optax.chain(optax.adam(1e-3), scale_by_metadata(model))``
    gives ``Parameter(w, lr_scale=0.1)`` a ten times smaller step.
    """
    scales = {n: float(p.metadata.get(key, default)) for n, p in _trainable(model)}
    by_name = _ByName(scales, f"scale_by_metadata({key!r})")

    def init_fn(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        def scale(name: str, u: Any) -> Any:
            s = by_name[name]
            if s == 1.0:
                return u
            return u._with_value(u.value * s) if isinstance(u, _Variable) else u * s

        return map_variables(updates, scale, arrays=True), state

    return optax.GradientTransformation(init_fn, update_fn)
