"""jp.parametrize / jp.project and the constraints in jp.constraints."""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.scipy.linalg import expm

import jparam as jp
from jparam import nn

C = jp.constraints


class Fit(jp.Module):
    """``y = x @ w.T``: one weight, used through the array operators."""

    w: Any
    b: jp.Parameter

    def __init__(self, w, b=None):
        self.w = w
        self.b = jp.Parameter(jnp.zeros(w.shape[0])) if b is None else b

    def __call__(self, x):
        return x @ self.w.T + self.b


def normal(seed, shape, scale=1.0):
    return jax.random.normal(jax.random.key(seed), shape) * scale


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def fit(model, x, y, steps=100, lr=0.05, projected=False):
    """`steps` jitted adam steps on `mse`; returns the model and the losses before each step."""
    opt = jp.Optimizer(optax.adam(lr), model)

    @jax.jit
    def step(model, opt):
        loss, grads = jp.value_and_grad(mse)(model, x, y)
        model, opt = opt.update(model, grads)
        return (jp.project(model) if projected else model), opt, loss

    losses = []
    for _ in range(steps):
        model, opt, loss = step(model, opt)
        losses.append(float(loss))
    return model, losses


effective = jax.jit(lambda pz: pz.value)  # one compiled program per shape, not per op


def orthonormal_rows(w):
    w = np.asarray(w, np.float64)
    if w.shape[-2] > w.shape[-1]:
        w = np.swapaxes(w, -1, -2)
    return np.abs(w @ np.swapaxes(w, -1, -2) - np.eye(w.shape[-2])).max()


# -- reparametrization: names, values, composition ------------------------------------------


def test_names_state_dict_and_buffers():
    net = nn.Sequential(
        nn.Linear(5, 3, key=jax.random.key(0)), nn.ReLU(), nn.Linear(3, 2, key=jax.random.key(1))
    )
    net = jp.parametrize(net, "0.weight", C.orthogonal())
    net = jp.parametrize(net, "2.weight", C.weight_norm())
    assert [n for n, _ in net.named_parameters()] == [
        "0.bias",
        "0.weight.original",
        "2.bias",
        "2.weight.original.0",
        "2.weight.original.1",
    ]
    assert [n for n, _ in net.named_buffers()] == ["0.weight.parametrization.base"]
    assert list(net.state_dict()) == [
        "0.bias",
        "0.weight.original",
        "0.weight.parametrization.base",
        "2.bias",
        "2.weight.original.0",
        "2.weight.original.1",
    ]
    assert isinstance(net[0].weight, C.Parametrized)
    assert net[0].weight.shape == (3, 5) and net[0].weight.dtype == jnp.float32
    assert net[2].weight.original[0].shape == (2, 1)  # g: PyTorch's shape for dim=0
    assert net.num_parameters() == 3 + 15 + 2 + 2 + 6


def test_setting_a_raw_array_on_a_parametrized_name_raises_naming_the_raw_value():
    net = nn.Sequential(nn.Linear(4, 4, key=jax.random.key(0)))
    net = jp.parametrize(net, "0.weight", C.unit_norm())
    with pytest.raises(TypeError, match=r"'0\.weight' holds a Parametrized.*'0\.weight\.original'"):
        jp.at(net, "0.weight").set(jnp.ones((4, 4)))
    raw = jp.at(net, "0.weight.original").set(jnp.ones((4, 4)))  # the documented route
    assert isinstance(raw[0].weight, C.Parametrized)
    chex.assert_trees_all_close(raw[0].weight.value, jnp.full((4, 4), 0.5))


