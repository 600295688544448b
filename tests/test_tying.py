"""Tied weights: one parameter under two names, with PyTorch's semantics and numerics."""

import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jparam as jp
from jparam import nn

V, D = 7, 4  # vocabulary, width


class LM(jp.Module):
    """PyTorch's tied-embedding language model, small: embed -> tanh(Linear) -> decoder."""

    embed: nn.Embedding
    body: nn.Linear
    decoder: nn.Linear

    def __init__(self, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = nn.Embedding(V, D, key=k1)
        self.body = nn.Linear(D, D, key=k2)
        self.decoder = nn.Linear(D, V, key=k3)

    def hidden(self, ids):
        return jnp.tanh(self.body(self.embed(ids)))

    def __call__(self, ids):
        return self.decoder(self.hidden(ids))


class AE(jp.Module):
    """An autoencoder whose decoder is the encoder transposed."""

    enc: nn.Linear
    dec: nn.Linear

    def __init__(self, *, key):
        k1, k2 = jax.random.split(key)
        self.enc = nn.Linear(5, 3, key=k1)
        self.dec = nn.Linear(3, 5, key=k2)

    def __call__(self, x):
        return self.dec(jnp.tanh(self.enc(x)))


class Outer(jp.Module):
    lm: LM
    head: nn.Linear

    def __init__(self, lm, *, key):
        self.lm = lm
        self.head = nn.Linear(D, V, bias=False, key=key)

    def __call__(self, ids):
        return self.lm(ids)


class Pair(jp.Module):
    """``a`` (m, n) and ``b``, which is ``a`` (``bt=False``) or ``a.T`` (``bt=True``) when tied."""

    a: jp.Parameter
    b: jp.Parameter
    bt: bool = jp.field(static=True)

    def __call__(self, x):
        w = self.b.value.T if self.bt else self.b.value
        return jnp.tanh(x @ self.a.value.T) @ w


IDS = jnp.array([[1, 2, 3, 4], [0, 6, 5, 2]])
TARGETS = jnp.array([[2, 3, 4, 5], [6, 5, 2, 1]])


def lm_loss(model, ids, targets):
    return optax.softmax_cross_entropy_with_integer_labels(model(ids), targets).mean()


def tied_lm(seed=0):
    return jp.tie(LM(key=jax.random.key(seed)), "decoder.weight", "embed.weight")


def tied_ae(seed=0):
    return jp.tie(AE(key=jax.random.key(seed)), "dec.weight", "enc.weight", transpose=True)


def _np(tree):
    return {k: np.asarray(v) for k, v in tree.state_dict().items()}


# -- names, counts, display ------------------------------------------------------------------


def test_named_parameters_list_the_tied_parameter_once_under_the_source_name():
    model = tied_lm()
    assert [n for n, _ in model.named_parameters()] == [
        "embed.weight",
        "body.weight",
        "body.bias",
        "decoder.bias",
    ]
    assert model.num_parameters() == LM(key=jax.random.key(0)).num_parameters() - V * D
    assert jp.ties(model) == {"decoder.weight": ("embed.weight", False)}
    assert isinstance(model, LM) and type(model).__name__ == "LM"
    assert repr(model.decoder.weight) == "TiedTo('embed.weight')"


def test_state_dict_lists_both_names_in_pytorch_order_with_the_source_value():
    model = tied_lm()
    sd = model.state_dict()
    assert list(sd) == [
        "embed.weight",
        "body.weight",
        "body.bias",
        "decoder.weight",
        "decoder.bias",
    ]
    assert sd["decoder.weight"] is sd["embed.weight"]  # one array, as PyTorch's one tensor
    kept = model.state_dict(keep_vars=True)
    assert kept["decoder.weight"] is kept["embed.weight"]
    assert list(model.state_dict(prefix="m.")) == [f"m.{k}" for k in sd]


def test_transposed_tie_state_dict_holds_the_transpose():
    model = tied_ae()
    sd = model.state_dict()
    assert list(sd) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    chex.assert_trees_all_equal(sd["dec.weight"], sd["enc.weight"].T)
    assert repr(model.dec.weight) == "TiedTo('enc.weight', transpose=True)"
    assert jp.ties(model) == {"dec.weight": ("enc.weight", True)}


def test_repr_and_summary_show_the_tie_and_count_it_once():
    model = tied_lm()
    assert "weight=TiedTo('embed.weight')" in repr(model)
    table = model.summary()
    row = next(line for line in table.splitlines() if line.startswith("decoder.weight"))
    assert row.split() == [
        "decoder.weight",
        "(7,",
        "4)",
        "float32",
        "tied",
        "to",
        "embed.weight",
        "0",
    ]
    total = LM(key=jax.random.key(0)).num_parameters() - V * D
    assert f"parameters: {total:,} (trainable {total:,}, frozen 0)" in table
    ae_row = next(line for line in tied_ae().summary().splitlines() if line.startswith("dec.w"))
    assert "(5, 3)" in ae_row and "tied to enc.weight.T" in ae_row


# -- running: jit, gradients, optimizers ------------------------------------------------------


def test_call_under_jit_equals_the_untied_model_and_tie_survives_flattening():
    model = tied_lm()
    plain = LM(key=jax.random.key(0))
    plain = jp.at(plain, "decoder.weight").set(plain.embed.weight.value)
    assert len(jax.tree.leaves(model)) == len(jax.tree.leaves(plain)) - 1
    through = jax.jit(lambda m: m)(model)
    assert type(through) is type(model) and jp.ties(through) == jp.ties(model)
    traces = []

    @jax.jit
    def run(m, ids):
        traces.append(1)
        return m(ids)

    chex.assert_trees_all_close(run(model, IDS), plain(IDS), rtol=1e-5, atol=1e-6)
    changed = jp.at(model, "embed.weight").apply(lambda w: w * 2)
    run(changed, IDS)
    assert len(traces) == 1  # a new value, not a new structure


def test_gradient_is_the_sum_of_both_uses():
    model = tied_lm()
    grad_fn = jax.jit(jp.grad(lm_loss))
    grads, untied = grad_fn(model, IDS, TARGETS), grad_fn(jp.untie(model), IDS, TARGETS)
    assert [n for n, _ in jp.named_parameters(grads)] == [n for n, _ in model.named_parameters()]
    chex.assert_trees_all_close(
        grads.embed.weight.value,
        untied.embed.weight.value + untied.decoder.weight.value,
        rtol=1e-5,
        atol=1e-6,
    )
    ae = tied_ae()
    grad_fn = jax.jit(jp.grad(lambda m, x: jnp.sum(m(x) ** 2)))
    g, u = grad_fn(ae, jnp.ones((2, 5))), grad_fn(jp.untie(ae), jnp.ones((2, 5)))
    chex.assert_trees_all_close(
        g.enc.weight.value, u.enc.weight.value + u.dec.weight.value.T, rtol=1e-5, atol=1e-6
    )


def test_optimizer_holds_one_state_and_both_names_stay_equal():
    model = tied_ae()
    opt = jp.Optimizer(optax.adam(0.05), model)
    assert opt.names == ("enc.weight", "enc.bias", "dec.bias")
    assert not any("dec.weight" in k for k in opt.state_dict())
    params, _ = jp.split(model, jp.trainable)
    assert list(params) == ["enc.weight", "enc.bias", "dec.bias"]

    @jax.jit
    def step(model, opt, x):
        grads = jp.grad(lambda m, x: jnp.mean((m(x) - x) ** 2))(model, x)
        return opt.update(model, grads)

    x = jax.random.normal(jax.random.key(1), (8, 5))
    before = _np(model)
    for _ in range(5):
        model, opt = step(model, opt, x)
    sd = _np(model)
    assert not np.allclose(sd["enc.weight"], before["enc.weight"])
    np.testing.assert_array_equal(sd["dec.weight"], sd["enc.weight"].T)
    assert jp.ties(model) == {"dec.weight": ("enc.weight", True)}


def test_plain_optax_on_split_params_keeps_the_tie():
    model = tied_lm()
    params, rest = jp.split(model, jp.trainable)
    tx = optax.sgd(0.5)
    state = tx.init(params)

    @jax.jit
    def step(params, state, ids, targets):
        grads = jax.grad(lambda p: lm_loss(jp.merge(p, rest), ids, targets))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(2):
        params, state = step(params, state, IDS, TARGETS)
    sd = jp.merge(params, rest).state_dict()
    np.testing.assert_array_equal(sd["decoder.weight"], sd["embed.weight"])


@settings(max_examples=8)
@given(
    m=st.integers(1, 4),
    n=st.integers(1, 4),
    transpose=st.booleans(),
    steps=st.integers(1, 3),
)
def test_property_gradients_sum_and_names_stay_equal(m, n, transpose, steps):
    rng = np.random.default_rng(m * 100 + n * 10 + transpose)
    a = rng.standard_normal((m, n)).astype(np.float32)
    b = (a.T if transpose else a).copy()
    pair = jp.tie(Pair(jp.Parameter(a), jp.Parameter(b), transpose), "b", "a", transpose=transpose)
    x = jnp.asarray(rng.standard_normal((3, n)).astype(np.float32))

    def loss(p, x):
        return jnp.sum(jnp.sin(p(x)))

    g = jp.grad(loss)(pair, x)
    u = jp.grad(loss)(jp.untie(pair), x)
    extra = u.b.value.T if transpose else u.b.value
    chex.assert_trees_all_close(g.a.value, u.a.value + extra, atol=1e-5)
    opt = jp.Optimizer(optax.sgd(0.1, momentum=0.9), pair)
    for _ in range(steps):
        pair, opt = opt.update(pair, jp.grad(loss)(pair, x))
    sd = _np(pair)
    np.testing.assert_array_equal(sd["b"], sd["a"].T if transpose else sd["a"])


# -- PyTorch parity ------------------------------------------------------------------------------


def _torch_lm(torch):
    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, D)
            self.body = torch.nn.Linear(D, D)
            self.decoder = torch.nn.Linear(D, V)
            self.decoder.weight = self.embed.weight  # PyTorch's weight tying

        def forward(self, ids):
            return self.decoder(torch.tanh(self.body(self.embed(ids))))

    torch.manual_seed(0)
    return TorchLM()


