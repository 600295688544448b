"""MLP: torchvision.ops.MLP's layout (checked against an equivalent torch Sequential)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, random

from jparam import nn


def test_mlp_layout_names_and_torch_parity(torch, key):
    # torchvision.ops.MLP(6, [16, 8, 3], norm_layer=LayerNorm) builds exactly this Sequential.
    tm = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.LayerNorm(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.0),
        torch.nn.Linear(16, 8),
        torch.nn.LayerNorm(8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.0),
        torch.nn.Linear(8, 3),
        torch.nn.Dropout(0.0),
    )
    jm = nn.MLP(6, [16, 8, 3], norm_layer=nn.LayerNorm, key=key)
    assert [type(m).__name__ for m in jm] == [type(m).__name__ for m in tm]
    assert list(jm.state_dict()) == list(tm.state_dict())
    jm = jm.load_state_dict(tm.state_dict())
    x = random((4, 6))
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_mlp_options(key):
    mlp = nn.MLP(
        4, [8, 2], activation_layer=functools.partial(nn.GELU, "tanh"), bias=False, key=key
    )
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Dropout", "Linear", "Dropout"]
    assert mlp[1].approximate == "tanh" and mlp[0].bias is None
    assert mlp.in_channels == 4 and mlp.hidden_channels == (8, 2)
    assert mlp(jnp.ones((3, 4))).shape == (3, 2)
    a, b = nn.MLP(4, [8, 2], key=key), nn.MLP(4, [8, 2], key=jax.random.key(1))
    assert not np.allclose(a[0].weight.value, b[0].weight.value)


def test_mlp_dropout_uses_the_call_key(key):
    mlp = nn.MLP(4, [64, 64], dropout=0.5, key=key)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        mlp(x)
    y = jax.jit(lambda m, x, k: m(x, key=k))(mlp, x, jax.random.key(1))
    assert 0.3 < float((y == 0).mean()) < 0.7
    np.testing.assert_allclose(mlp.eval()(x), mlp.eval()(x))


def test_mlp_needs_key_and_widths():
    with pytest.raises(TypeError, match="key"):
        nn.MLP(4, [8])
    with pytest.raises(ValueError, match="at least one entry"):
        nn.MLP(4, [], key=jax.random.key(0))