def test_registration_keeps_weights_that_meet_the_constraint():
    q = np.linalg.qr(np.asarray(normal(0, (5, 3))))[0].T  # (3, 5), orthonormal rows
    for w, c in [
        (q, C.orthogonal()),
        (q.T, C.orthogonal("cayley")),
        (jnp.abs(normal(1, (3, 4))) + 0.1, C.positive()),
        (jnp.abs(normal(1, (3, 4))) + 0.1, C.positive("exp")),
        (normal(2, (3, 4)), C.weight_norm()),
        (normal(2, (3, 4)), C.weight_norm(dim=None)),
        (q, C.unit_norm()),
    ]:
        pz = jp.parametrize(jp.Parameter(w), c)
        chex.assert_trees_all_close(effective(pz), jnp.asarray(w, jnp.float32), atol=2e-6)
    # weight norm's raw values are exactly g = ||w|| per row and v = w
    w = jnp.array([[3.0, 4.0], [0.0, 2.0]])
    pz = jp.parametrize(jp.Parameter(w), C.weight_norm())
    chex.assert_trees_all_equal(pz.original[0].value, jnp.array([[5.0], [2.0]]))
    chex.assert_trees_all_equal(pz.original[1].value, w)


def test_effective_weight_is_the_map_of_the_raw_value():
    raw = normal(3, (3, 4))
    for c, f in [
        (C.positive(), jax.nn.softplus),
        (C.positive("exp"), jnp.exp),
        (C.unit_norm(), lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)),
        (C.unit_norm(axis=0), lambda x: x / jnp.linalg.norm(x, axis=0, keepdims=True)),
    ]:
        pz = jp.parametrize(jp.Parameter(jnp.ones((3, 4))), c)
        pz = pz.replace(original=pz.original.replace(raw))
        chex.assert_trees_all_close(pz.value, f(raw), rtol=1e-5, atol=1e-6)


