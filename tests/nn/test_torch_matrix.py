"""Every layer of `jparam.nn` against PyTorch, as a user would port a model.

For each case the PyTorch layer is built, its parameters (and running statistics) randomised,
and its ``state_dict`` loaded into the jparam layer. Then, against one PyTorch forward and
backward pass with the loss ``sum(output * cotangent)`` (a fixed random cotangent):

- the forward pass eagerly, and under ``jax.jit``;
- gradients under ``jax.jit(jax.value_and_grad(...))`` with respect to every floating input and
  every trainable parameter (by PyTorch name);
- the state after the call (BatchNorm's running statistics in training mode, through
  `nn.stateful_call`, which every case runs through).

The first case of each layer runs by default; the other variants are marked ``slow``.
`test_every_public_layer_has_a_case` fails when a name joins ``nn.__all__`` without a case here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import container_nets as nets
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, load_torch, numpy, random

import jparam as jp
from jparam import nn

# Public names of jparam.nn that are not layers compared here, and where they are tested.
EXCLUDED = {
    "Stacked": "tests/nn/test_stacked.py compares it with per-layer PyTorch models",
    "takes_key": "a predicate on layers, tested in tests/nn/test_containers.py",
    "update_state": "the protocol behind stateful layers, tested in tests/nn/test_stateful.py",
}
# Public names covered in this file outside the case table.
COVERED_HERE = {
    "stateful_call": "every case runs through it (BatchNorm's training cases update state)",
    "dropout": "test_dropout_in_training_mode_is_inverted_dropout",
}

Inputs = Callable[[], tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class Case:
    """One jparam layer and its PyTorch twin, called on the same inputs."""

    id: str
    ours: Callable[[jax.Array], jp.Module]  # key -> jparam layer
    theirs: Callable[[Any], Any]  # torch.nn -> PyTorch layer
    inputs: Inputs
    covers: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)  # call keywords for jparam
    torch_kwargs: dict[str, Any] | None = None  # for PyTorch (defaults to ``kwargs``)
    train: bool = False  # training mode (BatchNorm statistics, Dropout)
    slow: bool = False
    rtol: float = 1e-4
    atol: float = 1e-5


def floats(*shapes: tuple[int, ...]) -> Inputs:
    return lambda: tuple(random(s, seed=i + 1) for i, s in enumerate(shapes))


def ids(*shape: int, high: int) -> Inputs:
    return lambda: (np.random.default_rng(5).integers(0, high, shape),)


def _cases_for(first: Case, *variants: Case) -> list[Case]:
    """``first`` runs by default, ``variants`` only with the slow tests."""
    return [first, *(Case(**{**v.__dict__, "slow": True}) for v in variants)]


def row(id: str, ours, theirs, inputs: Inputs, covers: str | tuple[str, ...], **kw) -> Case:
    """A table row: `Case` with ``covers`` as one name or a tuple of names."""
    return Case(id, ours, theirs, inputs, covers if isinstance(covers, tuple) else (covers,), **kw)


def _causal(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -np.inf, np.float32), 1)


_PAD = np.zeros((2, 4), bool)
_PAD[0, -2:] = True
_FLOAT_MASK = random((5, 4), seed=7)


def _seq_ours(k: jax.Array) -> nn.Sequential:
    k1, k2 = jax.random.split(k)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, key=k1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(36, 5, key=k2),
    )


def _seq_theirs(tnn: Any) -> Any:
    return tnn.Sequential(
        tnn.Conv2d(2, 4, 3, padding=1),
        tnn.BatchNorm2d(4),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(36, 5),
    )


def _mlp_theirs(widths: list[int], dropout: float = 0.0) -> Callable[[Any], Any]:
    """The Sequential that ``torchvision.ops.MLP(widths[0], widths[1:], LayerNorm)`` builds."""

    def build(tnn: Any) -> Any:
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(tnn.Linear(a, b))
            if i < len(widths) - 2:
                layers += [tnn.LayerNorm(b), tnn.ReLU()]
            layers.append(tnn.Dropout(dropout))
        return tnn.Sequential(*layers)

    return build


# Each activation, built from jparam.nn or torch.nn (same names and arguments in both).
_ACTIVATIONS = (
    lambda m: m.GELU("tanh"),
    lambda m: m.SiLU(),
    lambda m: m.Tanh(),
    lambda m: m.ReLU(),  # after three activations that keep the sign: it sees negatives
    lambda m: m.GELU(),
    lambda m: m.Identity(3),
    lambda m: m.Sigmoid(),
    lambda m: m.Softmax(-1),
)
X4 = floats((2, 4, 7, 6))
CASES: list[Case] = [
    *_cases_for(
        row(
            "Linear",
            lambda k: nn.Linear(4, 3, key=k),
            lambda t: t.Linear(4, 3),
            floats((2, 5, 4)),
            "Linear",
        ),
        row(
            "Linear-no-bias",
            lambda k: nn.Linear(4, 3, False, key=k),
            lambda t: t.Linear(4, 3, False),
            floats((7, 4)),
            "Linear",
        ),
    ),
    *_cases_for(
        row(
            "Bilinear",
            lambda k: nn.Bilinear(3, 4, 2, key=k),
            lambda t: t.Bilinear(3, 4, 2),
            floats((5, 3), (5, 4)),
            "Bilinear",
        ),
    ),
    *_cases_for(
        row(
            "Conv1d",
            lambda k: nn.Conv1d(3, 6, 4, key=k),
            lambda t: t.Conv1d(3, 6, 4),
            floats((2, 3, 11)),
            "Conv1d",
        ),
        row(
            "Conv1d-same-dilated-groups",
            lambda k: nn.Conv1d(3, 6, 3, padding="same", dilation=2, groups=3, key=k),
            lambda t: t.Conv1d(3, 6, 3, padding="same", dilation=2, groups=3),
            floats((2, 3, 11)),
            "Conv1d",
        ),
    ),
    *_cases_for(
        row(
            "Conv2d-strided-groups",
            lambda k: nn.Conv2d(4, 6, 3, 2, 1, groups=2, key=k),
            lambda t: t.Conv2d(4, 6, 3, 2, 1, groups=2),
            X4,
            "Conv2d",
        ),
        row(
            "Conv2d",
            lambda k: nn.Conv2d(4, 6, (3, 2), key=k),
            lambda t: t.Conv2d(4, 6, (3, 2)),
            X4,
            "Conv2d",
        ),
        row(
            "Conv2d-same-dilated",
            lambda k: nn.Conv2d(4, 6, 3, padding="same", dilation=2, key=k),
            lambda t: t.Conv2d(4, 6, 3, padding="same", dilation=2),
            X4,
            "Conv2d",
        ),
        row(
            "Conv2d-reflect",
            lambda k: nn.Conv2d(4, 6, 3, padding=2, padding_mode="reflect", key=k),
            lambda t: t.Conv2d(4, 6, 3, padding=2, padding_mode="reflect"),
            X4,
            "Conv2d",
        ),
        row(
            "Conv2d-circular",
            lambda k: nn.Conv2d(4, 6, 3, 2, (1, 2), padding_mode="circular", bias=False, key=k),
            lambda t: t.Conv2d(4, 6, 3, 2, (1, 2), padding_mode="circular", bias=False),
            X4,
            "Conv2d",
        ),
        row(
            "Conv2d-replicate",
            lambda k: nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate", key=k),
            lambda t: t.Conv2d(4, 6, 3, padding=1, padding_mode="replicate"),
            X4,
            "Conv2d",
        ),
    ),
    *_cases_for(
        row(
            "ConvTranspose2d-strided",
            lambda k: nn.ConvTranspose2d(4, 6, 3, 2, 1, output_padding=1, key=k),
            lambda t: t.ConvTranspose2d(4, 6, 3, 2, 1, output_padding=1),
            floats((2, 4, 5, 6)),
            "ConvTranspose2d",
        ),
        row(
            "ConvTranspose2d",
            lambda k: nn.ConvTranspose2d(4, 6, 3, key=k),
            lambda t: t.ConvTranspose2d(4, 6, 3),
            floats((2, 4, 5, 6)),
            "ConvTranspose2d",
        ),
        row(
            "ConvTranspose2d-groups-dilated",
            lambda k: nn.ConvTranspose2d(4, 6, 3, (2, 3), (0, 1), (1, 2), 2, False, (1, 2), key=k),
            lambda t: t.ConvTranspose2d(4, 6, 3, (2, 3), (0, 1), (1, 2), 2, False, (1, 2)),
            floats((2, 4, 5, 6)),
            "ConvTranspose2d",
        ),
    ),
    *_cases_for(
        row(
            "MaxPool2d-padded",
            lambda k: nn.MaxPool2d(3, 2, 1),
            lambda t: t.MaxPool2d(3, 2, 1),
            X4,
            "MaxPool2d",
        ),
        row("MaxPool2d", lambda k: nn.MaxPool2d(2), lambda t: t.MaxPool2d(2), X4, "MaxPool2d"),
        row(
            "MaxPool2d-dilated",
            lambda k: nn.MaxPool2d((3, 2), (2, 1), dilation=(1, 2)),
            lambda t: t.MaxPool2d((3, 2), (2, 1), dilation=(1, 2)),
            X4,
            "MaxPool2d",
        ),
        row(
            "MaxPool2d-ceil",
            lambda k: nn.MaxPool2d(2, 3, 1, ceil_mode=True),
            lambda t: t.MaxPool2d(2, 3, 1, ceil_mode=True),
            X4,
            "MaxPool2d",
        ),
    ),
    *_cases_for(
        row(
            "AvgPool2d-padded-exclusive",
            lambda k: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
            lambda t: t.AvgPool2d(3, 2, 1, count_include_pad=False),
            X4,
            "AvgPool2d",
        ),
        row("AvgPool2d", lambda k: nn.AvgPool2d(2), lambda t: t.AvgPool2d(2), X4, "AvgPool2d"),
        row(
            "AvgPool2d-ceil",
            lambda k: nn.AvgPool2d(3, 2, 1, ceil_mode=True),
            lambda t: t.AvgPool2d(3, 2, 1, ceil_mode=True),
            X4,
            "AvgPool2d",
        ),
        row(
            "AvgPool2d-divisor",
            lambda k: nn.AvgPool2d((2, 3), divisor_override=5),
            lambda t: t.AvgPool2d((2, 3), divisor_override=5),
            X4,
            "AvgPool2d",
        ),
    ),
    *_cases_for(
        row(
            "AdaptiveAvgPool2d",
            lambda k: nn.AdaptiveAvgPool2d((3, 2)),
            lambda t: t.AdaptiveAvgPool2d((3, 2)),
            X4,
            "AdaptiveAvgPool2d",
        ),
        row(
            "AdaptiveAvgPool2d-global",
            lambda k: nn.AdaptiveAvgPool2d(1),
            lambda t: t.AdaptiveAvgPool2d(1),
            X4,
            "AdaptiveAvgPool2d",
        ),
        row(
            "AdaptiveAvgPool2d-none",
            lambda k: nn.AdaptiveAvgPool2d((None, 4)),
            lambda t: t.AdaptiveAvgPool2d((None, 4)),
            X4,
            "AdaptiveAvgPool2d",
        ),
    ),
    *_cases_for(
        row("Flatten", lambda k: nn.Flatten(), lambda t: t.Flatten(), X4, "Flatten"),
        row("Flatten-middle", lambda k: nn.Flatten(1, 2), lambda t: t.Flatten(1, 2), X4, "Flatten"),
    ),
    # The default run chains every activation in one case (one compilation); each alone is slow.
    *_cases_for(
        row(
            "activations-chained",
            lambda k: nn.Sequential(*(make(nn) for make in _ACTIVATIONS)),
            lambda t: t.Sequential(*(make(t) for make in _ACTIVATIONS)),
            floats((3, 4, 5)),
            ("ReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax", "Identity"),
        ),
        row("ReLU", lambda k: nn.ReLU(), lambda t: t.ReLU(), floats((3, 7)), "ReLU"),
        row("GELU", lambda k: nn.GELU(), lambda t: t.GELU(), floats((3, 7)), "GELU"),
        row(
            "GELU-tanh", lambda k: nn.GELU("tanh"), lambda t: t.GELU("tanh"), floats((3, 7)), "GELU"
        ),
        row("SiLU", lambda k: nn.SiLU(), lambda t: t.SiLU(), floats((3, 7)), "SiLU"),
        row("Sigmoid", lambda k: nn.Sigmoid(), lambda t: t.Sigmoid(), floats((3, 7)), "Sigmoid"),
        row("Tanh", lambda k: nn.Tanh(), lambda t: t.Tanh(), floats((3, 7)), "Tanh"),
        row(
            "Softmax",
            lambda k: nn.Softmax(-2),
            lambda t: t.Softmax(-2),
            floats((3, 4, 5)),
            "Softmax",
        ),
        row(
            "Identity",
            lambda k: nn.Identity(3, unused=1),
            lambda t: t.Identity(3, unused=1),
            floats((3, 7)),
            "Identity",
        ),
    ),
    *_cases_for(
        row(
            "LayerNorm",
            lambda k: nn.LayerNorm((3, 4)),
            lambda t: t.LayerNorm((3, 4)),
            floats((2, 5, 3, 4)),
            "LayerNorm",
        ),
        row(
            "LayerNorm-no-bias-eps",
            lambda k: nn.LayerNorm(6, 1e-2, bias=False),
            lambda t: t.LayerNorm(6, 1e-2, bias=False),
            floats((4, 6)),
            "LayerNorm",
        ),
        row(
            "LayerNorm-no-affine",
            lambda k: nn.LayerNorm(6, elementwise_affine=False),
            lambda t: t.LayerNorm(6, elementwise_affine=False),
            floats((4, 6)),
            "LayerNorm",
        ),
    ),
    *_cases_for(
        row("RMSNorm", lambda k: nn.RMSNorm(8), lambda t: t.RMSNorm(8), floats((3, 8)), "RMSNorm"),
        row(
            "RMSNorm-2d-eps",
            lambda k: nn.RMSNorm((3, 4), 1e-3),
            lambda t: t.RMSNorm((3, 4), 1e-3),
            floats((2, 3, 4)),
            "RMSNorm",
        ),
    ),
    *_cases_for(
        row(
            "GroupNorm",
            lambda k: nn.GroupNorm(3, 6),
            lambda t: t.GroupNorm(3, 6),
            floats((2, 6, 4, 3)),
            "GroupNorm",
        ),
        row(
            "GroupNorm-1d-no-affine",
            lambda k: nn.GroupNorm(2, 6, affine=False),
            lambda t: t.GroupNorm(2, 6, affine=False),
            floats((2, 6, 5)),
            "GroupNorm",
        ),
    ),
    *_cases_for(
        row(
            "BatchNorm2d-train",
            lambda k: nn.BatchNorm2d(3),
            lambda t: t.BatchNorm2d(3),
            floats((4, 3, 5, 2)),
            ("BatchNorm2d", "stateful_call"),
            train=True,
        ),
        row(
            "BatchNorm2d-eval",
            lambda k: nn.BatchNorm2d(3),
            lambda t: t.BatchNorm2d(3),
            floats((4, 3, 5, 2)),
            "BatchNorm2d",
        ),
        row(
            "BatchNorm2d-train-cumulative",
            lambda k: nn.BatchNorm2d(3, momentum=None),
            lambda t: t.BatchNorm2d(3, momentum=None),
            floats((4, 3, 5, 2)),
            "BatchNorm2d",
            train=True,
        ),
        row(
            "BatchNorm2d-no-stats",
            lambda k: nn.BatchNorm2d(3, affine=False, track_running_stats=False),
            lambda t: t.BatchNorm2d(3, affine=False, track_running_stats=False),
            floats((4, 3, 5, 2)),
            "BatchNorm2d",
        ),
    ),
    *_cases_for(
        row(
            "BatchNorm1d-train",
            lambda k: nn.BatchNorm1d(4, momentum=0.3),
            lambda t: t.BatchNorm1d(4, momentum=0.3),
            floats((6, 4)),
            "BatchNorm1d",
            train=True,
        ),
        row(
            "BatchNorm1d-eval",
            lambda k: nn.BatchNorm1d(4),
            lambda t: t.BatchNorm1d(4),
            floats((3, 4, 5)),
            "BatchNorm1d",
        ),
        row(
            "BatchNorm1d-train-3d",
            lambda k: nn.BatchNorm1d(4),
            lambda t: t.BatchNorm1d(4),
            floats((3, 4, 5)),
            "BatchNorm1d",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "Dropout-eval",
            lambda k: nn.Dropout(0.3),
            lambda t: t.Dropout(0.3),
            floats((3, 7)),
            "Dropout",
        ),
        row(
            "Dropout-p0-train",
            lambda k: nn.Dropout(0.0),
            lambda t: t.Dropout(0.0),
            floats((3, 7)),
            "Dropout",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "Embedding-padding",
            lambda k: nn.Embedding(10, 4, padding_idx=2, key=k),
            lambda t: t.Embedding(10, 4, padding_idx=2),
            ids(2, 6, high=10),
            "Embedding",
        ),
        row(
            "Embedding",
            lambda k: nn.Embedding(7, 3, key=k),
            lambda t: t.Embedding(7, 3),
            ids(4, high=7),
            "Embedding",
        ),
    ),
    *_cases_for(
        row(
            "MultiheadAttention-cross-weights",
            lambda k: nn.MultiheadAttention(8, 2, batch_first=True, key=k),
            lambda t: t.MultiheadAttention(8, 2, batch_first=True),
            floats((2, 5, 8), (2, 4, 8), (2, 4, 8)),
            "MultiheadAttention",
            kwargs=dict(key_padding_mask=_PAD),
            rtol=1e-4,
            atol=2e-5,
        ),
        row(
            "MultiheadAttention-fused-causal",
            lambda k: nn.MultiheadAttention(8, 2, batch_first=True, key=k),
            lambda t: t.MultiheadAttention(8, 2, batch_first=True),
            floats((2, 5, 8), (2, 5, 8), (2, 5, 8)),
            "MultiheadAttention",
            kwargs=dict(need_weights=False, is_causal=True),
            torch_kwargs=dict(need_weights=False, is_causal=True, attn_mask=_causal(5)),
            atol=2e-5,
        ),
        row(
            "MultiheadAttention-no-bias-float-mask-per-head",
            lambda k: nn.MultiheadAttention(8, 4, bias=False, batch_first=True, key=k),
            lambda t: t.MultiheadAttention(8, 4, bias=False, batch_first=True),
            floats((2, 5, 8), (2, 4, 8), (2, 4, 8)),
            "MultiheadAttention",
            kwargs=dict(attn_mask=_FLOAT_MASK, average_attn_weights=False),
            atol=2e-5,
        ),
        row(
            "MultiheadAttention-dropout-eval",
            lambda k: nn.MultiheadAttention(8, 2, 0.5, batch_first=True, key=k),
            lambda t: t.MultiheadAttention(8, 2, 0.5, batch_first=True),
            floats((2, 5, 8), (2, 4, 8), (2, 4, 8)),
            "MultiheadAttention",
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "Sequential-train",
            _seq_ours,
            _seq_theirs,
            floats((3, 2, 6, 6)),
            ("Sequential",),
            train=True,
        ),
        row("Sequential-eval", _seq_ours, _seq_theirs, floats((3, 2, 6, 6)), "Sequential"),
        row(
            "Sequential-sliced",
            lambda k: _seq_ours(k)[1:],
            lambda t: _seq_theirs(t)[1:],
            floats((3, 4, 6, 6)),
            "Sequential",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "MLP",
            lambda k: nn.MLP(6, [8, 3], norm_layer=nn.LayerNorm, key=k),
            _mlp_theirs([6, 8, 3]),
            floats((4, 6)),
            "MLP",
            train=True,
        ),
        row(
            "MLP-dropout-eval",
            lambda k: nn.MLP(6, [16, 8, 3], nn.LayerNorm, dropout=0.5, key=k),
            _mlp_theirs([6, 16, 8, 3], 0.5),
            floats((4, 6)),
            "MLP",
        ),
    ),
]


def _extra_activations(m: Any) -> list[Any]:
    """The activations of issue 13 from jparam.nn or torch.nn (same names and arguments)."""
    return [
        m.LeakyReLU(0.2),
        m.PReLU(4),  # one slope per channel, on axis 1
        m.ELU(0.7),
        m.SELU(),
        m.CELU(1.5),
        m.Softplus(2.0, 3.0),  # beta * x crosses the threshold at x = 1.5
        m.Mish(),
        m.Hardswish(),
        m.Hardsigmoid(),
        m.Hardtanh(-0.5, 2.0),
        m.ReLU6(),
        m.LogSoftmax(1),
        m.Softmin(-1),
        m.GLU(1),
        m.Threshold(0.3, -2.0),
    ]


class _FanOut(jp.Module):
    """Applies every layer to the same input and returns the tuple of outputs.

    Unlike a chain, each activation sees the whole input range (a chain feeds saturated values
    onwards and hides gradients), still in one compilation.
    """

    layers: list[jp.Module]

    def __init__(self, layers: list[jp.Module]) -> None:
        self.layers = layers

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(layer(x) for layer in self.layers)


def _fan_out_theirs(tnn: Any) -> Any:
    class FanOut(tnn.Module):
        def __init__(self, layers: list[Any]) -> None:
            super().__init__()
            self.layers = tnn.ModuleList(layers)

        def forward(self, x: Any) -> tuple[Any, ...]:
            return tuple(layer(x) for layer in self.layers)

    return FanOut(_extra_activations(tnn))


def _wide(*shape: int) -> Inputs:
    """Normal inputs times 4, reaching the kinks at +-3 and 6 of the hard activations."""
    return lambda: (random(shape, seed=1) * 4,)


_WIDE = _wide(3, 8)


def _act(id: str, make: Callable[[Any], Any], inputs: Inputs = _WIDE, **kw) -> Case:
    """A one-activation row: ``make`` builds it from jparam.nn or torch.nn."""
    return row(id, lambda k: make(nn), make, inputs, id.split("-")[0], **kw)


# Cases of layers added later, one list per area (each list has one owner).
ACTIVATION_CASES: list[Case] = _cases_for(
    row(
        "activations-extra-fan-out",
        lambda k: _FanOut(_extra_activations(nn)),
        _fan_out_theirs,
        _wide(3, 4, 6),
        tuple(type(layer).__name__ for layer in _extra_activations(nn)),
    ),
    _act("LeakyReLU", lambda m: m.LeakyReLU()),
    _act("PReLU", lambda m: m.PReLU()),
    _act("PReLU-channels-4d", lambda m: m.PReLU(3, 0.1), _wide(2, 3, 4, 5)),
    _act("PReLU-scalar-3d", lambda m: m.PReLU(init=-0.5), _wide(2, 3, 4)),
    _act("ELU", lambda m: m.ELU()),
    _act("SELU", lambda m: m.SELU()),
    _act("CELU", lambda m: m.CELU()),
    _act("CELU-negative-alpha", lambda m: m.CELU(-0.5)),
    _act("Softplus", lambda m: m.Softplus()),
    _act("Softplus-negative-beta", lambda m: m.Softplus(-0.5, 1.0)),
    _act("Mish", lambda m: m.Mish()),
    _act("Hardswish", lambda m: m.Hardswish()),
    _act("Hardsigmoid", lambda m: m.Hardsigmoid()),
    _act("Hardtanh", lambda m: m.Hardtanh()),
    _act("ReLU6", lambda m: m.ReLU6()),
    _act("LogSoftmax", lambda m: m.LogSoftmax(0), _wide(3, 4, 5)),
    _act("Softmin", lambda m: m.Softmin(-2), _wide(3, 4, 5)),
    _act("GLU", lambda m: m.GLU()),
    _act("GLU-dim0", lambda m: m.GLU(0), _wide(4, 3, 5)),
    _act("Threshold", lambda m: m.Threshold(0.1, 20.0)),
)
CONTAINER_CASES: list[Case] = [
    *_cases_for(
        row(
            "Sequential-named-train",
            nets.named_seq_ours,
            nets.named_seq_theirs,
            floats((3, 2, 6, 6)),
            "Sequential",
            train=True,
        ),
        row(
            "Sequential-named-sliced-eval",
            lambda k: nets.named_seq_ours(k)[1:],
            lambda t: nets.named_seq_theirs(t)[1:],
            floats((3, 4, 6, 6)),
            "Sequential",
        ),
    ),
    row("ModuleList", nets.ListNet, nets.list_net_theirs, floats((2, 4)), "ModuleList"),
    row("ModuleDict", nets.DictNet, nets.dict_net_theirs, floats((2, 4)), "ModuleDict"),
    row(
        "ParameterList-ParameterDict",
        nets.ParamNet,
        nets.param_net_theirs,
        floats((2, 4)),
        ("ParameterList", "ParameterDict"),
    ),
]
CONV_POOL_CASES: list[Case] = [
    *_cases_for(
        row(
            "Conv3d",
            lambda k: nn.Conv3d(2, 4, (3, 2, 2), (1, 2, 1), (1, 0, 1), key=k),
            lambda t: t.Conv3d(2, 4, (3, 2, 2), (1, 2, 1), (1, 0, 1)),
            floats((2, 2, 4, 5, 3)),
            "Conv3d",
        ),
        row(
            "Conv3d-groups-dilated-reflect",
            lambda k: nn.Conv3d(4, 6, 2, 1, 1, 2, 2, False, "reflect", key=k),
            lambda t: t.Conv3d(4, 6, 2, 1, 1, 2, 2, False, "reflect"),
            floats((2, 4, 5, 4, 6)),
            "Conv3d",
        ),
        row(
            "Conv3d-same-replicate",
            lambda k: nn.Conv3d(3, 2, 3, padding="same", padding_mode="replicate", key=k),
            lambda t: t.Conv3d(3, 2, 3, padding="same", padding_mode="replicate"),
            floats((1, 3, 4, 5, 3)),
            "Conv3d",
        ),
    ),
    *_cases_for(
        row(
            "ConvTranspose1d-strided",
            lambda k: nn.ConvTranspose1d(4, 6, 3, 2, 1, 1, 2, key=k),
            lambda t: t.ConvTranspose1d(4, 6, 3, 2, 1, 1, 2),
            floats((2, 4, 5)),
            "ConvTranspose1d",
        ),
        row(
            "ConvTranspose1d-dilated",
            lambda k: nn.ConvTranspose1d(3, 2, 4, 3, 2, 2, 1, False, 3, key=k),
            lambda t: t.ConvTranspose1d(3, 2, 4, 3, 2, 2, 1, False, 3),
            floats((2, 3, 6)),
            "ConvTranspose1d",
        ),
    ),
    *_cases_for(
        row(
            "ConvTranspose3d-strided",
            lambda k: nn.ConvTranspose3d(2, 4, (2, 3, 2), (2, 1, 3), (0, 1, 1), (1, 0, 2), key=k),
            lambda t: t.ConvTranspose3d(2, 4, (2, 3, 2), (2, 1, 3), (0, 1, 1), (1, 0, 2)),
            floats((2, 2, 3, 4, 3)),
            "ConvTranspose3d",
        ),
        row(
            "ConvTranspose3d-groups-dilated",
            lambda k: nn.ConvTranspose3d(4, 6, 2, 2, 1, 1, 2, False, (2, 1, 2), key=k),
            lambda t: t.ConvTranspose3d(4, 6, 2, 2, 1, 1, 2, False, (2, 1, 2)),
            floats((1, 4, 3, 4, 2)),
            "ConvTranspose3d",
        ),
    ),
    *_cases_for(
        row(
            "MaxPool1d-padded-ceil",
            lambda k: nn.MaxPool1d(3, 2, 1, ceil_mode=True),
            lambda t: t.MaxPool1d(3, 2, 1, ceil_mode=True),
            floats((2, 3, 8)),
            "MaxPool1d",
        ),
        row(
            "MaxPool1d-dilated",
            lambda k: nn.MaxPool1d(3, 2, 1, 2),
            lambda t: t.MaxPool1d(3, 2, 1, 2),
            floats((2, 3, 11)),
            "MaxPool1d",
        ),
    ),
    *_cases_for(
        row(
            "MaxPool3d-padded",
            lambda k: nn.MaxPool3d((2, 3, 2), (1, 2, 2), (1, 1, 0)),
            lambda t: t.MaxPool3d((2, 3, 2), (1, 2, 2), (1, 1, 0)),
            floats((2, 2, 3, 5, 4)),
            "MaxPool3d",
        ),
        row(
            "MaxPool3d-dilated-ceil",
            lambda k: nn.MaxPool3d(2, (2, 1, 2), 1, (1, 2, 2), ceil_mode=True),
            lambda t: t.MaxPool3d(2, (2, 1, 2), 1, (1, 2, 2), ceil_mode=True),
            floats((1, 2, 5, 6, 7)),
            "MaxPool3d",
        ),
    ),
    *_cases_for(
        row(
            "AvgPool1d-padded-exclusive-ceil",
            lambda k: nn.AvgPool1d(3, 2, 1, True, False),
            lambda t: t.AvgPool1d(3, 2, 1, True, False),
            floats((2, 3, 8)),
            "AvgPool1d",
        ),
        row(
            "AvgPool1d",
            lambda k: nn.AvgPool1d(2),
            lambda t: t.AvgPool1d(2),
            floats((2, 3, 9)),
            "AvgPool1d",
        ),
        row(
            "AvgPool1d-ceil-inclusive",
            lambda k: nn.AvgPool1d(4, 3, 2, ceil_mode=True),
            lambda t: t.AvgPool1d(4, 3, 2, ceil_mode=True),
            floats((2, 3, 9)),
            "AvgPool1d",
        ),
    ),
    *_cases_for(
        row(
            "AvgPool3d-padded",
            lambda k: nn.AvgPool3d((2, 3, 2), (1, 2, 2), (1, 1, 0)),
            lambda t: t.AvgPool3d((2, 3, 2), (1, 2, 2), (1, 1, 0)),
            floats((2, 2, 3, 5, 4)),
            "AvgPool3d",
        ),
        row(
            "AvgPool3d-exclusive-ceil",
            lambda k: nn.AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False),
            lambda t: t.AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False),
            floats((1, 2, 6, 5, 4)),
            "AvgPool3d",
        ),
        row(
            "AvgPool3d-divisor",
            lambda k: nn.AvgPool3d(2, divisor_override=3),
            lambda t: t.AvgPool3d(2, divisor_override=3),
            floats((1, 2, 4, 5, 4)),
            "AvgPool3d",
        ),
    ),
    *_cases_for(
        row(
            "AdaptiveMaxPool1d",
            lambda k: nn.AdaptiveMaxPool1d(3),
            lambda t: t.AdaptiveMaxPool1d(3),
            floats((2, 3, 7)),
            "AdaptiveMaxPool1d",
        ),
        row(
            "AdaptiveMaxPool1d-upsampling",
            lambda k: nn.AdaptiveMaxPool1d(9),
            lambda t: t.AdaptiveMaxPool1d(9),
            floats((2, 3, 5)),
            "AdaptiveMaxPool1d",
        ),
    ),
    *_cases_for(
        row(
            "AdaptiveMaxPool2d",
            lambda k: nn.AdaptiveMaxPool2d((3, 4)),
            lambda t: t.AdaptiveMaxPool2d((3, 4)),
            floats((2, 3, 7, 6)),
            "AdaptiveMaxPool2d",
        ),
        row(
            "AdaptiveMaxPool2d-none",
            lambda k: nn.AdaptiveMaxPool2d((None, 2)),
            lambda t: t.AdaptiveMaxPool2d((None, 2)),
            floats((2, 3, 4, 5)),
            "AdaptiveMaxPool2d",
        ),
        row(
            "AdaptiveMaxPool2d-global",
            lambda k: nn.AdaptiveMaxPool2d(1),
            lambda t: t.AdaptiveMaxPool2d(1),
            floats((2, 3, 4, 5)),
            "AdaptiveMaxPool2d",
        ),
    ),
    *_cases_for(
        row(
            "AdaptiveAvgPool1d",
            lambda k: nn.AdaptiveAvgPool1d(3),
            lambda t: t.AdaptiveAvgPool1d(3),
            floats((2, 3, 7)),
            "AdaptiveAvgPool1d",
        ),
        row(
            "AdaptiveAvgPool1d-global",
            lambda k: nn.AdaptiveAvgPool1d(1),
            lambda t: t.AdaptiveAvgPool1d(1),
            floats((2, 3, 7)),
            "AdaptiveAvgPool1d",
        ),
    ),
    *_cases_for(
        row(
            "AdaptiveAvgPool3d",
            lambda k: nn.AdaptiveAvgPool3d((2, 3, 4)),
            lambda t: t.AdaptiveAvgPool3d((2, 3, 4)),
            floats((2, 2, 5, 4, 7)),
            "AdaptiveAvgPool3d",
        ),
        row(
            "AdaptiveAvgPool3d-none-global",
            lambda k: nn.AdaptiveAvgPool3d((None, 1, 1)),
            lambda t: t.AdaptiveAvgPool3d((None, 1, 1)),
            floats((2, 2, 3, 4, 5)),
            "AdaptiveAvgPool3d",
        ),
        row(
            "AdaptiveAvgPool3d-global",
            lambda k: nn.AdaptiveAvgPool3d(1),
            lambda t: t.AdaptiveAvgPool3d(1),
            floats((2, 2, 3, 4, 5)),
            "AdaptiveAvgPool3d",
        ),
    ),
]


def _both(name: str, *args: Any, **kwargs: Any) -> tuple[Callable, Callable]:
    """``(ours, theirs)`` builders of the layer ``name`` (same name and arguments in both)."""
    return (lambda k: getattr(nn, name)(*args, **kwargs)), (
        lambda t: getattr(t, name)(*args, **kwargs)
    )


_STATS = dict(affine=True, track_running_stats=True)
RESAMPLE_NORM_CASES: list[Case] = [
    *_cases_for(
        row(
            "InstanceNorm2d-affine-stats-train",
            *_both("InstanceNorm2d", 3, **_STATS),
            floats((2, 3, 5, 4)),
            "InstanceNorm2d",
            train=True,
        ),
        row("InstanceNorm2d", *_both("InstanceNorm2d", 3), floats((2, 3, 5, 4)), "InstanceNorm2d"),
        row(
            "InstanceNorm2d-affine-stats-eval",
            *_both("InstanceNorm2d", 3, **_STATS),
            floats((2, 3, 5, 4)),
            "InstanceNorm2d",
        ),
        row(
            "InstanceNorm2d-unbatched-momentum-none-train",
            *_both("InstanceNorm2d", 3, momentum=None, track_running_stats=True),
            floats((3, 5, 4)),
            "InstanceNorm2d",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "InstanceNorm1d-affine",
            *_both("InstanceNorm1d", 4, affine=True),
            floats((3, 4, 6)),
            "InstanceNorm1d",
        ),
        row(
            "InstanceNorm1d-unbatched-stats-train",
            *_both("InstanceNorm1d", 4, momentum=0.3, track_running_stats=True),
            floats((4, 6)),
            "InstanceNorm1d",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "InstanceNorm3d-stats-train",
            *_both("InstanceNorm3d", 2, eps=1e-3, **_STATS),
            floats((2, 2, 3, 4, 2)),
            "InstanceNorm3d",
            train=True,
        ),
        row(
            "InstanceNorm3d-eval",
            *_both("InstanceNorm3d", 2),
            floats((2, 2, 3, 4, 2)),
            "InstanceNorm3d",
        ),
    ),
    *_cases_for(
        row(
            "BatchNorm3d-train",
            *_both("BatchNorm3d", 3),
            floats((2, 3, 3, 2, 2)),
            "BatchNorm3d",
            train=True,
        ),
        row("BatchNorm3d-eval", *_both("BatchNorm3d", 3), floats((2, 3, 3, 2, 2)), "BatchNorm3d"),
    ),
    *_cases_for(
        row(
            "LocalResponseNorm",
            *_both("LocalResponseNorm", 3, 0.5, 0.75, 2.0),
            floats((2, 6, 4, 3)),
            "LocalResponseNorm",
        ),
        row(
            "LocalResponseNorm-even-size-3d",
            *_both("LocalResponseNorm", 4),
            floats((2, 5, 7)),
            "LocalResponseNorm",
        ),
        row(
            "LocalResponseNorm-5d",
            *_both("LocalResponseNorm", 2, 1e-1, 0.5),
            floats((2, 5, 2, 3, 2)),
            "LocalResponseNorm",
        ),
    ),
    # Upsample runs interpolate; tests/nn/test_resample.py compares interpolate on its own.
    *_cases_for(
        row(
            "Upsample-bicubic",
            *_both("Upsample", (7, 5), mode="bicubic"),
            floats((2, 3, 4, 5)),
            ("Upsample", "interpolate"),
        ),
        row(
            "Upsample-nearest",
            *_both("Upsample", scale_factor=1.5),
            floats((2, 3, 4, 5)),
            "Upsample",
        ),
        row("Upsample-nearest-size", *_both("Upsample", (7, 3)), floats((2, 3, 4, 5)), "Upsample"),
        row(
            "Upsample-bilinear",
            *_both("Upsample", scale_factor=2, mode="bilinear"),
            floats((2, 3, 4, 5)),
            "Upsample",
        ),
        row(
            "Upsample-bilinear-corners",
            *_both("Upsample", (3, 8), mode="bilinear", align_corners=True),
            floats((2, 3, 4, 5)),
            "Upsample",
        ),
        row(
            "Upsample-bicubic-corners-scale",
            *_both("Upsample", scale_factor=(1.5, 0.8), mode="bicubic", align_corners=True),
            floats((2, 3, 4, 5)),
            "Upsample",
        ),
        row(
            "Upsample-linear-recompute",
            *_both("Upsample", scale_factor=1.7, mode="linear", recompute_scale_factor=True),
            floats((2, 3, 6)),
            "Upsample",
        ),
        row(
            "Upsample-trilinear",
            *_both("Upsample", (3, 4, 5), mode="trilinear"),
            floats((1, 2, 2, 3, 4)),
            "Upsample",
        ),
        row(
            "Upsample-nearest-exact-3d",
            *_both("Upsample", scale_factor=(2.0, 0.5, 1.5), mode="nearest-exact"),
            floats((1, 2, 2, 4, 3)),
            "Upsample",
        ),
    ),
    *_cases_for(
        row("PixelShuffle", *_both("PixelShuffle", 2), floats((2, 8, 3, 4)), "PixelShuffle"),
        row(
            "PixelShuffle-3-extra-batch",
            *_both("PixelShuffle", 3),
            floats((2, 3, 9, 2, 3)),
            "PixelShuffle",
        ),
    ),
    *_cases_for(
        row("PixelUnshuffle", *_both("PixelUnshuffle", 2), floats((2, 3, 4, 6)), "PixelUnshuffle"),
        row(
            "PixelUnshuffle-3-unbatched",
            *_both("PixelUnshuffle", 3),
            floats((2, 6, 9)),
            "PixelUnshuffle",
        ),
    ),
    *_cases_for(
        row("Unflatten", *_both("Unflatten", 1, (2, 3)), floats((2, 6, 4)), "Unflatten"),
        row(
            "Unflatten-last-inferred",
            *_both("Unflatten", -1, (-1, 2)),
            floats((3, 4, 6)),
            "Unflatten",
        ),
    ),
]


def _enc_layer(m: Any, k: Any = None, **kw: Any) -> Any:
    """``TransformerEncoderLayer(8, 2, 16, ...)`` from jparam.nn (with ``k``) or torch.nn."""
    return m.TransformerEncoderLayer(8, 2, 16, **kw, **({} if k is None else {"key": k}))


def _dec_layer(m: Any, k: Any = None, **kw: Any) -> Any:
    return m.TransformerDecoderLayer(8, 2, 16, **kw, **({} if k is None else {"key": k}))


_PAD5 = np.zeros((2, 5), bool)
_MEMORY_MASK = random((4, 5), seed=9)
_PAD5[1, -2:] = True

# More areas, one list each (each list has one owner).
ATTENTION_CASES: list[Case] = [
    *_cases_for(
        row(
            "MultiheadAttention-seq-first-kdim-vdim-bias-kv-zero-attn",
            lambda k: nn.MultiheadAttention(
                8, 2, add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=5, key=k
            ),
            lambda t: t.MultiheadAttention(
                8, 2, add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=5
            ),
            floats((5, 2, 8), (4, 2, 6), (4, 2, 5)),
            "MultiheadAttention",
            kwargs=dict(key_padding_mask=_PAD, attn_mask=_FLOAT_MASK),
            atol=2e-5,
        ),
        row(
            "MultiheadAttention-seq-first-fused-bias-kv-causal-mask",
            lambda k: nn.MultiheadAttention(8, 2, add_bias_kv=True, key=k),
            lambda t: t.MultiheadAttention(8, 2, add_bias_kv=True),
            floats((5, 2, 8), (5, 2, 8), (5, 2, 8)),
            "MultiheadAttention",
            kwargs=dict(need_weights=False, attn_mask=_causal(5)),
            atol=2e-5,
        ),
        row(
            "MultiheadAttention-batch-first-vdim-zero-attn-per-head",
            lambda k: nn.MultiheadAttention(
                8, 2, add_zero_attn=True, vdim=3, batch_first=True, key=k
            ),
            lambda t: t.MultiheadAttention(8, 2, add_zero_attn=True, vdim=3, batch_first=True),
            floats((2, 5, 8), (2, 4, 8), (2, 4, 3)),
            "MultiheadAttention",
            kwargs=dict(attn_mask=np.triu(np.ones((4, 5, 4), bool), 1), average_attn_weights=False),
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "TransformerEncoderLayer",
            lambda k: _enc_layer(nn, k),
            _enc_layer,
            floats((4, 2, 8)),
            "TransformerEncoderLayer",
            kwargs=dict(src_key_padding_mask=_PAD),
            atol=2e-5,
        ),
        row(
            "TransformerEncoderLayer-norm-first-gelu-batch-first-causal",
            lambda k: _enc_layer(nn, k, activation="gelu", batch_first=True, norm_first=True),
            lambda t: _enc_layer(t, activation="gelu", batch_first=True, norm_first=True),
            floats((2, 5, 8)),
            "TransformerEncoderLayer",
            kwargs=dict(is_causal=True),
            torch_kwargs=dict(src_mask=_causal(5), is_causal=True),
            atol=2e-5,
        ),
        row(
            "TransformerEncoderLayer-no-bias-float-mask",
            lambda k: _enc_layer(nn, k, bias=False, layer_norm_eps=1e-3),
            lambda t: _enc_layer(t, bias=False, layer_norm_eps=1e-3),
            floats((5, 2, 8)),
            "TransformerEncoderLayer",
            kwargs=dict(src_mask=random((5, 5), seed=8)),
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "TransformerDecoderLayer",
            lambda k: _dec_layer(nn, k),
            _dec_layer,
            floats((4, 2, 8), (5, 2, 8)),
            "TransformerDecoderLayer",
            kwargs=dict(memory_key_padding_mask=_PAD5),
            atol=2e-5,
        ),
        row(
            "TransformerDecoderLayer-norm-first-batch-first-masks",
            lambda k: _dec_layer(nn, k, batch_first=True, norm_first=True, activation="gelu"),
            lambda t: _dec_layer(t, batch_first=True, norm_first=True, activation="gelu"),
            floats((2, 4, 8), (2, 5, 8)),
            "TransformerDecoderLayer",
            kwargs=dict(tgt_is_causal=True, tgt_key_padding_mask=_PAD, memory_mask=_MEMORY_MASK),
            torch_kwargs=dict(
                tgt_mask=_causal(4),
                tgt_is_causal=True,
                tgt_key_padding_mask=_PAD,
                memory_mask=_MEMORY_MASK,
            ),
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "TransformerEncoder",
            lambda k: nn.TransformerEncoder(_enc_layer(nn, k), 2, nn.LayerNorm(8)),
            lambda t: t.TransformerEncoder(
                _enc_layer(t), 2, t.LayerNorm(8), enable_nested_tensor=False
            ),
            floats((4, 2, 8)),
            "TransformerEncoder",
            kwargs=dict(src_key_padding_mask=_PAD),
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "TransformerDecoder",
            lambda k: nn.TransformerDecoder(_dec_layer(nn, k), 2),
            lambda t: t.TransformerDecoder(_dec_layer(t), 2),
            floats((4, 2, 8), (5, 2, 8)),
            "TransformerDecoder",
            atol=2e-5,
        ),
    ),
    *_cases_for(
        row(
            "Transformer",
            lambda k: nn.Transformer(8, 2, 1, 1, 16, key=k),
            lambda t: t.Transformer(8, 2, 1, 1, 16),
            floats((5, 2, 8), (4, 2, 8)),
            "Transformer",
            kwargs=dict(tgt_is_causal=True, src_key_padding_mask=_PAD5),
            torch_kwargs=dict(tgt_mask=_causal(4), tgt_is_causal=True, src_key_padding_mask=_PAD5),
            atol=2e-5,
        ),
        row(
            "Transformer-norm-first-batch-first-gelu",
            lambda k: nn.Transformer(
                8, 2, 2, 1, 16, activation="gelu", batch_first=True, norm_first=True, key=k
            ),
            lambda t: t.Transformer(
                8, 2, 2, 1, 16, activation="gelu", batch_first=True, norm_first=True
            ),
            floats((2, 5, 8), (2, 4, 8)),
            "Transformer",
            kwargs=dict(memory_key_padding_mask=_PAD5),
            atol=2e-5,
        ),
    ),
]


class _LSTMFlat(nn.LSTM):
    """``lstm(x, h_0, c_0) -> (output, h_n, c_n)``: states as separate inputs and outputs, so
    the matrix differentiates with respect to them."""

    def __call__(self, x: jax.Array, h0: jax.Array, c0: jax.Array) -> tuple[jax.Array, ...]:
        output, (h_n, c_n) = super().__call__(x, (h0, c0))
        return output, h_n, c_n


class _LSTMCellFlat(nn.LSTMCell):
    def __call__(self, x: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, ...]:
        return super().__call__(x, (h, c))


def _flat_lstm_theirs(cell: bool, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """PyTorch's LSTM or LSTMCell called as ``(x, h, c)`` and returning a flat tuple."""

    def build(tnn: Any) -> Any:
        base = tnn.LSTMCell if cell else tnn.LSTM

        class Flat(base):
            def forward(self, x: Any, h: Any, c: Any) -> tuple[Any, ...]:
                out = super().forward(x, (h, c))
                return out if cell else (out[0], *out[1])

        return Flat(*args, **kwargs)

    return build


