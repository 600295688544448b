"""BatchNorm1d/2d/3d and InstanceNorm1d/2d/3d: PyTorch parity through several jitted training
steps, then evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, load_torch, random

import jparam as jp
from jparam import nn


def _randomise_affine(torch, tm):
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))


def _assert_state_matches(jm, tm):
    theirs = tm.state_dict()
    ours = jm.state_dict()
    assert list(ours) == list(theirs)
    for name, value in ours.items():
        assert_close(value, theirs[name], atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=["m0.1", "m0.3", "cumulative"])
def test_batchnorm2d_training_steps_then_eval_match_torch(torch, momentum):
    tm = torch.nn.BatchNorm2d(3, momentum=momentum)
    _randomise_affine(torch, tm)
    jm = load_torch(nn.BatchNorm2d(3, momentum=momentum), tm)
    step = jax.jit(nn.stateful_call)
    for i in range(4):
        x = random((4, 3, 5, 2), seed=i) * (i + 1) + i
        y, jm = step(jm, x)
        assert_close(y, tm(torch.from_numpy(x)))
    _assert_state_matches(jm, tm)
    assert int(jm.num_batches_tracked.value) == 4
    tm.eval()
    x = random((2, 3, 4, 4), seed=9) + 2
    assert_close(jax.jit(lambda m, x: m(x))(jm.eval(), x), tm(torch.from_numpy(x)))


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
def test_batchnorm1d_matches_torch(torch, shape):
    tm = torch.nn.BatchNorm1d(4)
    _randomise_affine(torch, tm)
    jm = load_torch(nn.BatchNorm1d(4), tm)
    for i in range(2):
        x = random(shape, seed=i) * 2 + 1
        y, jm = nn.stateful_call(jm, x)
        assert_close(y, tm(torch.from_numpy(x)))
    _assert_state_matches(jm, tm)
    tm.eval()
    assert_close(jm.eval()(x), tm(torch.from_numpy(x)))


def test_batchnorm_without_running_stats_or_affine_matches_torch(torch):
    tm = torch.nn.BatchNorm2d(2, affine=False, track_running_stats=False)
    jm = load_torch(nn.BatchNorm2d(2, affine=False, track_running_stats=False), tm)
    assert jm.state_dict() == {}
    x = random((3, 2, 4, 4)) + 5
    assert_close(jm(x), tm(torch.from_numpy(x)))  # no state: no stateful_call needed
    tm.eval()
    assert_close(jm.eval()(x), tm(torch.from_numpy(x)))  # batch statistics in eval too


def test_batchnorm_buffers_names_and_dtypes():
    bn = nn.BatchNorm2d(5)
    assert list(bn.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert [n for n, _ in bn.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert jnp.issubdtype(bn.num_batches_tracked.dtype, jnp.integer)
    np.testing.assert_array_equal(bn.running_var.value, np.ones(5))


def test_stateful_call_on_one_layer_returns_the_updated_layer():
    bn = nn.BatchNorm1d(2, momentum=0.5)
    x = jnp.array([[0.0, 10.0], [2.0, 14.0]])
    y, new = nn.stateful_call(bn, x)
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]], atol=1e-3)
    np.testing.assert_allclose(new.running_mean.value, [0.5, 6.0])
    np.testing.assert_allclose(new.running_var.value, [0.5 + 1.0, 0.5 + 4.0])  # unbiased
    assert int(new.num_batches_tracked.value) == 1
    assert int(bn.num_batches_tracked.value) == 0  # the original is unchanged


def test_stateful_call_is_the_one_spelling_of_a_training_step():
    for layer in (nn.BatchNorm2d(2), nn.InstanceNorm1d(2, track_running_stats=True)):
        assert not hasattr(layer, "forward_train")


def test_batchnorm_in_sequential_train_step_with_grad(torch, key):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, key=key), nn.BatchNorm2d(3), nn.ReLU())
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
    model = model.load_state_dict(tmodel.state_dict())
    x = random((4, 2, 6, 6))

    @jax.jit
    def train_step(model, x):
        def loss_fn(model):
            out, new_model = nn.stateful_call(model, x)
            return jnp.sum(jnp.sin(out)), new_model

        # jp.value_and_grad: gradients for trainable parameters only (not the int counter).
        (loss, new_model), grads = jp.value_and_grad(loss_fn, has_aux=True)(model)
        return loss, grads, new_model

    loss, grads, updated = train_step(model, x)
    tloss = torch.sin(tmodel(torch.from_numpy(x))).sum()
    tloss.backward()
    assert float(loss) == pytest.approx(tloss.item(), abs=1e-4)
    theirs = {n: p.grad for n, p in tmodel.named_parameters()}
    for name, g in jp.named_parameters(grads):
        assert_close(g.value, theirs[name], atol=1e-4)
    assert_close(updated.layers[1].running_mean.value, tmodel[1].running_mean)
    assert_close(updated.layers[1].running_var.value, tmodel[1].running_var)


def test_batchnorm_errors():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(
        ValueError,
        match=r"BatchNorm2d\(num_features=3.*expected input of shape "
        r"\(N, 3, H, W\), got shape \(2, 3, 4\)",
    ):
        bn.eval()(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 4, L\), got shape \(2, 3\)"):
        nn.stateful_call(nn.BatchNorm1d(4), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.stateful_call(nn.BatchNorm1d(4), jnp.ones((1, 4)))


def test_batchnorm3d_training_steps_then_eval_match_torch(torch):
    tm = torch.nn.BatchNorm3d(2, momentum=0.2)
    _randomise_affine(torch, tm)
    jm = load_torch(nn.BatchNorm3d(2, momentum=0.2), tm)
    step = jax.jit(nn.stateful_call)
    for i in range(2):
        x = random((2, 2, 3, 2, 4), seed=i) * (i + 2) - i
        y, jm = step(jm, x)
        assert_close(y, tm(torch.from_numpy(x)))
    _assert_state_matches(jm, tm)
    tm.eval()
    assert_close(jm.eval()(x), tm(torch.from_numpy(x)))


@pytest.mark.parametrize(
    ("cls", "shape", "kwargs"),
    [
        ("InstanceNorm2d", (3, 2, 5, 4), dict(affine=True, track_running_stats=True)),
        ("InstanceNorm1d", (2, 6), dict(momentum=0.4, track_running_stats=True)),  # unbatched
        ("InstanceNorm3d", (2, 2, 3, 2, 2), dict(momentum=None, track_running_stats=True)),
    ],
    ids=["2d-affine", "1d-unbatched", "3d-momentum-none"],
)
def test_instancenorm_training_steps_then_eval_match_torch(torch, cls, shape, kwargs):
    """Running statistics: the batch mean of per-instance statistics, unbiased variance,
    ``num_batches_tracked`` left at 0 and ``momentum=None`` freezing them, as PyTorch does."""
    channels = shape[0] if cls == "InstanceNorm1d" else shape[1]
    tm = getattr(torch.nn, cls)(channels, **kwargs)
    _randomise_affine(torch, tm)
    jm = load_torch(getattr(nn, cls)(channels, **kwargs), tm)
    step = jax.jit(nn.stateful_call)
    for i in range(3):
        x = random(shape, seed=i) * (i + 1) + i
        y, jm = step(jm, x)
        assert_close(y, tm(torch.from_numpy(x)))
    _assert_state_matches(jm, tm)
    assert int(jm.num_batches_tracked.value) == 0
    moved = not np.allclose(jm.running_mean.value, 0)
    assert moved == (kwargs.get("momentum", 0.1) is not None)
    tm.eval()
    x = random(shape, seed=9) + 2
    assert_close(jax.jit(lambda m, x: m(x))(jm.eval(), x), tm(torch.from_numpy(x)))


def test_instancenorm_defaults_names_and_errors(torch):
    norm = nn.InstanceNorm2d(4)
    assert norm.state_dict() == {} and not norm.affine and not norm.track_running_stats
    x = random((2, 4, 3, 3)) * 3 + 1
    assert_close(norm(x), torch.nn.InstanceNorm2d(4)(torch.from_numpy(x)))  # no stateful_call
    tracked = nn.InstanceNorm1d(3, affine=True, track_running_stats=True)
    assert list(tracked.state_dict()) == list(
        torch.nn.InstanceNorm1d(3, affine=True, track_running_stats=True).state_dict()
    )
    with pytest.raises(RuntimeError, match=r"InstanceNorm1d\(.*outside nn.stateful_call"):
        tracked(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\) or \(4, H, W\), got shape \(2, 4, 3\)"):
        norm(jnp.ones((2, 4, 3)))  # a rank InstanceNorm1d would take
    with pytest.raises(ValueError, match=r"more than 1 spatial element.*\(4, 1, 1\)"):
        norm(jnp.ones((4, 1, 1)))
