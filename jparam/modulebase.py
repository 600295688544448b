"""`ModuleBase`: the module machinery of the core, an immutable dataclass pytree.

Subclasses are dataclasses registered with JAX's pytree registry *with keys*, so
``jax.tree_util.tree_flatten_with_path`` names attributes and every JAX transform accepts a model
as it is. Fields are declared in the class body; they may be assigned inside ``__init__`` (your own
``__init__`` is fine) and are frozen afterwards. ``jp.field(static=True)`` marks hyperparameters
(ints, strings, functions) that belong in the treedef: changing one retraces, changing an array
does not. Users subclass `jp.Module` (`jparam.module`), which adds PyTorch's methods that are
features (state dicts, freezing, casting, summaries) on top of this class.

Unflattening never runs ``__init__``: it fills the instance dict directly, so user code in
``__init__`` may be arbitrary. On ``jax.jit``'s C++ dispatch path a whole module is one node,
returned as a lazy root that is built when first looked at (`jparam.fastpath`).

At the end of construction one identity walk over the new module keeps PyTorch's habits honest:
the same Parameter object (or the same layer) at two places is shared, which the class's
``_jp_tie_shared(module, later, first)`` hook turns into a tie (`jp.Module` ties as ``jp.tie``
would; the core alone refuses); a module that contains itself or a shared Buffer is refused; and
an array that is neither a Parameter nor a Buffer draws a `PlainArrayWarning` (it is not named,
saved or trained).

Field names may not shadow the API: a class that sets ``_jp_defines_api = True`` in its body
adds its public attribute names to the names refused as fields in every subclass.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import jax
import numpy as np
from jax import tree_util

from . import paths as _paths
from .fastpath import CONSTRUCTING as _CONSTRUCTING
from .fastpath import (
    FastNode,
    FieldDefault,
    instance_dict,
    raw_dict,
    register_module,
    set_raw_dict,
)
from .parameter import Buffer, Parameter, Variable, dtype_shape

__all__ = ["ModuleBase", "PlainArrayWarning", "describe", "field"]

M = TypeVar("M", bound="ModuleBase")
_new = object.__new__
_STATIC = "jparam_static"
_INLINE = "jparam_inline"
_PLAIN = "jparam_plain_arrays"
_TRAINING = "training"


class PlainArrayWarning(UserWarning):
    """A module holds an array that is neither a `Parameter` nor a `Buffer`.

    As in PyTorch such an array is not a parameter: ``named_parameters``, ``state_dict``,
    ``jp.save`` and optimizers never see it (``jax.jit`` still traces it). Warned once per class
    and field; declare the field ``jp.field(plain_arrays=True)`` when that is what you mean, or
    ``warnings.filterwarnings("ignore", category=jp.PlainArrayWarning)``.
    """


def field(
    *, static: bool = False, inline: bool = False, plain_arrays: bool = False, **kwargs: Any
) -> Any:
    """Declares a module field; ``static=True`` puts it in the treedef (hyperparameters).

    ``inline=True`` (for one list or tuple field) names its items directly under the module,
    ``0``, ``1``, ... instead of ``field.0``: PyTorch's ``nn.Sequential``/``nn.ModuleList``
    naming, so their ``state_dict`` keys load unchanged.

    ``plain_arrays=True`` says the field holds arrays on purpose that are neither Parameters nor
    Buffers (a mask, a loss scale, an Equinox layer): no `PlainArrayWarning` for it.

    Takes ``dataclasses.field``'s keyword arguments (``default``, ``default_factory``, ...).
    Static values must be hashable: they are compared on every ``jax.jit`` cache lookup.
    """
    if static and inline:
        raise TypeError("a field cannot be both static and inline")
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[_STATIC] = static
    metadata[_INLINE] = inline
    metadata[_PLAIN] = plain_arrays
    return dataclasses.field(metadata=metadata, **kwargs)


def _register(cls: type[ModuleBase]) -> None:
    """Registers ``cls`` with flatten/unflatten functions generated for its exact fields.

    Generated code reads and writes the instance dict with literal keys: no loops, no zips, no
    ``__init__``. This is the per-node cost every jitted call pays on its inputs and outputs.
    An inline field contributes its items as children (keyed ``[0]``, ``[1]``, ...) and its
    length and container type to the static part.
    """
    fields = dataclasses.fields(cls)
    dynamic = tuple(f.name for f in fields if not f.metadata.get(_STATIC, False))
    static = (*(f.name for f in fields if f.metadata.get(_STATIC, False)), _TRAINING)
    inline = [f.name for f in fields if f.metadata.get(_INLINE, False)]
    if len(inline) > 1:
        raise TypeError(f"{cls.__name__}: at most one field can be inline, got {inline}")
    inline_name = inline[0] if inline else None
    get_dynamic, get_keyed, put = [], [], []
    for i, n in enumerate(dynamic):
        if n == inline_name:
            get_dynamic.append(f"*d[{n!r}]")
            get_keyed.append(f"*zip(SequenceKey_range(len(d[{n!r}])), d[{n!r}])")
            put.append(f"{n!r}: aux[-1](children[{i}:{i} + aux[-2]])")
        else:
            get_dynamic.append(f"d[{n!r}]")
            get_keyed.append(f"(keys[{i}], d[{n!r}])")
            shift = " - 1 + aux[-2]" if inline_name and i > dynamic.index(inline_name) else ""
            put.append(f"{n!r}: children[{i}{shift}]")
    get_static = [f"d[{n!r}]" for n in static]
    if inline_name:
        get_static += [f"len(d[{inline_name!r}])", f"type(d[{inline_name!r}])"]
    put += [f"{n!r}: aux[{i}]" for i, n in enumerate(static)]
    dyn, keyed, stat = (
        ", ".join(x) + ("," if x else "") for x in (get_dynamic, get_keyed, get_static)
    )
    source = f"""