def test_array_behaviour_in_and_out_of_jit():
    pz = jp.parametrize(jp.Parameter(jnp.full((2, 3), 2.0)), C.positive("exp"))
    w = pz.value
    x = normal(4, (4, 2))
    chex.assert_trees_all_close(x @ pz, x @ w)
    chex.assert_trees_all_close(pz.T @ x.T, w.T @ x.T)
    chex.assert_trees_all_close(jp.Parameter(x) @ pz, x @ w)
    chex.assert_trees_all_close(pz + 1, w + 1)
    chex.assert_trees_all_close(1 - pz, 1 - w)
    chex.assert_trees_all_close(pz[1], w[1])
    chex.assert_trees_all_close(pz.sum(), w.sum())  # array methods forward to the value
    assert (pz.shape, pz.ndim, pz.size, pz.dtype) == ((2, 3), 2, 6, jnp.float32)
    np.testing.assert_allclose(np.asarray(pz), np.asarray(w))
    chex.assert_trees_all_close(jnp.tanh(pz), jnp.tanh(w))
    chex.assert_trees_all_close(
        jax.jit(lambda p: jnp.tanh(p))(pz), jnp.tanh(w), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(
        jax.jit(lambda p: jnp.einsum("ij,jk->ik", x, p))(pz), x @ w, rtol=1e-5, atol=1e-6
    )


def test_parametrize_inside_init_and_globs():
    class Model(jp.Module):
        a: nn.Linear
        b: nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.a = nn.Linear(3, 3, key=k1)
            self.b = nn.Linear(3, 3, key=k2)
            self.a = self.a.replace(weight=jp.parametrize(self.a.weight, C.unit_norm()))

        def __call__(self, x):
            return self.b(self.a(x))

    m = Model(jax.random.key(0))
    assert isinstance(m.a.weight, C.Parametrized) and isinstance(m.b.weight, jp.Parameter)
    both = jp.parametrize(Model(jax.random.key(0)).eval(), "b.*", jnp.tanh)
    assert [n for n, _ in both.named_parameters()] == [
        "a.bias",
        "a.weight.original",
        "b.weight.original",
        "b.bias.original",
    ]
    assert not both.b.weight.training  # a new node takes its parent's mode
    x = normal(5, (2, 3))
    raw = m.a.weight.original.value
    a = raw / jnp.linalg.norm(raw, axis=-1, keepdims=True)
    wb, bb = jnp.tanh(m.b.weight.value), jnp.tanh(m.b.bias.value)
    chex.assert_trees_all_close(
        both(x), (x @ a.T + m.a.bias.value) @ wb.T + bb, rtol=1e-5, atol=1e-6
    )


def test_composition_applies_maps_in_order():
    w = jp.Parameter(normal(6, (3, 4)))
    inner = jp.parametrize(w, C.weight_norm())
    outer = jp.parametrize(inner, C.spectral_norm(key=jax.random.key(0))).eval()
    eff = inner.value
    sigma = np.linalg.svd(np.asarray(eff), compute_uv=False)[0]
    chex.assert_trees_all_close(outer.value, eff / sigma, rtol=1e-4)
    names = [n for n, _ in jp.named_parameters(outer)]
    assert names == ["original.original.0", "original.original.1"]


def test_custom_parametrization_subclass_trains_and_keeps_constraint():
    class Symmetric(C.Parametrization):
        def __call__(self, x):
            return jnp.triu(x) + jnp.triu(x, 1).T

    target = normal(7, (3, 3))
    target = target + target.T
    x = normal(8, (32, 3))
    model = jp.parametrize(Fit(jp.Parameter(normal(9, (3, 3)))), "w", Symmetric())
    model, losses = fit(model, x, x @ target.T)
    w = model.w.value
    chex.assert_trees_all_equal(w, w.T)
    assert losses[-1] < 0.01 * losses[0]


# -- reparametrization: training --------------------------------------------------------------


@pytest.mark.parametrize(
    ("orthogonal_map", "shape"),
    [("matrix_exp", (3, 5)), ("matrix_exp", (5, 2)), ("cayley", (4, 4)), ("cayley", (3, 5))],
)
def test_orthogonal_holds_after_100_steps_and_loss_decreases(orthogonal_map, shape):
    x = normal(10, (32, shape[1]))
    target = normal(11, shape)
    model = Fit(jp.Parameter(normal(12, shape)))
    model = jp.parametrize(model, "w", C.orthogonal(orthogonal_map))
    assert orthonormal_rows(model.w.value) < 1e-5
    model, losses = fit(model, x, x @ target.T)
    assert orthonormal_rows(model.w.value) < 1e-5
    assert losses[-1] < 0.9 * losses[0]
    assert float(jnp.abs(model.w.original.value).max()) > 0.05  # the raw value did move


@pytest.mark.parametrize("kind", ["softplus", "exp"])
def test_positive_holds_after_100_steps_and_loss_decreases(kind):
    x = normal(13, (32, 4))
    target = normal(14, (3, 4))  # half its entries are negative: unreachable, approached
    model = jp.parametrize(Fit(jp.Parameter(jnp.full((3, 4), 0.5))), "w", C.positive(kind))
    model, losses = fit(model, x, x @ target.T)
    assert float(model.w.value.min()) > 0
    assert losses[-1] < 0.5 * losses[0]


def test_unit_norm_rows_hold_after_100_steps_and_loss_decreases():
    x = normal(15, (32, 4))
    target = normal(16, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(17, (3, 4)))), "w", C.unit_norm())
    model, losses = fit(model, x, x @ target.T)
    norms = np.linalg.norm(np.asarray(model.w.value, np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert losses[-1] < 0.9 * losses[0]


def test_weight_norm_trains_g_and_v():
    x = normal(18, (32, 4))
    target = normal(19, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(20, (3, 4)))), "w", C.weight_norm())
    model, losses = fit(model, x, x @ target.T)
    g = model.w.original[0].value
    norms = np.linalg.norm(np.asarray(model.w.value), axis=-1, keepdims=True)
    np.testing.assert_allclose(norms, np.abs(np.asarray(g)), rtol=1e-5)
    assert losses[-1] < 0.05 * losses[0]


