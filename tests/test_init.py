"""Tests for jparam.init: statistics of large draws, PyTorch parity, dtypes, keys and errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jparam import init

KEY = jax.random.key(0)
# Statistical tests use 1e6 draws: standard errors are ~1e-3 of the std, so 1% tolerances are
# safe. Shapes are reused where possible: each new (matrix view, dtype) costs a compilation.
BIG = (1000, 1000)
WIDE = (500, 2000)  # fan_in 2000, fan_out 500
CONV = (1000, 40, 5, 5)  # Conv2d layout, matrix view (1000, 1000): fan_in 1000, fan_out 25000
WIDE_CONV = (500, 80, 5, 5)  # matrix view (500, 2000): fan_in 2000, fan_out 12500
SMALL = (8, 6)

RANDOM_INITS = [
    init.uniform,
    init.normal,
    init.trunc_normal,
    init.xavier_uniform,
    init.xavier_normal,
    init.kaiming_uniform,
    init.kaiming_normal,
    init.orthogonal,
]
FILL_INITS = [init.zeros, init.ones, init.eye]
NONLINEARITIES = [
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


def stats(x):
    x = np.asarray(x, np.float64)
    return x.mean(), x.std()


def assert_moments(x, mean, std, rtol=0.01):
    got_mean, got_std = stats(x)
    # The mean's tolerance is ~5 standard errors of the sample mean.
    assert abs(got_mean - mean) < 5 * std / math.sqrt(x.size) + 1e-12, (got_mean, mean)
    np.testing.assert_allclose(got_std, std, rtol=rtol)


# --------------------------------------------------------------------------- basic distributions


def test_uniform_moments_and_range():
    a, b = -2.0, 3.0
    x = np.asarray(init.uniform(KEY, BIG, a=a, b=b))
    assert x.shape == BIG
    assert float(x.min()) >= a and float(x.max()) < b
    assert float(x.min()) < a + 0.01 and float(x.max()) > b - 0.01  # fills the whole interval
    assert_moments(x, (a + b) / 2, (b - a) / math.sqrt(12))


def test_uniform_defaults_to_unit_interval():
    x = np.asarray(init.uniform(KEY, BIG))
    assert float(x.min()) >= 0.0 and float(x.max()) < 1.0
    assert_moments(x, 0.5, 1 / math.sqrt(12))


def test_normal_moments():
    x = init.normal(KEY, BIG, mean=1.5, std=0.5)
    assert_moments(x, 1.5, 0.5)


def test_normal_zero_std_is_constant():
    chex.assert_trees_all_equal(init.normal(KEY, (3, 2), mean=2.0, std=0.0), jnp.full((3, 2), 2.0))


def _truncated_normal_moments(mean, std, a, b):
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    lo, hi = (a - mean) / std, (b - mean) / std
    mass = cdf(hi) - cdf(lo)
    shift = (pdf(lo) - pdf(hi)) / mass
    var = 1 + (lo * pdf(lo) - hi * pdf(hi)) / mass - shift**2
    return mean + std * shift, std * math.sqrt(var)


@pytest.mark.parametrize(
    "mean, std, a, b",
    [(0.0, 1.0, -2.0, 2.0), (1.0, 2.0, 0.0, 3.0), (0.0, 0.02, -0.04, 0.04), (0.0, 1.0, -0.5, 3.0)],
)
def test_trunc_normal_bounds_and_moments(mean, std, a, b):
    x = np.asarray(init.trunc_normal(KEY, BIG, mean=mean, std=std, a=a, b=b))
    assert float(x.min()) >= a and float(x.max()) <= b
    want_mean, want_std = _truncated_normal_moments(mean, std, a, b)
    assert_moments(x, want_mean, want_std)


def test_trunc_normal_cutoffs_are_absolute_not_in_stds():
    # With std=0.1 and a=-2, b=2 (absolute), truncation is irrelevant: plain N(0, 0.1**2).
    x = init.trunc_normal(KEY, BIG, std=0.1)
    assert_moments(x, 0.0, 0.1)


# --------------------------------------------------------------------------- fans and gains


def test_calculate_gain_values():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("conv_transpose3d") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("selu") == pytest.approx(0.75)
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("relu", 123.0) == pytest.approx(math.sqrt(2))  # param ignored


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name in NONLINEARITIES:
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    for slope in (None, 0, 1, 0.2, math.sqrt(5), -0.3):
        want = torch.nn.init.calculate_gain("leaky_relu", slope)
        assert init.calculate_gain("leaky_relu", slope) == pytest.approx(want)


@pytest.mark.parametrize(
    "shape, fans",
    [
        ((3, 7), (7, 3)),
        ((16, 4, 5), (20, 80)),
        ((16, 4, 3, 5), (60, 240)),
        ((8, 2, 1, 2, 3), (12, 48)),
    ],
)
def test_fan_in_and_fan_out(shape, fans):
    assert init.fan_in_and_fan_out(shape) == fans


def test_fans_match_torch_layers():
    torch = pytest.importorskip("torch")
    layers = [
        torch.nn.Linear(7, 3),
        torch.nn.Conv1d(6, 4, 5),
        torch.nn.Conv2d(6, 9, (3, 2), groups=3),
        torch.nn.Conv3d(2, 4, 3),
        torch.nn.ConvTranspose2d(4, 6, 3, groups=2),
    ]
    fan_fn = torch.nn.init._calculate_fan_in_and_fan_out
    for layer in layers:
        weight = layer.weight
        assert init.fan_in_and_fan_out(tuple(weight.shape)) == fan_fn(weight), layer


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=5))
def test_fans_match_torch_property(shape):
    torch = pytest.importorskip("torch")
    want = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.fan_in_and_fan_out(shape) == tuple(want)


@settings(max_examples=50, deadline=None)
@given(st.floats(-10, 10, allow_nan=False))
def test_leaky_relu_gain_matches_torch_property(slope):
    torch = pytest.importorskip("torch")
    want = torch.nn.init.calculate_gain("leaky_relu", slope)
    assert init.calculate_gain("leaky_relu", slope) == pytest.approx(want)


# --------------------------------------------------------------------------- fan-scaled schemes


@pytest.mark.parametrize(
    "shape, kwargs, fan",
    [
        (WIDE, {"a": math.sqrt(5)}, 2000),  # PyTorch's Linear default
        (WIDE, {"mode": "fan_out", "nonlinearity": "tanh"}, 500),
        (CONV, {"nonlinearity": "relu"}, 1000),  # fan_in = in * kh * kw
        (WIDE_CONV, {"mode": "fan_out"}, 12500),  # fan_out = out * kh * kw
    ],
)
def test_kaiming_uniform_bound_and_std(shape, kwargs, fan):
    gain = init.calculate_gain(kwargs.get("nonlinearity", "leaky_relu"), kwargs.get("a", 0.0))
    bound = gain * math.sqrt(3 / fan)
    x = np.asarray(init.kaiming_uniform(KEY, shape, **kwargs))
    assert x.shape == shape
    assert np.abs(x).max() <= bound
    assert np.abs(x).max() > 0.99 * bound
    assert_moments(x, 0.0, bound / math.sqrt(3))


def test_kaiming_uniform_torch_linear_default_bound_is_one_over_sqrt_fan_in():
    x = init.kaiming_uniform(KEY, BIG, a=math.sqrt(5))
    np.testing.assert_allclose(np.abs(np.asarray(x)).max(), 1 / math.sqrt(1000), rtol=1e-3)


@pytest.mark.parametrize(
    "shape, kwargs, fan",
    [
        (WIDE, {}, 2000),
        (WIDE, {"mode": "fan_out", "nonlinearity": "relu"}, 500),
        (CONV, {"a": 0.2}, 1000),
        (WIDE_CONV, {"mode": "fan_out", "nonlinearity": "selu"}, 12500),
    ],
)
def test_kaiming_normal_std(shape, kwargs, fan):
    gain = init.calculate_gain(kwargs.get("nonlinearity", "leaky_relu"), kwargs.get("a", 0.0))
    assert_moments(init.kaiming_normal(KEY, shape, **kwargs), 0.0, gain / math.sqrt(fan))


@pytest.mark.parametrize("shape, gain", [(BIG, 1.0), (WIDE, 2.5), (CONV, 0.5)])
def test_xavier_std(shape, gain):
    fan_in, fan_out = init.fan_in_and_fan_out(shape)
    std = gain * math.sqrt(2 / (fan_in + fan_out))
    u = init.xavier_uniform(KEY, shape, gain=gain)
    assert np.abs(np.asarray(u)).max() <= math.sqrt(3) * std
    assert_moments(u, 0.0, std)
    assert_moments(init.xavier_normal(KEY, shape, gain=gain), 0.0, std)


@pytest.mark.parametrize("fn", [init.xavier_uniform, init.kaiming_normal, init.orthogonal])
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (5, 0, 3)])
def test_zero_element_weights_are_returned_empty(fn, shape):
    x = fn(KEY, shape, jnp.bfloat16)
    chex.assert_shape(x, shape)
    assert x.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("shape", [(64, 64), (128, 32), (32, 128), (16, 8, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal_is_orthonormal(shape, gain):
    x = init.orthogonal(KEY, shape, gain=gain)
    chex.assert_shape(x, shape)
    m = np.asarray(x, np.float64).reshape(shape[0], -1) / gain
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)


def test_orthogonal_is_sign_corrected():
    # Without the diag(R) sign correction the diagonal of Q is biased (its mean is about -0.07
    # here); with it, Q is Haar-distributed and the mean is 0 with standard error ~0.004.
    qs = [np.asarray(init.orthogonal(k, (64, 64))) for k in jax.random.split(KEY, 16)]
    assert abs(np.mean([np.diagonal(q).mean() for q in qs])) < 0.02


# --------------------------------------------------------------------------- deterministic fills


def test_fills():
    chex.assert_trees_all_equal(init.zeros(None, (2, 3)), jnp.zeros((2, 3)))
    chex.assert_trees_all_equal(init.ones(None, (4,), jnp.int32), jnp.ones((4,), jnp.int32))
    chex.assert_trees_all_equal(init.constant(None, (2, 2), val=0.25), jnp.full((2, 2), 0.25))
    chex.assert_trees_all_equal(init.constant(None, (3,), jnp.int8, -7), jnp.full((3,), -7, "int8"))
    chex.assert_trees_all_equal(init.eye(None, (2, 3)), jnp.array([[1.0, 0, 0], [0, 1, 0]]))
    chex.assert_trees_all_equal(init.eye(None, (3, 2)), jnp.eye(3, 2))


@pytest.mark.parametrize("fn", FILL_INITS)
def test_fills_ignore_the_key(fn):
    chex.assert_trees_all_equal(fn(KEY, (3, 3)), fn(None, (3, 3)), fn(jax.random.key(9), (3, 3)))


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])  # float32: everywhere else
@pytest.mark.parametrize("fn", RANDOM_INITS + FILL_INITS)
def test_dtype_is_respected(fn, dtype):
    x = fn(KEY, SMALL, dtype)
    chex.assert_shape(x, SMALL)
    assert x.dtype == dtype
    assert np.isfinite(np.asarray(x, np.float32)).all()


def test_low_precision_is_float32_draw_rounded():
    full = init.kaiming_uniform(KEY, SMALL)
    half = init.kaiming_uniform(KEY, SMALL, jnp.bfloat16)
    chex.assert_trees_all_equal(half, full.astype(jnp.bfloat16))


def test_constant_dtype_is_respected():
    assert init.constant(None, (2,), jnp.float16, 3.0).dtype == jnp.float16
    assert init.constant(None, (2,), jnp.bool_, True).dtype == jnp.bool_


# --------------------------------------------------------------------------- keys and determinism


@pytest.mark.parametrize("fn", RANDOM_INITS)
def test_determinism(fn):
    chex.assert_trees_all_equal(fn(KEY, SMALL), fn(jax.random.key(0), SMALL))
    assert not np.allclose(fn(KEY, SMALL), fn(jax.random.key(1), SMALL))


@pytest.mark.parametrize("fn", [init.kaiming_normal, init.orthogonal])
def test_legacy_uint32_keys_are_accepted(fn):
    # PRNGKey(0) holds the same bits as key(0), so it must give the same values.
    chex.assert_trees_all_equal(fn(jax.random.PRNGKey(0), SMALL), fn(KEY, SMALL))


def test_jit_and_vmap_over_keys():
    fn = jax.jit(lambda k: init.kaiming_uniform(k, SMALL, a=math.sqrt(5)))
    want = init.kaiming_uniform(KEY, SMALL, a=math.sqrt(5))
    chex.assert_trees_all_close(fn(KEY), want, rtol=1e-5, atol=1e-6)  # jit vs eager
    batch = jax.vmap(lambda k: init.xavier_normal(k, SMALL))(jax.random.split(KEY, 3))
    chex.assert_shape(batch, (3, *SMALL))
    assert not np.allclose(batch[0], batch[1])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn", [init.xavier_uniform, init.xavier_normal, init.kaiming_uniform, init.kaiming_normal]
)
@pytest.mark.parametrize("shape", [(), (5,)])
def test_fans_need_two_dims(fn, shape):
    with pytest.raises(ValueError, match=r"at least 2 dimensions; got \(.*\) \([01]-D\)"):
        fn(KEY, shape)


def test_fan_in_and_fan_out_needs_two_dims():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fan_in_and_fan_out((7,))


def test_orthogonal_and_eye_dims():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.orthogonal(KEY, (4,))
    with pytest.raises(ValueError, match=r"2-D shape; got \(2, 2, 2\) \(3-D\)"):
        init.eye(None, (2, 2, 2))
    with pytest.raises(ValueError, match=r"2-D shape; got \(3,\) \(1-D\)"):
        init.eye(None, (3,))


@pytest.mark.parametrize("fn", [init.kaiming_uniform, init.kaiming_normal])
def test_bad_mode_and_nonlinearity(fn):
    with pytest.raises(ValueError, match=r"mode must be one of \('fan_in', 'fan_out'\); got 'avg'"):
        fn(KEY, (3, 3), mode="avg")
    with pytest.raises(
        ValueError, match=r"unsupported nonlinearity 'gelu'; expected one of .*relu"
    ):
        fn(KEY, (3, 3), nonlinearity="gelu")


def test_calculate_gain_errors():
    with pytest.raises(ValueError, match=r"expected one of \('linear'.*'selu'\)"):
        init.calculate_gain("swish")
    for bad in ("0.1", True, [0.1]):
        with pytest.raises(ValueError, match="negative slope must be an int or float"):
            init.calculate_gain("leaky_relu", bad)


@pytest.mark.parametrize("fn", RANDOM_INITS)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_random_inits_need_floating_dtype(fn, dtype):
    with pytest.raises(TypeError, match=f"floating dtype .*; got {jnp.dtype(dtype).name}"):
        fn(KEY, (4, 4), dtype)


@pytest.mark.parametrize("fn", [init.normal, init.trunc_normal])
def test_negative_std(fn):
    with pytest.raises(ValueError, match=r"std must be non-negative; got -0.5"):
        fn(KEY, (3,), std=-0.5)


def test_interval_errors():
    with pytest.raises(ValueError, match=r"a <= b; got a=1.0, b=0.0"):
        init.uniform(KEY, (3,), a=1.0, b=0.0)
    with pytest.raises(ValueError, match=r"a < b; got a=1.0, b=1.0"):
        init.trunc_normal(KEY, (3,), a=1.0, b=1.0)
    with pytest.raises(ValueError, match="std > 0"):
        init.trunc_normal(KEY, (3,), std=0.0)


def test_array_hyperparameters_are_not_broadcast():
    with pytest.raises(TypeError, match="std must be a real scalar"):
        init.normal(KEY, (3,), std=jnp.ones(3))
    with pytest.raises(TypeError, match="gain must be a real scalar"):
        init.xavier_uniform(KEY, (3, 3), gain=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"val must be a scalar, not an array of shape \(3,\)"):
        init.constant(None, (3,), val=np.arange(3.0))


def test_constant_errors():
    with pytest.raises(TypeError, match="needs a fill value"):
        init.constant(None, (3,))
    with pytest.raises(ValueError, match=r"val=1\.5 is not exactly representable in dtype int32"):
        init.constant(None, (3,), jnp.int32, 1.5)
    with pytest.raises(ValueError, match="not exactly representable in dtype uint8"):
        init.constant(None, (3,), jnp.uint8, -1)
    with pytest.raises(TypeError, match=r"complex val .* needs a complex dtype; got float32"):
        init.constant(None, (3,), jnp.float32, 1 + 2j)


@pytest.mark.parametrize("bad", [0, np.zeros(2, np.float32), jax.random.split(KEY, 2)])
def test_bad_keys(bad):
    with pytest.raises(TypeError, match=r"single PRNG key from jax.random.key\(seed\)"):
        init.normal(bad, (3,))


@pytest.mark.parametrize("bad", [5, (3, -1), (2.0, 3), "ab"])
def test_bad_shapes(bad):
    with pytest.raises(TypeError, match="shape must"):
        init.uniform(KEY, bad)
