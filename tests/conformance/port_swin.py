"""timm's Swin Transformer (``timm.models.swin_transformer.SwinTransformer``) written with jparam.

The attribute names are timm's, so its ``state_dict`` loads with a one-rule mapping (timm's
classifier sits in a ``ClassifierHead`` as ``head.fc``; here the head is the Linear itself).
The relative position bias table is a Parameter. The index into it and the shifted-window
attention mask are constants of the shapes (timm keeps them as non-persistent buffers): here
they are numpy arrays computed from static fields and the input's shape while tracing, so they
are never saved, and a model built abstractly with ``jax.eval_shape`` loads and runs as it is.

Square images and windows only, and feature maps that the window divides (timm also pads).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

import jparam as jp
from jparam import nn

ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray)  # windows of traced and of constant arrays

MAPPING = jp.Mapping([jp.mapping.rename("head.fc.*", "head.*")])

# timm's value for "different region of the shifted image": -100 before the softmax, not -inf.
MASKED = -100.0


def window_partition(x: ArrayT, window: int) -> ArrayT:
    """``(B, H, W, C)`` -> ``(B * windows, window * window, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: jax.Array, window: int, h: int, w: int) -> jax.Array:
    """The inverse of `window_partition`: back to ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.cache
def relative_position_index(window: int) -> np.ndarray:
    """``(N, N)`` row of the bias table for each (query, key) pair of a window of N tokens:
    ``(dy + window - 1) * (2 * window - 1) + (dx + window - 1)``."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + window - 1  # (2, N, N), each in [0, 2w-2]
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


@functools.cache
def shifted_window_mask(resolution: int, window: int, shift: int) -> np.ndarray:
    """``(windows, N, N)``: 0 between tokens of the same region of the rolled image, else
    `MASKED`. Rolling by ``-shift`` wraps the image's far edge around into the last windows;
    the nine regions keep tokens from attending across the seam."""
    labels = np.zeros((1, resolution, resolution, 1), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for region, (rows, cols) in enumerate(itertools.product(bands, bands)):
        labels[:, rows, cols] = region
    windows = window_partition(labels, window)[..., 0]  # (windows, N)
    return np.where(windows[:, None, :] != windows[:, :, None], MASKED, 0.0).astype(np.float32)


class PatchEmbed(jp.Module):
    """Non-overlapping ``patch_size`` patches by a strided conv, then LayerNorm, channels last."""

    proj: nn.Conv2d
    norm: nn.LayerNorm

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, key: jax.Array) -> None:
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, key=key)
        self.norm = nn.LayerNorm(embed_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x).transpose(0, 2, 3, 1))  # (B, H, W, C)


