"""timm's ConvNeXt (``timm.models.convnext.ConvNeXt``) written with `jparam.nn`.

The attribute names are timm's (``stem.0``, ``stages.N.downsample.1``,
``stages.N.blocks.M.conv_dw`` / ``norm`` / ``mlp.fc1`` / ``mlp.fc2`` / ``gamma``, ``head.norm``,
``head.fc``), so a timm ``state_dict`` loads as it is: ``MAPPING`` is ``None``.

Covered: the patch stem, the 7x7 (or any odd size) depthwise blocks with their MLP either as
``Linear`` layers on channels-last maps (timm's default) or as 1x1 convolutions
(``conv_mlp=True``), layer scale (``ls_init_value``, or none), per-stage kernel sizes,
``norm_eps``, ``conv_bias`` and the pool -> norm -> fc head. Not covered (`from_config` refuses
them): other stems, ConvNeXt-V2's GRN, dilation (``output_stride``), the norm-first or MLP
heads, other norms and activations, and dropout / drop path (inference-exact ports only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import jparam as jp
from jparam import nn

MAPPING: jp.Mapping | None = None  # timm's names are the port's


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map (timm's ``LayerNorm2d``).

    Same parameters as `nn.LayerNorm` over ``C``; the map is moved to channels-last and back.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


class Mlp(jp.Module):
    """``fc1 -> GELU -> fc2``: Linear layers on channels-last input, or 1x1 convolutions on
    ``(N, C, H, W)`` input when ``use_conv`` (timm's ``Mlp``)."""

    fc1: nn.Linear | nn.Conv2d
    act: nn.GELU
    fc2: nn.Linear | nn.Conv2d

    def __init__(self, dim: int, hidden: int, use_conv: bool, bias: bool, *, key: jax.Array):
        k1, k2 = jax.random.split(key)
        if use_conv:
            self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias, key=k1)
            self.fc2 = nn.Conv2d(hidden, dim, 1, bias=bias, key=k2)
        else:
            self.fc1 = nn.Linear(dim, hidden, bias=bias, key=k1)
            self.fc2 = nn.Linear(hidden, dim, bias=bias, key=k2)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's 'gelu'

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(jp.Module):
    """Depthwise conv -> LayerNorm -> MLP -> layer scale, plus the input (a residual block)."""

    conv_dw: nn.Conv2d
    norm: nn.LayerNorm
    mlp: Mlp
    gamma: jp.Parameter | None
    conv_mlp: bool = jp.field(static=True)

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        ls_init_value: float | None,
        conv_mlp: bool,
        conv_bias: bool,
        eps: float,
        *,
        key: jax.Array,
    ):
        k1, k2 = jax.random.split(key)
        self.conv_dw = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=conv_bias, key=k1
        )
        self.norm = (LayerNorm2d if conv_mlp else nn.LayerNorm)(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim, conv_mlp, conv_bias, key=k2)
        self.gamma = (
            None if ls_init_value is None else jp.Parameter(jnp.full((dim,), ls_init_value))
        )
        self.conv_mlp = conv_mlp

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv_dw(x)
        if self.conv_mlp:
            y = self.mlp(self.norm(y))
        else:  # the norm and the Linear layers act on the last axis: go channels-last
            y = self.mlp(self.norm(y.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
        if self.gamma is not None:
            y = y * self.gamma.value[:, None, None]
        return x + y


class ConvNeXtStage(jp.Module):
    """An optional downsample (LayerNorm2d, 2x2 stride-2 conv), then ``depth`` blocks."""

    downsample: nn.Sequential | nn.Identity
    blocks: nn.Sequential

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        downsample: bool,
        block_args: dict[str, Any],
        *,
        key: jax.Array,
    ):
        k_down, *k_blocks = jax.random.split(key, depth + 1)
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=block_args["eps"]),
                nn.Conv2d(in_dim, dim, 2, stride=2, bias=block_args["conv_bias"], key=k_down),
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, **block_args, key=k) for k in k_blocks))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.blocks(self.downsample(x))


