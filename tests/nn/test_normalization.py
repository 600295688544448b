"""LayerNorm, RMSNorm, GroupNorm and LocalResponseNorm against PyTorch, plus shapes, dtypes and
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, assert_grads_match, load_torch, random

from jparam import nn


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-2)],
    ids=["default", "no-affine", "no-bias", "eps"],
)
def test_layer_norm_matches_torch(torch, kwargs):
    tm = torch.nn.LayerNorm((3, 4), **kwargs)
    with torch.no_grad():  # non-trivial affine parameters
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))
    jm = load_torch(nn.LayerNorm((3, 4), **kwargs), tm)
    x = random((2, 5, 3, 4)) * 3 + 1
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_layer_norm_gradients_match_torch(torch):
    tm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))
    jm = load_torch(nn.LayerNorm(6), tm)
    x = random((4, 6))
    assert_grads_match(jm, tm, lambda m: m(x), lambda m: m(torch.from_numpy(x)))


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_matches_torch(torch, eps):
    tm = torch.nn.RMSNorm(8, eps=eps)
    with torch.no_grad():
        tm.weight.copy_(torch.randn(8))
    jm = load_torch(nn.RMSNorm(8, eps=eps), tm)
    x = random((3, 8))
    assert_close(jm(x), tm(torch.from_numpy(x)))


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(torch, affine):
    tm = torch.nn.GroupNorm(3, 6, affine=affine)
    if affine:
        with torch.no_grad():
            for p in tm.parameters():
                p.copy_(torch.randn_like(p))
    jm = load_torch(nn.GroupNorm(3, 6, affine=affine), tm)
    for shape in [(2, 6), (2, 6, 5), (2, 6, 4, 3)]:
        x = random(shape) * 2 - 1
        assert_close(jm(x), tm(torch.from_numpy(x)))


def test_norm_defaults_and_names():
    ln = nn.LayerNorm(4)
    assert ln.normalized_shape == (4,)
    assert list(ln.state_dict()) == ["weight", "bias"]
    np.testing.assert_array_equal(ln.weight.value, np.ones(4))
    np.testing.assert_array_equal(ln.bias.value, np.zeros(4))
    assert list(nn.RMSNorm(4).state_dict()) == ["weight"]
    assert list(nn.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]
    assert list(nn.LayerNorm(4, elementwise_affine=False).state_dict()) == []


def test_norms_keep_low_precision_dtype_and_compute_in_float32():
    x = (random((2, 64)) * 100 + 1000).astype(jnp.bfloat16)
    y = nn.LayerNorm(64)(x)
    assert y.dtype == jnp.bfloat16
    assert float(jnp.abs(y.astype(jnp.float32).mean())) < 0.05
    assert nn.RMSNorm(64)(x).dtype == jnp.bfloat16
    y = jax.jit(lambda m, x: m(x))(nn.GroupNorm(4, 64), x.reshape(2, 64, 1))
    assert y.dtype == jnp.bfloat16


def test_norm_errors_name_layer_and_shapes():
    with pytest.raises(
        ValueError,
        match=r"LayerNorm\(normalized_shape=\(3, 4\).*expected input of "
        r"shape \(\.\.\., 3, 4\), got shape \(2, 4, 3\)",
    ):
        nn.LayerNorm((3, 4))(jnp.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=r"RMSNorm.*\(\.\.\., 8\), got shape \(8, 2\)"):
        nn.RMSNorm(8)(jnp.ones((8, 2)))
    with pytest.raises(ValueError, match=r"GroupNorm.*\(N, 6, \*\), got shape \(2, 4\)"):
        nn.GroupNorm(3, 6)(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        nn.GroupNorm(4, 6)


@pytest.mark.parametrize(
    ("args", "shape"),
    [((3,), (2, 5, 4)), ((4, 0.5, 0.6, 2.0), (2, 6, 3, 3)), ((1,), (1, 3, 2)), ((7,), (2, 3, 2))],
    ids=["3d-defaults", "4d-even-size", "size-1", "window-wider-than-channels"],
)
def test_local_response_norm_matches_torch_forward_and_gradient(torch, args, shape):
    x = random(shape, seed=3) * 2
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.LocalResponseNorm(*args)(t)
    ct = random(shape, seed=4)
    (ty * torch.from_numpy(ct)).sum().backward()
    y, vjp = jax.vjp(jax.jit(nn.LocalResponseNorm(*args)), x)
    assert_close(y, ty, rtol=1e-5, atol=1e-6)
    assert_close(vjp(ct)[0], t.grad, rtol=1e-4, atol=1e-6)


def test_local_response_norm_keeps_dtype_and_refuses_flat_input():
    x = (random((2, 4, 3)) * 10).astype(jnp.bfloat16)
    assert nn.LocalResponseNorm(2)(x).dtype == jnp.bfloat16
    assert nn.LocalResponseNorm(2).state_dict() == {}
    with pytest.raises(ValueError, match=r"LocalResponseNorm\(size=2.*got shape \(2, 4\)"):
        nn.LocalResponseNorm(2)(jnp.ones((2, 4)))