def _recurrent(id: str, name: str, inputs: Inputs, *args: Any, **kwargs: Any) -> Case:
    """``nn.<name>(*args, **kwargs)`` and ``torch.nn.<name>``, on ``inputs`` (with states)."""
    if name in ("LSTM", "LSTMCell"):
        cell = name == "LSTMCell"
        flat = _LSTMCellFlat if cell else _LSTMFlat
        return row(
            id,
            lambda k: flat(*args, **kwargs, key=k),
            _flat_lstm_theirs(cell, *args, **kwargs),
            inputs,
            name,
        )
    return row(
        id,
        lambda k: getattr(nn, name)(*args, **kwargs, key=k),
        lambda tnn: getattr(tnn, name)(*args, **kwargs),
        inputs,
        name,
    )


# (L, N, input_size) inputs with their initial states: (num_layers * directions, N, out).
_SEQ = floats((5, 2, 3), (1, 2, 4))
RECURRENT_CASES: list[Case] = [
    *_cases_for(
        _recurrent("rnn", "RNN", _SEQ, 3, 4),
        _recurrent("rnn-relu-2-layers", "RNN", floats((5, 2, 3), (2, 2, 4)), 3, 4, 2, "relu"),
        _recurrent("rnn-no-state", "RNN", floats((5, 2, 3)), 3, 4),
        _recurrent("rnn-unbatched", "RNN", floats((5, 3), (1, 4)), 3, 4),
        _recurrent(
            "rnn-bidirectional-batch-first",
            "RNN",
            floats((2, 5, 3), (2, 2, 4)),
            3,
            4,
            batch_first=True,
            bidirectional=True,
        ),
        _recurrent("rnn-no-bias", "RNN", _SEQ, 3, 4, bias=False),
    ),
    *_cases_for(
        _recurrent("gru", "GRU", _SEQ, 3, 4),
        _recurrent(
            "gru-2-layers-bidirectional",
            "GRU",
            floats((5, 2, 3), (4, 2, 4)),
            3,
            4,
            2,
            bidirectional=True,
            dropout=0.5,  # eval mode: no dropout, as in PyTorch
        ),
        _recurrent("gru-batch-first", "GRU", floats((2, 5, 3), (1, 2, 4)), 3, 4, batch_first=True),
        _recurrent("gru-unbatched-no-bias", "GRU", floats((5, 3), (1, 4)), 3, 4, bias=False),
    ),
    *_cases_for(
        _recurrent("lstm", "LSTM", floats((5, 2, 3), (1, 2, 4), (1, 2, 4)), 3, 4),
        _recurrent(
            "lstm-proj-2-layers-bidirectional",
            "LSTM",
            floats((5, 2, 3), (4, 2, 2), (4, 2, 4)),
            3,
            4,
            2,
            bidirectional=True,
            proj_size=2,
        ),
        _recurrent(
            "lstm-batch-first-proj",
            "LSTM",
            floats((2, 5, 3), (1, 2, 3), (1, 2, 4)),
            3,
            4,
            batch_first=True,
            proj_size=3,
        ),
        _recurrent("lstm-unbatched", "LSTM", floats((5, 3), (1, 4), (1, 4)), 3, 4),
    ),
    *_cases_for(
        _recurrent("rnn-cell", "RNNCell", floats((2, 3), (2, 4)), 3, 4),
        _recurrent("rnn-cell-relu", "RNNCell", floats((2, 3), (2, 4)), 3, 4, nonlinearity="relu"),
        _recurrent("rnn-cell-unbatched", "RNNCell", floats((3,), (4,)), 3, 4, bias=False),
    ),
    *_cases_for(
        _recurrent("gru-cell", "GRUCell", floats((2, 3), (2, 4)), 3, 4),
        _recurrent("gru-cell-unbatched", "GRUCell", floats((3,), (4,)), 3, 4),
    ),
    *_cases_for(
        _recurrent("lstm-cell", "LSTMCell", floats((2, 3), (2, 4), (2, 4)), 3, 4),
        _recurrent("lstm-cell-unbatched", "LSTMCell", floats((3,), (4,), (4,)), 3, 4, False),
    ),
]
_BAG_IDS = np.array([3, 1, 3, 0, 7, 2, 2, 9, 5])


