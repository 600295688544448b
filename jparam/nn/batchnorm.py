"""Batch and instance normalisation: `BatchNorm1d/2d/3d` and `InstanceNorm1d/2d/3d`.

BatchNorm uses batch statistics in training and running statistics in eval; InstanceNorm
normalises each sample on its own and keeps running statistics only when asked
(``track_running_stats=True``), as in PyTorch.

The running statistics are `jp.Buffer` s (``running_mean``, ``running_var``,
``num_batches_tracked``, PyTorch's names), so they are saved and loaded with the model but never
see gradients or optimizer state. A module is immutable, so a training-mode call cannot update
them in place. Instead:

- ``bn(x)`` always returns just the output. In training mode it hands its updated copy to the
  enclosing `nn.stateful_call`, which returns the whole model with new statistics::

      model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.BatchNorm1d(2))
      x = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)

      model = model.train()
      y, model = nn.stateful_call(model, x)      # works through Sequential, MLP, your modules
      y = model.eval()(x)                        # uses the running statistics
      assert int(model[1].num_batches_tracked.value) == 1

  Called in training mode outside `nn.stateful_call`, it raises instead of dropping the update.
- ``y, bn = nn.stateful_call(bn, x)`` is the same step for one layer on its own.

The running variance is updated with the unbiased batch variance while the batch is normalised
with the biased one, exactly as PyTorch does; ``momentum=None`` gives the cumulative average.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Buffer, Parameter
from ..stateful import update_state
from ._utils import (
    NORM_AXES,
    affine,
    check_eps,
    check_input,
    check_int,
    check_probability,
    compute_dtype,
    describe,
    standardize,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
]


class _BatchNorm(Module):
    """The body shared by the batch norms (they differ in accepted ranks) and instance norms."""

    _ndims: ClassVar[tuple[int, ...]]
    _layout: ClassVar[str]

    weight: Parameter | None
    bias: Parameter | None
    running_mean: Buffer | None
    running_var: Buffer | None
    num_batches_tracked: Buffer | None
    num_features: int = field(static=True)
    eps: float = field(static=True)
    momentum: float | None = field(static=True)
    affine: bool = field(static=True)
    track_running_stats: bool = field(static=True)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        name = type(self).__name__
        self.num_features = check_int(name, "num_features", num_features, 1)
        self.eps = check_eps(name, eps)
        if momentum is not None:
            check_probability(name, "momentum", momentum)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        shape = (self.num_features,)
        axes = NORM_AXES  # logical sharding names (see jparam.sharding)
        self.weight = Parameter(init.ones(None, shape, dtype), axes=axes) if affine else None
        self.bias = Parameter(init.zeros(None, shape, dtype), axes=axes) if affine else None
        if track_running_stats:
            self.running_mean = Buffer(init.zeros(None, shape, dtype), axes=axes)
            self.running_var = Buffer(init.ones(None, shape, dtype), axes=axes)
            # int64 in PyTorch; JAX's default integer (int32 unless x64 is enabled) here.
            self.num_batches_tracked = Buffer(jnp.zeros((), int), axes=())
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _check(self, x: jax.Array) -> jax.Array:
        layout = self._layout.format(c=self.num_features)
        return check_input(self, x, layout, self._ndims, {1: self.num_features})

    def _param_shape(self, x: jax.Array) -> tuple[int, ...]:
        """Per-channel values reshaped to broadcast over ``x`` (channels on axis 1)."""
        return (-1,) + (1,) * (x.ndim - 2)

    def _out(self, y: jax.Array, x: jax.Array) -> jax.Array:
        return affine(y, self.weight, self.bias, self._param_shape(x)).astype(x.dtype)

    def _forward_train(self, x: jax.Array) -> tuple[jax.Array, _BatchNorm]:
        """Normalises with batch statistics and returns ``(y, bn_with_updated_statistics)``.

        Without running statistics (``track_running_stats=False``) the layer is returned as is.
        """
        x = self._check(x)
        y, mean, var = standardize(x, (0, *range(2, x.ndim)), self.eps)
        y = self._out(y, x)
        if not self.track_running_stats:
            return y, self
        n = x.size // self.num_features
        if n < 2:
            raise ValueError(
                f"{describe(self)} in training mode needs more than 1 value per channel to "
                f"estimate a variance, got input of shape {tuple(x.shape)}"
            )
        assert self.num_batches_tracked is not None  # tracked: the three Buffers are there
        count = self.num_batches_tracked.value + 1
        rate = 1.0 / count if self.momentum is None else self.momentum
        # Statistics are no part of the gradient (PyTorch updates them under no_grad).
        mean = jax.lax.stop_gradient(mean.reshape(-1))
        unbiased = jax.lax.stop_gradient(var.reshape(-1)) * (n / (n - 1))
        new = self.replace(
            running_mean=self._blend(self.running_mean, mean, rate),
            running_var=self._blend(self.running_var, unbiased, rate),
            num_batches_tracked=self.num_batches_tracked.replace(count),
        )
        return y, new

    @staticmethod
    def _blend(running: Buffer | None, batch: jax.Array, rate: jax.Array | float) -> Buffer:
        assert running is not None  # called only with running statistics tracked
        old = running.value.astype(compute_dtype(running.dtype))
        return running.replace(((1 - rate) * old + rate * batch).astype(running.dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x``; in training mode with running statistics, records their update.

        See the module docstring: the update reaches you through `nn.stateful_call`.
        """
        if self.training and self.track_running_stats:
            return update_state(self, lambda bn: bn._forward_train(x))
        if not self.track_running_stats:  # batch statistics in both modes, as in PyTorch
            return self._forward_train(x)[0]
        x = self._check(x)
        shape = self._param_shape(x)
        xc = x.astype(compute_dtype(x.dtype))
        assert self.running_mean is not None and self.running_var is not None  # tracked
        mean = self.running_mean.value.reshape(shape)
        var = self.running_var.value.reshape(shape)
        return self._out((xc - mean) * jax.lax.rsqrt(var + self.eps), x)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` inputs per channel, PyTorch's
    ``nn.BatchNorm1d``. See `jparam.nn.batchnorm` for how running statistics are updated."""

    _ndims = (2, 3)
    _layout = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` inputs per channel, PyTorch's ``nn.BatchNorm2d``.

    Training mode normalises with the batch's statistics and records updated running
    statistics for `nn.stateful_call`; evaluation mode uses the running statistics::

        key, x = jax.random.key(0), jnp.linspace(-1.0, 1.0, 384).reshape(2, 3, 8, 8)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, key=key), nn.BatchNorm2d(8), nn.ReLU())
        y, model = jax.jit(nn.stateful_call)(model, x)
        y_eval = model.eval()(x)
        assert y.shape == y_eval.shape == (2, 8, 6, 6)
    """

    _ndims = (4,)
    _layout = "(N, {c}, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation of ``(N, C, D, H, W)`` inputs per channel, PyTorch's
    ``nn.BatchNorm3d``. See `jparam.nn.batchnorm` for how running statistics are updated."""

    _ndims = (5,)
    _layout = "(N, {c}, D, H, W)"


