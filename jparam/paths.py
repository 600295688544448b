"""Names and walks: how a pytree's parameters, buffers and modules are named and visited.

Names are PyTorch's: attribute names joined by ``.``, list/tuple indices as numbers, dict keys
as they are. They are built from JAX key paths, so ``jax.tree_util.tree_flatten_with_path`` and
these walks agree on every name. Walks visit a module's own parameters, then its own buffers,
then its children, which is PyTorch's ``state_dict`` order. Dicts are visited in JAX's key order
(sorted), the order they have after any ``jax.jit``, so names and order are stable.

A name must stand for one thing: a dict key that names a parameter, buffer or module must be a
non-empty ``str`` or an ``int``, and two paths that make the same name (a key ``"a.b"`` next to
``"a"`` -> ``"b"``) raise an error naming both, in every walk (`NameTable`). Dotted keys that
make no clash are fine, and ``jp.at`` finds them.

Every function takes any pytree: a `Module`, a list or dict of modules, a gradient tree, the
trainable half of `jp.split`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax import tree_util

from .parameter import Buffer, Parameter, _Variable

__all__ = [
    "buffers",
    "key_name",
    "map_variables",
    "named_buffers",
    "named_modules",
    "named_parameters",
    "parameters",
    "path_name",
]


def _compute_key_name(key: Any) -> str:
    if isinstance(key, tree_util.GetAttrKey):
        return key.name
    if isinstance(key, tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, tree_util.DictKey):
        return str(key.key)
    if isinstance(key, tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


_KEY_NAMES: dict[Any, str] = {}


def key_name(key: Any) -> str:
    """The name of one JAX key-path entry: ``.weight`` -> ``weight``, ``[0]`` -> ``0``."""
    try:
        return _KEY_NAMES[key]
    except KeyError:
        name = _compute_key_name(key)
        if len(_KEY_NAMES) > 100_000:  # keys are few in practice; never grow without bound
            _KEY_NAMES.clear()
        _KEY_NAMES[key] = name
        return name
    except TypeError:  # an unhashable dict key
        return _compute_key_name(key)


def path_name(path: tuple) -> str:
    """The dotted name of a JAX key path, e.g. ``blocks.0.attn.qkv.weight``."""
    return ".".join([key_name(k) for k in path])


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def is_variable(x: Any) -> bool:
    """True for `Parameter` and `Buffer` (the leaves that walks and filters see)."""
    return isinstance(x, _Variable)


def children(node: Any) -> list[tuple[str, Any]]:
    """The named direct children of one pytree node (``[]`` for leaves and variables)."""
    return [(name, child) for name, _, child in keyed_children(node)]


def keyed_children(node: Any) -> list[tuple[str, Any, Any]]:
    """``(name, key, child)`` for each direct child: ``key`` is its JAX key-path entry."""
    if isinstance(node, Module):
        d = node.__dict__
        inline = type(node)._jp_inline
        out = []
        for name in type(node)._jp_dynamic:
            if name == inline:
                out.extend(
                    (str(i), tree_util.SequenceKey(i), item) for i, item in enumerate(d[name])
                )
            else:
                out.append((name, tree_util.GetAttrKey(name), d[name]))
        return out
    if isinstance(node, (_Variable, jax.Array, np.ndarray)) or node is None:
        return []
    if type(node) in (list, tuple):
        return [(str(i), tree_util.SequenceKey(i), c) for i, c in enumerate(node)]
    flat, _ = tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is node:
        return []  # a leaf
    return [(path_name(path), path[-1] if path else None, child) for path, child in flat]


# -- names must be unique and well formed -----------------------------------------------------


def bad_key(path: tuple) -> Any:
    """The first dict key in ``path`` that cannot be part of a name, or ``None``.

    Names are strings as in PyTorch: a dict key must be a non-empty ``str`` or an ``int`` (named
    like a list index). A tuple, float, bool or ``None`` key has no name PyTorch could load.
    """
    for key in path:
        if isinstance(key, tree_util.DictKey):
            k = key.key
            if isinstance(k, bool) or not isinstance(k, (str, int)) or k == "":
                return key
    return None


class NameTable:
    """The names one walk has given, to refuse two different paths that make the same name.

    Names join keys with ``.``, so a dict key ``"a.b"`` and the nested keys ``"a"``, ``"b"``
    both make ``a.b``; listing, saving or splitting such a tree would merge two arrays into
    one entry. Every walk that names things (`walk`, `jp.split`) records each name here.
    """

    __slots__ = ("_paths", "_what")

    def __init__(self, what: str) -> None:
        self._paths: dict[str, tuple] = {}
        self._what = what

    def add(self, name: str, path: tuple) -> None:
        """Records that ``path`` (JAX keys) is named ``name``; raises on a clash or bad key."""
        other = self._paths.setdefault(name, path)
        if other is not path and other != path:
            raise ValueError(
                f"{self._what}: two different entries are both named {name!r}: "
                f"{_show(other)} and {_show(path)}. Names join keys with '.', so a dict key "
                "that contains '.' can make the same name as nested keys; rename one of them."
            )
        key = bad_key(path)
        if key is not None:
            raise TypeError(
                f"{self._what}: {_show(path)} holds a parameter, buffer or module under the "
                f"dict key {key.key!r}, which cannot be part of a name; use a non-empty str (or "
                "int) key, as PyTorch's state_dict names are strings."
            )


def _show(path: tuple) -> str:
    return tree_util.keystr(tuple(path)) or "the root"


def register_static_node(cls: type) -> None:
    """Registers ``cls`` as a pytree node without children whose ``aux`` attribute is static.

    For placeholders (`partition.Hole`, `tying.TiedTo`): they survive every flatten and
    unflatten as structure, cost one comparison on a ``jax.jit`` cache lookup, and unflatten
    without running ``__init__``.
    """

    def unflatten(aux: tuple, children: tuple) -> Any:
        out = object.__new__(cls)
        out.aux = aux
        return out

    def flatten(node: Any) -> tuple[tuple, tuple]:
        return (), node.aux

    tree_util.register_pytree_with_keys(cls, flatten, unflatten, flatten_func=flatten)


def walk(
    tree: Any, prefix: str = "", recurse: bool = True, tied: bool = False
) -> Iterator[tuple[str, Any]]:
    """Yields ``(name, node)`` for every Module, Parameter and Buffer, in PyTorch's order.

    A module comes first, then its own parameters, its own buffers, then its children. Shared
    objects are yielded at each place they appear (the callers dedupe). With ``tied=True`` a
    tied name's `TiedTo` placeholder is yielded where its parameter was (see `jparam.tying`).
    Two different paths that make the same name, or a dict key that cannot be part of a name,
    raise an error naming the paths (see `NameTable`).
    """
    return _walk(tree, prefix, (), recurse, tied, NameTable("naming the arrays of a model"))


def _walk(
    tree: Any, prefix: str, path: tuple, recurse: bool, tied: bool, names: NameTable
) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, _Variable) or (tied and isinstance(tree, TiedTo)):
        names.add(prefix, path)
        yield prefix, tree
        return
    if isinstance(tree, Module):
        names.add(prefix, path)
        yield prefix, tree
        kids = keyed_children(tree)
        for name, key, child in kids:
            if isinstance(child, Parameter) or (tied and isinstance(child, TiedTo)):
                names.add(join(prefix, name), (*path, key))
                yield join(prefix, name), child
        for name, key, child in kids:
            if isinstance(child, Buffer):
                names.add(join(prefix, name), (*path, key))
                yield join(prefix, name), child
        if not recurse:
            return
        for name, key, child in kids:
            if not isinstance(child, (_Variable, TiedTo)):
                yield from _walk(child, join(prefix, name), (*path, key), True, tied, names)
        return
    for name, key, child in keyed_children(tree):
        yield from _walk(child, join(prefix, name), (*path, key), recurse, tied, names)


def _named(tree, kind, prefix, recurse, remove_duplicate) -> Iterator[tuple[str, Any]]:
    if kind is Parameter and not remove_duplicate:
        yield from _with_tied_names(tree, prefix, recurse)
        return
    seen: set[int] = set()
    for name, node in walk(tree, prefix, recurse):
        if not isinstance(node, kind):
            continue
        if remove_duplicate:
            if id(node) in seen:
                continue
            seen.add(id(node))
        yield name, node


def _with_tied_names(tree: Any, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
    """Every parameter name, tied names included with their source's Parameter, as PyTorch's
    ``named_parameters(remove_duplicate=False)`` lists a tensor under each of its names."""
    found = [
        (n, x)
        for n, x in walk(tree, prefix, recurse, tied=True)
        if isinstance(x, (Parameter, TiedTo))
    ]
    params = {n: x for n, x in found if isinstance(x, Parameter)}
    for name, node in found:
        if isinstance(node, TiedTo):
            source = params.get(node.source_name(name))
            if source is None:  # the source is outside what was walked (recurse=False)
                continue
            node = node.resolve(source)
        yield name, node


def named_parameters(
    tree: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Parameter]]:
    """Yields ``(name, Parameter)`` for every parameter in ``tree``, trainable or frozen.

    A tied parameter is listed once, under its source's name; ``remove_duplicate=False`` lists
    it under every name (a transposed tie as its transpose), as PyTorch does.

    ``jp.named_parameters(grads)`` works on a gradient tree too (it has Parameter nodes where
    the model had trainable ones)::

        for name, p in jp.named_parameters(model):
            print(name, p.shape, p.trainable)
    """
    return _named(tree, Parameter, prefix, recurse, remove_duplicate)


def parameters(tree: Any, recurse: bool = True) -> Iterator[Parameter]:
    """Yields every Parameter in ``tree`` once."""
    return (p for _, p in named_parameters(tree, recurse=recurse))


def named_buffers(
    tree: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Buffer]]:
    """Yields ``(name, Buffer)`` for every buffer in ``tree``."""
    return _named(tree, Buffer, prefix, recurse, remove_duplicate)


def buffers(tree: Any, recurse: bool = True) -> Iterator[Buffer]:
    """Yields every Buffer in ``tree`` once."""
    return (b for _, b in named_buffers(tree, recurse=recurse))


def named_modules(
    tree: Any, prefix: str = "", remove_duplicate: bool = True
) -> Iterator[tuple[str, Module]]:
    """Yields ``(name, Module)`` pre-order; a module root comes first as ``(prefix, root)``."""
    return _named(tree, Module, prefix, True, remove_duplicate)


def _first_modules(
    node: Any, prefix: str, path: tuple, names: NameTable
) -> Iterator[tuple[str, Module]]:
    for name, key, child in keyed_children(node):
        if isinstance(child, Module):
            names.add(join(prefix, name), (*path, key))
            yield join(prefix, name), child
        elif not isinstance(child, _Variable):
            yield from _first_modules(child, join(prefix, name), (*path, key), names)


def named_children(module: Module) -> Iterator[tuple[str, Module]]:
    """Yields the nearest submodules of ``module`` (inside list/dict fields: ``field.i``)."""
    seen: set[int] = set()
    for name, child in _first_modules(module, "", (), NameTable("named_children")):
        if id(child) not in seen:
            seen.add(id(child))
            yield name, child


def map_variables(tree: Any, fn: Callable[[str, Any], Any], *, arrays: bool = False) -> Any:
    """Returns ``tree`` with each Parameter/Buffer replaced by ``fn(name, variable)``.

    With ``arrays=True`` plain array leaves (neither parameter nor buffer) are passed too.
    """

    def visit(path, x):
        if isinstance(x, _Variable) or arrays:
            return fn(path_name(path), x)
        return x

    return tree_util.tree_map_with_path(visit, tree, is_leaf=is_variable)


def map_modules(tree: Any, fn: Callable[[Module], Any]) -> Any:
    """Rebuilds ``tree`` bottom-up with every Module ``m`` replaced by ``fn(m)``.

    Children are mapped before their parent, so ``fn`` sees a parent whose children are already
    replaced. ``fn`` returning ``None`` keeps the module. ``__init__`` is never re-run.
    """

    def rebuild(node: Any) -> Any:
        if isinstance(node, Module):
            d = node.__dict__
            changed = {}
            for name in type(node)._jp_dynamic:
                new = rebuild(d[name])
                if new is not d[name]:
                    changed[name] = new
            node = node._copy_with(changed) if changed else node
            out = fn(node)
            return node if out is None else out
        if not children(node):
            return node
        return tree_util.tree_map(
            rebuild, node, is_leaf=lambda x: isinstance(x, (Module, _Variable))
        )

    return rebuild(tree)


# Imported last: `module` imports this file's dependents (precision, state, ...) at its end, and
# they import names from here, so those names must exist before `Module` is imported. This keeps
# `import jparam.paths` (or any file that imports it first) free of a circular-import error.
from .module import Module  # noqa: E402
from .tying import TiedTo  # noqa: E402
