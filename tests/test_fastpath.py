"""The jit fast path (`jparam.fastpath`): a model is one dispatch node, returned as a lazy root.

What a user must never notice: a module a jitted call returned is an ordinary module at every
door (attributes, ``vars``, pickling, copies, walks, ``jax.tree_util``), mutating a list or
dict inside one is seen by the next call, and a training loop compiles once. What they should
notice is the speed (``benchmarks/step_overhead.py``); here the mechanism is checked to be on.
"""

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from jax import tree_util
from test_properties import models

import jparam as jp
from jparam import fastpath, nn
from jparam.placeholder import Placeholder


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter
    scale: float = jp.field(static=True, default=1.0)
    gain: Any = None  # a dynamic field with a class-level default

    def __call__(self, x):
        return (x @ self.weight.T + self.bias) * self.scale


class MLP(jp.Module):
    layers: list
    heads: dict

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return sum(h(x) for _, h in sorted(self.heads.items()))


def _linear(key, n=4, scale=1.0, gain=None):
    w = jax.random.normal(key, (n, n))
    return Linear(jp.Parameter(w), jp.Parameter(jnp.zeros(n)), scale=scale, gain=gain)


def _mlp(depth=3, n=4):
    keys = jax.random.split(jax.random.key(0), depth + 2)
    layers = [_linear(k, n, scale=0.5 + i) for i, k in enumerate(keys[:depth])]
    heads = {"a": _linear(keys[-2], n), "b": _linear(keys[-1], n, gain=jp.Buffer(jnp.ones(n)))}
    return MLP(layers, heads)


_identity = jax.jit(lambda m: m)


def _lazy(model):
    """A lazy root holding ``model``'s structure (the fast path's output from the 2nd call)."""
    out = _identity(_identity(model))
    assert fastpath.is_lazy(out)
    return out


def _anatomy(x: Any) -> Any:
    """Every object of a tree as (type, contents), down to array values: nothing jparam walks."""
    if isinstance(x, fastpath.FastNode):
        return (type(x), [(k, _anatomy(v)) for k, v in vars(x).items()])
    if isinstance(x, jp.Parameter | jp.Buffer):
        return (type(x), x.aux, _anatomy(x.value))
    if isinstance(x, Placeholder):  # a tie: compares by identity, so compare its parts
        return (type(x), x.aux)
    if isinstance(x, list | tuple):
        return (type(x), [_anatomy(v) for v in x])
    if isinstance(x, dict):
        return (type(x), [(k, _anatomy(v)) for k, v in x.items()])
    if isinstance(x, jax.Array | np.ndarray):
        return ("array", str(x.dtype), x.shape, np.asarray(x).tobytes())
    return x


def _ordinary(model):
    """What JAX's own unflatten makes of ``model``'s leaves (dicts come back in key order)."""
    leaves, treedef = tree_util.tree_flatten(model)
    return tree_util.tree_unflatten(treedef, leaves)


def test_the_fast_path_is_on_for_this_jax():
    # If a JAX release moves its dispatch registry, jparam falls back to the ordinary
    # registration (correct, but every jitted call rebuilds the model): say so loudly here.
    assert fastpath.ACTIVE, "jax._src.tree_util.dispatch_registry is gone: update jparam.fastpath"
    model = _mlp()
    first = _identity(model)
    assert not fastpath.is_lazy(first)  # the first call's outputs come from JAX's Python path
    assert fastpath.is_lazy(_identity(first))


@settings(max_examples=40)
@given(models)
def test_a_lazy_root_is_the_same_tree_as_the_ordinary_one(model):
    out = _identity(_identity(model))
    plan = fastpath._flat(out)[1]
    leaves, treedef = tree_util.tree_flatten(model)
    assert fastpath.is_lazy(out) == plan.lazy
    assert tree_util.tree_structure(out) == treedef  # builds it
    assert not fastpath.is_lazy(out)
    ordinary = _anatomy(_ordinary(model))
    assert _anatomy(out) == ordinary
    assert _anatomy(fastpath._dispatch_unflatten(plan, tuple(leaves))) == ordinary


