"""`Stacked`: N identical layers stored as one module and run with ``jax.lax.scan``.

An unrolled list of N blocks makes XLA compile N copies of the block; `Stacked` keeps one copy
whose arrays carry a leading layer axis ``[N, ...]`` and scans over it, so compile time stays
flat as depth grows. Parameters, gradients and optimizers see the stacked arrays
(``blocks.layers.fc.weight``); `state_dict`, checkpoints and `summary` see PyTorch's per-layer
names (``blocks.0.fc.weight``). Single layers freeze by their per-layer names; a partly frozen
stacked Parameter carries its per-layer flags as ``layer_trainable`` metadata. The guide is
``docs/guides/stacked-layers.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util
from jax.sharding import NamedSharding, PartitionSpec

from ..filters import layer_meta, row_mask
from ..module import Module, field
from ..parameter import Parameter, Variable, dtype_shape, intern_aux, rebuild_variable
from ..paths import is_variable, path_name, walk
from ..sharding import stacked_axes
from ..stateful import stateful_call, update_state
from ._utils import describe, require_key
from .containers import takes_key

__all__ = ["Stacked"]

Remat = bool | Callable[..., Any]


# -- the layer axis: arrays and metadata ----------------------------------------------------
def _axes_meta(v: Variable, stack: bool) -> tuple:
    """``v``'s static metadata with the layer axis prepended to (or dropped from) its ``axes``."""
    axes = v.metadata.get("axes")
    new = stacked_axes(axes, stack)
    if new is axes:
        return v.aux
    return intern_aux(v.aux[0], {**dict(v.aux[1]), "axes": new})


_ALL = object()  # `_map_arrays(layers=_ALL)`: the per-layer flags of every layer at once


def _layers_meta(meta: tuple, layers: Any) -> tuple:
    """A stacked Parameter's metadata for layer ``layers`` (an int), a slice of the layers, or
    for all of them at once (``_ALL``: trainable, as the frozen rows' gradient is stopped)."""
    mask = row_mask(meta)
    if mask is None:
        return meta
    return layer_meta(meta, np.asarray(True) if layers is _ALL else mask[layers])


def _map_arrays(tree: Any, fn: Callable[[Any], Any], stack: bool | None, layers: Any = None) -> Any:
    """``tree`` with ``fn`` applied to every array; ``stack`` adds (True) or removes (False)
    the layer axis in ``axes`` metadata, ``None`` keeps metadata as it is. ``layers`` (an
    index, a slice or ``_ALL``) picks those layers' trainable flags of partly frozen stacks."""

    def visit(x: Any) -> Any:
        if isinstance(x, Variable):
            meta = x.aux if stack is None else _axes_meta(x, stack)
            meta = meta if layers is None else _layers_meta(meta, layers)
            return rebuild_variable(type(x), meta, fn(x.value))
        return fn(x)

    return tree_util.tree_map(visit, tree, is_leaf=is_variable)


def _stop_frozen_rows(tree: Any) -> Any:
    """Partly frozen stacked Parameters whose frozen layers' rows are gradient-stopped.

    Only under a trace (``jax.grad``, ``jax.jit``...): eagerly there is no gradient to stop.
    """

    def visit(x: Any) -> Any:
        mask = row_mask(x) if isinstance(x, Parameter) else None
        v = x.value if mask is not None else None
        if mask is None or not isinstance(v, jax.core.Tracer):
            return x
        rows = jnp.asarray(mask).reshape(mask.shape + (1,) * (v.ndim - mask.ndim))
        return rebuild_variable(type(x), x.aux, jnp.where(rows, v, jax.lax.stop_gradient(v)))

    return tree_util.tree_map(visit, tree, is_leaf=is_variable)


def _abstract_sharding(a: jax.ShapeDtypeStruct, stack: bool) -> Any:
    """An abstract leaf's `NamedSharding` with the layer axis added or dropped (else None)."""
    sharding = getattr(a, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, PartitionSpec(*((None, *spec) if stack else spec[1:])))


