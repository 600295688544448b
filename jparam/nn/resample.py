"""Resampling: `interpolate` / `Upsample` and `PixelShuffle` / `PixelUnshuffle` (PyTorch's).

`interpolate` follows PyTorch's index arithmetic exactly rather than ``jax.image.resize``
(which agrees with PyTorch only in some cases): for each output position along an axis it
computes PyTorch's source indices and weights, in float32 as PyTorch's CPU kernels do, then
gathers and blends. The indices depend only on shapes, so they are computed once while tracing
and cost nothing at run time; gradients flow through the gathers.

One known difference: for ``mode="nearest"`` with a ``scale_factor`` that leaves an axis's size
unchanged (5 * 1.1 -> 5) or exactly doubled, PyTorch's backward takes a shortcut (identity, or
``dst // 2``) that its forward does not; the forward matches PyTorch and the gradient here is
the true gradient of that forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..module import Module, field
from ._utils import check_int, compute_dtype, shape_error

__all__ = ["PixelShuffle", "PixelUnshuffle", "Upsample", "interpolate"]

# Spatial ranks each mode accepts (PyTorch's rules).
_MODE_RANKS = {
    "nearest": (1, 2, 3),
    "nearest-exact": (1, 2, 3),
    "linear": (1,),
    "bilinear": (2,),
    "bicubic": (2,),
    "trilinear": (3,),
}
_INTERPOLATING = ("linear", "bilinear", "bicubic", "trilinear")
_CUBIC_A = np.float32(-0.75)  # PyTorch's bicubic kernel parameter


def _check_mode(mode: str, align_corners: bool | None, antialias: bool, spatial: int) -> None:
    if mode not in _MODE_RANKS:
        raise ValueError(
            f"interpolate mode must be one of {', '.join(map(repr, _MODE_RANKS))}, got {mode!r} "
            "('area' is nn.AdaptiveAvgPool1d/2d/3d)"
        )
    if align_corners is not None and mode not in _INTERPOLATING:
        raise ValueError(
            "interpolate align_corners can only be set with the interpolating modes "
            f"{', '.join(_INTERPOLATING)}; got align_corners={align_corners!r} with mode={mode!r}"
        )
    if antialias:
        raise NotImplementedError("interpolate antialias=True is not supported by jparam")
    if spatial not in _MODE_RANKS[mode]:
        ranks = " or ".join(f"{r + 2}-d" for r in _MODE_RANKS[mode])
        raise ValueError(
            f"interpolate mode={mode!r} needs {ranks} input (N, C, *spatial), got an input with "
            f"{spatial + 2} axes"
        )


def _per_axis(value: Any, spatial: int, name: str, kind: type) -> tuple[Any, ...]:
    """``value`` as one entry per spatial axis (a scalar is repeated), or a clear error."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != spatial:
            raise ValueError(
                f"interpolate {name} must have one entry per spatial axis ({spatial}), got "
                f"{value!r}"
            )
        values = tuple(value)
    else:
        values = (value,) * spatial
    ok = _is_int if kind is int else _is_number
    if not all(ok(v) for v in values):
        what = "an int" if kind is int else "a number"
        raise TypeError(f"interpolate {name} must be {what} or a sequence of them, got {value!r}")
    return tuple(kind(v) for v in values)


def _is_int(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, float, np.integer, np.floating)
    )


def _output_size(
    in_sizes: tuple[int, ...],
    size: Any,
    scale_factor: Any,
    recompute_scale_factor: bool | None,
) -> tuple[tuple[int, ...], tuple[float | None, ...]]:
    """Output sizes and the scales PyTorch's kernels get (``None``: use in/out)."""
    spatial = len(in_sizes)
    if (size is None) == (scale_factor is None):
        which = "either" if size is None else "only one of"
        raise ValueError(f"interpolate needs {which} size or scale_factor, not both or neither")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError(
                "interpolate recompute_scale_factor is not meaningful with an explicit size"
            )
        out = _per_axis(size, spatial, "size", int)
        scales: tuple[float | None, ...] = (None,) * spatial
    else:
        factors = _per_axis(scale_factor, spatial, "scale_factor", float)
        out = tuple(math.floor(n * f) for n, f in zip(in_sizes, factors))
        scales = (None,) * spatial if recompute_scale_factor else factors
    if any(n < 1 for n in in_sizes + out):
        raise ValueError(
            f"interpolate needs input and output sizes greater than 0, got spatial input size "
            f"{in_sizes} and output size {out}"
        )
    return out, scales


