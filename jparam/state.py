"""`state_dict` and `load_state_dict`: a model's arrays by PyTorch name, and back.

``load_state_dict`` takes JAX arrays, NumPy arrays or anything with ``__array__`` (a PyTorch
``state_dict()`` passes as it is, bfloat16 included). It checks every entry before building the
new module and reports all problems in one error. Values are cast to the model's dtype within the
same kind (float64 -> float32, like PyTorch's ``copy_``); a kind change (float <-> int) or a
shape change is an error, never a silent cast or broadcast.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar

import jax.numpy as jnp

from .parameter import Buffer, _Variable, to_array
from .paths import map_variables, walk

__all__ = ["IncompatibleKeys", "StateDictError", "load_state_dict", "state_dict"]

T = TypeVar("T")


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(..., strict=False)` did not match, as in PyTorch."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(ValueError):
    """Raised by `load_state_dict` with every problem found, one per line."""


def _persistent(node: Any) -> bool:
    return not isinstance(node, Buffer) or node.persistent


def _entries(tree: Any, prefix: str = "") -> OrderedDict[str, _Variable]:
    return OrderedDict(
        (name, node)
        for name, node in walk(tree, prefix)
        if isinstance(node, _Variable) and _persistent(node)
    )


def state_dict(tree: Any, prefix: str = "", keep_vars: bool = False) -> OrderedDict[str, Any]:
    """Ordered ``name -> array`` of every parameter and persistent buffer in ``tree``.

    Keys and order are PyTorch's; a parameter used in two places appears under both names.
    ``keep_vars=True`` returns the Parameter/Buffer objects instead of their arrays.
    """
    # PyTorch's spelling ends the prefix with a dot (``prefix="model."``); join it only once.
    entries = _entries(tree, prefix[:-1] if prefix.endswith(".") else prefix)
    if keep_vars:
        return entries
    return OrderedDict((name, node.value) for name, node in entries.items())


def _kind(dtype: Any) -> str:
    for kind, base in (
        ("floating", jnp.floating),
        ("complex", jnp.complexfloating),
        ("integer", jnp.integer),
        ("bool", jnp.bool_),
    ):
        if jnp.issubdtype(dtype, base):
            return kind
    return str(dtype)


def _convert(name: str, target: Any, raw: Any, errors: list[str]) -> Any:
    try:
        value = to_array(raw, what=f"state_dict[{name!r}]")
    except TypeError as e:
        errors.append(str(e))
        return None
    want_shape, got_shape = tuple(target.shape), tuple(value.shape)
    if want_shape != got_shape:
        errors.append(f"{name}: shape mismatch, expected {want_shape}, got {got_shape}")
        return None
    want, got = _kind(target.dtype), _kind(value.dtype)
    if want != got:
        errors.append(
            f"{name}: dtype mismatch, expected {want} {target.dtype}, got {got} "
            f"{value.dtype}; cast it explicitly if that is intended"
        )
        return None
    return value if value.dtype == target.dtype else value.astype(target.dtype)


def match_state(
    expected: Mapping[str, Any], state: Mapping[str, Any], strict: bool, what: str
) -> tuple[dict[str, Any], IncompatibleKeys]:
    """Checks ``state`` against ``expected`` (name -> anything with shape and dtype).

    Returns the converted arrays by name and the missing/unexpected keys, or raises one
    `StateDictError` listing every problem. Shared by modules, optimizers and checkpoints.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must map names to arrays, got {type(state).__name__}")
    missing = [n for n in expected if n not in state]
    unexpected = [k for k in state if k not in expected]
    errors: list[str] = []
    values: dict[str, Any] = {}
    for name, target in expected.items():
        if name in state:
            value = _convert(name, target, state[name], errors)
            if value is not None:
                values[name] = value
    if strict:
        errors = (
            [f"missing key: {n}" for n in missing]
            + [f"unexpected key: {k}" for k in unexpected]
            + errors
        )
    if errors:
        raise StateDictError(
            f"{len(errors)} error(s) loading state_dict into {what}:\n  " + "\n  ".join(errors)
        )
    return values, IncompatibleKeys(missing, unexpected)


def load_state_dict(tree: T, state: Mapping[str, Any], strict: bool = True) -> Any:
    """Returns a copy of ``tree`` with the arrays of ``state`` put in by name.

    ``strict=True`` returns the new tree, or raises `StateDictError` listing every missing key,
    unexpected key, shape and dtype-kind mismatch. ``strict=False`` returns
    ``(new_tree, IncompatibleKeys(missing_keys, unexpected_keys))``; shape and kind mismatches
    still raise, as in PyTorch.
    """
    values, incompatible = match_state(_entries(tree), state, strict, type(tree).__name__)
    new = map_variables(tree, lambda n, v: v.replace(values[n]) if n in values else v)
    return new if strict else (new, incompatible)
