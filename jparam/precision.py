"""Dtype and placement of whole trees: ``astype``, ``half``/``bfloat16``, ``to(device)``.

Only floating arrays change dtype; integer and bool arrays (step counters, token ids) keep
theirs, as with PyTorch's ``module.half()``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from .parameter import _Variable
from .paths import map_variables

__all__ = ["astype", "to"]

T = TypeVar("T")


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"astype expects a floating dtype, got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"astype casts floating arrays only and expects a floating dtype, got {dt}; "
            "integer arrays keep their dtype"
        )
    if dt.itemsize == 8 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"cannot cast to {dt}: 64-bit types are disabled in JAX, so the result would "
            'silently be float32. Call jax.config.update("jax_enable_x64", True) first.'
        )
    return dt


def astype(tree: T, dtype: Any) -> T:
    """Returns ``tree`` with every floating array (parameters, buffers, plain) cast to ``dtype``."""
    dt = _check_dtype(dtype)

    def cast(_, x):
        value = x.value if isinstance(x, _Variable) else x
        if not hasattr(value, "dtype") or not jnp.issubdtype(value.dtype, jnp.floating):
            return x
        if value.dtype == dt:
            return x
        return x.astype(dt) if isinstance(x, _Variable) else jnp.asarray(value).astype(dt)

    return map_variables(tree, cast, arrays=True)


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