def _index(i: int | slice) -> Callable[[Any], Any]:
    def take(a: Any) -> Any:
        if isinstance(a, jax.ShapeDtypeStruct):  # abstract models (jax.eval_shape)
            layers = np.empty(a.shape[:1], dtype=np.bool_)[i].shape
            if layers:  # a slice keeps the layer axis and its sharding
                return jax.ShapeDtypeStruct((*layers, *a.shape[1:]), a.dtype, sharding=a.sharding)
            sharding = _abstract_sharding(a, stack=False)
            return jax.ShapeDtypeStruct(tuple(a.shape[1:]), a.dtype, sharding=sharding)
        return a[i]

    return take


def _stack_leaf(values: list[Any], name: str) -> Any:
    abstract = [isinstance(v, jax.ShapeDtypeStruct) for v in values]
    if all(abstract):
        first = values[0]
        sharding = _abstract_sharding(first, stack=True)
        return jax.ShapeDtypeStruct((len(values), *first.shape), first.dtype, sharding=sharding)
    if any(abstract):
        raise ValueError(
            f"Stacked: {name or 'a leaf'} is abstract (a jax.ShapeDtypeStruct, e.g. not loaded) "
            f"in layer {abstract.index(True)} but concrete in layer {abstract.index(False)}; "
            "layers can only be stacked when all or none of them are abstract"
        )
    return jnp.stack(values)


# -- comparing layers: the first difference, by name ----------------------------------------
def _signature(layer: Module) -> dict[str, tuple[str, Any]]:
    """Everything stacking needs to agree on, by name: modules' types and hyperparameters,
    parameters' and buffers' shapes, dtypes, flags and metadata, plain arrays' shapes."""
    out: dict[str, tuple[str, Any]] = {}
    for name, node in walk(layer):
        if isinstance(node, Module):
            out.setdefault(name, ("module", (describe(node), node.training)))
        else:
            out.setdefault(name, (type(node).__name__, _describe_array(node)))
    flat, _ = tree_util.tree_flatten_with_path(layer, is_leaf=is_variable)
    for path, leaf in flat:
        if not isinstance(leaf, Variable):
            out.setdefault(path_name(path), ("array", _describe_array(leaf)))
    return out


def _describe_array(x: Any) -> str:
    value = x.value if isinstance(x, Variable) else x
    text = f"shape {tuple(np.shape(value))} dtype {jnp.dtype(value.dtype)}"
    if isinstance(x, Variable):
        text += "".join(f" {k}={v!r}" for k, v in x.aux[1])
    return text


def _difference(first: Module, other: Module) -> str:
    a, b = _signature(first), _signature(other)
    for name in [*a, *(n for n in b if n not in a)]:
        where = repr(name) if name else "the layer itself"
        if name not in b:
            return f"{where} ({a[name][0]}) is missing"
        if name not in a:
            return f"{where} ({b[name][0]}) is not in layer 0"
        if a[name] != b[name]:
            (kind_a, desc_a), (kind_b, desc_b) = a[name], b[name]
            if kind_a != kind_b:
                return f"{where} is a {kind_b}, in layer 0 a {kind_a}"
            if kind_a == "module":
                (desc_a, train_a), (desc_b, train_b) = desc_a, desc_b
                if desc_a == desc_b:
                    return f"{where} has training={train_b}, layer 0 training={train_a}"
            return f"{where} is {desc_b}, in layer 0 {desc_a}"
    return (
        "the pytree structure differs (e.g. a dict key or a None field): "
        f"{tree_util.tree_structure(other)} vs layer 0's {tree_util.tree_structure(first)}"
    )


def _same_layout(first: tuple[list[Any], Any], other: tuple[list[Any], Any]) -> bool:
    (la, ta), (lb, tb) = first, other
    return ta == tb and all(
        np.shape(x) == np.shape(y) and jnp.dtype(x.dtype) == jnp.dtype(y.dtype)
        for x, y in zip(la, lb)
    )


def _without_flags(layer: Module) -> tuple[Module, list[np.ndarray | None]]:
    """``layer`` with every Parameter trainable, and its Parameters' flags in flatten order
    (a bool, or a bool array for a partly frozen Stacked inside the layer)."""
    leaves, treedef = tree_util.tree_flatten(layer, is_leaf=is_variable)
    flags: list[np.ndarray | None] = []
    for j, leaf in enumerate(leaves):
        if isinstance(leaf, Parameter):
            mask = row_mask(leaf)
            flags.append(np.asarray(leaf.trainable) if mask is None else mask)
            leaves[j] = rebuild_variable(
                type(leaf), layer_meta(leaf.aux, np.asarray(True)), leaf.value
            )
        else:
            flags.append(None)
    return tree_util.tree_unflatten(treedef, leaves), flags


def _with_flags(template: Module, flags: list[list[np.ndarray | None]]) -> Module:
    """The stacked ``template`` with each Parameter's per-layer flags (``flags[layer][j]``)."""
    leaves, treedef = tree_util.tree_flatten(template, is_leaf=is_variable)
    for j, leaf in enumerate(leaves):
        if isinstance(leaf, Parameter):
            per_layer = [m for f in flags if (m := f[j]) is not None]
            assert len(per_layer) == len(flags)  # a Parameter has flags in every layer
            inner = next((np.shape(f) for f in per_layer if np.ndim(f)), ())
            mask = np.stack([np.broadcast_to(f, inner) for f in per_layer])
            leaves[j] = rebuild_variable(type(leaf), layer_meta(leaf.aux, mask), leaf.value)
    return tree_util.tree_unflatten(treedef, leaves)


def _stack(layers: list[Module], what: str) -> Module:
    """One module of ``layers[0]``'s structure whose arrays stack the layers' on axis 0.

    Layers may differ in their Parameters' trainable flags: the stacked Parameter then carries
    per-layer flags (``layer_trainable`` metadata), see `Stacked`.
    """
    plain = [_without_flags(layer) for layer in layers]
    layers = [layer for layer, _ in plain]
    flat = [tree_util.tree_flatten(layer) for layer in layers]
    for i, layer in enumerate(layers[1:], 1):
        if not _same_layout(flat[0], flat[i]):
            raise ValueError(
                f"{what}: layer {i} does not match layer 0: {_difference(layers[0], layer)}. "
                "Stacked layers need the same structure, hyperparameters, shapes, dtypes, "
                "trainable flags and metadata."
            )
    names = [path_name(p) for p, _ in tree_util.tree_flatten_with_path(layers[0])[0]]
    leaves = [_stack_leaf([f[0][j] for f in flat], names[j]) for j in range(len(names))]
    template = tree_util.tree_unflatten(flat[0][1], leaves)
    return _with_flags(_map_arrays(template, lambda a: a, stack=True), [f for _, f in plain])


def _check_remat(remat: Any) -> Remat:
    if isinstance(remat, (bool, np.bool_)):
        return bool(remat)
    if callable(remat):
        return remat
    raise TypeError(
        "remat must be True/False or a jax.checkpoint policy "
        f"(e.g. jax.checkpoint_policies.dots_saveable), got {remat!r}"
    )


def _check_layers(layers: Any) -> list[Module]:
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(
            f"Stacked.from_layers takes a sequence of modules, got {type(layers).__name__}"
        ) from None
    if not layers:
        raise ValueError("Stacked.from_layers needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Module):
            raise TypeError(
                f"Stacked.from_layers: layer {i} is {type(layer).__name__}, not a Module"
            )
    return layers


def _describe_carry(x: Any) -> str:
    return str(
        tree_util.tree_map(
            lambda a: dtype_shape(jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))), x
        )
    )


def _same_carry(x: Any, y: Any) -> bool:
    lx, tx = tree_util.tree_flatten(x)
    ly, ty = tree_util.tree_flatten(y)
    return tx == ty and all(  # type: ignore[operator]  # PyTreeDef has no stubs
        jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(lx, ly)
    )


