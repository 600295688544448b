"""Tied weights: one parameter under two names, PyTorch's ``decoder.weight = embed.weight``.

A pytree has no sharing: the same `Parameter` at two attributes would become two leaves under
``jax.jit`` and drift apart after one update. `tie` instead puts a `TiedTo` placeholder at the
target (a childless pytree node whose static part names the source), so the model has one leaf
for the shared array: parameters, gradients and optimizers see it once, under the source name,
while `state_dict` lists both names as PyTorch does. The tied model's ``__call__`` fills the
placeholders in first; other methods run on `untie`'s plain copy. The guide is
``docs/guides/tied-weights.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from .conversion import convert_or_report
from .modulebase import ModuleBase
from .parameter import Parameter, Variable, dtype_shape
from .paths import join, map_modules, update_at, walk
from .placeholder import Placeholder

__all__ = ["TiedTo", "tie", "ties", "untie"]

T = TypeVar("T")


class TiedTo(Placeholder):
    """Stands at a tied name in place of its Parameter: a pytree node without children.

    Its static part is ``(source, target, transpose)``, both names relative to the module that
    `jp.tie` was called on, so the tie costs one tuple comparison on a ``jax.jit`` cache lookup
    and survives the model being nested in a bigger one. It holds no array: a layer that reads
    it before the tie is resolved gets an error naming both parameters.
    """

    __slots__ = ()
    named = True  # state_dict writes a tied name, as PyTorch does

    def __init__(self, source: str, target: str, transpose: bool = False) -> None:
        self.aux = (source, target, bool(transpose))

    @property
    def source(self) -> str:
        """The source parameter's name, relative to the module the tie was declared on."""
        return self.aux[0]

    @property
    def target(self) -> str:
        """This placeholder's own name, relative to the same module."""
        return self.aux[1]

    @property
    def transpose(self) -> bool:
        """Whether the target is the source's transpose."""
        return self.aux[2]

    def source_name(self, name: str) -> str:
        """The source's full name, given this placeholder's full name ``name`` in a tree."""
        target = self.aux[1]
        if name == target:
            return self.aux[0]
        if name.endswith("." + target):
            return join(name[: -len(target) - 1], self.aux[0])
        raise ValueError(
            f"the tie placeholder at {name!r} was declared for {target!r} (tied to "
            f"{self.aux[0]!r}); the model was restructured around it. Declare the tie again "
            "with jp.tie on the new model."
        )

    def resolve(self, source: Parameter) -> Parameter:
        """The Parameter this name stands for, given the source Parameter."""
        return source._with_value(_transpose(source.value)) if self.aux[2] else source

    def stands_for(self, name: str, params: Mapping[str, Any]) -> Parameter | None:
        """The `Placeholder` protocol: the source's Parameter (transposed if declared)."""
        source = params.get(self.source_name(name))
        return self.resolve(source) if isinstance(source, Parameter) else None

    def alias_of(self, name: str) -> str:
        """The `Placeholder` protocol: a tied name is another name for its source."""
        return self.source_name(name)

    def describe(self, name: str) -> str:
        """The `Placeholder` protocol: ``tied to source`` (``source.T`` when transposed)."""
        return f"tied to {_shown(self.source_name(name), self.aux[2])}"

    @classmethod
    def prepare_load(
        cls,
        expected: Mapping[str, Any],
        placeholders: Mapping[str, Any],
        state: Any,
        errors: list[str],
    ) -> Any:
        """The `Placeholder` protocol: a tied name's entry loads its source (see `load_tied`)."""
        tied = {n: (node.source_name(n), node.transpose) for n, node in placeholders.items()}
        return load_tied(expected, tied, state, errors)

    def _unresolved(self) -> str:
        t = ".T" if self.aux[2] else ""
        return (
            f"{self.aux[1]} is tied to {self.aux[0]}{t} and holds no array of its own; it is "
            "resolved when the model returned by jp.tie is called. To run another method or a "
            "submodule on its own, resolve the ties first: `jp.untie(model).encode(x)`."
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "aux":
            raise AttributeError(name)
        raise AttributeError(f"TiedTo has no attribute {name!r}: {self._unresolved()}")

    def __jax_array__(self) -> Any:
        raise TypeError(self._unresolved())

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise TypeError(self._unresolved())

    def __repr__(self) -> str:
        t = ", transpose=True" if self.aux[2] else ""
        return f"TiedTo({self.aux[0]!r}{t})"


def _transpose(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract model (jax.eval_shape)
        return jax.ShapeDtypeStruct(tuple(x.shape)[::-1], x.dtype)
    return x.T


# -- the class whose __call__ resolves ------------------------------------------------------------

_TIED_CLASSES: dict[type, type] = {}


def _tied_class(cls: type) -> type:
    """The subclass of ``cls`` that resolves its ties before running ``cls.__call__``."""
    if "_jp_tied_base" in vars(cls):
        return cls
    if cls in _TIED_CLASSES:
        return _TIED_CLASSES[cls]
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_jp_tied_base": cls,
        "__reduce__": lambda self: (_new_tied, (cls,), dict(self.__dict__)),
    }
    # `cls.__call__` would find the metaclass's __call__ when the class defines none.
    call = next((vars(c)["__call__"] for c in cls.__mro__ if "__call__" in vars(c)), None)
    if call is not None:

        @functools.wraps(call)
        def __call__(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            return call(_resolve(self), *args, **kwargs)

        namespace["__call__"] = __call__
    tied = type(cls)(cls.__name__, (cls,), namespace)
    _TIED_CLASSES[cls] = tied
    return tied


def _new_tied(cls: type) -> Any:
    """Unpickles a tied model: its class is created at run time, so pickle names the base."""
    return object.__new__(_tied_class(cls))


def _base(node: Any) -> Any:
    base = vars(type(node)).get("_jp_tied_base")
    if base is None:
        return None
    out = object.__new__(base)
    out.__dict__.update(node.__dict__)
    return out


# -- resolution --------------------------------------------------------------------------------


def _concrete(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _layout(x: Any) -> tuple | None:
    """Where ``x``'s values sit in memory (address, shape, strides, dtype, device), for a
    NumPy array or a PyTorch tensor; None for anything else or a tensor without data."""
    if isinstance(x, np.ndarray):
        return ("numpy", x.ctypes.data, x.shape, x.strides, x.dtype, None)
    if type(x).__module__.split(".")[0] == "torch" and callable(getattr(x, "data_ptr", None)):
        if getattr(x, "is_meta", True) or not x.data_ptr():
            return None
        return ("torch", x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, str(x.device))
    return None


def _same_values(source: Any, target: Any, transpose: bool) -> bool:
    """Whether ``target`` is ``source`` (its transpose if ``transpose``) without reading either:
    the same object, or views of the same memory laid out alike, as the two tied names of a
    PyTorch ``state_dict()`` are."""
    if source is target and not transpose:
        return True
    a, b = _layout(source), _layout(target)
    if a is None or b is None:
        return False
    if transpose:
        a = (*a[:2], a[2][::-1], a[3][::-1], *a[4:])
    return a == b


@functools.partial(jax.jit, static_argnums=2)
def _equal(source: jax.Array, target: jax.Array, transpose: bool) -> jax.Array:
    # One compiled comparison: eagerly, array_equal dispatches (and allocates) op by op.
    return jnp.array_equal(source.T if transpose else source, target, equal_nan=True)


def load_tied(
    expected: Mapping[str, Any],
    tied: Mapping[str, tuple[str, bool]],
    state: Any,
    errors: list[str],
) -> Any:
    """``state`` without its tied names, for `load_state_dict` to load by the source names.

    A tied name given with its source must hold the same values (transposed if declared), else
    an error naming both goes to ``errors``; given alone, it stands in for its source. A
    PyTorch ``state_dict()`` gives both names as views of one tensor: recognised as such, the
    target is dropped unread; otherwise the two are compared by one jitted check, and the source
    is converted once (``load_state_dict`` then takes it as it is).
    """
    if not tied or not isinstance(state, Mapping) or not any(t in state for t in tied):
        return state
    state = dict(state)
    for target, (source, transpose) in tied.items():
        if target not in state or target not in expected:
            continue
        raw, shape = state.pop(target), tuple(expected[target].shape)
        if (
            source in state
            and source in expected
            and tuple(getattr(raw, "shape", ())) == shape
            and _same_values(state[source], raw, transpose)
        ):
            continue  # loading the source loads the target
        value = convert_or_report(target, expected[target], raw, errors)
        if value is None:
            continue
        if source not in state:
            state[source] = _transpose(value) if transpose else value
            continue
        given = convert_or_report(source, expected[source], state[source], [])
        if given is None:
            continue  # load_state_dict reports it
        state[source] = given
        if _concrete(given) and _concrete(value) and not _equal(given, value, transpose):
            shown = f"{source}.T" if transpose else source
            errors.append(
                f"{target} is tied to {shown}, but the state_dict gives them different values; "
                f"give equal values, or only {source}"
            )
    return state


def _placeholders(tree: Any) -> tuple[list[tuple[str, TiedTo]], dict[str, Any]]:
    found, variables = [], {}
    for name, node in walk(tree, placeholders=True):
        if isinstance(node, TiedTo):
            found.append((name, node))
        elif isinstance(node, Variable):
            variables[name] = node
    return found, variables


def _resolve(tree: T) -> T:
    """``tree`` with each placeholder replaced by its source Parameter (transposed if declared).

    Only the modules on the way to a placeholder are copied, so every other module keeps its
    identity (what ``nn.stateful_call`` matches updates by).
    """
    found, variables = _placeholders(tree)
    for name, node in found:
        source_name = node.source_name(name)
        source = variables.get(source_name)
        if not isinstance(source, Parameter):
            what = "nothing" if source is None else type(source).__name__
            raise ValueError(
                f"{name} is tied to {source_name}, but {type(tree).__name__} holds {what} "
                f"there, not a Parameter (was it split out with jp.split? merge it back first)"
            )
        param = node.resolve(source)
        param = source._with_value(source.value) if param is source else param  # its own object
        tree = update_at(tree, name, _put(param))
    return tree


def untie(tree: T) -> T:
    """The plain model: each tied name holds its own Parameter, a copy of its source's value.

    Inside a differentiated function both copies still come from the one source leaf, so
    ``jp.untie(model).encode(x)`` runs any method with the tie in effect. Outside, the result is
    an ordinary model of your own class whose two names are independent from then on (e.g. to
    fine-tune them separately)::

        class AutoEncoder(jp.Module):
            enc: nn.Linear
            dec: nn.Linear

            def __init__(self, *, key):
                k1, k2 = jax.random.split(key)
                self.enc, self.dec = nn.Linear(8, 4, key=k1), nn.Linear(4, 8, key=k2)

            def encode(self, x):
                return self.enc(x)

            def __call__(self, x):
                return self.dec(self.encode(x))

        model = jp.tie(AutoEncoder(key=jax.random.key(0)), "dec.weight", "enc.weight",
                       transpose=True)
        h = jp.untie(model).encode(jnp.ones((2, 8)))
    """
    return map_modules(_resolve(tree), _base)


def ties(tree: Any) -> dict[str, tuple[str, bool]]:
    """``{target: (source, transpose)}`` for every tie in ``tree``, by full name."""
    return {
        name: (node.source_name(name), node.transpose)
        for name, node in walk(tree, placeholders=True)
        if isinstance(node, TiedTo)
    }


def tie(tree: T, target: str, source: str, *, transpose: bool = False) -> T:
    """Returns ``tree`` with the parameter named ``target`` made the one named ``source``.

    ``transpose=True`` ties a 2-D target to the source's transpose (an autoencoder's decoder to
    its encoder). Both must be Parameters of the same dtype and matching shapes; the target's
    own value, flag and metadata are dropped, as when PyTorch assigns
    ``decoder.weight = embed.weight``. See ``docs/guides/tied-weights.md`` for what a tie means
    for names, gradients, optimizers, files and freezing::

        model = nn.ModuleDict({
            "embed": nn.Embedding(10, 4, key=jax.random.key(0)),
            "decoder": nn.Linear(4, 10, bias=False, key=jax.random.key(1)),
            "enc": nn.Linear(8, 4, key=jax.random.key(2)),    # weight (4, 8)
            "dec": nn.Linear(4, 8, key=jax.random.key(3)),    # weight (8, 4)
        })

        model = jp.tie(model, "decoder.weight", "embed.weight")
        model = jp.tie(model, "dec.weight", "enc.weight", transpose=True)
        assert jp.ties(model)["dec.weight"] == ("enc.weight", True)

    Chains never form, so no weight is ever orphaned:

    - a ``source`` that is itself tied is followed to its own source (transposes compose);
    - names already tied to ``target`` are re-pointed to ``source`` with it (``a`` tied to
      ``b``, then ``b`` tied to ``c``: ``a`` and ``b`` are both tied to ``c``);
    - a tie that would close a cycle (``b`` to ``a`` when ``a`` is tied to ``b``) is refused:
      the two names already share one parameter;
    - a ``target`` already tied elsewhere is refused (``jp.untie`` first); declaring the same
      tie again returns ``tree`` unchanged.

    Returns a model of a subclass of ``type(tree)`` (same name, same fields) whose ``__call__``
    resolves the ties; call `tie` again for more ties.
    """
    transpose = _check_tie_args(target, source, transpose)
    nodes = {
        name: node
        for name, node in walk(tree, placeholders=True)
        if isinstance(node, (Variable, TiedTo))
    }
    source, transpose = _follow(nodes, target, source, transpose)
    tgt = nodes.get(target)
    if isinstance(tgt, TiedTo):
        if (tgt.source_name(target), tgt.transpose) == (source, transpose):
            return tree  # declared again: nothing changes
        existing = _shown(tgt.source_name(target), tgt.transpose)
        raise ValueError(
            f"jp.tie: target {target} is already tied to {existing}; a name holds one tie. "
            "Start from the untied model (jp.untie) to tie it differently"
        )
    _check_pair(tree, nodes, target, source, transpose)
    tree = _repoint(tree, nodes, target, source, transpose)
    placeholder = TiedTo(source, target, transpose)
    tree = update_at(tree, target, lambda _: placeholder)
    if isinstance(tree, ModuleBase):
        cls = _tied_class(type(tree))
        if type(tree) is not cls:
            out: T = object.__new__(cls)
            out.__dict__.update(tree.__dict__)
            tree = out
    return tree


def _shown(name: str, transpose: bool) -> str:
    return f"{name}.T" if transpose else name


def _check_tie_args(target: Any, source: Any, transpose: Any) -> bool:
    for what, value in (("target", target), ("source", source)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"jp.tie: {what} must be a parameter name, got {value!r}")
    if not isinstance(transpose, (bool, np.bool_)):
        raise TypeError(f"jp.tie: transpose must be a bool, got {transpose!r}")
    if target == source:
        raise ValueError(f"jp.tie: cannot tie {target!r} to itself")
    return bool(transpose)


def _follow(nodes: Mapping[str, Any], target: str, source: str, transpose: bool):
    """The Parameter ``source`` stands for, following ties; refuses a cycle back to target."""
    path = [source]
    while isinstance(nodes.get(source), TiedTo):
        node = nodes[source]
        source, transpose = node.source_name(source), transpose != node.transpose
        if source == target or source in path:
            cycle = " -> ".join([target, *path, source])
            raise ValueError(
                f"jp.tie: tying {target} to {path[0]} would make a cycle ({cycle}): "
                f"{path[-1]} is already tied to {source}, so {target} and {path[0]} already "
                "share one parameter. Keep the existing tie, or jp.untie the model first"
            )
        path.append(source)
    return source, transpose


def _put(value: Any) -> Callable[[Any], Any]:
    """The `update_at` function that puts ``value`` where the named node was."""
    return lambda _: value


def _check_pair(
    tree: Any, nodes: Mapping[str, Any], target: str, source: str, transpose: bool
) -> None:
    params = [n for n, x in nodes.items() if isinstance(x, Parameter)]
    sample = ", ".join(params[:8]) + (", ..." if len(params) > 8 else "")
    for what, name in (("source", source), ("target", target)):
        node = nodes.get(name)
        if not isinstance(node, Parameter):
            found = "no such name" if node is None else f"a {type(node).__name__}"
            raise KeyError(
                f"jp.tie: {what} {name!r} is not a Parameter of this {type(tree).__name__} "
                f"({found}); parameters are: {sample}"
            )
    src: Parameter = nodes[source]
    tgt: Parameter = nodes[target]
    if transpose and src.ndim != 2:
        raise ValueError(
            f"jp.tie: transpose=True needs a 2-D source, but {source} is {dtype_shape(src)}"
        )
    want = tuple(src.shape)[::-1] if transpose else tuple(src.shape)
    if tuple(tgt.shape) != want or tgt.dtype != src.dtype:
        raise ValueError(
            f"jp.tie: {target} is {dtype_shape(tgt)} but {_shown(source, transpose)} is "
            f"{dtype_shape(jax.ShapeDtypeStruct(want, src.dtype))}; a tie shares one array, "
            "so shapes and dtypes must match (transpose=True for a transposed tie)"
        )


def _repoint(tree: T, nodes: Mapping[str, Any], target: str, source: str, transpose: bool) -> T:
    """``tree`` with every name tied to ``target`` tied to ``source`` instead."""
    for name, node in nodes.items():
        if not isinstance(node, TiedTo) or node.source_name(name) != target:
            continue
        # Keep the names relative to the module the tie was declared on where they fit in it.
        scope = "" if name == node.target else name[: -len(node.target) - 1]
        inside = not scope or source.startswith(scope + ".")
        rel = source[len(scope) + 1 :] if scope and inside else source
        new = TiedTo(rel, node.target if inside else name, transpose != node.transpose)
        tree = update_at(tree, name, _put(new))
    return tree