def test_gradients_flow_to_raw_values_as_the_explicit_formula_says():
    x = normal(21, (8, 4))
    y = normal(22, (8, 3))
    raw = normal(23, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(24, (3, 4)))), "w", C.orthogonal())
    model = jp.at(model, "w.original").set(raw)
    base = model.w.parametrization.base.value

    def explicit(raw, b):
        a = jnp.tril(raw.T)  # tall (4, 3): pad to (4, 4)
        a = jnp.concatenate([a, jnp.zeros((4, 1))], axis=1)
        w = (base @ expm(a - a.T)[:, :3]).T
        return jnp.mean((x @ w.T + b - y) ** 2)

    grads = jax.jit(jp.grad(mse))(model, x, y)
    want = jax.jit(jax.grad(explicit, argnums=(0, 1)))(raw, model.b.value)
    chex.assert_trees_all_close(grads.w.original.value, want[0], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads.b.value, want[1], rtol=1e-5, atol=1e-6)
    assert grads.w.parametrization.base is None  # buffers get no gradient

    model = jp.parametrize(Fit(jp.Parameter(normal(24, (3, 4)))), "w", C.weight_norm())
    g, v = (p.value for p in model.w.original)
    grads = jp.grad(mse)(model, x, y)
    explicit_wn = lambda g, v: jnp.mean(
        (x @ (g * v / jnp.linalg.norm(v, axis=1, keepdims=True)).T - y) ** 2
    )
    want = jax.grad(explicit_wn, argnums=(0, 1))(g, v)
    chex.assert_trees_all_close(
        tuple(p.value for p in grads.w.original), want, rtol=1e-5, atol=1e-6
    )


@settings(max_examples=15)
@given(
    shape=st.sampled_from([(1, 1), (1, 4), (3, 5), (4, 4), (5, 2)]),
    scale=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**16),
    orthogonal_map=st.sampled_from(["matrix_exp", "cayley"]),
)
def test_orthogonal_map_is_orthogonal_for_any_raw_value(shape, scale, seed, orthogonal_map):
    pz = jp.parametrize(jp.Parameter(normal(seed, shape)), C.orthogonal(orthogonal_map))
    pz = pz.replace(original=pz.original.replace(normal(seed + 1, shape, scale)))
    assert orthonormal_rows(effective(pz)) < 1e-5


# -- spectral norm: stateful power iteration --------------------------------------------------


def test_spectral_norm_updates_vectors_through_stateful_call():
    x = normal(25, (16, 4))
    y = normal(26, (16, 3))
    model = jp.parametrize(
        Fit(jp.Parameter(normal(27, (3, 4)) * 3)), "w", C.spectral_norm(key=jax.random.key(1))
    )
    with pytest.raises(RuntimeError, match="stateful_call"):
        model(x)
    opt = jp.Optimizer(optax.adam(0.05), model)

    def loss_fn(model):
        out, model = nn.stateful_call(model, x)
        return jnp.mean((out - y) ** 2), model

    @jax.jit
    def step(model, opt):
        (loss, new), grads = jp.value_and_grad(loss_fn, has_aux=True)(model)
        model, opt = opt.update(new, grads)
        return model, opt, loss

    u0 = model.w.parametrization.u.value
    losses = []
    for _ in range(100):
        model, opt, loss = step(model, opt)
        losses.append(float(loss))
    assert not np.allclose(model.w.parametrization.u.value, u0)
    assert losses[-1] < 0.9 * losses[0]
    w = model.eval().w.value  # evaluation mode: the stored vectors, no update
    sigma = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
    assert abs(sigma - 1.0) < 1e-3
    assert [n for n, _ in model.named_buffers()] == ["w.parametrization.u", "w.parametrization.v"]


def test_orthogonal_and_orthogonalize_work_on_batches_of_matrices():
    w = normal(50, (2, 3, 4))
    pz = jp.parametrize(jp.Parameter(w), C.orthogonal())
    pz = pz.replace(original=pz.original.replace(normal(51, (2, 3, 4))))
    v = effective(pz)
    assert v.shape == (2, 3, 4) and orthonormal_rows(v) < 1e-5
    assert orthonormal_rows(C.orthogonalize()(w)) < 1e-5


