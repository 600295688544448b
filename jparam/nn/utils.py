"""PyTorch's ``torch.nn.utils`` helpers that a training loop reaches for, as pure functions.

Nothing here changes its arguments: where PyTorch works in place, these return the new tree.

- `clip_grad_norm` (alias `clip_grad_norm_`): ``torch.nn.utils.clip_grad_norm_``, returning
  ``(clipped_grads, total_norm)``.
- `parameters_to_vector` / `vector_to_parameters`: one flat vector of all parameters, in
  ``named_parameters`` order, and back.
- `ema_update`: one step of an exponential moving average of a model's parameters, PyTorch's
  ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=...)``.

Every function works under ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ..parameter import Buffer, Parameter
from ..paths import is_variable, map_variables, named_buffers, named_parameters, path_name

__all__ = [
    "clip_grad_norm",
    "clip_grad_norm_",
    "ema_update",
    "parameters_to_vector",
    "vector_to_parameters",
]

T = TypeVar("T")

# -- gradient clipping ---------------------------------------------------------------------------


def _norm_type(norm_type: Any) -> float:
    """``norm_type`` as a float ``p > 0`` or ``inf`` (PyTorch also takes the string ``"inf"``)."""
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float, np.number)):
        raise TypeError(f"clip_grad_norm: norm_type must be a number or 'inf', got {norm_type!r}")
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm: norm_type must be positive or inf, got {norm_type!r}")
    return float(norm_type)


def _vector_norm(x: jax.Array, p: float) -> jax.Array:
    """The ``p``-norm of ``x`` seen as one vector, computed in at least float32."""
    x = jnp.abs(x.astype(jnp.promote_types(x.dtype, jnp.float32))).ravel()
    if p == math.inf:
        return jnp.max(x, initial=0.0)
    if p == 2.0:
        return jnp.sqrt(jnp.sum(x * x))
    if p == 1.0:
        return jnp.sum(x)
    return jnp.sum(x**p) ** (1.0 / p)


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Parameter) else x


def _clipped_leaf(x: Any) -> bool:
    """Whether a gradient-tree leaf takes part in clipping: trainable and floating."""
    if isinstance(x, Buffer) or (isinstance(x, Parameter) and not x.trainable):
        return False
    value = _value(x)
    return hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.inexact)


def clip_grad_norm(grads: T, max_norm: Any, norm_type: Any = 2.0) -> tuple[T, jax.Array]:
    """Scales ``grads`` so their total norm is at most ``max_norm``: PyTorch's
    ``torch.nn.utils.clip_grad_norm_`` as a pure function returning ``(clipped, total_norm)``.

    ``grads`` is any gradient tree: what `jp.grad` or ``jax.grad`` returns (Parameter nodes),
    the flat ``{name: array}`` dict of `jp.split`, or plain arrays. Only trainable floating
    arrays count and are scaled: frozen Parameters and Buffers are left as they are. The total
    norm is the ``norm_type``-norm of all of them seen as one vector (``inf``: the largest
    absolute value), and each is multiplied by ``min(1, max_norm / (total_norm + 1e-6))``, as
    PyTorch does. Norms are computed in at least float32; each gradient keeps its dtype::

        model = nn.Linear(4, 2, key=jax.random.key(0))
        grads = jp.grad(lambda m: 100 * m(jnp.ones(4)).sum())(model)

        grads, norm = nn.utils.clip_grad_norm(grads, max_norm=1.0)
        assert jnp.isclose(jp.global_norm(grads), 1.0, atol=1e-4)
    """
    p = _norm_type(norm_type)
    if isinstance(max_norm, (bool, str)):
        raise TypeError(f"clip_grad_norm: max_norm must be a number, got {max_norm!r}")
    leaves = [x for x in jax.tree_util.tree_leaves(grads, is_leaf=is_variable) if _clipped_leaf(x)]
    if not leaves:
        return grads, jnp.zeros((), jnp.float32)
    norms = jnp.stack([_vector_norm(_value(x), p) for x in leaves])
    total = _vector_norm(norms, p)
    scale = jnp.minimum(jnp.asarray(max_norm, total.dtype) / (total + 1e-6), 1.0)

    def clip(x: Any) -> Any:
        if not _clipped_leaf(x):
            return x
        value = _value(x)
        scaled = value * scale.astype(value.dtype)
        return x.replace(scaled) if isinstance(x, Parameter) else scaled

    clipped = jax.tree_util.tree_map(clip, grads, is_leaf=is_variable)
    return clipped, total


def clip_grad_norm_(grads: T, max_norm: Any, norm_type: Any = 2.0) -> tuple[T, jax.Array]:
    """PyTorch's spelling of `clip_grad_norm`: the same pure function, returning
    ``(clipped_grads, total_norm)``. Unlike PyTorch's it changes nothing in place (arrays are
    immutable), so use its result: ``grads, norm = clip_grad_norm_(grads, 1.0)``."""
    return clip_grad_norm(grads, max_norm, norm_type)


# -- parameters as one vector --------------------------------------------------------------------


def _named_arrays(tree: Any, who: str) -> list[tuple[str, jax.Array]]:
    """The parameters of ``tree`` in ``named_parameters`` order (all of them, trainable or
    frozen, as PyTorch's ``parameters()``); for a tree without Parameters (the ``{name: array}``
    dict of `jp.split`), its array leaves in JAX's flatten order."""
    named = [(n, p.value) for n, p in named_parameters(tree)]
    if named:
        return named
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = [(path_name(k), x) for k, x in flat if hasattr(x, "dtype") and hasattr(x, "shape")]
    if not named:
        raise ValueError(f"{who}: the tree holds no parameters or arrays")
    return named