def _bag_inputs(offsets: list[int], weights: bool = False) -> Inputs:
    """1-D ids, offsets (bag 1 empty in the default case), optional per-sample weights."""
    extra = (random(_BAG_IDS.shape, seed=3),) if weights else ()
    return lambda: (_BAG_IDS, np.array(offsets), *extra)


# Embedding with max_norm runs in training mode: PyTorch rewrites the weight in place, which
# jparam returns through stateful_call (compared as state). EmbeddingBag's scale_grad_by_freq is
# tested in tests/nn/test_embedding.py (PyTorch 2.13's CPU kernel is wrong, #190063).
EMBEDDING_CASES: list[Case] = [
    *_cases_for(
        row(
            "Embedding-max-norm-freq",
            lambda k: nn.Embedding(10, 4, max_norm=1.0, scale_grad_by_freq=True, key=k),
            lambda t: t.Embedding(10, 4, max_norm=1.0, scale_grad_by_freq=True),
            ids(3, 5, high=10),
            "Embedding",
            train=True,
        ),
        row(
            "Embedding-max-norm-l1-padding",
            lambda k: nn.Embedding(10, 4, 0, max_norm=1.5, norm_type=1.0, key=k),
            lambda t: t.Embedding(10, 4, 0, max_norm=1.5, norm_type=1.0),
            ids(2, 7, high=10),
            "Embedding",
            train=True,
        ),
    ),
    *_cases_for(
        row(
            "EmbeddingBag-sum-offsets-weights",
            lambda k: nn.EmbeddingBag(10, 4, mode="sum", key=k),
            lambda t: t.EmbeddingBag(10, 4, mode="sum"),
            _bag_inputs([0, 2, 2, 5], weights=True),
            "EmbeddingBag",
        ),
        row(
            "EmbeddingBag-mean-2d",
            lambda k: nn.EmbeddingBag(10, 4, key=k),
            lambda t: t.EmbeddingBag(10, 4),
            ids(3, 4, high=10),
            "EmbeddingBag",
        ),
        row(
            "EmbeddingBag-max-padding",
            lambda k: nn.EmbeddingBag(10, 4, mode="max", padding_idx=2, key=k),
            lambda t: t.EmbeddingBag(10, 4, mode="max", padding_idx=2),
            _bag_inputs([0, 4, 5, 7]),
            "EmbeddingBag",
        ),
        row(
            "EmbeddingBag-mean-last-offset-max-norm",
            lambda k: nn.EmbeddingBag(10, 4, 1.0, mode="mean", include_last_offset=True, key=k),
            lambda t: t.EmbeddingBag(10, 4, 1.0, mode="mean", include_last_offset=True),
            _bag_inputs([0, 3, 3, 9]),
            "EmbeddingBag",
            train=True,
        ),
    ),
]

