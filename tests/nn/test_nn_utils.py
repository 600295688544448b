"""`jparam.nn.utils` against ``torch.nn.utils`` and ``torch.optim.swa_utils.AveragedModel``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, load_torch, numpy, random

import jparam as jp
from jparam import nn
from jparam.nn import utils

TOL = dict(rtol=1e-5, atol=1e-6)


def _models(torch: Any, key: jax.Array) -> tuple[jp.Module, Any]:
    """A small model with a BatchNorm (buffers, an int64 counter) and its PyTorch twin."""
    k1, k2 = jax.random.split(key)
    tm = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    )
    with torch.no_grad():
        for i, p in enumerate(tm.parameters()):
            p.copy_(torch.from_numpy(random(tuple(p.shape), seed=10 + i)))
    jm = nn.Sequential(
        nn.Linear(3, 4, key=k1), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, key=k2)
    )
    return load_torch(jm, tm), tm


def _random_grads(tm: Any, scale: float) -> dict[str, np.ndarray]:
    return {
        n: random(tuple(p.shape), seed=100 + i) * scale
        for i, (n, p) in enumerate(tm.named_parameters())
    }


# -- clip_grad_norm ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, "inf"])
@pytest.mark.parametrize("scale", [5.0, 0.01])  # clipped, and left alone
def test_clip_grad_norm_matches_torch_eager_and_jit(torch, key, norm_type, scale):
    jm, tm = _models(torch, key)
    grads = _random_grads(tm, scale)
    for n, p in tm.named_parameters():
        p.grad = torch.from_numpy(grads[n].copy())
    t_norm = torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.5, norm_type=norm_type)
    tree = jm.load_state_dict({**jm.state_dict(), **grads})  # a model-shaped gradient tree
    for run in (utils.clip_grad_norm, jax.jit(utils.clip_grad_norm, static_argnums=2)):
        clipped, norm = run(tree, 1.5, norm_type)
        assert_close(norm, t_norm, **TOL)
        ours = dict(jp.named_parameters(clipped))
        for n, p in tm.named_parameters():
            assert_close(ours[n].value, p.grad, **TOL)
        # buffers in the tree are not gradients: untouched
        assert_close(clipped[1].running_var.value, jm[1].running_var.value, rtol=0, atol=0)


def test_clip_grad_norm_on_a_split_dict_skips_frozen_parameters(torch, key):
    """Clipping sees trainable parameters only: the norm is torch's over those alone."""
    jm, tm = _models(torch, key)
    grads = _random_grads(tm, 3.0)
    jm = jm.freeze("0.*")
    trainable = [p for n, p in tm.named_parameters() if not n.startswith("0.")]
    for n, p in tm.named_parameters():
        p.grad = torch.from_numpy(grads[n].copy())
    t_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    params, _ = jp.split(jm, jp.trainable)
    flat = {n: jnp.asarray(grads[n]) for n in params}
    clipped, norm = jax.jit(utils.clip_grad_norm)(flat, 1.0)
    assert_close(norm, t_norm, **TOL)
    assert sorted(clipped) == sorted(n for n, _ in tm.named_parameters() if not n.startswith("0."))
    for n, p in tm.named_parameters():
        if n in clipped:
            assert_close(clipped[n], p.grad, **TOL)
    # a model-shaped tree with frozen Parameters: they keep their values and add nothing
    tree = jm.load_state_dict({**jm.state_dict(), **grads})
    clipped_tree, norm2 = utils.clip_grad_norm(tree, 1.0)
    assert_close(norm2, t_norm, **TOL)
    assert_close(clipped_tree[0].weight.value, grads["0.weight"], rtol=0, atol=0)


def test_clip_grad_norm_underscore_alias_returns_the_same_tuple():
    grads = {"w": jnp.full((4,), 3.0)}
    clipped, norm = utils.clip_grad_norm_(grads, 1.0)
    assert_close(norm, 6.0, **TOL)
    assert_close(clipped["w"], np.full(4, 3.0 / (6.0 + 1e-6), np.float32), **TOL)
    assert_close(grads["w"], np.full(4, 3.0, np.float32), rtol=0, atol=0)  # nothing in place


def test_clip_grad_norm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="norm_type must be positive"):
        utils.clip_grad_norm({"w": jnp.ones(2)}, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="norm_type must be a number"):
        utils.clip_grad_norm({"w": jnp.ones(2)}, 1.0, norm_type="fro")
    with pytest.raises(TypeError, match="max_norm must be a number"):
        utils.clip_grad_norm({"w": jnp.ones(2)}, "1")
    empty, norm = utils.clip_grad_norm({}, 1.0)
    assert empty == {} and float(norm) == 0.0


# -- parameters_to_vector / vector_to_parameters -------------------------------------------------


