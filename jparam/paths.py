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
trainable half of `jp.split`. This file is part of the core: it imports only the variable types
and the `Placeholder` protocol, and knows modules by their registration (`is_module`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax import tree_util

from .fastpath import instance_dict
from .parameter import Buffer, Parameter, Variable
from .placeholder import Placeholder

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


def is_module(x: Any) -> bool:
    """True for a module: an instance of a class the module machinery registered.

    The walks live below `jparam.modulebase` (which builds on them), so they know a module by
    its registration, the field names ``_jp_dynamic`` that every `jp.Module` class carries.
    """
    return hasattr(type(x), "_jp_dynamic")


def is_variable(x: Any) -> bool:
    """True for `Parameter` and `Buffer` (the leaves that walks and filters see)."""
    return isinstance(x, Variable)


def children(node: Any) -> list[tuple[str, Any]]:
    """The named direct children of one pytree node (``[]`` for leaves and variables)."""
    return [(name, child) for name, _, child in keyed_children(node)]


def keyed_children(node: Any) -> list[tuple[str, Any, Any]]:
    """``(name, key, child)`` for each direct child: ``key`` is its JAX key-path entry."""
    if is_module(node):
        d = instance_dict(node)
        inline = type(node)._jp_inline
        out: list[tuple[str, Any, Any]] = []
        for name in type(node)._jp_dynamic:
            if name == inline:
                out.extend(
                    (str(i), tree_util.SequenceKey(i), item) for i, item in enumerate(d[name])
                )
            else:
                out.append((name, tree_util.GetAttrKey(name), d[name]))
        return out
    if isinstance(node, (Variable, jax.Array, np.ndarray)) or node is None:
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


def walk(
    tree: Any, prefix: str = "", recurse: bool = True, placeholders: bool = False
) -> Iterator[tuple[str, Any]]:
    """Yields ``(name, node)`` for every Module, Parameter and Buffer, in PyTorch's order.

    A module comes first, then its own parameters, its own buffers, then its children. Shared
    objects are yielded at each place they appear (the callers dedupe). With
    ``placeholders=True`` each `Placeholder` whose class is ``named`` (a tied name's `TiedTo`)
    is yielded in a Parameter's place.
    Two different paths that make the same name, or a dict key that cannot be part of a name,
    raise an error naming the paths (see `NameTable`).
    """
    return _walk(tree, prefix, (), recurse, placeholders, NameTable("naming the arrays of a model"))


def _walk(
    tree: Any, prefix: str, path: tuple, recurse: bool, named: bool, names: NameTable
) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Variable) or (named and _named_placeholder(tree)):
        names.add(prefix, path)
        yield prefix, tree
        return
    if is_module(tree):
        names.add(prefix, path)
        yield prefix, tree
        kids = keyed_children(tree)
        for name, key, child in kids:
            if isinstance(child, Parameter) or (named and _named_placeholder(child)):
                names.add(join(prefix, name), (*path, key))
                yield join(prefix, name), child
        for name, key, child in kids:
            if isinstance(child, Buffer):
                names.add(join(prefix, name), (*path, key))
                yield join(prefix, name), child
        if not recurse:
            return
        for name, key, child in kids:
            if not isinstance(child, (Variable, Placeholder)):
                yield from _walk(child, join(prefix, name), (*path, key), True, named, names)
        return
    for name, key, child in keyed_children(tree):
        yield from _walk(child, join(prefix, name), (*path, key), recurse, named, names)


def _named_placeholder(x: Any) -> bool:
    return isinstance(x, Placeholder) and x.named


def _named(tree, kind, prefix, recurse, remove_duplicate) -> Iterator[tuple[str, Any]]:
    if kind is Parameter and not remove_duplicate:
        yield from _with_placeholder_names(tree, prefix, recurse)
        return
    seen: set[int] = set()
    for name, node in walk(tree, prefix, recurse):
        if not (is_module(node) if kind is None else isinstance(node, kind)):
            continue
        if remove_duplicate:
            if id(node) in seen:
                continue
            seen.add(id(node))
        yield name, node