CASES += ACTIVATION_CASES + CONTAINER_CASES + CONV_POOL_CASES + RESAMPLE_NORM_CASES
CASES += ATTENTION_CASES + RECURRENT_CASES + EMBEDDING_CASES


def _randomise(torch: Any, tm: Any) -> None:
    """Non-trivial values everywhere: norms start at ones/zeros, attention biases at zero."""
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for name, b in tm.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.5)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def _as_torch(torch: Any, value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _outputs(out: Any) -> tuple[Any, ...]:
    """A layer's result as a tuple of arrays (attention returns ``(output, weights or None)``)."""
    return tuple(o for o in out if o is not None) if isinstance(out, tuple) else (out,)


def _torch_run(torch: Any, case: Case, tm: Any, xs: tuple[np.ndarray, ...], cts: list) -> tuple:
    """One PyTorch forward and backward: outputs, input gradients, parameter gradients."""
    txs = [torch.tensor(x, requires_grad=bool(np.issubdtype(x.dtype, np.floating))) for x in xs]
    kwargs = case.kwargs if case.torch_kwargs is None else case.torch_kwargs
    outs = _outputs(tm(*txs, **{k: _as_torch(torch, v) for k, v in kwargs.items()}))
    loss = sum((o * torch.from_numpy(c)).sum() for o, c in zip(outs, cts))
    tm.zero_grad()
    if loss.requires_grad:
        loss.backward()
    x_grads = [t.grad for t in txs if t.requires_grad]
    p_grads = {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in tm.named_parameters()
    }
    return outs, x_grads, p_grads


def _jitted_loss_and_grads(case: Case, jm: jp.Module, xs: tuple[np.ndarray, ...], cts: list):
    """``jax.jit(jax.value_and_grad(loss))`` w.r.t. trainable parameters and floating inputs."""
    params, rest = jp.split(jm, jp.trainable)
    where = [i for i, x in enumerate(xs) if np.issubdtype(x.dtype, np.floating)]

    def loss(params, float_xs, rest):
        args = list(xs)
        for i, x in zip(where, float_xs):
            args[i] = x
        out, new = nn.stateful_call(jp.merge(params, rest), *args, **case.kwargs)
        outs = _outputs(out)
        value = sum(jnp.sum(o * c) for o, c in zip(outs, cts))
        return value, (outs, new.state_dict())

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (outs, state)), (p_grads, x_grads) = step(params, [xs[i] for i in where], rest)
    return outs, state, p_grads, x_grads


