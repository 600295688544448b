"""Dtype and placement of whole trees: ``astype`` (``half``/``bfloat16``) and ``to(device)``.

Only floating arrays change dtype; integer and bool arrays (step counters, token ids) keep
theirs, as with PyTorch's ``module.half()``. `jp.amp.Policy` casts through `astype` too, leaving
Buffers alone as PyTorch's autocast does.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from .conversion import dtype_kind
from .parameter import Buffer, Variable
from .paths import is_variable

__all__ = ["astype", "floating_dtype", "is_floating", "to"]

T = TypeVar("T")


def is_floating(x: Any) -> bool:
    """Whether ``x`` (an array, a Parameter or a Buffer) has a floating dtype."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and dtype_kind(dtype) == "floating"


def floating_dtype(dtype: Any, what: str = "dtype") -> np.dtype:
    """``dtype`` as a NumPy dtype if arrays can be cast to it, else an error naming ``what``.

    It must be a floating dtype, and a 64-bit one only with ``jax_enable_x64`` on (JAX would
    otherwise silently make the arrays float32).
    """
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what} must be a floating dtype, got {dtype!r}") from None
    if dtype_kind(dt) != "floating":
        raise TypeError(
            f"{what} must be a floating dtype, got {dt}: only floating arrays are cast, "
            "integer and bool arrays keep their dtype"
        )
    if dt.itemsize == 8 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"{what} is {dt}, but 64-bit types are disabled in JAX, so the arrays would silently "
            'be float32; call jax.config.update("jax_enable_x64", True) first'
        )
    return dt


def astype(tree: T, dtype: Any, *, include_buffers: bool = True) -> T:
    """Returns ``tree`` with its floating arrays cast to ``dtype``; integer and bool ones are kept.

    Parameters (trainable and frozen) and plain arrays are cast, and so are Buffers, as with
    PyTorch's ``.to(dtype)``/``.half()``. ``include_buffers=False`` keeps Buffers as they are,
    as PyTorch's autocast does (BatchNorm's running statistics stay in full precision): the
    rule of `jp.amp.Policy`. An array already in ``dtype`` is returned as it is.
    """
    dt = floating_dtype(dtype, "astype: dtype")

    def cast(x: Any) -> Any:
        if not is_floating(x) or x.dtype == dt or (isinstance(x, Buffer) and not include_buffers):
            return x
        return x.astype(dt) if isinstance(x, Variable) else jnp.asarray(x).astype(dt)

    return tree_util.tree_map(cast, tree, is_leaf=is_variable)


def _is_dtype(x: Any) -> bool:
    if isinstance(x, (str, type, np.dtype)):
        try:
            jnp.dtype(x)
            return True
        except TypeError:
            return False
    return False


def to(tree: T, target: Any) -> T:
    """Returns ``tree`` on a device or sharding (``jax.device_put``), or cast to a dtype.

    ``target`` may be a ``jax.Device``, a ``jax.sharding.Sharding``, a platform name such as
    ``"cpu"``/``"gpu"``/``"tpu"`` (its first device), or a floating dtype.
    """
    if isinstance(target, str) and target.split(":")[0] in ("cpu", "gpu", "cuda", "tpu", "rocm"):
        platform, _, index = target.partition(":")
        platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
        try:
            devices = jax.devices(platform)
        except RuntimeError as e:
            raise ValueError(f"to({target!r}): no {platform} devices are available ({e})") from None
        if (index and not index.isdigit()) or int(index or 0) >= len(devices):
            raise ValueError(
                f"to({target!r}): there are {len(devices)} {platform} device(s), "
                f"{platform}:0 to {platform}:{len(devices) - 1}"
            )
        target = devices[int(index) if index else 0]
    elif _is_dtype(target):
        return astype(tree, target)
    return jax.device_put(tree, target)
