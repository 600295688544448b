"""timm's MobileNetV3 (``timm.models.mobilenetv3.MobileNetV3``) written with `jparam.nn`.

The attribute names are timm's (``conv_stem``, ``bn1``, ``blocks.S.B.conv_dw`` / ``bn1`` /
``se.conv_reduce`` / ``conv_pw`` ..., ``conv_head``, ``classifier``), so a timm ``state_dict``
loads as it is: ``MAPPING`` is ``None``.

The network is described as timm describes it, by block strings per stage (``SMALL``,
``SMALL_MINIMAL``: ``"ir_r2_k5_s1_e6_c40_se0.25"`` is two inverted residual blocks, 5x5
depthwise, stride 1, expansion 6, 40 output channels, squeeze-excite with ratio 0.25), scaled
by a channel multiplier with timm's rounding to multiples of 8. Covered: the depthwise-separable
(``ds``), inverted residual (``ir``) and conv-bn-act (``cn``) blocks, their skip rules
(``noskip``, ``skip``), per-block ReLU (``nre``), squeeze-excite with a hard-sigmoid gate,
hard-swish, BatchNorm with its activation fused (timm's ``BatchNormAct2d``), TensorFlow's
"same" padding (timm's ``tf_`` models) and the efficient head (pool, then a 1x1 conv with bias).
Not covered (`parse_block` refuses their block strings): other block types, grouped or dilated
convs, space-to-depth; nor dropout and drop path (build timm's model with them at 0).

In training mode the BatchNorm bias closing each block (``bn3``; ``bn2`` of a
depthwise-separable block) gets no gradient: its shift reaches the next BatchNorm only through
1x1 convolutions and residual sums, and that BatchNorm's batch mean removes it. This holds in
timm too; the conformance test freezes those biases on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

import jparam as jp
from jparam import nn

MAPPING: jp.Mapping | None = None  # timm's names are the port's

# timm's block strings for mobilenetv3_small_* (hard-swish model) and *_small_minimal_* (ReLU).
SMALL = [
    ["ds_r1_k3_s2_e1_c16_se0.25_nre"],
    ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
    ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
    ["ir_r2_k5_s1_e3_c48_se0.25"],
    ["ir_r3_k5_s2_e6_c96_se0.25"],
    ["cn_r1_k1_s1_c576"],
]
SMALL_MINIMAL = [
    ["ds_r1_k3_s2_e1_c16"],
    ["ir_r1_k3_s2_e4.5_c24", "ir_r1_k3_s1_e3.67_c24"],
    ["ir_r1_k3_s2_e4_c40", "ir_r2_k3_s1_e6_c40"],
    ["ir_r2_k3_s1_e3_c48"],
    ["ir_r3_k3_s2_e6_c96"],
    ["cn_r1_k1_s1_c576"],
]

ACTIVATIONS = {"relu": nn.ReLU, "hard_swish": nn.Hardswish}


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), one step
    up if that lost more than 10%: how timm scales channel counts."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


@dataclass(frozen=True)
class BlockArgs:
    """One block of a stage, decoded from a timm block string."""

    kind: str  # "ds", "ir" or "cn"
    repeats: int
    kernel: int
    stride: int
    expansion: float
    out_chs: int
    se_ratio: float
    act: str | None  # None: the model's activation
    skip: bool | None  # None: skip whenever the shapes allow (cn: never)
    bn_eps: float = 1e-5  # the model's, as the next two
    same_padding: bool = False


def parse_block(spec: str) -> BlockArgs:
    """Decodes ``"ir_r2_k5_s1_e6_c40_se0.25_nre"``; options the port lacks raise."""
    kind, *options = spec.split("_")
    if kind not in ("ds", "ir", "cn"):
        raise NotImplementedError(f"{spec!r}: the port has no {kind!r} blocks")
    values = {"r": "1", "k": "3", "s": "1", "e": "1", "se": "0", "c": None}
    act, skip = None, None
    for option in options:
        if option == "nre":
            act = "relu"
        elif option in ("skip", "noskip"):
            skip = option == "skip"
        else:
            key = "se" if option.startswith("se") else option[0]
            if key not in values:
                raise NotImplementedError(f"{spec!r}: the port has no option {option!r}")
            values[key] = option[len(key) :]
    return BlockArgs(
        kind,
        int(values["r"]),
        int(values["k"]),
        int(values["s"]),
        float(values["e"]),
        int(values["c"]),
        float(values["se"]),
        act,
        skip,
    )


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: the missing rows and columns are padded
    at call time, one more after than before when odd (timm's ``Conv2dSame``, its ``tf_``
    models' strided convolutions)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = []
        for size, k, s, d in zip(x.shape[2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return super().__call__(jnp.pad(x, ((0, 0), (0, 0), *pads)))


def conv2d(
    in_chs: int,
    out_chs: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    bias: bool = False,
    same: bool = False,
    key: jax.Array,
) -> nn.Conv2d:
    """PyTorch's symmetric padding ``kernel // 2``, or TensorFlow's "same" (symmetric too at
    stride 1 and odd kernels, so a plain `nn.Conv2d`, as timm does)."""
    if same and stride > 1:
        return Conv2dSame(in_chs, out_chs, kernel, stride, groups=groups, bias=bias, key=key)
    return nn.Conv2d(
        in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=bias, key=key
    )


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation, in one layer with BatchNorm's parameter names
    (timm's ``BatchNormAct2d``: ``bn1.weight``, ``bn1.running_mean``, ...)."""

    act: jp.Module

    def __init__(self, num_features: int, act: str | None, eps: float) -> None:
        super().__init__(num_features, eps=eps)
        self.act = ACTIVATIONS[act]() if act is not None else nn.Identity()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(super().__call__(x))


