"""Module: dataclass pytree construction, immutability, validation, methods and jit behaviour."""

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import tree_util

import jparam as jp


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter | None
    in_features: int = jp.field(static=True)
    out_features: int = jp.field(static=True)

    def __init__(self, n_in, n_out, bias=True, *, key):
        self.in_features = n_in
        self.out_features = n_out
        self.weight = jp.Parameter(jax.random.normal(key, (n_out, n_in)))
        self.bias = jp.Parameter(jnp.zeros(n_out)) if bias else None

    def __call__(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class Norm(jp.Module):
    weight: jp.Parameter
    running_mean: jp.Buffer
    count: jp.Buffer

    def __init__(self, n):
        self.weight = jp.Parameter(jnp.ones(n))
        self.running_mean = jp.Buffer(jnp.zeros(n))
        self.count = jp.Buffer(jnp.array(0))


class Block(jp.Module):
    fc: Linear
    norm: Norm
    act: Callable = jp.field(static=True, default=jax.nn.relu)

    def __init__(self, n, *, key):
        self.fc = Linear(n, n, key=key)
        self.norm = Norm(n)

    def __call__(self, x):
        return self.act(self.fc(x) * self.norm.weight)


class Net(jp.Module):
    blocks: list
    head: Linear

    def __init__(self, n=4, depth=2, *, key=None):
        key = jax.random.key(0) if key is None else key
        keys = jax.random.split(key, depth + 1)
        self.blocks = [Block(n, key=k) for k in keys[:-1]]
        self.head = Linear(n, 2, key=keys[-1])

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


KEY = jax.random.key(0)


# -- pytree structure ---------------------------------------------------------------------------


def test_flatten_with_path_gives_attribute_keys():
    lin = Linear(3, 2, key=KEY)
    flat, _ = tree_util.tree_flatten_with_path(lin)
    paths = [p for p, _ in flat]
    G = tree_util.GetAttrKey
    assert paths == [(G("weight"), G("value")), (G("bias"), G("value"))]
    assert [leaf for _, leaf in flat] == [lin.weight.value, lin.bias.value]


def test_nested_paths_through_lists_and_dicts():
    class Holder(jp.Module):
        items: list
        table: dict

    m = Holder([jp.Parameter(1.0)], {"k": jp.Buffer(2.0)})
    names = [jp.path_name(p) for p, _ in tree_util.tree_flatten_with_path(m)[0]]
    assert names == ["items.0.value", "table.k.value"]


def test_static_fields_live_in_the_treedef_not_the_leaves():
    a, b = Linear(3, 2, key=KEY), Linear(3, 2, key=jax.random.key(1))
    assert len(jax.tree.leaves(a)) == 2
    assert jax.tree.structure(a) == jax.tree.structure(b)
    c = a.replace(in_features=5)
    assert jax.tree.structure(a) != jax.tree.structure(c)
    assert jax.tree.structure(a) != jax.tree.structure(a.eval())
    assert jax.tree.structure(a) != jax.tree.structure(a.freeze())


def test_tree_map_and_jit_round_trip_keep_everything():
    net = Net(key=KEY)
    out = jax.jit(lambda m: m)(net)
    assert type(out) is Net
    assert jax.tree.structure(out) == jax.tree.structure(net)
    chex.assert_trees_all_equal(out, net)
    assert out.blocks[0].act is jax.nn.relu
    assert out.head.in_features == 4
    doubled = jax.tree.map(lambda x: x * 2, net)
    chex.assert_trees_all_close(doubled.head.weight.value, 2 * net.head.weight.value)


# -- construction ---------------------------------------------------------------------------------


def test_custom_init_runs_and_fields_are_set():
    lin = Linear(3, 5, bias=False, key=KEY)
    assert lin.weight.shape == (5, 3)
    assert lin.bias is None
    assert (lin.in_features, lin.out_features) == (3, 5)
    assert lin.training is True


def test_dataclass_init_is_generated_when_none_is_written():
    class Affine(jp.Module):
        scale: jp.Parameter
        shift: jp.Parameter
        name: str = jp.field(static=True, default="affine")

    a = Affine(jp.Parameter(2.0), shift=jp.Parameter(1.0))
    assert float(a.scale) == 2.0 and float(a.shift) == 1.0
    assert a.name == "affine"
    assert Affine(jp.Parameter(2.0), jp.Parameter(1.0), name="x").name == "x"
    with pytest.raises(TypeError, match="shift"):
        Affine(jp.Parameter(2.0))


def test_defaults_and_default_factory():
    class WithDefaults(jp.Module):
        w: jp.Parameter = jp.field(default_factory=lambda: jp.Parameter(jnp.ones(2)))
        extra: Any = None
        items: list = jp.field(default_factory=list)
        k: int = jp.field(static=True, default=3)

        def __init__(self):
            pass  # everything comes from defaults

    a, b = WithDefaults(), WithDefaults()
    chex.assert_trees_all_equal(a.w.value, jnp.ones(2))
    assert a.extra is None and a.items == [] and a.k == 3
    assert a.items is not b.items  # a fresh default per instance


def test_assignment_after_init_raises_frozen_error_with_fix():
    lin = Linear(2, 2, key=KEY)
    with pytest.raises(dataclasses.FrozenInstanceError) as e:
        lin.weight = jp.Parameter(jnp.zeros((2, 2)))
    msg = str(e.value)
    assert "Linear.weight" in msg
    assert ".replace(" in msg and "jp.at(" in msg
    with pytest.raises(dataclasses.FrozenInstanceError):
        lin.new_attr = 1
    with pytest.raises(dataclasses.FrozenInstanceError, match="replace"):
        del lin.bias
    assert lin.bias is not None


def test_undeclared_attribute_in_init_says_how_to_declare_it():
    class Sloppy(jp.Module):
        w: jp.Parameter

        def __init__(self):
            self.w = jp.Parameter(1.0)
            self.hidden = 4

    with pytest.raises(AttributeError) as e:
        Sloppy()
    msg = str(e.value)
    assert "Sloppy has no field 'hidden'" in msg
    assert "declare it in the class body" in msg
    assert "jp.field(static=True)" in msg


def test_missing_field_raises_naming_it():
    class Forgetful(jp.Module):
        a: jp.Parameter
        b: jp.Parameter

        def __init__(self):
            self.a = jp.Parameter(1.0)

    with pytest.raises(TypeError, match=r"Forgetful.__init__ did not set field\(s\) 'b'"):
        Forgetful()


@pytest.mark.parametrize(
    ("value", "what"),
    [([1, 2], "list"), ({"a": 1}, "dict"), (jnp.ones(2), "ArrayImpl"), (np.ones(2), "ndarray")],
)
def test_static_field_refuses_unhashable_values_and_arrays(value, what):
    class Cfg(jp.Module):
        w: jp.Parameter
        size: Any = jp.field(static=True)

    with pytest.raises(TypeError, match=rf"Cfg.size is a static field but holds {what}"):
        Cfg(jp.Parameter(1.0), value)


def test_static_field_refuses_tuple_holding_an_array():
    class Cfg(jp.Module):
        size: Any = jp.field(static=True)

    with pytest.raises(TypeError, match=r"Cfg\.size is a static field but is not hashable"):
        Cfg((1, jnp.ones(2)))
    assert Cfg((1, "two", jax.nn.relu)).size == (1, "two", jax.nn.relu)


@pytest.mark.parametrize(
    ("value", "what"),
    [("relu", "holds str 'relu'"), (jax.nn.relu, "holds a function"), (3, "holds int 3")],
)
def test_dynamic_field_refuses_untraceable_values(value, what):
    class Layer(jp.Module):
        w: jp.Parameter
        act: Any

    with pytest.raises(TypeError) as e:
        Layer(jp.Parameter(1.0), value)
    msg = str(e.value)
    assert f"Layer.act {what}" in msg
    assert "jp.field(static=True)" in msg


def test_dynamic_field_refuses_untraceable_values_nested_in_containers():
    class Layer(jp.Module):
        parts: list

    with pytest.raises(TypeError, match=r"Layer\.parts holds float 0\.5"):
        Layer([jp.Parameter(1.0), 0.5])


def test_dynamic_field_accepts_arrays_none_and_containers_of_modules():
    class Layer(jp.Module):
        a: Any = jp.field(plain_arrays=True)
        b: Any
        c: Any = jp.field(plain_arrays=True)
        d: Any

    m = Layer(jnp.ones(2), None, np.zeros(3), [jp.Parameter(1.0), {"x": Norm(2)}])
    assert m.b is None


def test_field_name_taken_by_module_api_is_refused():
    with pytest.raises(TypeError, match=r"'parameters' is taken by jp\.Module's API"):

        class Bad(jp.Module):
            parameters: jp.Parameter


def test_unflatten_never_runs_user_init():
    calls = []

    class Counted(jp.Module):
        w: jp.Parameter
        b: jp.Buffer

        def __init__(self):
            calls.append(1)
            self.w = jp.Parameter(jnp.ones(2))
            self.b = jp.Buffer(jnp.zeros(2))

    m = Counted()
    assert len(calls) == 1
    jax.tree.map(lambda x: x + 1, m)
    jax.jit(lambda m: m)(m)
    jax.jit(lambda m: jax.tree.map(jnp.sin, m))(m)
    jax.grad(lambda m: jnp.sum(m.w.value))(m)
    jax.vmap(lambda x: m.replace(b=jp.Buffer(x)))(jnp.ones((3, 2)))
    m.replace(w=jp.Parameter(jnp.zeros(2)))
    m.eval().train().freeze().astype(jnp.bfloat16)
    m.load_state_dict({"w": np.zeros(2), "b": np.ones(2)})
    m.apply(lambda mod: None)
    jp.at(m, "w").set(jnp.zeros(2))
    jp.merge(*jp.split(m, jp.trainable))
    assert len(calls) == 1


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
def test_unflatten_rebuilds_the_instance_exactly_and_stays_frozen(inline):
    """The generated unflatten (the per-node hot path of every jitted call) rebuilds each field,
    static field and the training flag, and the copy is as immutable as the original."""

    class Mixed(jp.Module):
        a: jp.Parameter
        k: int = jp.field(static=True)
        items: list = jp.field(inline=inline)
        b: jp.Buffer = None
        name: str = jp.field(static=True, default="m")

    m = Mixed(jp.Parameter(jnp.ones(2)), 3, [jp.Parameter(2.0), None], jp.Buffer(jnp.zeros(1)))
    m = m.eval()
    leaves, treedef = tree_util.tree_flatten(m)
    out = tree_util.tree_unflatten(treedef, [x + 1 for x in leaves])
    assert type(out) is Mixed and vars(out).keys() == vars(m).keys()
    assert (out.k, out.name, out.training, out.b.__class__) == (3, "m", False, jp.Buffer)
    assert type(out.items) is list and out.items[1] is None
    chex.assert_trees_all_close((out.a.value, out.items[0].value, out.b.value), (2.0, 3.0, 1.0))
    with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
        out.k = 4


# -- inheritance and nesting -----------------------------------------------------------------


def test_subclass_adds_fields_with_generated_init():
    class Base(jp.Module):
        a: jp.Parameter

    class Child(Base):
        b: jp.Parameter
        tag: str = jp.field(static=True, default="c")

    c = Child(jp.Parameter(1.0), jp.Parameter(2.0))
    assert [n for n, _ in c.named_parameters()] == ["a", "b"]
    assert c.tag == "c"
    assert jax.jit(lambda c: c)(c).tag == "c"


def test_subclass_of_custom_init_keeps_parents_init():
    calls = []

    class Base(jp.Module):
        w: jp.Parameter

        def __init__(self, n):
            calls.append(n)
            self.w = jp.Parameter(jnp.ones(n))

    class Child(Base):
        scale: float = jp.field(static=True, default=0.5)

    c = Child(3)
    assert calls == [3]
    assert c.w.shape == (3,) and c.scale == 0.5

    class GrandChild(Child):
        extra: jp.Parameter

        def __init__(self, n):
            super().__init__(n)
            self.extra = jp.Parameter(jnp.zeros(1))

    g = GrandChild(2)
    assert [n for n, _ in g.named_parameters()] == ["w", "extra"]
    assert calls == [3, 2]


def test_modules_nest_in_attributes_lists_tuples_and_dicts():
    class Container(jp.Module):
        single: Norm
        seq: list
        pair: tuple
        table: dict

    m = Container(Norm(1), [Norm(1), Norm(1)], (Norm(1),), {"enc": Norm(1)})
    names = [n for n, _ in m.named_parameters()]
    assert names == [
        "single.weight",
        "seq.0.weight",
        "seq.1.weight",
        "pair.0.weight",
        "table.enc.weight",
    ]
    out = jax.jit(lambda m: m)(m)
    assert type(out.pair) is tuple and type(out.seq) is list
    assert isinstance(out.table["enc"], Norm)


def test_plain_array_attribute_is_a_leaf_but_not_a_parameter():
    class WithArray(jp.Module):
        w: jp.Parameter
        mask: jax.Array

    with pytest.warns(jp.PlainArrayWarning, match=r"WithArray\.mask holds plain arrays"):
        m = WithArray(jp.Parameter(jnp.ones(2)), jnp.array([1.0, 0.0]))
    assert len(jax.tree.leaves(m)) == 2
    assert [n for n, _ in m.named_parameters()] == ["w"]
    assert list(m.named_buffers()) == []
    assert list(m.state_dict()) == ["w"]


def test_module_is_usable_inside_jit_and_grad():
    net = Net(key=KEY)
    x = jnp.ones((3, 4))
    y = jax.jit(lambda m, x: m(x))(net, x)
    chex.assert_trees_all_close(y, net(x), rtol=1e-5, atol=1e-6)
    lin = Linear(4, 2, key=KEY)
    g = jax.grad(lambda m: jnp.sum(m(x)))(lin)
    assert isinstance(g, Linear) and isinstance(g.weight, jp.Parameter)
    chex.assert_trees_all_close(g.weight.value, jnp.full((2, 4), 3.0))  # sum over 3 rows of x
    chex.assert_trees_all_close(g.bias.value, jnp.full(2, 3.0))


# -- replace -----------------------------------------------------------------------------------


def test_replace_returns_a_copy_and_validates():
    lin = Linear(2, 3, key=KEY)
    new = lin.replace(bias=None, out_features=7)
    assert new.bias is None and new.out_features == 7
    assert lin.bias is not None and lin.out_features == 3
    assert new.weight is lin.weight
    with pytest.raises(TypeError) as e:
        lin.replace(bais=None)
    assert "got unknown field(s) 'bais'" in str(e.value)
    assert "weight, bias, in_features, out_features" in str(e.value)
    with pytest.raises(TypeError, match=r"Linear\.in_features is a static field"):
        lin.replace(in_features=[1])
    with pytest.raises(TypeError, match=r"Linear\.weight holds str"):
        lin.replace(weight="w")


# -- apply, train/eval, num_parameters -----------------------------------------------------------


def test_apply_visits_children_before_parents_root_last():
    net = Net(key=KEY, depth=2)
    seen = []

    def record(m):
        seen.append(type(m).__name__)

    out = net.apply(record)  # None keeps every module
    assert out.head is net.head
    assert all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(net)))
    assert jax.tree.structure(out) == jax.tree.structure(net)
    assert seen == ["Linear", "Norm", "Block", "Linear", "Norm", "Block", "Linear", "Net"]


