"""Names and walks: named_parameters/buffers/children/modules, methods and free functions."""

import re

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import tree_util
from twin_models import Block, Linear, Net, Norm, torch_net

import jparam as jp

NET_PARAMS = [
    "embed",
    "blocks.0.scale",
    "blocks.0.fc.weight",
    "blocks.0.fc.bias",
    "blocks.0.norm.weight",
    "blocks.0.norm.bias",
    "blocks.1.scale",
    "blocks.1.fc.weight",
    "blocks.1.fc.bias",
    "blocks.1.norm.weight",
    "blocks.1.norm.bias",
    "head.weight",
    "head.bias",
]
NORM_BUFFERS = ["running_mean", "running_var", "num_batches_tracked", "scratch"]
NET_BUFFERS = [
    "mask",
    "blocks.0.step",
    *(f"blocks.0.norm.{b}" for b in NORM_BUFFERS),
    "blocks.1.step",
    *(f"blocks.1.norm.{b}" for b in NORM_BUFFERS),
]


class Tied(jp.Module):
    a: Linear
    b: Linear
    w: jp.Parameter
    w2: jp.Parameter


def tied():
    lin = Linear(2, 2)
    w = jp.Parameter(jnp.ones(3))
    return Tied(lin, lin, w, w)


# -- methods -----------------------------------------------------------------------------------


def test_named_parameters_order_and_values():
    net = Net()
    named = list(net.named_parameters())
    assert [n for n, _ in named] == NET_PARAMS
    assert all(isinstance(p, jp.Parameter) for _, p in named)
    assert dict(named)["head.weight"] is net.head.weight
    assert list(net.parameters()) == [p for _, p in named]


def test_named_parameters_prefix_and_recurse():
    net = Net()
    assert [n for n, _ in net.named_parameters(prefix="model")] == [
        f"model.{n}" for n in NET_PARAMS
    ]
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["embed"]
    assert [n for n, _ in net.blocks[0].named_parameters(recurse=False)] == ["scale"]
    assert list(net.parameters(recurse=False)) == [net.embed]


def test_named_parameters_remove_duplicate():
    t = tied()
    assert [n for n, _ in t.named_parameters()] == ["w", "a.weight", "a.bias"]
    assert [n for n, _ in t.named_parameters(remove_duplicate=False)] == [
        "w",
        "w2",
        "a.weight",
        "a.bias",
        "b.weight",
        "b.bias",
    ]
    assert len(list(t.parameters())) == 3


def test_named_buffers_include_non_persistent():
    net = Net()
    assert [n for n, _ in net.named_buffers()] == NET_BUFFERS
    assert all(isinstance(b, jp.Buffer) for b in net.buffers())
    assert [n for n, _ in net.blocks[0].norm.named_buffers(prefix="n")] == [
        f"n.{b}" for b in NORM_BUFFERS
    ]
    assert [n for n, _ in net.named_buffers(recurse=False)] == ["mask"]
    assert len(list(net.buffers())) == len(NET_BUFFERS)


def test_named_children():
    net = Net()
    assert [n for n, _ in net.named_children()] == ["blocks.0", "blocks.1", "head"]
    assert list(net.children()) == [net.blocks[0], net.blocks[1], net.head]
    assert [n for n, _ in net.blocks[0].named_children()] == ["fc", "norm"]
    assert list(net.head.children()) == []
    t = tied()
    # A layer shared by reference is tied parameter by parameter at construction, so the two
    # places hold two modules (b's parameters are placeholders for a's): both are children.
    assert [n for n, _ in t.named_children()] == ["a", "b"]
    assert jp.ties(t) == {
        "w2": ("w", False),
        "b.weight": ("a.weight", False),
        "b.bias": ("a.bias", False),
    }


def test_named_children_through_dicts_and_tuples():
    class Holder(jp.Module):
        table: dict
        pair: tuple

    h = Holder({"enc": Norm(1), "dec": Norm(1)}, (Norm(1), [Norm(1)]))
    assert [n for n, _ in h.named_children()] == ["table.dec", "table.enc", "pair.0", "pair.1.0"]


def test_named_modules_root_first_pre_order():
    net = Net()
    names = [n for n, _ in net.named_modules()]
    assert names == [
        "",
        "blocks.0",
        "blocks.0.fc",
        "blocks.0.norm",
        "blocks.1",
        "blocks.1.fc",
        "blocks.1.norm",
        "head",
    ]
    mods = list(net.modules())
    assert mods[0] is net and mods[-1] is net.head
    assert [n for n, _ in net.named_modules(prefix="m")][:2] == ["m", "m.blocks.0"]


def test_named_modules_remove_duplicate():
    t = tied()
    assert [n for n, _ in t.named_modules()] == ["", "a", "b"]  # two modules, tied parameters
    assert [n for n, _ in t.named_modules(remove_duplicate=False)] == ["", "a", "b"]