class WindowAttention(jp.Module):
    """Self-attention inside each window, plus a learned bias per relative offset and head."""

    qkv: nn.Linear  # fused as in timm: output rows are (q | k | v), each (heads, head_dim)
    proj: nn.Linear
    relative_position_bias_table: jp.Parameter  # ((2 * window - 1) ** 2, heads)
    num_heads: int = jp.field(static=True)
    window_size: int = jp.field(static=True)
    scale: float = jp.field(static=True)

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, *, key: jax.Array):
        k_qkv, k_proj, k_table = jax.random.split(key, 3)
        self.num_heads, self.window_size = num_heads, window
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, key=k_qkv)
        self.proj = nn.Linear(dim, dim, key=k_proj)
        table = jp.init.trunc_normal(k_table, ((2 * window - 1) ** 2, num_heads), std=0.02)
        self.relative_position_bias_table = jp.Parameter(table)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``x``: ``(B * windows, N, C)``; ``mask``: ``(windows, N, N)`` additive, or None."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.swapaxes(-1, -2)  # timm scales q, then multiplies
        index = relative_position_index(self.window_size)
        bias = self.relative_position_bias_table.value[index]  # (N, N, heads)
        attn = attn + bias.transpose(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.reshape(-1, windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.reshape(b, self.num_heads, n, n)
        x = jax.nn.softmax(attn, axis=-1) @ v
        return self.proj(x.transpose(0, 2, 1, 3).reshape(b, n, -1))


class Mlp(jp.Module):
    """``fc2(gelu(fc1(x)))`` with the exact (erf) GELU."""

    fc1: nn.Linear
    act: nn.GELU
    fc2: nn.Linear

    def __init__(self, dim: int, hidden: int, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.fc1 = nn.Linear(dim, hidden, key=k1)
        self.act = nn.GELU()  # timm's default, approximate="none"
        self.fc2 = nn.Linear(hidden, dim, key=k2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(jp.Module):
    """Pre-norm block: (shifted) window attention, then an MLP, each with a residual.

    A window as large as the feature map leaves nothing to shift: then the window shrinks to
    the map and the shift is 0, as in timm.
    """

    norm1: nn.LayerNorm
    attn: WindowAttention
    norm2: nn.LayerNorm
    mlp: Mlp
    window_size: int = jp.field(static=True)
    shift_size: int = jp.field(static=True)

    def __init__(
        self,
        dim: int,
        resolution: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        *,
        key: jax.Array,
    ) -> None:
        if resolution <= window_size:
            window_size, shift_size = resolution, 0
        if resolution % window_size:
            raise ValueError(f"the window {window_size} must divide the feature map {resolution}")
        self.window_size, self.shift_size = window_size, shift_size
        k_attn, k_mlp = jax.random.split(key)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, key=k_attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), key=k_mlp)

    def _attn(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        s, window = self.shift_size, self.window_size
        if s:
            x = jnp.roll(x, (-s, -s), axis=(1, 2))
        mask = shifted_window_mask(h, window, s) if s else None  # (square maps: h == w)
        x = window_reverse(self.attn(window_partition(x, window), mask), window, h, w)
        return jnp.roll(x, (s, s), axis=(1, 2)) if s else x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self._attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(jp.Module):
    """Each 2x2 patch group concatenated to ``4 * dim`` channels, normed, projected to
    ``2 * dim``. timm's concat order: (top-left, bottom-left, top-right, bottom-right)."""

    norm: nn.LayerNorm
    reduction: nn.Linear

    def __init__(self, dim: int, *, key: jax.Array) -> None:
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, key=key)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)  # (.., dx, dy, c)
        return self.reduction(self.norm(x.reshape(b, h // 2, w // 2, 4 * c)))


class SwinTransformerStage(jp.Module):
    """An optional `PatchMerging` (every stage but the first), then blocks alternating
    unshifted and half-window-shifted attention."""

    downsample: PatchMerging | nn.Identity
    blocks: nn.Sequential

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        downsample: bool,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        *,
        key: jax.Array,
    ) -> None:
        k_down, *k_blocks = jax.random.split(key, depth + 1)
        self.downsample = PatchMerging(dim // 2, key=k_down) if downsample else nn.Identity()
        shifts = [0 if i % 2 == 0 else window_size // 2 for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                SwinTransformerBlock(
                    dim, resolution, num_heads, window_size, s, mlp_ratio, qkv_bias, key=k
                )
                for s, k in zip(shifts, k_blocks)
            )
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.blocks(self.downsample(x))


class SwinTransformer(jp.Module):
    """Patch embedding, stages that halve the resolution and double the width, a final
    LayerNorm, global average pooling and a linear classifier. Input ``(B, C, H, W)``."""

    patch_embed: PatchEmbed
    layers: nn.Sequential
    norm: nn.LayerNorm
    head: nn.Linear

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        *,
        key: jax.Array,
    ) -> None:
        k_embed, k_head, *k_stages = jax.random.split(key, len(depths) + 2)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, key=k_embed)
        resolution, stages = img_size // patch_size, []
        for i, (depth, heads, k) in enumerate(zip(depths, num_heads, k_stages)):
            resolution = resolution // 2 if i else resolution
            dim = embed_dim * 2**i
            stages.append(
                SwinTransformerStage(
                    dim, resolution, depth, i > 0, heads, window_size, mlp_ratio, qkv_bias, key=k
                )
            )
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes, key=k_head)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(self.layers(self.patch_embed(x)))  # (B, H, W, C)
        return self.head(x.mean(axis=(1, 2)))


DROPOUTS = ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")


def from_config(config: Mapping[str, Any], *, key: jax.Array) -> SwinTransformer:
    """The port of ``timm``'s ``SwinTransformer(**config)``, with fresh random weights.

    ``config`` holds timm's keyword arguments; every dropout and drop-path rate must be 0
    (timm's ``drop_path_rate`` defaults to 0.1: pass 0 explicitly).
    """
    config = dict(config)
    rates = {name: config.pop(name, 0.1 if name == "drop_path_rate" else 0.0) for name in DROPOUTS}
    if any(rates.values()):
        raise ValueError(f"the port has no dropout; set these to 0: {rates}")
    return SwinTransformer(**config, key=key)
