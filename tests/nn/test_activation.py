"""Activation modules against PyTorch's, and their argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, random

from jparam import nn

CASES = [
    ("ReLU", {}, {}),
    ("GELU", {}, {}),
    ("GELU", {"approximate": "tanh"}, {"approximate": "tanh"}),
    ("SiLU", {}, {}),
    ("Tanh", {}, {}),
    ("Sigmoid", {}, {}),
    ("Identity", {}, {}),
    ("Softmax", {"dim": 1}, {"dim": 1}),
    ("Softmax", {"dim": -1}, {"dim": -1}),
]


@pytest.mark.parametrize(("name", "ours", "theirs"), CASES, ids=lambda v: str(v))
def test_activation_matches_torch(torch, name, ours, theirs):
    x = random((3, 4, 5)) * 3
    layer = getattr(nn, name)(**ours)
    assert_close(layer(x), getattr(torch.nn, name)(**theirs)(torch.from_numpy(x)), atol=1e-6)
    assert layer.state_dict() == {}


def test_activations_jit_and_keep_dtype():
    x = jnp.linspace(-3, 3, 7, dtype=jnp.bfloat16)
    for layer in [nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.Softmax(0)]:
        y = jax.jit(lambda m, x: m(x))(layer, x)
        assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    np.testing.assert_array_equal(nn.Identity(54, unused="argument")(x), x)


def test_activation_argument_errors():
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        nn.GELU("fast")
    with pytest.raises(TypeError):
        nn.Softmax()
    with pytest.raises(ValueError, match=r"Softmax\(dim=2\).*shape \(3, 4\)"):
        nn.Softmax(2)(jnp.ones((3, 4)))
