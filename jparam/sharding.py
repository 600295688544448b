"""Sharding by logical axis names: Parameters say what their dimensions mean, rules say where.

A Parameter names its dimensions in metadata (``Parameter(w, axes=("embed", "mlp"))``; the
`jparam.nn` layers name their own); `rules` map those names to the axes of a
``jax.sharding.Mesh``; `named_shardings` turns a model, an abstract one or optimizer state into
the pytree of ``NamedSharding`` that ``jax.jit`` and ``jax.device_put`` take, and `shard` places
a model with it. The guide (docs/guides/sharding.md) walks through a whole example and lists the
names jparam's layers use.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
from jax import tree_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import globs
from .filters import require_match
from .optim import Optimizer
from .parameter import Variable
from .paths import is_variable, map_variables, path_name

__all__ = [
    "STANDARD_NAMES",
    "Rules",
    "annotate",
    "constrain",
    "named_shardings",
    "rules",
    "shard",
    "spec",
    "use",
]

T = TypeVar("T")
Axes = tuple[str | None, ...]
MeshAxes = str | Sequence[str] | None

LAYER_AXIS = "layers"
"""The logical name of the leading axis that `nn.Stacked` adds to its layers' arrays."""

STANDARD_NAMES: frozenset[str] = frozenset(
    {"out", "in", "vocab", "embed", "norm", LAYER_AXIS, "batch", "seq"}
)
"""Logical names jparam itself uses; replicated unless the rules map them."""


# -- the ``axes`` metadata, as other features change arrays ---------------------------------------
# Everything that reshapes an annotated array asks here how its ``axes`` follow.


def stacked_axes(axes: Any, stack: bool) -> Any:
    """``axes`` of an array that gains (``stack``) or loses the leading layer axis.

    Anything but a tuple, or a tuple without a leading layer axis to drop, comes back as is.
    """
    if not isinstance(axes, tuple):
        return axes
    if stack:
        return (LAYER_AXIS, *axes)
    return axes[1:] if axes and axes[0] == LAYER_AXIS else axes


def axes_for_shape(axes: Any, want: tuple[int, ...], got: tuple[int, ...]) -> Any:
    """``axes`` of an array of shape ``want``, for a related array of shape ``got`` (a
    parametrization's raw value): kept where the shapes agree, ``None`` (replicated) for a
    dimension reduced to another size; ``None`` for the whole annotation when the ranks differ,
    since names cannot be matched to dimensions then."""
    if axes is None or got == want:
        return axes
    if isinstance(axes, tuple) and len(axes) == len(want) == len(got):
        return tuple(a if g == w else None for a, g, w in zip(axes, got, want))
    return None