def _jparam_lm_from(torch_model):
    return tied_lm(seed=3).load_state_dict(torch_model.state_dict())  # tensors, both names


def test_same_gradients_and_weights_as_pytorch_tied_lm_after_3_sgd_steps():
    torch = pytest.importorskip("torch")
    tm = _torch_lm(torch)
    assert list(tm.state_dict()) == list(tied_lm().state_dict())
    model = _jparam_lm_from(tm)
    t_ids = torch.from_numpy(np.array(IDS)).long()
    t_targets = torch.from_numpy(np.array(TARGETS)).long()

    def torch_loss():
        logits = tm(t_ids)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), t_targets.reshape(-1))

    # Gradients of the first step: embed.weight's is the sum over both of its uses.
    torch_loss().backward()
    grads = jp.grad(lm_loss)(model, IDS, TARGETS)
    want = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    assert list(want) == [n for n, _ in jp.named_parameters(grads)]
    for name, g in jp.named_parameters(grads):
        np.testing.assert_allclose(np.asarray(g.value), want[name], rtol=1e-5, atol=1e-6)

    sgd = torch.optim.SGD(tm.parameters(), lr=0.5)
    tm.zero_grad()
    for _ in range(3):
        sgd.zero_grad()
        torch_loss().backward()
        sgd.step()

    opt = jp.Optimizer(optax.sgd(0.5), model)

    @jax.jit
    def step(model, opt, ids, targets):
        loss, grads = jp.value_and_grad(lm_loss)(model, ids, targets)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    for _ in range(3):
        model, opt, _ = step(model, opt, IDS, TARGETS)
    ours, theirs = _np(model), {k: v.numpy() for k, v in tm.state_dict().items()}
    assert list(ours) == list(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(ours["decoder.weight"], ours["embed.weight"])


def test_same_weights_as_pytorch_with_a_transposed_tie():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class TorchAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(5, 3)
            self.dec_bias = torch.nn.Parameter(torch.linspace(-0.2, 0.2, 5))

        def forward(self, x):
            return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)

    torch.manual_seed(1)
    tm = TorchAE()
    model = tied_ae(seed=5).load_state_dict(
        {
            "enc.weight": tm.enc.weight.detach(),
            "enc.bias": tm.enc.bias.detach(),
            "dec.bias": tm.dec_bias.detach(),
        }
    )
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    sgd = torch.optim.SGD(tm.parameters(), lr=0.3)
    for _ in range(3):
        sgd.zero_grad()
        F.mse_loss(tm(torch.from_numpy(x)), torch.from_numpy(x)).backward()
        sgd.step()

    opt = jp.Optimizer(optax.sgd(0.3), model)
    loss_fn = jax.jit(jp.grad(lambda m, x: jnp.mean((m(x) - x) ** 2)))
    for _ in range(3):
        model, opt = opt.update(model, loss_fn(model, x))
    sd = _np(model)
    for ours, theirs in (
        ("enc.weight", "enc.weight"),
        ("enc.bias", "enc.bias"),
        ("dec.bias", "dec_bias"),
    ):
        want = tm.state_dict()[theirs].numpy()
        np.testing.assert_allclose(sd[ours], want, rtol=1e-5, atol=1e-6, err_msg=ours)
    np.testing.assert_array_equal(sd["dec.weight"], sd["enc.weight"].T)