DOORS = {
    "attribute": lambda m: m.layers[1].weight.shape,
    "static field with a default": lambda m: [layer.scale for layer in m.layers],
    "dynamic field with a default": lambda m: m.heads["a"].gain,
    "vars": lambda m: sorted(vars(m)),
    "__dict__": lambda m: sorted(m.__dict__),
    "dir": lambda m: "layers" in dir(m),
    "hasattr": lambda m: hasattr(m, "heads"),
    "training": lambda m: m.training,
    "repr": repr,
    "named_parameters": lambda m: [n for n, _ in m.named_parameters()],
    "state_dict": lambda m: {k: np.asarray(v).tolist() for k, v in m.state_dict().items()},
    "tree_flatten_with_path": lambda m: [
        jax.tree_util.keystr(p) for p, _ in tree_util.tree_flatten_with_path(m)[0]
    ],
    "tree_map": lambda m: jax.tree.map(lambda x: x.shape, m).layers[0].weight,
    "dataclasses.fields": lambda m: [
        np.asarray(getattr(m.layers[0], f.name)).tolist()
        for f in dataclasses.fields(m.layers[0])
        if f.name in ("weight", "bias")
    ],
    "pickle": lambda m: pickle.loads(pickle.dumps(m)).layers[2].scale,
    "copy": lambda m: copy.copy(m).heads["b"].gain.shape,
    "deepcopy": lambda m: np.asarray(copy.deepcopy(m).layers[0].bias).tolist(),
    "replace": lambda m: len(m.replace(layers=m.layers[:1]).layers),
    "freeze": lambda m: [p.trainable for p in m.freeze("layers.*").parameters()],
    "jp.at": lambda m: jp.at(m, "layers.0.bias").get().shape,
    "call": lambda m: np.asarray(m(jnp.ones(4))).round(5).tolist(),
}


@pytest.mark.parametrize("door", DOORS)
def test_every_door_sees_the_whole_module(door):
    model = _mlp()
    expected = DOORS[door](model)
    lazy = _lazy(model)
    assert DOORS[door](lazy) == expected
    assert not fastpath.is_lazy(lazy)


def test_a_field_default_on_the_class_answers_only_class_level_reads():
    # A lazy root's empty dict would otherwise show the class default instead of the value.
    assert Linear.scale == 1.0 and Linear.gain is None  # as dataclasses leaves them

    class Wider(Linear):
        scale: float = jp.field(static=True, default=2.0)

    key = jax.random.key(1)
    assert _linear(key).scale == 1.0
    assert Wider(_linear(key).weight, _linear(key).bias).scale == 2.0
    assert _lazy(_linear(key, scale=3.0)).scale == 3.0
    assert _lazy(_linear(key, gain=jp.Buffer(jnp.ones(4)))).gain.shape == (4,)


def test_a_pickle_holds_no_cache_and_loads_as_an_ordinary_module():
    model = _mlp()
    lazy = _lazy(model)
    data = pickle.dumps(lazy)
    assert b"Plan" not in data and b"jparam.fastpath" not in data
    back = pickle.loads(data)
    assert not fastpath.is_lazy(back)
    assert _anatomy(back) == _anatomy(_ordinary(model))


@pytest.mark.parametrize("where", ["flattened before", "returned by jit"])
@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.layers.append(_linear(jax.random.key(7))),
        lambda m: m.layers.__setitem__(0, _linear(jax.random.key(7), scale=9.0)),
        lambda m: m.layers.pop(),
        lambda m: m.heads.__setitem__("a", _linear(jax.random.key(7))),
        lambda m: m.heads.__setitem__("c", _linear(jax.random.key(7))),
        lambda m: m.heads.pop("a"),
    ],
    ids=["list append", "list item", "list pop", "dict item", "dict new key", "dict pop"],
)
def test_mutating_a_list_or_dict_inside_is_seen_by_the_next_call(where, mutate):
    forward = jax.jit(lambda m, x: m(x))
    x = jnp.ones(4)
    model = _mlp()
    if where == "flattened before":
        forward(model, x)  # caches the flat form on the model object
    else:
        model = _identity(_identity(model))
        forward(model, x)
    mutate(model)
    fresh = MLP(list(model.layers), dict(model.heads))  # built anew: nothing cached
    chex.assert_trees_all_close(forward(model, x), fresh(x), rtol=1e-6)
    assert tree_util.tree_structure(_identity(model)) == tree_util.tree_structure(fresh)


def test_a_node_jparam_does_not_know_is_flattened_each_call():
    @tree_util.register_pytree_node_class
    class Bag:  # a mutable third-party node
        def __init__(self, items):
            self.items = items

        def tree_flatten(self):
            return tuple(self.items), len(self.items)

        @classmethod
        def tree_unflatten(cls, n, children):
            return cls(list(children))

    class Holder(jp.Module):
        bag: Any = jp.field(plain_arrays=True)

    model = Holder(Bag([jnp.ones(2)]))
    total = jax.jit(lambda m: sum(jnp.sum(v) for v in m.bag.items))
    assert total(model) == 2.0
    model.bag.items.append(jnp.ones(3))
    assert total(model) == 5.0
    out = _identity(_identity(model))
    assert fastpath.is_lazy(out)  # lazy still (nobody can reach inside before it is built)
    assert total(out) == 5.0
    out.bag.items.append(jnp.ones(1))
    assert total(out) == 6.0


def test_a_class_with_its_own_getattr_is_built_at_once():
    class Forwarding(jp.Module):
        inner: Linear

        def __getattr__(self, name):
            return getattr(self.inner, name)

    model = Forwarding(_linear(jax.random.key(0)))
    out = _identity(_identity(model))
    assert not fastpath.is_lazy(out)
    assert out.weight.shape == (4, 4)
    assert _anatomy(out) == _anatomy(_ordinary(model))