def flatten(m):
    d = getd(m) or fields(m)
    return ({dyn}), ({stat})

def flatten_with_keys(m):
    d = getd(m) or fields(m)
    return ({keyed}), ({stat})

def unflatten(aux, children):
    m = new(cls)
    setd(m, {{{", ".join(put)}}})
    return m
"""
    namespace: dict[str, Any] = {
        "new": _new,
        "getd": raw_dict,
        "setd": set_raw_dict,
        "fields": instance_dict,
        "cls": cls,
        "keys": [tree_util.GetAttrKey(n) for n in dynamic],
        "SequenceKey_range": lambda n: map(tree_util.SequenceKey, range(n)),
    }
    exec(compile(source, f"<jparam pytree functions for {cls.__qualname__}>", "exec"), namespace)
    cls._jp_dynamic = dynamic
    cls._jp_static = static[:-1]
    cls._jp_inline = inline_name
    cls._jp_plain_ok = frozenset(f.name for f in fields if f.metadata.get(_PLAIN, False))
    register_module(
        cls, namespace["flatten_with_keys"], namespace["unflatten"], namespace["flatten"]
    )


class _ModuleMeta(type):
    """Makes every subclass a registered dataclass and runs ``__init__`` with assignment open."""

    def __new__(mcs, name, bases, namespace, /, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        custom_init = "__init__" in namespace or any(
            getattr(b, "_jp_custom_init", False) for b in bases
        )
        cls._jp_custom_init = custom_init
        api = frozenset().union(*(getattr(b, "_jp_api", ()) for b in bases))
        if namespace.get("_jp_defines_api", False):
            api |= {n for n in namespace if not n.startswith("_")}
        cls._jp_api = api
        cls = dataclasses.dataclass(cls, init=not custom_init, repr=False, eq=False)
        for f in dataclasses.fields(cls):
            if f.name in api:
                raise TypeError(
                    f"{name}.{f.name}: the field name {f.name!r} is taken by jp.Module's API; "
                    "choose another name."
                )
            if f.name in cls.__dict__:  # where dataclasses leaves a default: see FieldDefault
                setattr(cls, f.name, FieldDefault(f.name, cls.__dict__[f.name]))
        _register(cls)
        return cls

    def __call__(cls, /, *args, **kwargs):
        obj = cls.__new__(cls)
        key = id(obj)
        _CONSTRUCTING.add(key)
        try:
            obj.__init__(*args, **kwargs)
        finally:
            _CONSTRUCTING.discard(key)
        return _finish_construction(obj)


def _finish_construction(obj: ModuleBase) -> ModuleBase:
    """Fills defaults, checks every field, and ties Parameters found at two places.

    Returns ``obj``, or what the class's ``_jp_tie_shared`` hook makes of it when it holds one
    Parameter or layer at two or more paths, which in PyTorch is weight tying.
    """
    cls = type(obj)
    d = obj.__dict__
    missing = []
    for f in dataclasses.fields(cls):
        if f.name in d:
            continue
        if f.default is not dataclasses.MISSING:
            d[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            d[f.name] = f.default_factory()
        else:
            missing.append(f.name)
    if missing:
        raise TypeError(
            f"{cls.__name__}.__init__ did not set field(s) {', '.join(map(repr, missing))}; "
            "assign every declared field (None is allowed) or give it a default."
        )
    d.setdefault(_TRAINING, True)
    if cls._jp_inline is not None:
        _check_inline(cls, cls._jp_inline, d[cls._jp_inline])
    for name in cls._jp_static:
        _check_static(cls, name, d[name])
    # Before anything flattens the fields: a cycle would crash the interpreter.
    shared = _Scan(cls, obj).run({n: d[n] for n in cls._jp_dynamic})
    for name in cls._jp_dynamic:
        _check_dynamic(cls, name, d[name])
    for later, first in shared:
        obj = cls._jp_tie_shared(obj, later, first)
    return obj


def _plain_array(x: Any) -> bool:
    """An array leaf that is neither a Parameter nor a Buffer (PRNG keys excluded)."""
    if not isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        return False
    return not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class _Scan:
    """One identity walk of a module being built, or of the values given to ``replace``.

    Refuses cycles (a module or container that contains itself, which no pytree walk survives).
    For a module being built it also refuses shared Buffers, collects the ``(later, first)``
    names of each Parameter found at two or more paths, and warns once per class and field about
    plain arrays in the module's own fields (those inside a child Module were its own
    constructor's business). Names are `jparam.paths.walk`'s, so they are what `jp.tie` takes.
    """

    __slots__ = ("cls", "on_path", "plain", "root", "seen", "shared")

    def __init__(self, cls: type[ModuleBase], root: ModuleBase | None) -> None:
        """``root``: the module being built; ``None`` checks values for cycles only."""
        self.cls = cls
        self.root = id(root)
        # the containers between the root and the current node
        self.on_path = set() if root is None else {self.root}
        # id of each Parameter/Buffer -> its first name (None: nothing is being built)
        self.seen: dict[int, str] | None = None if root is None else {}
        self.shared: list[tuple[str, str]] = []
        self.plain: dict[str, list[str]] = {}  # field -> plain arrays in it, named and shaped

    def run(self, fields: dict[str, Any]) -> list[tuple[str, str]]:
        """Walks ``{field name: value}``; returns the shared Parameters' ``(later, first)``."""
        cls = self.cls
        for name, value in fields.items():
            own = self.seen is not None and name not in cls._jp_plain_ok
            if name == cls._jp_inline and type(value) in (list, tuple):
                for i, item in enumerate(value):
                    self.visit(item, str(i), name, own)
            else:
                self.visit(value, name, name, own)
        if self.plain:
            self.warn()
        return self.shared

    def visit(self, node: Any, name: str, field: str, own: bool) -> None:
        if isinstance(node, Variable):
            first = name if self.seen is None else self.seen.setdefault(id(node), name)
            if first is not name:
                self.repeated(node, name, first)
            return
        if node is None or isinstance(node, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            if own and node is not None and _plain_array(node):
                self.plain.setdefault(field, []).append(f"{name} {dtype_shape(node)}")
            return
        if id(node) in self.on_path:
            self.cycle(node, name, field)
        self.on_path.add(id(node))
        own = own and not isinstance(node, ModuleBase)
        for child_name, child in _paths.children(node):
            self.visit(child, _paths.join(name, child_name), field, own)
        self.on_path.discard(id(node))

    def repeated(self, node: Variable, name: str, first: str) -> None:
        if isinstance(node, Parameter):
            self.shared.append((name, first))
            return
        raise ValueError(
            f"{self.cls.__name__}: {first} and {name} are the same jp.Buffer object (one buffer, "
            "or one layer holding buffers, assigned at two places). Shared Parameters are tied "
            "as in PyTorch, but a Buffer cannot be: each place would update its own copy after "
            "jax.jit. Give each place its own layer or buffer."
        )

    def cycle(self, node: Any, name: str, field: str) -> None:
        what = f"the {type(node).__name__} that contains it"
        if id(node) == self.root:
            what = f"the {self.cls.__name__} being built (itself)"
        raise ValueError(
            f"{self.cls.__name__}.{field} holds {what} at {name!r}: a module or container "
            "cannot contain itself, directly or through a list, dict or submodule. Its tree "
            "would be infinite and flattening it would crash the interpreter. Hold the parts "
            "instead, and use `self` inside methods to reach the module itself."
        )

    def warn(self) -> None:
        for field, names in self.plain.items():
            key = (self.cls, field)
            if key in _PLAIN_WARNED:
                continue
            _PLAIN_WARNED.add(key)
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            warnings.warn(
                f"{self.cls.__name__}.{field} holds plain arrays ({shown}), neither jp.Parameter "
                "nor jp.Buffer: as in PyTorch they are not parameters, so named_parameters, "
                "state_dict, jp.save and optimizers never see them. Wrap one in "
                "jp.Parameter(...) to train it or jp.Buffer(...) to save it. If it is meant to "
                f"stay plain, declare `{field}: ... = jp.field(plain_arrays=True)`, or "
                'silence this: warnings.filterwarnings("ignore", category=jp.PlainArrayWarning).',
                PlainArrayWarning,
                stacklevel=5,
            )


_PLAIN_WARNED: set[tuple[type, str]] = set()


def _check_static(cls: type, name: str, value: Any) -> None:
    if isinstance(value, (jax.Array, np.ndarray)) or not isinstance(value, Hashable):
        raise TypeError(
            f"{cls.__name__}.{name} is a static field but holds {type(value).__name__} "
            f"{value!r:.60}; static values live in the treedef and must be hashable "
            "(use a tuple instead of a list; arrays belong in non-static fields)."
        )
    try:
        hash(value)
    except TypeError as e:
        raise TypeError(
            f"{cls.__name__}.{name} is a static field but is not hashable: {e}"
        ) from None


def _check_inline(cls: type, name: str, value: Any) -> None:
    if type(value) not in (list, tuple):
        raise TypeError(
            f"{cls.__name__}.{name} is an inline field and must hold a list or tuple, "
            f"got {type(value).__name__}"
        )


_ARRAY_LEAVES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


def _check_dynamic(cls: type, name: str, value: Any) -> None:
    """Refuses leaves that ``jax.jit`` cannot trace, naming the field and the fix."""
    leaves = tree_util.tree_leaves(value, is_leaf=lambda x: isinstance(x, ModuleBase))
    for leaf in leaves:
        if isinstance(leaf, (ModuleBase, *_ARRAY_LEAVES)) or hasattr(leaf, "__jax_array__"):
            continue
        what = "a function" if callable(leaf) else f"{type(leaf).__name__} {leaf!r:.40}"
        raise TypeError(
            f"{cls.__name__}.{name} holds {what}, which jax.jit cannot trace. Declare "
            f"hyperparameters static: `{name}: ... = jp.field(static=True)`; wrap numbers "
            "that should be traced in jnp.asarray(...) or jp.Parameter(...)."
        )


class ModuleBase(FastNode, metaclass=_ModuleMeta):
    """The core of `jp.Module` (subclass that): an immutable dataclass pytree, its walks,
    copies and training flag. `jp.Module` documents the behaviour users see."""

    _jp_dynamic: ClassVar[tuple[str, ...]] = ()
    _jp_static: ClassVar[tuple[str, ...]] = ()
    _jp_inline: ClassVar[str | None] = None
    _jp_defines_api = True

    if TYPE_CHECKING:
        # For type checkers only: nothing here exists at run time (so nothing becomes a field).
        # `_ModuleMeta` sets these on every class.
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
        _jp_plain_ok: ClassVar[frozenset[str]]
        _jp_custom_init: ClassVar[bool]
        _jp_api: ClassVar[frozenset[str]]

        # A class without its own ``__init__`` gets the dataclass one, which takes its fields;
        # one with its own (or a parent's) ``__init__`` is checked against that signature.
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

        # Layers define ``__call__`` with their own signature; a field typed as a base class
        # (``layer: jp.Module``) is still callable.
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def _jp_tie_shared(self: M, later: str, first: str) -> M:
        """What construction does with one Parameter found at ``later`` and ``first``.

        The core cannot tie (`jparam.tying` is a feature above it): it refuses. `jp.Module`
        overrides this to tie as ``jp.tie(module, later, first)``.
        """
        raise ValueError(
            f"{type(self).__name__}: {later} and {first} are the same Parameter; "
            f"{type(self).__name__} derives from the core ModuleBase, which cannot tie shared "
            "parameters: derive from jp.Module."
        )

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (static; set by `train`/`eval`)."""
        return self.__dict__[_TRAINING]

    def __setattr__(self, name: str, value: Any) -> None:
        if id(self) not in _CONSTRUCTING:
            raise dataclasses.FrozenInstanceError(
                f"cannot set {type(self).__name__}.{name}: jparam modules are immutable "
                f"pytrees. Make a changed copy instead: `module = module.replace({name}=...)`, "
                'or for a nested part `model = jp.at(model, "path.to.part").set(...)`.'
            )
        if name == _TRAINING:
            self.__dict__[_TRAINING] = bool(value)
            return
        if name not in self.__dataclass_fields__:
            raise AttributeError(
                f"{type(self).__name__} has no field {name!r}; declare it in the class body "
                f"(`{name}: jp.Parameter`, `{name}: nn.Linear`, or "
                f"`{name}: int = jp.field(static=True)` for a hyperparameter)."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(
            f"cannot delete {type(self).__name__}.{name}: modules are immutable; "
            f"use `module.replace({name}=None)`."
        )

    # -- copies ---------------------------------------------------------------------------
    def replace(self: M, /, **fields: Any) -> M:
        """Returns a copy with the given fields replaced (``__init__`` is not run again).

        Like ``dataclasses.replace`` but safe for modules with a custom ``__init__``::

            from collections import OrderedDict

            key = jax.random.key(0)
            model = nn.Sequential(OrderedDict(head=nn.Linear(8, 4, key=key)))
            model = model.replace(head=nn.Linear(8, 2, key=key))
            assert model.head.out_features == 2

        A value that contains itself is refused. Unlike construction, placing one Parameter or
        layer at a second place here does not tie it: use `jp.tie` to tie names.
        """
        cls = type(self)
        unknown = [n for n in fields if n not in self.__dataclass_fields__ and n != _TRAINING]
        if unknown:
            valid = ", ".join((*cls._jp_dynamic, *cls._jp_static))
            raise TypeError(
                f"{cls.__name__}.replace() got unknown field(s) {', '.join(map(repr, unknown))}; "
                f"fields are: {valid}"
            )
        dynamic = [n for n in fields if n in cls._jp_dynamic]
        for name, value in fields.items():
            if name not in dynamic:
                _check_static(cls, name, value)
            elif name == cls._jp_inline:
                _check_inline(cls, name, value)
        if dynamic:
            # Before anything flattens the new values: a cycle would crash the interpreter.
            _Scan(cls, None).run({n: fields[n] for n in dynamic})
        for name in dynamic:
            _check_dynamic(cls, name, fields[name])
        return self._copy_with(fields)

    def _copy_with(self: M, fields: dict[str, Any]) -> M:
        out = _new(type(self))
        set_raw_dict(out, {**instance_dict(self), **fields})
        return out

    # -- names and walks (see jparam.paths) --------------------------------------------------
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Yields ``(name, Parameter)`` in PyTorch's order: own parameters, then children's."""
        return _paths.named_parameters(
            self, prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate
        )

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Yields every Parameter (trainable and frozen) once."""
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Buffer]]:
        """Yields ``(name, Buffer)`` in PyTorch's order."""
        return _paths.named_buffers(
            self, prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate
        )

    def buffers(self, recurse: bool = True) -> Iterator[Buffer]:
        """Yields every Buffer once."""
        return (b for _, b in self.named_buffers(recurse=recurse))

    def named_children(self) -> Iterator[tuple[str, ModuleBase]]:
        """Yields the direct submodules; modules inside list/dict fields are named ``field.i``."""
        return _paths.named_children(self)

    def children(self) -> Iterator[ModuleBase]:
        """Yields the direct submodules."""
        return (m for _, m in self.named_children())

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, ModuleBase]]:
        """Yields ``(name, module)`` pre-order, starting with ``("", self)`` as PyTorch does."""
        return _paths.named_modules(self, prefix=prefix, remove_duplicate=remove_duplicate)

    def modules(self) -> Iterator[ModuleBase]:
        """Yields this module and every submodule, pre-order."""
        return (m for _, m in self.named_modules())

    # -- transformations ------------------------------------------------------------------------
    def apply(self: M, fn: Callable[[ModuleBase], ModuleBase | None]) -> M:
        """Maps ``fn`` over every submodule, children before parents, and this module last.

        ``fn`` returns the replacement module, or ``None`` to keep the one it was given, so a
        PyTorch-style ``init_weights(m)`` that only handles some types works unchanged::

            model = nn.Sequential(nn.Linear(4, 8, key=jax.random.key(0)), nn.ReLU(),
                                  nn.Linear(8, 2, key=jax.random.key(1)))

            def init(m):
                if isinstance(m, nn.Linear):
                    return m.replace(bias=m.bias.replace(jnp.zeros_like(m.bias.value)))

            model = model.apply(init)
            assert not model[2].bias.value.any()
        """
        return _paths.map_modules(self, fn)

    def train(self: M, mode: bool = True) -> M:
        """Returns a copy with ``training=mode`` in this module and every submodule."""
        mode = bool(mode)
        return _paths.map_modules(self, lambda m: m._copy_with({_TRAINING: mode}))

    def eval(self: M) -> M:
        """Returns a copy in evaluation mode (``training=False`` throughout)."""
        return self.train(False)


def describe(layer: ModuleBase) -> str:
    """``Linear(in_features=4, out_features=3)``: the layer and its hyperparameters, for errors."""
    static = type(layer)._jp_static
    args = ", ".join(f"{name}={layer.__dict__[name]!r}" for name in static)
    return f"{type(layer).__name__}({args})"