# -- loading ----------------------------------------------------------------------------------


def test_load_state_dict_accepts_both_names_or_either_one():
    src = tied_lm(seed=1)
    full = src.state_dict()
    for state in (
        full,
        {k: v for k, v in full.items() if k != "decoder.weight"},
        {k: v for k, v in full.items() if k != "embed.weight"},
    ):
        loaded = tied_lm(seed=2).load_state_dict(state)
        chex.assert_trees_all_equal(_np(loaded), _np(src))
        assert jp.ties(loaded) == jp.ties(src)
    ae = tied_ae(seed=1)
    only_target = {k: v for k, v in ae.state_dict().items() if k != "enc.weight"}
    chex.assert_trees_all_equal(_np(tied_ae(seed=2).load_state_dict(only_target)), _np(ae))


def test_load_into_an_abstract_tied_model():
    abstract = jax.eval_shape(lambda k: tied_ae(k), 0)
    assert type(abstract) is type(tied_ae()) and jp.ties(abstract) == jp.ties(tied_ae())
    assert abstract.state_dict()["dec.weight"].shape == (5, 3)
    loaded = abstract.load_state_dict(tied_ae(seed=6).state_dict())
    chex.assert_trees_all_equal(_np(loaded), _np(tied_ae(seed=6)))


def test_load_state_dict_rejects_tied_names_that_disagree_naming_both():
    state = dict(tied_lm(seed=1).state_dict())
    state["decoder.weight"] = state["decoder.weight"] + 1
    with pytest.raises(jp.StateDictError) as e:
        tied_lm().load_state_dict(state)
    assert "decoder.weight is tied to embed.weight" in str(e.value)
    state = dict(tied_ae(seed=1).state_dict())
    state["dec.weight"] = state["enc.weight"]  # not transposed: a shape error naming dec.weight
    with pytest.raises(jp.StateDictError, match=r"dec.weight: shape mismatch, expected \(5, 3\)"):
        tied_ae().load_state_dict(state)
    state["dec.weight"] = state["enc.weight"].T * 2
    with pytest.raises(jp.StateDictError, match=r"dec.weight is tied to enc.weight.T"):
        tied_ae().load_state_dict(state)