class Rules(Mapping[str, tuple[str, ...]]):
    """An immutable map from logical axis names to mesh axes (a tuple, empty: replicated).

    Build it with `rules`; every function here also takes a plain dict. Hashable, so it can
    be a static field or a ``jax.jit`` static argument.
    """

    __slots__ = ("_map",)

    def __init__(self, mapping: Mapping[str, MeshAxes]) -> None:
        norm: dict[str, tuple[str, ...]] = {}
        for name, target in mapping.items():
            if not isinstance(name, str):
                raise TypeError(f"rules: logical axis names must be strings, got {name!r}")
            norm[name] = _mesh_axes(name, target)
        self._map = norm

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._map[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __hash__(self) -> int:
        return hash(frozenset(self._map.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rules):
            return self._map == other._map
        return NotImplemented

    def __repr__(self) -> str:
        items = ", ".join(f"{k!r}: {_show(v)}" for k, v in self._map.items())
        return f"Rules({{{items}}})"


def _show(mesh_axes: tuple[str, ...]) -> str:
    return (
        "None" if not mesh_axes else repr(mesh_axes[0]) if len(mesh_axes) == 1 else repr(mesh_axes)
    )


def _mesh_axes(name: str, target: Any) -> tuple[str, ...]:
    if target is None:
        return ()
    if isinstance(target, str):
        return (target,)
    if isinstance(target, (tuple, list)) and all(isinstance(a, str) for a in target):
        if len(set(target)) != len(target):
            raise ValueError(f"rules: {name!r} names a mesh axis twice: {tuple(target)}")
        return tuple(target)
    raise TypeError(
        f"rules: {name!r} must map to a mesh axis name, a tuple of them or None, got {target!r}"
    )


def rules(mapping: Mapping[str, MeshAxes] | None = None, /, **names: MeshAxes) -> Rules:
    """Rules from a dict and/or keywords: logical name -> mesh axis, tuple of axes, or None.

    ``None`` replicates the dimension; a tuple splits it over several mesh axes at once::

        jp.sharding.rules({"embed": "fsdp", "mlp": "tensor", "batch": ("data", "fsdp")})
        jp.sharding.rules(batch="data", mlp=None)   # data parallel; "mlp" replicated
    """
    merged = dict(mapping or {})
    merged.update(names)
    return Rules(merged)


def _as_rules(r: Rules | Mapping[str, MeshAxes]) -> Rules:
    if isinstance(r, Rules):
        return r
    if isinstance(r, Mapping):
        return Rules(r)
    raise TypeError(f"rules must be a jp.sharding.Rules or a dict, got {type(r).__name__}")


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"expected a jax.sharding.Mesh, got {type(mesh).__name__}; build one with "
            "jax.make_mesh(shape, names, axis_types=...) or jax.sharding.Mesh(devices, names)"
        )
    return mesh


def _axes_tuple(axes: Any, where: str) -> Axes:
    if isinstance(axes, tuple) and all(a is None or isinstance(a, str) for a in axes):
        return axes
    hint = f"; write ({axes!r},)" if isinstance(axes, str) else ""
    raise TypeError(
        f"{where}: axes must be a tuple of logical names (str) or None, got {axes!r}{hint}"
    )


def _spec(
    where: str,
    axes: Any,
    shape: tuple[int, ...] | None,
    r: Rules,
    mesh_sizes: Mapping[str, int] | None,
    first_wins: bool = False,
) -> PartitionSpec:
    """The PartitionSpec for one array; ``where`` names it in every error.

    A mesh axis can split one dimension only. For parameters a second use is an error; with
    ``first_wins`` (activations) the later dimension just skips it.
    """
    axes = _axes_tuple(axes, where)
    if shape is not None and len(axes) != len(shape):
        raise ValueError(
            f"{where}: axes {axes} name {len(axes)} dimension(s), but the array has shape "
            f"{tuple(shape)}"
        )
    entries: list[Any] = []
    owner: dict[str, str] = {}
    for dim, name in enumerate(axes):
        if name is None:
            entries.append(None)
            continue
        if name in r:
            targets = r[name]
        elif name in STANDARD_NAMES:
            targets = ()
        else:
            known = ", ".join(sorted(set(r) | STANDARD_NAMES))
            raise ValueError(
                f"{where}: unknown logical axis {name!r} in axes {axes}; add it to the rules "
                f"(map it to None to replicate it). Known names: {known}"
            )
        if first_wins:
            targets = tuple(a for a in targets if a not in owner)
        for a in targets:
            if mesh_sizes is not None and a not in mesh_sizes:
                raise ValueError(
                    f"{where}: the rules map {name!r} to mesh axis {a!r}, but the mesh has axes "
                    f"{tuple(mesh_sizes)}"
                )
            if a in owner:
                raise ValueError(
                    f"{where}: axes {axes} put mesh axis {a!r} on two dimensions "
                    f"({owner[a]!r} and {name!r}); an array splits over a mesh axis once"
                )
            owner[a] = name
        if shape is not None and mesh_sizes is not None and targets:
            parts = math.prod(mesh_sizes[a] for a in targets)
            if shape[dim] % parts:
                split = " x ".join(f"{a!r} ({mesh_sizes[a]})" for a in targets)
                raise ValueError(
                    f"{where}: dimension {dim} ({name!r}) has size {shape[dim]}, which mesh "
                    f"axis {split} cannot split into {parts} equal parts; change the shape, "
                    "the mesh or the rules"
                )
        entries.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def spec(
    axes: Axes,
    rules: Rules | Mapping[str, MeshAxes],
    *,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """The ``PartitionSpec`` that ``rules`` give logical ``axes``, e.g. for a batch of inputs.

    With ``mesh`` the mesh axes are checked to exist; with ``shape`` too, that they divide it::

        from jax.sharding import NamedSharding

        mesh, rules = jax.make_mesh((jax.device_count(),), ("data",)), {"batch": "data"}
        batch = NamedSharding(mesh, jp.sharding.spec(("batch", None), rules))
        x = jax.device_put(jnp.ones((8, 4)), batch)
    """
    sizes = None if mesh is None else dict(_check_mesh(mesh).shape)
    return _spec("spec", axes, None if shape is None else tuple(shape), _as_rules(rules), sizes)


def _names_to_specs(model: Any, mesh: Mesh, r: Rules) -> dict[str, tuple[tuple, PartitionSpec]]:
    """``{name: (shape, spec)}`` of every Parameter and Buffer of ``model``."""
    out: dict[str, tuple[tuple, PartitionSpec]] = {}
    sizes = dict(mesh.shape)

    def record(name: str, v: Any) -> Any:
        axes = v.metadata.get("axes")
        shape = tuple(v.shape)
        out[name] = (shape, PartitionSpec() if axes is None else _spec(name, axes, shape, r, sizes))
        return v

    map_variables(model, record)
    return out


def _followed(path: tuple, leaf: Any, by_name: Mapping[str, tuple[tuple, Any]]) -> Any:
    """The parameter spec a state leaf under a ``{name: ...}`` dict follows, or ``None``."""
    shape = tuple(getattr(leaf, "shape", ()))
    for key in reversed(path):
        if isinstance(key, tree_util.DictKey) and key.key in by_name:
            want, s = by_name[key.key]
            return s if want == shape else None
    return None


def named_shardings(
    tree: T,
    mesh: Mesh,
    rules: Rules | Mapping[str, MeshAxes],
    *,
    model: Any = None,
) -> T:
    """The ``NamedSharding`` of every array in ``tree``, as a pytree shaped like ``tree``.

    Parameters and Buffers get the sharding their ``axes`` metadata and ``rules`` give
    (replicated without ``axes``). With ``model``, state keyed by parameter name follows the
    parameter: `jp.Optimizer` state, optax state over ``jp.split`` dicts, the split dicts
    themselves, wherever the leaf has its parameter's shape (adam's ``mu``/``nu``). Everything
    else (step counts, factored statistics of another shape, plain arrays) is replicated.

    ``tree`` may be abstract (``jax.eval_shape``), so shardings exist before any memory does::

        mesh, rules = jax.make_mesh((jax.device_count(),), ("fsdp",)), {"out": "fsdp"}
        init, key, tx = lambda key: nn.Linear(4, 8, key=key), jax.random.key(0), optax.adam(1e-3)

        out = jp.sharding.named_shardings(jax.eval_shape(init, key), mesh, rules)
        model = jax.jit(init, out_shardings=out)(key)
        opt_sh = jp.sharding.named_shardings(
            jax.eval_shape(lambda m: jp.Optimizer(tx, m), model), mesh, rules, model=model
        )
        opt = jax.jit(lambda m: jp.Optimizer(tx, m), out_shardings=opt_sh)(model)

    Errors name the parameter: an unknown logical name, axes that do not fit the array's rank,
    a mesh axis the mesh lacks or that does not divide the dimension.
    """
    mesh = _check_mesh(mesh)
    r = _as_rules(rules)
    sizes = dict(mesh.shape)
    by_name = {} if model is None else _names_to_specs(model, mesh, r)
    replicated = NamedSharding(mesh, PartitionSpec())
    if model is None and any(
        isinstance(x, Optimizer)
        for x in tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, Optimizer))
    ):
        raise ValueError(
            "named_shardings: a jp.Optimizer's state is keyed by parameter name and needs the "
            "model's axes: pass model=... (the model the optimizer was built for)"
        )

    def visit(path: tuple, leaf: Any) -> Any:
        name = path_name(path)
        if isinstance(leaf, Variable):
            axes = leaf.metadata.get("axes")
            if axes is None:
                return leaf._with_value(replicated)
            s = _spec(name, axes, tuple(leaf.shape), r, sizes)
            return leaf._with_value(NamedSharding(mesh, s))
        followed = _followed(path, leaf, by_name) if by_name else None
        return replicated if followed is None else NamedSharding(mesh, followed)

    return tree_util.tree_map_with_path(visit, tree, is_leaf=is_variable)


