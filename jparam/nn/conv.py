"""Convolutions over channels-first inputs: `Conv1d`, `Conv2d` and `ConvTranspose2d`.

Inputs are ``(N, C, *spatial)`` and weights use PyTorch's layouts (``(out, in / groups, *k)``
for convolutions, ``(in, out / groups, *k)`` for transposed ones), so PyTorch weights load as
they are. All three run ``jax.lax.conv_general_dilated`` with explicit dimension numbers and
share one padding helper.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from ..module import Module, field
from ..parameter import Parameter
from ._utils import WEIGHT_AXES, check_input, ntuple, require_key, torch_default_params

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d"]

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
) -> tuple[tuple[int, int], ...]:
    """``(low, high)`` padding per spatial axis from PyTorch's ``padding`` argument.

    ``"valid"`` is no padding; ``"same"`` pads ``dilation * (k - 1)`` in total, the odd one at
    the end, and needs stride 1 as in PyTorch; ints pad both sides equally.
    """
    n = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
    pads = ntuple(padding, n, "padding")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple((p, p) for p in pads)


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must both be divisible "
            f"by groups={groups}"
        )


def _bias_shape(n: int) -> tuple[int, ...]:
    return (-1,) + (1,) * n


class _ConvNd(Module):
    """The shared body of `Conv1d` and `Conv2d`; subclasses set the number of spatial axes."""

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
        _check_channels(in_channels, out_channels, groups)
        if padding_mode not in _PAD_MODES:
            raise ValueError(
                f"{name} padding_mode must be one of {tuple(_PAD_MODES)}, got {padding_mode!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.stride = ntuple(stride, n, "stride")
        self.dilation = ntuple(dilation, n, "dilation")
        # Validate now so that a bad padding fails at construction, not at the first call.
        padding_pairs(padding, self.kernel_size, self.stride, self.dilation)
        self.padding = padding if isinstance(padding, str) else ntuple(padding, n, "padding")
        self.groups = groups
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        axes = (*WEIGHT_AXES, *(None,) * n)
        self.weight, self.bias = torch_default_params(key, shape, bias, out_channels, dtype, axes)

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
        mode = _PAD_MODES[self.padding_mode]
        if mode is not None:
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

        conv = nn.Conv2d(3, 16, 3, padding="same", key=key)
        y = conv(jnp.ones((8, 3, 32, 32)))    # (8, 16, 32, 32)
    """

    _n = 2


class ConvTranspose2d(Module):
    """Transposed 2-D convolution (the gradient of `Conv2d`), PyTorch's ``nn.ConvTranspose2d``.

    ``weight`` is ``(in, out / groups, kh, kw)`` as in PyTorch. The output of an ``H``-high
    input is ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`` high;
    ``output_padding`` (smaller than stride or dilation) picks among the sizes that a strided
    `Conv2d` maps to the same size.
    """

    weight: Parameter
    bias: Parameter | None
    in_channels: int = field(static=True)
    out_channels: int = field(static=True)
    kernel_size: tuple[int, int] = field(static=True)
    stride: tuple[int, int] = field(static=True)
    padding: tuple[int, int] = field(static=True)
    output_padding: tuple[int, int] = field(static=True)
    groups: int = field(static=True)
    dilation: tuple[int, int] = field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        padding_mode: str = "zeros",
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        require_key(key, "ConvTranspose2d")
        _check_channels(in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(
                f"ConvTranspose2d supports padding_mode='zeros' only (as PyTorch), "
                f"got {padding_mode!r}"
            )
        if isinstance(padding, str):
            raise ValueError(
                f"ConvTranspose2d padding must be an int or a tuple of 2 ints, got {padding!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, 2, "kernel_size")
        self.stride = ntuple(stride, 2, "stride")
        self.dilation = ntuple(dilation, 2, "dilation")
        self.padding = ntuple(padding, 2, "padding")
        padding_pairs(self.padding, self.kernel_size, self.stride, self.dilation)
        self.output_padding = ntuple(output_padding, 2, "output_padding")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not 0 <= op < max(s, d):
                raise ValueError(
                    f"output_padding must be smaller than stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )
        self.groups = groups
        shape = (in_channels, out_channels // groups, *self.kernel_size)
        axes = (*reversed(WEIGHT_AXES), None, None)  # PyTorch's (in, out // groups, kh, kw)
        self.weight, self.bias = torch_default_params(key, shape, bias, out_channels, dtype, axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = check_input(
            self, x, f"(N, {self.in_channels}, H, W)", ndims=(4,), sizes={1: self.in_channels}
        )
        # A transposed convolution is a convolution of the stride-dilated input with the
        # spatially flipped kernel whose in/out axes are swapped within each group.
        g, k = self.groups, self.kernel_size
        w = self.weight.value.reshape(g, self.in_channels // g, self.out_channels // g, *k)
        w = jnp.swapaxes(w, 1, 2).reshape(self.out_channels, self.in_channels // g, *k)
        w = jnp.flip(w, axis=(2, 3))
        pads = padding_pairs(self.padding, k, self.stride, self.dilation)
        pads = tuple(
            (d * (kk - 1) - lo, d * (kk - 1) - hi + op)
            for (lo, hi), kk, d, op in zip(pads, k, self.dilation, self.output_padding)
        )
        y = lax.conv_general_dilated(
            x,
            w,
            window_strides=(1, 1),
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.dilation,
            dimension_numbers=_dimension_numbers(2),
            feature_group_count=g,
        )
        return y if self.bias is None else y + self.bias.value.reshape(_bias_shape(2))
