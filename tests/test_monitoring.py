"""jp.stats, jp.global_norm, jp.check_finite / jp.first_nonfinite: monitoring by name."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jparam as jp
from tests.test_training import make_net


def numpy_stats(x):
    x = np.asarray(x, np.float64)
    return {
        "norm": np.sqrt(np.sum(x**2)),
        "mean": x.mean(),
        "std": x.std(),
        "min": x.min(),
        "max": x.max(),
        "zero_fraction": np.mean(x == 0),
        "nonfinite": np.sum(~np.isfinite(x)),
    }


def assert_close_stats(got, want, rtol=1e-6):
    assert set(got) == set(jp.monitoring.STATS)
    for key in jp.monitoring.STATS:
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=rtol, err_msg=key)


def test_exact_values_on_small_known_arrays():
    a = jnp.array([[3.0, -4.0], [0.0, 1.0]])
    b = jnp.array([0.0, 0.0, 2.0])
    out = jp.stats({"a": a, "b": b})
    assert list(out) == ["a", "b"]
    # hand-computed for `a`: norm sqrt(26), mean 0, std sqrt(26/4), one zero of four
    chex.assert_trees_all_close(
        out["a"],
        {
            "norm": jnp.float32(np.sqrt(26.0)),
            "mean": jnp.float32(0.0),
            "std": jnp.float32(np.sqrt(6.5)),
            "min": jnp.float32(-4.0),
            "max": jnp.float32(3.0),
            "zero_fraction": jnp.float32(0.25),
            "nonfinite": jnp.int32(0),
        },
    )
    assert out["a"]["nonfinite"].dtype == jnp.int32
    assert_close_stats(out["b"], numpy_stats(b))
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 7)).astype(np.float32)
    c[0, :3] = 0
    assert_close_stats(jp.stats({"c": jnp.asarray(c)})["c"], numpy_stats(c), rtol=1e-5)


def test_nonfinite_count_and_propagation():
    x = jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf, 0.0])
    s = jp.stats({"x": x})["x"]
    assert int(s["nonfinite"]) == 3
    assert np.isnan(s["mean"]) and np.isnan(s["norm"])
    assert float(s["zero_fraction"]) == pytest.approx(0.2)


def test_integer_and_bool_arrays_computed_in_float32_and_never_nonfinite():
    s = jp.stats({"i": jnp.array([1, 2, 0, 5], jnp.int32), "m": jnp.array([True, False])})
    assert_close_stats(s["i"], numpy_stats([1, 2, 0, 5]))
    assert s["i"]["mean"].dtype == jnp.float32
    assert int(s["m"]["nonfinite"]) == 0
    assert float(s["m"]["zero_fraction"]) == 0.5


def test_names_match_state_dict_order_and_exclude_buffers_by_default():
    net = make_net()
    params = list(jp.named_parameters(net))
    assert list(jp.stats(net)) == [name for name, _ in params]
    assert list(jp.stats(net, include_buffers=True)) == list(jp.state_dict(net))
    for name, p in params:
        assert_close_stats(jp.stats(net)[name], numpy_stats(p.value), rtol=1e-5)
    assert float(jp.stats(net, include_buffers=True)["scale"]["max"]) == 2.0


def test_under_jit_identical_and_order_preserved():
    net = make_net()
    eager = jp.stats(net, include_buffers=True)
    jitted = jax.jit(lambda m: jp.stats(m, include_buffers=True))(net)
    assert list(jitted) == list(eager)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)  # jit vs eager: tolerance
    chex.assert_trees_all_close(
        jax.jit(jp.global_norm)(net), jp.global_norm(net), rtol=1e-5, atol=1e-6
    )


def test_jitted_stats_is_one_computation_with_no_callbacks():
    net = make_net()
    jaxpr = jax.make_jaxpr(jp.stats)(net)
    text = str(jaxpr)
    assert "callback" not in text and "debug" not in text
    # the stats arrive as outputs of the single computation (7 per parameter)
    assert len(jaxpr.out_avals) == 7 * len(list(jp.named_parameters(net)))


def test_on_grad_output_and_split_dicts():
    net = make_net().freeze("layers.0.bias")
    x = jnp.ones((2, 3))
    grads = jp.grad(lambda m, x: jnp.sum(m(x) ** 2))(net, x)
    params, _ = jp.split(net, jp.trainable)
    gstats = jp.stats(grads)
    # only trainable positions: the frozen bias and the buffer are absent
    assert (
        list(gstats)
        == list(params)
        == [n for n in jp.state_dict(net) if n != "layers.0.bias" and n != "scale"]
    )
    for name, g in jp.named_parameters(grads):
        assert_close_stats(gstats[name], numpy_stats(g.value), rtol=1e-5)
    # the split dict form of the same gradients gives the same statistics
    _, dict_grads = jax.value_and_grad(lambda p, rest: jnp.sum(jp.merge(p, rest)(x) ** 2))(
        *jp.split(net, jp.trainable)
    )
    chex.assert_trees_all_close(dict(jp.stats(dict_grads)), dict(gstats), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jp.global_norm(dict_grads), jp.global_norm(grads), rtol=1e-5)


def test_bf16_computed_in_float32():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(64, 33)), jnp.bfloat16)
    s = jp.stats(jp.Parameter(x))[""]  # a bare Parameter is named ""
    for key in ("norm", "mean", "std", "min", "max", "zero_fraction"):
        assert s[key].dtype == jnp.float32, key
    # exact to float32 rounding against float64 NumPy on the same (bf16-held) values; a bf16
    # result would be off by about 2**-9 relative
    assert_close_stats(s, numpy_stats(np.asarray(x.astype(jnp.float32))), rtol=2e-6)
    norm = jp.global_norm({"x": x})
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, s["norm"], rtol=1e-5)


def test_global_norm_equals_optax():
    net = make_net()
    arrays = [p.value for _, p in jp.named_parameters(net)]
    chex.assert_trees_all_close(jp.global_norm(net), optax.tree.norm(arrays), rtol=1e-5)
    with_buffers = [*arrays, net.scale.value]
    chex.assert_trees_all_close(
        jp.global_norm(net, include_buffers=True), optax.tree.norm(with_buffers), rtol=1e-5
    )
    assert float(jp.global_norm(net, include_buffers=True)) > float(jp.global_norm(net))
    params, _ = jp.split(net, jp.trainable)
    chex.assert_trees_all_close(jp.global_norm(params), optax.tree.norm(params), rtol=1e-5)
    assert float(jp.global_norm({})) == 0.0


def poison(net, name, index, value):
    old = jp.state_dict(net, keep_vars=True)[name]
    return jp.at(net, name).set(old.replace(old.value.at[index].set(value)))


def poisoned_net():
    """Parameters in order: layers.{0,1,2}.{weight,bias}; three of six hold NaN or Inf."""
    net = make_net(sizes=(3, 4, 4, 2))
    net = poison(net, "layers.1.weight", (0, 0), jnp.nan)
    net = poison(net, "layers.1.weight", (1, 1), jnp.nan)
    net = poison(net, "layers.2.weight", (0, 0), jnp.inf)
    return poison(net, "layers.2.bias", 1, -jnp.inf)


def test_check_finite_names_first_offending_path():
    net = poisoned_net()
    with pytest.raises(FloatingPointError) as err:
        jp.check_finite(net)
    assert str(err.value) == (
        "gradients: 'layers.1.weight' has 2 NaN and 0 Inf values (first of 3 offending parameters)"
    )
    net = poison(net, "layers.0.bias", 2, -jnp.inf)
    with pytest.raises(FloatingPointError, match=r"^params: 'layers\.0\.bias' has 0 NaN and 1 Inf"):
        jp.check_finite(net, what="params")


def test_check_finite_passes_clean_trees_and_skips_int_bool():
    net = make_net()
    assert jp.check_finite(net) is None
    assert jp.check_finite({"step": jnp.array(3), "mask": jnp.array([True])}) is None
    assert jp.check_finite({}) is None
    # a NaN buffer is ignored unless asked for
    bad = jp.at(net, "scale").set(jp.Buffer(jnp.asarray(jnp.nan)))
    jp.check_finite(bad)
    with pytest.raises(FloatingPointError, match=r"'scale' has 1 NaN and 0 Inf values \(the only"):
        jp.check_finite(bad, what="state", include_buffers=True)


def test_first_nonfinite_under_jit_reports_the_same_path():
    net = poisoned_net()
    with pytest.raises(FloatingPointError) as eager:
        jp.check_finite(net)
    report = jax.jit(jp.first_nonfinite)(net)
    assert isinstance(report, jp.NonFinite)
    assert report.code.shape == (4,) and report.code.dtype == jnp.int32
    np.testing.assert_array_equal(report.code, [2, 2, 0, 3])  # index among the 6 parameters
    with pytest.raises(FloatingPointError) as jitted:
        jp.check_finite(report, what="gradients")
    assert str(jitted.value) == str(eager.value)
    clean = jax.jit(jp.first_nonfinite)(make_net())
    np.testing.assert_array_equal(clean.code, [-1, 0, 0, 0])
    assert clean.message() is None
    jp.check_finite(clean)


def test_first_nonfinite_from_a_jitted_train_step():
    net = make_net()
    params, rest = jp.split(net, jp.trainable)

    @jax.jit
    def step(params, x):
        grads = jax.grad(lambda p: jnp.sum(jp.merge(p, rest)(x)))(params)
        return grads, jp.first_nonfinite(grads)

    _, report = step(params, jnp.ones((1, 3)))
    jp.check_finite(report)
    _, report = step(params, jnp.full((1, 3), jnp.nan))
    with pytest.raises(FloatingPointError, match=r"^gradients: 'layers\.0\.bias' has 4 NaN"):
        jp.check_finite(report)


def test_nonfinite_finite_is_a_scalar_bool_inside_jit_with_no_host_sync():
    clean, poisoned = make_net(), poisoned_net()
    finite = jax.jit(lambda t: jp.first_nonfinite(t).finite)
    for tree, want in [(clean, True), (poisoned, False), ({"ints": jnp.arange(2)}, True)]:
        out = finite(tree)
        assert out.shape == () and out.dtype == jnp.bool_ and bool(out) is want
    jaxpr = str(jax.make_jaxpr(lambda t: jp.first_nonfinite(t).finite)(poisoned))
    assert "callback" not in jaxpr and "debug" not in jaxpr
    # a report returned from jit answers too, and skips nothing it should not
    assert not bool(jax.jit(jp.first_nonfinite)(poisoned).finite)
    x = jnp.array([1.0, jnp.inf, 2.0])
    step = jax.jit(lambda x: jnp.where(jp.first_nonfinite({"x": x}).finite, x * 2, x))
    chex.assert_trees_all_equal(step(x), x)
    chex.assert_trees_all_equal(step(jnp.ones(3)), jnp.full(3, 2.0))


def test_empty_arrays():
    out = jp.stats({"e": jnp.zeros((0, 3)), "f": jnp.ones(2)})
    e = out["e"]
    assert float(e["norm"]) == 0.0 and int(e["nonfinite"]) == 0
    for key in ("mean", "std", "min", "max", "zero_fraction"):
        assert np.isnan(e[key]), key
    assert_close_stats(out["f"], numpy_stats([1.0, 1.0]))
    chex.assert_trees_all_equal(jax.jit(jp.stats)({"e": jnp.zeros((0,))})["e"], out["e"])
    assert float(jp.global_norm({"e": jnp.zeros((0,)), "f": jnp.ones(4)})) == 2.0
    jp.check_finite({"e": jnp.zeros((0,))})
    assert jp.stats({}) == {}


def test_complex_refused_with_name():
    with pytest.raises(TypeError, match="'z' is complex"):
        jp.stats({"z": jnp.ones(2, jnp.complex64)})


def test_int_and_bool_arrays_are_not_checked_or_indexed():
    tree = {
        "a_step": jnp.array([1, 2]),
        "b": jnp.array([1.0, jnp.nan]),
        "c_mask": jnp.ones(2, bool),
    }
    report = jax.jit(jp.first_nonfinite)(tree)
    assert report.names == ("b",)
    np.testing.assert_array_equal(report.code, [0, 1, 0, 1])
    with pytest.raises(FloatingPointError, match=r"^grads: 'b' has 1 NaN and 0 Inf values \(the"):
        jp.check_finite(report, what="grads")


# -- nn.Stacked: reports name the layer, as for the unrolled layers -------------------------------
class _Layers(jp.Module):
    """``h`` is a list of layers (unrolled) or an ``nn.Stacked`` of the same layers."""

    h: object

    def __call__(self, x):
        if isinstance(self.h, jp.nn.Stacked):
            return self.h(x)
        for layer in self.h:
            x = layer(x)
        return x


def _stacked_pair():
    keys = jax.random.split(jax.random.key(3), 4)
    layers = [jp.nn.Linear(3, 3, key=k) for k in keys]
    return _Layers(layers), _Layers(jp.nn.Stacked.from_layers(layers))


def _poison(grads, name, stacked_row=None):
    """``grads`` with NaN at entry [0, 1] and an Inf at [2, 2] of ``name`` (of one layer row)."""

    def bad(p):
        v = p.value
        where = (stacked_row,) if stacked_row is not None else ()
        return v.at[(*where, 0, 1)].set(jnp.nan).at[(*where, 2, 2)].set(jnp.inf)

    return jp.at(grads, name).apply(bad)


def test_nonfinite_in_a_stacked_array_names_its_layer_like_the_unrolled_model():
    unrolled, stacked = _stacked_pair()
    x = jnp.ones((2, 3))

    def loss(m):
        return jnp.sum(m(x) ** 2)

    gu, gs = jp.grad(loss)(unrolled), jp.grad(loss)(stacked)
    # layer 3's weight and layer 2's bias: "first" is state_dict order, layer by layer
    gu = _poison(gu, "h.3.weight")
    gu = jp.at(gu, "h.2.bias").apply(lambda p: p.value.at[0].set(jnp.nan))
    gs = _poison(gs, "h.layers.weight", stacked_row=3)
    gs = jp.at(gs, "h.layers.bias").apply(lambda p: p.value.at[2, 0].set(jnp.nan))
    with pytest.raises(FloatingPointError) as expected:
        jp.check_finite(gu)
    assert "'h.2.bias' has 1 NaN and 0 Inf values (first of 2" in str(expected.value)
    with pytest.raises(FloatingPointError) as got:
        jp.check_finite(gs)
    assert str(got.value) == str(expected.value)  # the layer index, not 'h.layers.weight'
    report = jax.jit(jp.first_nonfinite)(gs)  # inside jit: same report
    assert report.message() == str(expected.value)
    assert jp.first_nonfinite(jp.grad(loss)(stacked)).message() is None


def test_stats_of_a_stacked_model_are_per_layer_like_the_unrolled_model():
    unrolled, stacked = _stacked_pair()
    su, ss = jp.stats(unrolled), jp.stats(stacked)
    assert list(ss) == list(su) == list(stacked.state_dict())  # h.0.weight, h.0.bias, ...
    chex.assert_trees_all_close(dict(ss), dict(su), rtol=1e-5, atol=1e-6)
    assert_close_stats(ss["h.2.weight"], numpy_stats(unrolled.h[2].weight.value), rtol=1e-5)
    chex.assert_trees_all_close(
        jp.global_norm(stacked), jp.global_norm(unrolled), rtol=1e-5, atol=1e-6
    )
    jitted = jax.jit(jp.stats)(stacked)
    assert list(jitted) == list(ss)
    # what the TensorBoard logger pairs with these statistics, row by row
    assert [n for n, _ in jp.monitoring.named_arrays(stacked, False)] == list(ss)