class _InstanceNorm(_BatchNorm):
    """The body shared by `InstanceNorm1d/2d/3d` (they differ in the number of spatial axes).

    Each sample and channel is normalised over its spatial axes. PyTorch's rules kept here:
    unbatched input ``(C, *spatial)`` is accepted; with ``track_running_stats=True`` training
    updates ``running_mean``/``running_var`` with the batch average of the per-instance
    statistics (the variance unbiased) and evaluation uses them; ``num_batches_tracked`` exists
    but never counts, and ``momentum=None`` means no update at all (PyTorch passes 0). Where
    PyTorch only warns about a channel count that differs from ``num_features`` (without
    ``affine``), this raises.
    """

    _spatial: ClassVar[int]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)

    def _check(self, x: jax.Array) -> jax.Array:
        s, c = self._spatial, self.num_features
        layout = self._layout.format(c=c)
        return check_input(self, x, layout, (s + 1, s + 2), {-s - 1: c})

    def _param_shape(self, x: jax.Array) -> tuple[int, ...]:
        return (-1,) + (1,) * self._spatial

    def _forward_train(self, x: jax.Array) -> tuple[jax.Array, _InstanceNorm]:
        """Normalises with each instance's statistics; returns ``(y, layer_with_new_stats)``.

        Without running statistics (``track_running_stats=False``) the layer is returned as is.
        """
        x = self._check(x)
        xb = x if x.ndim == self._spatial + 2 else x[None]
        n = math.prod(xb.shape[2:])
        if n < 2:
            raise ValueError(
                f"{describe(self)} needs more than 1 spatial element per channel to estimate a "
                f"variance, got input of shape {tuple(x.shape)}"
            )
        y, mean, var = standardize(xb, tuple(range(2, xb.ndim)), self.eps)
        y = self._out(y, xb).reshape(x.shape)
        if not self.track_running_stats:
            return y, self
        rate = 0.0 if self.momentum is None else self.momentum
        # Statistics are no part of the gradient (PyTorch updates them under no_grad).
        mean = jax.lax.stop_gradient(mean.reshape(xb.shape[:2])).mean(0)
        unbiased = jax.lax.stop_gradient(var.reshape(xb.shape[:2])).mean(0) * (n / (n - 1))
        new = self.replace(
            running_mean=self._blend(self.running_mean, mean, rate),
            running_var=self._blend(self.running_var, unbiased, rate),
        )
        return y, new


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of ``(N, C, L)`` or unbatched ``(C, L)`` inputs, PyTorch's
    ``nn.InstanceNorm1d`` (no affine parameters nor running statistics by default)."""

    _spatial = 1
    _layout = "(N, {c}, L) or ({c}, L)"


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` inputs, PyTorch's
    ``nn.InstanceNorm2d``: each sample and channel normalised over its own ``H x W`` values.

    With ``track_running_stats=True`` run training steps through `nn.stateful_call`, as for
    BatchNorm::

        x = jnp.linspace(-1.0, 1.0, 256).reshape(2, 8, 4, 4)
        norm = nn.InstanceNorm2d(8, affine=True, track_running_stats=True).train()
        y, norm = nn.stateful_call(norm, x)
    """

    _spatial = 2
    _layout = "(N, {c}, H, W) or ({c}, H, W)"


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` inputs,
    PyTorch's ``nn.InstanceNorm3d``."""

    _spatial = 3
    _layout = "(N, {c}, D, H, W) or ({c}, D, H, W)"
