"""Names and walks: how a pytree's parameters, buffers and modules are named and visited.

Names are PyTorch's: attribute names joined by ``.``, list/tuple indices as numbers, dict keys
as they are. They are built from JAX key paths, so ``jax.tree_util.tree_flatten_with_path`` and
these walks agree on every name. Walks visit a module's own parameters, then its own buffers,
then its children, which is PyTorch's ``state_dict`` order. Dicts are visited in JAX's key order
(sorted), the order they have after any ``jax.jit``, so names and order are stable.

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
    if isinstance(node, Module):
        d = node.__dict__
        inline = type(node)._jp_inline
        out = []
        for name in type(node)._jp_dynamic:
            if name == inline:
                out.extend((str(i), item) for i, item in enumerate(d[name]))
            else:
                out.append((name, d[name]))
        return out
    if isinstance(node, (_Variable, jax.Array, np.ndarray)) or node is None:
        return []
    if type(node) in (list, tuple):
        return [(str(i), c) for i, c in enumerate(node)]
    flat, _ = tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is node:
        return []  # a leaf
    return [(path_name(path), child) for path, child in flat]


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
    """
    if isinstance(tree, _Variable) or (tied and isinstance(tree, TiedTo)):
        yield prefix, tree
        return
    if isinstance(tree, Module):
        yield prefix, tree
        kids = children(tree)
        for name, child in kids:
            if isinstance(child, Parameter) or (tied and isinstance(child, TiedTo)):
                yield join(prefix, name), child
        for name, child in kids:
            if isinstance(child, Buffer):
                yield join(prefix, name), child
        if not recurse:
            return
        for name, child in kids:
            if not isinstance(child, (_Variable, TiedTo)):
                yield from walk(child, join(prefix, name), tied=tied)
        return
    for name, child in children(tree):
        yield from walk(child, join(prefix, name), recurse, tied)


def _named(tree, kind, prefix, recurse, remove_duplicate) -> Iterator[tuple[str, Any]]:
    seen: set[int] = set()
    for name, node in walk(tree, prefix, recurse):
        if not isinstance(node, kind):
            continue
        if remove_duplicate:
            if id(node) in seen:
                continue
            seen.add(id(node))
        yield name, node


def named_parameters(
    tree: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Parameter]]:
    """Yields ``(name, Parameter)`` for every parameter in ``tree``, trainable or frozen.

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


def _first_modules(node: Any, prefix: str) -> Iterator[tuple[str, Module]]:
    for name, child in children(node):
        if isinstance(child, Module):
            yield join(prefix, name), child
        elif not isinstance(child, _Variable):
            yield from _first_modules(child, join(prefix, name))


def named_children(module: Module) -> Iterator[tuple[str, Module]]:
    """Yields the nearest submodules of ``module`` (inside list/dict fields: ``field.i``)."""
    seen: set[int] = set()
    for name, child in _first_modules(module, ""):
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