def test_names_match_jax_key_paths():
    net = Net()
    flat = tree_util.tree_flatten_with_path(net, is_leaf=lambda x: isinstance(x, jp.Buffer))[0]
    jax_names = {jp.path_name(p) for p, leaf in flat if isinstance(leaf, jp.Buffer)}
    assert jax_names == set(NET_BUFFERS)
    assert jp.path_name((tree_util.GetAttrKey("blocks"), tree_util.SequenceKey(3))) == "blocks.3"
    assert jp.path_name((tree_util.DictKey("enc"), tree_util.GetAttrKey("w"))) == "enc.w"


def test_dict_children_are_named_by_key_in_sorted_order_stable_under_jit():
    class Holder(jp.Module):
        table: dict

    h = Holder({"zeta": jp.Parameter(1.0), "alpha": jp.Parameter(2.0)})
    names = [n for n, _ in h.named_parameters()]
    assert names == ["table.alpha", "table.zeta"]
    assert [n for n, _ in jax.jit(lambda m: m)(h).named_parameters()] == names


def test_names_are_pytorch_names():
    torch = pytest.importorskip("torch")
    tnet, net = torch_net(), Net()
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in tnet.named_buffers()]
    torch_modules = [n for n, m in tnet.named_modules() if not isinstance(m, torch.nn.ModuleList)]
    assert [n for n, _ in net.named_modules()] == torch_modules
    assert [n for n, _ in net.named_parameters(prefix="m", recurse=True)] == [
        n for n, _ in tnet.named_parameters(prefix="m")
    ]


def test_torch_tied_weights_naming_parity():
    torch = pytest.importorskip("torch")

    class TTied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            lin = torch.nn.Linear(2, 2)
            self.a, self.b = lin, lin
            self.w = torch.nn.Parameter(torch.ones(3))
            self.w2 = self.w

    tt, t = TTied(), tied()
    for kw in ({}, {"remove_duplicate": False}):
        assert [n for n, _ in t.named_parameters(**kw)] == [n for n, _ in tt.named_parameters(**kw)]
    # Modules differ: PyTorch lists the shared layer once, jparam holds two tied modules.
    assert [n for n, _ in t.named_modules(remove_duplicate=False)] == [
        n for n, _ in tt.named_modules(remove_duplicate=False)
    ]
    assert list(t.state_dict()) == list(tt.state_dict())


# -- free functions on arbitrary pytrees -------------------------------------------------------


def test_free_functions_on_a_dict_of_modules():
    tree = {"student": Linear(2, 3), "teacher": Block(2)}
    assert [n for n, _ in jp.named_parameters(tree)] == [
        "student.weight",
        "student.bias",
        "teacher.scale",
        "teacher.fc.weight",
        "teacher.fc.bias",
        "teacher.norm.weight",
        "teacher.norm.bias",
    ]
    assert len(list(jp.parameters(tree))) == 7
    assert [n for n, _ in jp.named_buffers(tree)] == [
        "teacher.step",
        *(f"teacher.norm.{b}" for b in NORM_BUFFERS),
    ]
    assert len(list(jp.buffers(tree))) == 5
    assert [n for n, _ in jp.named_modules(tree)] == [
        "student",
        "teacher",
        "teacher.fc",
        "teacher.norm",
    ]
    assert list(jp.state_dict(tree)) == [
        "student.weight",
        "student.bias",
        "teacher.scale",
        "teacher.step",
        "teacher.fc.weight",
        "teacher.fc.bias",
        "teacher.norm.weight",
        "teacher.norm.bias",
        "teacher.norm.running_mean",
        "teacher.norm.running_var",
        "teacher.norm.num_batches_tracked",
    ]


def test_free_functions_on_a_list_and_with_prefix():
    tree = [Linear(1, 1), [jp.Parameter(0.0)], None]
    assert [n for n, _ in jp.named_parameters(tree)] == ["0.weight", "0.bias", "1.0"]
    assert [n for n, _ in jp.named_parameters(tree, prefix="p")] == [
        "p.0.weight",
        "p.0.bias",
        "p.1.0",
    ]
    assert [n for n, _ in jp.named_modules(tree)] == ["0"]


def test_free_functions_on_a_gradient_tree():
    lin = Linear(3, 2)
    x = jnp.arange(6.0).reshape(2, 3)
    grads = jax.grad(lambda m: jnp.sum(m(x)))(lin)
    named = dict(jp.named_parameters(grads))
    assert list(named) == ["weight", "bias"]
    chex.assert_trees_all_close(named["weight"].value, jnp.tile(x.sum(0), (2, 1)))
    chex.assert_trees_all_close(named["bias"].value, jnp.full(2, 2.0))
    assert list(jp.state_dict(grads)) == ["weight", "bias"]


def test_free_functions_on_a_bare_parameter_and_leaves():
    p = jp.Parameter(1.0)
    assert list(jp.named_parameters(p)) == [("", p)]
    assert list(jp.named_parameters(jnp.ones(2))) == []
    assert list(jp.named_modules({"x": jnp.ones(1)})) == []


