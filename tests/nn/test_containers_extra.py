"""`ModuleList`, `ModuleDict`, `ParameterList`, `ParameterDict` and ``Sequential(OrderedDict)``
against PyTorch's containers: names, order, strict loading, and the immutable spellings of
PyTorch's mutating methods. Forward and gradient parity of models built from them is in
tests/nn/test_torch_matrix.py (``CONTAINER_CASES``)."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, load_torch, random

import jparam as jp
from jparam import nn


def _linears(key: jax.Array, n: int) -> list[nn.Linear]:
    return [nn.Linear(3, 3, key=k) for k in jax.random.split(key, n)]


def _same_keys_and_loads(ours: jp.Module, theirs: Any) -> jp.Module:
    """``ours`` has ``theirs``' state_dict keys in order and loads it strictly (values too)."""
    loaded = load_torch(ours, theirs)
    for name, value in theirs.state_dict().items():
        assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    return loaded


# -- ModuleList ----------------------------------------------------------------------------------


def test_module_list_names_slices_and_new_lists_match_torch(torch, key):
    tl = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(3)])
    ml = _same_keys_and_loads(nn.ModuleList(_linears(key, 3)), tl)
    assert len(ml) == 3 and list(ml) == list(ml.entries) and ml[-1] is ml[2]
    _same_keys_and_loads(ml[1:], tl[1:])  # PyTorch renumbers a list slice from 0
    _same_keys_and_loads(ml[::2], tl[::2])
    extra = nn.Linear(3, 3, key=jax.random.key(9))
    grown = ml.append(extra).extend([nn.ReLU()]).insert(0, nn.Tanh())
    tl.append(torch.nn.Linear(3, 3))
    tl.extend([torch.nn.ReLU()])
    tl.insert(0, torch.nn.Tanh())
    assert list(grown.state_dict()) == list(tl.state_dict())
    assert [type(m).__name__ for m in grown] == [type(m).__name__ for m in tl]
    assert len(ml) == 3  # the original is unchanged: the methods return new lists
    assert list((ml + nn.ModuleList([extra])).state_dict()) == list(ml.append(extra).state_dict())


def test_module_list_refuses_mutation_and_non_modules(key):
    ml = nn.ModuleList(_linears(key, 2))
    with pytest.raises(TypeError, match=r"immutable.*jp\.at\(model, 'path\.0'\)"):
        ml[0] = nn.ReLU()
    with pytest.raises(TypeError, match="immutable"):
        del ml[0]
    with pytest.raises(TypeError, match="pop"):
        ml.pop()
    with pytest.raises(IndexError, match="out of range for a ModuleList of 2"):
        ml[2]
    with pytest.raises(TypeError, match="ModuleList item 1 is a function"):
        nn.ModuleList([nn.ReLU(), jax.nn.relu])


def test_module_list_survives_jit_and_at(key):
    ml = nn.ModuleList(_linears(key, 2))
    out = jax.jit(lambda m: m)(ml)
    assert type(out) is nn.ModuleList and list(out.state_dict()) == list(ml.state_dict())
    zero = jp.at(ml, "1.bias").set(jp.Parameter(jnp.zeros(3)))
    assert_close(zero[1].bias.value, np.zeros(3), rtol=0, atol=0)


# -- ModuleDict ----------------------------------------------------------------------------------


def test_module_dict_keeps_insertion_order_like_torch(torch, key):
    keys = ["zeta", "alpha", "mid"]
    td = torch.nn.ModuleDict({k: torch.nn.Linear(3, 3) for k in keys})
    md = _same_keys_and_loads(nn.ModuleDict(dict(zip(keys, _linears(key, 3)))), td)
    assert list(md) == list(md.keys()) == keys and len(md) == 3 and "mid" in md
    assert md["alpha"] is md.alpha and md.get("nope") is None
    assert [k for k, _ in md.items()] == keys and md.values()[0] is md.zeta
    # JAX would sort a dict's keys; the container keeps PyTorch's order through jit and grad
    jitted = jax.jit(lambda m: m)(md)
    assert list(jitted.state_dict()) == list(td.state_dict())
    grads = jax.grad(lambda m: sum(jnp.sum(m[k](jnp.ones(3))) for k in m))(md)
    assert [n for n, _ in jp.named_parameters(grads)] == [n for n, _ in td.named_parameters()]
    pairs = nn.ModuleDict([("b", md.zeta), ("a", md.alpha)])
    assert list(pairs.keys()) == ["b", "a"]


def test_module_dict_update_returns_a_new_dict_like_torchs_update(torch, key):
    td = torch.nn.ModuleDict({"b": torch.nn.Linear(3, 3), "a": torch.nn.Linear(3, 3)})
    md = load_torch(nn.ModuleDict({"b": _linears(key, 1)[0], "a": _linears(key, 1)[0]}), td)
    new = md.update({"c": nn.Linear(3, 2, key=key), "b": nn.Linear(3, 1, key=key)})
    td.update({"c": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 1)})
    assert list(new.state_dict()) == list(td.state_dict())
    assert new["b"].out_features == 1 and list(md) == ["b", "a"]  # the original is unchanged


