"""Convolutions over channels-first inputs: `Conv1d`/`2d`/`3d` and `ConvTranspose1d`/`2d`/`3d`.

Inputs are ``(N, C, *spatial)`` and weights use PyTorch's layouts (``(out, in / groups, *k)``
for convolutions, ``(in, out / groups, *k)`` for transposed ones), so PyTorch weights load as
they are. All of them run ``jax.lax.conv_general_dilated`` with explicit dimension numbers and
check windows and padding as PyTorch does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from ..module import Module, field
from ..parameter import Parameter
from ._utils import (
    WEIGHT_AXES,
    check_input,
    check_int,
    describe,
    int_tuple,
    ntuple,
    require_key,
    torch_default_params,
)

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]

_SPATIAL = "DHW"
# PyTorch's padding_mode names -> jnp.pad modes (zeros is the convolution's own padding).
_PAD_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _dimension_numbers(n: int) -> tuple[str, str, str]:
    """Channels-first layouts for ``n`` spatial axes: ``("NCHW", "OIHW", "NCHW")`` for 2-D."""
    s = _SPATIAL[-n:]
    return f"NC{s}", f"OI{s}", f"NC{s}"


def padding_pairs(
    padding: str | int | tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    layer: str = "convolution",
) -> tuple[tuple[int, int], ...]:
    """``(low, high)`` padding per spatial axis from PyTorch's ``padding`` argument.

    ``"valid"`` is no padding; ``"same"`` pads ``dilation * (k - 1)`` in total, the odd one at
    the end, and needs stride 1 as in PyTorch; ints pad both sides equally and must be >= 0.
    """
    n = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(
                f"{layer} padding='same' needs stride 1 (as in PyTorch), got stride={stride}"
            )
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    if isinstance(padding, str):
        raise ValueError(
            f"{layer} padding must be 'same', 'valid', an int or a tuple, got {padding!r}"
        )
    pads = int_tuple(layer, "padding", padding, n, 0)
    return tuple((p, p) for p in pads)


def _check_groups(layer: str, in_channels: int, out_channels: int, groups: Any) -> int:
    """The channel counts must be positive and both divisible by ``groups`` (as in PyTorch)."""
    check_int(layer, "in_channels", in_channels, 1)
    check_int(layer, "out_channels", out_channels, 1)
    groups = check_int(layer, "groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{layer} in_channels={in_channels} and out_channels={out_channels} must both be "
            f"divisible by groups={groups}"
        )
    return groups


def _check_windows(
    layer: Module,
    x: jax.Array,
    pads: tuple[tuple[int, int], ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
    """Refuses a kernel wider than the padded input (the output would be empty), as PyTorch."""
    for axis, (size, (lo, hi), k, d) in enumerate(
        zip(x.shape[2:], pads, kernel_size, dilation), start=2
    ):
        span = d * (k - 1) + 1
        if span > size + lo + hi:
            raise ValueError(
                f"{describe(layer)} got input of shape {tuple(x.shape)}: along axis {axis} the "
                f"padded input is {size + lo + hi} wide ({size} plus padding {lo} + {hi}) but "
                f"the kernel spans {span} (kernel_size {k}, dilation {d}). Kernel size can't be "
                "greater than the padded input size: pass a larger input, more padding or a "
                "smaller kernel."
            )


def _check_mode_padding(
    layer: _ConvNd, x: jax.Array, pads: tuple[tuple[int, int], ...], mode: str
) -> None:
    """Reflect padding must be smaller than the input, circular at most its size (PyTorch)."""
    for axis, (size, (lo, hi)) in enumerate(zip(x.shape[2:], pads), start=2):
        too_big = max(lo, hi) >= size if mode == "reflect" else max(lo, hi) > size
        if too_big:
            limit = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(
                f"{describe(layer)} got input of shape {tuple(x.shape)}: padding_mode="
                f"{layer.padding_mode!r} needs padding {limit} the input size along each axis, "
                f"got padding ({lo}, {hi}) for size {size} on axis {axis}"
            )


def _bias_shape(n: int) -> tuple[int, ...]:
    return (-1,) + (1,) * n


class _ConvNd(Module):
    """The shared body of `Conv1d`, `Conv2d` and `Conv3d`; subclasses set the number of axes."""

    _n: ClassVar[int]

    weight: Parameter
    bias: Parameter | None
    in_channels: int = field(static=True)
    out_channels: int = field(static=True)
    kernel_size: tuple[int, ...] = field(static=True)
    stride: tuple[int, ...] = field(static=True)
    padding: str | tuple[int, ...] = field(static=True)
    dilation: tuple[int, ...] = field(static=True)
    groups: int = field(static=True)
    padding_mode: str = field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        name, n = type(self).__name__, self._n
        require_key(key, name)
        self.groups = _check_groups(name, in_channels, out_channels, groups)
        if padding_mode not in _PAD_MODES:
            raise ValueError(
                f"{name} padding_mode must be one of {tuple(_PAD_MODES)}, got {padding_mode!r}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, n, 1)
        self.stride = int_tuple(name, "stride", stride, n, 1)
        self.dilation = int_tuple(name, "dilation", dilation, n, 1)
        # Validate now so that a bad padding fails at construction, not at the first call.
        padding_pairs(padding, self.kernel_size, self.stride, self.dilation, name)
        self.padding = padding if isinstance(padding, str) else ntuple(padding, n, "padding")
        self.padding_mode = padding_mode
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        axes = (*WEIGHT_AXES, *(None,) * n)
        self.weight, self.bias = torch_default_params(
            key, shape, bias, self.out_channels, dtype, axes
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n = self._n
        x = check_input(
            self,
            x,
            f"(N, {self.in_channels}, {', '.join(_SPATIAL[-n:])})",
            ndims=(n + 2,),
            sizes={1: self.in_channels},
        )
        pads = padding_pairs(self.padding, self.kernel_size, self.stride, self.dilation)
        _check_windows(self, x, pads, self.kernel_size, self.dilation)
        mode = _PAD_MODES[self.padding_mode]
        if mode is not None:
            if self.padding_mode in ("reflect", "circular"):
                _check_mode_padding(self, x, pads, self.padding_mode)
            x = jnp.pad(x, ((0, 0), (0, 0), *pads), mode=mode)
            pads = ((0, 0),) * n
        y = lax.conv_general_dilated(
            x,
            self.weight.value,
            window_strides=self.stride,
            padding=pads,
            rhs_dilation=self.dilation,
            dimension_numbers=_dimension_numbers(n),
            feature_group_count=self.groups,
        )
        return y if self.bias is None else y + self.bias.value.reshape(_bias_shape(n))


class Conv1d(_ConvNd):
    """1-D convolution over ``(N, C_in, L)``, PyTorch's ``nn.Conv1d``.

    Arguments are PyTorch's (``stride``, ``padding`` as int, tuple, ``"same"`` or ``"valid"``,
    ``dilation``, ``groups``, ``bias``, ``padding_mode`` in zeros/reflect/replicate/circular)
    plus ``key`` and ``dtype``. ``weight`` is ``(out, in / groups, k)``.
    """

    _n = 1


class Conv2d(_ConvNd):
    """2-D convolution over ``(N, C_in, H, W)``, PyTorch's ``nn.Conv2d``.

    Arguments are PyTorch's (``stride``, ``padding`` as int, tuple, ``"same"`` or ``"valid"``,
    ``dilation``, ``groups``, ``bias``, ``padding_mode`` in zeros/reflect/replicate/circular)
    plus ``key`` and ``dtype``. ``weight`` is ``(out, in / groups, kh, kw)``; default init is
    PyTorch's (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias)::

        conv = nn.Conv2d(3, 8, 3, padding="same", key=jax.random.key(0))
        y = conv(jnp.ones((2, 3, 16, 16)))
        assert y.shape == (2, 8, 16, 16)
    """

    _n = 2


class Conv3d(_ConvNd):
    """3-D convolution over ``(N, C_in, D, H, W)``, PyTorch's ``nn.Conv3d``.

    Arguments are those of `Conv2d`; ``weight`` is ``(out, in / groups, kd, kh, kw)``.
    """

    _n = 3


class _ConvTransposeNd(Module):
    """The shared body of the transposed convolutions; subclasses set the number of axes."""

    _n: ClassVar[int]

    weight: Parameter
    bias: Parameter | None
    in_channels: int = field(static=True)
    out_channels: int = field(static=True)
    kernel_size: tuple[int, ...] = field(static=True)
    stride: tuple[int, ...] = field(static=True)
    padding: tuple[int, ...] = field(static=True)
    output_padding: tuple[int, ...] = field(static=True)
    groups: int = field(static=True)
    dilation: tuple[int, ...] = field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, ...] = 1,
        padding_mode: str = "zeros",
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        name, n = type(self).__name__, self._n
        require_key(key, name)
        self.groups = _check_groups(name, in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(
                f"{name} supports padding_mode='zeros' only (as PyTorch), got {padding_mode!r}"
            )
        if isinstance(padding, str):
            raise ValueError(
                f"{name} padding must be an int or a tuple of {n} ints, got {padding!r}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, n, 1)
        self.stride = int_tuple(name, "stride", stride, n, 1)
        self.dilation = int_tuple(name, "dilation", dilation, n, 1)
        self.padding = int_tuple(name, "padding", padding, n, 0)
        self.output_padding = int_tuple(name, "output_padding", output_padding, n, 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"{name} output_padding must be smaller than stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )
        shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        axes = (*reversed(WEIGHT_AXES), *(None,) * n)  # PyTorch's (in, out // groups, *k)
        self.weight, self.bias = torch_default_params(
            key, shape, bias, self.out_channels, dtype, axes
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n = self._n
        x = check_input(
            self,
            x,
            f"(N, {self.in_channels}, {', '.join(_SPATIAL[-n:])})",
            ndims=(n + 2,),
            sizes={1: self.in_channels},
        )
        self._check_output_size(x)
        # A transposed convolution is a convolution of the stride-dilated input with the
        # spatially flipped kernel whose in/out axes are swapped within each group.
        g, k = self.groups, self.kernel_size
        w = self.weight.value.reshape(g, self.in_channels // g, self.out_channels // g, *k)
        w = jnp.swapaxes(w, 1, 2).reshape(self.out_channels, self.in_channels // g, *k)
        w = jnp.flip(w, axis=tuple(range(2, n + 2)))
        pads = tuple(
            (d * (kk - 1) - p, d * (kk - 1) - p + op)
            for p, kk, d, op in zip(self.padding, k, self.dilation, self.output_padding)
        )
        y = lax.conv_general_dilated(
            x,
            w,
            window_strides=(1,) * n,
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.dilation,
            dimension_numbers=_dimension_numbers(n),
            feature_group_count=g,
        )
        return y if self.bias is None else y + self.bias.value.reshape(_bias_shape(n))

    def _check_output_size(self, x: jax.Array) -> None:
        """Refuses inputs whose output would be empty (too much padding), as PyTorch does."""
        sizes = tuple(
            (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, s, p, d, k, op in zip(
                x.shape[2:],
                self.stride,
                self.padding,
                self.dilation,
                self.kernel_size,
                self.output_padding,
            )
        )
        if min(sizes) < 1:
            raise ValueError(
                f"{describe(self)} got input of shape {tuple(x.shape)}, whose output would be "
                f"{sizes} along the spatial axes: (size - 1) * stride - 2 * padding + "
                "dilation * (k - 1) + output_padding + 1 must be at least 1. Use less padding "
                "or a larger input."
            )


class ConvTranspose1d(_ConvTransposeNd):
    """Transposed 1-D convolution (the gradient of `Conv1d`), PyTorch's ``nn.ConvTranspose1d``.

    ``weight`` is ``(in, out / groups, k)``; arguments and output length are as in
    `ConvTranspose2d`, along one axis.
    """

    _n = 1


class ConvTranspose2d(_ConvTransposeNd):
    """Transposed 2-D convolution (the gradient of `Conv2d`), PyTorch's ``nn.ConvTranspose2d``.

    ``weight`` is ``(in, out / groups, kh, kw)`` as in PyTorch. The output of an ``H``-high
    input is ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`` high;
    ``output_padding`` (smaller than stride or dilation) picks among the sizes that a strided
    `Conv2d` maps to the same size.
    """

    _n = 2


class ConvTranspose3d(_ConvTransposeNd):
    """Transposed 3-D convolution (the gradient of `Conv3d`), PyTorch's ``nn.ConvTranspose3d``.

    ``weight`` is ``(in, out / groups, kd, kh, kw)``; arguments and output sizes are as in
    `ConvTranspose2d`, along three axes.
    """

    _n = 3