def test_map_variables():
    net = Net()
    seen = []

    def zero_frozen(name, v):
        seen.append(name)
        return v.replace(jnp.zeros_like(v.value)) if name.startswith("head") else v

    out = jp.map_variables(net, zero_frozen)
    assert seen[:3] == ["embed", "blocks.0.fc.weight", "blocks.0.fc.bias"]  # key-path order
    assert set(seen) == set(NET_PARAMS) | set(NET_BUFFERS)
    chex.assert_trees_all_equal(out.head.weight.value, jnp.zeros((2, 4)))
    assert float(net.head.weight.value[0, 0]) != 0.0

    class WithArray(jp.Module):
        w: jp.Parameter
        plain: jax.Array = jp.field(plain_arrays=True)

    m = WithArray(jp.Parameter(1.0), jnp.ones(2))
    assert [n for n, _ in _collect(m, arrays=False)] == ["w"]
    assert [n for n, _ in _collect(m, arrays=True)] == ["w", "plain"]


def _collect(tree, arrays):
    seen = []
    jp.map_variables(tree, lambda n, x: seen.append((n, x)) or x, arrays=arrays)
    return seen


# -- names are unique and well formed ----------------------------------------------------------


class Holds(jp.Module):
    d: dict


def _colliding():
    # "a.b" and "a" -> "b" both name their layer "d.a.b": 4 arrays, 2 names.
    return Holds({"a.b": Linear(2, 2), "a": {"b": Linear(2, 2)}})


def test_colliding_names_raise_in_every_walk_naming_both_paths(tmp_path):
    model = _colliding()
    assert len(jax.tree.leaves(model)) == 4
    both = r"both named 'd.a.b': .d\['a'\]\['b'\] and .d\['a.b'\]\. Names join keys"
    for walk in (
        lambda: list(model.named_parameters()),
        lambda: list(model.named_parameters(remove_duplicate=False)),
        lambda: list(model.named_modules()),
        lambda: model.state_dict(),
        lambda: model.load_state_dict({}),
        lambda: jp.split(model, jp.trainable),
        lambda: model.num_parameters(),
    ):
        with pytest.raises(ValueError, match=r"two different entries are both named"):
            walk()
    with pytest.raises(ValueError, match=both):
        model.state_dict()
    with pytest.raises(ValueError, match=r"split: two different entries are both named 'd.a.b"):
        jp.split(model, jp.trainable)
    # jp.save refuses before touching the file that is there.
    path = tmp_path / "m.safetensors"
    jp.save(path, {"x": jnp.ones(2)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="both named"):
        jp.save(path, model)
    assert path.read_bytes() == before


def test_colliding_buffer_and_module_names_and_named_children():
    class WithBuffer(jp.Module):
        stats: jp.Buffer

    model = Holds({"n.stats": jp.Buffer(jnp.ones(1)), "n": WithBuffer(jp.Buffer(jnp.zeros(1)))})
    with pytest.raises(ValueError, match=r"both named 'd.n.stats'"):
        list(model.named_buffers())
    twins = Holds({"x.y": Linear(1, 1), "x": {"y": Linear(1, 1)}})
    with pytest.raises(ValueError, match=r"both named 'd.x.y'"):
        list(twins.named_children())


def test_dotted_and_int_keys_are_fine_when_names_do_not_collide(tmp_path):
    model = Holds({"a.b": Linear(2, 2), "c": Linear(2, 2)})
    assert list(model.state_dict()) == ["d.a.b.weight", "d.a.b.bias", "d.c.weight", "d.c.bias"]
    assert jp.at(model, "d.a.b.weight").get() is model.d["a.b"].weight
    new = jp.at(model, "d.a.b.bias").set(jnp.full(2, 3.0))
    assert float(new.d["a.b"].bias.value[0]) == 3.0
    jp.save(tmp_path / "m.safetensors", new)
    back = jp.load(tmp_path / "m.safetensors", like=model)
    chex.assert_trees_all_equal(back.state_dict(), new.state_dict())
    tied = jp.tie(model, "d.c.weight", "d.a.b.weight")
    assert jp.ties(tied) == {"d.c.weight": ("d.a.b.weight", False)}
    ints = Holds({0: Linear(1, 1), 1: Linear(1, 1)})
    assert list(ints.state_dict()) == ["d.0.weight", "d.0.bias", "d.1.weight", "d.1.bias"]
    assert jp.at(ints, "d.1.bias").get() is ints.d[1].bias


@pytest.mark.parametrize("key", [(1, 2), 1.5, True, "", None, b"k"])
def test_dict_keys_that_cannot_be_names_are_refused(key):
    # PyTorch names are strings; jparam also takes ints (named like list indices). A key that
    # is neither has no name a state_dict could hold: refused wherever a name is made.
    model = Holds({key: Linear(1, 1)})
    for walk in (
        lambda: list(model.named_parameters()),
        lambda: model.state_dict(),
        lambda: jp.split(model, jp.trainable),
    ):
        with pytest.raises(TypeError, match=rf"dict key {re.escape(repr(key))}, which cannot be"):
            walk()
    # Nothing named under such keys: nothing to refuse.
    plain = Holds({(1, 2): None})
    assert list(plain.state_dict()) == []
