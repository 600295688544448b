"""Gradients with respect to the trainable parameters of a model, and nothing else.

``jp.grad(loss_fn)(model, x, y)`` splits ``model`` into its trainable parameters and the rest,
differentiates only the former and closes over the latter as constants. Frozen parameters,
buffers and plain arrays get no gradient: none is computed, none is materialised. The result has
the model's structure, with ``None`` wherever nothing is trainable, so it names itself::

    model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.LayerNorm(2)).freeze("1")
    loss_fn = lambda model, x, y: jnp.mean((model(x) - y) ** 2)
    x, y = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), jnp.zeros((8, 2))

    loss, grads = jax.jit(jp.value_and_grad(loss_fn))(model, x, y)
    for name, g in jp.named_parameters(grads):
        print(name, jnp.linalg.norm(g.value))

These are thin wrappers over `jax.value_and_grad`; they work under ``jax.jit``, ``jax.vmap``
and ``jax.lax.scan``. A plain ``jax.grad`` of the whole model is safe too (a frozen
parameter's or a buffer's value is gradient-stopped when read, so its gradient is zero), but it
computes and holds those zeros; these wrappers never do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from .filters import trainable
from .parameter import Variable
from .partition import Hole, merge, split

__all__ = ["grad", "value_and_grad"]


def value_and_grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """Like `jax.value_and_grad`, for ``fn(model, *args)``, w.r.t. trainable parameters only.

    Returns ``(value, grads)`` or, with ``has_aux=True``, ``((value, aux), grads)``. ``grads``
    has the model's structure: a Parameter holding the gradient at each trainable parameter,
    ``None`` everywhere else.
    """

    @functools.wraps(fn)
    def wrapped(model: Any, /, *args: Any, **kwargs: Any) -> Any:
        params, rest = split(model, trainable)

        def on_params(params: Any, /, *args: Any, **kwargs: Any) -> Any:
            return fn(merge(params, rest), *args, **kwargs)

        value, grads = jax.value_and_grad(on_params, has_aux=has_aux)(params, *args, **kwargs)
        return value, model_shaped(grads, rest)

    return wrapped


def model_shaped(values: dict[str, Any], rest: Any) -> Any:
    """Puts ``{name: array}`` into the placeholders of ``rest``; every other leaf becomes None.

    Turns the name-keyed gradients of ``jp.split``'s part back into a tree shaped like the model.
    """

    def visit(x: Any) -> Any:
        return x.fill(values[x.name]) if isinstance(x, Hole) else None

    return jax.tree_util.tree_map(visit, rest, is_leaf=lambda x: isinstance(x, (Hole, Variable)))


def grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """Like `jax.grad`, for ``fn(model, *args)``, w.r.t. trainable parameters only.

    Returns ``grads`` or, with ``has_aux=True``, ``(grads, aux)``.
    """
    vg = value_and_grad(fn, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapped(model: Any, /, *args: Any, **kwargs: Any) -> Any:
        (value, grads) = vg(model, *args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapped
