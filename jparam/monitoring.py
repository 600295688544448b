"""Monitoring: per-parameter statistics, the global norm, and a NaN/Inf guard.

A diverging run shows up first in the numbers of one parameter. `stats` and `global_norm`
compute them inside the jitted step, with no host sync; `first_nonfinite` finds the first
NaN/Inf inside jit (its `NonFinite` report's ``finite`` can skip the step there) and
`check_finite` raises on the host, naming the parameter. Names are `jp.state_dict`'s, per layer
for `nn.Stacked` arrays. The guide is ``docs/guides/monitoring.md``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from .filters import Layers, stacked_layers
from .parameter import Buffer, Parameter, Variable
from .paths import path_name, walk

__all__ = ["NonFinite", "STATS", "check_finite", "first_nonfinite", "global_norm", "stats"]

#: The statistics `stats` computes for each array, in this order.
STATS = ("norm", "mean", "std", "min", "max", "zero_fraction", "nonfinite")


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, Variable)


class _Entry(NamedTuple):
    """An array to report: ``layers`` names its rows when it is an `nn.Stacked` array."""

    name: str
    array: Any
    layers: Layers | None
    position: int  # in the walk: orders it among the other entries and rows


def _entries(tree: Any, include_buffers: bool) -> list[_Entry]:
    """The arrays in walk order; plain array leaves when there is no Parameter/Buffer."""
    walked = list(walk(tree))
    if any(isinstance(node, Variable) for _, node in walked):
        kinds = (Parameter, Buffer) if include_buffers else (Parameter,)
        stacked = stacked_layers(walked)
        return [
            _Entry(name, node.value, _rows(stacked.get(name), node.value), pos)
            for pos, (name, node) in enumerate(walked)
            if isinstance(node, kinds) and _is_array(node.value)
        ]
    flat, _ = tree_util.tree_flatten_with_path(tree)
    return [
        _Entry(path_name(p), leaf, None, i) for i, (p, leaf) in enumerate(flat) if _is_array(leaf)
    ]


def _rows(layers: Layers | None, x: Any) -> Layers | None:
    if layers is None:
        return None
    k = len(layers.shape)
    return layers if k and tuple(x.shape[:k]) == layers.shape else None


def _layer_axes(entries: list[_Entry]) -> tuple[int, ...]:
    return tuple(len(e.layers.shape) if e.layers else 0 for e in entries)


def _order(entries: list[_Entry]) -> tuple[int, ...] | None:
    """Rows (arrays, and each layer of stacked ones, array by array) in `state_dict` order:
    layer by layer, as the unrolled layers are. ``None`` when that is the order they have."""
    if not any(e.layers for e in entries):
        return None
    keys = [k for e in entries for k in (e.layers.keys if e.layers else [(e.position,)])]
    return tuple(sorted(range(len(keys)), key=keys.__getitem__))


def _reorder(items: Sequence[Any], order: tuple[int, ...] | None) -> list[Any]:
    return list(items) if order is None else [items[i] for i in order]


def _names(entries: list[_Entry]) -> list[str]:
    """The names `stats` reports: each array's, or its per-layer names, in `state_dict` order."""
    names = [n for e in entries for n in (e.layers.names if e.layers else (e.name,))]
    return _reorder(names, _order(entries))


def named_arrays(tree: Any, include_buffers: bool) -> list[tuple[str, Any]]:
    """``(name, array)`` in `state_dict` order, one per layer of an `nn.Stacked` array."""
    entries = _entries(tree, include_buffers)
    out = []
    for e in entries:
        if e.layers is None:
            out.append((e.name, e.array))
            continue
        rows = jnp.reshape(e.array, (-1, *e.array.shape[len(e.layers.shape) :]))
        out.extend((n, rows[i]) for i, n in enumerate(e.layers.names))
    return _reorder(out, _order(entries))


def _compute_dtype(name: str, dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"jp.stats: {name!r} is complex ({dtype}); only real arrays are supported")
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        return jnp.dtype(jnp.float32)
    raise TypeError(f"jp.stats: {name!r} has dtype {dtype}, which is not numeric")


def _one_stats(x: Any, dtype: Any, k: int = 0) -> dict[str, jax.Array]:
    """The statistics of ``x``, or of each of its rows over its ``k`` leading (layer) axes."""
    x = jnp.asarray(x)
    checked = jnp.issubdtype(x.dtype, jnp.floating)
    x = x.astype(dtype)
    lead, axes = x.shape[:k], tuple(range(k, x.ndim))
    if math.prod(x.shape[k:]) == 0:
        nan = jnp.full(lead, jnp.nan, dtype)
        zero = jnp.zeros(lead, dtype)
        return {
            "norm": zero,
            "mean": nan,
            "std": nan,
            "min": nan,
            "max": nan,
            "zero_fraction": nan,
            "nonfinite": jnp.zeros(lead, jnp.int32),
        }
    if checked:
        nonfinite = jnp.sum(~jnp.isfinite(x), axis=axes, dtype=jnp.int32)
    else:
        nonfinite = jnp.zeros(lead, jnp.int32)
    return {
        "norm": jnp.sqrt(jnp.sum(jnp.square(x), axis=axes)),
        "mean": jnp.mean(x, axis=axes),
        "std": jnp.std(x, axis=axes),
        "min": jnp.min(x, axis=axes),
        "max": jnp.max(x, axis=axes),
        "zero_fraction": jnp.mean((x == 0).astype(dtype), axis=axes),
        "nonfinite": nonfinite,
    }


def _stats_arrays(arrays: tuple, dtypes: tuple, ks: tuple, order: tuple | None) -> tuple:
    """One statistics dict per array, or per layer of a stacked one (``k`` layer axes), in
    ``order`` (see `_order`)."""
    out = []
    for x, d, k in zip(arrays, dtypes, ks):
        one = _one_stats(x, d, k)
        if not k:
            out.append(one)
            continue
        flat = {key: v.reshape(-1) for key, v in one.items()}
        rows = math.prod(x.shape[:k])
        out.extend({key: v[i] for key, v in flat.items()} for i in range(rows))
    return tuple(_reorder(out, order))


_stats_jit = jax.jit(_stats_arrays, static_argnums=(1, 2, 3))


def stats(tree: Any, *, include_buffers: bool = False) -> OrderedDict[str, dict[str, jax.Array]]:
    """Per-parameter statistics: ``{name: {"norm", "mean", "std", "min", "max", ...}}``.

    For every Parameter in ``tree`` (trainable or frozen; with ``include_buffers=True`` every
    Buffer too, non-persistent ones included) in `jp.state_dict` order, or for every array leaf
    of a tree without Parameters/Buffers (a `jp.split` dict), the scalars:

    - ``norm``: L2 norm, ``sqrt(sum(x**2))``;
    - ``mean``, ``std`` (population, ``ddof=0`` like NumPy), ``min``, ``max``;
    - ``zero_fraction``: the fraction of entries exactly equal to 0;
    - ``nonfinite``: int32 count of NaN and Inf entries (always 0 for integer and bool arrays).

    NaN and Inf propagate into the other statistics as they would in NumPy. An empty array has
    ``norm=0`` and ``nonfinite=0``; ``mean``, ``std``, ``min``, ``max`` and ``zero_fraction``
    are NaN (undefined over no entries). Values are float32 for bfloat16/float16/integer/bool
    input, float64 for float64.

    Returns arrays only, with no host sync: under ``jax.jit`` it is part of the one jitted
    computation; called eagerly it runs as one jitted computation of its own (cached by the
    arrays' shapes and dtypes). The result is an ``OrderedDict``, so its order survives being
    returned from ``jax.jit``. A parameter used in two places appears under both names.
    """
    entries = _entries(tree, include_buffers)
    names = _names(entries)
    if len(set(names)) != len(names):
        raise ValueError(f"jp.stats: two arrays share a name in {names}")
    arrays = tuple(e.array for e in entries)
    dtypes = tuple(_compute_dtype(e.name, e.array.dtype) for e in entries)
    # under an outer jit this is inlined into it
    values = _stats_jit(arrays, dtypes, _layer_axes(entries), _order(entries))
    return OrderedDict(zip(names, values))


def _global_norm(arrays: tuple) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for x in arrays:
        x = jnp.asarray(x)
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        total = total + jnp.sum(jnp.square(x.astype(dtype)))
    return jnp.sqrt(total)


_global_norm_jit = jax.jit(_global_norm)


def global_norm(tree: Any, *, include_buffers: bool = False) -> jax.Array:
    """The L2 norm over all parameter arrays in ``tree``: ``sqrt(sum of every x**2)``.

    The arrays are those `stats` names (Buffers excluded unless ``include_buffers=True``), so on
    float32 arrays it equals ``optax.global_norm`` of them. Low-precision arrays are squared and
    summed in float32 (``optax.global_norm`` sums them in their own dtype). A scalar array, no
    host sync; 0.0 for a tree without parameters.
    """
    arrays = tuple(e.array for e in _entries(tree, include_buffers))
    for x in arrays:
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError("jp.global_norm: complex arrays are not supported")
    return _global_norm_jit(arrays)