def test_parameters_to_vector_matches_torch(torch, key):
    jm, tm = _models(torch, key)
    jm = jm.freeze("3.bias")  # frozen parameters are included, as in PyTorch
    expected = torch.nn.utils.parameters_to_vector(tm.parameters())
    for run in (utils.parameters_to_vector, jax.jit(utils.parameters_to_vector)):
        assert_close(run(jm), expected, rtol=0, atol=0)


def test_vector_to_parameters_matches_torch_and_round_trips(torch, key):
    jm, tm = _models(torch, key)
    n = sum(p.numel() for p in tm.parameters())
    vec = random((n,), seed=3)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(vec), tm.parameters())
    for run in (utils.vector_to_parameters, jax.jit(utils.vector_to_parameters)):
        new = run(jnp.asarray(vec), jm)
        assert type(new) is type(jm)
        theirs = tm.state_dict()
        for name, value in new.state_dict().items():
            assert_close(value, theirs[name], rtol=0, atol=0)
        assert_close(utils.parameters_to_vector(new), vec, rtol=0, atol=0)


def test_vector_round_trip_on_a_split_dict(key):
    params = {"b": jnp.arange(3.0), "a": jnp.ones((2, 2))}
    vec = utils.parameters_to_vector(params)
    assert_close(vec, np.array([1, 1, 1, 1, 0, 1, 2], np.float32), rtol=0, atol=0)
    back = utils.vector_to_parameters(vec * 2, params)
    assert_close(back["b"], np.arange(3.0) * 2, rtol=0, atol=0)


def test_vector_to_parameters_refuses_wrong_length_dtype_and_mixed_dtypes(key):
    model = nn.Linear(3, 2, key=key)  # 8 parameters
    with pytest.raises(ValueError, match=r"shape \(8,\).*got \(9,\)"):
        utils.vector_to_parameters(jnp.zeros(9), model)
    with pytest.raises(ValueError, match=r"shape \(8,\).*got \(2, 4\)"):
        utils.vector_to_parameters(jnp.zeros((2, 4)), model)
    with pytest.raises(TypeError, match="dtype int32"):
        utils.vector_to_parameters(jnp.zeros(8, jnp.int32), model)
    mixed = model.replace(bias=model.bias.astype(jnp.bfloat16))
    with pytest.raises(TypeError, match="weight is float32, bias is bfloat16"):
        utils.parameters_to_vector(mixed)


# -- ema_update -------------------------------------------------------------------------------


def _randomise_state(torch: Any, tm: Any, seed: int) -> dict[str, np.ndarray]:
    """New random values for every float tensor of ``tm`` and a new counter, as numpy."""
    state = {}
    for i, (n, v) in enumerate(tm.state_dict().items()):
        if v.dtype == torch.int64:
            state[n] = np.array(seed * 7 + 3, np.int64)
        else:
            state[n] = random(tuple(v.shape), seed=seed * 100 + i)
            if n.endswith("running_var"):
                state[n] = np.abs(state[n]) + 0.5
    tm.load_state_dict({n: torch.from_numpy(v) for n, v in state.items()})
    return state


@pytest.mark.parametrize("use_buffers", [False, True])
def test_ema_update_matches_torch_averaged_model(torch, key, use_buffers):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 0.9
    jm, tm = _models(torch, key)
    averaged = AveragedModel(tm, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers)
    step = jax.jit(lambda e, m: utils.ema_update(e, m, decay, use_buffers=use_buffers))
    ema = None
    for t in range(4):
        state = _randomise_state(torch, tm, t)
        averaged.update_parameters(tm)
        model = jm.load_state_dict(state).freeze("3.*")  # frozen parameters are averaged too
        ema = model if ema is None else step(ema, model)
    theirs = averaged.module.state_dict()
    ours = ema.state_dict()
    assert list(ours) == list(theirs)
    for name, value in ours.items():
        assert np.asarray(value).dtype.kind == numpy(theirs[name]).dtype.kind, name
        assert_close(value, theirs[name], **TOL)
    # eager and jitted agree (to float tolerance)
    eager = utils.ema_update(ema, model, decay, use_buffers=use_buffers)
    jitted = step(ema, model)
    for (_, a), (_, b) in zip(eager.state_dict().items(), jitted.state_dict().items()):
        assert_close(a, b, **TOL)


def test_ema_update_refuses_bad_decay_and_different_models(key):
    model = nn.Linear(3, 2, key=key)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        utils.ema_update(model, model, 1.5)
    with pytest.raises(TypeError, match="decay must be a number"):
        utils.ema_update(model, model, "0.9")
    with pytest.raises(ValueError, match="different parameters"):
        utils.ema_update(model, nn.Linear(3, 2, bias=False, key=key), 0.9)
    with pytest.raises(ValueError, match=r"weight is float32\[2, 3\] in the EMA model"):
        utils.ema_update(model, nn.Linear(4, 2, key=key), 0.9)


def test_nn_utils_is_reachable_as_in_pytorch():
    assert jp.nn.utils.clip_grad_norm is utils.clip_grad_norm
