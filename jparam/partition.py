"""`split` and `merge`: take the arrays you train out of a model by name, and put them back.

``params, rest = jp.split(model, jp.trainable)`` returns ``params`` as a flat dict
``{name: array}`` (the `state_dict` names) and ``rest``, the model with a placeholder where each
selected leaf was. Frozen parameters, buffers and plain arrays stay in ``rest``, so gradients and
optimizer state are never created for them::

    model, tx = nn.Linear(4, 2, key=jax.random.key(0)), optax.adam(1e-3)

    params, rest = jp.split(model, jp.trainable)
    opt_state = tx.init(params)                  # adam's mu/nu: dicts keyed by name

    def loss_fn(params, rest, x, y):
        model = jp.merge(params, rest)
        return jnp.mean((model(x) - y) ** 2)

    grads = jax.grad(loss_fn)(params, rest, jnp.ones((8, 4)), jnp.zeros((8, 2)))
    assert grads.keys() == params.keys() == {"weight", "bias"}

Why a flat dict and not a model-shaped tree with holes: it is what optax, checkpoints and people
read best (``params["encoder.0.weight"]``), and a dict of arrays is the cheapest pytree there is,
so a jitted step over ``params`` and its optimizer state costs what the same step on a plain dict
costs. ``rest`` keeps the structure and each placeholder remembers its name and the
Parameter's metadata, so `merge` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from jax import tree_util

from .filters import FilterLike, as_filter
from .parameter import Variable, rebuild_variable
from .paths import NameTable, is_variable, path_name
from .placeholder import Placeholder

__all__ = ["Hole", "merge", "split"]

T = TypeVar("T")


class Hole(Placeholder):
    """Where `split` took a leaf out: a pytree node without children, like ``None``.

    It carries, statically, the leaf's name, its shape and dtype (for arrays, see `_Spec`) and,
    for a Parameter or Buffer, its type and metadata, so `merge` can check a value and rebuild
    the leaf from it. These cost a few identity comparisons on a ``jax.jit`` cache lookup.
    """

    __slots__ = ()

    def __init__(
        self, name: str, kind: type | None = None, meta: tuple | None = None, spec: Any = None
    ) -> None:
        self.aux = (name, kind, meta, spec if isinstance(spec, _Spec) else _Spec(spec))

    @property
    def name(self) -> str:
        return self.aux[0]

    def fill(self, value: Any) -> Any:
        """The leaf this placeholder stands for, holding ``value``."""
        _, kind, meta, _ = self.aux
        return value if kind is None else rebuild_variable(kind, meta, value)

    def check(self, value: Any) -> str | None:
        """Why ``value`` cannot stand where this leaf was, or ``None`` if it can.

        The shape must be the same and the dtype too: `merge` puts values back as they are, so
        a cast or a broadcast here would change the model behind the user's back.
        """
        spec = self.aux[3].spec
        if spec is None:
            return None
        shape, dtype = spec
        want = f"{dtype}{list(shape)}"
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            return (
                f"{self.name}: expected an array {want}, got {type(value).__name__} {value!r:.40}"
            )
        if tuple(value.shape) != shape or value.dtype != dtype:
            return f"{self.name}: expected {want}, got {value.dtype}{list(value.shape)}"
        return None

    def __repr__(self) -> str:
        kind = self.aux[1].__name__ if self.aux[1] is not None else "array"
        return f"Hole({self.aux[0]!r}, {kind})"


class _Spec:
    """The ``(shape, dtype)`` a `Hole` checks values against: recorded, but not structure.

    Every `_Spec` equals every other and hashes alike, so the shape never takes part in treedef
    comparisons: the rest of a model and the rest of its tree of shardings
    (``jp.sharding.named_shardings``, whose leaves have no shape) have the same structure, as
    ``jax.jit(in_shardings=...)`` needs.
    Shapes still reach the jit cache key through the parts, whose arrays are real leaves.
    """

    __slots__ = ("spec",)
    spec: tuple[tuple[int, ...], Any] | None

    def __init__(self, value: Any) -> None:
        try:
            self.spec = (tuple(value.shape), value.dtype)
        except (AttributeError, TypeError):  # a Python scalar, a sharding: unchecked
            self.spec = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec)

    def __hash__(self) -> int:
        return 0


def _is_hole(x: Any) -> bool:
    return isinstance(x, Hole)


def split(tree: Any, filter: FilterLike, *filters: FilterLike) -> tuple[Any, ...]:
    """Splits ``tree`` into ``{name: array}`` dicts, one per filter, and the rest.

    Leaves are Parameters, Buffers and plain arrays; each goes to the first filter that selects
    it, or stays in the rest. ``jp.split(model, jp.trainable)`` returns ``(params, rest)``;
    ``jp.split(model, "encoder.*", jp.is_buffer)`` returns ``(encoder, buffers, rest)``.
    """
    preds = [as_filter(f) for f in (filter, *filters)]
    parts: list[dict[str, Any]] = [{} for _ in preds]
    names = NameTable("split")

    def visit(path: tuple, leaf: Any) -> Any:
        name = path_name(path)
        for pred, part in zip(preds, parts):
            if pred.matches(name, leaf):
                names.add(name, path)
                if isinstance(leaf, Variable):
                    part[name] = leaf.value
                    return Hole(name, type(leaf), leaf.aux, _Spec(leaf.value))
                part[name] = leaf
                return Hole(name, spec=_Spec(leaf))
        return leaf

    rest = tree_util.tree_map_with_path(visit, tree, is_leaf=is_variable)
    return (*parts, rest)


def merge(*parts_and_rest: Any) -> Any:
    """Puts `split`'s parts back into its rest: ``jp.merge(params, rest)``.

    The parts are ``{name: array}`` mappings (a gradient or an optax-updated copy works too);
    every placeholder in the rest must find its name in exactly one part, and every name must
    be used. Each value must have the shape and dtype of the leaf it replaces (checked when
    tracing, so a jitted step pays nothing); a changed shape is an error, never a broadcast.
    """
    if len(parts_and_rest) < 2:
        raise TypeError("merge(part, ..., rest) needs at least one part and the rest")
    *parts, rest = parts_and_rest
    values: dict[str, Any] = {}
    for i, part in enumerate(parts):
        if not isinstance(part, Mapping):
            raise TypeError(
                f"merge(part, ..., rest): argument {i} should be a {{name: array}} part from "
                f"jp.split, got {type(part).__name__}; the rest goes last"
            )
        clash = values.keys() & part.keys()
        if clash:
            raise ValueError(f"merge: {sorted(clash)} appear in more than one part")
        values.update(part)
    used: set[str] = set()
    missing: list[str] = []
    wrong: list[str] = []

    def fill(x: Any) -> Any:
        if not isinstance(x, Hole):
            return x
        if x.name not in values:
            missing.append(x.name)
            return x
        used.add(x.name)
        problem = x.check(values[x.name])
        if problem is not None:
            wrong.append(problem)
        return x.fill(values[x.name])

    out = tree_util.tree_map(fill, rest, is_leaf=_is_hole)
    if not used and not missing and values:
        raise TypeError(
            f"merge(part, ..., rest): the last argument should be the rest from jp.split (a tree "
            f"with placeholders), got {type(rest).__name__} without any; the parts go first"
        )
    unexpected = [n for n in values if n not in used]
    if missing or unexpected:
        raise ValueError(
            "merge: the parts do not fit the rest (were they split from the same model with "
            f"the same filters?); no value for: {missing or 'none'}; "
            f"not a placeholder in the rest: {unexpected or 'none'}"
        )
    if wrong:
        raise ValueError(
            "merge: values must have the shape and dtype of the leaves they replace (merge "
            "never casts or broadcasts; cast with .astype, or split the changed model again):\n  "
            + "\n  ".join(wrong)
        )
    return out
