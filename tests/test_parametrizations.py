"""jp.parametrize, jp.remove_parametrizations and the maps in jp.parametrizations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fitting import Fit, fit, mse, normal, orthonormal_rows
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.scipy.linalg import expm

import jparam as jp
from jparam import nn

P = jp.parametrizations

effective = jax.jit(lambda pz: pz.value)  # one compiled program per shape, not per op


# -- reparametrization: names, values, composition ------------------------------------------


def test_names_state_dict_and_buffers():
    net = nn.Sequential(
        nn.Linear(5, 3, key=jax.random.key(0)), nn.ReLU(), nn.Linear(3, 2, key=jax.random.key(1))
    )
    net = jp.parametrize(net, "0.weight", P.orthogonal())
    net = jp.parametrize(net, "2.weight", P.weight_norm())
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
    assert isinstance(net[0].weight, P.Parametrized)
    assert net[0].weight.shape == (3, 5) and net[0].weight.dtype == jnp.float32
    assert net[2].weight.original[0].shape == (2, 1)  # g: PyTorch's shape for dim=0
    assert net.num_parameters() == 3 + 15 + 2 + 2 + 6


def test_setting_a_raw_array_on_a_parametrized_name_raises_naming_the_raw_value():
    net = nn.Sequential(nn.Linear(4, 4, key=jax.random.key(0)))
    net = jp.parametrize(net, "0.weight", P.unit_norm())
    with pytest.raises(TypeError, match=r"'0\.weight' holds a Parametrized.*'0\.weight\.original'"):
        jp.at(net, "0.weight").set(jnp.ones((4, 4)))
    raw = jp.at(net, "0.weight.original").set(jnp.ones((4, 4)))  # the documented route
    assert isinstance(raw[0].weight, P.Parametrized)
    chex.assert_trees_all_close(raw[0].weight.value, jnp.full((4, 4), 0.5))


def test_registration_keeps_weights_that_meet_the_constraint():
    q = np.linalg.qr(np.asarray(normal(0, (5, 3))))[0].T  # (3, 5), orthonormal rows
    for w, c in [
        (q, P.orthogonal()),
        (q.T, P.orthogonal("cayley")),
        (jnp.abs(normal(1, (3, 4))) + 0.1, P.positive()),
        (jnp.abs(normal(1, (3, 4))) + 0.1, P.positive("exp")),
        (normal(2, (3, 4)), P.weight_norm()),
        (normal(2, (3, 4)), P.weight_norm(dim=None)),
        (q, P.unit_norm()),
    ]:
        pz = jp.parametrize(jp.Parameter(w), c)
        chex.assert_trees_all_close(effective(pz), jnp.asarray(w, jnp.float32), atol=2e-6)
    # weight norm's raw values are exactly g = ||w|| per row and v = w
    w = jnp.array([[3.0, 4.0], [0.0, 2.0]])
    pz = jp.parametrize(jp.Parameter(w), P.weight_norm())
    chex.assert_trees_all_equal(pz.original[0].value, jnp.array([[5.0], [2.0]]))
    chex.assert_trees_all_equal(pz.original[1].value, w)


def test_effective_weight_is_the_map_of_the_raw_value():
    raw = normal(3, (3, 4))
    for c, f in [
        (P.positive(), jax.nn.softplus),
        (P.positive("exp"), jnp.exp),
        (P.unit_norm(), lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)),
        (P.unit_norm(axis=0), lambda x: x / jnp.linalg.norm(x, axis=0, keepdims=True)),
    ]:
        pz = jp.parametrize(jp.Parameter(jnp.ones((3, 4))), c)
        pz = pz.replace(original=pz.original.replace(raw))
        chex.assert_trees_all_close(pz.value, f(raw), rtol=1e-5, atol=1e-6)


def test_array_behaviour_in_and_out_of_jit():
    pz = jp.parametrize(jp.Parameter(jnp.full((2, 3), 2.0)), P.positive("exp"))
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
            self.a = self.a.replace(weight=jp.parametrize(self.a.weight, P.unit_norm()))

        def __call__(self, x):
            return self.b(self.a(x))

    m = Model(jax.random.key(0))
    assert isinstance(m.a.weight, P.Parametrized) and isinstance(m.b.weight, jp.Parameter)
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
    inner = jp.parametrize(w, P.weight_norm())
    outer = jp.parametrize(inner, P.spectral_norm(key=jax.random.key(0))).eval()
    eff = inner.value
    sigma = np.linalg.svd(np.asarray(eff), compute_uv=False)[0]
    chex.assert_trees_all_close(outer.value, eff / sigma, rtol=1e-4)
    names = [n for n, _ in jp.named_parameters(outer)]
    assert names == ["original.original.0", "original.original.1"]


def test_custom_parametrization_subclass_trains_and_keeps_constraint():
    class Symmetric(P.Parametrization):
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
    model = jp.parametrize(model, "w", P.orthogonal(orthogonal_map))
    assert orthonormal_rows(model.w.value) < 1e-5
    model, losses = fit(model, x, x @ target.T)
    assert orthonormal_rows(model.w.value) < 1e-5
    assert losses[-1] < 0.9 * losses[0]
    assert float(jnp.abs(model.w.original.value).max()) > 0.05  # the raw value did move


@pytest.mark.parametrize("kind", ["softplus", "exp"])
def test_positive_holds_after_100_steps_and_loss_decreases(kind):
    x = normal(13, (32, 4))
    target = normal(14, (3, 4))  # half its entries are negative: unreachable, approached
    model = jp.parametrize(Fit(jp.Parameter(jnp.full((3, 4), 0.5))), "w", P.positive(kind))
    model, losses = fit(model, x, x @ target.T)
    assert float(model.w.value.min()) > 0
    assert losses[-1] < 0.5 * losses[0]


def test_unit_norm_rows_hold_after_100_steps_and_loss_decreases():
    x = normal(15, (32, 4))
    target = normal(16, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(17, (3, 4)))), "w", P.unit_norm())
    model, losses = fit(model, x, x @ target.T)
    norms = np.linalg.norm(np.asarray(model.w.value, np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert losses[-1] < 0.9 * losses[0]


def test_weight_norm_trains_g_and_v():
    x = normal(18, (32, 4))
    target = normal(19, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(20, (3, 4)))), "w", P.weight_norm())
    model, losses = fit(model, x, x @ target.T)
    g = model.w.original[0].value
    norms = np.linalg.norm(np.asarray(model.w.value), axis=-1, keepdims=True)
    np.testing.assert_allclose(norms, np.abs(np.asarray(g)), rtol=1e-5)
    assert losses[-1] < 0.05 * losses[0]


def test_gradients_flow_to_raw_values_as_the_explicit_formula_says():
    x = normal(21, (8, 4))
    y = normal(22, (8, 3))
    raw = normal(23, (3, 4))
    model = jp.parametrize(Fit(jp.Parameter(normal(24, (3, 4)))), "w", P.orthogonal())
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

    model = jp.parametrize(Fit(jp.Parameter(normal(24, (3, 4)))), "w", P.weight_norm())
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
    pz = jp.parametrize(jp.Parameter(normal(seed, shape)), P.orthogonal(orthogonal_map))
    pz = pz.replace(original=pz.original.replace(normal(seed + 1, shape, scale)))
    assert orthonormal_rows(effective(pz)) < 1e-5


# -- spectral norm: stateful power iteration --------------------------------------------------


def test_spectral_norm_updates_vectors_through_stateful_call():
    x = normal(25, (16, 4))
    y = normal(26, (16, 3))
    model = jp.parametrize(
        Fit(jp.Parameter(normal(27, (3, 4)) * 3)), "w", P.spectral_norm(key=jax.random.key(1))
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


def test_orthogonal_works_on_batches_of_matrices():
    pz = jp.parametrize(jp.Parameter(normal(50, (2, 3, 4))), P.orthogonal())
    pz = pz.replace(original=pz.original.replace(normal(51, (2, 3, 4))))
    v = effective(pz)
    assert v.shape == (2, 3, 4) and orthonormal_rows(v) < 1e-5


def test_spectral_norm_of_a_vector_is_its_direction_without_state():
    pz = jp.parametrize(jp.Parameter(jnp.array([3.0, 4.0])), P.spectral_norm(key=jax.random.key(0)))
    assert pz.training and pz.parametrization.u is None  # no power iteration for 1-D
    chex.assert_trees_all_close(pz.value, jnp.array([0.6, 0.8]), rtol=1e-5, atol=1e-6)


def test_half_precision_copies_compute_the_map_and_keep_their_dtype():
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", P.orthogonal())
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
    layer = jp.parametrize(layer, "weight", P.weight_norm())
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
    layer = jp.parametrize(layer, "weight", P.spectral_norm(2, key=jax.random.key(2)))
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
    layer = jp.parametrize(layer, "weight", P.orthogonal(orthogonal_map))
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
    net = jp.parametrize(net, "0.weight", P.orthogonal())
    net = jp.parametrize(net, "2.weight", P.spectral_norm(key=jax.random.key(3)))
    plain = jp.remove_parametrizations(net)
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
        m = jp.parametrize(m, "w", P.orthogonal())
        return jp.parametrize(m, "b", P.positive())

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
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", P.weight_norm())
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
    model = jp.parametrize(Fit(jp.Parameter(normal(0, (3, 4)))), "w", P.orthogonal())
    model = model.freeze("w")
    assert not model.w.original.trainable
    opt = jp.Optimizer(optax.sgd(0.1), model)
    assert opt.names == ("b",)
    grads = jp.grad(mse)(model, normal(1, (4, 4)), normal(2, (4, 3)))
    assert grads.w.original is None
    # a frozen weight parametrized later stays frozen, with its metadata
    pz = jp.parametrize(jp.Parameter(jnp.ones((2, 2)), trainable=False, lr_scale=0.5), P.positive())
    assert not pz.original.trainable and pz.original.metadata == {"lr_scale": 0.5}


def test_weight_norm_g_gets_replicated_axes_for_its_reduced_dimension():
    pz = jp.parametrize(jp.Parameter(jnp.ones((3, 4)), axes=("out", "in")), P.weight_norm())
    assert pz.original[0].metadata["axes"] == ("out", None)
    assert pz.original[1].metadata["axes"] == ("out", "in")
    flat = jp.parametrize(
        jp.Parameter(jnp.ones((3, 4)), axes=("out", "in")),
        lambda v: v.reshape(-1)[:12].reshape(3, 4),
    )
    assert flat.original.metadata["axes"] == ("out", "in")


def test_remove_parametrizations_leave_parametrized_false_and_errors():
    model = jp.parametrize(Fit(jp.Parameter(jnp.full((2, 2), 3.0))), "w", P.positive("exp"))
    raw = jp.remove_parametrizations(model, "w", leave_parametrized=False)
    chex.assert_trees_all_close(raw.w.value, jnp.full((2, 2), np.log(3.0)))
    baked = jp.remove_parametrizations(model, "w")
    chex.assert_trees_all_close(baked.w.value, jnp.full((2, 2), 3.0), rtol=1e-5)
    with pytest.raises(
        TypeError, match="remove_parametrizations: 'b' is a Parameter, not a parametrized weight"
    ):
        jp.remove_parametrizations(model, "b")
    wn = jp.parametrize(Fit(jp.Parameter(jnp.ones((2, 2)))), "w", P.weight_norm())
    with pytest.raises(
        ValueError, match=r"remove_parametrizations\('w', leave_parametrized=False\).*2 raw"
    ):
        jp.remove_parametrizations(wn, leave_parametrized=False)
    plain = Fit(jp.Parameter(jnp.ones((2, 2))))
    assert jp.remove_parametrizations(plain).w.shape == (2, 2)  # nothing to remove


def test_bad_input_errors_name_the_parameter():
    model = Fit(jp.Parameter(jnp.array([[1.0, -1.0]])))
    with pytest.raises(
        ValueError, match=r"parametrize\('w'\): positive\(\) needs a weight > 0.*1 of 2"
    ):
        jp.parametrize(model, "w", P.positive())
    with pytest.raises(
        ValueError, match=r"parametrize\('b'\): orthogonal\(\) needs a matrix.*f32\[1\]"
    ):
        jp.parametrize(model, "b", P.orthogonal())
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*f32\[1,2\] weight into f32\[1,1\]"):
        jp.parametrize(model, "w", lambda w: w[:, :1])
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*into f16\[1,2\]"):
        jp.parametrize(model, "w", lambda w: w.astype(jnp.float16))
    with pytest.raises(
        TypeError, match=r"parametrize\('0'\): expected a jp.Parameter.*found Linear"
    ):
        jp.parametrize(nn.Sequential(nn.Linear(2, 2, key=jax.random.key(0))), "0", P.unit_norm())
    with pytest.raises(TypeError, match="expects a jp.parametrizations.Parametrization"):
        jp.parametrize(model, "w", 3)
    used = jp.parametrize(jp.Parameter(jnp.ones((2, 2))), P.spectral_norm(key=jax.random.key(0)))
    with pytest.raises(TypeError, match=r"parametrize\(parameter\): this spectral_norm\(\) was"):
        jp.parametrize(jp.Parameter(jnp.ones((2, 2))), used.parametrization)
    with pytest.raises(ValueError, match="orthogonal_map"):
        P.orthogonal("householder")
    with pytest.raises(ValueError, match=r"parametrize\('w'\).*project="):
        jp.parametrize(
            Fit(jp.Parameter(jnp.ones((2, 2)), project=jp.projections.nonnegative())),
            "w",
            P.positive(),
        )


def test_one_spelling_for_each_name():
    # PyTorch's names at the top level; the submodules list only their maps (issue 14).
    assert jp.remove_parametrizations is P.remove_parametrizations
    assert jp.parametrize is P.parametrize
    assert P.__all__ == [
        "Parametrization",
        "Parametrized",
        "orthogonal",
        "positive",
        "spectral_norm",
        "unit_norm",
        "weight_norm",
    ]
    assert not hasattr(P, "remove") and not hasattr(jp, "constraints")
