"""Parameter initialisers with PyTorch's semantics, as pure functions.

Every initialiser takes ``(key, shape, dtype=jnp.float32, ...)`` and returns a new array, so
they can be swapped for one another, jitted, or vmapped over keys. Shapes use PyTorch's layout
(Linear ``(out, in)``, Conv ``(out, in / groups, *kernel)``), which is what the fan computation
assumes. Random draws happen in at least float32 and are rounded to ``dtype`` at the end.

Example::

    import math, jax
    from jparam import init

    w = init.kaiming_uniform(jax.random.key(0), (8, 4), a=math.sqrt(5))   # nn.Linear(4, 8).weight
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

__all__ = [
    "calculate_gain",
    "fan_in_and_fan_out",
    "uniform",
    "normal",
    "trunc_normal",
    "constant",
    "zeros",
    "ones",
    "eye",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
]

_UNIT_GAIN = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
_NONLINEARITIES = (*_UNIT_GAIN, "tanh", "relu", "leaky_relu", "selu")
_MODES = ("fan_in", "fan_out")

Key = jax.Array  # a typed key (jax.random.key) or a legacy uint32 key (jax.random.PRNGKey)
Shape = Sequence[int]  # PyTorch layout: (out, in) or (out, in / groups, *kernel)


# --------------------------------------------------------------------------- validation helpers


def _shape(shape: Shape) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of non-negative Python ints, or raise."""
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise TypeError(f"shape must be a sequence of ints such as (3, 4); got {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise TypeError(f"shape must contain non-negative ints; got {tuple(shape)!r}")
        dims.append(int(d))
    return tuple(dims)


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    """Return ``dtype`` as a numpy dtype, raising unless it is a real floating type."""
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"random initialisers need a floating dtype (e.g. float32, bfloat16); got {dt.name}"
        )
    return dt


def _check_key(key: Key) -> None:
    """Reject anything that is not a single typed key or a single legacy uint32 key."""
    dt = getattr(key, "dtype", None)
    if dt is not None and jnp.issubdtype(dt, jax.dtypes.prng_key) and key.ndim == 0:
        return
    if dt == jnp.uint32 and key.ndim == 1:
        return
    got = f"array of dtype {dt} and shape {key.shape}" if dt is not None else repr(key)
    raise TypeError(
        "key must be a single PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed); "
        f"got {got}"
    )


def _scalar(name: str, value: float) -> float:
    """Return ``value`` as a Python float; arrays are refused rather than broadcast."""
    if np.ndim(value) != 0 or isinstance(value, (bool, complex)):
        raise TypeError(f"{name} must be a real scalar; got {value!r}")
    return float(value)


def _check_std(std: float) -> float:
    std = _scalar("std", std)
    if std < 0:
        raise ValueError(f"std must be non-negative; got {std}")
    return std