def test_load_state_dict_missing_both_names():
    state = {k: v for k, v in tied_lm().state_dict().items() if not k.endswith("weight")}
    state.pop("body.bias")
    with pytest.raises(jp.StateDictError, match="missing key: embed.weight"):
        tied_lm().load_state_dict(state)
    assert jp.incompatible_keys(tied_lm(), state).missing_keys == [
        "embed.weight",
        "body.weight",
        "body.bias",
        "decoder.weight",
    ]


def test_save_and_load_round_trip_with_both_names_in_the_file(tmp_path):
    from safetensors import safe_open

    model = tied_lm(seed=4)
    jp.save(tmp_path / "lm.safetensors", model)
    with safe_open(str(tmp_path / "lm.safetensors"), framework="numpy") as f:
        assert set(f.keys()) == set(model.state_dict())
        np.testing.assert_array_equal(f.get_tensor("decoder.weight"), f.get_tensor("embed.weight"))
    loaded = jp.load(tmp_path / "lm.safetensors", like=tied_lm(seed=0))
    chex.assert_trees_all_equal(_np(loaded), _np(model))
    assert jp.ties(loaded) == jp.ties(model)
    jp.save(tmp_path / "ae.safetensors", tied_ae(seed=4))
    chex.assert_trees_all_equal(
        _np(jp.load(tmp_path / "ae.safetensors", like=tied_ae())), _np(tied_ae(seed=4))
    )


def test_jparam_file_loads_into_pytorch_tied_model_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    model = tied_lm(seed=4)
    jp.save(tmp_path / "lm.safetensors", model)
    tm = _torch_lm(torch)
    tm.load_state_dict(st_torch.load_file(str(tmp_path / "lm.safetensors")))  # strict
    assert tm.decoder.weight is tm.embed.weight  # still tied after loading
    with torch.no_grad():
        want = tm(torch.from_numpy(np.array(IDS)).long()).numpy()
    np.testing.assert_allclose(np.asarray(model(IDS)), want, rtol=1e-5, atol=1e-6)
    # safetensors' own PyTorch writer keeps one name of a shared tensor; that file loads too.
    st_torch.save_model(tm, str(tmp_path / "torch.safetensors"))
    loaded = jp.load(tmp_path / "torch.safetensors", like=tied_lm())
    chex.assert_trees_all_close(_np(loaded), _np(model), atol=0)