def test_apply_order_matches_torch():
    torch = pytest.importorskip("torch")

    class TNorm(torch.nn.Module):
        pass

    class TBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.norm = TNorm()

    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([TBlock(), TBlock()])
            self.head = torch.nn.Linear(4, 2)

    names = {torch.nn.Linear: "Linear", TNorm: "Norm", TBlock: "Block", TNet: "Net"}
    torch_seen = []
    TNet().apply(lambda m: torch_seen.append(names.get(type(m))))
    torch_seen = [n for n in torch_seen if n is not None]  # drop the ModuleList
    jp_seen = []
    Net(key=KEY).apply(lambda m: jp_seen.append(type(m).__name__))
    assert jp_seen == torch_seen


def test_apply_replaces_and_parent_sees_new_children():
    net = Net(key=KEY)
    parent_saw = []

    def zero_bias(m):
        if isinstance(m, Linear):
            return m.replace(bias=jp.Parameter(jnp.full(m.out_features, 7.0)))
        if isinstance(m, Block):
            parent_saw.append(float(m.fc.bias.value[0]))
        return None

    out = net.apply(zero_bias)
    assert parent_saw == [7.0, 7.0]
    for b in out.blocks:
        chex.assert_trees_all_equal(b.fc.bias.value, jnp.full(4, 7.0))
    chex.assert_trees_all_equal(out.head.bias.value, jnp.full(2, 7.0))
    chex.assert_trees_all_equal(net.head.bias.value, jnp.zeros(2))  # original untouched
    assert out.blocks[0].norm is net.blocks[0].norm  # untouched parts are shared