def shard(
    tree: T,
    mesh: Mesh,
    rules: Rules | Mapping[str, MeshAxes],
    *,
    model: Any = None,
) -> T:
    """``tree`` placed on ``mesh`` as `named_shardings` says (``jax.device_put``), a copy::

        mesh, rules = jax.make_mesh((jax.device_count(),), ("fsdp",)), {"out": "fsdp"}
        model, tx = nn.Linear(4, 8, key=jax.random.key(0)), optax.adam(1e-3)

        model = jp.sharding.shard(model, mesh, rules)
        opt = jp.sharding.shard(jp.Optimizer(tx, model), mesh, rules, model=model)

    For a model that fits on one device. One that does not is initialised straight into its
    shards: ``jax.jit(init, out_shardings=named_shardings(jax.eval_shape(init, key), ...))``.
    """
    abstract = [
        path_name(p)
        for p, x in tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
        if isinstance(x.value if isinstance(x, Variable) else x, jax.ShapeDtypeStruct)
    ]
    if abstract:
        raise ValueError(
            f"shard: {abstract[0]!r} is abstract (jax.eval_shape) and has no values to place; "
            "create it sharded with jax.jit(init, out_shardings=jp.sharding.named_shardings(...)) "
            "instead"
        )
    return jax.device_put(tree, named_shardings(tree, mesh, rules, model=model))


