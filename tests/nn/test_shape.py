"""`Unflatten` against PyTorch: shapes, the inferred ``-1`` and errors (the jit and gradient
cases are in tests/nn/test_torch_matrix.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jparam import nn


@pytest.mark.parametrize(
    ("dim", "sizes", "shape"),
    [(1, (2, 3), (4, 6, 5)), (-1, (-1, 2), (3, 4, 6)), (0, [1, 4, 1], (4,)), (-2, (5,), (2, 5, 3))],
)
def test_unflatten_matches_torch(torch, dim, sizes, shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    expected = torch.nn.Unflatten(dim, sizes)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(nn.Unflatten(dim, sizes)(x), expected)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), start=st.integers(0, 2))
def test_flatten_inverts_unflatten(sizes, start):
    shape = (*(2, 3, 2)[:start], int(np.prod(sizes)), 3)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = nn.Unflatten(start, tuple(sizes))(x)
    assert y.shape == (*shape[:start], *sizes, 3)
    end = start + len(sizes) - 1
    np.testing.assert_array_equal(nn.Flatten(start, end)(y), x)


def test_unflatten_errors_name_layer_and_shape():
    with pytest.raises(ValueError, match=r"Unflatten\(dim=1.*size a multiple of 4.*\(2, 6\)"):
        nn.Unflatten(1, (4, -1))(jnp.ones((2, 6)))
    with pytest.raises(ValueError, match=r"at most one\s+-1"):
        nn.Unflatten(1, (-1, -1))
    with pytest.raises(TypeError, match="tuple or list of ints, got 6"):
        nn.Unflatten(1, 6)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.Unflatten("x", (2, 3))
