"""jp.grad / jp.value_and_grad: gradients for trainable parameters only, under every transform."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import jparam as jp


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class Net(jp.Module):
    layers: list
    scale: jp.Buffer

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x * self.scale


def make_net(key=0, sizes=(3, 4, 2)):
    keys = jax.random.split(jax.random.key(key), len(sizes))
    layers = [
        Linear(
            jp.Parameter(jax.random.normal(k, (o, i)) * 0.5),
            jp.Parameter(jnp.full((o,), 0.1)),
        )
        for k, i, o in zip(keys, sizes[:-1], sizes[1:])
    ]
    return Net(layers, jp.Buffer(jnp.asarray(2.0)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


X = jnp.linspace(-1, 1, 15).reshape(5, 3)
Y = jnp.ones((5, 2))


def as_dict(model):
    return {name: p.value for name, p in model.named_parameters()}


def dict_loss(params, x, y, scale=2.0):
    h = x
    for i in range(2):
        h = jnp.tanh(h @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"])
    return jnp.mean((h * scale - y) ** 2)


def test_gradients_equal_jax_grad_on_a_dict_model():
    model = make_net()
    grads = jp.grad(loss_fn)(model, X, Y)
    expected = jax.grad(dict_loss)(as_dict(model), X, Y)
    got = {name: g.value for name, g in jp.named_parameters(grads)}
    assert set(got) == set(expected)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


def test_value_and_grad_returns_the_loss():
    model = make_net()
    value, _ = jp.value_and_grad(loss_fn)(model, X, Y)
    np.testing.assert_allclose(value, dict_loss(as_dict(model), X, Y), rtol=1e-5)


def test_frozen_parameters_and_buffers_get_none():
    model = make_net().freeze("layers.0")
    grads = jp.grad(loss_fn)(model, X, Y)
    assert grads.layers[0].weight is None and grads.layers[0].bias is None
    assert grads.scale is None
    assert isinstance(grads.layers[1].weight, jp.Parameter)
    assert [n for n, _ in jp.named_parameters(grads)] == ["layers.1.weight", "layers.1.bias"]


def test_no_gradient_is_materialised_for_frozen_parameters():
    model = make_net().freeze("layers.0")
    jaxpr = jax.make_jaxpr(lambda m: jp.grad(loss_fn)(m, X, Y))(model)
    out_shapes = [v.aval.shape for v in jaxpr.jaxpr.outvars]
    # Only layers.1.weight (2, 4) and layers.1.bias (2,) come out: no (4, 3) zero gradient.
    assert sorted(out_shapes) == [(2,), (2, 4)]


def test_has_aux():
    model = make_net()
    (_value, aux), grads = jp.value_and_grad(lambda m, x: (loss_fn(m, x, Y), x.sum()), True)(
        model, X
    )
    grads2, aux2 = jp.grad(lambda m, x: (loss_fn(m, x, Y), x.sum()), has_aux=True)(model, X)
    assert aux == aux2 == X.sum()
    chex.assert_trees_all_close(grads, grads2)


def test_works_under_jit_vmap_and_scan():
    model = make_net()
    expected = jp.grad(loss_fn)(model, X, Y)
    jitted = jax.jit(jp.grad(loss_fn))(model, X, Y)
    chex.assert_trees_all_close(jitted, expected, rtol=1e-5, atol=1e-6)

    per_example = jax.vmap(jp.grad(loss_fn), in_axes=(None, 0, 0))(model, X[:, None], Y[:, None])
    chex.assert_trees_all_close(
        jax.tree.map(lambda g: g.mean(0), per_example), expected, rtol=1e-4, atol=1e-6
    )

    def body(m, xy):
        g = jp.grad(loss_fn)(m, *xy)
        return m, g

    _, scanned = jax.lax.scan(body, model, (X[None], Y[None]))
    chex.assert_trees_all_close(
        jax.tree.map(lambda g: g[0], scanned), expected, rtol=1e-5, atol=1e-6
    )
