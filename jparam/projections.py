"""Projections: constrain a weight by mapping it back onto a set after each optimizer step.

``Parameter(w, project=fn)`` declares one and `jp.project` applies every declared ``fn``
(pure, jit-compatible); this file also holds the ready-made ones, each a small frozen
dataclass so that equal projections compare equal and a jitted step does not retrace. The
other way to constrain a weight, reparametrization, is `jparam.parametrizations`; the guide
is docs/guides/parametrizations.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from .parameter import Parameter, dtype_shape
from .paths import map_variables

__all__ = ["clip", "nonnegative", "normalize", "orthogonalize"]

T = TypeVar("T")


# Checks shared with `parametrizations`, which imports them from here (neither exports them).


def with_context(e: Exception, where: str) -> Exception:
    """``e``'s message prefixed with ``where`` (the parameter's name), as a ValueError/TypeError."""
    # The base class, not type(e): some subclasses (JAX's) take other constructor arguments.
    return (ValueError if isinstance(e, ValueError) else TypeError)(f"{where}: {e}")


def need_matrix(what: str, weight: Any) -> None:
    """Raises unless ``weight`` has at least two dimensions (``what`` names the constraint)."""
    if jnp.ndim(weight) < 2:
        raise ValueError(
            f"{what} needs a matrix or a batch of matrices (ndim >= 2), got {dtype_shape(weight)}"
        )


def as_axes(axis: int | Sequence[int]) -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints) as a tuple of ints; anything else raises."""
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        return (int(axis),)
    if isinstance(axis, Sequence) and all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis
    ):
        return tuple(int(a) for a in axis)
    raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")


def check_axes(what: str, axes: tuple[int, ...], x: Any) -> None:
    """Raises unless every axis in ``axes`` is a valid axis of ``x``."""
    ndim = jnp.ndim(x)
    if not all(-ndim <= a < ndim for a in axes):
        raise ValueError(f"{what}: axis {axes} is out of range for {dtype_shape(x)}")


def unit_normalize(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    """``x / max(‖x‖, eps)`` over ``axes``."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
    return x / jnp.maximum(norm, eps)


def project(tree: T, *, include_frozen: bool = False) -> T:
    """Applies each trainable Parameter's ``project=`` function to its value; returns a copy.

    Call it after the optimizer step, inside the jitted step or outside::

        model = nn.Linear(4, 2, key=jax.random.key(0))
        model = model.replace(weight=jp.Parameter(model.weight.value,
                                                  project=jp.projections.nonnegative()))
        opt = jp.Optimizer(optax.sgd(1.0), model)
        grads = jp.grad(lambda m: m(jnp.ones(4)).sum())(model)

        model, opt = opt.update(model, grads)
        model = jp.project(model)
        assert (model.weight.value >= 0).all()

    Frozen parameters do not move, so they are left alone unless ``include_frozen=True`` (use
    that once to make initial values meet their constraints). The function must return an
    array of the same shape and dtype; anything else is an error naming the parameter.
    """

    def visit(name: str, x: Any) -> Any:
        if not isinstance(x, Parameter) or not (x.trainable or include_frozen):
            return x
        fn = x.metadata.get("project")
        if fn is None:
            return x
        if not callable(fn):
            raise TypeError(f"jp.project: {name}: project={fn!r} is not a function")
        try:
            new = fn(x.value)
        except (TypeError, ValueError) as e:
            raise with_context(e, f"jp.project: {name}") from None
        if not hasattr(new, "shape") or tuple(new.shape) != x.shape or new.dtype != x.dtype:
            got = dtype_shape(new) if hasattr(new, "shape") else type(new).__name__
            raise ValueError(
                f"jp.project: {name}: {fn!r} returned {got} for a {dtype_shape(x.value)} "
                "parameter; a projection must keep the shape and dtype"
            )
        return x._with_value(new)

    return map_variables(tree, visit)


@dataclasses.dataclass(frozen=True)
class _Orthogonalize:
    def __call__(self, x: jax.Array) -> jax.Array:
        need_matrix("orthogonalize()", x)
        u, _, vt = jnp.linalg.svd(x, full_matrices=False)
        return u @ vt

    def __repr__(self) -> str:
        return "orthogonalize()"


def orthogonalize() -> Callable[[jax.Array], jax.Array]:
    """Projection onto (semi-)orthogonal matrices: the polar factor ``U Vᵀ`` of ``W = U S Vᵀ``.

    The nearest orthogonal matrix in Frobenius norm (rows orthonormal if wide or square,
    columns if tall); batched over leading axes. ``Parameter(w, project=orthogonalize())``.
    """
    return _Orthogonalize()


@dataclasses.dataclass(frozen=True)
class _Clip:
    min: float | None
    max: float | None

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(x, self.min, self.max)

    def __repr__(self) -> str:
        return f"clip(min={self.min}, max={self.max})"


def clip(min: float | None = None, max: float | None = None) -> Callable[[jax.Array], jax.Array]:
    """Projection onto ``[min, max]`` (either bound may be ``None``)."""
    for label, bound in (("min", min), ("max", max)):
        if bound is not None and (not isinstance(bound, (int, float)) or isinstance(bound, bool)):
            raise TypeError(f"clip({label}=...) must be a number or None, got {bound!r}")
    if min is None and max is None:
        raise ValueError("clip() needs min, max or both")
    if min is not None and max is not None and min > max:
        raise ValueError(f"clip: min={min} is greater than max={max}")
    return _Clip(min, max)


def nonnegative() -> Callable[[jax.Array], jax.Array]:
    """Projection onto ``w >= 0`` (``clip(min=0)``), e.g. for non-negative factorisations."""
    return _Clip(0, None)


@dataclasses.dataclass(frozen=True)
class _Normalize:
    axis: tuple[int, ...]
    eps: float

    def __call__(self, x: jax.Array) -> jax.Array:
        check_axes("normalize()", self.axis, x)
        return unit_normalize(x, self.axis, self.eps)

    def __repr__(self) -> str:
        return f"normalize(axis={self.axis})"


def normalize(axis: int | Sequence[int] = -1, eps: float = 1e-12) -> Callable[[jax.Array], Any]:
    """Projection onto the unit sphere over ``axis``: each row of a matrix gets norm 1.

    All-zero rows stay zero (they have no direction).
    """
    return _Normalize(as_axes(axis), float(eps))
