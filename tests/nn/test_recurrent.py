"""`nn.RNN`, `nn.LSTM`, `nn.GRU` and the cells beyond the torch matrix: names, loading, init,
unbatched inputs, dropout between layers, input checks and compile cost.

Forward values and gradients against PyTorch are in tests/nn/test_torch_matrix.py.
"""

from __future__ import annotations

import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, numpy, random

import jparam as jp
from jparam import nn

K = jax.random.key(0)

CONFIGS = [
    ("RNN", {}),
    ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)),
    ("LSTM", dict(bias=False, proj_size=1)),
    ("RNNCell", {}),
    ("GRUCell", dict(bias=False)),
    ("LSTMCell", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_state_dict_names_shapes_and_order_are_torchs(torch, name, kwargs):
    theirs = getattr(torch.nn, name)(3, 4, **kwargs).state_dict()
    ours = getattr(nn, name)(3, 4, **kwargs, key=K).state_dict()
    assert list(ours) == list(theirs)
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]


def test_strict_loading_refuses_another_layout(torch):
    lstm = nn.LSTM(3, 4, 2, key=K)
    with pytest.raises(Exception, match=r"missing key: weight_ih_l1"):
        lstm.load_state_dict(torch.nn.LSTM(3, 4, 1).state_dict())
    with pytest.raises(Exception, match=r"unexpected key: weight_hr_l0"):
        lstm.load_state_dict(torch.nn.LSTM(3, 4, 2, proj_size=2).state_dict())
    with pytest.raises(Exception, match=r"unexpected key: weight_ih_l0_reverse"):
        lstm.load_state_dict(torch.nn.LSTM(3, 4, 2, bidirectional=True).state_dict())
    with pytest.raises(Exception, match=r"weight_ih_l0: shape mismatch"):
        lstm.load_state_dict(torch.nn.LSTM(5, 4, 2).state_dict())
    # GRU's gates are 3 * hidden: an LSTM checkpoint does not fit.
    with pytest.raises(Exception, match=r"shape mismatch, expected \(12, 3\), got \(16, 3\)"):
        nn.GRU(3, 4, key=K).load_state_dict(torch.nn.LSTM(3, 4).state_dict())


def test_loaded_values_are_torchs_and_the_model_pickles(torch):
    tm = torch.nn.GRU(3, 4, 2, bidirectional=True)
    jm = nn.GRU(3, 4, 2, bidirectional=True, key=K).load_state_dict(tm.state_dict())
    again = pickle.loads(pickle.dumps(jm))
    assert type(again) is type(jm) and isinstance(again, nn.GRU)
    for name, value in again.state_dict().items():
        assert_close(value, tm.state_dict()[name], atol=0, rtol=0)
    x = random((4, 2, 3))
    assert_close(again(x)[0], tm(torch.from_numpy(x))[0], atol=1e-6)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"])
def test_init_is_uniform_within_one_over_sqrt_hidden(name):
    hidden = 16
    layer = getattr(nn, name)(8, hidden, key=K)
    bound = 1 / math.sqrt(hidden)
    values = np.concatenate([np.ravel(p.value) for p in layer.parameters()])
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.9 * bound  # spread over the whole interval
    assert abs(values.mean()) < 0.2 * bound
    weights = [np.asarray(p.value) for p in layer.parameters()]
    assert not np.allclose(weights[0][:hidden], weights[1][:hidden, :8])  # distinct keys


