"""split/merge: name-keyed parts, placeholders in the rest, round trips, gradients, optax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from twin_models import Block, Linear

import jparam as jp


class Model(jp.Module):
    encoder: Block
    head: Linear
    frozen_emb: jp.Parameter
    plain: jax.Array = jp.field(plain_arrays=True)
    nothing: None

    def __init__(self):
        self.encoder = Block(2)
        self.head = Linear(2, 3)
        self.frozen_emb = jp.Parameter(jnp.ones((4, 2)), trainable=False, axes=("v", "e"))
        self.plain = jnp.arange(3.0)
        self.nothing = None

    def __call__(self, x):
        h = self.encoder.fc(x) * self.encoder.scale + self.frozen_emb[0]
        return self.head(h).sum() + self.plain.sum()


def _leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jp.Parameter | jp.Buffer))


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(x is y for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


FILTERS = [
    jp.trainable,
    jp.frozen,
    jp.is_parameter,
    jp.is_buffer,
    "*.bias",
    "encoder",
    jp.name("head.*", "plain"),
    jp.Buffer,
    jax.Array,
    lambda x: x.ndim == 2,
    [jp.frozen, "*.scale"],
    jp.trainable & ~jp.name("*.bias"),
    jp.frozen | jp.is_buffer,
    ~jp.trainable,
    "no-such-name",
]


def test_split_gives_a_name_keyed_part_and_the_rest():
    m = Model()
    params, rest = jp.split(m, jp.trainable)
    assert isinstance(params, dict)
    assert sorted(params) == [
        "encoder.fc.bias",
        "encoder.fc.weight",
        "encoder.norm.bias",
        "encoder.norm.weight",
        "encoder.scale",
        "head.bias",
        "head.weight",
    ]
    assert params["head.weight"] is m.head.weight.value  # the array itself, no wrapper
    # the rest keeps everything else as it was and a placeholder where a trainable leaf was
    assert rest.frozen_emb is m.frozen_emb
    assert rest.encoder.norm.running_mean is m.encoder.norm.running_mean
    assert rest.plain is m.plain and rest.nothing is None
    assert not isinstance(rest.head.weight, jp.Parameter | jax.Array)
    assert jax.tree.leaves(rest.head) == []  # placeholders hold no arrays
    n_all = len(jax.tree.leaves(m))
    assert len(jax.tree.leaves(rest)) == n_all - len(params)


def test_merge_restores_flags_and_metadata():
    m = Model()
    frozen, rest = jp.split(m, jp.frozen)
    assert list(frozen) == ["frozen_emb"]
    out = jp.merge(frozen, rest)
    assert isinstance(out.frozen_emb, jp.Parameter)
    assert out.frozen_emb.trainable is False
    assert out.frozen_emb.metadata == {"axes": ("v", "e")}
    assert out.frozen_emb.value is m.frozen_emb.value


@pytest.mark.parametrize("f", FILTERS, ids=repr)
def test_split_merge_round_trip_for_every_filter(f):
    m = Model()
    part, rest = jp.split(m, f)
    expected = {name for name, leaf in _named_leaves(m) if jp.as_filter(f).matches(name, leaf)}
    assert set(part) == expected
    _assert_same_tree(jp.merge(part, rest), m)


def _named_leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jp.Parameter | jp.Buffer)
    )[0]
    return [(jp.path_name(p), leaf) for p, leaf in flat]


def test_three_way_split_first_filter_wins():
    m = Model()
    enc, bufs, rest = jp.split(m, "encoder", jp.is_buffer)
    assert "encoder.norm.running_mean" in enc  # matched by the first filter
    assert "encoder.norm.running_mean" not in bufs
    assert sorted(bufs) == []  # every buffer lives in the encoder
    assert sorted(enc) == sorted(n for n, _ in _named_leaves(m) if n.startswith("encoder"))
    _assert_same_tree(jp.merge(enc, bufs, rest), m)
    heads, frozen, rest2 = jp.split(m, "head", jp.frozen)
    assert sorted(heads) == ["head.bias", "head.weight"] and list(frozen) == ["frozen_emb"]
    _assert_same_tree(jp.merge(heads, frozen, rest2), m)


def test_merge_takes_new_values_by_name():
    m = Model()
    params, rest = jp.split(m, jp.trainable)
    new = jp.merge({k: jnp.zeros_like(v) for k, v in params.items()}, rest)
    chex.assert_trees_all_equal(new.head.weight.value, jnp.zeros((3, 2)))
    assert new.head.weight.trainable is True
    assert new.frozen_emb.value is m.frozen_emb.value


def test_merge_mismatched_parts_raise_helpful_errors():
    m = Model()
    params, rest = jp.split(m, jp.trainable)
    missing = dict(params)
    del missing["head.bias"]
    with pytest.raises(ValueError, match=r"no value for: \['head.bias'\]"):
        jp.merge(missing, rest)
    extra = {**params, "head.gamma": jnp.ones(1)}
    with pytest.raises(ValueError, match=r"not a placeholder in the rest: \['head.gamma'\]"):
        jp.merge(extra, rest)
    other_params, _ = jp.split(m, jp.frozen)
    with pytest.raises(ValueError, match="split from the same model with the same filters"):
        jp.merge(other_params, rest)
    with pytest.raises(ValueError, match="more than one part"):
        jp.merge(params, {"head.bias": jnp.ones(3)}, rest)
    with pytest.raises(TypeError, match="the rest goes last"):
        jp.merge(rest, params)
    with pytest.raises(TypeError, match="needs at least one part and the rest"):
        jp.merge(rest)


def test_grad_through_merge_only_for_the_trainable_part():
    m = Model()
    x = jnp.array([1.0, 2.0])
    params, rest = jp.split(m, jp.trainable)

    def loss(params, rest):
        return jp.merge(params, rest)(x)

    grads = jax.grad(loss)(params, rest)
    assert sorted(grads) == sorted(params)
    # loss = sum(head.W @ h + head.b) + const: d/d head.bias = 1, d/d head.weight = h per row
    h = m.encoder.fc(x) * m.encoder.scale.value + m.frozen_emb.value[0]
    chex.assert_trees_all_close(grads["head.bias"], jnp.ones(3))
    chex.assert_trees_all_close(grads["head.weight"], jnp.tile(h, (3, 1)), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads["encoder.norm.weight"], jnp.zeros(2))  # unused: zero


def test_optax_state_only_for_trainable_parameters_under_jit():
    m = Model()
    x = jnp.array([1.0, 2.0])
    params, rest = jp.split(m, jp.trainable)
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)
    adam_mu = optax.adam(1e-3).init(params)[0].mu
    assert sorted(adam_mu) == sorted(params)

    @jax.jit
    def step(params, rest, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jp.merge(p, rest)(x))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    new_params, _, _ = step(params, rest, opt_state)
    new = jp.merge(new_params, rest)
    chex.assert_trees_all_close(new.head.bias.value, m.head.bias.value - 0.1)
    chex.assert_trees_all_equal(new.frozen_emb, m.frozen_emb)
    assert new.frozen_emb.trainable is False
    np.testing.assert_array_equal(np.asarray(new.plain), np.arange(3.0))


def test_rest_structure_depends_on_names_and_flags_not_values():
    a, b = Model(), jax.tree.map(lambda v: v + 1, Model())
    _, rest_a = jp.split(a, jp.trainable)
    _, rest_b = jp.split(b, jp.trainable)
    assert jax.tree.structure(rest_a) == jax.tree.structure(rest_b)
    _, rest_c = jp.split(a.freeze("head.bias"), jp.trainable)
    assert jax.tree.structure(rest_a) != jax.tree.structure(rest_c)


def test_split_works_on_plain_pytrees():
    tree = {"lin": Linear(1, 1), "w": jp.Parameter(jnp.ones(2), trainable=False)}
    params, rest = jp.split(tree, jp.trainable)
    assert sorted(params) == ["lin.bias", "lin.weight"]
    assert rest["w"] is tree["w"]
    _assert_same_tree(jp.merge(params, rest), tree)
    assert _leaves(jp.merge(params, rest))[0] is not None


# -- merge checks every value against the leaf it replaces ---------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (jnp.ones(1), r"head.bias: expected float32\[3\], got float32\[1\]"),
        (jnp.ones(()), r"head.bias: expected float32\[3\], got float32\[\]"),
        (jnp.ones((1, 3)), r"head.bias: expected float32\[3\], got float32\[1, 3\]"),
        (jnp.ones(3, jnp.int32), r"head.bias: expected float32\[3\], got int32\[3\]"),
        (jnp.ones(3, jnp.bfloat16), r"head.bias: expected float32\[3\], got bfloat16\[3\]"),
        ("abc", r"head.bias: expected an array float32\[3\], got str 'abc'"),
        (None, r"head.bias: expected an array float32\[3\], got NoneType"),
        ([1.0, 2.0, 3.0], r"head.bias: expected an array float32\[3\], got list"),
    ],
)
def test_merge_refuses_a_value_of_another_shape_or_dtype_naming_it(value, match):
    params, rest = jp.split(Model(), jp.trainable)
    with pytest.raises(ValueError, match=r"merge never casts or broadcasts.*\n  " + match):
        jp.merge({**params, "head.bias": value}, rest)


def test_merge_reports_every_wrong_value_and_checks_under_jit_at_trace_time_only():
    m = Model()
    params, _, rest = jp.split(m, jp.trainable, jax.Array)
    bad = {k: jnp.zeros(7) for k in params}
    with pytest.raises(ValueError) as info:
        jp.merge(bad, {"plain": jnp.arange(3.0)}, rest)
    assert str(info.value).count("expected float32") == len(params)
    with pytest.raises(ValueError, match=r"plain: expected float32\[3\], got float32\[4\]"):
        jp.merge(params, {"plain": jnp.arange(4.0)}, rest)
    with pytest.raises(ValueError, match="head.bias: expected"):
        jax.jit(lambda p: jp.merge(p, {"plain": m.plain}, rest))(
            {**params, "head.bias": jnp.ones(1)}
        )
    # The check adds no operation to the computation: merging is free at run time.
    jaxpr = jax.make_jaxpr(lambda p: jp.merge(p, {"plain": m.plain}, rest))(params)
    assert jaxpr.eqns == []
    # Abstract values (jax.eval_shape) of the right shape pass.
    out = jax.eval_shape(lambda p: jp.merge(p, {"plain": m.plain}, rest), params)
    assert out.head.bias.value.shape == (3,)


def test_merge_with_something_else_in_place_of_the_rest_says_so():
    params, _ = jp.split(Model(), jp.trainable)
    for rest in (None, "rest", {"head.bias": 1}):
        with pytest.raises(TypeError, match="the last argument should be the rest from jp.split"):
            jp.merge(params, rest)