def test_sharded_checkpoint_round_trip(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    model = tied_ae(seed=3)
    jp.save_sharded(tmp_path / "ae", model)
    back = jp.load_sharded(tmp_path / "ae", tied_ae())
    chex.assert_trees_all_equal(_np(back), _np(model))
    abstract = jax.eval_shape(lambda k: tied_ae(k), 0)
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    back = jp.load_sharded(tmp_path / "ae", abstract, one_device)
    chex.assert_trees_all_equal(_np(back), _np(model))
    assert jp.ties(back) == jp.ties(model)


# -- freezing, nesting, untie -------------------------------------------------------------------


def test_freeze_by_either_name_freezes_the_one_shared_parameter():
    model = tied_lm()
    for pattern in ("decoder.weight", "embed.weight", "embed", "*.weight"):
        frozen = model.freeze(pattern)
        assert not frozen.embed.weight.trainable, pattern
        assert "embed.weight" not in jp.split(frozen, jp.trainable)[0]
    frozen = model.freeze("decoder")  # the decoder's bias and its (shared) weight
    assert [n for n, p in frozen.named_parameters() if not p.trainable] == [
        "embed.weight",
        "decoder.bias",
    ]
    assert frozen.unfreeze("decoder.weight").embed.weight.trainable
    with pytest.raises(ValueError, match="matches no parameter"):
        model.freeze("decoder.nope")
    grads = jp.grad(lm_loss)(model.freeze("decoder.weight"), IDS, TARGETS)
    assert "embed.weight" not in dict(jp.named_parameters(grads))


def test_tied_model_nested_in_a_bigger_one():
    outer = Outer(tied_lm(seed=1), key=jax.random.key(2))
    sd = outer.state_dict()
    assert list(sd)[:5] == [f"lm.{k}" for k in tied_lm().state_dict()]
    assert sd["lm.decoder.weight"] is sd["lm.embed.weight"]
    assert jp.ties(outer) == {"lm.decoder.weight": ("lm.embed.weight", False)}
    chex.assert_trees_all_close(
        jax.jit(lambda m, i: m(i))(outer, IDS), outer.lm(IDS), rtol=1e-5, atol=1e-6
    )
    assert not outer.freeze("lm.decoder.weight").lm.embed.weight.trainable
    # A tie declared on the outer model, between its child and its own field.
    both = jp.tie(outer, "head.weight", "lm.embed.weight")
    assert jp.ties(both) == {
        "lm.decoder.weight": ("lm.embed.weight", False),
        "head.weight": ("lm.embed.weight", False),
    }
    g = jp.grad(lambda m, i: jnp.sum(m(i)) + jnp.sum(jp.untie(m).head.weight.value))(both, IDS)
    assert next(n for n, _ in jp.named_parameters(g)) == "lm.embed.weight"
    reloaded = both.load_state_dict({k: v for k, v in both.state_dict().items()})
    chex.assert_trees_all_equal(_np(reloaded), _np(both))


def test_untie_gives_the_plain_model_with_independent_names():
    model = tied_lm()
    plain = jp.untie(model)
    assert type(plain) is LM and jp.ties(plain) == {}
    assert [n for n, _ in plain.named_parameters()] == list(model.state_dict())
    chex.assert_trees_all_equal(_np(plain), _np(model))
    chex.assert_trees_all_close(jp.untie(model).hidden(IDS), plain.hidden(IDS))
    with pytest.raises(AttributeError, match=r"decoder.weight is tied to embed.weight.*jp.untie"):
        model.decoder(jnp.ones((1, D)))
    with pytest.raises(TypeError, match="jp.untie"):
        jnp.asarray(model.decoder.weight)


def test_stateful_layers_inside_a_tied_model():
    class Net(jp.Module):
        enc: nn.Linear
        norm: nn.BatchNorm1d
        dec: nn.Linear

        def __init__(self):
            self.enc = nn.Linear(5, 3, key=jax.random.key(0))
            self.norm = nn.BatchNorm1d(3)
            self.dec = nn.Linear(3, 5, key=jax.random.key(1))

        def __call__(self, x):
            return self.dec(self.norm(self.enc(x)))

    net = jp.tie(Net(), "dec.weight", "enc.weight", transpose=True)
    x = jax.random.normal(jax.random.key(2), (4, 5))
    _, new = jax.jit(nn.stateful_call)(net, x)
    assert type(new) is type(net) and jp.ties(new) == jp.ties(net)
    assert int(new.norm.num_batches_tracked.value) == 1


def test_tie_keeps_through_astype_eval_and_pickle():
    model = tied_lm()
    half = model.astype(jnp.bfloat16).eval()
    assert type(half) is type(model) and not half.training
    assert half.state_dict()["decoder.weight"].dtype == jnp.bfloat16
    again = pickle.loads(pickle.dumps(model))
    assert type(again) is type(model) and jp.ties(again) == jp.ties(model)
    chex.assert_trees_all_close(again(IDS), model(IDS))


def test_tying_a_source_that_is_itself_tied_follows_it():
    class Three(jp.Module):
        a: jp.Parameter
        b: jp.Parameter
        c: jp.Parameter

    three = Three(*(jp.Parameter(jnp.full((2, 3) if i != 1 else (3, 2), i)) for i in range(3)))
    three = jp.tie(three, "b", "a", transpose=True)
    three = jp.tie(three, "c", "b", transpose=True)
    assert jp.ties(three) == {"b": ("a", True), "c": ("a", False)}
    sd = three.state_dict()
    np.testing.assert_array_equal(sd["c"], sd["a"])
    assert [n for n, _ in three.named_parameters()] == ["a"]


# -- bad input ------------------------------------------------------------------------------------


def test_tie_errors_name_the_paths_and_what_was_expected():
    model = LM(key=jax.random.key(0))
    with pytest.raises(KeyError, match=r"source 'embed.wieght' is not a Parameter.*embed\.weight"):
        jp.tie(model, "decoder.weight", "embed.wieght")
    with pytest.raises(KeyError, match="target 'decoder' is not a Parameter"):
        jp.tie(model, "decoder", "embed.weight")
    with pytest.raises(
        ValueError, match=r"body.weight is f32\[4,4\] but embed.weight is f32\[7,4\]"
    ):
        jp.tie(model, "body.weight", "embed.weight")
    with pytest.raises(ValueError, match=r"decoder.weight is f32\[7,4\] but embed.weight.T is"):
        jp.tie(model, "decoder.weight", "embed.weight", transpose=True)
    with pytest.raises(ValueError, match=r"bf16\[7,4\] but embed.weight is f32\[7,4\]"):
        jp.tie(
            jp.at(model, "decoder.weight").apply(lambda w: w.astype(jnp.bfloat16)),
            "decoder.weight",
            "embed.weight",
        )
    with pytest.raises(
        ValueError, match=r"transpose=True needs a 2-D source, but body.bias is f32\[4\]"
    ):
        jp.tie(model, "decoder.bias", "body.bias", transpose=True)
    with pytest.raises(ValueError, match="to itself"):
        jp.tie(model, "embed.weight", "embed.weight")
    with pytest.raises(TypeError, match="transpose must be a bool"):
        jp.tie(model, "decoder.weight", "embed.weight", transpose="yes")
    with pytest.raises(TypeError, match="target must be a parameter name"):
        jp.tie(model, None, "embed.weight")
    tied = tied_lm()
    with pytest.raises(ValueError, match="target decoder.weight is already tied to embed.weight"):
        jp.tie(tied, "decoder.weight", "body.weight")

    class WithBuffer(jp.Module):
        w: jp.Parameter
        stats: jp.Buffer

    wb = WithBuffer(jp.Parameter(jnp.ones(3)), jp.Buffer(jnp.ones(3)))
    with pytest.raises(KeyError, match=r"source 'stats' is not a Parameter .*\(a Buffer\)"):
        jp.tie(wb, "w", "stats")


def test_calling_a_tied_model_whose_source_was_split_out_explains():
    _, rest = jp.split(tied_lm(), "embed.*")
    with pytest.raises(ValueError, match="decoder.weight is tied to embed.weight.*jp.split"):
        rest(IDS)


def test_setting_a_raw_array_on_a_tied_name_raises_instead_of_breaking_the_tie():
    model = tied_lm()
    with pytest.raises(
        TypeError,
        match=r"'decoder\.weight' is tied to embed\.weight.*set 'embed\.weight' instead.*untie",
    ):
        jp.at(model, "decoder.weight").set(jnp.zeros((V, D)))
    # Setting the source moves both names.
    new = jp.at(model, "embed.weight").set(jnp.ones(model.embed.weight.shape))
    sd = new.state_dict()
    chex.assert_trees_all_equal(sd["decoder.weight"], sd["embed.weight"])


# -- chains and cycles: no tie ever deletes or orphans a weight -----------------------------------


class Trio(jp.Module):
    """Three parameters ``a`` (2, 3), ``b`` (3, 2), ``c`` (2, 3): ``b`` fits ``a.T`` and ``c.T``."""

    a: jp.Parameter
    b: jp.Parameter
    c: jp.Parameter

    def __call__(self, x):  # x: (n, 3)
        return jnp.tanh(x @ self.a.value.T) @ self.b.value.T @ self.c.value.T


def trio():
    keys = jax.random.split(jax.random.key(4), 3)
    shapes = [(2, 3), (3, 2), (2, 3)]
    return Trio(*(jp.Parameter(jax.random.normal(k, s)) for k, s in zip(keys, shapes)))


def test_tying_back_to_a_tied_name_is_refused_as_a_cycle_and_keeps_both_weights(tmp_path):
    # The repro: a<-b then b<-a used to leave neither weight in named_parameters or files.
    model = jp.tie(LM(key=jax.random.key(0)), "decoder.weight", "embed.weight")
    with pytest.raises(
        ValueError,
        match=r"tying embed.weight to decoder.weight would make a cycle "
        r"\(embed.weight -> decoder.weight -> embed.weight\): decoder.weight is already tied",
    ):
        jp.tie(model, "embed.weight", "decoder.weight")
    with pytest.raises(ValueError, match="cycle"):  # transposed or not, it is the same cycle
        jp.tie(model, "embed.weight", "decoder.weight", transpose=True)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tied_lm().named_parameters()]
    assert list(model.state_dict()) == list(LM(key=jax.random.key(0)).state_dict())
    jp.save(tmp_path / "m.safetensors", model)
    from safetensors.numpy import load_file

    assert sorted(load_file(tmp_path / "m.safetensors")) == sorted(
        LM(key=jax.random.key(0)).state_dict()
    )


