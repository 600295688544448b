"""Linear and Bilinear: PyTorch parity (values, names, gradients), init, keys, shapes, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, assert_grads_match, load_torch, random

from jparam import nn


def test_linear_matches_torch_outputs_and_gradients(torch, key):
    tm = torch.nn.Linear(4, 3)
    jm = load_torch(nn.Linear(4, 3, key=key), tm)
    x = random((2, 5, 4))
    assert_close(jm(x), tm(torch.from_numpy(x)))
    assert_grads_match(jm, tm, lambda m: m(x), lambda m: m(torch.from_numpy(x)))


def test_linear_without_bias_matches_torch(torch, key):
    tm = torch.nn.Linear(4, 3, bias=False)
    jm = load_torch(nn.Linear(4, 3, bias=False, key=key), tm)
    assert jm.bias is None
    x = random((7, 4))
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_linear_layout_and_default_init_bounds(key):
    layer = nn.Linear(256, 128, key=key)
    assert layer.weight.shape == (128, 256) and layer.bias.shape == (128,)
    bound = 1 / math.sqrt(256)
    w, b = np.asarray(layer.weight.value), np.asarray(layer.bias.value)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # Uniform on [-bound, bound]: std bound / sqrt(3), extremes near the bounds.
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.05 * bound


def test_linear_dtype_and_distinct_keys():
    a = nn.Linear(8, 8, key=jax.random.key(1), dtype=jnp.bfloat16)
    b = nn.Linear(8, 8, key=jax.random.key(2))
    assert a.weight.dtype == jnp.bfloat16 and a.bias.dtype == jnp.bfloat16
    assert not np.allclose(np.asarray(a.weight.value, np.float32), np.asarray(b.weight.value))


def test_linear_key_is_required_and_keyword_only(key):
    with pytest.raises(TypeError, match="key"):
        nn.Linear(4, 3)
    with pytest.raises(TypeError):
        nn.Linear(4, 3, True, key)
    with pytest.raises(TypeError, match=r"key=jax.random.key"):
        nn.Linear(4, 3, key=None)


def test_linear_wrong_last_dim_names_layer_and_shapes(key):
    layer = nn.Linear(4, 3, key=key)
    msg = r"Linear\(in_features=4, out_features=3\) expected input of shape \(\.\.\., 4\), got shape \(2, 5\)"  # noqa: E501
    with pytest.raises(ValueError, match=msg):
        layer(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="got shape"):
        layer(jnp.float32(1.0))


def test_linear_under_jit_and_grad(key):
    layer = nn.Linear(4, 3, key=key)
    x = random((2, 4))
    expected = x @ np.asarray(layer.weight.value).T + np.asarray(layer.bias.value)
    ours = jax.jit(lambda m, x: m(x))(layer, x)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda m: m(x).sum())(layer)
    np.testing.assert_allclose(grads.bias.value, np.full(3, 2.0))


def test_bilinear_matches_torch(torch, key):
    tm = torch.nn.Bilinear(3, 4, 2)
    jm = load_torch(nn.Bilinear(3, 4, 2, key=key), tm)
    x1, x2 = random((5, 3), 1), random((5, 4), 2)
    assert_close(jm(x1, x2), tm(torch.from_numpy(x1), torch.from_numpy(x2)))
    assert_grads_match(
        jm,
        tm,
        lambda m: m(x1, x2),
        lambda m: m(torch.from_numpy(x1), torch.from_numpy(x2)),
    )


def test_bilinear_init_and_shape_errors(key):
    layer = nn.Bilinear(16, 4, 8, key=key)
    assert layer.weight.shape == (8, 16, 4)
    assert np.abs(np.asarray(layer.weight.value)).max() <= 1 / 4
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\) for x1"):
        layer(jnp.ones((2, 15)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\) for x2.*got shape \(3, 4\)"):
        layer(jnp.ones((2, 16)), jnp.ones((3, 4)))
