"""PyTorch habits in an immutable world: each works as in PyTorch or fails loudly.

Expected values come from torch where it has an answer (names, state_dict keys, one SGD step,
autograd with a frozen layer, integer parameters); the rest are refusals and warnings.
"""

import copy
import dataclasses
import pickle
import warnings
from typing import Any

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jparam as jp
from jparam import nn

KEY = jax.random.key(0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


# -- 1. `self` (and other method argument names) as field and metadata names -----------------

COLLIDING = ["self", "key", "fields", "name", "value", "model", "trainable"]


@pytest.mark.parametrize("field", COLLIDING)
def test_fields_named_like_method_arguments(field):
    Holder = dataclasses.make_dataclass(
        "Holder", [(field, Any), ("other", Any)], bases=(jp.Module,), init=False
    )
    lin = nn.Linear(2, 2, key=KEY)
    h = Holder(**{field: lin, "other": jp.Parameter(jnp.ones(2))})  # generated __init__
    assert getattr(h, field) is lin
    new = nn.Linear(2, 2, key=jax.random.key(1))
    r = h.replace(**{field: new})
    assert getattr(r, field) is new and getattr(h, field) is lin
    names = [f"{field}.weight", f"{field}.bias"]
    assert list(h.state_dict()) == ["other", *names]
    loaded = h.load_state_dict(r.state_dict())
    chex.assert_trees_all_equal(getattr(loaded, field).weight.value, new.weight.value)
    out = jp.at(h, f"{field}.bias").set(jnp.full(2, 3.0))
    chex.assert_trees_all_equal(getattr(out, field).bias.value, jnp.full(2, 3.0))
    out = jp.at(h, field).set(new)
    assert getattr(out, field) is new


def test_a_field_named_self_like_hf_bert_attention_self():
    class Attention(jp.Module):
        self: nn.Linear  # transformers' BertAttention has `attention.self`
        output: nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.self = nn.Linear(4, 4, key=k1)
            self.output = nn.Linear(4, 4, key=k2)

        def __call__(self, x):
            return self.output(self.self(x))

    a = Attention(KEY)
    lin = nn.Linear(4, 4, key=jax.random.key(3))
    b = a.replace(self=lin)
    assert b.self is lin
    assert [n for n, _ in b.named_parameters()][:2] == ["self.weight", "self.bias"]
    chex.assert_trees_all_close(b(jnp.ones((1, 4))), a.output(lin(jnp.ones((1, 4)))))


@pytest.mark.parametrize("cls", [jp.Parameter, jp.Buffer])
def test_metadata_named_like_arguments(cls):
    p = cls(jnp.ones(2), self=1, value=2, name="w")
    assert p.metadata == {"self": 1, "value": 2, "name": "w"}
    q = p.replace(value=3, self=4)  # keywords are metadata; the value is positional
    assert q.metadata == {"self": 4, "value": 3, "name": "w"}
    chex.assert_trees_all_equal(q.value, jnp.ones(2))
    chex.assert_trees_all_equal(p.replace(jnp.zeros(2)).value, jnp.zeros(2))


def test_replace_value_by_keyword_with_an_array_says_to_pass_it_positionally():
    with pytest.raises(TypeError, match=r"pass it positionally: p\.replace\(x\)"):
        jp.Parameter(jnp.ones(2)).replace(value=jnp.zeros(2))


def test_wrappers_pass_keyword_arguments_named_like_their_own():
    lin = nn.Linear(2, 1, key=KEY)

    def loss(m, x, *, model, self, fn):
        return jnp.sum(m(x)) * model * self * fn

    x = jnp.ones((1, 2))
    g = jp.grad(loss)(lin, x, model=2.0, self=1.0, fn=1.0)
    chex.assert_trees_all_close(g.weight.value, 2.0 * jnp.ones((1, 2)))
    (v, _), _ = jp.value_and_grad(lambda m, model: (jnp.sum(m(x)) * model, 0), True)(lin, model=0.0)
    assert float(v) == 0.0

    class Scaled(jp.Module):
        lin: nn.Linear

        def __call__(self, x, *, model=1.0, self_=1.0):
            return self.lin(x) * model

    out, _ = nn.stateful_call(Scaled(lin), x, model=3.0)
    chex.assert_trees_all_close(out, lin(x) * 3.0)


def test_tied_model_call_takes_a_keyword_named_self():
    class LM(jp.Module):
        a: nn.Linear
        b: nn.Linear

        def __init__(self):
            self.a, self.b = nn.Linear(2, 2, key=KEY), nn.Linear(2, 2, key=jax.random.key(1))

        def __call__(self, x, /, **kwargs):
            return self.b(self.a(x)) * kwargs.get("self", 1.0)

    lm = jp.tie(LM(), "b.weight", "a.weight")
    x = jnp.ones((1, 2))
    chex.assert_trees_all_close(lm(x, self=2.0), 2.0 * lm(x))


# -- 2. a module that holds itself ------------------------------------------------------------


def test_a_module_holding_itself_is_refused_naming_the_field():
    class Me(jp.Module):
        w: jp.Parameter
        me: Any

        def __init__(self):
            self.w = jp.Parameter(jnp.ones(2))
            self.me = self

    with pytest.raises(ValueError, match=r"Me\.me holds the Me being built \(itself\) at 'me'"):
        Me()


@pytest.mark.parametrize("wrap", [lambda m: [1, m], lambda m: {"x": (m,)}])
def test_a_module_holding_itself_inside_containers_is_refused(wrap):
    class Me(jp.Module):
        parts: Any

        def __init__(self):
            self.parts = wrap(self)

    with pytest.raises(ValueError, match=r"Me\.parts holds the Me being built \(itself\) at"):
        Me()


def test_a_container_holding_itself_is_refused_at_construction_and_in_replace():
    class Box(jp.Module):
        items: list

    loop: list = [jp.Parameter(jnp.ones(1))]
    loop.append(loop)
    with pytest.raises(ValueError, match=r"Box\.items holds the list that contains it"):
        Box(loop)
    box = Box([jp.Parameter(jnp.ones(1))])
    with pytest.raises(ValueError, match=r"Box\.items holds the list that contains it"):
        box.replace(items=loop)


def test_holding_the_old_module_in_a_replaced_copy_is_no_cycle():
    class Node(jp.Module):
        w: jp.Parameter
        prev: Any

    a = Node(jp.Parameter(jnp.ones(1)), None)
    b = a.replace(prev=a)  # the copy holds the original: a finite tree
    assert len(jax.tree.leaves(b)) == 2


# -- 3. parameters and buffers are immutable ----------------------------------------------------


@pytest.mark.parametrize("cls", [jp.Parameter, jp.Buffer])
def test_assigning_or_deleting_an_attribute_raises_and_says_how(cls):
    p = cls(jnp.ones(3))
    frozen = p.freeze() if cls is jp.Parameter else p.replace()
    flag = "trainable" if cls is jp.Parameter else "persistent"
    for name in ("value", "data", "metadata", "shape", "dtype", flag):
        with pytest.raises(dataclasses.FrozenInstanceError, match=r"p = p\.replace\(new_value\)"):
            setattr(p, name, jnp.zeros(3))
        with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
            delattr(p, name)
    with pytest.raises(AttributeError):
        p.grad = jnp.zeros(3)  # no new attributes either
    chex.assert_trees_all_equal(p.value, jnp.ones(3))
    chex.assert_trees_all_equal(frozen.value, jnp.ones(3))
    if cls is jp.Parameter:
        with pytest.raises(dataclasses.FrozenInstanceError, match=r"p\.freeze\(\)"):
            p.requires_grad = False


@pytest.mark.parametrize("cls", [jp.Parameter, jp.Buffer])
def test_pickle_and_copy_round_trip_immutable_variables(cls):
    p = cls(jnp.arange(3.0), axes=("x",))
    p = p.freeze() if cls is jp.Parameter else p
    for q in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert type(q) is cls and q.metadata == {"axes": ("x",)}
        chex.assert_trees_all_equal(q.value, p.value)
        assert jax.tree.structure(q) == jax.tree.structure(p)
        with pytest.raises(AttributeError):
            q.value = 1


# -- 4. a frozen Parameter (or a Buffer) contributes no gradient under any transform -----------


class TwoLayer(jp.Module):
    first: nn.Linear
    second: nn.Linear
    shift: jp.Buffer

    def __init__(self, w1, b1, w2, b2):
        self.first = nn.Linear(3, 4, key=KEY).replace(
            weight=jp.Parameter(w1), bias=jp.Parameter(b1)
        )
        self.second = nn.Linear(4, 2, key=KEY).replace(
            weight=jp.Parameter(w2), bias=jp.Parameter(b2)
        )
        self.shift = jp.Buffer(jnp.full(3, 0.5))

    def __call__(self, x):
        return self.second(jnp.tanh(self.first(x + self.shift)))


def _torch_pair():
    torch.manual_seed(0)
    t1, t2 = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    t1.requires_grad_(False)
    x = torch.randn(5, 3)
    out = t2(torch.tanh(t1(x + 0.5)))
    (out**2).sum().backward()
    model = TwoLayer(*(jnp.asarray(_np(t)) for t in (t1.weight, t1.bias, t2.weight, t2.bias)))
    return model.freeze("first"), jnp.asarray(_np(x)), {"w": _np(t2.weight.grad)}, t1


def _loss(m, x):
    return jnp.sum(m(x) ** 2)


def _check_frozen_grads(g, torch_grads):
    chex.assert_trees_all_close(g.second.weight.value, torch_grads["w"], rtol=1e-5, atol=1e-6)
    for leaf in (g.first.weight, g.first.bias, g.shift):
        chex.assert_trees_all_equal(leaf.value, jnp.zeros_like(leaf.value))


@pytest.mark.parametrize(
    "transform",
    [
        lambda f: jax.grad(f),
        lambda f: jax.jit(jax.grad(f)),
        lambda f: lambda m, x: jax.vjp(lambda m: f(m, x), m)[1](jnp.ones(()))[0],
        lambda f: lambda m, x: jax.jacrev(f)(m, x),
        lambda f: eqx.filter_grad(f),
    ],
    ids=["grad", "jit_grad", "vjp", "jacrev", "eqx_filter_grad"],
)
def test_frozen_parameters_and_buffers_get_zero_gradient(transform):
    model, x, torch_grads, t1 = _torch_pair()
    assert t1.weight.grad is None  # torch: a frozen layer gets no gradient
    _check_frozen_grads(transform(_loss)(model, x), torch_grads)


def test_every_way_of_reading_a_frozen_value_stops_the_gradient():
    p = jp.Parameter(jnp.arange(1.0, 4.0)).freeze()
    x = jnp.ones((3, 3))
    reads = [
        lambda p: p.value,
        lambda p: p * 2,
        lambda p: 2 * p,
        lambda p: x @ p,
        lambda p: p @ x,
        lambda p: -p,
        lambda p: p[1:],
        lambda p: jnp.tanh(p),
        lambda p: jnp.asarray(p),
        lambda p: p.sum(),
        lambda p: p.T,
        lambda p: p**2,
    ]
    for read in reads:
        g = jax.grad(lambda p, read=read: jnp.sum(read(p)))(p)
        chex.assert_trees_all_equal(g.value, jnp.zeros(3))
        g = jax.jit(jax.grad(lambda p, read=read: jnp.sum(read(p))))(p)
        chex.assert_trees_all_equal(g.value, jnp.zeros(3))
    trainable = jax.grad(lambda p: jnp.sum(p * 2))(p.unfreeze())
    chex.assert_trees_all_equal(trainable.value, jnp.full(3, 2.0))


def test_flattening_still_sees_the_raw_array():
    raw = jnp.arange(3.0)
    p = jp.Parameter(raw, trainable=False)
    assert jax.tree.leaves(p)[0] is raw
    seen = []
    jax.jit(lambda p: seen.append(type(jax.tree.leaves(p)[0])) or p)(p)
    assert issubclass(seen[0], jax.core.Tracer)
    assert p.value is raw  # outside a trace: the stored array, nothing added


def test_raw_optax_on_the_whole_model_leaves_frozen_parameters_unchanged():
    model, x, torch_grads, _ = _torch_pair()
    tx = optax.sgd(0.1)
    state = tx.init(model)
    grads = jax.grad(_loss)(model, x)
    updates, state = tx.update(grads, state, model)
    new = optax.apply_updates(model, updates)
    chex.assert_trees_all_equal(new.first.weight.value, model.first.weight.value)
    chex.assert_trees_all_equal(new.shift.value, model.shift.value)
    chex.assert_trees_all_close(
        new.second.weight.value,
        model.second.weight.value - 0.1 * torch_grads["w"],
        rtol=1e-5,
        atol=1e-6,
    )


# -- 5. integer parameters are frozen, as PyTorch refuses requires_grad on them ----------------


def test_integer_parameters_are_frozen_and_cannot_be_made_trainable():
    with pytest.raises(RuntimeError, match="floating point and complex"):
        torch.nn.Parameter(torch.arange(3))  # the oracle: PyTorch refuses
    assert not torch.nn.Parameter(torch.arange(3), requires_grad=False).requires_grad
    p = jp.Parameter(jnp.arange(3))
    assert p.trainable is False
    assert jp.Parameter(jnp.array([True])).trainable is False
    assert jp.Parameter(jnp.ones(2, jnp.complex64)).trainable is True
    assert jp.Parameter(jnp.ones(2, jnp.bfloat16)).trainable is True
    msg = r"i32\[3\]: only floating and complex parameters can be trainable"
    with pytest.raises(TypeError, match=msg):
        jp.Parameter(jnp.arange(3), trainable=True)
    with pytest.raises(TypeError, match=msg):
        p.unfreeze()
    with pytest.raises(TypeError, match=msg):
        p.replace(trainable=True)
    with pytest.raises(TypeError, match="only floating and complex"):
        jp.Parameter(jnp.ones(3)).replace(jnp.arange(3))  # a trainable one given integers
    assert p.freeze().trainable is False
    assert jp.Parameter(jnp.ones(3)).freeze().replace(jnp.arange(3)).dtype == jnp.int32


class WithIndex(jp.Module):
    lin: nn.Linear
    index: jp.Parameter

    def __init__(self):
        self.lin = nn.Linear(2, 2, key=KEY)
        self.index = jp.Parameter(jnp.array([1, 0]))

    def __call__(self, x):
        return self.lin(x)[:, self.index.value]


def test_module_unfreeze_leaves_integer_parameters_frozen():
    m = WithIndex().freeze()
    on = m.unfreeze()
    assert on.lin.weight.trainable and not on.index.trainable
    assert on.unfreeze("*").index.trainable is False
    with pytest.raises(TypeError, match=r"unfreeze\('index'\) selects only integer parameters"):
        m.unfreeze("index")
    g = jp.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(WithIndex())
    assert g.index is None and g.lin.weight is not None


# -- 6. plain arrays are not parameters: said once, with the fix --------------------------------


def test_plain_array_field_warns_once_per_class_and_field_naming_the_fix():
    class Masked(jp.Module):
        w: jp.Parameter
        mask: jax.Array

    with pytest.warns(jp.PlainArrayWarning) as got:
        Masked(jp.Parameter(jnp.ones(2)), jnp.ones(2))
    text = str(got[0].message)
    assert got[0].filename == __file__  # points at the construction line
    for part in ("Masked.mask", "f32[2]", "jp.Parameter(", "jp.Buffer(", "plain_arrays=True"):
        assert part in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Masked(jp.Parameter(jnp.ones(2)), jnp.ones(2))  # once per class and field


@pytest.mark.parametrize(
    "make",
    [
        lambda: eqx.nn.Linear(3, 2, key=KEY),
        lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
    ],
    ids=["equinox", "flax_nnx"],
)
def test_arrays_inside_foreign_layers_are_named_in_the_warning(make):
    class Host(jp.Module):
        layer: Any

    with pytest.warns(jp.PlainArrayWarning, match=r"Host\.layer holds plain arrays \(layer\."):
        h = Host(make())
    assert list(h.named_parameters()) == []


def test_plain_arrays_can_be_declared_or_silenced():
    class Declared(jp.Module):
        mask: jax.Array = jp.field(plain_arrays=True)
        seed: jax.Array

    class Silenced(jp.Module):
        mask: jax.Array

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Declared(jnp.ones(2), jax.random.key(1))  # typed PRNG keys are never warned about
        warnings.filterwarnings("ignore", category=jp.PlainArrayWarning)
        Silenced(jnp.ones(2))


def test_library_layers_hold_no_plain_arrays():
    k = jax.random.split(KEY, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jp.PlainArrayWarning)
        layers = [
            nn.Linear(2, 3, key=k[0]),
            nn.Conv2d(1, 2, 3, key=k[1]),
            nn.BatchNorm2d(2),
            nn.LayerNorm(3),
            nn.Embedding(4, 3, key=k[2]),
            nn.MultiheadAttention(4, 2, key=k[3]),
            nn.Dropout(0.1),
            nn.Sequential(nn.Linear(2, 2, key=k[0]), nn.ReLU()),
            nn.Stacked(lambda kk: nn.Linear(2, 2, key=kk), 3, key=k[1]),
            jp.parametrize(
                jp.Parameter(jnp.ones((3, 3))), jp.parametrizations.spectral_norm(key=k[2])
            ),
            jp.parametrize(
                jp.Parameter(jnp.ones((3, 3))),
                jp.parametrizations.spectral_norm(key=jax.random.PRNGKey(0)),
            ),
        ]
    assert len(layers) == 11


# -- 7. sharing a layer or a Parameter by reference ties it, as in PyTorch ----------------------


class TorchShared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        lin = torch.nn.Linear(3, 3)
        self.a = self.b = lin
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class Shared(jp.Module):
    a: nn.Linear
    b: nn.Linear
    head: nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.a = self.b = nn.Linear(3, 3, key=k1)
        self.head = nn.Linear(3, 2, key=k2)

    def __call__(self, x):
        return self.head(jnp.tanh(self.b(jnp.tanh(self.a(x)))))


def test_sharing_a_layer_ties_it_like_torch_names_and_one_sgd_step():
    torch.manual_seed(0)
    tm = TorchShared()
    model = Shared(KEY)
    model = model.load_state_dict({k: _np(v) for k, v in tm.state_dict().items()})
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert list(model.state_dict()) == list(tm.state_dict())
    assert jp.ties(model) == {"b.weight": ("a.weight", False), "b.bias": ("a.bias", False)}

    x = torch.randn(4, 3)
    tx = torch.optim.SGD(tm.parameters(), lr=0.1)
    tx.zero_grad()
    (tm(x) ** 2).sum().backward()
    tx.step()

    opt = jp.Optimizer(optax.sgd(0.1), model)
    assert len(jax.tree.leaves(opt.state)) <= len(list(model.parameters()))

    @jax.jit
    def step(model, opt, x):
        grads = jp.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        return opt.update(model, grads)

    model, opt = step(model, opt, jnp.asarray(_np(x)))
    got, want = model.state_dict(), tm.state_dict()
    assert list(got) == list(want)
    for name in want:
        chex.assert_trees_all_close(got[name], _np(want[name]), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(got["a.weight"], got["b.weight"])  # one array, never drifts


def test_one_parameter_at_two_paths_and_inside_lists_and_dicts_is_tied():
    class Holder(jp.Module):
        w: jp.Parameter
        parts: list
        table: dict

        def __init__(self):
            self.w = jp.Parameter(jnp.ones(2))
            lin = nn.Linear(2, 2, key=KEY)
            self.parts = [self.w, lin]
            self.table = {"x": lin}

        def __call__(self, x):
            return self.table["x"](self.parts[1](x)) * self.parts[0]

    h = Holder()
    assert jp.ties(h) == {
        "parts.0": ("w", False),
        "table.x.weight": ("parts.1.weight", False),
        "table.x.bias": ("parts.1.bias", False),
    }
    assert [n for n, _ in h.named_parameters()] == ["w", "parts.1.weight", "parts.1.bias"]
    g = jp.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(h)
    assert [n for n, _ in jp.named_parameters(g)] == ["w", "parts.1.weight", "parts.1.bias"]


def test_a_tied_model_saves_and_loads(tmp_path):
    model = Shared(KEY)
    jp.save(tmp_path / "m.safetensors", model)
    other = jp.load(tmp_path / "m.safetensors", Shared(jax.random.key(5)))
    for name, value in model.state_dict().items():
        chex.assert_trees_all_equal(other.state_dict()[name], value)
    assert jp.ties(other) == jp.ties(model)


def test_a_shared_buffer_is_refused_naming_both_paths():
    class TwoNorms(jp.Module):
        a: nn.BatchNorm1d
        b: nn.BatchNorm1d

        def __init__(self):
            self.a = self.b = nn.BatchNorm1d(3)

    with pytest.raises(ValueError, match=r"a\.weight|a\.running_mean and b\.running_mean"):
        TwoNorms()


def test_a_shared_layer_without_arrays_needs_no_tie():
    class Acts(jp.Module):
        a: nn.ReLU
        b: nn.ReLU

        def __init__(self):
            self.a = self.b = nn.ReLU()

    m = Acts()
    assert type(m) is Acts and jp.ties(m) == {}


def test_one_layer_repeated_in_a_sequential_and_nested_sharing_match_torch():
    torch.manual_seed(0)
    t_lin = torch.nn.Linear(2, 2)
    t_seq = torch.nn.Sequential(t_lin, torch.nn.Tanh(), t_lin, t_lin)
    seq = nn.Sequential(*(lambda lin: [lin, nn.Tanh(), lin, lin])(nn.Linear(2, 2, key=KEY)))
    seq = seq.load_state_dict({k: _np(v) for k, v in t_seq.state_dict().items()})
    assert [n for n, _ in seq.named_parameters()] == [n for n, _ in t_seq.named_parameters()]
    assert list(seq.state_dict()) == list(t_seq.state_dict())
    x = torch.randn(3, 2)
    chex.assert_trees_all_close(seq(jnp.asarray(_np(x))), _np(t_seq(x)), rtol=1e-5, atol=1e-6)
    opt = jp.Optimizer(optax.adam(1e-3), seq)
    assert set(opt.state[0].mu) == {"0.weight", "0.bias"}  # one optimizer state

    class TInner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = self.b = torch.nn.Linear(2, 2)

    class TOuter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = self.y = TInner()

    class Inner(jp.Module):
        a: nn.Linear
        b: nn.Linear

        def __init__(self):
            self.a = self.b = nn.Linear(2, 2, key=KEY)

    class Outer(jp.Module):
        x: Inner
        y: Inner

        def __init__(self):
            self.x = self.y = Inner()

    t, o = TOuter(), Outer()
    assert [n for n, _ in o.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert list(o.state_dict()) == list(t.state_dict())