def test_train_and_eval_set_training_throughout():
    class Deep(jp.Module):
        net: Net
        table: dict

    m = Deep(Net(key=KEY), {"n": Norm(2)})
    ev = m.eval()
    assert all(mod.training is False for mod in ev.modules())
    assert len(list(ev.modules())) == 10
    assert ev.table["n"].training is False
    assert all(mod.training is True for mod in m.modules())  # original untouched
    tr = ev.train()
    assert all(mod.training is True for mod in tr.modules())
    assert all(mod.training is False for mod in ev.train(False).modules())
    assert jax.jit(lambda m: m)(ev).net.blocks[1].norm.training is False


def test_num_parameters():
    net = Net(key=KEY, n=4, depth=2)
    per_block = 4 * 4 + 4 + 4  # fc.weight, fc.bias, norm.weight
    head = 2 * 4 + 2
    assert net.num_parameters() == 2 * per_block + head
    frozen = net.freeze("blocks.*")
    assert frozen.num_parameters() == 2 * per_block + head
    assert frozen.num_parameters(trainable_only=True) == head


def test_num_parameters_counts_shared_parameters_once():
    shared = jp.Parameter(jnp.ones((3, 3)))

    class Tied(jp.Module):
        a: jp.Parameter
        b: jp.Parameter

    assert Tied(shared, shared).num_parameters() == 9


