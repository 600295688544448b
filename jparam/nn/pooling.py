"""Pooling over channels-first ``(N, C, *spatial)`` inputs and `Flatten`, as in PyTorch.

Max and average pooling come in 1-, 2- and 3-d versions sharing one N-d body. They follow
PyTorch's window arithmetic, ``ceil_mode`` included (a last window that would start in the
right padding is dropped), and average pooling divides by the same counts
(``count_include_pad``, ``divisor_override``). Adaptive pooling uses PyTorch's bins
``[floor(i * size / out), ceil((i + 1) * size / out))`` along each axis.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..module import Module, field
from ._utils import check_input, check_int, compute_dtype, describe, int_tuple

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "Flatten",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
]

_SPATIAL = "DHW"


def _layout(n: int) -> str:
    """``"(N, C, H, W)"`` for 2 spatial axes: the expected input shape, for errors."""
    return f"(N, C, {', '.join(_SPATIAL[-n:])})"


def _window_plan(
    layer: Module,
    axis: int,
    size: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    ceil_mode: bool,
) -> tuple[int, int]:
    """``(number of windows, extra padding at the end)`` along one axis, PyTorch's rule."""
    span = dilation * (kernel - 1) + 1
    room = size + 2 * padding - span
    if room < 0:
        raise ValueError(
            f"{describe(layer)} got a spatial size of {size} on axis {axis}: padded by "
            f"{padding} on each side that is {size + 2 * padding}, smaller than its window "
            f"({span} with dilation), so the output would be empty. Pass a larger input or use "
            "a smaller kernel_size."
        )
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    extra = max((out - 1) * stride + span - (size + 2 * padding), 0)
    return out, extra


def _first_max(x: jax.Array, axis: int, index: np.ndarray) -> jax.Array:
    """Along ``axis``, the maximum of ``x`` over each row of ``index`` (``(out, L)`` positions).

    The gradient goes to the first maximum of each row, as in PyTorch. Reducing the last
    spatial axis first, then the ones before it, picks the first maximum of a whole window in
    row-major order.
    """
    windows = jnp.take(x, jnp.asarray(index), axis=axis)  # axis -> (out, L)
    first = jnp.argmax(windows, axis=axis + 1, keepdims=True)
    return jnp.squeeze(jnp.take_along_axis(windows, first, axis=axis + 1), axis + 1)


class _PoolNd(Module):
    """Argument handling shared by max and average pooling; subclasses set the number of axes."""

    _n: ClassVar[int]

    kernel_size: tuple[int, ...] = field(static=True)
    stride: tuple[int, ...] = field(static=True)
    padding: tuple[int, ...] = field(static=True)
    ceil_mode: bool = field(static=True)

    def _setup(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None,
        padding: int | tuple[int, ...],
        ceil_mode: bool,
    ) -> None:
        name, n = type(self).__name__, self._n
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, n, 1)
        # PyTorch's stride=None (and its stride=[] spelling) mean "the kernel size".
        no_stride = stride is None or (isinstance(stride, (tuple, list)) and not stride)
        self.stride = self.kernel_size if no_stride else int_tuple(name, "stride", stride, n, 1)
        self.padding = int_tuple(name, "padding", padding, n, 0)
        self.ceil_mode = bool(ceil_mode)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{name} padding must be at most half the kernel size, got "
                f"padding={self.padding}, kernel_size={self.kernel_size}"
            )

    def _plan(self, x: jax.Array, dilation: tuple[int, ...]) -> list[tuple[int, int]]:
        return [
            _window_plan(self, axis, n, k, s, p, d, self.ceil_mode)
            for axis, n, k, s, p, d in zip(
                range(2, x.ndim), x.shape[2:], self.kernel_size, self.stride, self.padding, dilation
            )
        ]

    def _check(self, x: jax.Array) -> jax.Array:
        return check_input(self, x, _layout(self._n), ndims=(self._n + 2,))


def _lowest(dtype: np.dtype) -> np.ndarray:
    """The identity of ``max`` for ``dtype`` (-inf, or the smallest integer) as a NumPy scalar.

    It must be a constant, not a ``jnp`` array: under ``jax.jit`` a traced init value hides the
    max-monoid from ``lax.reduce_window``, which then cannot be differentiated.
    """
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if dtype == jnp.bool_:
        return np.array(False)
    return np.array(jnp.iinfo(dtype).min, dtype)


def _no_indices(layer: str, return_indices: Any) -> None:
    """``return_indices=True`` (PyTorch's indices for ``MaxUnpool``) is not supported."""
    if return_indices:
        raise ValueError(
            f"{layer} does not support return_indices=True (there is no MaxUnpool in "
            "jparam.nn): pass return_indices=False"
        )


