"""Pooling over ``(N, C, H, W)`` inputs and `Flatten`, with PyTorch's output sizes.

`MaxPool2d` and `AvgPool2d` follow PyTorch's window arithmetic, ``ceil_mode`` included (a last
window that would start in the right padding is dropped), and `AvgPool2d` divides by the same
counts (``count_include_pad``, ``divisor_override``). `AdaptiveAvgPool2d` uses PyTorch's bins
``[floor(i * H / out), ceil((i + 1) * H / out))``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..module import Module, field
from ._utils import check_input, check_int, compute_dtype, describe, int_tuple

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "Flatten", "MaxPool2d"]


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


class _Pool2d(Module):
    """Argument handling shared by `MaxPool2d` and `AvgPool2d`."""

    kernel_size: tuple[int, int] = field(static=True)
    stride: tuple[int, int] = field(static=True)
    padding: tuple[int, int] = field(static=True)
    ceil_mode: bool = field(static=True)

    def _setup(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None,
        padding: int | tuple[int, int],
        ceil_mode: bool,
    ) -> None:
        name = type(self).__name__
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, 2, 1)
        # PyTorch's stride=None (and its stride=[] spelling) mean "the kernel size".
        no_stride = stride is None or (isinstance(stride, (tuple, list)) and not stride)
        self.stride = self.kernel_size if no_stride else int_tuple(name, "stride", stride, 2, 1)
        self.padding = int_tuple(name, "padding", padding, 2, 0)
        self.ceil_mode = bool(ceil_mode)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{name} padding must be at most half the kernel size, got "
                f"padding={self.padding}, kernel_size={self.kernel_size}"
            )

    def _plan(self, x: jax.Array, dilation: tuple[int, int]) -> list[tuple[int, int]]:
        return [
            _window_plan(self, axis, n, k, s, p, d, self.ceil_mode)
            for axis, n, k, s, p, d in zip(
                (2, 3), x.shape[2:], self.kernel_size, self.stride, self.padding, dilation
            )
        ]

    def _check(self, x: jax.Array) -> jax.Array:
        return check_input(self, x, "(N, C, H, W)", ndims=(4,))


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


class MaxPool2d(_Pool2d):
    """The maximum over each window, PyTorch's ``nn.MaxPool2d`` (padding counts as -inf)."""

    dilation: tuple[int, int] = field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        self._setup(kernel_size, stride, padding, ceil_mode)
        self.dilation = int_tuple("MaxPool2d", "dilation", dilation, 2, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._check(x)
        plan = self._plan(x, self.dilation)
        pads = ((0, 0), (0, 0), *((p, p + e) for p, (_, e) in zip(self.padding, plan)))
        if self.dilation != (1, 1):
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
        """Max pooling with dilation over the padded ``x``, window offset by window offset.

        XLA's max ``reduce_window`` has no gradient with window dilation, so the windows are
        gathered as strided slices instead. The gradient goes to the first maximum of each
        window in row-major order, as in PyTorch.
        """
        (oh, _), (ow, _) = plan
        (sh, sw), (dh, dw) = self.stride, self.dilation
        offsets = [
            x[
                :,
                :,
                i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                j * dw : j * dw + (ow - 1) * sw + 1 : sw,
            ]
            for i in range(self.kernel_size[0])
            for j in range(self.kernel_size[1])
        ]
        windows = jnp.stack(offsets, axis=-1)
        first_max = jnp.argmax(windows, axis=-1, keepdims=True)
        return jnp.take_along_axis(windows, first_max, axis=-1)[..., 0]


def _counts(n: int, out: int, k: int, s: int, p: int, include_pad: bool) -> np.ndarray:
    """How many elements each of the ``out`` windows averages over, along one axis."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, n + p)
    if not include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, n)
    return end - start


class AvgPool2d(_Pool2d):
    """The mean over each window, PyTorch's ``nn.AvgPool2d``.

    Padding is zeros; ``count_include_pad`` decides whether it counts in the divisor, and
    ``divisor_override`` replaces the divisor altogether.
    """

    count_include_pad: bool = field(static=True)
    divisor_override: int | None = field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        self._setup(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if divisor_override is not None:
            divisor_override = check_int("AvgPool2d", "divisor_override", divisor_override, 1)
        self.divisor_override = divisor_override

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._check(x)
        plan = self._plan(x, (1, 1))
        wide = x.astype(compute_dtype(x.dtype))  # sum low-precision inputs in float32
        total = lax.reduce_window(
            wide,
            np.zeros((), wide.dtype),  # a constant (not traced) so jax.grad sees a plain sum
            lax.add,
            window_dimensions=(1, 1, *self.kernel_size),
            window_strides=(1, 1, *self.stride),
            padding=((0, 0), (0, 0), *((p, p + e) for p, (_, e) in zip(self.padding, plan))),
        )
        if self.divisor_override is not None:
            divisor = self.divisor_override
        else:
            rows, cols = (
                _counts(n, out, k, s, p, self.count_include_pad)
                for n, (out, _), k, s, p in zip(
                    x.shape[2:], plan, self.kernel_size, self.stride, self.padding
                )
            )
            divisor = np.outer(rows, cols)
        return (total / divisor).astype(x.dtype)


def _bin_matrix(n: int, out: int) -> np.ndarray:
    """``(out, n)`` averaging weights of PyTorch's adaptive bins along one axis."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2d(Module):
    """Averages ``(N, C, H, W)`` into a fixed ``output_size`` whatever H and W are.

    ``output_size`` is an int or ``(h, w)``; ``None`` keeps that axis's input size.
    ``AdaptiveAvgPool2d(1)`` is global average pooling.
    """

    output_size: int | tuple[int | None, int | None] = field(static=True)

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        if isinstance(output_size, int) and not isinstance(output_size, bool):
            sizes = (output_size, output_size)
        else:
            sizes = tuple(output_size)
        if len(sizes) != 2 or not all(s is None or (isinstance(s, int) and s > 0) for s in sizes):
            raise ValueError(
                f"output_size must be a positive int or a pair of positive ints or None, got "
                f"{output_size!r}"
            )
        self.output_size = output_size if isinstance(output_size, int) else sizes

    def __call__(self, x: jax.Array) -> jax.Array:
        x = check_input(self, x, "(N, C, H, W)", ndims=(4,))
        size = self.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        h, w = x.shape[2:]
        oh, ow = oh or h, ow or w
        wide = x.astype(compute_dtype(x.dtype))
        if (oh, ow) == (1, 1):
            return jnp.mean(wide, axis=(2, 3), keepdims=True).astype(x.dtype)
        mh, mw = _bin_matrix(h, oh), _bin_matrix(w, ow)
        return jnp.einsum("nchw,oh,pw->ncop", wide, mh, mw).astype(x.dtype)


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