def test_requires_grad_on_module():
    net = Net(key=KEY)
    off = net.requires_grad_(False)
    assert not any(p.trainable for p in off.parameters())
    assert all(p.trainable for p in off.requires_grad_().parameters())


# -- jit: what retraces -------------------------------------------------------------------------


def _traced_counter():
    traces = []

    @jax.jit
    def f(model, x):
        traces.append(1)
        return model(x)

    return f, traces


def test_jit_does_not_retrace_when_only_values_change():
    f, traces = _traced_counter()
    net = Net(key=KEY)
    x = jnp.ones((2, 4))
    f(net, x)
    f(jax.tree.map(lambda v: v + 1, net), x)
    f(Net(key=jax.random.key(5)), x)
    f(net.load_state_dict({k: np.asarray(v) * 0 for k, v in net.state_dict().items()}), x)
    assert len(traces) == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.freeze("head.weight"),
        lambda m: jp.at(m, "head").apply(lambda h: h.replace(out_features=3)),
        lambda m: m.replace(blocks=[b.replace(act=jnp.tanh) for b in m.blocks]),
        lambda m: m.eval(),
        lambda m: jp.at(m, "head.weight").apply(lambda w: w.replace(axes=("a", "b"))),
    ],
    ids=["trainable-flag", "static-int", "static-fn", "training-mode", "metadata"],
)
def test_jit_retraces_when_static_structure_changes(change):
    f, traces = _traced_counter()
    net = Net(key=KEY)
    x = jnp.ones((2, 4))
    f(net, x)
    f(change(net), x)
    assert len(traces) == 2
    f(change(net), x)  # the changed structure is cached too
    assert len(traces) == 2