class Head(jp.Module):
    """Global average pool -> LayerNorm -> Linear (timm's ``NormMlpClassifierHead``)."""

    norm: LayerNorm2d
    fc: nn.Linear

    def __init__(self, dim: int, num_classes: int, eps: float, *, key: jax.Array):
        self.norm = LayerNorm2d(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes, key=key)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(x.mean(axis=(2, 3), keepdims=True))
        return self.fc(x.reshape(x.shape[0], -1))


class ConvNeXt(jp.Module):
    """ConvNeXt: a 4x4 stride-4 patch stem, four stages (each after the first halves the
    resolution), and a pooled classifier head. Takes ``(N, C, H, W)`` images, returns logits."""

    stem: nn.Sequential
    stages: nn.Sequential
    head: Head

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_sizes: int | Sequence[int] = 7,
        ls_init_value: float | None = 1e-6,
        patch_size: int = 4,
        conv_mlp: bool = False,
        conv_bias: bool = True,
        norm_eps: float | None = None,
        *,
        key: jax.Array,
    ):
        eps = 1e-6 if norm_eps is None else norm_eps
        sizes = [kernel_sizes] * 4 if isinstance(kernel_sizes, int) else list(kernel_sizes)
        k_stem, k_head, *k_stages = jax.random.split(key, 2 + len(dims))
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size, bias=conv_bias, key=k_stem),
            LayerNorm2d(dims[0], eps=eps),
        )
        stages = []
        for i, (depth, dim, size, k) in enumerate(zip(depths, dims, sizes, k_stages)):
            block_args = dict(
                kernel_size=size,
                ls_init_value=ls_init_value,
                conv_mlp=conv_mlp,
                conv_bias=conv_bias,
                eps=eps,
            )
            in_dim = dims[max(i - 1, 0)]
            stages.append(ConvNeXtStage(in_dim, dim, depth, i > 0, block_args, key=k))
        self.stages = nn.Sequential(*stages)
        self.head = Head(dims[-1], num_classes, eps, key=k_head)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """The last stage's ``(N, dims[-1], H / 32, W / 32)`` map, before the head."""
        return self.stages(self.stem(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.forward_features(x))


# timm's ConvNeXt arguments that the port implements, and the values it requires of the others.
_SUPPORTED = {
    "in_chans",
    "num_classes",
    "depths",
    "dims",
    "kernel_sizes",
    "ls_init_value",
    "patch_size",
    "conv_mlp",
    "conv_bias",
    "norm_eps",
}
_REQUIRED = {
    "global_pool": "avg",
    "output_stride": 32,
    "stem_type": "patch",
    "head_norm_first": False,
    "head_hidden_size": None,
    "use_grn": False,
    "act_layer": "gelu",
    "norm_layer": None,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "head_init_scale": 1.0,  # only scales timm's initial weights: loaded weights override it
}


def from_config(config: Mapping[str, Any], *, key: jax.Array) -> ConvNeXt:
    """The port of ``timm.models.convnext.ConvNeXt(**config)``, with fresh weights from ``key``.

    ``config`` holds timm's keyword arguments; one the port does not implement raises.
    """
    kwargs = {}
    for name, value in config.items():
        if name in _SUPPORTED:
            kwargs[name] = value
        elif name in _REQUIRED and value == _REQUIRED[name]:
            continue
        elif name in _REQUIRED:
            raise NotImplementedError(
                f"the ConvNeXt port supports only {name}={_REQUIRED[name]!r}, got {value!r}"
            )
        else:
            raise TypeError(f"timm's ConvNeXt takes no argument {name!r} known to this port")
    if len(kwargs.get("depths", (3, 3, 9, 3))) != 4:
        raise ValueError("ConvNeXt has four stages: depths and dims need four entries")
    return ConvNeXt(**kwargs, key=key)
