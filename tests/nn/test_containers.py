"""Sequential: order, names, indexing, key splitting, training mode and error context."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, random

import jparam as jp
from jparam import nn


def _model(key):
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        nn.Linear(4, 8, key=k1), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2, key=k2)
    )


def test_sequential_matches_torch_with_prefixed_names(torch, key):
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    k1, k2 = jax.random.split(key)
    jm = nn.Sequential(nn.Linear(4, 8, key=k1), nn.ReLU(), nn.Linear(8, 2, key=k2))
    jm = jm.load_state_dict(tm.state_dict())
    assert list(jm.state_dict()) == list(tm.state_dict())
    x = random((3, 4))
    assert_close(jm(x), tm(torch.from_numpy(x)))


def test_sequential_indexing_len_iteration_and_slices(key):
    model = _model(key)
    assert len(model) == 4
    assert isinstance(model[0], nn.Linear) and model[-1] is model.layers[3]
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Dropout", "Linear"]
    head = model.eval()[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and not head.training
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
    ]


def test_sequential_splits_its_key_among_layers_that_take_one(key):
    model = _model(key)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model(x)
    a, b = model(x, key=jax.random.key(1)), model(x, key=jax.random.key(2))
    assert not np.allclose(a, b)
    # Same key, same mask; jitted and eager arithmetic may differ in the last bit.
    np.testing.assert_allclose(
        jax.jit(lambda m, x, k: m(x, key=k))(model, x, key), model(x, key=key), rtol=1e-6
    )
    evaluated = model.eval()
    np.testing.assert_allclose(evaluated(x), evaluated(x, key=key))  # eval: no randomness
    assert nn.takes_key(model) and nn.takes_key(nn.Dropout()) and not nn.takes_key(nn.ReLU())


def _torch_and_ours(torch, key):
    """Five layers that all take (..., 4), so that any slice can run; PyTorch's weights."""
    tm = torch.nn.Sequential(
        torch.nn.Linear(4, 4),
        torch.nn.ReLU(),
        torch.nn.Linear(4, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 4),
    )
    k = jax.random.split(key, 3)
    jm = nn.Sequential(
        nn.Linear(4, 4, key=k[0]),
        nn.ReLU(),
        nn.Linear(4, 4, key=k[1]),
        nn.Tanh(),
        nn.Linear(4, 4, key=k[2]),
    )
    return tm, jm


SLICES = [
    slice(1, None),
    slice(None, 2),
    slice(1, 4),
    slice(None, None, 2),
    slice(-2, None),
    slice(1, None, 3),
    slice(3, 1),
]


@pytest.mark.parametrize("index", SLICES, ids=str)
def test_sequential_slices_keep_torch_names_and_load_torch_slices(torch, key, index):
    tm, fresh = _torch_and_ours(torch, key)
    jm = fresh.load_state_dict(tm.state_dict())
    tsub, jsub = tm[index], jm[index]
    assert isinstance(jsub, nn.Sequential)
    assert list(jsub.state_dict()) == list(tsub.state_dict())  # e.g. "2.weight", not "1.weight"
    assert [n for n, _ in jsub.named_parameters()] == [n for n, _ in tsub.named_parameters()]
    assert [n for n, _ in jsub.named_children()] == [n for n, _ in tsub.named_children()]
    assert [n for n, _ in jsub.named_modules()] == [n for n, _ in tsub.named_modules()]
    assert len(jsub) == len(tsub)
    assert [type(m).__name__ for m in jsub] == [type(m).__name__ for m in tsub]
    for i in range(-len(tsub), len(tsub)):  # integer indices count the layers that are there
        assert type(jsub[i]).__name__ == type(tsub[i]).__name__
    # A checkpoint of PyTorch's slice loads strictly into the slice of an untrained model.
    loaded = fresh[index].load_state_dict(tsub.state_dict())
    x = random((3, 4))
    assert_close(loaded(x), tsub(torch.from_numpy(x)))
    assert_close(jax.jit(lambda m, x: m(x))(loaded, x), tsub(torch.from_numpy(x)))
    nested = jsub[1:]
    assert list(nested.state_dict()) == list(tsub[1:].state_dict())
    assert len(nested) == len(tsub[1:])


def test_sequential_index_errors_and_reversed_slices(torch, key):
    tm, jm = _torch_and_ours(torch, key)
    for index in (5, -6):
        with pytest.raises(IndexError):
            tm[index]
        with pytest.raises(IndexError, match=f"index {index} is out of range"):
            jm[index]
    # Integer indices count the layers that are there, names keep the positions (as torch).
    assert jm[1:][3] is jm[4] and list(jm[1:][3:].state_dict()) == ["4.weight", "4.bias"]
    with pytest.raises(IndexError, match="out of range for a Sequential of 4"):
        jm[1:][4]
    # PyTorch reverses the names' order; jparam names are positions, so it refuses clearly.
    with pytest.raises(ValueError, match=r"negative step.*reversed\(list\(seq\)\)"):
        jm[::-1]
    assert len(jm[5:]) == 0 and jm[5:].state_dict() == {}
    assert jm[1:].training and not jm.eval()[1:].training


def test_nested_sequentials_get_distinct_keys(key):
    inner = nn.Sequential(nn.Dropout(0.5))
    model = nn.Sequential(inner, inner)
    x = jnp.ones(256)
    y = model(x, key=key)
    first = inner(x, key=jax.random.split(key, 2)[0])
    np.testing.assert_array_equal(y != 0, (first != 0) & (y != 0))  # a second, different mask
    assert (y == 0).mean() > 0.6  # two independent p=0.5 masks drop about 3/4


def test_train_eval_reach_every_layer(key):
    model = _model(key).eval()
    assert all(not m.training for m in model.modules())
    assert all(m.training for m in model.train().modules())


def test_sequential_rejects_functions_and_adds_error_context(key):
    with pytest.raises(TypeError, match=r"layer 1 is a function.*nn.ReLU\(\)"):
        nn.Sequential(nn.ReLU(), jax.nn.relu)
    model = nn.Sequential(nn.ReLU(), nn.Linear(3, 2, key=key))
    with pytest.raises(ValueError, match=r"Linear\(in_features=3") as info:
        model(jnp.ones((1, 4)))
    if sys.version_info >= (3, 11):
        assert "in layer 1 of Sequential: Linear" in "".join(info.value.__notes__)


def test_sequential_gradients_are_named_like_its_parameters(key):
    model = _model(key).eval()
    grads = jax.grad(lambda m: m(jnp.ones((1, 4))).sum())(model)
    assert [n for n, _ in jp.named_parameters(grads)] == [n for n, _ in model.named_parameters()]