def test_spectral_norm_of_a_vector_is_its_direction_without_state():
    pz = jp.parametrize(jp.Parameter(jnp.array([3.0, 4.0])), C.spectral_norm(key=jax.random.key(0)))
    assert pz.training and pz.parametrization.u is None  # no power iteration for 1-D
    chex.assert_trees_all_close(pz.value, jnp.array([0.6, 0.8]), rtol=1e-5, atol=1e-6)


def test_half_precision_copies_compute_the_map_and_keep_their_dtype():
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", C.orthogonal())
    for dtype in (jnp.bfloat16, jnp.float16):
        half = model.astype(dtype)
        assert half.w.dtype == dtype and half(jnp.ones((2, 4), dtype)).dtype == dtype
        chex.assert_trees_all_close(
            half.w.value.astype(jnp.float32),
            model.w.value,
            atol=1e-2 if dtype == jnp.bfloat16 else 2e-3,
        )


# -- PyTorch parity ----------------------------------------------------------------------------


def test_weight_norm_matches_pytorch_outputs_and_gradients():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tl = torch.nn.Linear(4, 3)
    layer = nn.Linear(4, 3, key=jax.random.key(0)).load_state_dict(tl.state_dict())
    torch.nn.utils.parametrizations.weight_norm(tl)
    layer = jp.parametrize(layer, "weight", C.weight_norm())
    sd = tl.state_dict()
    chex.assert_trees_all_close(
        layer.weight.original[0].value,
        sd["parametrizations.weight.original0"].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    chex.assert_trees_all_close(
        layer.weight.original[1].value, sd["parametrizations.weight.original1"].numpy()
    )
    with torch.no_grad():  # move g away from ||v|| so that both raw values matter
        tl.parametrizations.weight.original0.mul_(torch.tensor([[0.5], [2.0], [1.5]]))
    layer = layer.load_state_dict(
        {
            "bias": tl.bias,
            "weight.original.0": tl.parametrizations.weight.original0,
            "weight.original.1": tl.parametrizations.weight.original1,
        }
    )
    xn = np.array(normal(28, (5, 4)))
    xt = torch.from_numpy(xn)
    out = tl(xt)
    (out**2).sum().backward()
    chex.assert_trees_all_close(layer(xn), out.detach().numpy(), rtol=1e-5, atol=1e-6)
    grads = jp.grad(lambda m: jnp.sum(m(xn) ** 2))(layer)
    pt = tl.parametrizations.weight
    chex.assert_trees_all_close(
        grads.weight.original[0].value, pt.original0.grad.numpy(), rtol=1e-4, atol=1e-5
    )
    chex.assert_trees_all_close(
        grads.weight.original[1].value, pt.original1.grad.numpy(), rtol=1e-4, atol=1e-5
    )


def test_spectral_norm_matches_pytorch_in_training_and_evaluation():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    tl = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3), n_power_iterations=2)
    layer = nn.Linear(4, 3, key=jax.random.key(0))
    layer = jp.parametrize(layer, "weight", C.spectral_norm(2, key=jax.random.key(2)))
    sn = tl.parametrizations.weight
    layer = layer.load_state_dict(
        {
            "bias": tl.bias,
            "weight.original": sn.original,
            "weight.parametrization.u": sn[0]._u,
            "weight.parametrization.v": sn[0]._v,
        }
    )
    xn = np.array(normal(29, (5, 4)))
    xt = torch.from_numpy(xn)
    out, new = nn.stateful_call(layer, xn)
    chex.assert_trees_all_close(out, tl(xt).detach().numpy(), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        new.weight.parametrization.u.value, sn[0]._u.numpy(), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(
        new.weight.parametrization.v.value, sn[0]._v.numpy(), rtol=1e-5, atol=1e-6
    )
    tl.eval()
    chex.assert_trees_all_close(new.eval()(xn), tl(xt).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
def test_orthogonal_matches_pytorch_for_the_same_raw_value_and_base(orthogonal_map, shape):
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    tl = torch.nn.utils.parametrizations.orthogonal(
        torch.nn.Linear(shape[1], shape[0]), orthogonal_map=orthogonal_map
    )
    raw = np.array(normal(30, shape, 0.5))
    with torch.no_grad():
        tl.parametrizations.weight.original.copy_(torch.from_numpy(raw))
    layer = nn.Linear(shape[1], shape[0], key=jax.random.key(0))
    layer = jp.parametrize(layer, "weight", C.orthogonal(orthogonal_map))
    layer = layer.load_state_dict(
        {
            "bias": tl.bias,
            "weight.original": raw,
            "weight.parametrization.base": tl.parametrizations.weight[0].base,
        }
    )
    chex.assert_trees_all_close(effective(layer.weight), tl.weight.detach().numpy(), atol=2e-6)


def test_removed_model_loads_into_pytorch_with_the_same_outputs():
    torch = pytest.importorskip("torch")
    net = nn.Sequential(
        nn.Linear(4, 3, key=jax.random.key(0)), nn.Tanh(), nn.Linear(3, 2, key=jax.random.key(1))
    )
    net = jp.parametrize(net, "0.weight", C.orthogonal())
    net = jp.parametrize(net, "2.weight", C.spectral_norm(key=jax.random.key(3)))
    plain = C.remove(net)
    assert list(plain.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(p, jp.Parameter) for p in (plain[0].weight, plain[2].weight))
    tnet = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    tnet.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in plain.state_dict().items()})
    xn = np.array(normal(31, (5, 4)))
    want = tnet(torch.from_numpy(xn)).detach().numpy()
    chex.assert_trees_all_close(net.eval()(xn), want, rtol=1e-5, atol=1e-6)


