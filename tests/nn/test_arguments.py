"""Bad hyperparameters and inputs that cannot fit: a clear error up front, where PyTorch refuses.

Each row builds (and, for call-time checks, calls) a jparam layer and its PyTorch twin. jparam
must raise a ``ValueError``/``TypeError`` naming the layer, the argument and the value; PyTorch,
where it refuses too, may raise anything (``RuntimeError``, ``AssertionError``,
``ZeroDivisionError``...). Rows whose ``torch`` is ``None`` are refusals PyTorch does not make
(it returns an empty or meaningless result instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import pytest

from jparam import nn

K = jax.random.key(0)
# What PyTorch raises for these arguments, depending on where it notices them.
TORCH_REFUSALS = (
    RuntimeError,
    ValueError,
    TypeError,
    AssertionError,
    ZeroDivisionError,
    IndexError,
)
X = jnp.ones((1, 2, 5, 5))


class Refusal(NamedTuple):
    id: str
    ours: Callable[[], Any]
    torch: Callable[[Any], Any] | None  # torch -> builds and calls; None: torch accepts
    error: type[Exception]
    match: str


def _x(torch: Any) -> Any:
    return torch.ones(1, 2, 5, 5)


R = Refusal
ROWS = [
    # Linear and Bilinear
    R(
        "linear-in",
        lambda: nn.Linear(-1, 3, key=K),
        lambda t: t.nn.Linear(-1, 3),
        ValueError,
        r"Linear in_features must be non-negative.*in_features=-1",
    ),
    R(
        "linear-out",
        lambda: nn.Linear(3, -2, key=K),
        lambda t: t.nn.Linear(3, -2),
        ValueError,
        r"Linear out_features must be non-negative.*out_features=-2",
    ),
    R(
        "linear-float",
        lambda: nn.Linear(3.0, 2, key=K),
        lambda t: t.nn.Linear(3.0, 2),
        TypeError,
        r"Linear in_features must be an int, got 3.0",
    ),
    R(
        "bilinear-in1",
        lambda: nn.Bilinear(0, 2, 2, key=K),
        lambda t: t.nn.Bilinear(0, 2, 2),
        ValueError,
        r"Bilinear in1_features must be positive.*in1_features=0",
    ),
    # Convolutions: construction
    R(
        "conv-kernel-0",
        lambda: nn.Conv2d(2, 2, 0, key=K),
        lambda t: t.nn.Conv2d(2, 2, 0)(_x(t)),
        ValueError,
        r"Conv2d kernel_size must be positive \(>= 1\).*kernel_size=0",
    ),
    R(
        "conv-kernel-neg",
        lambda: nn.Conv2d(2, 2, (3, -1), key=K),
        lambda t: t.nn.Conv2d(2, 2, (3, -1)),
        ValueError,
        r"Conv2d kernel_size.*\(3, -1\)",
    ),
    R(
        "conv-stride-0",
        lambda: nn.Conv2d(2, 2, 3, stride=0, key=K),
        lambda t: t.nn.Conv2d(2, 2, 3, stride=0)(_x(t)),
        ValueError,
        r"Conv2d stride must be positive.*stride=0",
    ),
    R(
        "conv-stride-neg",
        lambda: nn.Conv1d(2, 2, 3, stride=-1, key=K),
        lambda t: t.nn.Conv1d(2, 2, 3, stride=-1)(t.ones(1, 2, 5)),
        ValueError,
        r"Conv1d stride must be positive.*stride=-1",
    ),
    R(
        "conv-dilation-0",
        lambda: nn.Conv2d(2, 2, 3, dilation=0, key=K),
        lambda t: t.nn.Conv2d(2, 2, 3, dilation=0)(_x(t)),
        ValueError,
        r"Conv2d dilation must be positive.*dilation=0",
    ),
    R(
        "conv-padding-neg",
        lambda: nn.Conv2d(2, 2, 3, padding=-1, key=K),
        lambda t: t.nn.Conv2d(2, 2, 3, padding=-1)(_x(t)),
        ValueError,
        r"Conv2d padding must be non-negative.*padding=-1",
    ),
    R(
        "conv-groups-0",
        lambda: nn.Conv2d(2, 2, 3, groups=0, key=K),
        lambda t: t.nn.Conv2d(2, 2, 3, groups=0),
        ValueError,
        r"Conv2d groups must be positive.*groups=0",
    ),
    R(
        "conv-groups-divide",
        lambda: nn.Conv2d(4, 6, 3, groups=4, key=K),
        lambda t: t.nn.Conv2d(4, 6, 3, groups=4),
        ValueError,
        r"Conv2d in_channels=4 and out_channels=6 must both be divisible by groups=4",
    ),
    R(
        "conv-channels-neg",
        lambda: nn.Conv2d(-1, 2, 3, key=K),
        lambda t: t.nn.Conv2d(-1, 2, 3),
        ValueError,
        r"Conv2d in_channels must be positive.*in_channels=-1",
    ),
    R(
        "conv-out-channels-0",
        lambda: nn.Conv2d(2, 0, 3, key=K),
        lambda t: t.nn.Conv2d(2, 0, 3)(_x(t)),
        ValueError,
        r"Conv2d out_channels must be positive.*out_channels=0",
    ),
    R(
        "conv-same-strided",
        lambda: nn.Conv2d(2, 2, 3, 2, "same", key=K),
        lambda t: t.nn.Conv2d(2, 2, 3, 2, "same"),
        ValueError,
        r"Conv2d padding='same' needs stride 1",
    ),
    R(
        "convT-stride-0",
        lambda: nn.ConvTranspose2d(2, 2, 3, stride=0, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, stride=0)(_x(t)),
        ValueError,
        r"ConvTranspose2d stride must be positive.*stride=0",
    ),
    R(
        "convT-kernel-0",
        lambda: nn.ConvTranspose2d(2, 2, 0, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 0)(_x(t)),
        ValueError,
        r"ConvTranspose2d kernel_size must be positive.*kernel_size=0",
    ),
    R(
        "convT-dilation-0",
        lambda: nn.ConvTranspose2d(2, 2, 3, dilation=0, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, dilation=0)(_x(t)),
        ValueError,
        r"ConvTranspose2d dilation must be positive.*dilation=0",
    ),
    R(
        "convT-padding-neg",
        lambda: nn.ConvTranspose2d(2, 2, 3, padding=-1, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, padding=-1)(_x(t)),
        ValueError,
        r"ConvTranspose2d padding must be non-negative.*padding=-1",
    ),
    R(
        "convT-output-padding-neg",
        lambda: nn.ConvTranspose2d(2, 2, 3, output_padding=-1, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, output_padding=-1)(_x(t)),
        ValueError,
        r"ConvTranspose2d output_padding must be non-negative.*output_padding=-1",
    ),
    R(
        "convT-groups-0",
        lambda: nn.ConvTranspose2d(2, 2, 3, groups=0, key=K),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, groups=0),
        ValueError,
        r"ConvTranspose2d groups must be positive.*groups=0",
    ),
    # Convolutions: inputs the kernel cannot fit
    R(
        "conv-kernel-too-big",
        lambda: nn.Conv2d(2, 2, 7, key=K)(X),
        lambda t: t.nn.Conv2d(2, 2, 7)(_x(t)),
        ValueError,
        r"Conv2d\(in_channels=2.*padded input is 5 wide.*kernel spans 7.*Kernel size can't be "
        r"greater than the padded input size",
    ),
    R(
        "conv-dilated-kernel-too-big",
        lambda: nn.Conv2d(2, 2, 3, dilation=3, key=K)(X),
        lambda t: t.nn.Conv2d(2, 2, 3, dilation=3)(_x(t)),
        ValueError,
        r"kernel spans 7 \(kernel_size 3, dilation 3\)",
    ),
    R(
        "conv1d-kernel-too-big",
        lambda: nn.Conv1d(2, 2, 4, key=K)(jnp.ones((1, 2, 3))),
        lambda t: t.nn.Conv1d(2, 2, 4)(t.ones(1, 2, 3)),
        ValueError,
        r"Conv1d.*got input of shape \(1, 2, 3\).*kernel spans 4",
    ),
    R(
        "conv-reflect-too-much",
        lambda: nn.Conv2d(2, 2, 3, padding=5, padding_mode="reflect", key=K)(X),
        lambda t: t.nn.Conv2d(2, 2, 3, padding=5, padding_mode="reflect")(_x(t)),
        ValueError,
        r"padding_mode='reflect' needs padding smaller than the input size",
    ),
    R(
        "conv-circular-too-much",
        lambda: nn.Conv2d(2, 2, 3, padding=6, padding_mode="circular", key=K)(X),
        lambda t: t.nn.Conv2d(2, 2, 3, padding=6, padding_mode="circular")(_x(t)),
        ValueError,
        r"padding_mode='circular' needs padding at most the input size",
    ),
    R(
        "convT-empty-output",
        lambda: nn.ConvTranspose2d(2, 2, 3, padding=5, key=K)(X),
        lambda t: t.nn.ConvTranspose2d(2, 2, 3, padding=5)(_x(t)),
        ValueError,
        r"ConvTranspose2d\(.*whose output would be \(-3, -3\)",
    ),
    # Pooling
    R(
        "maxpool-kernel-0",
        lambda: nn.MaxPool2d(0),
        lambda t: t.nn.MaxPool2d(0)(_x(t)),
        ValueError,
        r"MaxPool2d kernel_size must be positive.*kernel_size=0",
    ),
    R(
        "maxpool-kernel-neg",
        lambda: nn.MaxPool2d(-1),
        lambda t: t.nn.MaxPool2d(-1)(_x(t)),
        ValueError,
        r"MaxPool2d kernel_size must be positive.*kernel_size=-1",
    ),
    R(
        "maxpool-stride-0",
        lambda: nn.MaxPool2d(2, 0),
        lambda t: t.nn.MaxPool2d(2, 0)(_x(t)),
        ValueError,
        r"MaxPool2d stride must be positive.*stride=0",
    ),
    R(
        "maxpool-padding-neg",
        lambda: nn.MaxPool2d(2, padding=-1),
        lambda t: t.nn.MaxPool2d(2, padding=-1)(_x(t)),
        ValueError,
        r"MaxPool2d padding must be non-negative.*padding=-1",
    ),
    R(
        "maxpool-padding-big",
        lambda: nn.MaxPool2d(2, padding=2),
        lambda t: t.nn.MaxPool2d(2, padding=2)(_x(t)),
        ValueError,
        r"MaxPool2d padding must be at most half the kernel size",
    ),
    R(
        "maxpool-dilation-0",
        lambda: nn.MaxPool2d(2, dilation=0),
        lambda t: t.nn.MaxPool2d(2, dilation=0)(_x(t)),
        ValueError,
        r"MaxPool2d dilation must be positive.*dilation=0",
    ),
    R(
        "maxpool-too-big",
        lambda: nn.MaxPool2d(7)(X),
        lambda t: t.nn.MaxPool2d(7)(_x(t)),
        ValueError,
        r"MaxPool2d\(kernel_size=\(7, 7\).*spatial size of 5 on axis 2.*output would "
        r"be empty",
    ),
    R(
        "avgpool-kernel-0",
        lambda: nn.AvgPool2d(0),
        lambda t: t.nn.AvgPool2d(0)(_x(t)),
        ValueError,
        r"AvgPool2d kernel_size must be positive.*kernel_size=0",
    ),
    R(
        "avgpool-stride-0",
        lambda: nn.AvgPool2d(2, (1, 0)),
        lambda t: t.nn.AvgPool2d(2, (1, 0))(_x(t)),
        ValueError,
        r"AvgPool2d stride must be positive.*stride=\(1, 0\)",
    ),
    R(
        "avgpool-padding-neg",
        lambda: nn.AvgPool2d(2, padding=-1),
        lambda t: t.nn.AvgPool2d(2, padding=-1)(_x(t)),
        ValueError,
        r"AvgPool2d padding must be non-negative.*padding=-1",
    ),
    R(
        "avgpool-divisor-0",
        lambda: nn.AvgPool2d(2, divisor_override=0),
        lambda t: t.nn.AvgPool2d(2, divisor_override=0)(_x(t)),
        ValueError,
        r"AvgPool2d divisor_override must be positive.*divisor_override=0",
    ),
    R(
        "avgpool-too-big",
        lambda: nn.AvgPool2d((2, 7))(X),
        lambda t: t.nn.AvgPool2d((2, 7))(_x(t)),
        ValueError,
        r"AvgPool2d.*spatial size of 5 on axis 3",
    ),
    R(
        "adaptive-neg",
        lambda: nn.AdaptiveAvgPool2d(-1),
        lambda t: t.nn.AdaptiveAvgPool2d(-1)(_x(t)),
        ValueError,
        r"output_size must be",
    ),
    R("adaptive-0", lambda: nn.AdaptiveAvgPool2d((0, 2)), None, ValueError, r"output_size must be"),
    # Convolutions and pooling in 1-d and 3-d (issue 13)
    R(
        "conv3d-kernel-0",
        lambda: nn.Conv3d(2, 2, (3, 0, 3), key=K),
        lambda t: t.nn.Conv3d(2, 2, (3, 0, 3))(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"Conv3d kernel_size must be positive.*\(3, 0, 3\)",
    ),
    R(
        "conv3d-kernel-too-big",
        lambda: nn.Conv3d(2, 2, (1, 1, 6), key=K)(jnp.ones((1, 2, 5, 5, 5))),
        lambda t: t.nn.Conv3d(2, 2, (1, 1, 6))(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"Conv3d\(.*got input of shape \(1, 2, 5, 5, 5\): along axis 4.*kernel spans 6",
    ),
    R(
        "conv-transpose1d-stride-0",
        lambda: nn.ConvTranspose1d(2, 2, 3, stride=0, key=K),
        lambda t: t.nn.ConvTranspose1d(2, 2, 3, stride=0)(t.ones(1, 2, 5)),
        ValueError,
        r"ConvTranspose1d stride must be positive.*stride=0",
    ),
    R(
        "conv-transpose3d-output-padding",
        lambda: nn.ConvTranspose3d(2, 2, 3, stride=2, output_padding=(0, 2, 0), key=K),
        lambda t: t.nn.ConvTranspose3d(2, 2, 3, stride=2, output_padding=(0, 2, 0))(
            t.ones(1, 2, 3, 3, 3)
        ),
        ValueError,
        r"ConvTranspose3d output_padding must be smaller than stride or dilation",
    ),
    R(
        "conv-transpose3d-empty-output",
        lambda: nn.ConvTranspose3d(2, 2, 3, padding=(0, 0, 3), key=K)(jnp.ones((1, 2, 2, 2, 2))),
        lambda t: t.nn.ConvTranspose3d(2, 2, 3, padding=(0, 0, 3))(t.ones(1, 2, 2, 2, 2)),
        ValueError,
        r"ConvTranspose3d\(.*whose output would be \(4, 4, -2\)",
    ),
    R(
        "maxpool1d-stride-0",
        lambda: nn.MaxPool1d(2, 0),
        lambda t: t.nn.MaxPool1d(2, 0)(t.ones(1, 2, 5)),
        ValueError,
        r"MaxPool1d stride must be positive.*stride=0",
    ),
    R(
        "maxpool3d-padding-half",
        lambda: nn.MaxPool3d(2, padding=(0, 0, 2)),
        lambda t: t.nn.MaxPool3d(2, padding=(0, 0, 2))(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"MaxPool3d padding must be at most half the kernel size",
    ),
    R(
        "maxpool3d-too-small",
        lambda: nn.MaxPool3d((2, 6, 2))(jnp.ones((1, 2, 5, 5, 5))),
        lambda t: t.nn.MaxPool3d((2, 6, 2))(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"MaxPool3d\(kernel_size=\(2, 6, 2\).*spatial size of 5 on axis 3",
    ),
    R(
        "maxpool1d-return-indices",
        lambda: nn.MaxPool1d(2, return_indices=True),
        None,
        ValueError,
        r"MaxPool1d does not support return_indices=True",
    ),
    R(
        "avgpool1d-padding",
        lambda: nn.AvgPool1d(2, padding=-1),
        lambda t: t.nn.AvgPool1d(2, padding=-1)(t.ones(1, 2, 5)),
        ValueError,
        r"AvgPool1d padding must be non-negative.*padding=-1",
    ),
    R(
        "avgpool1d-too-small",
        lambda: nn.AvgPool1d(6)(jnp.ones((1, 2, 5))),
        lambda t: t.nn.AvgPool1d(6)(t.ones(1, 2, 5)),
        ValueError,
        r"AvgPool1d.*spatial size of 5 on axis 2",
    ),
    R(
        "avgpool3d-divisor",
        lambda: nn.AvgPool3d(2, divisor_override=0),
        lambda t: t.nn.AvgPool3d(2, divisor_override=0)(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"AvgPool3d divisor_override must be positive.*divisor_override=0",
    ),
    R(
        "adaptive-max2d-0",
        lambda: nn.AdaptiveMaxPool2d((2, 0)),
        None,  # PyTorch returns an empty tensor
        ValueError,
        r"AdaptiveMaxPool2d output_size must be a positive int or a tuple of 2",
    ),
    R(
        "adaptive-avg3d-length",
        lambda: nn.AdaptiveAvgPool3d((2, 2)),
        lambda t: t.nn.AdaptiveAvgPool3d((2, 2))(t.ones(1, 2, 5, 5, 5)),
        ValueError,
        r"AdaptiveAvgPool3d output_size must be .* tuple of 3 .*got \(2, 2\)",
    ),
    R(
        "adaptive-max1d-empty",
        lambda: nn.AdaptiveMaxPool1d(2)(jnp.ones((1, 2, 0))),
        lambda t: t.nn.AdaptiveMaxPool1d(2)(t.ones(1, 2, 0)),
        ValueError,
        r"AdaptiveMaxPool1d\(output_size=2\) got input of shape \(1, 2, 0\)",
    ),
    R(
        "adaptive-avg1d-float",
        lambda: nn.AdaptiveAvgPool1d(2.0),
        lambda t: t.nn.AdaptiveAvgPool1d(2.0)(t.ones(1, 2, 5)),
        ValueError,
        r"AdaptiveAvgPool1d output_size must be .*got 2.0",
    ),
    R(
        "flatten-float",
        lambda: nn.Flatten(1.0),
        None,
        TypeError,
        r"Flatten start_dim must be an int \(an axis\), got 1.0",
    ),
    # Embedding
    R(
        "embedding-neg",
        lambda: nn.Embedding(-1, 3, key=K),
        lambda t: t.nn.Embedding(-1, 3),
        ValueError,
        r"Embedding num_embeddings must be positive.*num_embeddings=-1",
    ),
    R(
        "embedding-0",
        lambda: nn.Embedding(0, 3, key=K),
        None,
        ValueError,
        r"Embedding num_embeddings must be positive.*num_embeddings=0",
    ),
    R(
        "embedding-dim-neg",
        lambda: nn.Embedding(3, -1, key=K),
        lambda t: t.nn.Embedding(3, -1),
        ValueError,
        r"Embedding embedding_dim must be non-negative.*embedding_dim=-1",
    ),
    R(
        "embedding-padding-idx",
        lambda: nn.Embedding(3, 2, padding_idx=3, key=K),
        lambda t: t.nn.Embedding(3, 2, padding_idx=3),
        ValueError,
        r"padding_idx must be in \[-3, 3\)",
    ),
    R(
        "embedding-padding-idx-neg",
        lambda: nn.Embedding(3, 2, padding_idx=-4, key=K),
        lambda t: t.nn.Embedding(3, 2, padding_idx=-4),
        ValueError,
        r"got -4",
    ),
    R(
        "embedding-max-norm-neg",
        lambda: nn.Embedding(3, 2, max_norm=-1.0, key=K),
        None,
        ValueError,
        r"Embedding max_norm must be non-negative, got max_norm=-1.0",
    ),
    R(
        "embedding-norm-type-0",
        lambda: nn.Embedding(3, 2, max_norm=1.0, norm_type=0, key=K),
        None,
        ValueError,
        r"Embedding norm_type must be positive .*got norm_type=0",
    ),
    R(
        "embedding-sparse-str",
        lambda: nn.Embedding(3, 2, sparse="yes", key=K),
        None,
        TypeError,
        r"Embedding sparse must be True or False, got 'yes'",
    ),
    R(
        "embeddingbag-mode",
        lambda: nn.EmbeddingBag(3, 2, mode="avg", key=K),
        lambda t: t.nn.EmbeddingBag(3, 2, mode="avg")(t.tensor([[0, 1]])),
        ValueError,
        r"EmbeddingBag mode must be one of \('sum', 'mean', 'max'\), got mode='avg'",
    ),
    R(
        "embeddingbag-max-freq",
        lambda: nn.EmbeddingBag(3, 2, mode="max", scale_grad_by_freq=True, key=K),
        lambda t: t.nn.EmbeddingBag(3, 2, mode="max", scale_grad_by_freq=True)(t.tensor([[0]])),
        ValueError,
        r"EmbeddingBag mode='max' does not support scale_grad_by_freq=True",
    ),
    R(
        "embeddingbag-dim-neg",
        lambda: nn.EmbeddingBag(3, -1, key=K),
        lambda t: t.nn.EmbeddingBag(3, -1),
        ValueError,
        r"EmbeddingBag embedding_dim must be non-negative.*embedding_dim=-1",
    ),
    R(
        "embeddingbag-padding-idx",
        lambda: nn.EmbeddingBag(3, 2, padding_idx=3, key=K),
        lambda t: t.nn.EmbeddingBag(3, 2, padding_idx=3),
        ValueError,
        r"padding_idx must be in \[-3, 3\)",
    ),
    R(
        "embeddingbag-psw-mean",
        lambda: nn.EmbeddingBag(3, 2, key=K)(jnp.array([0, 1]), jnp.array([0]), jnp.ones(2)),
        lambda t: t.nn.EmbeddingBag(3, 2)(t.tensor([0, 1]), t.tensor([0]), t.ones(2)),
        ValueError,
        r"EmbeddingBag\(.*mode='mean'.*\) got per_sample_weights, which only mode='sum'",
    ),
    R(
        "embeddingbag-offsets-start",
        lambda: nn.EmbeddingBag(3, 2, key=K)(jnp.array([0, 1]), jnp.array([1])),
        lambda t: t.nn.EmbeddingBag(3, 2)(t.tensor([0, 1]), t.tensor([1])),
        ValueError,
        r"expects offsets starting at 0.*got \[1\]",
    ),
    # Normalisation
    R(
        "layernorm-neg",
        lambda: nn.LayerNorm(-1),
        lambda t: t.nn.LayerNorm(-1),
        ValueError,
        r"LayerNorm normalized_shape must be a positive int.*got -1",
    ),
    R(
        "layernorm-tuple-neg",
        lambda: nn.LayerNorm((3, -1)),
        lambda t: t.nn.LayerNorm((3, -1)),
        ValueError,
        r"LayerNorm normalized_shape.*got \(3, -1\)",
    ),
    R(
        "layernorm-empty",
        lambda: nn.LayerNorm(()),
        lambda t: t.nn.LayerNorm(())(t.ones(2)),
        ValueError,
        r"LayerNorm normalized_shape must be .*non-empty.*got \(\)",
    ),
    R(
        "layernorm-str",
        lambda: nn.LayerNorm("4"),
        None,
        TypeError,
        r"LayerNorm normalized_shape must be an int or a tuple of ints, got '4'",
    ),
    R(
        "layernorm-eps",
        lambda: nn.LayerNorm(4, eps=-1e-5),
        None,
        ValueError,
        r"LayerNorm eps must be non-negative, got eps=-1e-05",
    ),
    R(
        "rmsnorm-neg",
        lambda: nn.RMSNorm(-1),
        lambda t: t.nn.RMSNorm(-1),
        ValueError,
        r"RMSNorm normalized_shape must be a positive int.*got -1",
    ),
    R(
        "rmsnorm-empty",
        lambda: nn.RMSNorm([]),
        lambda t: t.nn.RMSNorm([])(t.ones(2)),
        ValueError,
        r"RMSNorm normalized_shape.*got \[\]",
    ),
    R(
        "groupnorm-0",
        lambda: nn.GroupNorm(0, 4),
        lambda t: t.nn.GroupNorm(0, 4),
        ValueError,
        r"GroupNorm num_groups must be positive.*num_groups=0",
    ),
    R(
        "groupnorm-divide",
        lambda: nn.GroupNorm(3, 4),
        lambda t: t.nn.GroupNorm(3, 4),
        ValueError,
        r"num_channels divisible by num_groups, got num_channels=4, num_groups=3",
    ),
    R(
        "groupnorm-neg",
        lambda: nn.GroupNorm(-2, 4),
        None,
        ValueError,
        r"GroupNorm num_groups must be positive.*num_groups=-2",
    ),
    R(
        "batchnorm-neg",
        lambda: nn.BatchNorm1d(-1),
        lambda t: t.nn.BatchNorm1d(-1),
        ValueError,
        r"BatchNorm1d num_features must be positive.*num_features=-1",
    ),
    R(
        "batchnorm-0",
        lambda: nn.BatchNorm2d(0),
        lambda t: t.nn.BatchNorm2d(0)(t.ones(2, 0, 2, 2)),
        ValueError,
        r"BatchNorm2d num_features must be positive.*num_features=0",
    ),
    R(
        "batchnorm-momentum",
        lambda: nn.BatchNorm2d(3, momentum=1.5),
        None,
        ValueError,
        r"BatchNorm2d momentum must be in \[0, 1\], got momentum=1.5",
    ),
    # Dropout and attention
    R(
        "dropout-high",
        lambda: nn.Dropout(1.5),
        lambda t: t.nn.Dropout(1.5),
        ValueError,
        r"Dropout p must be in \[0, 1\], got p=1.5",
    ),
    R(
        "dropout-neg",
        lambda: nn.Dropout(-0.1),
        lambda t: t.nn.Dropout(-0.1),
        ValueError,
        r"Dropout p must be in \[0, 1\], got p=-0.1",
    ),
    R(
        "dropout-str",
        lambda: nn.Dropout("0.1"),
        lambda t: t.nn.Dropout("0.1"),
        TypeError,
        r"Dropout p must be a number in \[0, 1\], got '0.1'",
    ),
    R(
        "mha-divide",
        lambda: nn.MultiheadAttention(10, 3, key=K),
        lambda t: t.nn.MultiheadAttention(10, 3),
        ValueError,
        r"MultiheadAttention embed_dim must be divisible by num_heads, got embed_dim=10, "
        r"num_heads=3",
    ),
    R(
        "mha-heads-0",
        lambda: nn.MultiheadAttention(8, 0, key=K),
        lambda t: t.nn.MultiheadAttention(8, 0),
        ValueError,
        r"MultiheadAttention num_heads must be positive.*num_heads=0",
    ),
    R(
        "mha-embed-0",
        lambda: nn.MultiheadAttention(0, 1, key=K),
        lambda t: t.nn.MultiheadAttention(0, 1),
        ValueError,
        r"MultiheadAttention embed_dim must be positive.*embed_dim=0",
    ),
    R(
        "mha-heads-neg",
        lambda: nn.MultiheadAttention(8, -2, key=K),
        lambda t: t.nn.MultiheadAttention(8, -2),
        ValueError,
        r"MultiheadAttention num_heads must be positive.*num_heads=-2",
    ),
    R(
        "mha-dropout",
        lambda: nn.MultiheadAttention(8, 2, dropout=2.0, key=K),
        None,
        ValueError,
        r"MultiheadAttention dropout must be in \[0, 1\], got dropout=2.0",
    ),
    R(
        "mlp-width",
        lambda: nn.MLP(4, [8, -1], key=K),
        None,
        ValueError,
        r"Linear out_features must be non-negative.*out_features=-1",
    ),
    # Batch and instance norms (issue 13)
    R(
        "instancenorm-features",
        lambda: nn.InstanceNorm1d(-1, affine=True),
        lambda t: t.nn.InstanceNorm1d(-1, affine=True),
        ValueError,
        r"InstanceNorm1d num_features must be positive.*num_features=-1",
    ),
    R(
        "instancenorm-channels",
        lambda: nn.InstanceNorm2d(3, affine=True)(X),
        lambda t: t.nn.InstanceNorm2d(3, affine=True)(_x(t)),
        ValueError,
        r"InstanceNorm2d\(num_features=3.*expected input of shape \(N, 3, H, W\) or \(3, H, W\), "
        r"got shape \(1, 2, 5, 5\)",
    ),
    R(
        "instancenorm-one-position",
        lambda: nn.InstanceNorm1d(2)(jnp.ones((3, 2, 1))),
        lambda t: t.nn.InstanceNorm1d(2)(t.ones(3, 2, 1)),
        ValueError,
        r"InstanceNorm1d\(.*more than 1 spatial element.*\(3, 2, 1\)",
    ),
    R(
        "instancenorm-momentum",
        lambda: nn.InstanceNorm3d(2, momentum=-0.5),
        None,
        ValueError,
        r"InstanceNorm3d momentum must be in \[0, 1\], got momentum=-0.5",
    ),
    R(
        "batchnorm3d-rank",
        lambda: nn.BatchNorm3d(2).eval()(X),
        lambda t: t.nn.BatchNorm3d(2)(_x(t)),
        ValueError,
        r"BatchNorm3d\(num_features=2.*expected input of shape \(N, 2, D, H, W\), got shape "
        r"\(1, 2, 5, 5\)",
    ),
    R(
        "lrn-size",
        lambda: nn.LocalResponseNorm(0),
        lambda t: t.nn.LocalResponseNorm(0)(_x(t)),
        ValueError,
        r"LocalResponseNorm size must be positive.*size=0",
    ),
    R(
        "lrn-alpha",
        lambda: nn.LocalResponseNorm(2, alpha="1e-4"),
        lambda t: t.nn.LocalResponseNorm(2, alpha="1e-4")(_x(t)),
        TypeError,
        r"LocalResponseNorm alpha must be a number, got '1e-4'",
    ),
    R(
        "lrn-rank",
        lambda: nn.LocalResponseNorm(2)(jnp.ones((2, 3))),
        lambda t: t.nn.LocalResponseNorm(2)(t.ones(2, 3)),
        ValueError,
        r"LocalResponseNorm\(size=2.*\(N, C, \*\) with 3 or more axes, got shape \(2, 3\)",
    ),
    # Resampling and reshaping (issue 13)
    R(
        "upsample-neither",
        lambda: nn.Upsample(),
        lambda t: t.nn.Upsample()(_x(t)),
        ValueError,
        r"Upsample needs either size or scale_factor",
    ),
    R(
        "upsample-both",
        lambda: nn.Upsample(3, 2.0),
        lambda t: t.nn.Upsample(3, 2.0)(_x(t)),
        ValueError,
        r"Upsample needs only one of size or scale_factor",
    ),
    R(
        "upsample-mode",
        lambda: nn.Upsample(3, mode="cubic"),
        lambda t: t.nn.Upsample(3, mode="cubic")(_x(t)),
        ValueError,
        r"interpolate mode must be one of 'nearest', .*got 'cubic'",
    ),
    R(
        "upsample-align-nearest",
        lambda: nn.Upsample(3, align_corners=True),
        lambda t: t.nn.Upsample(3, align_corners=True)(_x(t)),
        ValueError,
        r"align_corners can only be set with the interpolating modes.*mode='nearest'",
    ),
    R(
        "upsample-linear-4d",
        lambda: nn.Upsample(3, mode="linear")(X),
        lambda t: t.nn.Upsample(3, mode="linear")(_x(t)),
        ValueError,
        r"interpolate mode='linear' needs 3-d input \(N, C, \*spatial\), got an input with 4 axes",
    ),
    R(
        "upsample-size-0",
        lambda: nn.Upsample((0, 3))(X),
        lambda t: t.nn.Upsample((0, 3))(_x(t)),
        ValueError,
        r"interpolate needs input and output sizes greater than 0.*\(5, 5\).*\(0, 3\)",
    ),
    R(
        "upsample-size-rank",
        lambda: nn.Upsample((4, 3, 2))(X),
        lambda t: t.nn.Upsample((4, 3, 2))(_x(t)),
        ValueError,
        r"interpolate size must have one entry per spatial axis \(2\), got \(4, 3, 2\)",
    ),
    R(
        "pixelshuffle-factor",
        lambda: nn.PixelShuffle(0),
        lambda t: t.nn.PixelShuffle(0)(_x(t)),
        ValueError,
        r"PixelShuffle upscale_factor must be positive.*upscale_factor=0",
    ),
    R(
        "pixelshuffle-channels",
        lambda: nn.PixelShuffle(2)(X),
        lambda t: t.nn.PixelShuffle(2)(_x(t)),
        ValueError,
        r"PixelShuffle\(upscale_factor=2\) expected input of shape \(\*, C \* 4, H, W\), got "
        r"shape \(1, 2, 5, 5\)",
    ),
    R(
        "pixelunshuffle-size",
        lambda: nn.PixelUnshuffle(2)(X),
        lambda t: t.nn.PixelUnshuffle(2)(_x(t)),
        ValueError,
        r"PixelUnshuffle\(downscale_factor=2\) expected input of shape \(\*, C, H \* 2, W \* 2\)",
    ),
    R(
        "unflatten-size",
        lambda: nn.Unflatten(1, (3, 2))(X),
        lambda t: t.nn.Unflatten(1, (3, 2))(_x(t)),
        ValueError,
        r"Unflatten\(dim=1, unflattened_size=\(3, 2\)\) expected axis 1 of size 6, got input of "
        r"shape \(1, 2, 5, 5\)",
    ),
    R(
        "unflatten-float",
        lambda: nn.Unflatten(1, (2.0, 1)),
        lambda t: t.nn.Unflatten(1, (2.0, 1)),
        TypeError,
        r"Unflatten unflattened_size must be a tuple or list of ints, got \(2.0, 1\)",
    ),
    R(
        "unflatten-dim",
        lambda: nn.Unflatten(4, (1, 2))(X),
        lambda t: t.nn.Unflatten(4, (1, 2))(_x(t)),
        ValueError,
        r"Unflatten\(dim=4.*cannot unflatten axis 4 of input of shape \(1, 2, 5, 5\)",
    ),
    # Recurrent layers
    R(
        "rnn-hidden-zero",
        lambda: nn.RNN(3, 0, key=K),
        lambda t: t.nn.RNN(3, 0),
        ValueError,
        r"RNN hidden_size must be positive.*hidden_size=0",
    ),
    R(
        "lstm-input-zero",
        lambda: nn.LSTM(0, 4, key=K),
        lambda t: t.nn.LSTM(0, 4),
        ValueError,
        r"LSTM input_size must be positive.*input_size=0",
    ),
    R(
        "gru-layers-zero",
        lambda: nn.GRU(3, 4, 0, key=K),
        lambda t: t.nn.GRU(3, 4, 0),
        ValueError,
        r"GRU num_layers must be positive.*num_layers=0",
    ),
    R(
        "lstm-hidden-float",
        lambda: nn.LSTM(3, 4.0, key=K),
        lambda t: t.nn.LSTM(3, 4.0),
        TypeError,
        r"LSTM hidden_size must be an int, got 4.0",
    ),
    R(
        "lstm-proj-equal-hidden",
        lambda: nn.LSTM(3, 4, proj_size=4, key=K),
        lambda t: t.nn.LSTM(3, 4, proj_size=4),
        ValueError,
        r"LSTM proj_size must be smaller than hidden_size.*proj_size=4 and hidden_size=4",
    ),
    R(
        "lstm-proj-negative",
        lambda: nn.LSTM(3, 4, proj_size=-1, key=K),
        lambda t: t.nn.LSTM(3, 4, proj_size=-1),
        ValueError,
        r"LSTM proj_size must be non-negative.*proj_size=-1",
    ),
    R(
        "gru-proj",
        lambda: nn.GRU(3, 4, proj_size=2, key=K),
        lambda t: t.nn.GRU(3, 4, proj_size=2),
        ValueError,
        r"GRU proj_size is only supported by LSTM.*proj_size=2",
    ),
    R(
        "rnn-proj",
        lambda: nn.RNN(3, 4, proj_size=2, key=K),
        lambda t: t.nn.RNN(3, 4, proj_size=2),
        ValueError,
        r"RNN proj_size is only supported by LSTM",
    ),
    R(
        "rnn-dropout-above-one",
        lambda: nn.RNN(3, 4, 2, dropout=1.5, key=K),
        lambda t: t.nn.RNN(3, 4, 2, dropout=1.5),
        ValueError,
        r"RNN dropout must be in \[0, 1\], got dropout=1.5",
    ),
    R(
        "lstm-dropout-negative",
        lambda: nn.LSTM(3, 4, 2, dropout=-0.1, key=K),
        lambda t: t.nn.LSTM(3, 4, 2, dropout=-0.1),
        ValueError,
        r"LSTM dropout must be in \[0, 1\], got dropout=-0.1",
    ),
    R(
        "rnn-nonlinearity",
        lambda: nn.RNN(3, 4, nonlinearity="gelu", key=K),
        lambda t: t.nn.RNN(3, 4, nonlinearity="gelu"),
        ValueError,
        r"RNN nonlinearity must be 'tanh' or 'relu', got nonlinearity='gelu'",
    ),
    R(
        "gru-bias-not-bool",
        lambda: nn.GRU(3, 4, bias=1, key=K),
        lambda t: t.nn.GRU(3, 4, bias=1),
        TypeError,
        r"GRU bias must be a bool, got 1",
    ),
    R(
        "rnn-cell-hidden-zero",
        lambda: nn.RNNCell(3, 0, key=K),
        None,  # PyTorch builds it and returns an empty (N, 0) state
        ValueError,
        r"RNNCell hidden_size must be positive.*hidden_size=0",
    ),
    R(
        "rnn-cell-nonlinearity",
        lambda: nn.RNNCell(3, 4, nonlinearity="sigmoid", key=K),
        lambda t: t.nn.RNNCell(3, 4, nonlinearity="sigmoid")(t.ones(2, 3)),
        ValueError,
        r"RNNCell nonlinearity must be 'tanh' or 'relu', got nonlinearity='sigmoid'",
    ),
    # Attention and transformers (issue 13)
    R(
        "mha-kdim-0",
        lambda: nn.MultiheadAttention(8, 2, kdim=0, key=K),
        None,
        ValueError,
        r"MultiheadAttention kdim must be positive.*kdim=0",
    ),
    R(
        "encoder-layer-activation",
        lambda: nn.TransformerEncoderLayer(8, 2, activation="tanh", key=K),
        lambda t: t.nn.TransformerEncoderLayer(8, 2, activation="tanh"),
        ValueError,
        r'TransformerEncoderLayer activation must be "relu", "gelu" or a callable, got \'tanh\'',
    ),
    R(
        "decoder-layer-dropout",
        lambda: nn.TransformerDecoderLayer(8, 2, dropout=1.5, key=K),
        lambda t: t.nn.TransformerDecoderLayer(8, 2, dropout=1.5),
        ValueError,
        r"TransformerDecoderLayer dropout must be in \[0, 1\], got dropout=1.5",
    ),
    R(
        "encoder-layer-heads",
        lambda: nn.TransformerEncoderLayer(8, 3, key=K),
        lambda t: t.nn.TransformerEncoderLayer(8, 3),
        ValueError,
        r"MultiheadAttention embed_dim must be divisible by num_heads, got embed_dim=8, "
        r"num_heads=3",
    ),
    R(
        "encoder-feedforward",
        lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=0, key=K),
        None,
        ValueError,
        r"TransformerEncoderLayer dim_feedforward must be positive.*dim_feedforward=0",
    ),
    R(
        "decoder-num-layers",
        lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, key=K), 0),
        None,
        ValueError,
        r"TransformerDecoder num_layers must be positive.*num_layers=0",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_hyperparameters_are_refused_like_torch(row, request):
    with pytest.raises(row.error, match=row.match):
        row.ours()
    if row.torch is not None:
        torch = request.getfixturevalue("torch")
        with warnings.catch_warnings(), pytest.raises(TORCH_REFUSALS):
            warnings.simplefilter("ignore")  # PyTorch warns about zero-element tensors
            row.torch(torch)


def test_layers_that_fit_exactly_still_run(torch):
    """The boundary cases next to the refusals: a kernel exactly as wide as the padded input,
    reflect padding one less than the input, circular padding equal to it."""
    x = jnp.ones((1, 2, 5, 5))
    assert nn.Conv2d(2, 3, 7, padding=1, key=K)(x).shape == (1, 3, 1, 1)
    assert nn.Conv2d(2, 3, 3, padding=4, padding_mode="reflect", key=K)(x).shape == (1, 3, 11, 11)
    assert nn.Conv2d(2, 3, 3, padding=5, padding_mode="circular", key=K)(x).shape == (
        1,
        3,
        13,
        13,
    )
    assert nn.MaxPool2d(6, padding=3)(x).shape == (1, 2, 1, 1)
    assert nn.ConvTranspose2d(2, 2, 3, padding=3, key=K)(x).shape == (1, 2, 1, 1)
    assert nn.Linear(0, 3, key=K)(jnp.ones((2, 0))).shape == (2, 3)  # zeros, as in PyTorch
    t = torch.nn.Conv2d(2, 3, 7, padding=1)(torch.ones(1, 2, 5, 5))
    assert tuple(t.shape) == (1, 3, 1, 1)
