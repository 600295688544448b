"""A module as one node on ``jax.jit``'s C++ dispatch path, rebuilt only when it is looked at.

Every call of a jitted function flattens its arguments and unflattens its outputs. JAX does
that in C++ for dicts, lists and tuples, but it calls back into Python for every registered
node: a model of 8 layers is 25 Module and Parameter nodes, each flattened on the way in and
rebuilt on the way out. A training step that takes and returns the model paid for that on
every call: 13% to 27% of a small MLP's step on two CPU cores (BENCHMARKS.md).

JAX keeps a separate pytree registry for that C++ fast path only (``dispatch_registry``):
arguments are flattened with it, and outputs are rebuilt from a treedef made with it. There
each module class is registered with the functions below, so a whole model is *one* node:

- Flattening returns the model's leaves and a `Plan` (its ordinary treedef, interned). A model
  that a jitted call returned, or one flattened before, keeps both in a slot, so flattening it
  again costs one attribute read. Lists and dicts inside a model are mutable, so the cache
  remembers them and their items, and is used only while they are unchanged.
- Rebuilding creates only the root object, with an empty instance dict and the leaves in the
  slot (a *lazy* root). A training loop that passes the model straight back into the step
  never builds anything else. The first look at it (an attribute, ``__dict__``, ``vars``,
  pickling, any walk or ``jax.tree_util`` call) builds the rest at once, with code generated
  per `Plan`, and from then on it is an ordinary module.

Everywhere else (``jax.tree_util``, tracing, ``jax.grad``, optax), JAX uses its default
registry, where models are trees of Module and Parameter nodes as before: treedefs, key paths,
``is_leaf`` walks and retracing are unchanged. Three doors keep the lazy root invisible, and
each builds it: ``__dict__`` (so ``vars``, pickling and every jparam walk), ``__getattr__`` (a
field read finds nothing in the empty dict), and `FieldDefault`, the class attribute where
dataclasses would leave a field's default (which would otherwise answer a field read).

The registry is JAX's private ``jax._src.tree_util.dispatch_registry``. Where a JAX version
lacks it, or the environment sets ``JPARAM_NO_FASTPATH=1`` before jparam is imported (to rule
the fast path out when hunting a bug), `ACTIVE` is False: modules register the ordinary way
and nothing here runs.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

from jax import tree_util

from .parameter import Variable
from .placeholder import Placeholder

__all__ = [
    "ACTIVE",
    "CONSTRUCTING",
    "FastNode",
    "FieldDefault",
    "Plan",
    "instance_dict",
    "is_lazy",
    "materialize",
    "raw_dict",
    "register_module",
    "set_raw_dict",
]

try:  # JAX's private registries; see the module docstring.
    from jax._src import tree_util as _jax_tree_util

    _DISPATCH = _jax_tree_util.dispatch_registry
    _all_registries = _jax_tree_util._all_registries
    ACTIVE = _DISPATCH in _all_registries and not os.environ.get("JPARAM_NO_FASTPATH")
except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
    ACTIVE = False

_new = object.__new__
_NoneType = type(None)
_LOCK = threading.RLock()
_MAX_PLANS = 4096

# ids of modules whose __init__ is running (ModuleBase's metaclass keeps it): never cached.
CONSTRUCTING: set[int] = set()


class _Slots:
    __slots__ = ("__dict__", "__weakref__", "_jp_flat")


_get_dict = _Slots.__dict__["__dict__"].__get__
_set_dict = _Slots.__dict__["__dict__"].__set__
raw_dict = _get_dict  # a module's instance dict as it is: empty for a lazy root
set_raw_dict = _set_dict  # installs a new module's instance dict (unflattening)
_get_flat = _Slots._jp_flat.__get__  # type: ignore[attr-defined]
_set_flat = _Slots._jp_flat.__set__  # type: ignore[attr-defined]


class FastNode(_Slots):
    """Base of ``ModuleBase``: what lets a jitted call return a module as a lazy root.

    The slot ``_jp_flat`` holds ``(leaves, plan, checks)``. ``checks`` is ``None`` for a lazy
    root (its dict is still empty), else the mutable containers inside with a snapshot of
    their items. ``__dict__``, ``__getattr__`` and ``__getstate__`` build a lazy root first.
    """

    __slots__ = ()

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        return _get_dict(self) or materialize(self)

    def __getattr__(self, name: str) -> Any:
        if is_lazy(self):
            materialize(self)
            return getattr(self, name)
        later = getattr(super(), "__getattr__", None)  # e.g. ArrayNode's forwarding
        if later is not None:
            return later(name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
        )

    def __getstate__(self) -> dict[str, Any]:
        # The instance dict only: the slot's cache holds generated code and is rebuilt.
        return instance_dict(self)


class FieldDefault:
    """A field's default as its class attribute, where dataclasses leaves it.

    Read on the class (``Linear.bias_default``, a subclass's dataclass processing) it is the
    default, as before. Read on an instance it is reached only when the instance dict lacks the
    field: a lazy root, which it builds to return its own value, or a module still in its
    ``__init__``, which gets the default.
    """

    __slots__ = ("default", "name")

    def __init__(self, name: str, default: Any) -> None:
        self.name = name
        self.default = default

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self.default
        return instance_dict(obj).get(self.name, self.default)


def _flat(m: Any) -> Any:
    try:
        return _get_flat(m)
    except AttributeError:  # never cached
        return None


def instance_dict(m: Any) -> dict[str, Any]:
    """The instance dict of module ``m``, built first if ``m`` is a lazy root."""
    return _get_dict(m) or materialize(m)


def is_lazy(m: Any) -> bool:
    """Whether ``m`` is a lazy root whose fields are not built yet."""
    flat = _flat(m)
    return flat is not None and flat[2] is None


def materialize(m: Any) -> dict[str, Any]:
    """Builds a lazy root's fields from its leaves; returns its instance dict."""
    flat = _flat(m)
    if flat is None or flat[2] is not None:
        return _get_dict(m)
    with _LOCK:
        d = _get_dict(m)
        if not d:
            _build(m, flat[0], flat[1])
    return d


def _build(m: Any, leaves: tuple, plan: Plan) -> None:
    """Fills module ``m``'s (empty) instance dict from ``leaves``, then caches them."""
    d = _get_dict(m)
    d.update(plan.build(leaves))
    _cache(m, d, leaves, plan)


def _cache(m: Any, d: dict[str, Any], leaves: tuple, plan: Plan) -> None:
    _set_flat(m, (leaves, plan, plan.containers(d)) if plan.cacheable else None)


def _unchanged(checks: tuple) -> bool:
    """Whether every container still holds the items of its snapshot (by identity)."""
    for container, items in checks:
        if len(container) != len(items):
            return False
        if type(container) is list:
            for a, b in zip(container, items):
                if a is not b:
                    return False
        else:
            for k, v in items:
                if container.get(k, _unchanged) is not v:
                    return False
    return True


def _dispatch_flatten(m: Any) -> tuple[tuple, Plan]:
    flat = _flat(m)
    if flat is not None and (flat[2] is None or _unchanged(flat[2])):
        return flat[0], flat[1]
    flat_leaves, treedef = tree_util.tree_flatten(m)
    leaves = tuple(flat_leaves)
    plan = _plan(treedef)
    if plan.cacheable and id(m) not in CONSTRUCTING:
        _cache(m, _get_dict(m), leaves, plan)
    return leaves, plan


def _dispatch_unflatten(plan: Plan, leaves: tuple) -> Any:
    m = _new(plan.root)
    if plan.lazy:
        _set_flat(m, (leaves, plan, None))
    else:
        _build(m, leaves, plan)
    return m


def register_module(
    cls: type, flatten_with_keys: Callable, unflatten: Callable, flatten: Callable
) -> None:
    """Registers module class ``cls`` with JAX, and as one node for the dispatch path."""
    if not ACTIVE:
        tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return
    # JAX's public registration, minus the dispatch registry, which gets the functions above.
    saved = _jax_tree_util._all_registries
    _jax_tree_util._all_registries = tuple(r for r in saved if r is not _DISPATCH)
    try:
        tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    finally:
        _jax_tree_util._all_registries = saved
    _DISPATCH.register_node(cls, _dispatch_flatten, _dispatch_unflatten)


# -- plans ---------------------------------------------------------------------------------------

_PLANS: dict[Any, Plan] = {}


def _plan(treedef: Any) -> Plan:
    plan = _PLANS.get(treedef)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()  # plans in use live on in jit caches and models
        plan = _PLANS[treedef] = Plan(treedef)
    return plan


class Plan:
    """A module's ordinary treedef, as the static part of its one dispatch node.

    Equal treedefs give one interned `Plan`, so the jit cache compares them by identity. It
    carries the code generated for the treedef: ``build(leaves)`` returns the root's fields
    (building every node below), ``containers(fields)`` the mutable lists and dicts inside
    with a snapshot of their items. ``cacheable`` is False when the tree holds a node jparam
    does not know (its contents could change unseen); such a model is flattened anew each call.
    """

    __slots__ = ("_hash", "build", "cacheable", "containers", "lazy", "root", "treedef")
    build: Callable[[tuple], dict[str, Any]]
    containers: Callable[[dict[str, Any]], tuple]

    def __init__(self, treedef: Any) -> None:
        self.treedef = treedef
        self._hash = hash(treedef)
        self.root = treedef.node_data()[0]
        # A class with attribute hooks of its own could read a lazy root's empty dict.
        self.lazy = (
            self.root.__getattr__ is FastNode.__getattr__
            and self.root.__getattribute__ is object.__getattribute__
        )
        self.cacheable = True
        _Compiler(self).run()

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is Plan and self.treedef == other.treedef)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Plan({self.treedef})"


