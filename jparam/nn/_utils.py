"""Helpers shared by the layers: argument normalisation, PyTorch's default init, input checks.

Shape checks run on static shapes, so they cost nothing under ``jax.jit`` (they run once, while
tracing) and the error names the layer, what it expected and what it got.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from .. import init
from ..module import Module
from ..modulebase import describe
from ..parameter import Parameter


def shape_error(layer: Module, expected: str, x: Any) -> ValueError:
    """The error for an input of the wrong shape: layer, expected shape and actual shape."""
    got = tuple(jnp.shape(x))
    return ValueError(f"{describe(layer)} expected input of shape {expected}, got shape {got}")


def check_input(
    layer: Module,
    x: Any,
    expected: str,
    ndims: Sequence[int] | None = None,
    sizes: dict[int, int] | None = None,
) -> jax.Array:
    """Returns ``x`` as an array after checking its rank and the sizes of some axes.

    ``ndims`` lists the accepted ranks (any rank if ``None``); ``sizes`` maps an axis (negative
    counts from the end) to the size it must have. ``expected`` describes the shape in the
    error, e.g. ``"(N, 3, H, W)"``.
    """
    x = jnp.asarray(x)
    if ndims is not None and x.ndim not in ndims:
        raise shape_error(layer, expected, x)
    for axis, size in (sizes or {}).items():
        if not -x.ndim <= axis < x.ndim or x.shape[axis] != size:
            raise shape_error(layer, expected, x)
    return x


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def ntuple(value: Any, n: int, name: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; a sequence of ``n`` ints is returned as a tuple; else ``TypeError``."""
    if _is_int(value):
        return (int(value),) * n
    if isinstance(value, Sequence) and len(value) == n and all(_is_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")


def _at_least(minimum: int) -> str:
    return {0: "non-negative (>= 0)", 1: "positive (>= 1)"}.get(minimum, f">= {minimum}")


def check_int(layer: str, name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int after checking that it is an integer ``>= minimum``.

    Constructor arguments are checked up front, as PyTorch does or later fails on, so that a bad
    size fails here with the argument's name rather than deep inside XLA.
    """
    if not _is_int(value):
        raise TypeError(f"{layer} {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{layer} {name} must be {_at_least(minimum)}, got {name}={value}")
    return int(value)


def int_tuple(layer: str, name: str, value: Any, n: int, minimum: int) -> tuple[int, ...]:
    """`ntuple` for a layer argument, each entry checked to be ``>= minimum``."""
    values = ntuple(value, n, f"{layer} {name}")
    if any(v < minimum for v in values):
        raise ValueError(
            f"{layer} {name} must be {_at_least(minimum)} in every dimension, got {name}={value!r}"
        )
    return values


def check_eps(layer: str, eps: Any) -> Any:
    """``eps`` after checking that it is a non-negative real number (a norm's stabiliser)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"{layer} eps must be a number, got {eps!r}")
    if not eps >= 0:
        raise ValueError(f"{layer} eps must be non-negative, got eps={eps!r}")
    return eps


def check_probability(layer: str, name: str, p: Any) -> float:
    """``p`` after checking that it is a number in ``[0, 1]`` (dropout rates)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"{layer} {name} must be a number in [0, 1], got {p!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"{layer} {name} must be in [0, 1], got {name}={p!r}")
    return cast(float, p)  # as given: an int or a NumPy scalar is kept, not converted


def require_key(key: Any, layer: str) -> jax.Array:
    """Checks that a constructor got a PRNG key (``None`` is the common mistake)."""
    if key is None:
        raise TypeError(
            f"{layer} needs a PRNG key to initialise its parameters: pass "
            "key=jax.random.key(seed) (split one key for several layers)."
        )
    return key


OUT_AXES = ("out",)  # a bias, or anything else indexed by output features
WEIGHT_AXES = ("out", "in")  # PyTorch's (out_features, in_features) layout
NORM_AXES = ("norm",)  # norm scales, shifts and running statistics (per feature)


def norm_axes(ndim: int) -> tuple[str | None, ...]:
    """``("norm",)`` on the last of ``ndim`` axes (the features), ``None`` before it."""
    return (None,) * (ndim - 1) + NORM_AXES if ndim else ()


def torch_default_params(
    key: jax.Array,
    weight_shape: tuple[int, ...],
    bias: bool,
    bias_size: int,
    dtype: DTypeLike,
    axes: tuple[str | None, ...],
) -> tuple[Parameter, Parameter | None]:
    """PyTorch's default init for Linear and convolutions.

    The weight is ``kaiming_uniform(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and
    the bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in`` taken from the weight's layout.
    ``axes`` are the weight's logical sharding names (see `jparam.sharding`); the bias gets
    ``("out",)``.
    """
    wkey, bkey = jax.random.split(key)
    weight = Parameter(init.kaiming_uniform(wkey, weight_shape, dtype, a=math.sqrt(5)), axes=axes)
    if not bias:
        return weight, None
    fan_in, _ = init.fan_in_and_fan_out(weight_shape)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return weight, Parameter(init.uniform(bkey, (bias_size,), dtype, -bound, bound), axes=OUT_AXES)


def compute_dtype(dtype: Any) -> Any:
    """At least float32: statistics of low-precision inputs are computed in float32."""
    return jnp.promote_types(dtype, jnp.float32)


def add_context(err: BaseException, where: str) -> None:
    """Adds ``where`` (which layer of a container failed) to an error's traceback (3.11+)."""
    if hasattr(err, "add_note"):
        err.add_note(where)


def standardize(
    x: jax.Array, axes: tuple[int, ...], eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``((x - mean) / sqrt(var + eps), mean, var)`` over ``axes`` with the biased variance.

    Computed in at least float32; the normalised value is returned in that dtype (callers cast
    back after the affine step). ``mean`` and ``var`` keep the reduced axes.
    """
    x = x.astype(compute_dtype(x.dtype))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps), mean, var


def affine(
    y: jax.Array,
    weight: Parameter | None,
    bias: Parameter | None,
    shape: tuple[int, ...] | None = None,
) -> jax.Array:
    """``y * weight + bias`` (either may be ``None``), parameters reshaped to ``shape`` if given."""
    for p, op in ((weight, jnp.multiply), (bias, jnp.add)):
        if p is not None:
            y = op(y, p.value if shape is None else p.value.reshape(shape))
    return y


# -- layers whose field names depend on their arguments ---------------------------------------


@functools.cache
def fields_subclass(base: type, keys: tuple[str, ...]) -> type:
    """The subclass of ``base`` whose fields are ``keys``, in order (created once per keys).

    For layers whose parameter names depend on their arguments, as in PyTorch (a `ModuleDict`'s
    keys, an LSTM's ``weight_ih_l0 ... weight_hr_l1_reverse``): each field is a pytree child
    named by its key. The class keeps ``base``'s name and pickles through it.
    """
    namespace = {
        "__annotations__": dict.fromkeys(keys, "Any"),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_jp_keys": keys,
        "_jp_keyed_from": base,
        "__reduce__": lambda self: (_unpickle_fields_subclass, (base, keys), dict(self.__dict__)),
    }
    return type(base)(base.__name__, (base,), namespace)


def _unpickle_fields_subclass(base: type, keys: tuple[str, ...]) -> Any:
    """Unpickles a `fields_subclass` instance: pickle can only name its base class."""
    return object.__new__(fields_subclass(base, keys))
