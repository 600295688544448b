"""Tree surgery by name (`jp.at`) and freezing/unfreezing by glob."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jparam as jp


class Fc(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter | None
    scale: jp.Buffer

    def __init__(self, n, fill=1.0):
        self.weight = jp.Parameter(jnp.full((n, n), fill), axes=("out", "in"))
        self.bias = jp.Parameter(jnp.zeros(n))
        self.scale = jp.Buffer(jnp.ones(()))


class Blk(jp.Module):
    fc: Fc
    proj: Fc

    def __init__(self, n, fill):
        self.fc = Fc(n, fill)
        self.proj = Fc(n, -fill)


class Model(jp.Module):
    blocks: list
    heads: dict
    pair: tuple

    def __init__(self):
        self.blocks = [Blk(2, float(i + 1)) for i in range(3)]
        self.heads = {"cls": Fc(2), "reg": Fc(2)}
        self.pair = (Fc(1), Fc(1))


def _values(tree):
    return [x for x in jax.tree.leaves(tree)]


# -- jp.at ---------------------------------------------------------------------------------------


def test_get_by_dotted_name():
    m = Model()
    assert jp.at(m, "blocks.1.fc").get() is m.blocks[1].fc
    assert jp.at(m, "blocks.1.fc.weight").get() is m.blocks[1].fc.weight
    assert jp.at(m, "heads.reg").get() is m.heads["reg"]
    assert jp.at(m, "pair.1.bias").get() is m.pair[1].bias
    assert jp.at(m, "blocks").get() is m.blocks


def test_set_module_returns_new_tree_and_original_untouched():
    m = Model()
    before = _values(m)
    new_fc = Fc(2, fill=9.0)
    out = jp.at(m, "blocks.1.fc").set(new_fc)
    assert out.blocks[1].fc is new_fc
    assert m.blocks[1].fc is not new_fc
    assert all(a is b for a, b in zip(_values(m), before))  # nothing mutated
    # untouched parts are shared, not copied
    assert out.blocks[0] is m.blocks[0] and out.blocks[1].proj is m.blocks[1].proj
    assert out.heads["cls"] is m.heads["cls"]
    assert type(out.blocks) is list and type(out.pair) is tuple


def test_set_in_dicts_and_tuples():
    m = Model()
    out = jp.at(m, "heads.cls").set(Fc(2, 5.0))
    chex.assert_trees_all_equal(out.heads["cls"].weight.value, jnp.full((2, 2), 5.0))
    assert out.heads["reg"] is m.heads["reg"]
    out = jp.at(m, "pair.0").set(Fc(1, 3.0))
    assert type(out.pair) is tuple
    chex.assert_trees_all_equal(out.pair[0].weight.value, jnp.full((1, 1), 3.0))
    assert out.pair[1] is m.pair[1]


def test_apply():
    m = Model()
    out = jp.at(m, "blocks.2.fc.weight").apply(lambda w: w * 10)
    chex.assert_trees_all_equal(out.blocks[2].fc.weight.value, jnp.full((2, 2), 30.0))
    chex.assert_trees_all_equal(m.blocks[2].fc.weight.value, jnp.full((2, 2), 3.0))
    new_proj = Fc(2, 5.0)
    out = jp.at(m, "blocks.0").apply(lambda b: b.replace(proj=new_proj))
    assert out.blocks[0].proj is new_proj and out.blocks[0].fc is m.blocks[0].fc


def test_raw_array_set_on_a_parameter_keeps_flag_and_metadata():
    m = Model().freeze("blocks.0.fc.weight")
    out = jp.at(m, "blocks.0.fc.weight").set(jnp.zeros((2, 2)))
    w = out.blocks[0].fc.weight
    assert isinstance(w, jp.Parameter)
    assert w.trainable is False
    assert w.metadata == {"axes": ("out", "in")}
    chex.assert_trees_all_equal(w.value, jnp.zeros((2, 2)))
    b = jp.at(m, "blocks.0.fc.scale").set(jnp.array(4.0)).blocks[0].fc.scale
    assert isinstance(b, jp.Buffer) and float(b) == 4.0


def test_setting_none_removes_a_parameter():
    m = Model()
    out = jp.at(m, "blocks.0.fc.bias").set(None)
    assert out.blocks[0].fc.bias is None
    assert m.blocks[0].fc.bias is not None
    assert "blocks.0.fc.bias" not in out.state_dict()


def test_setting_a_new_parameter_replaces_it_whole():
    m = Model()
    out = jp.at(m, "heads.cls.bias").set(jp.Parameter(jnp.ones(2), trainable=False))
    assert out.heads["cls"].bias.trainable is False
    assert out.heads["cls"].bias.metadata == {}


def test_glob_selects_several():
    m = Model()
    got = jp.at(m, "blocks.*.fc").get()
    assert got == [m.blocks[0].fc, m.blocks[1].fc, m.blocks[2].fc]
    out = jp.at(m, "blocks.*.fc").apply(lambda fc: fc.replace(bias=None))
    assert [b.fc.bias is None for b in out.blocks] == [True, True, True]
    assert all(b.proj.bias is not None for b in out.blocks)
    # One raw array for biases of two shapes: pair.*.bias is (1,), refused, never broadcast.
    with pytest.raises(
        ValueError, match=r"pair.0.bias: shape mismatch, expected \(1,\), got \(2,\)"
    ):
        jp.at(m, "*.bias").set(jnp.full(2, 7.0))
    out = jp.at(m, "*.bias").apply(lambda b: jnp.full(b.shape, 7.0))
    assert float(out.blocks[1].proj.bias.value[0]) == 7.0
    assert float(out.heads["reg"].bias.value[1]) == 7.0
    assert out.pair[0].bias.shape == (1,) and float(out.pair[0].bias.value[0]) == 7.0


def test_glob_keeps_outermost_matches():
    m = Model()
    seen = []
    jp.at(m, "heads.*").apply(lambda x: seen.append(type(x).__name__) or x)
    assert seen == ["Fc", "Fc"]  # the heads, not also their parameters


def test_filter_selector():
    m = Model()
    out = jp.at(m, jp.is_buffer).set(jnp.array(0.5))
    assert all(float(b) == 0.5 for b in out.buffers())
    assert all(float(b) == 1.0 for b in m.buffers())
    got = jp.at(m, jp.frozen | "pair.0.weight").get()
    assert got == [m.pair[0].weight]


def test_bad_path_raises_naming_the_missing_segment_and_children():
    m = Model()
    with pytest.raises(KeyError) as e:
        jp.at(m, "blocks.1.mlp").set(None)
    msg = str(e.value)
    assert "no 'mlp' in blocks.1 while resolving 'blocks.1.mlp'" in msg
    assert "Blk there has: fc, proj" in msg
    with pytest.raises(KeyError, match=r"no '7' in blocks.*list there has: 0, 1, 2"):
        jp.at(m, "blocks.7.fc").get()
    with pytest.raises(KeyError, match=r"no 'box' in heads.*dict there has: cls, reg"):
        jp.at(m, "heads.box").get()
    with pytest.raises(KeyError, match=r"no 'oops' in the root.*Model there has: blocks"):
        jp.at(m, "oops").get()
    with pytest.raises(KeyError, match=r"'blocks.\*.mlp' selects nothing"):
        jp.at(m, "blocks.*.mlp")


def test_at_works_on_plain_pytrees():
    tree = {"student": Fc(1), "teachers": [Fc(1), Fc(1)]}
    out = jp.at(tree, "teachers.1.weight").set(jnp.zeros((1, 1)))
    assert float(out["teachers"][1].weight.value[0, 0]) == 0.0
    assert out["teachers"][0] is tree["teachers"][0]
    assert float(tree["teachers"][1].weight.value[0, 0]) == 1.0


def test_at_never_runs_init():
    calls = []

    class Counted(jp.Module):
        w: jp.Parameter

        def __init__(self):
            calls.append(1)
            self.w = jp.Parameter(jnp.ones(1))

    class Outer(jp.Module):
        inner: Counted

    o = Outer(Counted())
    jp.at(o, "inner.w").set(jnp.zeros(1))
    jp.at(o, "*.w").apply(lambda w: w)
    assert calls == [1]


# -- freeze / unfreeze --------------------------------------------------------------------------


def _trainable_names(m):
    return [n for n, p in m.named_parameters() if p.trainable]


def test_freeze_all_and_unfreeze_all():
    m = Model()
    f = m.freeze()
    assert _trainable_names(f) == []
    assert len(_trainable_names(m)) == len(list(m.parameters()))  # original untouched
    u = f.unfreeze()
    assert _trainable_names(u) == [n for n, _ in m.named_parameters()]


def test_freeze_with_globs():
    m = Model()
    f = m.freeze("blocks.*", "heads.cls.bias")
    assert _trainable_names(f) == [
        "heads.cls.weight",
        "heads.reg.weight",
        "heads.reg.bias",
        "pair.0.weight",
        "pair.0.bias",
        "pair.1.weight",
        "pair.1.bias",
    ]
    assert f.blocks[0].fc.weight.metadata == {"axes": ("out", "in")}
    u = f.unfreeze("blocks.1")  # a name selects its whole subtree
    assert [n for n in _trainable_names(u) if n.startswith("blocks")] == [
        "blocks.1.fc.weight",
        "blocks.1.fc.bias",
        "blocks.1.proj.weight",
        "blocks.1.proj.bias",
    ]
    assert [n for n in _trainable_names(m.freeze("*.weight"))] == [
        n for n, _ in m.named_parameters() if n.endswith("bias")
    ]


def test_freeze_pattern_matching_nothing_raises_naming_it():
    m = Model()
    with pytest.raises(ValueError, match=r"pattern 'blocks\.\*\.mlp' matches no parameter"):
        m.freeze("blocks.*.mlp")
    with pytest.raises(ValueError, match=r"parameters are: blocks\.0\.fc\.weight"):
        m.unfreeze("nope")
    with pytest.raises(ValueError, match="matches no parameter"):
        m.freeze("blocks.0.fc.scale")  # a buffer is not a parameter
    with pytest.raises(TypeError, match="take name globs"):
        m.freeze(jp.trainable)


def test_freeze_unchanged_parameters_are_shared():
    m = Model()
    f = m.freeze("heads")
    assert f.blocks[0].fc.weight is m.blocks[0].fc.weight
    assert f.freeze("heads").heads["cls"].weight.trainable is False


# -- a raw value is a value update: shape and dtype kind stay -----------------------------------


class Lin(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter
    count: jp.Buffer
    scalar: jp.Parameter

    def __init__(self):
        self.weight = jp.Parameter(jnp.ones((2, 3)))
        self.bias = jp.Parameter(jnp.zeros(2))
        self.count = jp.Buffer(jnp.array(0, jnp.int32))
        self.scalar = jp.Parameter(jnp.array(1.0))


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("bias", jnp.ones(1), r"bias: shape mismatch, expected \(2,\), got \(1,\)"),  # the repro
        ("bias", jnp.ones((1, 2)), r"bias: shape mismatch, expected \(2,\), got \(1, 2\)"),
        ("bias", 1.0, r"bias: shape mismatch, expected \(2,\), got \(\)"),
        ("scalar", jnp.ones(1), r"scalar: shape mismatch, expected \(\), got \(1,\)"),
        (
            "bias",
            jnp.ones(2, jnp.int32),
            "bias: dtype mismatch, expected floating float32, got integer int32",
        ),
        ("count", jnp.array(1.5), "count: dtype mismatch, expected integer int32, got floating"),
        ("weight", jnp.ones((3, 2)), r"weight: shape mismatch, expected \(2, 3\), got \(3, 2\)"),
    ],
)
def test_setting_a_raw_array_of_another_shape_or_kind_names_path_expected_and_got(
    name, value, match
):
    m = Lin()
    with pytest.raises(ValueError, match=match + ".*set a new jp.Parameter"):
        jp.at(m, name).set(value)
    with pytest.raises(ValueError, match=match):
        jp.at(m, name).apply(lambda _: value)
    with pytest.raises(ValueError, match=match):  # inside jit too, at trace time
        jax.jit(lambda m, v: jp.at(m, name).set(v))(m, value)


@pytest.mark.parametrize("value", ["abc", [1.0, 2.0], {"x": 1}, object()])
def test_setting_junk_on_a_parameter_is_a_type_error_naming_the_path(value):
    with pytest.raises(TypeError, match=r"the value set at 'bias' must be an array"):
        jp.at(Lin(), "bias").set(value)


@pytest.mark.parametrize(
    "value",
    [
        np.arange(2, dtype=np.float64),
        np.arange(2, dtype=np.float16),
        jnp.arange(2, dtype=jnp.bfloat16),
    ],
)
def test_set_casts_within_the_kind_exactly_as_load_state_dict_does(value):
    m = Lin()
    by_set = jp.at(m, "bias").set(value).bias
    by_load = m.load_state_dict({"bias": value}, strict=False).bias
    assert by_set.dtype == by_load.dtype == jnp.float32 and by_set.shape == (2,)
    np.testing.assert_array_equal(np.asarray(by_set.value), np.asarray(by_load.value))
    np.testing.assert_array_equal(np.asarray(by_set.value), np.asarray(value, np.float32))


@settings(max_examples=30)
@given(
    shape=st.sampled_from([(), (1,), (2,), (1, 2), (2, 1)]),
    dtype=st.sampled_from(["float32", "float16", "int32", "int8", "bool", "complex64"]),
)
def test_property_set_and_load_state_dict_accept_and_refuse_the_same_values(shape, dtype):
    m = Lin()
    value = np.ones(shape, dtype)
    outcomes = []
    for put in (
        lambda: jp.at(m, "bias").set(value).bias,
        lambda: m.load_state_dict({"bias": value}, strict=False).bias,
    ):
        try:
            outcomes.append(np.asarray(put().value))
        except ValueError:
            outcomes.append(None)
    ok = shape == (2,) and dtype in ("float32", "float16")
    assert (outcomes[0] is not None) == (outcomes[1] is not None) == ok
    if ok:
        np.testing.assert_array_equal(outcomes[0], outcomes[1])


def test_setting_a_new_parameter_or_none_is_an_explicit_replacement():
    m = Lin()
    wider = jp.at(m, "bias").set(jp.Parameter(jnp.ones(5, jnp.bfloat16)))
    assert wider.bias.shape == (5,) and wider.bias.dtype == jnp.bfloat16
    half = jp.at(m, "weight").apply(lambda w: w.astype(jnp.bfloat16))
    assert half.weight.dtype == jnp.bfloat16
    assert jp.at(m, "bias").set(None).bias is None


def test_get_set_apply_with_bad_selectors():
    m = Lin()
    with pytest.raises(KeyError, match=r"no 'nope' in the root while resolving 'nope'.*bias"):
        jp.at(m, "nope").get()
    with pytest.raises(KeyError, match=r"selects nothing"):
        jp.at(m, "x*").set(jnp.ones(2))
    with pytest.raises(TypeError):
        jp.at(m, None)
