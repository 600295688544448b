"""`Module`: an immutable dataclass pytree with PyTorch's module API.

Subclasses are dataclasses registered with JAX's pytree registry *with keys*, so
``jax.tree_util.tree_flatten_with_path`` names attributes and every JAX transform accepts a model
as it is. Fields are declared in the class body; they may be assigned inside ``__init__`` (your own
``__init__`` is fine) and are frozen afterwards. ``jp.field(static=True)`` marks hyperparameters
(ints, strings, functions) that belong in the treedef: changing one retraces, changing an array
does not.

Example::

    class ColorAdjust(jp.Module):
        color_matrix: jp.Parameter
        color_bias: jp.Parameter

        def __init__(self):
            self.color_matrix = jp.Parameter(jnp.eye(3))
            self.color_bias = jp.Parameter(jnp.zeros(3))

        def __call__(self, x):
            return x @ self.color_matrix + self.color_bias

Unflattening (what ``jax.jit`` does to every output) never runs ``__init__``: it fills the
instance dict directly, so user code in ``__init__`` may be arbitrary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator
from typing import Any, ClassVar, TypeVar

import jax
import numpy as np
from jax import tree_util

from .parameter import Buffer, Parameter

__all__ = ["Module", "field"]

M = TypeVar("M", bound="Module")
_new = object.__new__
_STATIC = "jparam_static"
_INLINE = "jparam_inline"
_TRAINING = "training"
# ids of module instances whose __init__ is running: only they accept attribute assignment.
_CONSTRUCTING: set[int] = set()


def field(*, static: bool = False, inline: bool = False, **kwargs: Any) -> Any:
    """Declares a module field; ``static=True`` puts it in the treedef (hyperparameters).

    ``inline=True`` (for one list or tuple field) names its items directly under the module,
    ``0``, ``1``, ... instead of ``field.0``: PyTorch's ``nn.Sequential``/``nn.ModuleList``
    naming, so their ``state_dict`` keys load unchanged.

    Takes ``dataclasses.field``'s keyword arguments (``default``, ``default_factory``, ...).
    Static values must be hashable: they are compared on every ``jax.jit`` cache lookup.
    """
    if static and inline:
        raise TypeError("a field cannot be both static and inline")
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[_STATIC] = static
    metadata[_INLINE] = inline
    return dataclasses.field(metadata=metadata, **kwargs)


def _register(cls: type) -> None:
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
    d = m.__dict__
    return ({dyn}), ({stat})

def flatten_with_keys(m):
    d = m.__dict__
    return ({keyed}), ({stat})

def unflatten(aux, children):
    m = new(cls)
    m.__dict__.update({{{", ".join(put)}}})
    return m
"""
    namespace = {
        "new": _new,
        "cls": cls,
        "keys": [tree_util.GetAttrKey(n) for n in dynamic],
        "SequenceKey_range": lambda n: map(tree_util.SequenceKey, range(n)),
    }
    exec(compile(source, f"<jparam pytree functions for {cls.__qualname__}>", "exec"), namespace)
    cls._jp_dynamic = dynamic
    cls._jp_static = static[:-1]
    cls._jp_inline = inline_name
    tree_util.register_pytree_with_keys(
        cls,
        namespace["flatten_with_keys"],
        namespace["unflatten"],
        flatten_func=namespace["flatten"],
    )