# -- composition with the rest of the library --------------------------------------------------


def test_state_dict_save_load_round_trip(tmp_path):
    def build(seed):
        m = Fit(jp.Parameter(normal(seed, (3, 4))), jp.Parameter(jnp.full(3, 0.5 + seed)))
        m = jp.parametrize(m, "w", C.orthogonal())
        return jp.parametrize(m, "b", C.positive())

    model = build(0)
    model = jp.at(model, "w.original").set(normal(1, (3, 4), 0.3))
    other = build(5)
    loaded = other.load_state_dict(model.state_dict())
    chex.assert_trees_all_equal(loaded.w.value, model.w.value)
    chex.assert_trees_all_close(loaded.b.value, jnp.full(3, 0.5), rtol=1e-5, atol=1e-6)
    jp.save(tmp_path / "m.safetensors", model)
    from_file = jp.load(tmp_path / "m.safetensors", other)
    chex.assert_trees_all_equal(from_file.w.value, model.w.value)
    chex.assert_trees_all_equal(
        from_file.w.parametrization.base.value, model.w.parametrization.base.value
    )


def test_split_merge_and_no_retrace_when_values_change():
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", C.weight_norm())
    params, rest = jp.split(model, jp.trainable)
    assert list(params) == ["w.original.0", "w.original.1", "b"]
    chex.assert_trees_all_equal(jp.merge(params, rest).w.value, model.w.value)
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(1)
        return m(x)

    x = normal(1, (2, 4))
    f(model, x)
    f(jp.at(model, "w.original.1").set(normal(2, (3, 4))), x)
    assert len(traces) == 1


def test_freeze_and_optimizer_see_raw_parameters_only():
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", C.orthogonal())
    model = model.freeze("w")
    assert not model.w.original.trainable
    opt = jp.Optimizer(optax.sgd(0.1), model)
    assert opt.names == ("b",)
    grads = jp.grad(mse)(model, normal(1, (4, 4)), normal(2, (4, 3)))
    assert grads.w.original is None
    # a frozen weight parametrized later stays frozen, with its metadata
    pz = jp.parametrize(jp.Parameter(jnp.ones((2, 2)), trainable=False, lr_scale=0.5), C.positive())
    assert not pz.original.trainable and pz.original.metadata == {"lr_scale": 0.5}


