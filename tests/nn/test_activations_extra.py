"""The activations of issue 13 at their edges, against PyTorch.

`tests/nn/test_torch_matrix.py` compares them on random inputs; here the inputs sit exactly on
the kinks (where the gradient is a convention, and PyTorch's is the one ported code expects),
constructor arguments are checked as PyTorch checks them (or stricter, where PyTorch would
compute garbage), and bad inputs fail where PyTorch fails.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, numpy

from jparam import nn

# Every kink of the layers below, plus far-out values (overflow in an unused branch would
# turn a gradient into NaN).
KINKS = np.array([-100, -25, -3, -1, -0.5, 0, 0.3, 0.5, 1, 1.5, 2, 3, 6, 25, 100], np.float32)

EDGE_CASES = [
    ("LeakyReLU", ()),
    ("LeakyReLU", (0.2,)),
    ("PReLU", ()),
    ("ELU", ()),
    ("ELU", (2.0,)),
    ("SELU", ()),
    ("CELU", (2.0,)),
    ("CELU", (-0.5,)),
    ("Softplus", ()),
    ("Softplus", (2.0, 3.0)),  # beta * x == threshold at x = 1.5: not yet linear
    ("Softplus", (-1.0, 1.0)),
    ("Mish", ()),
    ("Hardswish", ()),
    ("Hardsigmoid", ()),
    ("Hardtanh", ()),
    ("Hardtanh", (-0.5, 2.0)),
    ("ReLU6", ()),
    ("ReLU", ()),
    ("Threshold", (0.3, -2.0)),
    ("Threshold", (1.0, 1.0)),
]


@pytest.mark.parametrize(("name", "args"), EDGE_CASES, ids=lambda v: str(v))
def test_values_and_gradients_at_the_kinks_match_torch(torch, name, args):
    """Forward eagerly and the gradient under ``jax.jit(jax.grad)``, on exact kink points."""
    weights = np.linspace(0.5, 2.0, KINKS.size, dtype=np.float32)  # each point its own weight
    layer = getattr(nn, name)(*args)
    tx = torch.tensor(KINKS, requires_grad=True)
    ty = getattr(torch.nn, name)(*args)(tx)
    (ty * torch.from_numpy(weights)).sum().backward()
    grad = jax.jit(jax.grad(lambda m, x: jnp.sum(m(x) * weights), argnums=1))(layer, KINKS)
    assert_close(layer(KINKS), ty, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.isfinite(grad), np.isfinite(numpy(tx.grad)))  # NaN-free
    assert_close(grad, tx.grad, rtol=1e-6, atol=1e-6)


def test_prelu_is_a_trainable_parameter_laid_out_as_torch(torch):
    layer = nn.PReLU(3, 0.1, dtype=jnp.bfloat16)
    tlayer = torch.nn.PReLU(3, 0.1)
    assert list(layer.state_dict()) == list(tlayer.state_dict()) == ["weight"]
    assert layer.weight.shape == tuple(tlayer.weight.shape) and layer.weight.trainable
    assert layer.weight.dtype == jnp.bfloat16
    np.testing.assert_array_equal(layer.weight.value, jnp.full(3, 0.1, jnp.bfloat16))
    assert layer.num_parameters() == sum(p.numel() for p in tlayer.parameters())


def test_prelu_loads_torch_slopes_and_applies_them_per_channel(torch):
    tlayer = torch.nn.PReLU(3)
    with torch.no_grad():
        tlayer.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    layer = nn.PReLU(3).load_state_dict(tlayer.state_dict())
    x = -np.ones((2, 3, 4), np.float32)  # all negative: the output is -weight per channel
    assert_close(layer(x), tlayer(torch.from_numpy(x)), rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(layer(x))[0, :, 0], [-0.5, 1.0, -2.0])


def test_single_slope_prelu_takes_any_rank_like_torch(torch):
    tlayer = torch.nn.PReLU(init=0.3)
    for x in (np.float32(-2.0), np.array([-1.0, 2.0], np.float32)):
        assert_close(nn.PReLU(init=0.3)(x), tlayer(torch.tensor(x)), rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda m: m.PReLU(3), (2, 4)),  # 4 channels, 3 slopes
        (lambda m: m.PReLU(3), (3,)),  # 1-d input has one channel
        (lambda m: m.GLU(), (2, 5)),  # odd size cannot be halved
        (lambda m: m.GLU(1), (6,)),  # no axis 1
        (lambda m: m.GLU(), ()),  # a scalar has nothing to halve
        (lambda m: m.LogSoftmax(2), (3, 4)),
        (lambda m: m.Softmin(-3), (3, 4)),
    ],
)
def test_bad_inputs_fail_where_torch_fails(torch, make, shape):
    with pytest.raises((RuntimeError, IndexError)):
        make(torch.nn)(torch.ones(shape))
    with pytest.raises(ValueError, match=r"shape \(" + ", ".join(map(str, shape))):
        make(nn)(jnp.ones(shape))


def test_input_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"PReLU\(num_parameters=3\) expected .*\(N, 3, \.\.\.\)"):
        nn.PReLU(3)(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"GLU\(dim=-1\) halves axis -1, .*even size"):
        nn.GLU()(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"LogSoftmax\(dim=2\) .* no axis 2"):
        nn.LogSoftmax(2)(jnp.ones((3, 4)))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda m: m.PReLU(0), ValueError, "num_parameters must be positive"),
        (lambda m: m.PReLU(2.0), TypeError, "num_parameters must be an int"),
        (lambda m: m.PReLU(2, "0.25"), TypeError, "init must be a real number"),
        (lambda m: m.CELU(0.0), ValueError, "alpha cannot be 0"),
        (lambda m: m.Softplus(0), ValueError, "beta cannot be 0"),
        (lambda m: m.Hardtanh(1.0, 1.0), ValueError, "max_val must be greater than min_val"),
        (lambda m: m.Hardtanh(2.0, -1.0), ValueError, "max_val must be greater than min_val"),
        (lambda m: m.LeakyReLU("0.1"), TypeError, "negative_slope must be a real number"),
        (lambda m: m.LeakyReLU(True), TypeError, "negative_slope must be a real number"),
        (lambda m: m.ELU(float("nan")), ValueError, "alpha must be a real number"),
        (lambda m: m.Threshold(0.1, None), TypeError, "value must be a real number"),
        (lambda m: m.GLU(1.5), TypeError, "GLU dim must be an int"),
        (lambda m: m.LogSoftmax("1"), TypeError, "LogSoftmax dim must be an int"),
        (lambda m: m.Softmin(None), TypeError, "Softmin dim must be an int"),
        (lambda m: m.ReLU6(inplace="yes"), TypeError, "inplace must be a bool"),
        (lambda m: m.LeakyReLU(0.1, 0.2), TypeError, "inplace must be a bool"),
    ],
)
def test_constructor_arguments_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make(nn)


def test_torch_rejects_what_it_rejects_at_construction_or_first_call(torch):
    """The checks above that PyTorch also makes (the rest refuse what PyTorch computes as
    garbage: inf for ``beta=0``, a silently truthy ``inplace``)."""
    with pytest.raises(AssertionError):
        torch.nn.Hardtanh(1.0, 1.0)
    with pytest.raises(RuntimeError, match="alpha cannot be 0"):
        torch.nn.CELU(0.0)(torch.ones(2))
    with pytest.raises(TypeError):
        torch.nn.GLU(1.5)(torch.ones(2, 4))


def test_inplace_is_accepted_and_ignored():
    x = jnp.linspace(-8, 8, 17)
    for name, args in [
        ("ReLU", ()),
        ("SiLU", ()),
        ("LeakyReLU", (0.1,)),
        ("ELU", (1.0,)),
        ("SELU", ()),
        ("CELU", (1.0,)),
        ("Mish", ()),
        ("Hardswish", ()),
        ("Hardsigmoid", ()),
        ("Hardtanh", (-1.0, 1.0)),
        ("ReLU6", ()),
        ("Threshold", (0.1, 0.0)),
    ]:
        cls = getattr(nn, name)
        a, b = cls(*args, inplace=True), cls(*args)
        assert jax.tree.structure(a) == jax.tree.structure(b), name  # no recompilation
        np.testing.assert_array_equal(a(x), b(x))


def test_hardtanh_accepts_torchs_deprecated_keywords(torch):
    with pytest.warns(FutureWarning, match="min_value"):
        ours = nn.Hardtanh(min_value=-2.0)
    with pytest.warns(FutureWarning, match="min_value"):
        theirs = torch.nn.Hardtanh(min_value=-2.0)
    assert (ours.min_val, ours.max_val) == (theirs.min_val, theirs.max_val) == (-2.0, 1.0)


def test_hyperparameters_are_static_and_dtypes_kept():
    """No array leaves (nothing traced), a new slope is a new treedef, and bfloat16 stays
    bfloat16 (Python-float hyperparameters are weakly typed)."""
    x = jnp.linspace(-4, 4, 10, dtype=jnp.bfloat16)
    layers = [
        nn.LeakyReLU(0.2),
        nn.ELU(0.5),
        nn.SELU(),
        nn.CELU(2.0),
        nn.Softplus(np.float64(2.0), 3),
        nn.Mish(),
        nn.Hardswish(),
        nn.Hardsigmoid(),
        nn.Hardtanh(-2, 2),
        nn.ReLU6(),
        nn.LogSoftmax(0),
        nn.Softmin(0),
        nn.GLU(0),
        nn.Threshold(np.float32(0.5), 1),
    ]
    for layer in layers:
        assert jax.tree.leaves(layer) == [], layer
        y = jax.jit(lambda m, x: m(x))(layer, x)
        assert y.dtype == jnp.bfloat16, layer
    assert jax.tree.structure(nn.LeakyReLU(0.2)) != jax.tree.structure(nn.LeakyReLU(0.3))
    assert type(nn.Softplus(np.float64(2.0)).beta) is float


def test_prelu_weight_gradient_under_jit_matches_torch(torch):
    tlayer = torch.nn.PReLU(4)
    with torch.no_grad():
        tlayer.weight.copy_(torch.tensor([0.1, -0.3, 0.7, 2.0]))
    layer = nn.PReLU(4).load_state_dict(tlayer.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5)).astype(np.float32)
    ct = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    (tlayer(torch.from_numpy(x)) * torch.from_numpy(ct)).sum().backward()
    grads = jax.jit(jax.grad(lambda m: jnp.sum(m(x) * ct)))(layer)
    assert_close(grads.weight.value, numpy(tlayer.weight.grad), rtol=1e-5, atol=1e-5)