def _one_dtype(named: list[tuple[str, jax.Array]], who: str) -> Any:
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.dtype != first.dtype:
            raise TypeError(
                f"{who}: parameters have different dtypes ({first_name} is {first.dtype}, "
                f"{name} is {x.dtype}); one vector needs one dtype. Cast the model first, e.g. "
                "model.float()."
            )
    return first.dtype


def parameters_to_vector(tree: Any) -> jax.Array:
    """All parameters of a model (or a parameter tree) as one flat vector, PyTorch's
    ``torch.nn.utils.parameters_to_vector(model.parameters())``.

    The order is ``named_parameters``' (PyTorch's ``parameters()`` order); frozen parameters are
    included and buffers are not, as in PyTorch. A tied parameter appears once. Parameters of
    different dtypes are refused rather than cast.
    """
    named = _named_arrays(tree, "parameters_to_vector")
    _one_dtype(named, "parameters_to_vector")
    return jnp.concatenate([jnp.ravel(x) for _, x in named])


def vector_to_parameters(vec: Any, tree: T) -> T:
    """A copy of ``tree`` whose parameters are read from ``vec``, the inverse of
    `parameters_to_vector`: PyTorch's ``vector_to_parameters(vec, model.parameters())``
    returning the new model instead of writing in place.

    ``vec`` must be 1-d with exactly as many elements as the parameters and their dtype
    (PyTorch ignores extra elements; here they are an error).
    """
    who = "vector_to_parameters"
    named = _named_arrays(tree, who)
    dtype = _one_dtype(named, who)
    total = sum(int(np.prod(x.shape)) for _, x in named)
    shape, vec_dtype = np.shape(vec), getattr(vec, "dtype", None)
    if shape != (total,):
        raise ValueError(
            f"{who}: vec must have shape ({total},) (the {len(named)} parameters' elements), "
            f"got {shape}"
        )
    if vec_dtype != dtype:
        raise TypeError(f"{who}: vec has dtype {vec_dtype}, the parameters {dtype}; cast vec first")
    values, start = {}, 0
    for name, x in named:
        size = int(np.prod(x.shape))
        values[name] = jnp.reshape(vec[start : start + size], x.shape)
        start += size
    if any(isinstance(x, Parameter) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_variable)):
        return map_variables(tree, lambda n, v: v.replace(values[n]) if n in values else v)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [values.get(path_name(k), x) for k, x in leaves])


# -- exponential moving average ------------------------------------------------------------------


def _check_decay(decay: Any) -> None:
    if isinstance(decay, (bool, str)):
        raise TypeError(f"ema_update: decay must be a number in [0, 1], got {decay!r}")
    if isinstance(decay, (int, float, np.number)) and not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_update: decay must be in [0, 1], got {decay!r}")


def _matching(ema: dict[str, Any], model: dict[str, Any], what: str) -> None:
    """Both trees have the same ``what`` names, shapes and dtypes, or raise naming the first."""
    if list(ema) != list(model):
        missing = [n for n in ema if n not in model]
        extra = [n for n in model if n not in ema]
        raise ValueError(
            f"ema_update: the EMA model and the model have different {what}: only in the EMA "
            f"model {missing}, only in the model {extra}. Start the EMA from a copy of the "
            "model (ema = model)."
        )
    for name, e in ema.items():
        m = model[name]
        if e.shape != m.shape or e.dtype != m.dtype:
            raise ValueError(
                f"ema_update: {name} is {e.dtype}{list(e.shape)} in the EMA model but "
                f"{m.dtype}{list(m.shape)} in the model"
            )


def _average(ema: jax.Array, new: jax.Array, decay: Any) -> jax.Array:
    """``decay * ema + (1 - decay) * new`` in ``ema``'s dtype (PyTorch's rule for each kind)."""
    if jnp.issubdtype(ema.dtype, jnp.inexact):
        return (ema + (1 - decay) * (new - ema)).astype(ema.dtype)
    # PyTorch averages integer buffers in float32 and truncates when it copies the result back.
    f32 = jnp.float32
    return (ema.astype(f32) * decay + new.astype(f32) * (1 - decay)).astype(ema.dtype)


def ema_update(ema_model: T, model: Any, decay: Any, *, use_buffers: bool = False) -> T:
    """One step of an exponential moving average of ``model``: a new ``ema_model`` with each
    parameter ``decay * ema + (1 - decay) * current``.

    PyTorch's ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=use_buffers)`` and its ``update_parameters(model)`` as a pure function. Start
    from a copy of the model (``ema = model``: PyTorch's first update copies the model), then
    ``ema = nn.utils.ema_update(ema, model, 0.999)`` after each step, inside or outside
    ``jax.jit``. All parameters are averaged, frozen ones included, as in PyTorch. Buffers
    follow PyTorch's ``use_buffers``: ``False`` copies the model's buffers (BatchNorm statistics
    stay those of the current model), ``True`` averages them too (integer buffers such as
    ``num_batches_tracked`` in float32, truncated back, as PyTorch does).
    """
    _check_decay(decay)
    params = {n: p.value for n, p in named_parameters(model)}
    buffers = {n: b.value for n, b in named_buffers(model)}
    _matching({n: p.value for n, p in named_parameters(ema_model)}, params, "parameters")
    _matching({n: b.value for n, b in named_buffers(ema_model)}, buffers, "buffers")

    def step(name: str, v: Any) -> Any:
        if isinstance(v, Parameter) and name in params:
            return v.replace(_average(v.value, params[name], decay))
        if isinstance(v, Buffer) and name in buffers:
            new = buffers[name]
            return v.replace(_average(v.value, new, decay) if use_buffers else new)
        return v

    return map_variables(ema_model, step)