class NonFinite:
    """Where NaN/Inf first appeared in a tree: `first_nonfinite`'s answer, a pytree.

    Its one array child, ``code``, is int32 ``[index, nan_count, inf_count, n_offending]``
    (``index`` is -1 when every array is finite); ``names``, the checked arrays' names, is
    static data, so a jitted function can return a `NonFinite` and the host still has the
    names. Inside jit, ``report.finite`` is a scalar bool array. On the host,
    ``jp.check_finite(report, what=...)`` or ``report.check(what)`` raises and
    ``report.message(what)`` returns the message or ``None``; both read ``code`` (one small
    device-to-host copy).
    """

    __slots__ = ("code", "names")

    def __init__(self, code: Any, names: tuple[str, ...]) -> None:
        self.code = code
        self.names = names

    @property
    def finite(self) -> jax.Array:
        """A scalar bool array: whether every checked array is free of NaN and Inf.

        Reads nothing back to the host, so it serves inside ``jax.jit``: skip the step with
        `jp.amp.update_if_finite`, or adjust a `jp.amp.DynamicLossScale`.
        """
        return jnp.asarray(self.code)[0] < 0

    def message(self, what: str = "gradients") -> str | None:
        """The error message, or ``None`` when every checked array is finite."""
        index, nan, inf, count = (int(v) for v in np.asarray(self.code))
        if index < 0:
            return None
        tail = (
            "the only offending parameter"
            if count == 1
            else f"first of {count} offending parameters"
        )
        return f"{what}: {self.names[index]!r} has {nan} NaN and {inf} Inf values ({tail})"

    def check(self, what: str = "gradients") -> None:
        """Raises `FloatingPointError` naming the first offending path, if there is one."""
        msg = self.message(what)
        if msg is not None:
            raise FloatingPointError(msg)

    def __repr__(self) -> str:
        return f"NonFinite(code={self.code!r}, names=<{len(self.names)} names>)"


def _unflatten_non_finite(names: tuple[str, ...], children: Iterable[Any]) -> NonFinite:
    (code,) = children
    return NonFinite(code, names)


tree_util.register_pytree_with_keys(
    NonFinite,
    lambda r: (((tree_util.GetAttrKey("code"), r.code),), r.names),
    _unflatten_non_finite,
    flatten_func=lambda r: ((r.code,), r.names),
)


def _count_rows(fn: Any, x: Any, k: int) -> jax.Array:
    """``sum(fn(x))`` as a vector: one count, or one per row over ``k`` leading layer axes."""
    return jnp.sum(fn(x), axis=tuple(range(k, x.ndim)), dtype=jnp.int32).reshape(-1)


def _nonfinite_code(arrays: Sequence[Any], ks: tuple = (), order: tuple | None = None) -> jax.Array:
    if not arrays:
        return jnp.array([-1, 0, 0, 0], jnp.int32)
    ks = ks or (0,) * len(arrays)
    nan = jnp.concatenate([_count_rows(jnp.isnan, x, k) for x, k in zip(arrays, ks)])
    inf = jnp.concatenate([_count_rows(jnp.isinf, x, k) for x, k in zip(arrays, ks)])
    if order is not None:  # state_dict order, so "first" means what it means unrolled
        nan, inf = nan[np.asarray(order)], inf[np.asarray(order)]
    bad = (nan + inf) > 0
    first = jnp.argmax(bad)
    index = jnp.where(bad[first], first, -1).astype(jnp.int32)
    return jnp.stack([index, nan[first], inf[first], jnp.sum(bad, dtype=jnp.int32)])


_nonfinite_code_jit = jax.jit(_nonfinite_code, static_argnums=(1, 2))


def first_nonfinite(tree: Any, *, include_buffers: bool = False) -> NonFinite:
    """A jit-friendly NaN/Inf check: a `NonFinite` report for the first offending array.

    Checks the floating arrays `stats` would name (integer and bool arrays are skipped), in
    `jp.state_dict` order. No host sync; return the report from the jitted step and call
    ``jp.check_finite(report)`` on the host.
    """
    entries = [
        e for e in _entries(tree, include_buffers) if jnp.issubdtype(e.array.dtype, jnp.inexact)
    ]
    arrays = [e.array for e in entries]
    code = _nonfinite_code_jit(arrays, _layer_axes(entries), _order(entries))
    return NonFinite(code, tuple(_names(entries)))


def check_finite(tree: Any, what: str = "gradients", *, include_buffers: bool = False) -> None:
    """Raises `FloatingPointError` if any checked array in ``tree`` holds a NaN or an Inf.

    For use outside ``jax.jit`` (it reads the result back to the host). The message names the
    first offending path in `jp.state_dict` order, its NaN and Inf counts and how many arrays
    offend, e.g. ``gradients: 'blocks.3.mlp.weight' has 2 NaN and 0 Inf values (first of 3
    offending parameters)``. ``tree`` may also be a `NonFinite` report returned by a jitted
    step (see `first_nonfinite`). Integer and bool arrays are skipped.
    """
    if not isinstance(tree, NonFinite):
        tree = first_nonfinite(tree, include_buffers=include_buffers)
    tree.check(what)