class _ModuleMeta(type):
    """Makes every subclass a registered dataclass and runs ``__init__`` with assignment open."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        custom_init = "__init__" in namespace or any(
            getattr(b, "_jp_custom_init", False) for b in bases
        )
        cls._jp_custom_init = custom_init
        cls = dataclasses.dataclass(cls, init=not custom_init, repr=False, eq=False)
        for f in dataclasses.fields(cls):
            if f.name in _MODULE_API:
                raise TypeError(
                    f"{name}.{f.name}: the field name {f.name!r} is taken by jp.Module's API; "
                    "choose another name."
                )
        _register(cls)
        return cls

    def __call__(cls, *args, **kwargs):
        obj = cls.__new__(cls)
        key = id(obj)
        _CONSTRUCTING.add(key)
        try:
            obj.__init__(*args, **kwargs)
        finally:
            _CONSTRUCTING.discard(key)
        _finish_construction(obj)
        return obj


def _finish_construction(obj: Module) -> None:
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
    for name in cls._jp_dynamic:
        _check_dynamic(cls, name, d[name])


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
    leaves = tree_util.tree_leaves(value, is_leaf=lambda x: isinstance(x, Module))
    for leaf in leaves:
        if isinstance(leaf, (Module, *_ARRAY_LEAVES)) or hasattr(leaf, "__jax_array__"):
            continue
        what = "a function" if callable(leaf) else f"{type(leaf).__name__} {leaf!r:.40}"
        raise TypeError(
            f"{cls.__name__}.{name} holds {what}, which jax.jit cannot trace. Declare "
            f"hyperparameters static: `{name}: ... = jp.field(static=True)`; wrap numbers "
            "that should be traced in jnp.asarray(...) or jp.Parameter(...)."
        )


class Module(metaclass=_ModuleMeta):
    """Base class for models: an immutable pytree with PyTorch's module methods.

    Every method is pure: where PyTorch mutates (``load_state_dict``, ``train``, ``half``,
    ``requires_grad_``) it returns a new module and leaves this one untouched. Names follow
    PyTorch: attribute names joined by ``.``, list/tuple indices as numbers, dict keys as they
    are, so a module tree built like a PyTorch one has the same ``state_dict`` keys in the same
    order.

    Every module has a static ``training`` flag (``True`` at construction); ``train()`` and
    ``eval()`` return copies with it set throughout. Changing it retraces jitted functions.
    """

    _jp_dynamic: ClassVar[tuple[str, ...]] = ()
    _jp_static: ClassVar[tuple[str, ...]] = ()
    _jp_inline: ClassVar[str | None] = None

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
    def replace(self: M, **fields: Any) -> M:
        """Returns a copy with the given fields replaced (``__init__`` is not run again).

        Like ``dataclasses.replace`` but safe for modules with a custom ``__init__``::

            model = model.replace(head=nn.Linear(768, 10, key=key))
        """
        cls = type(self)
        unknown = [n for n in fields if n not in self.__dataclass_fields__ and n != _TRAINING]
        if unknown:
            valid = ", ".join((*cls._jp_dynamic, *cls._jp_static))
            raise TypeError(
                f"{cls.__name__}.replace() got unknown field(s) {', '.join(map(repr, unknown))}; "
                f"fields are: {valid}"
            )
        for name, value in fields.items():
            if name in cls._jp_static or name == _TRAINING:
                _check_static(cls, name, value)
            else:
                if name == cls._jp_inline:
                    _check_inline(cls, name, value)
                _check_dynamic(cls, name, value)
        return self._copy_with(fields)

    def _copy_with(self: M, fields: dict[str, Any]) -> M:
        out = _new(type(self))
        out.__dict__.update(self.__dict__)
        out.__dict__.update(fields)
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

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Yields the direct submodules; modules inside list/dict fields are named ``field.i``."""
        return _paths.named_children(self)

    def children(self) -> Iterator[Module]:
        """Yields the direct submodules."""
        return (m for _, m in self.named_children())

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """Yields ``(name, module)`` pre-order, starting with ``("", self)`` as PyTorch does."""
        return _paths.named_modules(self, prefix=prefix, remove_duplicate=remove_duplicate)

    def modules(self) -> Iterator[Module]:
        """Yields this module and every submodule, pre-order."""
        return (m for _, m in self.named_modules())

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Counts parameter elements (each shared parameter once)."""
        return sum(p.size for p in self.parameters() if p.trainable or not trainable_only)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]:
        """Ordered ``name -> array`` of parameters and persistent buffers, PyTorch's keys.

        With ``keep_vars=True`` the values are the Parameter/Buffer objects themselves.
        """
        return _state.state_dict(self, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self: M, state_dict: Any, strict: bool = True) -> Any:
        """Returns a new module with values from ``state_dict`` (see `jp.load_state_dict`).

        ``strict=True`` returns the module or raises one error listing every missing and
        unexpected key; ``strict=False`` returns ``(module, IncompatibleKeys)`` like PyTorch.
        Shape and dtype-kind mismatches always raise.
        """
        return _state.load_state_dict(self, state_dict, strict=strict)

    # -- transformations ------------------------------------------------------------------------
    def apply(self: M, fn: Callable[[Module], Module | None]) -> M:
        """Maps ``fn`` over every submodule, children before parents, and this module last.

        ``fn`` returns the replacement module, or ``None`` to keep the one it was given, so a
        PyTorch-style ``init_weights(m)`` that only handles some types works unchanged::

            def init(m):
                if isinstance(m, nn.Linear):
                    return m.replace(bias=m.bias.replace(jnp.zeros_like(m.bias.value)))

            model = model.apply(init)
        """
        return _paths.map_modules(self, fn)

    def freeze(self: M, *patterns: str) -> M:
        """Returns a copy whose parameters matching any glob (all if none given) are frozen."""
        return _surgery.set_trainable(self, False, patterns)

    def unfreeze(self: M, *patterns: str) -> M:
        """Returns a copy whose parameters matching any glob (all if none given) are trainable."""
        return _surgery.set_trainable(self, True, patterns)

    def requires_grad_(self: M, requires_grad: bool = True) -> M:
        """PyTorch's spelling of `freeze()` / `unfreeze()` for the whole module (a copy)."""
        return self.unfreeze() if requires_grad else self.freeze()

    def train(self: M, mode: bool = True) -> M:
        """Returns a copy with ``training=mode`` in this module and every submodule."""
        mode = bool(mode)
        return _paths.map_modules(self, lambda m: m._copy_with({_TRAINING: mode}))

    def eval(self: M) -> M:
        """Returns a copy in evaluation mode (``training=False`` throughout)."""
        return self.train(False)

    def astype(self: M, dtype: Any) -> M:
        """Returns a copy with every floating array cast to ``dtype``; integers keep theirs."""
        return _precision.astype(self, dtype)

    def half(self: M) -> M:
        """Floating arrays to float16 (a copy)."""
        return self.astype("float16")

    def float(self: M) -> M:
        """Floating arrays to float32 (a copy)."""
        return self.astype("float32")

    def double(self: M) -> M:
        """Floating arrays to float64 (a copy); needs ``jax_enable_x64`` switched on."""
        return self.astype("float64")

    def bfloat16(self: M) -> M:
        """Floating arrays to bfloat16 (a copy)."""
        return self.astype("bfloat16")

    def to(self: M, device_or_sharding: Any) -> M:
        """Returns a copy placed on a device, a ``jax.sharding.Sharding``, or ``"cpu"``/``"gpu"``.

        A dtype is also accepted (``model.to(jnp.bfloat16)``), as in PyTorch.
        """
        return _precision.to(self, device_or_sharding)

    # -- display ----------------------------------------------------------------------------
    def summary(self) -> str:
        """A table of parameters and buffers: name, shape, dtype, trainable, count, totals."""
        return _summary.summary(self)

    def __repr__(self) -> str:
        return _summary.module_repr(self)


_MODULE_API = frozenset(n for n in vars(Module) if not n.startswith("_"))

# Imported last: these modules build on `Module` (they import it from here).
from . import paths as _paths  # noqa: E402
from . import precision as _precision  # noqa: E402
from . import state as _state  # noqa: E402
from . import summary as _summary  # noqa: E402
from . import surgery as _surgery  # noqa: E402