def test_each_parameter_starts_different_and_seeded():
    a, b = nn.LSTM(4, 4, 2, key=K), nn.LSTM(4, 4, 2, key=K)
    c = nn.LSTM(4, 4, 2, key=jax.random.key(1))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(pa.value, pb.value, err_msg=name)
        assert not np.allclose(pa.value, pc.value), name


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(
    ("name", "kwargs", "state"),
    [
        ("RNN", dict(num_layers=2, bidirectional=True), (4, 4)),
        ("GRU", dict(batch_first=True), (1, 4)),  # batch_first has no effect unbatched
        ("LSTM", dict(proj_size=2, bidirectional=True), None),
    ],
)
def test_unbatched_input_matches_torch(torch, name, kwargs, state):
    tm = getattr(torch.nn, name)(3, 4, **kwargs)
    jm = getattr(nn, name)(3, 4, **kwargs, key=K).load_state_dict(tm.state_dict())
    x = random((5, 3))
    args = () if state is None else (random(state, seed=2),)
    out, h = jax.jit(lambda m, x, *a: m(x, *a))(jm, x, *args)
    t_out, t_h = tm(torch.from_numpy(x), *map(torch.from_numpy, args))
    width = kwargs.get("proj_size", 4) * (2 if kwargs.get("bidirectional") else 1)
    assert out.shape == tuple(t_out.shape) == (5, width)
    assert_close(out, t_out, atol=1e-6)
    for ours, theirs in zip(jax.tree_util.tree_leaves(h), t_h if name == "LSTM" else [t_h]):
        assert ours.shape == tuple(theirs.shape) and ours.ndim == 2
        assert_close(ours, theirs, atol=1e-6)


def test_unbatched_cells_match_torch(torch):
    tm = torch.nn.LSTMCell(3, 4)
    jm = nn.LSTMCell(3, 4, key=K).load_state_dict(tm.state_dict())
    x, h, c = random((3,)), random((4,), seed=1), random((4,), seed=2)
    ours = jm(x, (h, c))
    theirs = tm(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    for o, t in zip(ours, theirs):
        assert o.shape == (4,)
        assert_close(o, t, atol=1e-6)


def test_dropout_between_layers_in_training_is_torchs(torch):
    """With ``dropout=1`` every input of the second layer is zero, in PyTorch and here, so the
    training-mode result is deterministic and comparable; the key is required, eval ignores it."""
    tm = torch.nn.GRU(3, 4, 2, dropout=1.0).train()
    jm = nn.GRU(3, 4, 2, dropout=1.0, key=K).load_state_dict(tm.state_dict())
    x = random((5, 2, 3))
    with pytest.raises(ValueError, match=r"GRU\(.*training mode.*needs a PRNG key"):
        jm(x)
    out, h = jax.jit(lambda m, x, k: m(x, key=k))(jm, x, jax.random.key(3))
    t_out, t_h = tm(torch.from_numpy(x))
    assert_close(out, t_out, atol=1e-6)
    assert_close(h, t_h, atol=1e-6)
    # Evaluation: no dropout, no key needed, torch's eval output.
    t_out, _ = tm.eval()(torch.from_numpy(x))
    assert_close(jm.eval()(x)[0], t_out, atol=1e-6)


def test_dropout_draws_fresh_masks_per_key():
    lstm = nn.LSTM(3, 8, 2, dropout=0.5, key=K)
    x = random((6, 2, 3))
    run = jax.jit(lambda k: lstm(x, key=k)[0])
    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(jax.random.key(1)))


def test_dropout_with_one_layer_warns_like_torch(torch):
    with pytest.warns(UserWarning, match="num_layers"):
        nn.LSTM(3, 4, dropout=0.5, key=K)
    with pytest.warns(UserWarning, match="num_layers"):
        torch.nn.LSTM(3, 4, dropout=0.5)


def _count_eqns(jaxpr) -> int:
    return sum(1 for _ in jaxpr.eqns)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_program_size_does_not_grow_with_sequence_length(name):
    """One scan per layer and direction: the traced program for 100 steps is the one for 3."""
    layer = getattr(nn, name)(3, 4, 2, bidirectional=True, key=K)
    sizes = [
        _count_eqns(jax.make_jaxpr(lambda x: layer(x))(jnp.ones((n, 2, 3))).jaxpr) for n in (3, 100)
    ]
    assert sizes[0] == sizes[1]
    scans = [
        e
        for e in jax.make_jaxpr(lambda x: layer(x))(jnp.ones((100, 2, 3))).jaxpr.eqns
        if e.primitive.name == "scan"
    ]
    assert len(scans) == 4  # 2 layers x 2 directions