# --------------------------------------------------------------------------- fans and gains


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Recommended scale for weights feeding into ``nonlinearity`` (PyTorch's table).

    ``param`` is the negative slope for ``"leaky_relu"`` (default 0.01) and is ignored for the
    other nonlinearities. ``"selu"`` gets 3/4, which keeps SELU networks self-normalising.
    """
    if nonlinearity in _UNIT_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"leaky_relu's negative slope must be an int or float; got {param!r}")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"unsupported nonlinearity {nonlinearity!r}; expected one of {_NONLINEARITIES}"
    )


def fan_in_and_fan_out(shape: Shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight in PyTorch layout ``(out, in, *receptive_field)``.

    Both fans are multiplied by the receptive field size ``prod(shape[2:])``. Fans are undefined
    for fewer than two dimensions, so that raises ``ValueError`` as in PyTorch.
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan_in and fan_out need a shape with at least 2 dimensions; got {shape} "
            f"({len(shape)}-D)"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


# A fan of 0 only occurs for zero-element weights, whose std is moot: it is then set to 0.


def _kaiming_std(shape: Shape, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan) if fan else 0.0


def _xavier_std(shape: Shape, gain: float) -> float:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fans = fan_in + fan_out
    return _scalar("gain", gain) * math.sqrt(2.0 / fans) if fans else 0.0


# --------------------------------------------------------------------------- basic distributions


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _draw(draw: Callable, key: jax.Array, shape: tuple[int, int], dtype: np.dtype, *params):
    return draw(key, shape, dtype, *params)


def _sample(draw: Callable, key: jax.Array, shape: Shape, dtype: DTypeLike, *params):
    """Validate key and dtype, run ``draw(key, matrix_shape, compute_dtype, *params)`` as one
    compiled call, then round to ``dtype`` and reshape to ``shape``.

    The draw is made in at least float32 on the matrix view ``(shape[0], prod(shape[1:]))``:
    that is what orthogonal needs, and it means one compiled program per matrix size serves
    every low-precision dtype and conv layout (N-D programs also compile much more slowly).
    The ``params`` are traced, so new hyperparameter values do not recompile either.
    """
    shape, dt = _shape(shape), _float_dtype(dtype)
    _check_key(key)
    matrix = (math.prod(shape[:1]), math.prod(shape[1:]))
    out = _draw(draw, key, matrix, jnp.promote_types(dt, jnp.float32), *params)
    return out.astype(dt).reshape(shape)


def _uniform_draw(key, shape, dtype, a, b):
    return jax.random.uniform(key, shape, dtype, a, b)


def _normal_draw(key, shape, dtype, mean, std):
    return mean + std * jax.random.normal(key, shape, dtype)


def _trunc_normal_draw(key, shape, dtype, mean, std, a, b):
    z = jax.random.truncated_normal(key, (a - mean) / std, (b - mean) / std, shape, dtype)
    return jnp.clip(mean + std * z, a, b)  # guards against rounding at the edges


def _orthogonal_draw(key, shape, dtype, gain):
    rows, cols = shape
    if rows * cols == 0:  # nothing to orthogonalise
        return jnp.zeros(shape, dtype)
    q, r = jnp.linalg.qr(jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype))
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)  # make diag(R) positive
    return gain * (q.T if rows < cols else q)


def uniform(
    key: Key, shape: Shape, dtype: DTypeLike = jnp.float32, a: float = 0.0, b: float = 1.0
) -> jax.Array:
    """Samples from the uniform distribution on ``[a, b)``."""
    a, b = _scalar("a", a), _scalar("b", b)
    if a > b:
        raise ValueError(f"uniform needs a <= b; got a={a}, b={b}")
    return _sample(_uniform_draw, key, shape, dtype, a, b)


def normal(
    key: Key, shape: Shape, dtype: DTypeLike = jnp.float32, mean: float = 0.0, std: float = 1.0
) -> jax.Array:
    """Samples from the normal distribution N(mean, std**2)."""
    mean, std = _scalar("mean", mean), _check_std(std)
    return _sample(_normal_draw, key, shape, dtype, mean, std)


def trunc_normal(
    key: Key,
    shape: Shape,
    dtype: DTypeLike = jnp.float32,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
) -> jax.Array:
    """Samples from N(mean, std**2) conditioned on lying in ``[a, b]``.

    As in PyTorch, ``a`` and ``b`` are absolute cut-offs, not multiples of ``std``.
    """
    mean, std, a, b = _scalar("mean", mean), _check_std(std), _scalar("a", a), _scalar("b", b)
    if std == 0:
        raise ValueError("trunc_normal needs std > 0; got std=0.0")
    if a >= b:
        raise ValueError(f"trunc_normal needs a < b; got a={a}, b={b}")
    return _sample(_trunc_normal_draw, key, shape, dtype, mean, std, a, b)


# --------------------------------------------------------------------------- deterministic fills


def constant(
    key: Key | None, shape: Shape, dtype: DTypeLike = jnp.float32, val: float | None = None
) -> jax.Array:
    """Fills with ``val``; ``key`` is ignored. ``val`` must be a scalar exactly representable
    in an integer or bool ``dtype`` (no silent truncation); float dtypes round as usual."""
    if val is None:
        raise TypeError("constant needs a fill value: pass val=<scalar>")
    if np.ndim(val) != 0:
        raise ValueError(f"val must be a scalar, not an array of shape {np.shape(val)}")
    dt = jnp.dtype(dtype)
    if np.iscomplexobj(val) and not jnp.issubdtype(dt, jnp.complexfloating):
        raise TypeError(f"complex val {val!r} needs a complex dtype; got {dt.name}")
    if not jnp.issubdtype(dt, jnp.inexact) and np.asarray(val).astype(dt) != val:
        raise ValueError(f"val={val!r} is not exactly representable in dtype {dt.name}")
    return jnp.full(_shape(shape), val, dt)


def zeros(key: Key | None, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All zeros; ``key`` is ignored."""
    return constant(key, shape, dtype, 0)


def ones(key: Key | None, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All ones; ``key`` is ignored."""
    return constant(key, shape, dtype, 1)


def eye(key: Key | None, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Identity matrix (ones on the main diagonal) for 2-D shapes; ``key`` is ignored.

    Useful for making a Linear layer start out as the identity map.
    """
    shape = _shape(shape)
    if len(shape) != 2:
        raise ValueError(f"eye needs a 2-D shape; got {shape} ({len(shape)}-D)")
    return jnp.eye(*shape, dtype=dtype)


# --------------------------------------------------------------------------- fan-scaled schemes


def _fan_scaled(key, shape, dtype, std: float, dist: str) -> jax.Array:
    """The shared tail of the xavier/kaiming pairs: zero-mean uniform or normal with ``std``."""
    if dist == "uniform":
        bound = math.sqrt(3.0) * std  # U(-bound, bound) has standard deviation std
        return uniform(key, shape, dtype, -bound, bound)
    return normal(key, shape, dtype, 0.0, std)


def xavier_uniform(
    key: Key, shape: Shape, dtype: DTypeLike = jnp.float32, gain: float = 1.0
) -> jax.Array:
    """Glorot & Bengio (2010): U(-b, b) with std ``gain * sqrt(2 / (fan_in + fan_out))``.

    Balances activation variance forward and gradient variance backward.
    """
    return _fan_scaled(key, shape, dtype, _xavier_std(shape, gain), "uniform")


def xavier_normal(
    key: Key, shape: Shape, dtype: DTypeLike = jnp.float32, gain: float = 1.0
) -> jax.Array:
    """Glorot & Bengio (2010): N(0, std**2) with std ``gain * sqrt(2 / (fan_in + fan_out))``."""
    return _fan_scaled(key, shape, dtype, _xavier_std(shape, gain), "normal")


def kaiming_uniform(
    key: Key,
    shape: Shape,
    dtype: DTypeLike = jnp.float32,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
) -> jax.Array:
    """He et al. (2015): U(-b, b) with ``b = gain * sqrt(3 / fan)``.

    ``mode="fan_in"`` preserves activation variance forward, ``"fan_out"`` gradient variance
    backward; ``a`` is the leaky-ReLU negative slope used for the gain. PyTorch's Linear and Conv
    layers use ``a=math.sqrt(5)``.
    """
    return _fan_scaled(key, shape, dtype, _kaiming_std(shape, a, mode, nonlinearity), "uniform")


def kaiming_normal(
    key: Key,
    shape: Shape,
    dtype: DTypeLike = jnp.float32,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
) -> jax.Array:
    """He et al. (2015): N(0, std**2) with ``std = gain / sqrt(fan)``; arguments as in
    :func:`kaiming_uniform`."""
    return _fan_scaled(key, shape, dtype, _kaiming_std(shape, a, mode, nonlinearity), "normal")


def orthogonal(
    key: Key, shape: Shape, dtype: DTypeLike = jnp.float32, gain: float = 1.0
) -> jax.Array:
    """Saxe et al. (2013): a (semi-)orthogonal matrix scaled by ``gain``.

    Trailing dimensions are flattened to a ``(shape[0], rest)`` matrix whose rows (if it is wide)
    or columns (if tall) are orthonormal. The Q factor of a Gaussian matrix is sign-corrected with
    diag(R) so that the result is uniformly (Haar) distributed.
    """
    shape, gain = _shape(shape), _scalar("gain", gain)
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a shape with at least 2 dimensions; got {shape}")
    return _sample(_orthogonal_draw, key, shape, dtype, gain)