def _with_placeholder_names(tree: Any, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
    """Every parameter name, each named placeholder's too with the Parameter it stands for: as
    PyTorch's ``named_parameters(remove_duplicate=False)`` lists a tied tensor under each name."""
    found = [
        (n, x)
        for n, x in walk(tree, prefix, recurse, placeholders=True)
        if isinstance(x, (Parameter, Placeholder))
    ]
    params = {n: x for n, x in found if isinstance(x, Parameter)}
    for name, node in found:
        if isinstance(node, Placeholder):
            node = node.stands_for(name, params)
            if node is None:  # e.g. a tie whose source is outside what was walked
                continue
        yield name, node


def named_parameters(
    tree: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Parameter]]:
    """Yields ``(name, Parameter)`` for every parameter in ``tree``, trainable or frozen.

    A tied parameter is listed once, under its source's name; ``remove_duplicate=False`` lists
    it under every name (a transposed tie as its transpose), as PyTorch does.

    ``jp.named_parameters(grads)`` works on a gradient tree too (it has Parameter nodes where
    the model had trainable ones)::

        model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.LayerNorm(2))
        for name, p in jp.named_parameters(model.freeze("1")):
            print(name, p.shape, p.trainable)   # 0.weight (2, 4) True ... 1.bias (2,) False
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
) -> Iterator[tuple[str, Any]]:
    """Yields ``(name, Module)`` pre-order; a module root comes first as ``(prefix, root)``."""
    return _named(tree, None, prefix, True, remove_duplicate)


def _first_modules(
    node: Any, prefix: str, path: tuple, names: NameTable
) -> Iterator[tuple[str, Any]]:
    for name, key, child in keyed_children(node):
        if is_module(child):
            names.add(join(prefix, name), (*path, key))
            yield join(prefix, name), child
        elif not isinstance(child, Variable):
            yield from _first_modules(child, join(prefix, name), (*path, key), names)


def named_children(module: Any) -> Iterator[tuple[str, Any]]:
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
        if isinstance(x, Variable) or arrays:
            return fn(path_name(path), x)
        return x

    return tree_util.tree_map_with_path(visit, tree, is_leaf=is_variable)


def map_modules(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuilds ``tree`` bottom-up with every Module ``m`` replaced by ``fn(m)``.

    Children are mapped before their parent, so ``fn`` sees a parent whose children are already
    replaced. ``fn`` returning ``None`` keeps the module. ``__init__`` is never re-run.
    """

    def rebuild(node: Any) -> Any:
        if is_module(node):
            d = instance_dict(node)
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
            rebuild, node, is_leaf=lambda x: x is not node and (is_module(x) or is_variable(x))
        )

    return rebuild(tree)


# -- one node by name ---------------------------------------------------------------------------


def _child_index(node: Any, seg: str) -> Any:
    """The index/key/field under which ``node`` holds the child named ``seg``, or raise."""
    if is_module(node):
        inline = type(node)._jp_inline
        if seg in type(node)._jp_dynamic and seg != inline:
            return seg
        if inline is not None and seg.isdigit() and int(seg) < len(node.__dict__[inline]):
            return int(seg)  # an item of the inline field
    elif type(node) in (list, tuple):
        if seg.isdigit() and int(seg) < len(node):
            return int(seg)
    elif isinstance(node, dict):
        if seg in node:
            return seg
        for k in node:
            if str(k) == seg:
                return k
    elif any(name == seg for name, _ in children(node)):
        return seg
    raise KeyError(seg)


def _replace_child(node: Any, index: Any, value: Any) -> Any:
    if is_module(node) and isinstance(index, int):
        inline = type(node)._jp_inline
        return node._copy_with({inline: _replace_child(node.__dict__[inline], index, value)})
    if is_module(node):
        return node._copy_with({index: value})
    if type(node) in (list, tuple):
        items = list(node)
        items[index] = value
        return type(node)(items)
    if isinstance(node, dict):
        out = type(node)(node) if type(node) is not dict else dict(node)
        out[index] = value
        return out
    flat, treedef = tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    names = [name for name, _ in children(node)]
    flat[names.index(index)] = value
    return tree_util.tree_unflatten(treedef, flat)


def _get_child(node: Any, index: Any, seg: str) -> Any:
    if is_module(node) and isinstance(index, int):
        return node.__dict__[type(node)._jp_inline][index]
    if is_module(node):
        return node.__dict__[index]
    if type(node) in (list, tuple) or isinstance(node, dict):
        return node[index]
    return dict(children(node))[seg]


def _locate(node: Any, segs: list[str], depth: int, full: str) -> tuple[Any, int]:
    """The index of the child named by ``segs[depth:]`` and how many segments its name took.

    A dict key may contain dots (``{"a.b": layer}`` is named ``a.b``): when ``segs[depth]``
    alone names no child, the longer dotted runs are tried.
    """
    for stop in range(depth + 1, len(segs) + 1):
        try:
            return _child_index(node, ".".join(segs[depth:stop])), stop - depth
        except KeyError:
            if not isinstance(node, dict):
                break
    where = ".".join(segs[:depth]) or "the root"
    have = [name for name, _ in children(node)]
    raise KeyError(
        f"no {segs[depth]!r} in {where} while resolving {full!r}; "
        f"{type(node).__name__} there has: {', '.join(have) or 'no children'}"
    )


def get_at(tree: Any, name: str) -> Any:
    """The node named ``name`` (dotted, as the walks name it) in ``tree``, or a `KeyError`."""
    full, segs = name, name.split(".")
    node, depth = tree, 0
    while depth < len(segs):
        index, used = _locate(node, segs, depth, full)
        node = _get_child(node, index, ".".join(segs[depth : depth + used]))
        depth += used
    return node


def update_at(tree: Any, name: str, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``tree`` with the node named ``name`` replaced by ``fn(node)``.

    Only the nodes on the way are copied; everything else is shared with ``tree``.
    """
    return _update(tree, name.split("."), fn, name, 0)


def _update(node: Any, segs: list[str], fn: Callable[[Any], Any], full: str, depth: int) -> Any:
    if depth == len(segs):
        return fn(node)
    index, used = _locate(node, segs, depth, full)
    child = _get_child(node, index, ".".join(segs[depth : depth + used]))
    return _replace_child(node, index, _update(child, segs, fn, full, depth + used))
