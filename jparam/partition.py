"""`split` and `merge`: partition a model into the part you train and the rest, and put it back.

Both halves keep the model's structure, with ``None`` where the other half holds the leaf, so
each is a pytree that ``jax.grad``, ``optax`` and ``jax.jit`` take as it is. Frozen parameters and
buffers end up in ``rest``: gradients and optimizer state are never created for them::

    params, rest = jp.split(model, jp.trainable)
    opt_state = tx.init(params)

    def loss_fn(params, rest, x, y):
        model = jp.merge(params, rest)
        return jnp.mean((model(x) - y) ** 2)
"""

from __future__ import annotations

from typing import Any, TypeVar

from jax import tree_util

from .filters import FilterLike, as_filter
from .paths import is_variable, path_name

__all__ = ["merge", "split"]

T = TypeVar("T")


def split(tree: T, filter: FilterLike, *filters: FilterLike) -> tuple[T, ...]:
    """Splits ``tree`` into the leaves each filter selects, plus the rest.

    Leaves are Parameters, Buffers and plain arrays; each goes to the first filter that selects
    it, or to the last tree. ``jp.split(model, jp.trainable)`` returns ``(params, rest)``;
    ``jp.split(model, "encoder.*", jp.is_buffer)`` returns three trees.
    """
    preds = [as_filter(f) for f in (filter, *filters)]
    flat, treedef = tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)
    owner = []
    for path, leaf in flat:
        name = path_name(path)
        owner.append(next((i for i, p in enumerate(preds) if p.matches(name, leaf)), len(preds)))
    return tuple(
        treedef.unflatten([leaf if o == i else None for o, (_, leaf) in zip(owner, flat)])
        for i in range(len(preds) + 1)
    )


def _is_hole_or_leaf(x: Any) -> bool:
    return x is None or is_variable(x)


def merge(*trees: T) -> T:
    """Puts trees from `split` back together: each position takes the first non-``None`` leaf."""
    if not trees:
        raise TypeError("merge() needs at least one tree")
    first, *rest = trees

    def pick(*xs):
        return next((x for x in xs if x is not None), None)

    try:
        return tree_util.tree_map(pick, first, *rest, is_leaf=_is_hole_or_leaf)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "merge() needs trees with the same structure, as jp.split returns them (same model, "
            f"same static fields and trainable flags); JAX says: {e}"
        ) from None
