"""The zoo's checks pass a faithful port and fail the classic wrong ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from zoo import Port, check_port

import jparam as jp
from jparam import nn


def make_torch(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # (A bias right before a BatchNorm in training mode would get a zero gradient, whose
    # float noise AdamW normalises into full-size steps: compare no such thing.)
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.BatchNorm1d(6))
    with torch.no_grad():
        net[2].weight.uniform_(0.5, 1.5)
        net[2].bias.normal_()
    return net


def make_port(**changes) -> Port:
    model = nn.Sequential(nn.Linear(6, 6, key=jax.random.key(0)), nn.Tanh(), nn.BatchNorm1d(6))
    fields = dict(
        make_torch=make_torch,
        model=model,
        mapping=None,
        torch_forward=lambda m, x: m(x),
        jax_forward=lambda m, x: m(x),
        inputs={"x": np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)},
    )
    return Port(**{**fields, **changes})


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_a_faithful_port_passes(tmp_path, train):
    check_port(make_port(train=train), tmp_path)


def test_a_port_that_reads_a_square_weight_the_wrong_way_fails(tmp_path):
    wrong = jp.Mapping([jp.mapping.transpose("0.weight")])  # loads, but the outputs differ
    with pytest.raises(pytest.fail.Exception, match=r"output 0 \(eager\)"):
        check_port(make_port(mapping=wrong), tmp_path)


def test_a_port_that_freezes_what_torch_trains_fails(tmp_path):
    port = make_port()
    port.model = port.model.freeze("2.bias")
    with pytest.raises(AssertionError, match="trains 48 numbers, torch 54"):
        check_port(port, tmp_path)


def test_a_port_whose_running_statistics_drift_fails(tmp_path):
    model = nn.Sequential(
        nn.Linear(6, 6, key=jax.random.key(0)), nn.Tanh(), nn.BatchNorm1d(6, momentum=0.5)
    )
    with pytest.raises(pytest.fail.Exception, match=r"2\.running_mean after 3 AdamW steps"):
        check_port(make_port(model=model, train=True), tmp_path)


class TorchShifted(torch.nn.Module):
    """softmax(linear(x) + shift): softmax cancels ``shift``, whose gradient is float noise."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.shift = torch.nn.Parameter(torch.randn(1))

    def forward(self, x):
        return torch.softmax(self.linear(x) + self.shift, dim=-1)


class Shifted(jp.Module):
    linear: nn.Linear
    shift: jp.Parameter

    def __init__(self) -> None:
        self.linear = nn.Linear(6, 5, key=jax.random.key(0))
        self.shift = jp.Parameter(jax.numpy.zeros(1))

    def __call__(self, x):
        return jax.nn.softmax(self.linear(x) + self.shift, axis=-1)


def make_shifted(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TorchShifted()


def test_a_parameter_whose_gradient_is_float_noise_is_held_to_adamws_step_bound(tmp_path):
    # AdamW turns each framework's rounding noise into a full step of its own sign: `shift`
    # cannot match after the steps, but it cannot move further than the steps allow either.
    port = make_port(make_torch=make_shifted, model=Shifted())
    check_port(port, tmp_path)