class _InlineItem(jp.Module):
    weight: jp.Parameter


class _Stack(jp.Module):
    head: jp.Parameter
    items: list = jp.field(inline=True)
    tail: jp.Parameter
    depth: int = jp.field(static=True)


def _stack(n=3):
    items = [_InlineItem(jp.Parameter(jnp.full((2,), float(i)))) for i in range(n)]
    return _Stack(jp.Parameter(jnp.ones(1)), items, jp.Parameter(jnp.zeros(3)), n)


def test_inline_field_names_items_directly_like_torch_sequential():
    model = _stack()
    assert list(model.state_dict()) == ["head", "tail", "0.weight", "1.weight", "2.weight"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(model)[0]]
    assert paths == [".head.value", "[0].weight.value", "[1].weight.value",
                     "[2].weight.value", ".tail.value"]  # fmt: skip


def test_inline_field_round_trips_through_jit_split_and_surgery():
    model = _stack()
    out = jax.jit(lambda m: m)(model)
    assert type(out.items) is list and len(out.items) == 3 and out.depth == 3
    chex.assert_trees_all_equal(out.state_dict(), model.state_dict())
    params, rest = jp.split(model, jp.trainable)
    assert "1.weight" in params
    chex.assert_trees_all_equal(jp.merge(params, rest).state_dict(), model.state_dict())
    changed = jp.at(model, "1.weight").set(jnp.full((2,), 9.0))
    assert changed.items[1].weight.value.tolist() == [9.0, 9.0]
    assert model.items[1].weight.value.tolist() == [1.0, 1.0]
    loaded = model.load_state_dict({**model.state_dict(), "2.weight": jnp.full((2,), 7.0)})
    assert loaded.items[2].weight.value.tolist() == [7.0, 7.0]


def test_inline_field_must_hold_a_sequence_and_be_unique():
    with pytest.raises(TypeError, match="inline field and must hold a list or tuple"):
        _Stack(jp.Parameter(jnp.ones(1)), {"a": 1}, jp.Parameter(jnp.ones(1)), 1)
    with pytest.raises(TypeError, match="at most one field can be inline"):

        class _Two(jp.Module):
            a: list = jp.field(inline=True)
            b: list = jp.field(inline=True)
