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


POOL_ND_CASES = [
    ("MaxPool1d", (2, 3, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool1d", (2, 3, 11), dict(kernel_size=2, stride=3, padding=1, dilation=3)),
    ("MaxPool3d", (2, 2, 5, 6, 7), dict(kernel_size=(2, 3, 2), stride=(1, 2, 3), padding=1)),
    ("MaxPool3d", (1, 2, 5, 6, 7), dict(kernel_size=2, dilation=(2, 1, 3), ceil_mode=True)),
    ("AvgPool1d", (2, 3, 11), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("AvgPool1d", (2, 3, 10), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    ("AvgPool3d", (2, 2, 5, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("AvgPool3d", (1, 2, 5, 6, 7), dict(kernel_size=(3, 2, 3), padding=1, divisor_override=4)),
    ("AvgPool3d", (1, 2, 5, 6, 7), dict(kernel_size=3, padding=1, count_include_pad=False)),
]


@pytest.mark.parametrize(("name", "shape", "kwargs"), POOL_ND_CASES, ids=lambda v: str(v))
def test_pool_1d_3d_match_torch(torch, name, shape, kwargs):
    x = random(shape)
    expected = getattr(torch.nn, name)(**kwargs)(torch.from_numpy(x))
    assert_close(getattr(nn, name)(**kwargs)(x), expected)


ADAPTIVE_CASES = [
    ("AdaptiveMaxPool1d", (2, 3, 7), [1, 3, 4, 7, 10]),
    ("AdaptiveAvgPool1d", (2, 3, 7), [1, 3, 4, 7, 10]),
    ("AdaptiveMaxPool2d", (2, 3, 7, 5), [1, (3, 2), (None, 4), (5, 9), (7, None)]),
    ("AdaptiveAvgPool3d", (1, 2, 5, 7, 3), [1, (2, 3, 2), (None, 4, 1), (6, 2, 5), 3]),
]


@pytest.mark.parametrize(("name", "shape", "sizes"), ADAPTIVE_CASES, ids=lambda v: str(v))
def test_adaptive_pool_nd_matches_torch_bins_under_jit(torch, name, shape, sizes):
    """Non-divisible sizes and outputs larger than the input use PyTorch's start/end bins."""
    x = random(shape)
    for size in sizes:
        ours = jax.jit(lambda m, x: m(x))(getattr(nn, name)(size), x)
        assert_close(ours, getattr(torch.nn, name)(size)(torch.from_numpy(x)))


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [
        ("MaxPool1d", (3, 2, 1), (1, 2, 9)),
        ("MaxPool3d", (2, 1, 1, (1, 2, 2)), (1, 2, 4, 6, 5)),
        ("AdaptiveMaxPool1d", (4,), (1, 2, 9)),
        ("AdaptiveMaxPool2d", ((3, 4),), (1, 2, 7, 6)),
    ],
    ids=lambda v: str(v),
)
def test_max_pool_nd_gradients_under_jit_go_to_the_first_maximum_like_torch(
    torch, name, args, shape
):
    # Ties everywhere (with a few larger values): PyTorch sends each window's gradient to its
    # first maximum in row-major order, overlapping windows adding up.
    x = np.ones(shape, np.float32)
    x.reshape(-1)[::7] = 2.0
    ct = random(getattr(torch.nn, name)(*args)(torch.from_numpy(x)).shape, seed=3)
    layer = getattr(nn, name)(*args)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(layer(x) * ct)))(jnp.asarray(x))
    t = torch.from_numpy(x).requires_grad_()
    (getattr(torch.nn, name)(*args)(t) * torch.from_numpy(ct)).sum().backward()
    assert_close(grad, t.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [
        ("AvgPool1d", (3, 2, 1, True, False), (1, 2, 8)),
        ("AvgPool3d", (2, (1, 2, 2), 1), (1, 2, 3, 4, 5)),
        ("AdaptiveAvgPool1d", (3,), (1, 2, 7)),
        ("AdaptiveAvgPool3d", ((2, 3, 2),), (1, 2, 3, 5, 4)),
    ],
    ids=lambda v: str(v),
)
def test_avg_pool_nd_gradients_under_jit_match_torch(torch, name, args, shape):
    x = random(shape)
    ct = random(getattr(torch.nn, name)(*args)(torch.from_numpy(x)).shape, seed=3)
    layer = getattr(nn, name)(*args)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(layer(x) * ct)))(x)
    t = torch.from_numpy(x).requires_grad_()
    (getattr(torch.nn, name)(*args)(t) * torch.from_numpy(ct)).sum().backward()
    assert_close(grad, t.grad, atol=1e-6, rtol=1e-5)


def test_pool_nd_arguments_shapes_and_dtypes(torch):
    # Positional arguments in PyTorch's order: MaxPool's 5th is return_indices, 6th ceil_mode.
    x = random((1, 2, 5, 5))
    assert_close(
        nn.MaxPool2d(2, 2, 0, 1, False, True)(x),
        torch.nn.MaxPool2d(2, 2, 0, 1, False, True)(torch.from_numpy(x)),
    )
    assert nn.MaxPool2d(2, 2, 0, 1, False, True)(x).shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="MaxPool1d does not support return_indices=True"):
        nn.MaxPool1d(2, return_indices=True)
    with pytest.raises(ValueError, match="AdaptiveMaxPool2d does not support return_indices"):
        nn.AdaptiveMaxPool2d(2, True)
    ints = jnp.arange(2 * 7 * 6, dtype=jnp.int32).reshape(1, 2, 7, 6)
    pooled = nn.AdaptiveMaxPool2d((3, 4))(ints)
    assert pooled.dtype == jnp.int32
    assert_close(pooled, nn.AdaptiveMaxPool2d((3, 4))(ints.astype(jnp.float32)))
    assert nn.AdaptiveAvgPool3d(1)(jnp.ones((2, 3, 4, 5, 6), jnp.bfloat16)).dtype == jnp.bfloat16
    assert nn.AdaptiveAvgPool1d(4).output_size == 4
    assert nn.AdaptiveAvgPool3d([2, None, 3]).output_size == (2, None, 3)
    with pytest.raises(ValueError, match=r"MaxPool3d.*\(N, C, D, H, W\), got shape \(2, 5, 5\)"):
        nn.MaxPool3d(2)(jnp.ones((2, 5, 5)))
    with pytest.raises(ValueError, match=r"AdaptiveMaxPool1d.*\(N, C, W\), got shape \(5, 5\)"):
        nn.AdaptiveMaxPool1d(2)(jnp.ones((5, 5)))