def test_module_dict_refuses_keys_torch_refuses_and_mutation(torch, key):
    lin = _linears(key, 1)[0]
    for bad in ["a.b", "keys", "training", ""]:
        with pytest.raises(KeyError):
            torch.nn.ModuleDict({bad: torch.nn.Linear(1, 1)})
        with pytest.raises(KeyError, match="ModuleDict key"):
            nn.ModuleDict({bad: lin})
    with pytest.raises(TypeError, match="keys must be strings"):
        nn.ModuleDict({1: lin})
    with pytest.raises(TypeError, match=r"ModuleDict\['x'\] is a function"):
        nn.ModuleDict({"x": jax.nn.relu})
    md = nn.ModuleDict({"a": lin})
    with pytest.raises(TypeError, match=r"d = d.update\(\{'b': value\}\)"):
        md["b"] = lin
    for mutate in (lambda: md.__delitem__("a"), lambda: md.pop("a"), md.clear):
        with pytest.raises(TypeError, match="immutable"):
            mutate()
    with pytest.raises(KeyError, match=r"no key 'b'; keys are \['a'\]"):
        md["b"]


def test_module_dict_pickles_ties_and_works_with_at(key):
    lin, other = _linears(key, 2)
    md = nn.ModuleDict({"x": lin, "y": other})
    back = pickle.loads(pickle.dumps(md))
    assert type(back) is type(md) and list(back.state_dict()) == list(md.state_dict())
    tied = nn.ModuleDict({"enc": lin, "dec": lin})  # one layer at two places is tied
    assert jp.ties(tied) and tied.num_parameters() == lin.num_parameters()
    new = jp.at(md, "y.bias").set(jp.Parameter(jnp.zeros(3)))
    assert_close(new.y.bias.value, np.zeros(3), rtol=0, atol=0)
    assert list(new.keys()) == ["x", "y"]


# -- ParameterList / ParameterDict --------------------------------------------------------------


def test_parameter_list_matches_torch(torch):
    values = [random((2, 3), seed=1), random((4,), seed=2), random((1,), seed=3)]
    tl = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(v)) for v in values])
    pl = _same_keys_and_loads(nn.ParameterList([jnp.zeros_like(v) for v in values]), tl)
    assert [n for n, _ in pl.named_parameters()] == [n for n, _ in tl.named_parameters()]
    _same_keys_and_loads(pl[1:], tl[1:])
    assert isinstance(pl[0], jp.Parameter) and len(pl) == 3
    grown = pl.append(jnp.ones(2)).extend([jp.Parameter(jnp.ones(1), trainable=False)])
    assert list(grown.state_dict()) == ["0", "1", "2", "3", "4"] and not grown[4].trainable
    with pytest.raises(TypeError, match="ParameterList item 0 must be a jp.Parameter"):
        nn.ParameterList([jp.Buffer(jnp.ones(2))])


def test_parameter_dict_order_is_torchs(torch):
    v = {"b": random((2,), seed=1), "a": random((3,), seed=2), "c": random((1,), seed=3)}
    t = {k: torch.nn.Parameter(torch.from_numpy(x)) for k, x in v.items()}
    zeros = {k: jnp.zeros_like(x) for k, x in v.items()}
    # PyTorch sorts a plain dict's keys, keeps an OrderedDict's order
    plain = _same_keys_and_loads(nn.ParameterDict(zeros), torch.nn.ParameterDict(t))
    assert list(plain) == ["a", "b", "c"]
    ordered = nn.ParameterDict(OrderedDict(zeros))
    ordered = _same_keys_and_loads(ordered, torch.nn.ParameterDict(OrderedDict(t)))
    assert list(ordered) == ["b", "a", "c"] and isinstance(ordered["a"], jp.Parameter)
    assert list(jax.jit(lambda d: d)(ordered).state_dict()) == ["b", "a", "c"]
    new = ordered.update(OrderedDict([("z", jnp.ones(1)), ("a", jnp.ones(3))]))
    assert list(new) == ["b", "a", "c", "z"] and float(new["a"].value[0]) == 1.0
    with pytest.raises(KeyError, match="'keys' is already an attribute"):
        nn.ParameterDict({"keys": jnp.ones(1)})


# -- Sequential(OrderedDict) --------------------------------------------------------------------


