"""Training with optax: jp.Optimizer, plain optax on jp.split, parameter groups, buffers."""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jparam as jp
from tests.test_training import Linear, Net, X, Y, loss_fn, make_net

TRANSFORMS = {
    "sgd+momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "lion": lambda: optax.lion(1e-3),
    "adafactor": lambda: optax.adafactor(1e-2),
    "clip+adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    "schedule-free": lambda: optax.contrib.schedule_free_adamw(1e-2),
}


def optimizer_step(model, opt, x, y):
    loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def split_step(tx, params, rest, opt_state, x, y):
    def on_params(params, rest, x, y):
        return loss_fn(jp.merge(params, rest), x, y)

    loss, grads = jax.value_and_grad(on_params)(params, rest, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_trains_through_jp_optimizer(name):
    model = make_net().freeze("layers.0")
    opt = jp.Optimizer(TRANSFORMS[name](), model)
    step = jax.jit(optimizer_step)
    losses = []
    for _ in range(30):
        model, opt, loss = step(model, opt, X, Y)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_matches_plain_optax_on_split(name):
    tx = TRANSFORMS[name]()
    model = make_net().freeze("layers.0")
    params, rest = jp.split(model, jp.trainable)
    state = tx.init(params)
    step = jax.jit(functools.partial(split_step, tx))
    opt = jp.Optimizer(tx, model)
    jstep = jax.jit(optimizer_step)
    for _ in range(5):
        params, state, _ = step(params, rest, state, X, Y)
        model, opt, _ = jstep(model, opt, X, Y)
    got = {n: p.value for n, p in model.named_parameters() if p.trainable}
    chex.assert_trees_all_close(got, params, rtol=1e-5, atol=1e-6)


def test_frozen_bitwise_unchanged_trainable_changed_buffers_untouched_after_50_steps():
    model = make_net().freeze("layers.0")
    before = model.state_dict()
    opt = jp.Optimizer(optax.adamw(1e-2, weight_decay=0.5), model)
    step = jax.jit(optimizer_step)
    for _ in range(50):
        model, opt, _ = step(model, opt, X, Y)
    after = model.state_dict()
    for name in ("layers.0.weight", "layers.0.bias", "scale"):
        np.testing.assert_array_equal(after[name], before[name])
    for name in ("layers.1.weight", "layers.1.bias"):
        assert not np.array_equal(after[name], before[name])
    assert model.layers[0].weight.trainable is False  # flags survive the step


def test_optimizer_state_only_for_trainable_parameters_exact_count():
    # 90% frozen: a 90-unit backbone and a 10-unit head.
    backbone = Linear(jp.Parameter(jnp.ones((9, 9))), jp.Parameter(jnp.zeros(9)))
    head = Linear(jp.Parameter(jnp.ones((1, 9))), jp.Parameter(jnp.zeros(1)))
    model = Net([backbone, head], jp.Buffer(jnp.asarray(1.0))).freeze("layers.0")
    assert model.num_parameters() == 100 and model.num_parameters(trainable_only=True) == 10
    opt = jp.Optimizer(optax.adam(1e-3), model)
    float_elements = sum(
        x.size for x in jax.tree.leaves(opt.state) if jnp.issubdtype(x.dtype, jnp.floating)
    )
    assert float_elements == 2 * 10  # adam's mu and nu for the head only
    params, _ = jp.split(model, jp.trainable)
    assert sum(x.size for x in jax.tree.leaves(params)) == 10


def test_no_retrace_across_steps_and_one_retrace_after_freeze():
    traces = []

    def counted(model, opt, x, y):
        traces.append(1)
        return optimizer_step(model, opt, x, y)

    step = jax.jit(counted)
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    for _ in range(5):
        model, opt, _ = step(model, opt, X, Y)
    assert len(traces) == 1
    model = model.freeze("layers.0")
    opt = jp.Optimizer(optax.adam(1e-2), model)
    for _ in range(5):
        model, opt, _ = step(model, opt, X, Y)
    assert len(traces) == 2


def test_donation_is_accepted_for_the_documented_step():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    step = jax.jit(optimizer_step, donate_argnums=(0, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model, opt, loss = step(model, opt, X, Y)
        jax.block_until_ready(loss)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "donated" in m.lower()], messages


def test_optimizer_rejects_mismatched_models_and_gradients():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    with pytest.raises(ValueError, match="build a new jp.Optimizer"):
        opt.update(model.freeze("layers.1"), jp.grad(loss_fn)(model, X, Y))
    grads = jp.grad(loss_fn)(model.freeze("layers.1"), X, Y)
    with pytest.raises(ValueError, match="no gradient for trainable parameter 'layers.1.weight'"):
        opt.update(model, grads)
    bad = {n: jnp.zeros(3) for n in opt.names}
    with pytest.raises(ValueError, match="gradient for 'layers.0.weight' has shape"):
        opt.update(model, bad)
    with pytest.raises(TypeError, match="GradientTransformation"):
        jp.Optimizer("adam", model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        jp.Optimizer(optax.adam(1e-3), model.freeze())


def test_optimizer_accepts_name_keyed_gradients():
    model = make_net()
    opt = jp.Optimizer(optax.sgd(0.1), model)
    params, rest = jp.split(model, jp.trainable)
    grads = jax.grad(lambda p: loss_fn(jp.merge(p, rest), X, Y))(params)
    new1, _ = opt.update(model, grads)
    new2, _ = opt.update(model, jp.grad(loss_fn)(model, X, Y))
    chex.assert_trees_all_close(new1.state_dict(), new2.state_dict(), rtol=1e-5, atol=1e-6)


def test_optimizer_state_dict_round_trip_by_name():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    model, opt, _ = jax.jit(optimizer_step)(model, opt, X, Y)
    sd = opt.state_dict()
    assert "0.mu.layers.0.weight" in sd and "0.nu.layers.1.bias" in sd and "0.count" in sd
    fresh = jp.Optimizer(optax.adam(1e-2), model)
    loaded = fresh.load_state_dict({k: np.asarray(v) for k, v in sd.items()})
    chex.assert_trees_all_equal(loaded.state, opt.state)
    with pytest.raises(jp.StateDictError, match="missing key: 0.mu.layers.0.weight"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "0.mu.layers.0.weight"})


def test_optimizer_is_a_pytree_with_static_transformation():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    leaves, treedef = jax.tree.flatten(opt)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.tx is opt.tx and rebuilt.names == opt.names
    assert "state" in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(opt)[0][0][0])


def test_lbfgs_extra_arguments():
    model = make_net()
    tx = optax.lbfgs()
    params, rest = jp.split(model, jp.trainable)

    def f(p):
        return loss_fn(jp.merge(p, rest), X, Y)

    @jax.jit  # eager, each step's line search takes seconds
    def split_step(params, state):
        value, grads = jax.value_and_grad(f)(params)
        updates, state = tx.update(grads, state, params, value=value, grad=grads, value_fn=f)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    first = f(params)
    for _ in range(5):
        params, state = split_step(params, state)
    assert f(params) < first

    @jax.jit
    def model_step(model, opt):
        value, grads = jp.value_and_grad(loss_fn)(model, X, Y)
        return opt.update(
            model, grads, value=value, grad=grads, value_fn=lambda m: loss_fn(m, X, Y)
        )

    opt = jp.Optimizer(tx, model)
    for _ in range(5):
        model, opt = model_step(model, opt)
    assert loss_fn(model, X, Y) < first


# -- parameter groups -------------------------------------------------------------------------


def test_mask_by_globs_for_weight_decay_on_both_patterns():
    model = make_net()
    mask = jp.optim.mask(model, exclude="*.bias")
    params, _rest = jp.split(model, jp.trainable)
    assert mask(params) == {
        "layers.0.weight": True,
        "layers.0.bias": False,
        "layers.1.weight": True,
        "layers.1.bias": False,
    }
    # Decay only (learning rate 0 for the gradient part): biases must not move.
    tx = optax.chain(optax.masked(optax.add_decayed_weights(0.5), mask), optax.sgd(1.0))
    opt = jp.Optimizer(tx, model)
    zero = {n: jnp.zeros_like(v) for n, v in params.items()}
    new, _ = opt.update(model, zero)
    np.testing.assert_array_equal(new.layers[0].bias.value, model.layers[0].bias.value)
    np.testing.assert_allclose(new.layers[0].weight.value, model.layers[0].weight.value * 0.5)

    state = tx.init(params)
    updates, _ = tx.update(zero, state, params)
    new_params = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(new_params, jp.split(new, jp.trainable)[0])


def test_mask_include_filters_and_typos():
    model = make_net()
    assert set(k for k, v in jp.optim.mask(model, include="layers.1")._values.items() if v) == {
        "layers.1.weight",
        "layers.1.bias",
    }
    with pytest.raises(ValueError, match="pattern '\\*.bais' matches no trainable parameter"):
        jp.optim.mask(model, exclude="*.bais")


def test_weight_decay_mask_uses_ndim_and_metadata():
    model = make_net()
    model = jp.at(model, "layers.1.weight").apply(lambda p: p.replace(weight_decay=False))
    model = jp.at(model, "layers.0.bias").apply(lambda p: p.replace(weight_decay=True))
    values = jp.optim.weight_decay_mask(model)._values
    assert values == {
        "layers.0.weight": True,
        "layers.0.bias": True,
        "layers.1.weight": False,
        "layers.1.bias": False,
    }


def test_labels_first_match_wins_unmatched_is_an_error_and_multi_transform_works():
    model = make_net()
    labels = jp.optim.labels(model, {"layers.0.*": "slow", "*": "fast"})
    assert labels._values["layers.0.weight"] == "slow"
    assert labels._values["layers.1.bias"] == "fast"
    with pytest.raises(ValueError, match="layers.1.weight"):
        jp.optim.labels(model, {"layers.0.*": "slow"})
    tx = optax.multi_transform({"slow": optax.sgd(0.0), "fast": optax.sgd(0.1)}, labels)
    opt = jp.Optimizer(tx, model)
    new, _ = opt.update(model, jp.grad(loss_fn)(model, X, Y))
    np.testing.assert_array_equal(new.layers[0].weight.value, model.layers[0].weight.value)
    assert not np.array_equal(new.layers[1].weight.value, model.layers[1].weight.value)


def test_group_metadata_overrides_label_rules():
    model = make_net()
    model = jp.at(model, "layers.1.weight").apply(lambda p: p.replace(group="slow"))
    labels = jp.optim.labels(model, {"*": "fast"})
    assert labels._values["layers.1.weight"] == "slow"


def test_scale_by_metadata_scales_updates():
    model = make_net()
    model = jp.at(model, "layers.0.weight").apply(lambda p: p.replace(lr_scale=0.1))
    tx = optax.chain(optax.sgd(1.0), jp.optim.scale_by_metadata(model))
    grads = jp.grad(loss_fn)(model, X, Y)
    new, _ = jp.Optimizer(tx, model).update(model, grads)
    np.testing.assert_allclose(
        new.layers[0].weight.value - model.layers[0].weight.value,
        -0.1 * grads.layers[0].weight.value,
        rtol=1e-4,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        new.layers[1].weight.value - model.layers[1].weight.value,
        -grads.layers[1].weight.value,
        rtol=1e-4,
        atol=1e-7,
    )


# -- buffers updated in a step -------------------------------------------------------------------


class RunningMean(jp.Module):
    """Tracks the mean of its inputs in a Buffer, like BatchNorm's running statistics."""

    linear: Linear
    running_mean: jp.Buffer

    def __call__(self, x):
        return self.linear(x)

    def forward_train(self, x):
        new_mean = 0.9 * self.running_mean.value + 0.1 * x.mean(0)
        return self.linear(x), jp.at(self, "running_mean").set(new_mean)


def test_buffers_flow_through_a_jitted_step_and_the_optimizer_leaves_them_alone():
    model = RunningMean(
        Linear(jp.Parameter(jnp.eye(3)[:2]), jp.Parameter(jnp.zeros(2))), jp.Buffer(jnp.zeros(3))
    )

    def loss_with_state(model, x, y):
        out, model = model.forward_train(x)
        return jnp.mean((out - y) ** 2), model

    @jax.jit
    def step(model, opt, x, y):
        (loss, updated), grads = jp.value_and_grad(loss_with_state, has_aux=True)(model, x, y)
        model, opt = opt.update(updated, grads)
        return model, opt, loss

    opt = jp.Optimizer(optax.adam(1e-2), model)
    expected = jnp.zeros(3)
    for _ in range(4):
        model, opt, _ = step(model, opt, X, Y)
        expected = 0.9 * expected + 0.1 * X.mean(0)
    np.testing.assert_allclose(model.running_mean.value, expected, rtol=1e-5, atol=1e-6)
    assert isinstance(model.running_mean, jp.Buffer)
    assert "running_mean" not in " ".join(opt.state_dict())


# -- a changed model or malformed gradients: an error naming the parameter -----------------------


def test_update_refuses_a_parameter_whose_shape_or_dtype_changed_since_the_optimizer():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    wider = jp.at(model, "layers.1.bias").set(jp.Parameter(jnp.zeros(5)))  # the repro
    with pytest.raises(
        ValueError,
        match=r"'layers.1.bias' is f32\[5\], was f32\[2\].*Build a new jp.Optimizer\(tx, model\)",
    ):
        opt.update(
            wider, {n: jnp.zeros_like(v) for n, v in jp.split(wider, jp.trainable)[0].items()}
        )
    half = model.astype(jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'layers.0.weight' is bf16\[4,3\], was f32\[4,3\]"):
        opt.update(half, jp.grad(loss_fn)(half, X, Y))
    with pytest.raises(ValueError, match=r"'layers.1.bias' is f32\[5\]"):  # under jit as well
        jax.jit(lambda m, o: o.update(m, jp.grad(loss_fn)(model, X, Y)))(wider, opt)
    rebuilt = jp.Optimizer(optax.adam(1e-2), wider)
    assert rebuilt.specs != opt.specs


@pytest.mark.parametrize(
    ("grad", "match"),
    [
        (jnp.zeros((1, 2)), r"'layers.1.bias' has shape \(1, 2\), the parameter has \(2,\)"),
        (jnp.zeros(()), r"'layers.1.bias' has shape \(\), the parameter has \(2,\)"),
        (jnp.zeros(2, jnp.int32), r"'layers.1.bias' is i32\[2\], the parameter is f32\[2\]"),
        ("zeros", r"'layers.1.bias' is a str, not an array \(f32\[2\]"),
        ([0.0, 0.0], r"'layers.1.bias' is a list, not an array"),
        (None, r"no gradient for trainable parameter 'layers.1.bias'"),
    ],
)
def test_update_refuses_malformed_gradients_naming_the_parameter(grad, match):
    model = make_net()
    opt = jp.Optimizer(optax.sgd(1e-2), model)
    grads = {n: jnp.zeros_like(v) for n, v in jp.split(model, jp.trainable)[0].items()}
    with pytest.raises(ValueError, match=match):
        opt.update(model, {**grads, "layers.1.bias": grad})


def test_optimizer_state_refuses_abstract_values_and_does_not_retrace_on_new_values():
    model = make_net()
    opt = jp.Optimizer(optax.adam(1e-2), model)
    abstract = jax.eval_shape(lambda: dict(opt.state_dict()))
    with pytest.raises(jp.StateDictError, match="got an abstract value"):
        opt.load_state_dict(abstract)
    traces = []

    @jax.jit
    def step(model, opt):
        traces.append(1)
        return opt.update(model, jp.grad(loss_fn)(model, X, Y))

    for _ in range(3):
        model, opt = step(model, opt)
    assert len(traces) == 1  # recorded shapes are static and stable: one trace


@pytest.mark.parametrize("grads", [None, "grads", [1.0, 2.0], 3.0])
def test_update_with_no_gradient_tree_at_all_says_what_came(grads):
    model = make_net()
    opt = jp.Optimizer(optax.sgd(1e-2), model)
    with pytest.raises(ValueError, match=rf"grads is a {type(grads).__name__} holding no gradient"):
        opt.update(model, grads)
    with pytest.raises(ValueError, match="got a NoneType without any"):
        opt.update(None, jp.grad(loss_fn)(model, X, Y))