def test_zero_initial_state_is_the_default(torch):
    tm = torch.nn.LSTM(3, 4, batch_first=True)
    jm = nn.LSTM(3, 4, batch_first=True, key=K).load_state_dict(tm.state_dict())
    x = random((2, 5, 3))
    zeros = jnp.zeros((1, 2, 4))
    with_zeros = jm(x, (zeros, zeros))
    default = jm(x)
    for a, b in zip(jax.tree_util.tree_leaves(with_zeros), jax.tree_util.tree_leaves(default)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # two programs: not bitwise
    assert_close(default[0], tm(torch.from_numpy(x))[0], atol=1e-6)


def test_frozen_recurrent_weights_get_no_gradient():
    gru = nn.GRU(3, 4, 2, key=K).freeze("*_l0")
    params, rest = jp.split(gru, jp.trainable)
    assert sorted(params) == ["bias_hh_l1", "bias_ih_l1", "weight_hh_l1", "weight_ih_l1"]
    grads = jax.jit(jax.grad(lambda p, x: jnp.sum(jp.merge(p, rest)(x)[0])))(
        params, random((4, 2, 3))
    )
    assert sorted(grads) == sorted(params)
    assert all(np.abs(numpy(g)).sum() > 0 for g in grads.values())


BAD_INPUTS = [
    ("rnn-rank", lambda: nn.RNN(3, 4, key=K)(jnp.ones((2, 5, 2, 3))), r"RNN\(.*expected input"),
    ("rnn-features", lambda: nn.RNN(3, 4, key=K)(jnp.ones((5, 2, 2))), r"got shape \(5, 2, 2\)"),
    (
        "gru-state",
        lambda: nn.GRU(3, 4, 2, key=K)(jnp.ones((5, 2, 3)), jnp.ones((1, 2, 4))),
        r"GRU\(.*expected h_0 of shape \(2, 2, 4\).*got shape \(1, 2, 4\)",
    ),
    (
        "rnn-unbatched-state",
        lambda: nn.RNN(3, 4, key=K)(jnp.ones((5, 3)), jnp.ones((1, 1, 4))),
        r"expected h_0 of shape \(1, 4\) for this unbatched input",
    ),
    (
        "lstm-cell-state",
        lambda: nn.LSTM(3, 4, proj_size=2, key=K)(jnp.ones((5, 2, 3)), (jnp.ones((1, 2, 2)),) * 2),
        r"expected c_0 of shape \(1, 2, 4\)",
    ),
    (
        "lstm-hx-not-pair",
        lambda: nn.LSTM(3, 4, key=K)(jnp.ones((5, 2, 3)), jnp.ones((1, 2, 4))),
        r"expected hx=\(h_0, c_0\)",
    ),
    (
        "cell-state",
        lambda: nn.GRUCell(3, 4, key=K)(jnp.ones((2, 3)), jnp.ones((3, 4))),
        r"GRUCell\(.*expected hx of shape \(2, 4\)",
    ),
    ("cell-rank", lambda: nn.RNNCell(3, 4, key=K)(jnp.ones((1, 2, 3))), r"RNNCell\(.*expected"),
]


@pytest.mark.parametrize(("id", "call", "match"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_and_states_are_refused(id, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_constructor_needs_a_key():
    with pytest.raises(TypeError, match="LSTM needs a PRNG key"):
        nn.LSTM(3, 4, key=None)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("RNN", marks=pytest.mark.slow),
        pytest.param("GRU", marks=pytest.mark.slow),
        "LSTM",
    ],
)
def test_low_precision_model_runs_in_its_dtype(name):
    """A ``bfloat16`` model on ``bfloat16`` input stays ``bfloat16`` (the scan's carry keeps one
    dtype) and stays close to the float32 result; float32 states promote like ``jnp`` does."""
    layer = getattr(nn, name)(3, 4, 2, key=K)
    x = random((5, 2, 3))
    low = layer.bfloat16()
    out = jax.jit(lambda m, x: m(x))(low, x.astype(jnp.bfloat16))[0]
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(out), layer(x)[0], atol=0.05)
    h0 = jnp.zeros((2, 2, 4), jnp.float32)
    state = (h0, h0) if name == "LSTM" else h0
    assert low(x.astype(jnp.bfloat16), state)[0].dtype == jnp.float32