def _named_pair(torch: Any, key: jax.Array) -> tuple[nn.Sequential, Any]:
    k1, k2 = jax.random.split(key)
    ours = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Linear(3, 4, key=k1)),
                ("act", nn.ReLU()),
                ("fc", nn.Linear(4, 2, key=k2)),
            ]
        )
    )
    theirs = torch.nn.Sequential(
        OrderedDict(
            [
                ("conv1", torch.nn.Linear(3, 4)),
                ("act", torch.nn.ReLU()),
                ("fc", torch.nn.Linear(4, 2)),
            ]
        )
    )
    return ours, theirs


def test_named_sequential_keeps_names_like_torch(torch, key):
    ours, theirs = _named_pair(torch, key)
    seq = _same_keys_and_loads(ours, theirs)
    assert isinstance(seq, nn.Sequential) and len(seq) == 3
    assert seq[0] is seq.conv1 and seq[-1] is seq.fc and list(seq)[1] is seq.act
    x = random((5, 3), seed=4)
    assert_close(jax.jit(lambda m, x: m(x))(seq, x), theirs(torch.from_numpy(x)).detach())
    _same_keys_and_loads(seq[1:], theirs[1:])  # slices keep the names, as in PyTorch
    _same_keys_and_loads(seq[::-1], theirs[::-1])
    assert list(jax.jit(lambda m: m)(seq).state_dict()) == list(theirs.state_dict())
    new = jp.at(seq, "fc").set(nn.Linear(4, 1, key=key))
    assert new.fc.out_features == 1 and new(jnp.ones((1, 3))).shape == (1, 1)


def test_named_sequential_refuses_bad_names(key):
    with pytest.raises(KeyError, match="'layers' is already an attribute"):
        nn.Sequential(OrderedDict([("layers", nn.ReLU())]))
    with pytest.raises(KeyError, match="contain no '.'"):
        nn.Sequential(OrderedDict([("a.b", nn.ReLU())]))
    with pytest.raises(TypeError, match="Sequential layer 'f' is a function"):
        nn.Sequential(OrderedDict([("f", jax.nn.relu)]))


def test_keyed_containers_save_and_torch_loads_the_file_strictly(torch, key, tmp_path):
    from safetensors.torch import load_file

    ours, theirs = _named_pair(torch, key)
    td = torch.nn.ModuleDict({"zeta": torch.nn.Linear(3, 3), "alpha": torch.nn.BatchNorm1d(3)})
    md = nn.ModuleDict({"zeta": _linears(key, 1)[0], "alpha": nn.BatchNorm1d(3)})
    for jm, tm in ((ours, theirs), (md, td)):
        path = tmp_path / "model.safetensors"
        jp.save(path, jm)
        tm.load_state_dict(load_file(path), strict=True)
        for name, value in jm.state_dict().items():
            assert_close(tm.state_dict()[name], value, rtol=0, atol=0)
        assert list(jp.load(path, jm).state_dict()) == list(tm.state_dict())


class _SharedNet(jp.Module):
    """One Linear at two places of a ModuleList, as ``ModuleList([lin, lin])`` in PyTorch."""

    blocks: nn.ModuleList

    def __init__(self, lin: nn.Linear) -> None:
        self.blocks = nn.ModuleList([lin, lin, nn.Tanh()])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x


def test_one_layer_twice_in_a_container_is_tied_like_torch(torch, key):
    tl = torch.nn.Linear(3, 3)
    tm = torch.nn.ModuleList([tl, tl, torch.nn.Tanh()])
    net = _SharedNet(nn.Linear(3, 3, key=key))
    net = net.replace(blocks=load_torch(net.blocks, tm))
    assert jp.ties(net.blocks) == {"1.weight": ("0.weight", False), "1.bias": ("0.bias", False)}
    x = random((2, 3), seed=5)
    tx = torch.from_numpy(x)
    for block in tm:
        tx = block(tx)
    tx.sum().backward()
    out, grads = jax.jit(jax.value_and_grad(lambda m: jnp.sum(m(x))))(net)
    assert_close(out, tx.sum().detach(), rtol=1e-5, atol=1e-6)
    ours = dict(jp.named_parameters(grads))
    assert list(ours) == ["blocks.0.weight", "blocks.0.bias"]  # one parameter, both uses summed
    assert_close(ours["blocks.0.weight"].value, tl.weight.grad, rtol=1e-5, atol=1e-6)
    # new lists keep the tie when both ends stay, as the shared module does in PyTorch
    ml = net.blocks
    assert jp.ties(ml[:2]) == jp.ties(ml) and jp.ties(ml[1:]) == {}
    grown = ml.insert(0, nn.ReLU()).append(nn.ReLU())
    assert jp.ties(grown) == {"2.weight": ("1.weight", False), "2.bias": ("1.bias", False)}
    assert list(grown.state_dict()) == ["1.weight", "1.bias", "2.weight", "2.bias"]
    assert_close(ml[1](x), ml[0](x), rtol=0, atol=0)  # an item read from the list is usable