def annotate(tree: T, axes: Mapping[str, Axes | None]) -> T:
    """Returns ``tree`` with the ``axes`` metadata of Parameters and Buffers set by name glob.

    The first matching glob wins; a glob that matches nothing raises (typos), and so do axes
    that do not fit the array's rank. ``None`` removes the annotation. Use it to give your
    model's layers names that say more than ``"out"``/``"in"``, e.g. Megatron-style tensor
    parallelism that splits the hidden dimension of both MLP matrices::

        mlp = nn.ModuleDict({"fc1": nn.Linear(4, 8, key=jax.random.key(0)),
                             "fc2": nn.Linear(8, 4, key=jax.random.key(1))})
        mlp = jp.sharding.annotate(mlp, {"fc1.weight": ("mlp", "embed"), "fc1.bias": ("mlp",),
                                         "fc2.weight": ("embed", "mlp")})
        assert mlp["fc2"].weight.metadata["axes"] == ("embed", "mlp")
    """
    names: list[str] = []

    def collect(name: str, v: Any) -> Any:
        names.append(name)
        return v

    map_variables(tree, collect)
    for pattern, value in axes.items():
        if not isinstance(pattern, str):
            raise TypeError(f"annotate: keys are name globs (str), got {pattern!r}")
        require_match(pattern, names, "parameter or buffer")
        if value is not None:
            _axes_tuple(value, f"annotate[{pattern!r}]")

    def set_axes(name: str, v: Any) -> Any:
        for pattern, value in axes.items():
            if globs.matches(pattern, name):
                if value is not None and len(value) != v.ndim:
                    raise ValueError(
                        f"{name}: axes {value} name {len(value)} dimension(s), but the array "
                        f"has shape {tuple(v.shape)}"
                    )
                if value is None:
                    return v.drop_metadata("axes") if "axes" in v.metadata else v
                return v.replace(axes=value)
        return v

    return map_variables(tree, set_axes)


# -- activations ------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "jparam_sharding_rules", default=None
)


@contextlib.contextmanager
def use(mesh: Mesh, rules: Rules | Mapping[str, MeshAxes]) -> Iterator[None]:
    """Makes ``mesh`` and ``rules`` the ones `constrain` applies while tracing in this block.

    It also sets ``mesh`` as JAX's mesh (``jax.set_mesh``), which is part of ``jax.jit``'s
    cache key: a function traced inside and outside the block, or under two meshes, is traced
    once for each. The rules are not in that key: a function already traced under this mesh
    keeps the rules it was traced with (``jax.clear_caches()`` forgets them)::

        from jax.sharding import AxisType

        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
        rules = jp.sharding.rules(batch="data")
        model = nn.Linear(4, 2, key=jax.random.key(0))
        opt = jp.Optimizer(optax.sgd(0.1), model)
        batches = [(jnp.ones((8, 4)), jnp.zeros((8, 2)))] * 2

        @jax.jit
        def train_step(model, opt, x, y):
            x = jp.sharding.constrain(x, ("batch", None))    # split by batch
            loss, grads = jp.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            model, opt = opt.update(model, grads)
            return model, opt, loss

        with jp.sharding.use(mesh, rules):
            for x, y in batches:
                model, opt, loss = train_step(model, opt, x, y)
    """
    token = _ACTIVE.set((_check_mesh(mesh), _as_rules(rules)))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Asks the partitioner to lay activation ``x`` out as its logical ``axes`` say.

    ``jax.lax.with_sharding_constraint`` with the mesh and rules of the enclosing `use`; outside
    one it returns ``x`` unchanged, so layers can call it and still run on one device::

        h = jnp.ones((2, 5, 8))                                  # (batch, seq, embed)
        h = jp.sharding.constrain(h, ("batch", "seq", "embed"))  # outside `use`: h as it is

    A mesh axis splits one dimension only, and the earlier dimension gets it: under FSDP rules
    that map both ``"batch"`` and ``"embed"`` to ``"fsdp"``, activations are split by batch.

    Errors (unknown names, wrong rank, a size the mesh cannot split) name the axes and shape.
    """
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, r = active
    shape = tuple(jax.numpy.shape(x))
    s = _spec(f"constrain(shape {shape})", axes, shape, r, dict(mesh.shape), first_wins=True)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, s))