class _Compiler:
    """Generates ``plan.build`` and ``plan.containers`` from the plan's treedef.

    ``build`` creates every node as the ordinary unflatten functions would (``object.__new__``
    and the instance dict or slots, never ``__init__``), in straight-line code.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ns: dict[str, Any] = {
            "new": _new,
            "getd": _get_dict,
            "setd": _set_dict,
        }
        self.lines: list[str] = []
        self.found: list[str] = []  # (container, snapshot) expressions
        self.leaf = 0
        self.names = itertools.count()

    def run(self) -> None:
        plan, td = self.plan, self.plan.treedef
        root = self.fields(plan.root, td.node_data()[1], td.children(), "d")
        body = "\n    ".join([*self.lines, f"return {root}"])
        source = (
            f"def build(l):\n    {body}\n\ndef containers(d):\n    return ({_seq(self.found)})\n"
        )
        where = f"<jparam fast path for {plan.root.__qualname__}>"
        exec(compile(source, where, "exec"), self.ns)
        plan.build, plan.containers = self.ns["build"], self.ns["containers"]

    def const(self, value: Any) -> str:
        name = f"c{len(self.ns)}"
        self.ns[name] = value
        return name

    def snapshot(self, at: str | None, kind: type) -> None:
        if at is None:
            self.plan.cacheable = False
        elif kind is list:
            self.found.append(f"({at}, tuple({at}))")
        else:
            self.found.append(f"({at}, tuple({at}.items()))")

    def emit(self, td: Any, at: str | None) -> str:
        """An expression for node ``td``; ``at`` reaches the same node from the root's dict."""
        data = td.node_data()
        if data is None:
            self.leaf += 1
            return f"l[{self.leaf - 1}]"
        typ, aux = data
        children = td.children()
        if typ is _NoneType:
            return "None"
        var = f"v{next(self.names)}"
        if typ is tuple or typ is list:
            kids = [self.emit(c, _sub(at, f"[{i}]")) for i, c in enumerate(children)]
            self.lines.append(
                f"{var} = ({_seq(kids)})" if typ is tuple else f"{var} = [{_seq(kids)}]"
            )
            if typ is list:
                self.snapshot(at, list)
        elif typ is dict:
            keys = [self.const(k) for k in aux]
            kids = [self.emit(c, _sub(at, f"[{k}]")) for k, c in zip(keys, children)]
            self.lines.append(f"{var} = {{{', '.join(f'{k}: {c}' for k, c in zip(keys, kids))}}}")
            self.snapshot(at, dict)
        elif isinstance(typ, type) and issubclass(typ, Variable):
            (kid,) = [self.emit(c, _sub(at, "._value")) for c in children]
            cls, meta = self.const(typ), self.const(aux)
            self.lines.append(f"{var} = new({cls}); {var}._value = {kid}; {var}._meta = {meta}")
        elif isinstance(typ, type) and issubclass(typ, Placeholder):
            self.lines.append(f"{var} = new({self.const(typ)}); {var}.aux = {self.const(aux)}")
        elif isinstance(typ, type) and issubclass(typ, FastNode):
            inner = None if at is None else f"getd({at})"
            fields = self.fields(typ, aux, children, inner)
            self.lines.append(f"{var} = new({self.const(typ)}); setd({var}, {fields})")
        else:  # a node jparam does not know: JAX rebuilds it; its contents are opaque
            self.plan.cacheable = False
            start, self.leaf = self.leaf, self.leaf + td.num_leaves
            self.lines.append(f"{var} = {self.const(td)}.unflatten(l[{start}:{self.leaf}])")
        return var

    def fields(self, cls: Any, aux: tuple, children: list, at: str | None) -> str:
        """A dict display of module ``cls``'s fields, as its ordinary unflatten fills them.

        ``at`` is an expression of the module's instance dict (``d`` for the root).
        """
        items, i = [], 0
        for name in cls._jp_dynamic:
            field_at = _sub(at, f"[{name!r}]")
            if name != cls._jp_inline:
                items.append(f"{name!r}: {self.emit(children[i], field_at)}")
                i += 1
                continue
            n, container = aux[-2], aux[-1]
            kids = [self.emit(children[i + j], _sub(field_at, f"[{j}]")) for j in range(n)]
            i += n
            if container is tuple:
                items.append(f"{name!r}: ({_seq(kids)})")
            elif container is list:
                items.append(f"{name!r}: [{_seq(kids)}]")
                self.snapshot(field_at, list)
            else:
                self.plan.cacheable = False
                items.append(f"{name!r}: {self.const(container)}(({_seq(kids)}))")
        for j, name in enumerate((*cls._jp_static, "training")):
            items.append(f"{name!r}: {self.const(aux[j])}")
        return "{" + ", ".join(items) + "}"


def _seq(items: list[str]) -> str:
    return ", ".join(items) + ("," if len(items) == 1 else "")


def _sub(at: str | None, suffix: str) -> str | None:
    return None if at is None else at + suffix
