"""Pooling and Flatten against PyTorch: windows, padding, ceil_mode, divisors, adaptive bins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, random

from jparam import nn

MAX_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2)),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=3, padding=1, ceil_mode=True),
]
AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), divisor_override=5),
]


def _ids(kwargs):
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("kwargs", MAX_CASES, ids=_ids)
def test_max_pool_matches_torch(torch, kwargs):
    x = random((2, 3, 7, 8))
    assert_close(nn.MaxPool2d(**kwargs)(x), torch.nn.MaxPool2d(**kwargs)(torch.from_numpy(x)))


@pytest.mark.parametrize("kwargs", AVG_CASES, ids=_ids)
def test_avg_pool_matches_torch(torch, kwargs):
    x = random((2, 3, 7, 8))
    assert_close(nn.AvgPool2d(**kwargs)(x), torch.nn.AvgPool2d(**kwargs)(torch.from_numpy(x)))


@pytest.mark.parametrize("size", [1, (1, 1), 3, (2, 5), (None, 4), (7, 8)])
def test_adaptive_avg_pool_matches_torch(torch, size):
    x = random((2, 3, 7, 8))
    ours = jax.jit(lambda m, x: m(x))(nn.AdaptiveAvgPool2d(size), x)
    assert_close(ours, torch.nn.AdaptiveAvgPool2d(size)(torch.from_numpy(x)))


@pytest.mark.parametrize(("start", "end"), [(1, -1), (0, -1), (1, 2), (-2, -1)])
def test_flatten_matches_torch(torch, start, end):
    x = random((2, 3, 4, 5))
    assert_close(nn.Flatten(start, end)(x), torch.nn.Flatten(start, end)(torch.from_numpy(x)))


def test_pooling_shapes_jit_and_errors():
    x = jnp.ones((1, 2, 5, 5))
    assert jax.jit(lambda m, x: m(x))(nn.MaxPool2d(2), x).shape == (1, 2, 2, 2)
    assert nn.AdaptiveAvgPool2d(1)(x).shape == (1, 2, 1, 1)
    assert nn.MaxPool2d(2)(jnp.arange(16, dtype=jnp.int32).reshape(1, 1, 4, 4)).dtype == jnp.int32
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(N, C, H, W\), got shape \(2, 5, 5\)"):
        nn.MaxPool2d(2)(jnp.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="smaller than its window"):
        nn.AvgPool2d(7)(x)
    with pytest.raises(ValueError, match="at most half the kernel size"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="output_size must be"):
        nn.AdaptiveAvgPool2d((0, 2))
    with pytest.raises(ValueError, match=r"Flatten.*cannot flatten input of shape \(2, 3\)"):
        nn.Flatten(1, 3)(jnp.ones((2, 3)))
    np.testing.assert_array_equal(nn.Flatten()(jnp.ones((2, 3, 4))).shape, (2, 12))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("MaxPool2d", dict(kernel_size=2)),
        ("AvgPool2d", dict(kernel_size=2)),
        ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, dilation=(2, 1), ceil_mode=True)),
        ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ],
    ids=["max", "avg", "max-dilated", "avg-padded"],
)
def test_pooling_gradients_under_jit_match_torch_even_with_ties(torch, name, kwargs):
    # Issue 12: jax.jit(jax.grad(...)) raised "Linearization failed" (a traced init value);
    # dilated max pooling had no gradient at all. All-ones input: every window is a tie, and
    # PyTorch sends each window's gradient to its first maximum.
    x = np.ones((1, 2, 6, 7), np.float32)
    grad = jax.jit(jax.grad(lambda x: getattr(nn, name)(**kwargs)(x).sum()))(jnp.asarray(x))
    t = torch.from_numpy(x).requires_grad_()
    getattr(torch.nn, name)(**kwargs)(t).sum().backward()
    assert_close(grad, t.grad, atol=1e-6, rtol=1e-6)
