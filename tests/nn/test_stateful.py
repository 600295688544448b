"""stateful_call / update_state: state updates collected from a pure forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jparam as jp
from jparam import nn


class Counter(jp.Module):
    """A minimal custom stateful layer: counts its training-mode calls."""

    count: jp.Buffer

    def __init__(self):
        self.count = jp.Buffer(jnp.zeros((), int))

    def __call__(self, x):
        if not self.training:
            return x
        return nn.update_state(self, lambda m: (x, m.replace(count=m.count.replace(m.count + 1))))


class TwoCalls(jp.Module):
    """Calls one BatchNorm twice in a forward pass (a Buffer cannot sit at two places)."""

    bn: nn.BatchNorm1d

    def __init__(self):
        self.bn = nn.BatchNorm1d(2)

    def __call__(self, x):
        return self.bn(self.bn(x))


def test_training_call_outside_stateful_call_raises():
    bn = nn.BatchNorm1d(2)
    with pytest.raises(RuntimeError, match=r"outside nn.stateful_call.*`\.eval\(\)`"):
        bn(jnp.ones((3, 2)))
    with pytest.raises(RuntimeError, match="stateful_call"):
        jax.jit(lambda m, x: m(x))(nn.Sequential(nn.BatchNorm1d(2)), jnp.ones((3, 2)))


def test_eval_mode_and_stateless_models_come_back_unchanged(key):
    model = nn.Sequential(nn.Linear(2, 2, key=key), nn.BatchNorm1d(2)).eval()
    out, same = nn.stateful_call(model, jnp.ones((3, 2)))
    assert same is model
    np.testing.assert_allclose(out, model(jnp.ones((3, 2))))


def test_custom_stateful_layer_nested_in_containers_under_jit():
    model = nn.Sequential(Counter(), nn.Sequential(nn.ReLU(), Counter()))
    step = jax.jit(nn.stateful_call)
    for _ in range(3):
        _, model = step(model, jnp.ones(2))
    assert int(model[0].count.value) == 3 and int(model[1][1].count.value) == 3
    # Nothing outlives the trace: calling outside a stateful_call still raises.
    with pytest.raises(RuntimeError, match="stateful_call"):
        model(jnp.ones(2))


def test_layer_called_twice_accumulates_updates_like_torch(torch):
    # The second call sees the first call's statistics, as PyTorch's in-place update does.
    model = TwoCalls()
    x = np.array([[1.0, 2.0], [3.0, 6.0], [0.5, -1.0]], np.float32)
    y, new = nn.stateful_call(model, x)
    tbn = torch.nn.BatchNorm1d(2)
    ty = tbn(tbn(torch.from_numpy(x)))
    assert int(new.bn.num_batches_tracked.value) == 2 == int(tbn.num_batches_tracked)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    for name in ("running_mean", "running_var"):
        ours, theirs = getattr(new.bn, name).value, getattr(tbn, name).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert int(model.bn.num_batches_tracked.value) == 0  # the original is unchanged


def test_bound_methods_and_nested_calls():
    class Net(jp.Module):
        bn: nn.BatchNorm1d
        counter: Counter

        def __init__(self):
            self.bn = nn.BatchNorm1d(2)
            self.counter = Counter()

        def encode(self, x):
            return self.counter(self.bn(x))

        def __call__(self, x):
            y, inner = nn.stateful_call(self.counter, x)  # its own record
            return y, inner

    net = Net()
    _, new = nn.stateful_call(net.encode, jnp.ones((2, 2)))
    assert isinstance(new, Net)
    assert int(new.bn.num_batches_tracked.value) == 1 and int(new.counter.count.value) == 1
    (_, inner), outer = nn.stateful_call(net, jnp.ones(2))
    assert int(inner.count.value) == 1
    assert outer is net  # the inner call's update belongs to the inner call


def test_layer_from_outside_the_model_is_reported():
    stray = nn.BatchNorm1d(2)

    class Holder(jp.Module):
        def __call__(self, x):
            return stray(x)

    with pytest.raises(ValueError, match=r"BatchNorm1d\(num_features=2.*not part of the Holder"):
        nn.stateful_call(Holder(), jnp.ones((2, 2)))
    with pytest.raises(TypeError, match=r"expects a jp\.Module"):
        nn.stateful_call(lambda x: x, jnp.ones(2))