class Stacked(Module):
    """``num_layers`` identical layers stored as one module, applied in order with ``lax.scan``.

    ``layers`` holds one layer whose Parameters, Buffers and arrays have a leading layer axis
    (``[N, ...]``); each keeps its trainable flag and metadata, with ``"layers"`` prepended to
    its ``axes`` metadata when it has one (for logical sharding). ``stacked(x, *args,
    **kwargs)`` computes ``x = layer_i(x, *args, **kwargs)`` for ``i = 0 .. N-1``; each layer
    must return its input's structure, shapes and dtypes. ``key=`` is split into N keys, one
    per layer, when the layer takes a keyword-only ``key`` (dropout); otherwise it is ignored,
    as in `Sequential`. ``remat=True`` (or a ``jax.checkpoint`` policy such as
    ``jax.checkpoint_policies.dots_saveable``) recomputes each layer's activations in the
    backward pass instead of storing them. BatchNorm statistics inside the layers update under
    `stateful_call` as they would unrolled.

    ``stacked[i]``, ``len``, iteration and `unstack` give per-layer modules (``stacked[1:3]`` a
    smaller `Stacked`). `named_parameters` and `jp.split` see the stacked arrays
    (``layers.weight``); `state_dict`, `load_state_dict`, `jp.save`/`jp.load` and `summary` use
    per-layer PyTorch names (``0.weight``, ``1.weight``, ...), as for an ``nn.ModuleList``.
    Freeze a stacked parameter by glob (``model.freeze("blocks.*.attn")``) or single layers by
    their per-layer names (see ``docs/guides/stacked-layers.md``). Example::

        blocks = nn.Stacked(lambda k: nn.Linear(8, 8, key=k), 24, key=jax.random.key(0))
        y = jax.jit(lambda m, x: m(x))(blocks, jnp.ones((2, 8)))
        assert blocks.layers.weight.shape == (24, 8, 8)
        assert list(blocks.state_dict())[:3] == ["0.weight", "0.bias", "1.weight"]
    """

    layers: Module
    num_layers: int = field(static=True)
    remat: Remat = field(static=True)

    def __init__(
        self,
        make_layer: Callable[[jax.Array], Module],
        num_layers: int,
        *,
        key: jax.Array,
        remat: Remat = False,
    ) -> None:
        """Builds ``make_layer(k)`` for each of ``jax.random.split(key, num_layers)``.

        ``make_layer`` is traced once under ``jax.vmap`` over the keys, so initialisation costs
        one layer's worth of dispatches, not N; it must build the same structure for every key.
        """
        require_key(key, "Stacked")
        if not callable(make_layer):
            raise TypeError(
                f"Stacked(make_layer, num_layers, key=...) needs make_layer to be a function "
                f"of a PRNG key returning a module, got {type(make_layer).__name__}; use "
                "Stacked.from_layers(layers) to stack modules you already have"
            )
        _check_num_layers(num_layers)
        layers = jax.vmap(make_layer)(jax.random.split(key, num_layers))
        if not isinstance(layers, Module):
            raise TypeError(f"make_layer must return a jp.Module, got {type(layers).__name__}")
        self.layers = _map_arrays(layers, lambda a: a, stack=True)
        self.num_layers = int(num_layers)
        self.remat = _check_remat(remat)

    @classmethod
    def from_layers(cls, layers: Iterable[Module], *, remat: Remat = False) -> Stacked:
        """Stacks existing layers (same structure, shapes, dtypes, flags and hyperparameters).

        A mismatch raises naming the first differing path, e.g. ``layer 3 does not match layer
        0: 'attn.in_proj_weight' is shape (96, 32) ..., in layer 0 shape (48, 16) ...``.
        The result is in training mode if layer 0 is.
        """
        layers = _check_layers(layers)
        return cls._build(
            _stack(layers, "Stacked.from_layers"),
            len(layers),
            _check_remat(remat),
            layers[0].training,
        )

    @classmethod
    def _build(cls, template: Module, num_layers: int, remat: Remat, training: bool) -> Stacked:
        out = object.__new__(cls)
        out.__dict__.update(
            layers=template, num_layers=num_layers, remat=remat, training=bool(training)
        )
        return out

    # -- per-layer access -----------------------------------------------------------------------
    def _layer(self, index: int | slice) -> Module:
        return _map_arrays(self.layers, _index(index), stack=False, layers=index)

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> Stacked: ...
    def __getitem__(self, index: int | slice) -> Module | Stacked:
        """Layer ``index`` as a module of its own; a slice gives a `Stacked` of those layers."""
        n = self.num_layers
        if isinstance(index, slice):
            count = len(range(n)[index])
            if count == 0:
                raise IndexError(f"Stacked[{index}] selects no layer of {n}")
            layers = _map_arrays(self.layers, _index(index), stack=None, layers=index)
            return type(self)._build(layers, count, self.remat, self.training)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"layer index {index} is out of range for {n} stacked layers")
        return self._layer(i % n)

    def __len__(self) -> int:
        return self.num_layers

    def __iter__(self) -> Iterator[Module]:
        return iter(self.unstack())

    def unstack(self) -> list[Module]:
        """The layers as ``num_layers`` separate modules (per-layer arrays and ``axes``)."""
        return [self._layer(i) for i in range(self.num_layers)]

    # -- the forward pass -----------------------------------------------------------------------
    def __call__(self, x: Any, /, *args: Any, key: jax.Array | None = None, **kwargs: Any) -> Any:
        """Applies layer 0, 1, ..., N-1 to ``x`` (``args``/``kwargs`` go to every layer)."""
        per_layer = _map_arrays(_stop_frozen_rows(self.layers), lambda a: a, False, _ALL)
        leaves, layer_def = tree_util.tree_flatten(per_layer)
        wants_key = key is not None and takes_key(per_layer)
        keys = jax.random.split(key, self.num_layers) if key is not None and wants_key else None

        def body(carry: Any, xs: tuple[list[Any], Any]) -> tuple[Any, Any]:
            layer_leaves, k = xs
            layer = tree_util.tree_unflatten(layer_def, layer_leaves)
            extra = {"key": k} if wants_key else {}
            out, new_layer = stateful_call(layer, carry, *args, **extra, **kwargs)
            if not _same_carry(carry, out):
                raise TypeError(
                    f"{describe(self)}: each layer must return what it takes, so that "
                    f"jax.lax.scan can chain them; {type(layer).__name__} took "
                    f"{_describe_carry(carry)} and returned {_describe_carry(out)} "
                    "(cast the input to the output's dtype, or use a plain list of layers)"
                )
            # State updates (BatchNorm statistics) leave the scan as stacked outputs; leaves
            # that did not change are not emitted, so a stateless layer costs nothing here.
            new_leaves = tree_util.tree_leaves(new_layer)
            return out, [n if n is not o else None for o, n in zip(layer_leaves, new_leaves)]

        if self.remat is not False:
            policy = None if self.remat is True else self.remat
            body = jax.checkpoint(body, prevent_cse=False, policy=policy)
        out, updated = jax.lax.scan(body, x, (leaves, keys), length=self.num_layers)
        if all(u is None for u in updated):
            return out

        def with_new_state(current: Stacked) -> tuple[Any, Stacked]:
            old, treedef = tree_util.tree_flatten(current.layers)
            new = [o if u is None else u for o, u in zip(old, updated)]
            return out, current.replace(layers=tree_util.tree_unflatten(treedef, new))

        return update_state(self, with_new_state)

    # -- hooks: per-layer names for state_dict/summary/freeze/NaN reports, folded repr ----------
    def _jp_stacked_layers(self) -> tuple[str, int]:
        """The field holding the stacked layer, and how many layers (`jparam.filters`)."""
        return "layers", self.num_layers

    # -- the state-view protocol (see jparam.state): PyTorch's per-layer names -----------------
    def state_view(self) -> Module:
        """What `state_dict`, `load_state_dict` and `summary` see: the layers one by one, named
        ``0``, ``1``, ... as in an ``nn.ModuleList``, so checkpoints have PyTorch's names."""
        return _LayerList(tuple(self.unstack())).replace(training=self.training)

    def from_state_view(self, view: _LayerList) -> Stacked:
        """This stack rebuilt from a (loaded) `state_view`: its layers stacked again."""
        items = list(view.items)
        template = _stack(items, f"{type(self).__name__}.load_state_dict")
        return type(self)._build(template, len(items), self.remat, view.training)

    def _jp_repr_items(self) -> list[tuple[str, Any]]:
        abstract = _map_arrays(
            self.layers, lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), stack=False
        )
        items: list[tuple[str, Any]] = [(f"{self.num_layers} x ", abstract)]
        if self.remat is not False:
            items.append(("remat=", self.remat))
        return items


class _LayerList(Module):
    """A `Stacked`'s state view: its layers as an ``nn.ModuleList`` holds them."""

    items: tuple[Module, ...] = field(inline=True)


def _check_num_layers(num_layers: Any) -> None:
    if (
        not isinstance(num_layers, (int, np.integer))
        or isinstance(num_layers, bool)
        or num_layers < 1
    ):
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