def test_tying_to_the_source_of_other_ties_repoints_them_and_composes_transposes(tmp_path):
    # a = b.T, then b = c.T: a must follow b to c (a = (c.T).T = c), never be orphaned.
    model = trio()
    c_value = np.asarray(model.c.value)
    model = jp.tie(model, "a", "b", transpose=True)
    model = jp.tie(model, "b", "c", transpose=True)
    assert jp.ties(model) == {"a": ("c", False), "b": ("c", True)}
    assert [n for n, _ in model.named_parameters()] == ["c"]
    assert model.num_parameters() == 6
    sd = model.state_dict()
    assert list(sd) == ["a", "b", "c"]
    np.testing.assert_array_equal(sd["a"], c_value)  # expected values from the user's claims
    np.testing.assert_array_equal(sd["b"], c_value.T)
    np.testing.assert_array_equal(sd["c"], c_value)
    # The gradient reaches c from all three uses: compare with jax.grad of the plain function.
    x = jnp.arange(6.0).reshape(2, 3) / 6

    def plain(c):
        return jnp.sum(jnp.tanh(x @ c.T) @ c @ c.T)

    g = jp.grad(lambda m: jnp.sum(m(x)))(model)
    chex.assert_trees_all_close(
        g.c.value, jax.grad(plain)(jnp.asarray(c_value)), rtol=1e-5, atol=1e-6
    )
    # Files hold all three names; they load back into a freshly tied model.
    jp.save(tmp_path / "t.safetensors", model)
    fresh = jp.tie(jp.tie(trio(), "a", "b", transpose=True), "b", "c", transpose=True)
    back = jp.load(tmp_path / "t.safetensors", like=fresh)
    chex.assert_trees_all_equal(_np(back), _np(model))


