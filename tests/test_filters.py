"""Filters: built-ins, name globs, types, callables, lists, and their combinations."""

import jax
import jax.numpy as jnp
import pytest
from twin_models import Block, Linear

import jparam as jp


class Model(jp.Module):
    encoder: Block
    head: Linear
    frozen_emb: jp.Parameter
    plain: jax.Array = jp.field(plain_arrays=True)  # on purpose: split still sees it

    def __init__(self):
        self.encoder = Block(2)
        self.head = Linear(2, 3)
        self.frozen_emb = jp.Parameter(jnp.ones((4, 2)), trainable=False)
        self.plain = jnp.zeros(5)


MODEL = Model()


def selected(f):
    """Names of the leaves `jp.split` sends to the filter's part (Parameters, Buffers, arrays)."""
    part, _ = jp.split(MODEL, f)
    return sorted(part)


ALL_PARAMS = [
    "encoder.fc.bias",
    "encoder.fc.weight",
    "encoder.norm.bias",
    "encoder.norm.weight",
    "encoder.scale",
    "frozen_emb",
    "head.bias",
    "head.weight",
]
ALL_BUFFERS = [
    "encoder.norm.num_batches_tracked",
    "encoder.norm.running_mean",
    "encoder.norm.running_var",
    "encoder.norm.scratch",
    "encoder.step",
]


def test_builtin_filters():
    assert selected(jp.is_parameter) == ALL_PARAMS
    assert selected(jp.trainable) == [n for n in ALL_PARAMS if n != "frozen_emb"]
    assert selected(jp.frozen) == ["frozen_emb"]
    assert selected(jp.is_buffer) == ALL_BUFFERS


def test_builtin_filters_called_on_nodes():
    p, f, b = jp.Parameter(1.0), jp.Parameter(1.0, trainable=False), jp.Buffer(1.0)
    assert [jp.trainable(x) for x in (p, f, b, jnp.ones(1))] == [True, False, False, False]
    assert [jp.frozen(x) for x in (p, f, b, jnp.ones(1))] == [False, True, False, False]
    assert [jp.is_parameter(x) for x in (p, f, b)] == [True, True, False]
    assert [jp.is_buffer(x) for x in (p, f, b)] == [False, False, True]


def test_string_globs():
    assert selected("*.bias") == ["encoder.fc.bias", "encoder.norm.bias", "head.bias"]
    assert selected("head.*") == ["head.bias", "head.weight"]
    assert selected("plain") == ["plain"]
    assert selected("nothing*") == []


def test_string_globs_take_fnmatch_question_marks_sets_and_double_stars():
    assert selected("head.?ias") == ["head.bias"]
    assert selected("encoder.[fn]*.weight") == ["encoder.fc.weight", "encoder.norm.weight"]
    assert selected("encoder.[!f]*.bias") == ["encoder.norm.bias"]
    assert selected("**.bias") == selected("*.bias")  # a run of stars is one wildcard


def test_glob_matches_a_whole_subtree():
    assert selected("encoder") == sorted(
        [n for n in ALL_PARAMS if n.startswith("encoder")]
        + [n for n in ALL_BUFFERS if n.startswith("encoder")]
    )
    assert selected("encoder.norm") == [
        "encoder.norm.bias",
        "encoder.norm.num_batches_tracked",
        "encoder.norm.running_mean",
        "encoder.norm.running_var",
        "encoder.norm.scratch",
        "encoder.norm.weight",
    ]
    assert selected("encoder.no") == []  # a prefix that is not a whole name selects nothing


def test_name_filter_with_several_patterns():
    f = jp.name("*.bias", "frozen_*")
    assert selected(f) == ["encoder.fc.bias", "encoder.norm.bias", "frozen_emb", "head.bias"]
    assert repr(f) == "name('*.bias', 'frozen_*')"
    assert f.matches("a.bias", None) and not f.matches("a.weight", None)
    with pytest.raises(TypeError, match="name patterns must be strings"):
        jp.name("*.bias", 3)


def test_type_filters():
    assert selected(jp.Buffer) == ALL_BUFFERS
    assert selected(jp.Parameter) == ALL_PARAMS
    assert selected(jax.Array) == ["plain"]


def test_callable_filters():
    assert selected(lambda x: x.ndim == 2) == ["encoder.fc.weight", "frozen_emb", "head.weight"]
    assert selected(lambda x: jnp.issubdtype(x.dtype, jnp.integer)) == [
        "encoder.norm.num_batches_tracked",
        "encoder.step",
    ]


def test_list_and_tuple_filters_mean_any_of():
    assert selected([jp.frozen, "head.bias"]) == ["frozen_emb", "head.bias"]
    assert selected(("*.scale", jax.Array)) == ["encoder.scale", "plain"]
    assert selected([]) == []


def test_and_or_not():
    assert selected(jp.trainable & "*.weight") == [
        "encoder.fc.weight",
        "encoder.norm.weight",
        "head.weight",
    ]
    assert selected(jp.frozen | jp.is_buffer) == sorted(["frozen_emb", *ALL_BUFFERS])
    assert selected(jp.is_parameter & ~jp.name("encoder")) == [
        "frozen_emb",
        "head.bias",
        "head.weight",
    ]
    assert selected(~jp.is_parameter & ~jp.is_buffer) == ["plain"]
    # a plain filter form on the left works through the reflected operators
    assert selected("head" & jp.trainable) == ["head.bias", "head.weight"]
    assert selected((lambda x: x.ndim == 2) & jp.trainable) == [
        "encoder.fc.weight",
        "head.weight",
    ]
    assert selected(["head.bias"] | jp.frozen) == ["frozen_emb", "head.bias"]


def test_filter_repr_describes_the_combination():
    assert repr(jp.trainable & ~jp.name("*.bias")) == "(trainable & ~name('*.bias'))"
    assert repr(jp.frozen | jp.Buffer) == "(frozen | Buffer)"


def test_as_filter_normalises_and_rejects_bad_filters():
    assert jp.as_filter(jp.trainable) is jp.trainable
    assert isinstance(jp.as_filter("x"), jp.Filter)
    assert jp.as_filter("a.*").matches("a.b", None)
    for bad in (3, None, 2.5, {"a": 1}):
        with pytest.raises(TypeError, match=r"a filter must be a jp\.Filter"):
            jp.as_filter(bad)
    with pytest.raises(TypeError, match="a filter must be"):
        jp.split(MODEL, 42)
    with pytest.raises(TypeError, match="a filter must be"):
        jp.trainable & 42
