"""The one rule for putting a value where a Parameter or Buffer is: shape and dtype kind.

`load_state_dict`, ``jp.at(...).set``, tied names at load time and `jp.Optimizer` all check
values here, so every path refuses the same things with the same words: a different shape
(never broadcast), a different dtype kind (never float <-> int), an abstract value where real
numbers are expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .parameter import Variable, dtype_shape, to_array

__all__ = ["abstract_errors", "convert_or_report", "convert_value", "dtype_kind"]


def dtype_kind(dtype: Any) -> str:
    """``"floating"``, ``"complex"``, ``"integer"`` or ``"bool"``: what casts may not change."""
    for kind, base in (
        ("floating", jnp.floating),
        ("complex", jnp.complexfloating),
        ("integer", jnp.integer),
        ("bool", jnp.bool_),
    ):
        if jnp.issubdtype(dtype, base):
            return kind
    return str(dtype)


def convert_value(
    name: str, target: Any, raw: Any, *, what: str, hint: str = "", abstract_ok: bool = False
) -> Any:
    """``raw`` as an array with ``target``'s shape and dtype, or a `TypeError`/`ValueError`.

    The one rule for putting a value where a Parameter or Buffer is (`load_state_dict`,
    ``jp.at(...).set``): the shape must be the same (never broadcast); the dtype is cast within
    the same kind (float64 -> float32, like PyTorch's ``copy_``), never across kinds (float <->
    int); an abstract value (``jax.ShapeDtypeStruct``) goes only into an abstract model (unless
    ``abstract_ok``). ``what`` names the value in messages; ``hint`` says what to do instead.
    """
    try:
        value = to_array(raw, what=what)
    except (ValueError, OverflowError, NotImplementedError, RuntimeError) as e:
        # e.g. an int64 out of JAX's range, a huge Python int, a PyTorch meta tensor
        msg = str(e) if name in str(e) else f"{what}: {e}"
        raise ValueError(msg) from None
    want_shape, got_shape = tuple(target.shape), tuple(value.shape)
    if want_shape != got_shape:
        raise ValueError(
            f"{name}: shape mismatch, expected {want_shape}, got {got_shape}"
            f"{_transpose_hint(name, want_shape, got_shape)}{hint}"
        )
    want, got = dtype_kind(target.dtype), dtype_kind(value.dtype)
    if want != got:
        raise ValueError(
            f"{name}: dtype mismatch, expected {want} {target.dtype}, got {got} "
            f"{value.dtype}; cast it explicitly if that is intended{hint}"
        )
    if not abstract_ok:
        problem = _abstract_problem(name, target, value)
        if problem:
            raise ValueError(problem)
    return value if value.dtype == target.dtype else value.astype(target.dtype)


def _transpose_hint(name: str, want: tuple[int, ...], got: tuple[int, ...]) -> str:
    """Says so when ``got`` is ``want`` transposed: a checkpoint that stores (in, out)."""
    if len(want) != 2 or got != want[::-1]:
        return ""
    return (
        ": the transpose of the expected shape; if the checkpoint stores this weight "
        "transposed (as Hugging Face's Conv1D does), add a transpose rule to the mapping "
        f"(mapping=[jp.mapping.transpose({name!r})]). A square weight stored transposed "
        "cannot be detected by its shape: name every transposed weight in the mapping"
    )


def _abstract_problem(name: str, target: Any, value: Any) -> str | None:
    held = target.value if isinstance(target, Variable) else target
    if isinstance(value, jax.ShapeDtypeStruct) and not isinstance(held, jax.ShapeDtypeStruct):
        return (
            f"{name}: got an abstract value ({dtype_shape(value)}, a jax.ShapeDtypeStruct that "
            "holds no numbers), which cannot be loaded into a model with real arrays; pass "
            "arrays, or load into an abstract model (jax.eval_shape)"
        )
    return None


def abstract_errors(expected: Mapping[str, Any], state: Any) -> list[str]:
    """One message per ``state`` entry that is abstract where ``expected`` holds a real array."""
    if not isinstance(state, Mapping):
        return []
    found = (_abstract_problem(n, expected[n], v) for n, v in state.items() if n in expected)
    return [p for p in found if p]


def convert_or_report(name: str, target: Any, raw: Any, errors: list[str]) -> Any:
    """`convert_value` for a checkpoint entry: a problem is appended to ``errors`` (and
    ``None`` returned), so one load reports every bad entry at once. Abstract values pass: a
    checkpoint reader checks its files' shapes with them."""
    try:
        return convert_value(name, target, raw, what=f"state_dict[{name!r}]", abstract_ok=True)
    except (TypeError, ValueError) as e:
        errors.append(str(e))
        return None