def test_repointing_a_tie_declared_on_a_submodule_from_the_outer_model():
    outer = Outer(tied_lm(seed=1), key=jax.random.key(2))
    both = jp.tie(outer, "lm.embed.weight", "head.weight")
    assert jp.ties(both) == {
        "lm.embed.weight": ("head.weight", False),
        "lm.decoder.weight": ("head.weight", False),
    }
    assert [n for n, _ in both.named_parameters()] == [
        "lm.body.weight",
        "lm.body.bias",
        "lm.decoder.bias",
        "head.weight",
    ]
    sd = both.state_dict()
    assert len(sd) == len(outer.state_dict())
    np.testing.assert_array_equal(sd["lm.decoder.weight"], np.asarray(outer.head.weight.value))
    chex.assert_trees_all_close(
        jax.jit(lambda m, i: m(i))(both, IDS), jp.untie(both).lm(IDS), rtol=1e-5, atol=1e-6
    )
    assert jp.ties(both.load_state_dict(sd)) == jp.ties(both)


def test_a_tie_declared_again_changes_nothing_and_a_second_source_is_refused():
    model = tied_lm()
    assert jp.tie(model, "decoder.weight", "embed.weight") is model
    with pytest.raises(
        ValueError, match=r"target decoder.weight is already tied to embed.weight; .*jp.untie"
    ):
        jp.tie(model, "decoder.weight", "embed.weight", transpose=True)
    three = jp.tie(trio(), "a", "b", transpose=True)
    with pytest.raises(ValueError, match=r"target a is already tied to b.T"):
        jp.tie(three, "a", "c")
    with pytest.raises(KeyError, match="target 'nope' is not a Parameter .*no such name"):
        jp.tie(three, "nope", "c")
    with pytest.raises(ValueError, match=r"jp.tie: b is f32\[3,2\] but c is f32\[2,3\]"):
        jp.tie(three, "b", "c")  # b, and a with it, would need c's shape
    assert jp.ties(jp.tie(three, "c", "a")) == {"a": ("b", True), "c": ("b", True)}


def _claims_hold(model, claims):
    """Every tie the user asked for still holds, after giving each real parameter new values."""
    roots = dict(model.named_parameters())
    for i, (name, p) in enumerate(roots.items()):
        model = jp.at(model, name).set(
            jnp.full(p.shape, float(i)) + jnp.eye(2) * (i + 1) + jnp.triu(jnp.ones((2, 2)))
        )
    sd = {k: np.asarray(v) for k, v in model.state_dict().items()}
    for target, source, transpose in claims:
        np.testing.assert_array_equal(sd[target], sd[source].T if transpose else sd[source])
    return model


@settings(max_examples=15)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()), min_size=1, max_size=6
    )
)
def test_property_any_sequence_of_ties_keeps_every_weight(tmp_path_factory, ops):
    class Four(jp.Module):
        p0: jp.Parameter
        p1: jp.Parameter
        p2: jp.Parameter
        p3: jp.Parameter

    model = Four(*(jp.Parameter(jnp.full((2, 2), float(i))) for i in range(4)))
    names = ["p0", "p1", "p2", "p3"]
    claims = []
    for t, s, transpose in ops:
        try:
            model = jp.tie(model, names[t], names[s], transpose=transpose)
        except ValueError:
            continue  # a self-tie, a cycle or a second source: refused, model unchanged
        claims.append((names[t], names[s], transpose))
    ties = jp.ties(model)
    params = [n for n, _ in model.named_parameters()]
    assert sorted(params + list(ties)) == names  # every name is a parameter or a tie, once
    assert all(src in params for src, _ in ties.values())  # no chains
    assert list(model.state_dict()) == names
    model = _claims_hold(model, claims)
    path = tmp_path_factory.mktemp("ties") / "m.safetensors"
    jp.save(path, model)
    zeroed = jax.tree.map(jnp.zeros_like, model)
    chex.assert_trees_all_equal(_np(jp.load(path, like=zeroed)), _np(model))


