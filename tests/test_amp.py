"""jp.amp: dtype policies, float32 master weights and gradients, dynamic loss scaling."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jparam as jp
from jparam import nn

BF16, F16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)


class Mixed(jp.Module):
    w: jp.Parameter
    frozen: jp.Parameter
    stats: jp.Buffer
    steps: jp.Buffer
    table: jax.Array = jp.field(plain_arrays=True)
    ids: jax.Array = jp.field(plain_arrays=True)

    def __init__(self):
        self.w = jp.Parameter(jnp.full((3, 2), 1.5), axes=("in", "out"))
        self.frozen = jp.Parameter(jnp.ones(2), trainable=False)
        self.stats = jp.Buffer(jnp.full(2, 0.1))
        self.steps = jp.Buffer(jnp.array(7))
        self.table = jnp.arange(4.0)
        self.ids = jnp.arange(3)

    def __call__(self, x):
        return (x @ self.w) * self.frozen + self.stats


class Reg(jp.Module):
    """``x @ w``: a linear regression whose float16 gradients underflow unless scaled."""

    w: jp.Parameter

    def __init__(self):
        self.w = jp.Parameter(jnp.zeros(8))

    def __call__(self, x):
        return x @ self.w


def tiny_loss(model, x, y):
    r = model(x) - y
    # 2**-20 makes every float16 gradient about 1e-8, below float16's smallest subnormal (6e-8)
    return jnp.mean(r * r) * jnp.asarray(2.0**-20, r.dtype)


REG_X = jax.random.normal(jax.random.key(0), (64, 8))
REG_W = jnp.linspace(-1.0, 1.0, 8)
REG_Y = REG_X @ REG_W


# -- Policy ------------------------------------------------------------------------------------


def test_policy_parse_names_and_defaults():
    p = jp.amp.Policy.parse("params=float32,compute=bfloat16,output=float32")
    assert (p.param, p.compute, p.output) == (F32, BF16, F32)
    assert jp.amp.Policy.parse("p=f32, c=f16, o=f16") == jp.amp.Policy("full", "half", F16)
    assert jp.amp.Policy.parse("compute=bf16") == jp.amp.Policy(compute=jnp.bfloat16)
    assert hash(jp.amp.Policy(compute="bf16")) == hash(jp.amp.Policy(compute=BF16))
    assert jp.amp.Policy(compute="bf16") != jp.amp.Policy(compute="f16")
    assert repr(p) == "Policy(param=float32, compute=bfloat16, output=float32)"


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("params=float32,compute", ValueError, "cannot read 'compute'"),
        ("weights=float32", ValueError, "cannot read 'weights=float32'"),
        ("compute=bf16,c=f16", ValueError, "compute is given twice"),
        ("compute=int8", TypeError, "compute dtype must be a floating dtype, got int8"),
        ("output=float128x", TypeError, "output dtype must be a floating dtype"),
        ("params=float64", ValueError, "64-bit types are disabled"),
    ],
)
def test_policy_parse_errors(spec, error, match):
    with pytest.raises(error, match=match):
        jp.amp.Policy.parse(spec)


def test_policy_is_a_frozen_dataclass():
    p = jp.amp.Policy(compute="bf16")
    assert dataclasses.is_dataclass(p)
    assert [f.name for f in dataclasses.fields(p)] == ["param", "compute", "output"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.compute = F16
    assert p.compute == BF16
    # dataclasses.replace re-reads the changed field like the constructor does
    assert dataclasses.replace(p, output="half") == jp.amp.Policy(compute=BF16, output=F16)
    assert (
        jax.jit(lambda x, p: p.cast_to_compute(x), static_argnums=1)(jnp.ones(2), p).dtype == BF16
    )


def test_cast_rule_parameters_and_plain_arrays_cast_buffers_and_integers_kept():
    m = jp.amp.Policy(compute="bf16").cast_to_compute(Mixed())
    assert m.w.dtype == BF16 and m.w.trainable and m.w.metadata == {"axes": ("in", "out")}
    assert m.frozen.dtype == BF16 and not m.frozen.trainable
    assert m.stats.dtype == F32  # buffers (BatchNorm statistics) stay in their dtype
    chex.assert_trees_all_equal(m, jp.astype(Mixed(), BF16, include_buffers=False))
    assert m.steps.dtype == jnp.int32 and m.ids.dtype == jnp.int32
    assert m.table.dtype == BF16
    chex.assert_trees_all_equal(m.w.value, jnp.full((3, 2), 1.5, BF16))
    back = jp.amp.Policy().cast_to_param(m)
    assert back.w.dtype == F32 and back.stats.dtype == F32
    # already in the target dtype: the very same objects come back
    same = jp.amp.Policy().cast_to_compute(Mixed())
    assert jax.tree.structure(same) == jax.tree.structure(Mixed())


def test_cast_inside_jit_and_of_inputs():
    policy = jp.amp.Policy(compute="f16", output="bf16")
    out = jax.jit(lambda t: policy.cast_to_output(policy.cast_to_compute(t)))(
        {"x": jnp.ones(2), "n": jnp.arange(2), "f": 1.0}
    )
    assert out["x"].dtype == BF16 and out["n"].dtype == jnp.int32


# -- value_and_grad ----------------------------------------------------------------------------


def test_bfloat16_compute_float32_grads_and_output_dtype():
    model = Mixed()
    x = jnp.arange(6.0).reshape(2, 3) / 6
    seen = []

    def loss_fn(m, x):
        seen.append((m.w.dtype, m.frozen.dtype, m.stats.dtype, x.dtype))
        return jnp.sum(m(x) ** 2)

    policy = jp.amp.Policy(compute="bf16")
    loss, grads, scale, finite = jax.jit(jp.amp.value_and_grad(loss_fn, policy))(model, x)
    assert seen == [(BF16, BF16, F32, BF16)]  # the forward ran in bfloat16, buffers in float32
    assert loss.dtype == F32 and scale is None and bool(finite)
    assert grads.w.dtype == F32 and grads.frozen is None and grads.stats is None
    assert grads.w.metadata == {"axes": ("in", "out")}
    # the same gradient in float32 throughout, to bfloat16's precision
    want_loss, want = jp.value_and_grad(loss_fn)(model, x)
    chex.assert_trees_all_close(grads.w.value, want.w.value, rtol=2e-2)
    chex.assert_trees_all_close(loss, want_loss, rtol=2e-2)
    # output dtype follows the policy; has_aux passes aux through
    (loss16, aux), _, _, _ = jp.amp.value_and_grad(
        lambda m, x: (loss_fn(m, x), x.dtype),
        jp.amp.Policy(compute="bf16", output="bf16"),
        has_aux=True,
    )(model, x)
    assert loss16.dtype == BF16 and aux == BF16


def test_cast_inputs_false_keeps_float32_arguments():
    seen = []

    def loss_fn(m, x):
        seen.append(x.dtype)
        return jnp.sum(m(x.astype(m.w.dtype)))

    policy = jp.amp.Policy(compute="bf16")
    jp.amp.value_and_grad(loss_fn, policy, cast_inputs=False)(Mixed(), jnp.ones((1, 3)))
    assert seen == [F32]


def test_master_weights_must_be_in_param_dtype():
    model = jp.amp.Policy(compute="bf16").cast_to_compute(Mixed())
    policy = jp.amp.Policy(compute="bf16")
    with pytest.raises(TypeError, match=r"'w' is bfloat16; cast the model once.*cast_to_param"):
        jp.amp.value_and_grad(lambda m, x: jnp.sum(m(x)), policy)(model, jnp.ones((1, 3)))
    with pytest.raises(TypeError, match="expects a jp.amp.Policy"):
        jp.amp.value_and_grad(tiny_loss, "bf16")
    with pytest.raises(TypeError, match="DynamicLossScale or None"):
        jp.amp.value_and_grad(tiny_loss, policy, 1024.0)


def train_regression(scaler, steps):
    policy = jp.amp.Policy(compute="float16")

    @jax.jit
    def step(model, opt, scaler):
        _, grads, scaler, finite = jp.amp.value_and_grad(tiny_loss, policy, scaler)(
            model, REG_X, REG_Y
        )
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        return model, opt, scaler, grads, finite

    model = Reg()
    opt = jp.Optimizer(optax.adam(0.05), model)
    finite = []
    for _ in range(steps):
        model, opt, scaler, grads, ok = step(model, opt, scaler)
        finite.append(bool(ok))
    return model, scaler, grads, finite


def test_float16_underflows_without_loss_scaling_and_converges_with_it():
    model, _, grads, finite = train_regression(None, 30)
    assert grads.w.dtype == F32
    assert all(finite)
    np.testing.assert_array_equal(np.asarray(grads.w.value), np.zeros(8, np.float32))
    np.testing.assert_array_equal(np.asarray(model.w.value), np.zeros(8, np.float32))

    model, scaler, grads, finite = train_regression(jp.amp.DynamicLossScale(), 300)
    # 2**16 overflows float16 (max 65504): the first step is skipped and the scale halves
    assert finite[:2] == [False, True]
    assert float(jnp.max(jnp.abs(grads.w.value))) > 0
    assert float(jnp.max(jnp.abs(model.w.value - REG_W))) < 1e-3
    assert float(scaler.loss_scale) == 2.0**15


def test_nonfinite_step_is_skipped_bitwise_and_scale_backs_off():
    model = Reg()
    model = jp.at(model, "w").set(jnp.array([0.0, -0.0, 1.0, -2.5, 3.0, 1e-30, 7.0, -1.0]))
    opt = jp.Optimizer(optax.adamw(0.1), model)
    policy = jp.amp.Policy(compute="float16")
    scaler = jp.amp.DynamicLossScale(256.0)

    @jax.jit
    def step(model, opt, scaler, x):
        _, grads, scaler, finite = jp.amp.value_and_grad(tiny_loss, policy, scaler)(model, x, REG_Y)
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        return model, opt, scaler, finite

    model1, opt1, scaler1, finite = step(model, opt, scaler, REG_X)  # one good step first
    assert bool(finite) and float(scaler1.loss_scale) == 256.0 and int(scaler1.counter) == 1
    bad_x = REG_X.at[3, 2].set(jnp.inf)
    model2, opt2, scaler2, finite = step(model1, opt1, scaler1, bad_x)
    assert not bool(finite)
    for a, b in zip(jax.tree.leaves((model1, opt1)), jax.tree.leaves((model2, opt2))):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # bitwise, -0.0 included
    assert float(scaler2.loss_scale) == 128.0 and int(scaler2.counter) == 0


# -- DynamicLossScale --------------------------------------------------------------------------


def test_scale_grows_after_interval_and_shrinks_on_nonfinite():
    s = jp.amp.DynamicLossScale(8.0, growth_interval=3)
    adjust = jax.jit(lambda s, ok: s.adjust(ok))
    scales, counters = [], []
    for ok in [True, True, True, True, False, True, True, True, False, False]:
        s = adjust(s, jnp.asarray(ok))
        scales.append(float(s.loss_scale))
        counters.append(int(s.counter))
    assert scales == [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 8.0, 16.0, 8.0, 4.0]
    assert counters == [1, 2, 0, 1, 0, 1, 2, 0, 0, 0]
    assert s.loss_scale.dtype == F32 and s.counter.dtype == jnp.int32


def test_scale_floor_and_growth_overflow():
    s = jp.amp.DynamicLossScale(2.0, backoff_factor=0.25, min_scale=1.0)
    s = s.adjust(jnp.asarray(False))
    assert float(s.loss_scale) == 1.0
    assert float(s.adjust(jnp.asarray(False)).loss_scale) == 1.0
    free = jp.amp.DynamicLossScale(2.0, backoff_factor=0.25, min_scale=0.0)
    assert float(free.adjust(jnp.asarray(False)).loss_scale) == 0.5
    top = jp.amp.DynamicLossScale(2.0**127, growth_interval=1)
    assert float(top.adjust(jnp.asarray(True)).loss_scale) == 2.0**127  # 2**128 is inf: kept


def test_scale_static_settings_survive_jit():
    s = jp.amp.DynamicLossScale(4.0, growth_factor=3.0, backoff_factor=0.25, min_scale=2.0)
    out = jax.jit(lambda s: s)(s)
    assert (out.growth_factor, out.backoff_factor, out.growth_interval, out.min_scale) == (
        3.0,
        0.25,
        2000,
        2.0,
    )
    names = [jp.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(s)[0]]
    assert names == ["loss_scale.value", "counter.value"]  # two Buffers, the only leaves


def test_loss_scale_is_a_module_that_walks_and_saves_its_buffers():
    s = jp.amp.DynamicLossScale(64.0, growth_interval=3).adjust(jnp.asarray(True))
    assert isinstance(s, jp.Module)
    assert [n for n, _ in jp.named_buffers(s)] == ["loss_scale", "counter"]
    assert list(jp.named_parameters(s)) == []
    state = s.state_dict()
    assert list(state) == ["loss_scale", "counter"]
    assert (float(state["loss_scale"]), int(state["counter"])) == (64.0, 1)
    resumed = jp.amp.DynamicLossScale(64.0, growth_interval=3).load_state_dict(state)
    chex.assert_trees_all_equal(resumed, s)
    # two more finite steps reach the interval: the resumed count carries on
    resumed = resumed.adjust(jnp.asarray(True)).adjust(jnp.asarray(True))
    assert (float(resumed.loss_scale), int(resumed.counter)) == (128.0, 0)
    # the settings are static fields: part of the treedef, not arrays
    assert jax.tree.structure(s) != jax.tree.structure(jp.amp.DynamicLossScale(growth_interval=4))
    assert jax.tree.structure(s) == jax.tree.structure(resumed)


def test_loss_scale_is_never_trained():
    model = {"reg": Reg(), "scaler": jp.amp.DynamicLossScale(8.0)}
    grads = jp.grad(lambda m: m["scaler"].scale(tiny_loss(m["reg"], REG_X, REG_Y)))(model)
    assert grads["scaler"].loss_scale is None and grads["scaler"].counter is None
    assert grads["reg"].w.shape == (8,)


def test_jitted_step_keeps_one_trace_as_the_scale_changes():
    traces = []
    policy = jp.amp.Policy(compute="float16")

    @jax.jit
    def step(model, opt, scaler, x):
        traces.append(1)
        _, grads, scaler, finite = jp.amp.value_and_grad(tiny_loss, policy, scaler)(model, x, REG_Y)
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        return model, opt, scaler

    model = Reg()
    opt, scaler = jp.Optimizer(optax.sgd(0.1), model), jp.amp.DynamicLossScale(growth_interval=2)
    scales = []
    for x in [REG_X, REG_X, REG_X.at[0, 0].set(jnp.nan), REG_X, REG_X]:
        model, opt, scaler = step(model, opt, scaler, x)
        scales.append(float(scaler.loss_scale))
    # 2**16 overflows float16: backoff, a growth after 2 finite steps, a NaN batch, then growth
    assert scales == [2.0**15, 2.0**15, 2.0**14, 2.0**14, 2.0**15]
    assert len(traces) == 1
    assert isinstance(scaler, jp.amp.DynamicLossScale) and scaler.growth_interval == 2


def test_update_if_finite_and_adjust_take_a_first_nonfinite_report():
    model = Reg()
    opt = jp.Optimizer(optax.sgd(0.1), model)

    @jax.jit
    def step(model, opt, scaler, x):
        grads = jp.grad(tiny_loss)(model, x, REG_Y)
        report = jp.first_nonfinite(grads)
        model, opt = jp.amp.update_if_finite(opt, model, grads, report)
        return model, opt, scaler.adjust(report), report

    scaler = jp.amp.DynamicLossScale(8.0)
    model1, opt1, scaler1, report = step(model, opt, scaler, REG_X)
    assert report.message() is None and int(scaler1.counter) == 1
    assert not np.array_equal(model1.w.value, model.w.value)
    model2, opt2, scaler2, report = step(model1, opt1, scaler1, REG_X.at[0, 0].set(jnp.inf))
    assert report.message().startswith("gradients: 'w' has ")
    chex.assert_trees_all_equal((model2, opt2), (model1, opt1))
    assert float(scaler2.loss_scale) == 4.0
    want = r"^update_if_finite expects a scalar bool array or a jp.first_nonfinite report, got f"
    with pytest.raises(TypeError, match=want):
        jp.amp.update_if_finite(opt, model, None, jnp.float32(1.0))


def test_scale_and_unscale():
    s = jp.amp.DynamicLossScale(1024.0)
    scaled = s.scale(jnp.asarray(3.0, F16))
    assert scaled.dtype == F32 and float(scaled) == 3072.0
    grads = {"a": jp.Parameter(jnp.full(2, 2048.0)), "b": None, "h": jnp.full(2, 512.0, F16)}
    out = s.unscale(grads)
    assert out["b"] is None and isinstance(out["a"], jp.Parameter)
    chex.assert_trees_all_equal(out["a"].value, jnp.full(2, 2.0))
    assert out["h"].dtype == F16 and float(out["h"][0]) == 0.5
    with pytest.raises(TypeError, match="expected a floating loss"):
        s.scale(jnp.asarray(3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"growth_factor": 1.0}, ValueError, "growth_factor must be > 1"),
        ({"backoff_factor": 1.0}, ValueError, r"backoff_factor must be in \(0, 1\)"),
        ({"growth_interval": 0}, ValueError, "growth_interval must be >= 1"),
        ({"growth_interval": 2.0}, TypeError, "growth_interval must be an int"),
        ({"min_scale": -1.0}, ValueError, "min_scale must be >= 0"),
        ({"init_scale": jnp.ones(2)}, TypeError, "init_scale must be a floating scalar"),
    ],
)
def test_loss_scale_arguments_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        jp.amp.DynamicLossScale(**kwargs)


def test_adjust_wants_a_scalar_bool():
    with pytest.raises(TypeError, match="expects a scalar bool"):
        jp.amp.DynamicLossScale().adjust(jnp.ones(2, bool))


def torch_update(scale, tracker, found_inf, growth, backoff, interval):
    """PyTorch's ``_amp_update_scale_`` written out (ATen's AmpKernels), in float32."""
    if found_inf:
        return np.float32(scale * np.float32(backoff)), 0
    if tracker + 1 == interval:
        grown = np.float32(scale * np.float32(growth))
        return (grown if np.isfinite(grown) else scale), 0
    return scale, tracker + 1


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.booleans(), min_size=1, max_size=30),
    growth=st.sampled_from([1.5, 2.0, 4.0]),
    backoff=st.sampled_from([0.125, 0.5, 0.75]),
    interval=st.integers(1, 5),
    init=st.sampled_from([1.0, 3.0, 2.0**16, 2.0**126]),
)
def test_adjust_matches_pytorch_update_rule(steps, growth, backoff, interval, init):
    s = jp.amp.DynamicLossScale(
        init, growth_factor=growth, backoff_factor=backoff, growth_interval=interval, min_scale=0
    )
    scale, tracker = np.float32(init), 0
    for ok in steps:
        s = s.adjust(jnp.asarray(ok))
        scale, tracker = torch_update(scale, tracker, not ok, growth, backoff, interval)
        assert float(s.loss_scale) == float(scale) and int(s.counter) == tracker


def test_same_scale_sequence_as_torch_grad_scaler():
    torch = pytest.importorskip("torch")
    steps = [True, False, True, True, True, False, False, True, True, True, True, True, True]
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    settings_ = {"growth_factor": 2.0, "backoff_factor": 0.25, "growth_interval": 3}
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0, **settings_)
    ours = jp.amp.DynamicLossScale(64.0, **settings_)
    for ok in steps:
        opt.zero_grad()
        loss = (p * (1.0 if ok else float("inf"))).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        grads = ours.unscale({"p": jnp.full(2, 1.0 if ok else jnp.inf) * ours.loss_scale})
        ours = ours.adjust(jp.first_nonfinite(grads).finite)
        assert float(ours.loss_scale) == scaler.get_scale()


# -- helpers -----------------------------------------------------------------------------------


def test_all_finite_is_gone_first_nonfinite_answers():
    assert not hasattr(jp.amp, "all_finite")
    assert "all_finite" not in jp.amp.__all__


def test_select_tree():
    a, b = {"x": jnp.ones(2), "n": jnp.arange(2)}, {"x": jnp.zeros(2), "n": jnp.arange(2) + 5}
    chex.assert_trees_all_equal(jp.amp.select_tree(jnp.asarray(False), a, b), b)
    chex.assert_trees_all_equal(jp.amp.select_tree(jnp.asarray(True), a, b), a)
    with pytest.raises(ValueError, match=r"'x' is float32\[2\] in one tree and bfloat16\[2\]"):
        jp.amp.select_tree(jnp.asarray(True), a, {**b, "x": b["x"].astype(BF16)})
    with pytest.raises(ValueError, match="differ in structure"):
        jp.amp.select_tree(jnp.asarray(True), a, {"x": b["x"]})
    with pytest.raises(TypeError, match="expects a scalar bool"):
        jp.amp.select_tree(jnp.ones(()), a, b)


def test_batchnorm_statistics_stay_float32_and_master_weights_survive():
    net = nn.Sequential(nn.Linear(3, 4, key=jax.random.key(1)), nn.BatchNorm1d(4))
    x = jax.random.normal(jax.random.key(2), (16, 3))
    policy = jp.amp.Policy(compute="bf16")

    def loss_with_stats(model, x):
        y, model = nn.stateful_call(model, x)
        assert y.dtype == BF16
        return jnp.mean(y.astype(jnp.float32) ** 2), model

    @jax.jit
    def step(model, opt, x):
        (_, new), grads, _, finite = jp.amp.value_and_grad(loss_with_stats, policy, has_aux=True)(
            model, x
        )
        assert new[0].weight.dtype == BF16  # the returned copy holds compute-dtype parameters
        model = jp.amp.take_buffers(model, new)
        return jp.amp.update_if_finite(opt, model, grads, finite)

    opt = jp.Optimizer(optax.sgd(0.1), net)
    net2, _ = step(net, opt, x)
    assert {str(v.dtype) for v in net2.state_dict().values()} == {"float32", "int32"}
    assert int(net2[1].num_batches_tracked.value) == 1
    mean = jnp.mean(x @ net[0].weight.value.T + net[0].bias.value, axis=0)
    chex.assert_trees_all_close(net2[1].running_mean.value, 0.1 * mean, atol=2e-3)
    assert not np.array_equal(net2[0].weight.value, net[0].weight.value)
    with pytest.raises(ValueError, match="buffer 'running_mean' is float32"):
        jp.amp.take_buffers(net[1], net[1].replace(running_mean=jp.Buffer(jnp.zeros(4, BF16))))
