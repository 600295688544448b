"""Property tests over random nested module trees (hypothesis, "ci" profile from conftest).

The strategy builds trees of depth up to 3 with modules in attributes, lists and dicts;
trainable and frozen parameters with metadata; float, int and non-persistent buffers; plain
array leaves; ``None`` fields; and static fields.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from jax import tree_util

import jparam as jp


class Leaf(jp.Module):
    w: Any
    b: Any
    buf: Any
    count: Any
    tag: str = jp.field(static=True, default="leaf")


class Node(jp.Module):
    own: Any
    stats: Any
    extra: Any = jp.field(plain_arrays=True)  # plain array leaves on purpose
    kids: list
    named: dict
    child: Any
    width: int = jp.field(static=True, default=0)


@st.composite
def float_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.uniform(1.0, 2.0, shape).astype(np.float32)  # never zero


@st.composite
def int_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.integers(1, 100, shape).astype(np.int32)  # never zero


metadata = st.sampled_from([{}, {"axes": ("embed",)}, {"weight_decay": False, "lr_scale": 0.5}])
params = st.builds(
    lambda v, t, md: jp.Parameter(v, trainable=t, **md), float_arrays(), st.booleans(), metadata
)
float_buffers = st.builds(
    lambda v, persistent: jp.Buffer(v) if persistent else jp.Buffer(v, persistent=False),
    float_arrays(),
    st.booleans(),
)
int_buffers = st.builds(jp.Buffer, int_arrays())


def leaves_():
    return st.builds(
        Leaf,
        w=params,
        b=st.none() | params,
        buf=st.none() | float_buffers,
        count=st.none() | int_buffers,
        tag=st.sampled_from(["leaf", "other"]),
    )


def nodes(depth: int, root: bool = False):
    if depth == 0:
        return leaves_()
    sub = nodes(depth - 1)
    node = st.builds(
        Node,
        own=st.none() | params,
        stats=st.none() | float_buffers | int_buffers,
        extra=st.none() | float_arrays().map(jnp.asarray),
        kids=st.lists(sub, max_size=2),
        named=st.dictionaries(st.sampled_from(["enc", "dec", "mid"]), sub, max_size=2),
        child=st.none() | sub,
        width=st.integers(0, 3),
    )
    return node if root else leaves_() | node


models = nodes(3, root=True)


def _variables(tree):
    """Every Parameter/Buffer with its dotted name, in key-path order."""
    flat = tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jp.Parameter | jp.Buffer)
    )[0]
    return [(jp.path_name(p), x) for p, x in flat if isinstance(x, jp.Parameter | jp.Buffer)]


def _all_names(tree):
    return [n for n, _ in jp.named_parameters(tree, remove_duplicate=False)] + [
        n for n, _ in jp.named_buffers(tree, remove_duplicate=False)
    ]


@given(models)
def test_flatten_unflatten_round_trip(model):
    leaves, treedef = jax.tree.flatten(model)
    out = jax.tree.unflatten(treedef, leaves)
    assert type(out) is type(model)
    assert jax.tree.structure(out) == treedef
    assert all(a is b for a, b in zip(jax.tree.leaves(out), leaves))
    assert [(n, p.trainable, p.metadata) for n, p in out.named_parameters()] == [
        (n, p.trainable, p.metadata) for n, p in model.named_parameters()
    ]
    with_path, treedef2 = tree_util.tree_flatten_with_path(model)
    assert treedef2 == treedef
    assert [leaf for _, leaf in with_path] == leaves


@given(models)
def test_state_dict_round_trip_into_a_zeroed_copy(model):
    zero = jax.tree.map(jnp.zeros_like, model)
    state = model.state_dict()
    loaded = zero.load_state_dict(state)
    assert jax.tree.structure(loaded) == jax.tree.structure(model)
    loaded_state = loaded.state_dict()
    assert list(loaded_state) == list(state)
    for name, value in state.items():
        got = loaded_state[name]
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(value), err_msg=name)
        assert np.all(np.asarray(got) != 0), name  # it came from `state`, not from `zero`
    # what state_dict leaves out stays as it was in the zeroed copy
    for name, b in loaded.named_buffers():
        if not b.persistent:
            assert not np.any(np.asarray(b)), name
    # torch-style strict=False load of a subset reports the rest as missing
    subset = dict(list(state.items())[::2])
    incompatible = jp.incompatible_keys(zero, subset)
    zero.load_state_dict(subset, strict=False)
    assert incompatible.missing_keys == [k for k in state if k not in subset]
    assert incompatible.unexpected_keys == []


@given(models)
def test_names_are_unique_and_stable_across_jit(model):
    names = _all_names(model)
    assert len(set(names)) == len(names)
    assert sorted(names) == sorted(n for n, _ in _variables(model))
    out = jax.jit(lambda m: m)(model)
    assert _all_names(out) == names
    assert list(out.state_dict()) == list(model.state_dict())
    assert [n for n, _ in out.named_modules()] == [n for n, _ in model.named_modules()]
    assert [p.trainable for p in out.parameters()] == [p.trainable for p in model.parameters()]


FILTERS = [
    jp.trainable,
    jp.frozen,
    jp.is_parameter,
    jp.is_buffer,
    jp.Buffer,
    jax.Array,
    "*.w",
    "kids",
    jp.name("named.*", "*.count"),
    lambda x: x.ndim == 2,
    [jp.frozen, "*.b"],
    jp.trainable & ~jp.name("*.b"),
    jp.frozen | jp.is_buffer,
    ~jp.is_parameter,
]


@given(models)
def test_split_merge_round_trip_for_every_filter(model):
    flat = tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, jp.Parameter | jp.Buffer)
    )[0]
    named_leaves = [(jp.path_name(p), x) for p, x in flat]
    for f in FILTERS:
        part, rest = jp.split(model, f)
        flt = jp.as_filter(f)
        assert set(part) == {n for n, x in named_leaves if flt.matches(n, x)}, f
        assert len(jax.tree.leaves(rest)) == len(jax.tree.leaves(model)) - len(part)
        out = jp.merge(part, rest)
        assert jax.tree.structure(out) == jax.tree.structure(model), f
        assert all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(model))), f
    a, b, rest = jp.split(model, jp.trainable, jp.is_buffer)
    assert not set(a) & set(b)
    assert jax.tree.structure(jp.merge(a, b, rest)) == jax.tree.structure(model)


@given(models)
def test_freeze_unfreeze_and_eval_preserve_values_and_names(model):
    frozen = model.freeze()
    assert not any(p.trainable for p in frozen.parameters())
    assert frozen.num_parameters(trainable_only=True) == 0
    assert frozen.num_parameters() == model.num_parameters()
    back = frozen.unfreeze()
    assert all(p.trainable for p in back.parameters())
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model)))
    ev = model.eval()
    assert not any(m.training for m in ev.modules())
    assert _all_names(ev) == _all_names(model)