# -- loading fast: each array converted once, the two tied names compared without reading -----


def _counting_transfers(monkeypatch):
    """Records the shape of every host array `to_array` puts on the device."""
    import jparam.parameter

    seen = []
    real = jparam.parameter.host_to_device

    def counting(arr):
        seen.append(tuple(arr.shape))
        return real(arr)

    monkeypatch.setattr(jparam.parameter, "host_to_device", counting)
    return seen


def test_pytorch_state_dict_loads_each_tied_array_once(monkeypatch):
    """A PyTorch state_dict gives both tied names as views of one tensor: the target is
    recognised by its memory and never converted, the source converted once."""
    torch = pytest.importorskip("torch")
    tm = _torch_lm(torch)
    seen = _counting_transfers(monkeypatch)
    model = tied_lm(seed=3).load_state_dict(tm.state_dict())
    assert sorted(seen) == sorted([(V, D), (D, D), (D,), (V,)])  # no second (V, D)
    for name, value in tm.state_dict().items():
        np.testing.assert_array_equal(np.asarray(model.state_dict()[name]), value.numpy())


def test_numpy_views_of_one_array_load_once_also_transposed(monkeypatch):
    w = np.arange(15, dtype=np.float32).reshape(3, 5)
    state = {k: np.asarray(v) for k, v in tied_ae(seed=1).state_dict().items()}
    state["enc.weight"], state["dec.weight"] = w, w.T  # the transpose is a view of w
    seen = _counting_transfers(monkeypatch)
    loaded = tied_ae().load_state_dict(state)
    assert seen.count((3, 5)) == 1 and (5, 3) not in seen
    np.testing.assert_array_equal(np.asarray(loaded.state_dict()["dec.weight"]), w.T)


def test_tied_names_with_equal_values_in_separate_memory_load_source_once(monkeypatch):
    full = {k: np.asarray(v) for k, v in tied_lm(seed=1).state_dict().items()}
    full["decoder.weight"] = full["embed.weight"].copy()
    seen = _counting_transfers(monkeypatch)
    loaded = tied_lm().load_state_dict(full)
    assert seen.count((V, D)) == 2  # the target and the source, each once, then compared
    chex.assert_trees_all_equal(_np(loaded), _np(tied_lm(seed=1)))


def test_tied_names_sharing_memory_in_another_layout_are_compared():
    """Same address is not same values: ``a`` and ``a.T`` under a plain (untransposed) tie."""
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    model = jp.tie(
        Pair(jp.Parameter(jnp.zeros((4, 4))), jp.Parameter(jnp.zeros((4, 4))), False), "b", "a"
    )
    with pytest.raises(jp.StateDictError, match=r"b is tied to a, but the state_dict gives"):
        model.load_state_dict({"a": a, "b": a.T})
    loaded = model.load_state_dict({"a": a, "b": a[...]})  # a view laid out alike: equal
    np.testing.assert_array_equal(np.asarray(loaded.state_dict()["b"]), a)


def test_tied_torch_tensors_with_different_values_are_refused_naming_both():
    torch = pytest.importorskip("torch")
    state = _torch_lm(torch).state_dict()
    state["decoder.weight"] = state["decoder.weight"].clone()
    state["decoder.weight"][0, 0] += 1
    with pytest.raises(jp.StateDictError, match=r"decoder.weight is tied to embed.weight, but"):
        tied_lm().load_state_dict(state)
    state["decoder.weight"][0, 0] = float("nan")  # NaN equals NaN here, as a copy would be
    state["embed.weight"] = state["decoder.weight"].clone()
    loaded = tied_lm().load_state_dict(state)
    assert np.isnan(np.asarray(loaded.state_dict()["embed.weight"])[0, 0])


def test_tied_names_equally_misshaped_are_reported_for_both():
    bad = np.zeros((V + 1, D), np.float32)
    state = {**{k: np.asarray(v) for k, v in tied_lm().state_dict().items()}}
    state["embed.weight"] = state["decoder.weight"] = bad
    with pytest.raises(jp.StateDictError) as e:
        tied_lm().load_state_dict(state)
    assert "decoder.weight: shape mismatch" in str(e.value)
    assert "embed.weight: shape mismatch" in str(e.value)