class SqueezeExcite(jp.Module):
    """Scales each channel by a gate computed from the channel means: mean -> 1x1 conv ->
    ReLU -> 1x1 conv -> hard sigmoid (MobileNetV3's squeeze-excite)."""

    conv_reduce: nn.Conv2d
    act1: nn.ReLU
    conv_expand: nn.Conv2d
    gate: nn.Hardsigmoid

    def __init__(self, chs: int, reduced: int, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.conv_reduce = nn.Conv2d(chs, reduced, 1, key=k1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, chs, 1, key=k2)
        self.gate = nn.Hardsigmoid()

    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdims=True))))
        return x * self.gate(s)


def _se(chs: int, ratio: float, key: jax.Array) -> SqueezeExcite | nn.Identity:
    return SqueezeExcite(chs, make_divisible(chs * ratio), key=key) if ratio else nn.Identity()


def _has_skip(a: BlockArgs, in_chs: int, out_chs: int) -> bool:
    default = a.kind != "cn"  # timm's conv-bn-act block skips only when asked
    wanted = default if a.skip is None else a.skip
    return wanted and a.stride == 1 and in_chs == out_chs


class DepthwiseSeparableConv(jp.Module):
    """Depthwise conv -> BN+act -> squeeze-excite -> pointwise conv -> BN, plus the input when
    the shapes agree."""

    conv_dw: nn.Conv2d
    bn1: BatchNormAct2d
    se: SqueezeExcite | nn.Identity
    conv_pw: nn.Conv2d
    bn2: BatchNormAct2d
    has_skip: bool = jp.field(static=True)

    def __init__(self, in_chs: int, out_chs: int, a: BlockArgs, *, key: jax.Array) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv_dw = conv2d(
            in_chs, in_chs, a.kernel, a.stride, groups=in_chs, same=a.same_padding, key=k1
        )
        self.bn1 = BatchNormAct2d(in_chs, a.act, a.bn_eps)
        self.se = _se(in_chs, a.se_ratio, k2)
        self.conv_pw = conv2d(in_chs, out_chs, 1, key=k3)
        self.bn2 = BatchNormAct2d(out_chs, None, a.bn_eps)
        self.has_skip = _has_skip(a, in_chs, out_chs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return y + x if self.has_skip else y


class InvertedResidual(jp.Module):
    """Pointwise expansion -> BN+act -> depthwise conv -> BN+act -> squeeze-excite ->
    pointwise projection -> BN, plus the input when the shapes agree (MobileNetV2's block)."""

    conv_pw: nn.Conv2d
    bn1: BatchNormAct2d
    conv_dw: nn.Conv2d
    bn2: BatchNormAct2d
    se: SqueezeExcite | nn.Identity
    conv_pwl: nn.Conv2d
    bn3: BatchNormAct2d
    has_skip: bool = jp.field(static=True)

    def __init__(self, in_chs: int, out_chs: int, a: BlockArgs, *, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        mid = make_divisible(in_chs * a.expansion)
        self.conv_pw = conv2d(in_chs, mid, 1, key=k1)
        self.bn1 = BatchNormAct2d(mid, a.act, a.bn_eps)
        self.conv_dw = conv2d(mid, mid, a.kernel, a.stride, groups=mid, same=a.same_padding, key=k2)
        self.bn2 = BatchNormAct2d(mid, a.act, a.bn_eps)
        self.se = _se(mid, a.se_ratio, k3)
        self.conv_pwl = conv2d(mid, out_chs, 1, key=k4)
        self.bn3 = BatchNormAct2d(out_chs, None, a.bn_eps)
        self.has_skip = _has_skip(a, in_chs, out_chs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class ConvBnAct(jp.Module):
    """Conv -> BN+act, plus the input only when the block string says ``skip``."""

    conv: nn.Conv2d
    bn1: BatchNormAct2d
    has_skip: bool = jp.field(static=True)

    def __init__(self, in_chs: int, out_chs: int, a: BlockArgs, *, key: jax.Array) -> None:
        self.conv = conv2d(in_chs, out_chs, a.kernel, a.stride, same=a.same_padding, key=key)
        self.bn1 = BatchNormAct2d(out_chs, a.act, a.bn_eps)
        self.has_skip = _has_skip(a, in_chs, out_chs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn1(self.conv(x))
        return y + x if self.has_skip else y


BLOCKS = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual, "cn": ConvBnAct}


class MobileNetV3(jp.Module):
    """Stem conv -> stages of blocks -> global average pool -> 1x1 conv head (with bias) ->
    hard-swish -> Linear. Takes ``(N, C, H, W)`` images, returns logits."""

    conv_stem: nn.Conv2d
    bn1: BatchNormAct2d
    blocks: nn.Sequential
    conv_head: nn.Conv2d
    act2: nn.Hardswish | nn.ReLU
    classifier: nn.Linear

    def __init__(
        self,
        arch: Sequence[Sequence[str]],
        channel_multiplier: float = 1.0,
        num_classes: int = 1000,
        num_features: int = 1024,
        act: str = "hard_swish",
        bn_eps: float = 1e-5,
        same_padding: bool = False,
        in_chans: int = 3,
        *,
        key: jax.Array,
    ) -> None:
        k_stem, k_head, k_cls, k_blocks = jax.random.split(key, 4)
        # timm keeps the 16-channel stem as it is below a 0.75 multiplier
        stem = 16 if channel_multiplier < 0.75 else make_divisible(16 * channel_multiplier)
        self.conv_stem = conv2d(in_chans, stem, 3, 2, same=same_padding, key=k_stem)
        self.bn1 = BatchNormAct2d(stem, act, bn_eps)
        stages, in_chs = [], stem
        for stage in arch:
            blocks = []
            for parsed in map(parse_block, stage):
                out_chs = make_divisible(parsed.out_chs * channel_multiplier)
                for _ in range(parsed.repeats):
                    a = replace(
                        parsed,
                        stride=parsed.stride if not blocks else 1,  # a stage's first block only
                        act=parsed.act or act,
                        bn_eps=bn_eps,
                        same_padding=same_padding,
                    )
                    k_blocks, k = jax.random.split(k_blocks)
                    blocks.append(BLOCKS[a.kind](in_chs, out_chs, a, key=k))
                    in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(in_chs, num_features, 1, key=k_head)
        self.act2 = ACTIVATIONS[act]()
        self.classifier = nn.Linear(num_features, num_classes, key=k_cls)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """The last stage's feature map, before pooling."""
        return self.blocks(self.bn1(self.conv_stem(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = self.forward_features(x).mean((2, 3), keepdims=True)
        features = self.act2(self.conv_head(pooled))
        return self.classifier(features.reshape(features.shape[0], -1))


def mobilenetv3_small(
    channel_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    minimal: bool = False,
    tf: bool = False,
    key: jax.Array,
) -> MobileNetV3:
    """The port of timm's ``[tf_]mobilenetv3_small[_minimal]_<100 x multiplier>``: ``minimal``
    is the ReLU model without squeeze-excite, ``tf`` the TensorFlow-trained one (BatchNorm eps
    1e-3, "same" padding)."""
    return MobileNetV3(
        SMALL_MINIMAL if minimal else SMALL,
        channel_multiplier,
        num_classes,
        act="relu" if minimal else "hard_swish",
        bn_eps=1e-3 if tf else 1e-5,
        same_padding=tf,
        key=key,
    )