def _scale(n_in: int, n_out: int, align_corners: bool, scale: float | None) -> np.float32:
    """PyTorch's ``area_pixel_compute_scale``: the source step per output step, in float32."""
    if align_corners:
        return np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(n_in) / np.float32(n_out)


def _source(ratio: np.float32, n_out: int, align_corners: bool, cubic: bool) -> np.ndarray:
    """PyTorch's ``area_pixel_compute_source_index`` for every output position (float32)."""
    dst = np.arange(n_out, dtype=np.float32)
    if align_corners:
        return ratio * dst
    src = ratio * (dst + np.float32(0.5)) - np.float32(0.5)
    return src if cubic else np.maximum(src, np.float32(0))


def _nearest(n_in: int, n_out: int, scale: float | None, exact: bool) -> list:
    ratio = _scale(n_in, n_out, False, scale)
    dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5 if exact else 0)
    index = np.minimum(np.floor(dst * ratio).astype(np.int64), n_in - 1)
    return [(index, None)]


def _linear(n_in: int, n_out: int, scale: float | None, align_corners: bool) -> list:
    if n_in == n_out:
        return [(np.arange(n_in), None)]
    src = _source(_scale(n_in, n_out, align_corners, scale), n_out, align_corners, False)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return [(i0, np.float32(1) - lam1), (i1, lam1)]


def _cubic(n_in: int, n_out: int, scale: float | None, align_corners: bool) -> list:
    src = _source(_scale(n_in, n_out, align_corners, scale), n_out, align_corners, True)
    i = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - i.astype(np.float32), 0, 1).astype(np.float32)
    a, one = _CUBIC_A, np.float32(1)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + one

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + one), near(t), near(one - t), far(one - t + one))
    return [(np.clip(i - 1 + j, 0, n_in - 1), w) for j, w in enumerate(weights)]


def _resample_axis(x: jax.Array, axis: int, taps: list) -> jax.Array:
    """``sum(x[..., index, ...] * weight)`` over the taps along ``axis``."""
    out = None
    for index, weight in taps:
        gathered = jnp.take(x, jnp.asarray(index), axis=axis)
        if weight is not None:
            shape = [1] * x.ndim
            shape[axis] = -1
            gathered = gathered * jnp.asarray(weight, x.dtype).reshape(shape)
        out = gathered if out is None else out + gathered
    assert out is not None  # every resampling has at least one tap
    return out


def interpolate(
    input: jax.Array,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> jax.Array:
    """Resizes the spatial axes of ``input`` ``(N, C, *spatial)``, PyTorch's ``F.interpolate``.

    Give exactly one of ``size`` (output size per spatial axis) and ``scale_factor`` (output
    size ``floor(input_size * scale_factor)``; the factor itself sets the sampling step unless
    ``recompute_scale_factor=True``). Modes: ``"nearest"`` (source index
    ``floor(dst * in / out)``), ``"nearest-exact"``, ``"linear"`` (3-d input), ``"bilinear"``
    and ``"bicubic"`` (4-d, cubic kernel with ``A = -0.75``), ``"trilinear"`` (5-d);
    ``align_corners`` as in PyTorch for the interpolating modes. The output has input's dtype::

        x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        y = nn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        assert y.shape == (1, 1, 8, 8) and y.dtype == x.dtype
    """
    x = jnp.asarray(input)
    spatial = x.ndim - 2
    if spatial < 1:
        raise ValueError(
            f"interpolate needs input of shape (N, C, *spatial), got shape {tuple(x.shape)}"
        )
    _check_mode(mode, align_corners, antialias, spatial)
    if mode in _INTERPOLATING and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"interpolate mode={mode!r} needs a floating-point input, got {x.dtype}; cast it "
            "first (x.astype(jnp.float32)) or use mode='nearest'"
        )
    corners = bool(align_corners)
    out_sizes, scales = _output_size(tuple(x.shape[2:]), size, scale_factor, recompute_scale_factor)
    y = x.astype(compute_dtype(x.dtype)) if mode not in ("nearest", "nearest-exact") else x
    for axis, (n_in, n_out, scale) in enumerate(zip(x.shape[2:], out_sizes, scales), start=2):
        if mode in ("nearest", "nearest-exact"):
            taps = _nearest(n_in, n_out, scale, mode == "nearest-exact")
        elif mode == "bicubic":
            taps = _cubic(n_in, n_out, scale, corners)
        else:
            taps = _linear(n_in, n_out, scale, corners)
        y = _resample_axis(y, axis, taps)
    return y.astype(x.dtype)