class _MaxPoolNd(_PoolNd):
    """The maximum over each window (padding counts as -inf); subclasses set the axes."""

    dilation: tuple[int, ...] = field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        name = type(self).__name__
        _no_indices(name, return_indices)
        self._setup(kernel_size, stride, padding, ceil_mode)
        self.dilation = int_tuple(name, "dilation", dilation, self._n, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._check(x)
        plan = self._plan(x, self.dilation)
        pads = ((0, 0), (0, 0), *((p, p + e) for p, (_, e) in zip(self.padding, plan)))
        if any(d != 1 for d in self.dilation):
            return self._dilated(jnp.pad(x, pads, constant_values=_lowest(x.dtype)), plan)
        return lax.reduce_window(
            x,
            _lowest(x.dtype),
            lax.max,
            window_dimensions=(1, 1, *self.kernel_size),
            window_strides=(1, 1, *self.stride),
            padding=pads,
        )

    def _dilated(self, x: jax.Array, plan: list[tuple[int, int]]) -> jax.Array:
        """Max pooling with dilation over the padded ``x``, one axis at a time.

        XLA's max ``reduce_window`` has no gradient with window dilation, so each axis gathers
        its windows instead (see `_first_max`).
        """
        for i in reversed(range(self._n)):
            out, k = plan[i][0], self.kernel_size[i]
            index = np.arange(out)[:, None] * self.stride[i] + np.arange(k) * self.dilation[i]
            x = _first_max(x, i + 2, index)
        return x


class MaxPool1d(_MaxPoolNd):
    """The maximum over each window of ``(N, C, L)``, PyTorch's ``nn.MaxPool1d``."""

    _n = 1


class MaxPool2d(_MaxPoolNd):
    """The maximum over each window, PyTorch's ``nn.MaxPool2d`` (padding counts as -inf)."""

    _n = 2


class MaxPool3d(_MaxPoolNd):
    """The maximum over each window of ``(N, C, D, H, W)``, PyTorch's ``nn.MaxPool3d``."""

    _n = 3


def _counts(n: int, out: int, k: int, s: int, p: int, include_pad: bool) -> np.ndarray:
    """How many elements each of the ``out`` windows averages over, along one axis."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, n + p)
    if not include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, n)
    return end - start


class _AvgPoolNd(_PoolNd):
    """The mean over each window; subclasses set the number of spatial axes.

    Padding is zeros; ``count_include_pad`` decides whether it counts in the divisor, and
    ``divisor_override`` (2-d and 3-d, as in PyTorch) replaces the divisor altogether.
    """

    count_include_pad: bool = field(static=True)
    divisor_override: int | None = field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        self._setup(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if divisor_override is not None:
            name = type(self).__name__
            divisor_override = check_int(name, "divisor_override", divisor_override, 1)
        self.divisor_override = divisor_override

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._check(x)
        plan = self._plan(x, (1,) * self._n)
        wide = x.astype(compute_dtype(x.dtype))  # sum low-precision inputs in float32
        total = lax.reduce_window(
            wide,
            np.zeros((), wide.dtype),  # a constant (not traced) so jax.grad sees a plain sum
            lax.add,
            window_dimensions=(1, 1, *self.kernel_size),
            window_strides=(1, 1, *self.stride),
            padding=((0, 0), (0, 0), *((p, p + e) for p, (_, e) in zip(self.padding, plan))),
        )
        divisor: int | np.ndarray
        if self.divisor_override is not None:
            divisor = self.divisor_override
        else:
            per_axis = [
                _counts(n, out, k, s, p, self.count_include_pad)
                for n, (out, _), k, s, p in zip(
                    x.shape[2:], plan, self.kernel_size, self.stride, self.padding
                )
            ]
            divisor = functools.reduce(np.multiply.outer, per_axis)
        return (total / divisor).astype(x.dtype)


class AvgPool1d(_AvgPoolNd):
    """The mean over each window of ``(N, C, L)``, PyTorch's ``nn.AvgPool1d``."""

    _n = 1

    def __init__(
        self,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] | None = None,
        padding: int | tuple[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """The mean over each window, PyTorch's ``nn.AvgPool2d``.

    Padding is zeros; ``count_include_pad`` decides whether it counts in the divisor, and
    ``divisor_override`` replaces the divisor altogether.
    """

    _n = 2


class AvgPool3d(_AvgPoolNd):
    """The mean over each window of ``(N, C, D, H, W)``, PyTorch's ``nn.AvgPool3d``."""

    _n = 3


def _bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive bins along one axis: ``(out, L)`` positions and a validity mask.

    Bin ``i`` is ``[floor(i * size / out), ceil((i + 1) * size / out))``; shorter bins repeat
    their last position up to the longest bin's length ``L`` (masked out of averages, and
    never the first maximum).
    """
    i = np.arange(out)
    start, end = (i * size) // out, -(-((i + 1) * size) // out)
    steps = np.arange((end - start).max())
    index = np.minimum(start[:, None] + steps, end[:, None] - 1)
    return index, start[:, None] + steps < end[:, None]


class _AdaptivePoolNd(Module):
    """Pools ``(N, C, *spatial)`` into a fixed ``output_size``; subclasses set the axes.

    ``output_size`` is an int or a tuple with one entry per axis; ``None`` keeps that axis's
    input size.
    """

    _n: ClassVar[int]

    output_size: int | tuple[int | None, ...] = field(static=True)

    def _setup(self, output_size: int | tuple[int | None, ...]) -> None:
        n = self._n
        if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
            sizes: tuple[Any, ...] = (output_size,) * n
        elif isinstance(output_size, (tuple, list)):
            sizes = tuple(output_size)
        else:
            sizes = ()
        valid = all(
            s is None or (isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0)
            for s in sizes
        )
        if len(sizes) != n or not valid:
            raise ValueError(
                f"{type(self).__name__} output_size must be a positive int or a tuple of {n} "
                f"positive ints or None, got {output_size!r}"
            )
        ints = tuple(None if s is None else int(s) for s in sizes)
        self.output_size = ints if isinstance(output_size, (tuple, list)) else int(output_size)

    def _sizes(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        """The checked input and the output size along each spatial axis."""
        n = self._n
        x = check_input(self, x, _layout(n), ndims=(n + 2,))
        if 0 in x.shape[2:]:
            raise ValueError(
                f"{describe(self)} got input of shape {tuple(x.shape)}: every spatial axis "
                "needs at least one element to pool over"
            )
        size = self.output_size
        wanted = (size,) * n if isinstance(size, int) else size
        return x, tuple(o or s for o, s in zip(wanted, x.shape[2:]))


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    def __init__(self, output_size: int | tuple[int | None, ...]) -> None:
        self._setup(output_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        x, out = self._sizes(x)
        wide = x.astype(compute_dtype(x.dtype))  # average low-precision inputs in float32
        spatial = tuple(range(2, x.ndim))
        if all(o == 1 for o in out):
            return jnp.mean(wide, axis=spatial, keepdims=True).astype(x.dtype)
        for axis, size, o in zip(spatial, x.shape[2:], out):
            index, valid = _bins(size, o)
            weights = valid / valid.sum(axis=1, keepdims=True)
            windows = jnp.take(wide, jnp.asarray(index), axis=axis)  # axis -> (o, L)
            shape = (o, index.shape[1]) + (1,) * (x.ndim - axis - 1)
            wide = jnp.sum(windows * weights.reshape(shape).astype(wide.dtype), axis=axis + 1)
        return wide.astype(x.dtype)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Averages ``(N, C, L)`` into ``output_size`` bins, PyTorch's ``nn.AdaptiveAvgPool1d``."""

    _n = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Averages ``(N, C, H, W)`` into a fixed ``output_size`` whatever H and W are.

    ``output_size`` is an int or ``(h, w)``; ``None`` keeps that axis's input size.
    ``AdaptiveAvgPool2d(1)`` is global average pooling.
    """

    _n = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """Averages ``(N, C, D, H, W)`` into ``output_size``, PyTorch's ``nn.AdaptiveAvgPool3d``."""

    _n = 3


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    def __init__(
        self, output_size: int | tuple[int | None, ...], return_indices: bool = False
    ) -> None:
        _no_indices(type(self).__name__, return_indices)
        self._setup(output_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        x, out = self._sizes(x)
        for axis in reversed(range(2, x.ndim)):
            x = _first_max(x, axis, _bins(x.shape[axis], out[axis - 2])[0])
        return x


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """The maximum of each of ``output_size`` bins of ``(N, C, L)``, ``nn.AdaptiveMaxPool1d``."""

    _n = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """The maximum of each bin of ``(N, C, H, W)``, PyTorch's ``nn.AdaptiveMaxPool2d``.

    The gradient goes to the first maximum of each bin, as in PyTorch.
    """

    _n = 2


class Flatten(Module):
    """Merges axes ``start_dim..end_dim`` into one, PyTorch's ``nn.Flatten`` (from axis 1)."""

    start_dim: int = field(static=True)
    end_dim: int = field(static=True)

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not isinstance(dim, int) or isinstance(dim, bool):
                raise TypeError(f"Flatten {name} must be an int (an axis), got {dim!r}")
        self.start_dim = start_dim
        self.end_dim = end_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        nd = max(x.ndim, 1)
        start, end = self.start_dim % nd, self.end_dim % nd
        if not (-nd <= self.start_dim < nd and -nd <= self.end_dim < nd) or start > end:
            raise ValueError(f"{describe(self)} cannot flatten input of shape {tuple(x.shape)}")
        merged = math.prod(x.shape[start : end + 1])
        return x.reshape(*x.shape[:start], merged, *x.shape[end + 1 :])
