"""Small models built from PyTorch's containers, with their PyTorch twins, for the matrix
(tests/nn/test_torch_matrix.py, ``CONTAINER_CASES``): ModuleList, ModuleDict, ParameterList and
ParameterDict are not callable, so each is checked inside a model a user would write."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp

import jparam as jp
from jparam import nn


def named_seq_ours(key: jax.Array) -> nn.Sequential:
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(2, 4, 3, padding=1, key=k1)),
                ("bn1", nn.BatchNorm2d(4)),
                ("relu", nn.ReLU()),
                ("pool", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(36, 5, key=k2)),
            ]
        )
    )


def named_seq_theirs(tnn: Any) -> Any:
    return tnn.Sequential(
        OrderedDict(
            [
                ("conv1", tnn.Conv2d(2, 4, 3, padding=1)),
                ("bn1", tnn.BatchNorm2d(4)),
                ("relu", tnn.ReLU()),
                ("pool", tnn.MaxPool2d(2)),
                ("flatten", tnn.Flatten()),
                ("fc", tnn.Linear(36, 5)),
            ]
        )
    )


class ListNet(jp.Module):
    """Three Linear layers in a ModuleList, with tanh between them."""

    blocks: nn.ModuleList

    def __init__(self, key: jax.Array) -> None:
        self.blocks = nn.ModuleList([nn.Linear(4, 4, key=k) for k in jax.random.split(key, 3)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = jnp.tanh(block(x))
        return x


def list_net_theirs(tnn: Any) -> Any:
    class TorchListNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = tnn.ModuleList([tnn.Linear(4, 4) for _ in range(3)])

        def forward(self, x: Any) -> Any:
            for block in self.blocks:
                x = block(x).tanh()
            return x

    return TorchListNet()


_DICT_KEYS = ("proj", "norm", "head")  # not sorted: the order is insertion order


class DictNet(jp.Module):
    """Layers in a ModuleDict, applied in insertion order."""

    layers: nn.ModuleDict

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.layers = nn.ModuleDict(
            {
                "proj": nn.Linear(4, 6, key=k1),
                "norm": nn.LayerNorm(6),
                "head": nn.Linear(6, 3, key=k2),
            }
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self.layers:
            x = self.layers[name](x)
        return x


def dict_net_theirs(tnn: Any) -> Any:
    class TorchDictNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = tnn.ModuleDict(
                {"proj": tnn.Linear(4, 6), "norm": tnn.LayerNorm(6), "head": tnn.Linear(6, 3)}
            )

        def forward(self, x: Any) -> Any:
            for name in self.layers:
                x = self.layers[name](x)
            return x

    return TorchDictNet()


class ParamNet(jp.Module):
    """Weights in a ParameterList, an affine output in a ParameterDict."""

    weights: nn.ParameterList
    affine: nn.ParameterDict

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.weights = nn.ParameterList(
            [jax.random.normal(k1, (4, 5)), jax.random.normal(k2, (5, 3))]
        )
        self.affine = nn.ParameterDict({"scale": jnp.ones(3), "bias": jnp.zeros(3)})

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(x @ self.weights[0]) @ self.weights[1]
        return x * self.affine["scale"] + self.affine["bias"]


def param_net_theirs(tnn: Any) -> Any:
    import torch

    class TorchParamNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tnn.ParameterList(
                [tnn.Parameter(torch.randn(4, 5)), tnn.Parameter(torch.randn(5, 3))]
            )
            self.affine = tnn.ParameterDict({"scale": torch.ones(3), "bias": torch.zeros(3)})

        def forward(self, x: Any) -> Any:
            x = (x @ self.weights[0]).tanh() @ self.weights[1]
            return x * self.affine["scale"] + self.affine["bias"]

    return TorchParamNet()