def _static(value: Any) -> Any:
    """Lists become tuples, so that hyperparameters are hashable static fields."""
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


class Upsample(Module):
    """Resizes ``(N, C, *spatial)`` inputs with `interpolate`, PyTorch's ``nn.Upsample``.

    ``nn.Upsample(scale_factor=2, mode="bilinear")`` doubles height and width; arguments are
    `interpolate`'s, checked here at construction where they do not depend on the input.
    """

    size: Any = field(static=True)
    scale_factor: Any = field(static=True)
    mode: str = field(static=True)
    align_corners: bool | None = field(static=True)
    recompute_scale_factor: bool | None = field(static=True)

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> None:
        if (size is None) == (scale_factor is None):
            which = "either" if size is None else "only one of"
            raise ValueError(f"Upsample needs {which} size or scale_factor, not both or neither")
        if mode not in _MODE_RANKS:
            _check_mode(mode, None, False, 0)  # raises, naming the valid modes
        if align_corners is not None and mode not in _INTERPOLATING:
            _check_mode(mode, align_corners, False, _MODE_RANKS[mode][0])
        self.size = _static(size)
        self.scale_factor = _static(scale_factor)
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def __call__(self, x: jax.Array) -> jax.Array:
        """Resizes ``x``; shapes and modes are checked as in `interpolate`."""
        return interpolate(
            x,
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )


class PixelShuffle(Module):
    """Moves channels into space: ``(*, C * r**2, H, W) -> (*, C, H * r, W * r)``, PyTorch's
    ``nn.PixelShuffle`` (sub-pixel convolution's upsampling), with PyTorch's element order."""

    upscale_factor: int = field(static=True)

    def __init__(self, upscale_factor: int) -> None:
        self.upscale_factor = check_int("PixelShuffle", "upscale_factor", upscale_factor, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Rearranges ``x`` of shape ``(*, C * r**2, H, W)``."""
        r = self.upscale_factor
        x = jnp.asarray(x)
        if x.ndim < 3 or x.shape[-3] % (r * r):
            raise shape_error(self, f"(*, C * {r * r}, H, W)", x)
        *batch, c, h, w = x.shape
        y = x.reshape(*batch, c // (r * r), r, r, h, w)
        n = len(batch)
        y = jnp.transpose(y, (*range(n), n, n + 3, n + 1, n + 4, n + 2))
        return y.reshape(*batch, c // (r * r), h * r, w * r)


class PixelUnshuffle(Module):
    """Moves space into channels: ``(*, C, H * r, W * r) -> (*, C * r**2, H, W)``, PyTorch's
    ``nn.PixelUnshuffle``, the inverse of `PixelShuffle`."""

    downscale_factor: int = field(static=True)

    def __init__(self, downscale_factor: int) -> None:
        self.downscale_factor = check_int("PixelUnshuffle", "downscale_factor", downscale_factor, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Rearranges ``x`` of shape ``(*, C, H * r, W * r)``."""
        r = self.downscale_factor
        x = jnp.asarray(x)
        if x.ndim < 3 or x.shape[-2] % r or x.shape[-1] % r:
            raise shape_error(self, f"(*, C, H * {r}, W * {r})", x)
        *batch, c, h, w = x.shape
        y = x.reshape(*batch, c, h // r, r, w // r, r)
        n = len(batch)
        y = jnp.transpose(y, (*range(n), n, n + 2, n + 4, n + 1, n + 3))
        return y.reshape(*batch, c * r * r, h // r, w // r)
