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