def _check_case(case: Case, torch: Any) -> None:
    torch.manual_seed(0)
    tm = case.theirs(torch.nn)
    _randomise(torch, tm)
    jm = load_torch(case.ours(jax.random.key(0)), tm)
    tm.train(case.train)
    jm = jm.train() if case.train else jm.eval()
    xs = case.inputs()
    tol = dict(rtol=case.rtol, atol=case.atol)

    eager_out, eager_new = nn.stateful_call(jm, *xs, **case.kwargs)
    eager = _outputs(eager_out)
    cts = [random(np.shape(o), seed=99 + i) for i, o in enumerate(eager)]
    t_outs, t_x_grads, t_p_grads = _torch_run(torch, case, tm, xs, cts)
    t_state = tm.state_dict()
    jit_outs, jit_state, p_grads, x_grads = _jitted_loss_and_grads(case, jm, xs, cts)

    assert len(eager) == len(t_outs) == len(jit_outs)
    for ours, jitted, theirs in zip(eager, jit_outs, t_outs):
        assert ours.shape == tuple(theirs.shape) and ours.dtype == jnp.float32
        assert_close(ours, theirs, **tol)
        assert_close(jitted, theirs, **tol)
    for state in (eager_new.state_dict(), jit_state):  # running statistics updated like torch's
        assert list(state) == list(t_state)
        for name, value in state.items():
            assert_close(value, t_state[name], **tol)
    assert len(x_grads) == len(t_x_grads)
    for ours, theirs in zip(x_grads, t_x_grads):
        assert_close(ours, theirs, **tol)
    trainable = [n for n, p in tm.named_parameters() if p.requires_grad]
    assert sorted(p_grads) == sorted(trainable)  # a dict through jax.grad comes back sorted
    for name in trainable:
        assert_close(p_grads[name], t_p_grads[name], **tol)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
)
def test_layer_matches_torch_eager_jit_and_gradients(torch, case):
    _check_case(case, torch)