def test_weight_norm_g_gets_replicated_axes_for_its_reduced_dimension():
    pz = jp.parametrize(jp.Parameter(jnp.ones((3, 4)), axes=("out", "in")), C.weight_norm())
    assert pz.original[0].metadata["axes"] == ("out", None)
    assert pz.original[1].metadata["axes"] == ("out", "in")
    flat = jp.parametrize(
        jp.Parameter(jnp.ones((3, 4)), axes=("out", "in")),
        lambda v: v.reshape(-1)[:12].reshape(3, 4),
    )
    assert flat.original.metadata["axes"] == ("out", "in")


def test_remove_leave_parametrized_false_and_errors():
    model = jp.parametrize(Fit(jp.Parameter(jnp.full((2, 2), 3.0))), "w", C.positive("exp"))
    raw = C.remove(model, "w", leave_parametrized=False)
    chex.assert_trees_all_close(raw.w.value, jnp.full((2, 2), np.log(3.0)))
    baked = C.remove(model, "w")
    chex.assert_trees_all_close(baked.w.value, jnp.full((2, 2), 3.0), rtol=1e-5)
    with pytest.raises(TypeError, match="'b' is a Parameter, not a parametrized weight"):
        C.remove(model, "b")
    wn = jp.parametrize(Fit(jp.Parameter(jnp.ones((2, 2)))), "w", C.weight_norm())
    with pytest.raises(ValueError, match=r"remove\('w', leave_parametrized=False\).*2 raw"):
        C.remove(wn, leave_parametrized=False)
    assert C.remove(Fit(jp.Parameter(jnp.ones((2, 2))))).w.shape == (2, 2)  # nothing to remove


def test_bad_input_errors_name_the_parameter():
    model = Fit(jp.Parameter(jnp.array([[1.0, -1.0]])))
    with pytest.raises(
        ValueError, match=r"parametrize\('w'\): positive\(\) needs a weight > 0.*1 of 2"
    ):
        jp.parametrize(model, "w", C.positive())
    with pytest.raises(
        ValueError, match=r"parametrize\('b'\): orthogonal\(\) needs a matrix.*f32\[1\]"
    ):
        jp.parametrize(model, "b", C.orthogonal())
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*f32\[1,2\] weight into f32\[1,1\]"):
        jp.parametrize(model, "w", lambda w: w[:, :1])
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*into f16\[1,2\]"):
        jp.parametrize(model, "w", lambda w: w.astype(jnp.float16))
    with pytest.raises(
        TypeError, match=r"parametrize\('0'\): expected a jp.Parameter.*found Linear"
    ):
        jp.parametrize(nn.Sequential(nn.Linear(2, 2, key=jax.random.key(0))), "0", C.unit_norm())
    with pytest.raises(TypeError, match="expects a jp.constraints.Parametrization"):
        jp.parametrize(model, "w", 3)
    used = jp.parametrize(jp.Parameter(jnp.ones((2, 2))), C.spectral_norm(key=jax.random.key(0)))
    with pytest.raises(TypeError, match=r"parametrize\(parameter\): this spectral_norm\(\) was"):
        jp.parametrize(jp.Parameter(jnp.ones((2, 2))), used.parametrization)
    with pytest.raises(ValueError, match="orthogonal_map"):
        C.orthogonal("householder")
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*project="):
        jp.parametrize(
            Fit(jp.Parameter(jnp.ones((2, 2)), project=C.nonnegative())), "w", C.positive()
        )


# -- projection ----------------------------------------------------------------------------------


def projected_fit(project, shape=(3, 5), seed=0):
    x = normal(40 + seed, (32, shape[1]))
    target = normal(41 + seed, shape)
    model = Fit(jp.Parameter(normal(42 + seed, shape), project=project))
    model = jp.project(model)
    return fit(model, x, x @ target.T, projected=True)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (5, 2)])
def test_orthogonalize_holds_after_100_steps_and_loss_decreases(shape):
    model, losses = projected_fit(C.orthogonalize(), shape)
    assert orthonormal_rows(model.w.value) < 1e-5
    assert losses[-1] < 0.9 * losses[0]


