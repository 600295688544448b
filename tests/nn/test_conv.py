"""Conv1d, Conv2d and ConvTranspose2d against PyTorch: padding modes, strides, groups, grads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, assert_grads_match, load_torch, random

from jparam import nn

CONV2D_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    dict(padding="same", dilation=2),
    dict(padding="valid", bias=False),
    dict(groups=2, padding=1),
    dict(padding=1, padding_mode="reflect"),
    dict(padding="same", padding_mode="replicate"),
    dict(padding=(1, 2), padding_mode="circular", stride=2),
]


@pytest.mark.parametrize("kwargs", CONV2D_CASES, ids=lambda k: repr(k)[1:-1] or "default")
def test_conv2d_matches_torch(torch, key, kwargs):
    tm = torch.nn.Conv2d(4, 6, (3, 2), **kwargs)
    jm = load_torch(nn.Conv2d(4, 6, (3, 2), key=key, **kwargs), tm)
    x = random((2, 4, 7, 6))
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_conv2d_gradients_match_torch(torch, key):
    tm = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)
    jm = load_torch(nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, key=key), tm)
    x = random((2, 2, 6, 5))
    assert_grads_match(jm, tm, lambda m: m(x), lambda m: m(torch.from_numpy(x)))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(stride=2, padding="valid"), dict(padding="same", dilation=3, groups=3)],
    ids=["default", "strided", "same-dilated-groups"],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv1d_matches_torch(torch, key, kwargs):
    tm = torch.nn.Conv1d(3, 6, 4, **kwargs)
    jm = load_torch(nn.Conv1d(3, 6, 4, key=key, **kwargs), tm)
    x = random((2, 3, 11))
    assert_close(jm(x), tm(torch.from_numpy(x)))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stride=2, padding=1, output_padding=1),
        dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2), dilation=(1, 2)),
        dict(groups=2, stride=2, bias=False),
        dict(padding=3),  # more padding than the kernel: the output shrinks
    ],
    ids=["default", "output-padding", "mixed", "groups", "big-padding"],
)
def test_conv_transpose2d_matches_torch(torch, key, kwargs):
    tm = torch.nn.ConvTranspose2d(4, 6, 3, **kwargs)
    jm = load_torch(nn.ConvTranspose2d(4, 6, 3, key=key, **kwargs), tm)
    assert jm.weight.shape == (4, 6 // kwargs.get("groups", 1), 3, 3)
    x = random((2, 4, 5, 6))
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_conv_transpose2d_gradients_match_torch(torch, key):
    tm = torch.nn.ConvTranspose2d(2, 4, 3, stride=2, groups=2)
    jm = load_torch(nn.ConvTranspose2d(2, 4, 3, stride=2, groups=2, key=key), tm)
    x = random((1, 2, 4, 3))
    assert_grads_match(jm, tm, lambda m: m(x), lambda m: m(torch.from_numpy(x)))


def test_conv_layouts_and_default_init_bounds(key):
    conv = nn.Conv2d(8, 16, 5, groups=2, key=key)
    assert conv.weight.shape == (16, 4, 5, 5) and conv.bias.shape == (16,)
    bound = 1 / math.sqrt(4 * 5 * 5)  # fan_in = in / groups * kh * kw
    w = np.asarray(conv.weight.value)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert np.abs(np.asarray(conv.bias.value)).max() <= bound
    assert nn.Conv1d(3, 5, 2, key=key).weight.shape == (5, 3, 2)
    transposed = nn.ConvTranspose2d(6, 4, 3, groups=2, key=key)
    assert transposed.weight.shape == (6, 2, 3, 3)
    assert np.abs(np.asarray(transposed.bias.value)).max() <= 1 / math.sqrt(2 * 9)


def test_conv_output_shapes_and_jit(key):
    conv = nn.Conv2d(3, 8, 3, padding="same", key=key)
    x = jnp.ones((2, 3, 9, 9))
    assert conv(x).shape == (2, 8, 9, 9)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(conv, x), conv(x), rtol=1e-5, atol=1e-6)
    up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, key=key)
    assert up(x).shape == (2, 2, 18, 18)


def test_conv_bad_arguments_raise(key):
    with pytest.raises(ValueError, match="divisible by groups=4"):
        nn.Conv2d(6, 8, 3, groups=4, key=key)
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        nn.Conv2d(3, 3, 3, stride=2, padding="same", key=key)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.Conv2d(3, 3, 3, padding_mode="mirror", key=key)
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 2 ints"):
        nn.Conv2d(3, 3, (3, 3, 3), key=key)
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        nn.ConvTranspose2d(3, 3, 3, stride=2, output_padding=2, key=key)
    with pytest.raises(TypeError, match="key"):
        nn.Conv2d(3, 3, 3)


def test_conv_bad_input_names_layer_and_shapes(key):
    conv = nn.Conv2d(3, 8, 3, key=key)
    with pytest.raises(
        ValueError,
        match=r"Conv2d\(in_channels=3.*expected input of shape "
        r"\(N, 3, H, W\), got shape \(2, 4, 8, 8\)",
    ):
        conv(jnp.ones((2, 4, 8, 8)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got shape \(3, 8, 8\)"):
        conv(jnp.ones((3, 8, 8)))
    with pytest.raises(ValueError, match=r"Conv1d.*\(N, 3, W\)"):
        nn.Conv1d(3, 8, 3, key=key)(jnp.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*\(N, 3, H, W\)"):
        nn.ConvTranspose2d(3, 8, 3, key=key)(jnp.ones((2, 5, 4, 4)))


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("Conv3d", (2, 4, 5, 4, 6), dict(stride=(2, 1, 1), padding=(1, 0, 2))),
        ("Conv3d", (2, 4, 4, 5, 3), dict(padding="same", dilation=(1, 2, 1), groups=2)),
        ("Conv3d", (1, 4, 4, 5, 3), dict(padding=1, padding_mode="circular", bias=False)),
        ("ConvTranspose1d", (2, 4, 6), dict()),
        ("ConvTranspose1d", (2, 4, 6), dict(stride=3, padding=2, output_padding=2, groups=2)),
        ("ConvTranspose3d", (2, 4, 3, 2, 4), dict(stride=(1, 2, 3), output_padding=(0, 1, 2))),
        ("ConvTranspose3d", (1, 4, 3, 4, 3), dict(padding=1, dilation=(2, 1, 1), groups=2)),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v),
)
def test_conv_1d_3d_variants_match_torch(torch, key, name, shape, kwargs):
    tm = getattr(torch.nn, name)(4, 6, 3, **kwargs)
    jm = load_torch(getattr(nn, name)(4, 6, 3, key=key, **kwargs), tm)
    x = random(shape)
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_conv3d_and_transposed_1d_3d_gradients_match_torch(torch, key):
    cases = [
        (nn.Conv3d(2, 4, 2, 2, groups=2, key=key), torch.nn.Conv3d(2, 4, 2, 2, groups=2), 3),
        (nn.ConvTranspose1d(2, 4, 3, 2, key=key), torch.nn.ConvTranspose1d(2, 4, 3, 2), 1),
        (nn.ConvTranspose3d(2, 2, 2, 2, key=key), torch.nn.ConvTranspose3d(2, 2, 2, 2), 3),
    ]
    for jm, tm, n in cases:
        x = random((1, 2, 4, 3, 4)[: n + 2])
        jm = load_torch(jm, tm)
        assert_grads_match(jm, tm, lambda m, x=x: m(x), lambda m, x=x: m(torch.from_numpy(x)))


def test_conv_1d_3d_layouts_and_init_bounds(key):
    conv = nn.Conv3d(4, 6, (3, 2, 1), groups=2, key=key)
    assert conv.weight.shape == (6, 2, 3, 2, 1)
    bound = 1 / math.sqrt(2 * 3 * 2 * 1)
    assert 0.9 * bound < np.abs(np.asarray(conv.weight.value)).max() <= bound
    t1 = nn.ConvTranspose1d(6, 4, 5, groups=2, key=key)
    assert t1.weight.shape == (6, 2, 5) and t1.bias.shape == (4,)
    assert np.abs(np.asarray(t1.bias.value)).max() <= 1 / math.sqrt(2 * 5)
    t3 = nn.ConvTranspose3d(2, 6, 3, groups=2, bias=False, key=key)
    assert t3.weight.shape == (2, 3, 3, 3, 3) and t3.bias is None
    x = jnp.ones((2, 2, 3, 4, 5))
    assert t3(x).shape == (2, 6, 5, 6, 7)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(t3, x), t3(x), rtol=1e-5, atol=1e-6)


def test_conv_1d_3d_bad_inputs_name_layer_and_shapes(key):
    with pytest.raises(ValueError, match=r"Conv3d.*\(N, 3, D, H, W\), got shape \(2, 3, 4, 4\)"):
        nn.Conv3d(3, 4, 3, key=key)(jnp.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"ConvTranspose1d.*\(N, 3, W\), got shape \(2, 4, 5\)"):
        nn.ConvTranspose1d(3, 4, 3, key=key)(jnp.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"ConvTranspose3d.*whose output would be \(3, -1, 3\)"):
        nn.ConvTranspose3d(1, 1, 3, padding=(0, 2, 0), key=key)(jnp.ones((1, 1, 1, 1, 1)))
    with pytest.raises(
        TypeError, match="ConvTranspose3d kernel_size must be an int or a tuple of 3"
    ):
        nn.ConvTranspose3d(1, 1, (3, 3), key=key)
    with pytest.raises(ValueError, match="ConvTranspose1d supports padding_mode='zeros' only"):
        nn.ConvTranspose1d(1, 1, 3, padding_mode="reflect", key=key)