def test_every_public_layer_has_a_case():
    covered = {name for case in CASES for name in case.covers}
    assert not covered & set(EXCLUDED), "a name is both tested here and excluded"
    assert covered | set(COVERED_HERE) | set(EXCLUDED) == set(nn.__all__), (
        "every public name of jparam.nn needs a case in CASES (or an entry in EXCLUDED saying "
        f"where it is tested); missing: {sorted(set(nn.__all__) - covered - set(EXCLUDED))}"
    )
    fast = {name for case in CASES if not case.slow for name in case.covers}
    assert fast == covered, f"no default-run case for {sorted(covered - fast)}"


@pytest.mark.parametrize("how", ["module", "function"])
def test_dropout_in_training_mode_is_inverted_dropout(torch, how):
    """Masks differ from PyTorch's generator, so the check is structural, against torch's rule:
    each element is 0 or ``x / (1 - p)``, about ``p`` of them 0, and the gradient (under
    ``jax.jit(jax.grad)``) is the same mask times ``1 / (1 - p)``."""
    p, x = 0.3, random((200, 300)) + 3.0  # no zeros in x, so a 0 in the output is a drop
    key = jax.random.key(1)
    drop = (
        (lambda x: nn.Dropout(p)(x, key=key))
        if how == "module"
        else (lambda x: nn.dropout(x, p, key))
    )
    y = np.asarray(jax.jit(drop)(x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert kept.mean() == pytest.approx(1 - p, abs=0.01)
    grad = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(drop(x) * 2.0)))(x))
    np.testing.assert_allclose(grad, np.where(kept, 2.0 / (1 - p), 0.0), rtol=1e-6)
    # PyTorch's own training-mode dropout obeys the same rule.
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.Dropout(p).train()(t)
    (ty * 2.0).sum().backward()
    t_kept = numpy(ty) != 0
    np.testing.assert_allclose(numpy(ty)[t_kept], x[t_kept] / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(numpy(t.grad), np.where(t_kept, 2.0 / (1 - p), 0.0), rtol=1e-6)
    assert t_kept.mean() == pytest.approx(kept.mean(), abs=0.02)