def test_normalize_rows_holds_after_100_steps_and_loss_decreases():
    model, losses = projected_fit(C.normalize())
    norms = np.linalg.norm(np.asarray(model.w.value, np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert losses[-1] < 0.9 * losses[0]


def test_nonnegative_and_clip_hold_after_100_steps_and_loss_decreases():
    model, losses = projected_fit(C.nonnegative())
    assert float(model.w.value.min()) >= 0.0
    assert float((model.w.value == 0).mean()) > 0.1  # the bound is active, not trivially met
    assert losses[-1] < 0.9 * losses[0]
    model, losses = projected_fit(C.clip(-0.2, 0.3))
    w = np.asarray(model.w.value)
    assert w.min() >= -0.2 and w.max() <= 0.3
    assert losses[-1] < 0.9 * losses[0]


def test_project_skips_frozen_and_plain_parameters():
    w = jnp.array([[-1.0, 2.0]])
    model = Fit(jp.Parameter(w, project=C.nonnegative(), trainable=False))
    chex.assert_trees_all_equal(jp.project(model).w.value, w)
    chex.assert_trees_all_equal(
        jp.project(model, include_frozen=True).w.value, jnp.array([[0.0, 2.0]])
    )
    plain = Fit(jp.Parameter(w))
    assert jp.project(plain).w is plain.w


def test_project_under_jit_matches_eager_and_equal_projections_share_a_trace():
    def build(w):
        return Fit(jp.Parameter(w, project=C.clip(0.0, 1.0)))

    w = normal(0, (3, 3))
    traces = []

    @jax.jit
    def f(m):
        traces.append(1)
        return jp.project(m)

    chex.assert_trees_all_equal(f(build(w)).w.value, jp.project(build(w)).w.value)
    f(build(w * 2))  # a new but equal clip(0.0, 1.0): same treedef, no retrace
    assert len(traces) == 1
    chex.assert_trees_all_equal(jp.project(build(w)).w.value, jnp.clip(w, 0.0, 1.0))


def test_project_errors_name_the_parameter():
    model = Fit(
        jp.Parameter(jnp.ones((2, 2))), jp.Parameter(jnp.ones(2), project=C.orthogonalize())
    )
    with pytest.raises(ValueError, match=r"jp.project: b: orthogonalize\(\) needs a matrix"):
        jp.project(model)
    model = Fit(jp.Parameter(jnp.ones((2, 2)), project=lambda w: w.astype(jnp.float16)))
    with pytest.raises(ValueError, match=r"jp.project: w: .* returned f16\[2,2\] for a f32\[2,2\]"):
        jp.project(model)
    model = Fit(jp.Parameter(jnp.ones((2, 2)), project=3))
    with pytest.raises(TypeError, match="jp.project: w: project=3 is not a function"):
        jp.project(model)
    with pytest.raises(ValueError, match="min=1 is greater than max=0"):
        C.clip(1, 0)


@settings(max_examples=25)
@given(
    shape=st.sampled_from([(1, 1), (1, 4), (3, 5), (4, 4), (5, 2)]),
    seed=st.integers(0, 2**16),
    which=st.sampled_from(["orthogonalize", "normalize", "nonnegative", "clip"]),
)
def test_projections_meet_their_constraint_and_are_idempotent(shape, seed, which):
    x = normal(seed, shape, 3.0)
    proj = {
        "orthogonalize": C.orthogonalize(),
        "normalize": C.normalize(),
        "nonnegative": C.nonnegative(),
        "clip": C.clip(-0.5, 0.5),
    }[which]
    proj = jax.jit(proj)
    y = proj(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    chex.assert_trees_all_close(proj(y), y, atol=2e-6)
    if which == "orthogonalize":
        assert orthonormal_rows(y) < 1e-5
    elif which == "normalize":
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(y, np.float64), axis=-1), 1.0, atol=1e-5
        )
    elif which == "nonnegative":
        chex.assert_trees_all_equal(y, jnp.maximum(x, 0))
    else:
        chex.assert_trees_all_equal(y, jnp.clip(x, -0.5, 0.5))