def test_a_later_getattr_in_the_mro_still_answers():
    # Parametrized is a Module and an ArrayNode, whose __getattr__ forwards array methods.
    pz = jp.parametrize(jp.Parameter(jnp.full((2, 3), 2.0)), jp.parametrizations.positive())
    expected = float(pz.sum())
    lazy = _lazy(pz)
    assert float(lazy.sum()) == pytest.approx(expected)
    assert float(lazy.sum()) == pytest.approx(expected)  # built now: the forwarding itself
    with pytest.raises(AttributeError, match="no_such"):
        lazy.no_such


def test_a_module_flattened_while_it_is_built_is_not_cached():
    seen = []

    class Eager(jp.Module):
        a: jp.Parameter
        b: Any

        def __init__(self):
            self.a = jp.Parameter(jnp.ones(2))
            self.b = None
            self.training = True  # what construction fills in at the end
            seen.append(len(jax.jit(lambda m: jax.tree.leaves(m))(self)))
            self.b = jp.Parameter(jnp.ones(3))

    model = Eager()
    assert seen == [1]
    assert len(jax.jit(lambda m: jax.tree.leaves(m))(model)) == 2


def test_threads_that_look_at_one_lazy_root_build_it_once():
    lazy = _lazy(_mlp(depth=16))
    plan = fastpath._flat(lazy)[1]
    build, calls = plan.build, []

    def slow_build(leaves):  # gives every other thread time to arrive mid-build
        calls.append(1)
        time.sleep(0.05)
        return build(leaves)

    barrier, got = threading.Barrier(8), []

    def look():
        barrier.wait()
        got.append(lazy.layers)

    plan.build = slow_build
    try:
        threads = [threading.Thread(target=look) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        plan.build = build
    assert len(calls) == 1
    assert all(g is lazy.layers for g in got)


def test_a_training_loop_compiles_once_and_matches_eager_steps():
    tx = optax.adam(1e-2)
    x, y = jnp.ones((2, 4)), jnp.zeros((2, 4))

    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    def step(model, opt):
        grads = jp.grad(loss_fn)(model)
        return opt.update(model, grads)

    jitted = jax.jit(step, donate_argnums=(0, 1))
    model = _mlp()
    opt = jp.Optimizer(tx, model)
    ref_model, ref_opt = _mlp(), jp.Optimizer(tx, _mlp())
    for _ in range(4):
        model, opt = jitted(model, opt)
        ref_model, ref_opt = step(ref_model, ref_opt)
    assert fastpath.is_lazy(model)
    assert jitted._cache_size() == 1
    chex.assert_trees_all_close(
        dict(model.state_dict()), dict(ref_model.state_dict()), rtol=1e-5, atol=1e-6
    )
    # A freeze is a new structure: one more compilation, by design.
    frozen = model.freeze("heads.*")
    jitted(frozen, jp.Optimizer(tx, frozen))
    assert jitted._cache_size() == 2


def test_nn_layers_and_containers_round_trip_lazily():
    keys = jax.random.split(jax.random.key(0), 3)
    model = nn.Sequential(
        nn.Linear(4, 8, key=keys[0]),
        nn.ReLU(),
        nn.ModuleList([nn.Linear(8, 8, key=keys[1])]),
        nn.BatchNorm1d(8),
    )
    lazy = _lazy(model)
    assert _anatomy(lazy) == _anatomy(_ordinary(model))
    assert list(lazy.state_dict()) == list(model.state_dict())


def test_ties_survive_a_lazy_round_trip():
    key = jax.random.key(0)
    emb = nn.Embedding(10, 4, key=key)
    head = nn.Linear(4, 10, bias=False, key=key)

    class LM(jp.Module):
        emb: nn.Embedding
        head: nn.Linear

    model = jp.tie(LM(emb, head), "head.weight", "emb.weight")
    lazy = _lazy(model)
    assert list(lazy.state_dict()) == list(model.state_dict())
    assert _anatomy(lazy) == _anatomy(_ordinary(model))


def test_with_the_fast_path_off_modules_register_the_ordinary_way():
    # JPARAM_NO_FASTPATH=1 (or a JAX without the private registry): slower, never different.
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        import jparam as jp
        from jparam import fastpath
        assert not fastpath.ACTIVE
        class M(jp.Module):
            w: jp.Parameter
        f = jax.jit(lambda m: m)
        out = f(f(M(jp.Parameter(jnp.ones(2)))))
        assert not fastpath.is_lazy(out) and out.w.shape == (2,)
        assert f._cache_size() == 1
        print("ok")
        """
    )
    env = {**os.environ, "JPARAM_NO_FASTPATH": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
