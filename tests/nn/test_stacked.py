"""Stacked: scan over layers equals the unrolled list; per-layer PyTorch names; folding; errors."""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from nn_parity import random

import jparam as jp
from jparam import nn

D, HEADS, DEPTH = 8, 2, 4


class Block(jp.Module):
    """A small pre-norm transformer block: LayerNorm, attention, dropout, a GELU Linear."""

    norm: nn.LayerNorm
    attn: nn.MultiheadAttention
    fc: nn.Linear
    drop: nn.Dropout

    def __init__(self, d: int = D, p: float = 0.0, heads: int = HEADS, *, key):
        k1, k2 = jax.random.split(key)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True, key=k1)
        self.fc = nn.Linear(d, d, key=k2)
        self.drop = nn.Dropout(p)

    def __call__(self, x, attn_mask=None, *, key=None):
        h = self.norm(x)
        a, _ = self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)
        x = x + self.drop(a, key=key)
        return x + jax.nn.gelu(self.fc(x), approximate=False)


class Model(jp.Module):
    """``blocks`` is either a list of blocks (unrolled) or an ``nn.Stacked`` of them."""

    blocks: Any
    head: nn.Linear

    def __init__(self, blocks, *, key):
        self.blocks = blocks
        self.head = nn.Linear(D, 3, key=key)

    def __call__(self, x, *args, key=None):
        if isinstance(self.blocks, nn.Stacked):
            x = self.blocks(x, *args, key=key)
        else:
            keys = jax.random.split(key, len(self.blocks)) if key is not None else None
            for i, block in enumerate(self.blocks):
                x = block(x, *args, key=None if keys is None else keys[i])
        return self.head(x)


def _pair(key, depth=DEPTH, remat=False, **block_kwargs):
    """The same weights as an unrolled model and as a stacked one."""
    kb, kh = jax.random.split(key)
    layers = [Block(key=k, **block_kwargs) for k in jax.random.split(kb, depth)]
    unrolled = Model(layers, key=kh)
    stacked = Model(nn.Stacked.from_layers(layers, remat=remat), key=kh)
    return unrolled, stacked


def _x(seed=0):
    return jnp.asarray(random((2, 5, D), seed))


def _loss(model, x, *args, key=None):
    return jnp.sum(jnp.sin(model(x, *args, key=key)))


# Shared jitted functions: a model structure seen before hits the compilation cache.
_STEP = jax.jit(jp.value_and_grad(_loss))
_CALL = jax.jit(lambda m, x, *args: m(x, *args))
_CALL_KEY = jax.jit(lambda m, x, k: m(x, key=k))


def _assert_same_state(a, b, exact=False):
    sa, sb = jp.state_dict(a), jp.state_dict(b)
    assert list(sa) == list(sb)
    if exact:
        chex.assert_trees_all_equal(dict(sa), dict(sb))
    else:
        chex.assert_trees_all_close(dict(sa), dict(sb), atol=2e-5, rtol=2e-5)


# -- numerics: the scan equals the unrolled list ------------------------------------------------
@pytest.mark.parametrize(
    "remat",
    [False, True, jax.checkpoint_policies.nothing_saveable],
    ids=["plain", "remat", "policy"],
)
def test_outputs_and_gradients_equal_the_unrolled_layers_under_jit(key, remat):
    unrolled, stacked = _pair(key, remat=remat)
    x = _x()
    loss_u, grads_u = _STEP(unrolled, x)
    loss_s, grads_s = _STEP(stacked, x)
    chex.assert_trees_all_close(loss_s, loss_u, atol=1e-5, rtol=1e-5)
    assert grads_s.blocks.layers.attn.in_proj_weight.shape == (DEPTH, 3 * D, D)
    _assert_same_state(grads_s, grads_u)  # per-layer names on both sides, all 4 layers


def test_remat_wraps_the_scanned_layer_in_checkpoint(key):
    _, plain = _pair(key, depth=2)
    _, remat = _pair(key, depth=2, remat=jax.checkpoint_policies.nothing_saveable)
    x = _x()
    # jax.checkpoint's primitive prints as remat2 (older JAX: checkpoint), with its policy.
    text = str(jax.make_jaxpr(lambda m: m(x))(plain))
    assert "remat" not in text and "checkpoint" not in text
    text = str(jax.make_jaxpr(lambda m: m(x))(remat))
    assert ("remat" in text or "checkpoint" in text) and "policy=<function nothing_saveable" in text


def test_extra_arguments_reach_every_layer(key):
    unrolled, stacked = _pair(key, depth=2)
    causal = ~jnp.tril(jnp.ones((5, 5), bool))  # True: may not attend
    x = _x(1)
    out_u, out_s = unrolled(x, causal), _CALL(stacked, x, causal)
    chex.assert_trees_all_close(out_s, out_u, atol=1e-5, rtol=1e-5)
    assert not np.allclose(out_s, _CALL(stacked, x), atol=1e-3)  # the mask changed something


def test_key_is_split_into_one_key_per_layer_for_dropout(key):
    unrolled, stacked = _pair(key, depth=3, p=0.5)
    x, k = _x(2), jax.random.key(7)
    out = _CALL_KEY(stacked, x, k)
    chex.assert_trees_all_close(out, unrolled(x, key=k), atol=1e-5, rtol=1e-5)
    assert not np.allclose(out, _CALL_KEY(stacked, x, jax.random.key(8)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        stacked(x)
    evaluated = stacked.eval()
    assert not evaluated.blocks.training and not evaluated.blocks[0].drop.training
    chex.assert_trees_all_close(_CALL(evaluated, x), unrolled.eval()(x), atol=1e-5, rtol=1e-5)


def test_a_key_is_ignored_when_the_layers_take_none(key):
    stacked = nn.Stacked(lambda k: nn.Linear(4, 4, key=k), 3, key=key)
    x = jnp.ones((2, 4))
    chex.assert_trees_all_equal(stacked(x, key=jax.random.key(1)), stacked(x))


# -- construction --------------------------------------------------------------------------------
def test_init_vmaps_make_layer_over_split_keys(key):
    stacked = nn.Stacked(lambda k: Block(key=k), 3, key=key)
    assert len(stacked) == 3 and stacked.layers.fc.weight.shape == (3, D, D)
    for i, k in enumerate(jax.random.split(key, 3)):
        chex.assert_trees_all_close(stacked[i], Block(key=k), atol=1e-7, rtol=1e-6)
    assert jax.tree.structure(stacked[0]) == jax.tree.structure(Block(key=key))


def test_init_works_abstractly_under_eval_shape(key):
    abstract = jax.eval_shape(lambda k: nn.Stacked(lambda k: Block(key=k), 5, key=k), key)
    assert abstract.layers.attn.in_proj_weight.shape == (5, 3 * D, D)
    assert "5 x Block(" in repr(abstract)
    assert abstract.summary() == nn.Stacked(lambda k: Block(key=k), 5, key=key).summary()


def test_constructor_errors(key):
    with pytest.raises(TypeError, match="needs a PRNG key"):
        nn.Stacked(lambda k: Block(key=k), 2, key=None)
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        nn.Stacked(lambda k: Block(key=k), 0, key=key)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        nn.Stacked(lambda k: Block(key=k), 2.0, key=key)
    with pytest.raises(TypeError, match="from_layers"):
        nn.Stacked([Block(key=key)], 1, key=key)
    with pytest.raises(TypeError, match="must return a jp.Module, got dict"):
        nn.Stacked(lambda k: {"w": jax.random.normal(k, (2,))}, 2, key=key)
    with pytest.raises(TypeError, match="remat must be True/False or a jax.checkpoint policy"):
        nn.Stacked(lambda k: Block(key=k), 2, key=key, remat="yes")


def test_indexing_len_iteration_slices_and_unstack(key):
    stacked = nn.Stacked(lambda k: nn.Linear(4, 3, key=k), 4, key=key)
    w = stacked.layers.weight.value
    assert len(stacked) == 4 and len(list(stacked)) == 4
    chex.assert_trees_all_equal(stacked[-1].weight.value, w[3])
    chex.assert_trees_all_equal(
        [m.bias.value for m in stacked.unstack()], list(stacked.layers.bias.value)
    )
    part = stacked[1:3]
    assert isinstance(part, nn.Stacked) and len(part) == 2
    chex.assert_trees_all_equal(part.layers.weight.value, w[1:3])
    assert part.layers.weight.metadata == stacked.layers.weight.metadata
    with pytest.raises(IndexError, match="layer index 4 is out of range for 4 stacked layers"):
        stacked[4]
    with pytest.raises(IndexError, match="selects no layer"):
        stacked[3:1]
    assert list(stacked.state_dict())[:3] == ["0.weight", "0.bias", "1.weight"]
    assert [n for n, _ in stacked.named_parameters()] == ["layers.weight", "layers.bias"]


def test_layers_must_return_what_they_take(key):
    widening = nn.Stacked(lambda k: nn.Linear(4, 5, key=k), 2, key=key)
    with pytest.raises(TypeError, match=r"took f32\[2,4\] and returned f32\[2,5\]"):
        widening(jnp.ones((2, 4)))


# -- from_layers: identical layers only, first difference named ----------------------------------
def _layers(key, n=3):
    return [Block(key=k) for k in jax.random.split(key, n)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b, k: jp.at(b, "fc.weight").set(jp.Parameter(jnp.zeros((D, D + 1)))),
            r"layer 2 does not match layer 0: 'fc.weight' is shape \(8, 9\)",
        ),
        (lambda b, k: b.replace(fc=nn.Linear(D, D, bias=False, key=k)), "'fc.bias' .* is missing"),
        (lambda b, k: b.bfloat16(), "'norm.weight' is shape .* dtype bfloat16"),
        (lambda b, k: Block(heads=4, key=k), r"'attn' is MultiheadAttention\(.*num_heads=4"),
        (lambda b, k: b.replace(drop=b.drop.eval()), "'drop' has training=False"),
    ],
    ids=["shape", "missing", "dtype", "hyperparameter", "mode"],
)
def test_from_layers_names_the_first_difference(key, change, message):
    layers = _layers(key)
    layers[2] = change(layers[2], key)
    with pytest.raises(ValueError, match=message):
        nn.Stacked.from_layers(layers)


def test_from_layers_refuses_what_is_not_a_list_of_modules(key):
    with pytest.raises(ValueError, match="at least one layer"):
        nn.Stacked.from_layers([])
    with pytest.raises(TypeError, match="layer 1 is ndarray, not a Module"):
        nn.Stacked.from_layers([Block(key=key), np.ones(3)])
    with pytest.raises(TypeError, match="takes a sequence of modules, got Linear"):
        nn.Stacked.from_layers(nn.Linear(2, 2, key=key))


def test_axes_metadata_gains_the_layer_axis_and_round_trips(key):
    class Tagged(jp.Module):
        w: jp.Parameter
        b: jp.Parameter

        def __init__(self, *, key):
            self.w = jp.Parameter(jax.random.normal(key, (3, 3)), axes=("embed", None), lr=0.1)
            self.b = jp.Parameter(jnp.zeros(3), trainable=False)  # no axes: left alone

        def __call__(self, x):
            return x @ self.w + self.b

    stacked = nn.Stacked(lambda k: Tagged(key=k), 2, key=key)
    assert stacked.layers.w.metadata == {"axes": ("layers", "embed", None), "lr": 0.1}
    assert stacked.layers.b.metadata == {} and not stacked.layers.b.trainable
    assert stacked[1].w.metadata == {"axes": ("embed", None), "lr": 0.1}
    again = nn.Stacked.from_layers(stacked.unstack())
    assert jax.tree.structure(again) == jax.tree.structure(stacked)
    chex.assert_trees_all_equal(again, stacked)
    per_layer = stacked.state_dict(keep_vars=True)
    assert per_layer["0.w"].metadata["axes"] == ("embed", None) and per_layer["1.w"].shape == (3, 3)


def test_abstract_layers_keep_their_sharding_without_the_layer_axis(key):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    spec = jax.sharding.PartitionSpec(None, "fsdp")
    abstract = jax.eval_shape(lambda k: nn.Stacked(lambda k: nn.Linear(4, 2, key=k), 3, key=k), key)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec)),
        abstract,
    )
    layer = abstract[1]
    assert layer.weight.shape == (2, 4) and layer.weight.value.sharding.spec == P("fsdp")
    assert abstract[:2].layers.weight.value.sharding.spec == spec
    again = nn.Stacked.from_layers(abstract.unstack())
    assert again.layers.weight.shape == (3, 2, 4)
    assert again.layers.weight.value.sharding.spec == spec  # the layer axis back in front


# -- names: stacked for training, per-layer for state_dict ---------------------------------------
def test_state_dict_uses_per_layer_names_and_round_trips(key):
    unrolled, stacked = _pair(key)
    assert list(stacked.state_dict()) == list(unrolled.state_dict())
    _assert_same_state(stacked, unrolled, exact=True)
    _, other = _pair(jax.random.key(5))
    loaded = other.load_state_dict(stacked.state_dict())
    assert jax.tree.structure(loaded) == jax.tree.structure(stacked)
    chex.assert_trees_all_equal(loaded, stacked)
    # A list model's checkpoint loads into the stacked model and the other way round.
    chex.assert_trees_all_equal(other.load_state_dict(unrolled.state_dict()), stacked)
    chex.assert_trees_all_equal(unrolled.load_state_dict(stacked.state_dict()), unrolled)
    assert [n for n, _ in stacked.named_parameters()][:2] == [
        "blocks.layers.norm.weight",
        "blocks.layers.norm.bias",
    ]


def test_a_pytorch_module_list_loads_and_gives_the_same_outputs(torch, key):
    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(D)
            self.attn = torch.nn.MultiheadAttention(D, HEADS, batch_first=True)
            self.fc = torch.nn.Linear(D, D)

        def forward(self, x):
            h = self.norm(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + torch.nn.functional.gelu(self.fc(x))

    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([TorchBlock() for _ in range(DEPTH)])
            self.head = torch.nn.Linear(D, 3)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    tm = TorchModel().eval()
    with torch.no_grad():  # non-zero norms and biases, so every entry matters
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _, stacked = _pair(key)
    theirs = tm.state_dict()
    assert list(stacked.state_dict()) == list(theirs)
    stacked = stacked.load_state_dict(theirs)
    x = random((2, 5, D), 3)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x)).numpy()
    chex.assert_trees_all_close(_CALL(stacked, x), expected, atol=2e-5, rtol=2e-5)
    back = TorchModel()
    back.load_state_dict({n: torch.tensor(np.asarray(v)) for n, v in stacked.state_dict().items()})
    for name, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), theirs[name].numpy(), err_msg=name)


def test_save_and_load_through_a_file(key, tmp_path):
    _, stacked = _pair(key)
    jp.save(tmp_path / "model.safetensors", stacked)
    arrays, _ = jp.load_file(tmp_path / "model.safetensors")
    assert sorted(arrays) == sorted(stacked.state_dict())  # (safetensors sorts names)
    assert arrays["blocks.3.attn.in_proj_weight"].shape == (3 * D, D)
    _, fresh = _pair(jax.random.key(1))
    chex.assert_trees_all_equal(jp.load(tmp_path / "model.safetensors", like=fresh), stacked)
    abstract = jax.eval_shape(lambda k: _pair(k)[1], key)
    loaded = jp.load(tmp_path / "model.safetensors", like=abstract)
    chex.assert_trees_all_equal(loaded, stacked)
    assert jax.tree.structure(loaded) == jax.tree.structure(stacked)


def test_load_reports_every_problem_with_per_layer_names(key):
    _, stacked = _pair(key)
    state = dict(stacked.state_dict())
    del state["blocks.3.fc.weight"]
    state["blocks.1.norm.bias"] = jnp.zeros(D + 1)
    state["blocks.4.fc.weight"] = jnp.zeros((D, D))
    with pytest.raises(jp.StateDictError, match="3 error") as err:
        stacked.load_state_dict(state)
    text = str(err.value)
    assert "missing key: blocks.3.fc.weight" in text
    assert "unexpected key: blocks.4.fc.weight" in text
    assert "blocks.1.norm.bias: shape mismatch, expected (8,), got (9,)" in text


def test_non_strict_load_keeps_the_layers_it_was_not_given(key):
    _, stacked = _pair(key)
    _, other = _pair(jax.random.key(3))
    state = dict(other.state_dict())
    del state["blocks.2.fc.weight"]
    incompatible = jp.incompatible_keys(stacked, state)  # through the per-layer state view
    assert incompatible.missing_keys == ["blocks.2.fc.weight"] and not incompatible.unexpected_keys
    loaded = stacked.load_state_dict(state, strict=False)
    w = loaded.blocks.layers.fc.weight.value
    chex.assert_trees_all_equal(w[2], stacked.blocks.layers.fc.weight.value[2])
    chex.assert_trees_all_equal(w[1], other.blocks.layers.fc.weight.value[1])
    abstract = jax.eval_shape(lambda k: _pair(k)[1], key)
    with pytest.raises(ValueError, match="abstract .* in layer 2 but concrete in layer 0"):
        abstract.load_state_dict(state, strict=False)


# -- training -------------------------------------------------------------------------------------
def test_optimizer_steps_match_the_unrolled_model(key):
    # SGD, not Adam: Adam divides by the gradient's size, which turns the rounding noise of
    # gradients that are zero in exact arithmetic (attention's key bias) into whole steps.
    unrolled, stacked = _pair(key, depth=2)
    x = _x(4)

    @jax.jit
    def step(model, opt):
        loss, grads = jp.value_and_grad(_loss)(model, x)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    opt_s = jp.Optimizer(optax.sgd(0.05, momentum=0.9), stacked)
    opt_u = jp.Optimizer(optax.sgd(0.05, momentum=0.9), unrolled)
    assert "blocks.layers.attn.in_proj_weight" in opt_s.names and len(opt_s.names) == 10
    for _ in range(2):
        stacked, opt_s, loss_s = step(stacked, opt_s)
        unrolled, opt_u, loss_u = step(unrolled, opt_u)
        chex.assert_trees_all_close(loss_s, loss_u, atol=1e-4, rtol=1e-5)
    _assert_same_state(stacked, unrolled)
    params, _ = jp.split(stacked, jp.trainable)
    assert params["blocks.layers.fc.weight"].shape == (2, D, D)


def test_freezing_a_stacked_parameter_by_glob(key):
    _, stacked = _pair(key, depth=3)
    frozen = stacked.freeze("blocks.*.attn")
    assert not frozen.blocks.layers.attn.in_proj_weight.trainable
    assert not frozen.blocks.layers.attn.out_proj.weight.trainable
    assert frozen.blocks.layers.fc.weight.trainable
    params, _ = jp.split(frozen, jp.trainable)
    assert not any(".attn." in n for n in params) and "blocks.layers.fc.weight" in params
    opt = jp.Optimizer(optax.sgd(0.1), frozen)
    _, grads = _STEP(frozen, _x())
    assert grads.blocks.layers.attn.in_proj_weight is None
    new, _ = opt.update(frozen, grads)
    chex.assert_trees_all_equal(new.blocks.layers.attn, frozen.blocks.layers.attn)
    assert not np.allclose(new.blocks.layers.fc.weight.value, frozen.blocks.layers.fc.weight.value)
    assert not frozen.state_dict(keep_vars=True)["blocks.2.attn.in_proj_weight"].trainable
    with pytest.raises(ValueError, match="'blocks.9.attn' matches no parameter"):
        stacked.freeze("blocks.9.attn")  # there are 3 layers


class NormBlock(jp.Module):
    fc: nn.Linear
    bn: nn.BatchNorm1d

    def __init__(self, *, key):
        self.fc = nn.Linear(4, 4, key=key)
        self.bn = nn.BatchNorm1d(4)

    def __call__(self, x):
        return jnp.tanh(self.bn(self.fc(x)))


def test_batchnorm_statistics_update_through_the_scan(key):
    layers = [NormBlock(key=k) for k in jax.random.split(key, 3)]
    stacked = nn.Stacked.from_layers(layers)
    unrolled = nn.Sequential(*layers)
    x = jnp.asarray(random((6, 4), 5))
    out_s, new_s = jax.jit(lambda m, x: nn.stateful_call(m, x))(stacked, x)
    out_u, new_u = nn.stateful_call(unrolled, x)
    chex.assert_trees_all_close(out_s, out_u, atol=1e-5, rtol=1e-5)
    _assert_same_state(new_s, new_u)
    assert int(new_s.layers.bn.num_batches_tracked.value[2]) == 1
    assert not np.allclose(new_s.layers.bn.running_mean.value, 0.0)
    with pytest.raises(RuntimeError, match="outside nn.stateful_call"):
        stacked(x)
    chex.assert_trees_all_close(stacked.eval()(x), unrolled.eval()(x), atol=1e-6, rtol=1e-6)


# -- display -------------------------------------------------------------------------------------
def test_summary_and_repr_fold_the_stacked_block(key):
    unrolled, stacked = _pair(key, depth=6)
    assert stacked.summary() == unrolled.summary()  # blocks.0-5.attn.in_proj_weight, 6 x 192
    assert "blocks.0-5.attn.in_proj_weight" in stacked.summary()
    text = repr(stacked)
    assert text.count("Block(") == 1 and "6 x Block(" in text
    assert "f32[24,8]" in text and "f32[6," not in text  # per-layer shapes
    assert "remat=" not in text
    assert "remat=nothing_saveable" in repr(
        nn.Stacked.from_layers(
            stacked.blocks.unstack(), remat=jax.checkpoint_policies.nothing_saveable
        )
    )


class Outer(jp.Module):
    inner: nn.Stacked
    norm: nn.LayerNorm

    def __init__(self, *, key):
        self.inner = nn.Stacked(lambda k: nn.Linear(4, 4, key=k), 2, key=key)
        self.norm = nn.LayerNorm(4)

    def __call__(self, x):
        return self.norm(self.inner(x))


def test_stacked_inside_stacked(key):
    outer = nn.Stacked(lambda k: Outer(key=k), 3, key=key)
    assert outer.layers.inner.layers.weight.shape == (3, 2, 4, 4)
    names = list(outer.state_dict())
    assert names[:6] == [
        "0.inner.0.weight",
        "0.inner.0.bias",
        "0.inner.1.weight",
        "0.inner.1.bias",
        "0.norm.weight",
        "0.norm.bias",
    ]
    assert len(names) == 18
    loaded = nn.Stacked(lambda k: Outer(key=k), 3, key=jax.random.key(9)).load_state_dict(
        outer.state_dict()
    )
    chex.assert_trees_all_equal(loaded, outer)
    x = jnp.asarray(random((2, 4), 6))
    expected = x
    for block in outer:
        for linear in block.inner:
            expected = linear(expected)
        expected = block.norm(expected)
    chex.assert_trees_all_close(_CALL(outer, x), expected, atol=1e-5, rtol=1e-5)
    assert "3 x Outer(" in repr(outer) and "2 x Linear(" in repr(outer)


# -- properties ----------------------------------------------------------------------------------
class Dense(jp.Module):
    w: jp.Parameter
    b: jp.Parameter

    def __init__(self, width: int, *, key):
        self.w = jp.Parameter(jax.random.normal(key, (width, width)) / np.sqrt(width))
        self.b = jp.Parameter(jnp.full((width,), 0.1))

    def __call__(self, x):
        return jnp.tanh(x @ self.w + self.b)


@settings(max_examples=6)
@given(depth=st.integers(1, 5), width=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_property_stacked_equals_unrolled_and_round_trips(depth, width, seed):
    stacked = nn.Stacked(lambda k: Dense(width, key=k), depth, key=jax.random.key(seed))
    x = jnp.asarray(random((3, width), seed))
    expected = x
    for layer in stacked.unstack():
        expected = layer(expected)
    chex.assert_trees_all_close(stacked(x), expected, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_equal(nn.Stacked.from_layers(list(stacked)), stacked)
    state = stacked.state_dict()
    assert list(state) == [f"{i}.{n}" for i in range(depth) for n in ("w", "b")]
    chex.assert_trees_all_equal(stacked.load_state_dict(state), stacked)


# -- per-layer freezing: the unrolled list, frozen by the same names, is the oracle --------------
W = 4


class Tiny(jp.Module):
    """A block whose every gradient is non-zero (no attention key bias), so Adam steps compare."""

    fc: nn.Linear
    norm: nn.LayerNorm

    def __init__(self, *, key):
        self.fc = nn.Linear(W, W, key=key)
        self.norm = nn.LayerNorm(W)

    def __call__(self, x):
        return self.norm(jnp.tanh(self.fc(x))) + x


class TinyModel(jp.Module):
    h: Any
    head: nn.Linear

    def __init__(self, h, *, key):
        self.h = h
        self.head = nn.Linear(W, 2, key=key)

    def __call__(self, x):
        if isinstance(self.h, nn.Stacked):
            return self.head(self.h(x))
        for layer in self.h:
            x = layer(x)
        return self.head(x)


def _tiny(key, depth=4, remat=False):
    """The same weights as an unrolled model and as a stacked one (stack at ``h``)."""
    kb, kh = jax.random.split(key)
    layers = [Tiny(key=k) for k in jax.random.split(kb, depth)]
    return TinyModel(layers, key=kh), TinyModel(nn.Stacked.from_layers(layers, remat=remat), key=kh)


def _tiny_loss(model, x):
    return jnp.sum(jnp.sin(model(x)))


_TINY_STEP = jax.jit(jp.value_and_grad(_tiny_loss))
_TX = jnp.asarray(random((3, W), 11))


def _flags(model):
    """Trainable flags by per-layer (state_dict) name."""
    return {n: p.trainable for n, p in model.state_dict(keep_vars=True).items()}


def _rows(p, layers):
    return np.asarray(p.value)[np.asarray(layers)]


FREEZES = [
    ("freeze", ("h.0.fc",)),
    ("freeze", ("h.0",)),
    ("freeze", ("h.[0-1]",)),
    ("freeze", ("h.*.norm", "h.2.fc.bias")),
    ("unfreeze", ("h.3.*", "head")),  # on a fully frozen model: fine-tune the top layer
]


@pytest.mark.parametrize(("how", "patterns"), FREEZES, ids=lambda v: str(v))
def test_per_layer_names_freeze_exactly_those_layers(key, how, patterns):
    unrolled, stacked = _tiny(key)
    if how == "unfreeze":
        unrolled, stacked = unrolled.freeze(), stacked.freeze()
    u = getattr(unrolled, how)(*patterns)
    s = getattr(stacked, how)(*patterns)
    assert _flags(s) == _flags(u)  # per layer, by the same names
    assert s.num_parameters(trainable_only=True) == u.num_parameters(trainable_only=True)
    assert s.num_parameters() == u.num_parameters()
    # The stacked Parameter is trainable when any of its layers is; the flags are its metadata.
    w = s.h.layers.fc.weight
    expected = tuple(_flags(u)[f"h.{i}.fc.weight"] for i in range(4))
    assert w.trainable == any(expected)
    if any(expected) and not all(expected):
        assert w.metadata["layer_trainable"] == expected
    else:
        assert "layer_trainable" not in w.metadata


def test_per_layer_freezing_of_all_or_no_layers_is_the_plain_flag(key):
    _, stacked = _tiny(key)
    every = stacked.freeze("h.[0-3]")  # all four layers: frozen as a whole, as before
    assert jax.tree.structure(every) == jax.tree.structure(stacked.freeze("h"))
    assert not every.h.layers.fc.weight.trainable
    assert "h.layers.fc.weight" not in jp.Optimizer(optax.adam(1e-3), every).names
    back = stacked.freeze("h.1").unfreeze("h.1")
    assert jax.tree.structure(back) == jax.tree.structure(stacked)
    again = stacked.freeze("h.1").unfreeze("h")  # the stacked name: all layers
    assert jax.tree.structure(again) == jax.tree.structure(stacked)
    with pytest.raises(ValueError, match="'h.7' matches no parameter"):
        stacked.freeze("h.7")


def _grad_rows_zero(g, frozen, trainable):
    g = np.asarray(g)
    assert np.all(g[np.asarray(frozen)] == 0.0)  # exactly: stop_gradient, not small
    assert np.all(np.abs(g[np.asarray(trainable)]).reshape(len(trainable), -1).sum(1) > 0)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_frozen_layers_get_exactly_zero_gradient_under_any_transform(key, remat):
    _, stacked = _tiny(key, remat=remat)
    model = stacked.freeze("h.[0-1].fc", "h.3.norm")

    def loss(m, x):
        return _tiny_loss(m, x)

    for grads in (
        jax.grad(loss)(model, _TX),  # plain JAX on the whole model, no jp.split
        jax.jit(jax.grad(loss))(model, _TX),
        jp.grad(loss)(model, _TX),
    ):
        _grad_rows_zero(grads.h.layers.fc.weight.value, [0, 1], [2, 3])
        _grad_rows_zero(grads.h.layers.norm.weight.value, [3], [0, 1, 2])
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(model, _TX[:, None])
    w = np.asarray(per_example.h.layers.fc.weight.value)  # [example, layer, out, in]
    assert np.all(w[:, :2] == 0.0) and np.abs(w[:, 2:]).sum() > 0


def test_fine_tuning_partly_frozen_stack_matches_the_unrolled_model_under_adamw(key):
    unrolled, stacked = _tiny(key)
    patterns = ("h.[0-1]", "h.2.norm")  # freeze the bottom two layers and one norm
    u, s = unrolled.freeze(*patterns), stacked.freeze(*patterns)
    tx = optax.adamw(1e-2, weight_decay=0.1)
    opt_u, opt_s = jp.Optimizer(tx, u), jp.Optimizer(tx, s)

    @jax.jit
    def step(model, opt):
        loss, grads = jp.value_and_grad(_tiny_loss)(model, _TX)
        model, opt = opt.update(model, grads)
        return model, opt, loss, grads

    start = s
    for i in range(3):
        u, opt_u, loss_u, grads_u = step(u, opt_u)
        s, opt_s, loss_s, grads_s = step(s, opt_s)
        chex.assert_trees_all_close(loss_s, loss_u, rtol=1e-5, atol=1e-6)
        if i == 0:  # the same gradients for every trainable layer, exact zeros for frozen ones
            gu, gs = jp.state_dict(grads_u), jp.state_dict(grads_s)
            chex.assert_trees_all_close({n: gs[n] for n in gu}, dict(gu), rtol=1e-5, atol=1e-6)
            assert all(np.all(np.asarray(gs[n]) == 0) for n in gs if n not in gu)
    _assert_same_state(s, u)
    # frozen layers: bit-identical after weight decay and momentum; trainable layers moved
    for name in ("fc.weight", "fc.bias", "norm.weight"):
        old, new = start.h.layers, s.h.layers
        for part in name.split("."):
            old, new = getattr(old, part), getattr(new, part)
        np.testing.assert_array_equal(_rows(new, [0, 1]), _rows(old, [0, 1]))
        assert not np.allclose(_rows(new, [3]), _rows(old, [3]))
    np.testing.assert_array_equal(
        _rows(s.h.layers.norm.weight, [2]), _rows(start.h.layers.norm.weight, [2])
    )
    assert not np.allclose(_rows(s.h.layers.fc.weight, [2]), _rows(start.h.layers.fc.weight, [2]))


def test_per_layer_flags_survive_stacking_slicing_and_loading(key):
    layers = [Tiny(key=k) for k in jax.random.split(key, 3)]
    layers[1] = layers[1].freeze("fc")  # layers that differ only in flags stack
    stacked = nn.Stacked.from_layers(layers)
    assert stacked.layers.fc.weight.metadata["layer_trainable"] == (True, False, True)
    assert "layer_trainable" not in stacked.layers.norm.weight.metadata  # uniform: plain flag
    assert not stacked[1].fc.weight.trainable and stacked[2].fc.weight.trainable
    assert "layer_trainable" not in stacked[1].fc.weight.metadata
    assert stacked[:2].layers.fc.weight.metadata["layer_trainable"] == (True, False)
    assert not stacked[1:2].layers.fc.weight.trainable  # one frozen layer left: frozen
    for restacked in (
        nn.Stacked.from_layers(stacked.unstack()),
        stacked.load_state_dict(stacked.state_dict()),
    ):
        assert jax.tree.structure(restacked) == jax.tree.structure(stacked)
    assert _flags(stacked) == _flags(nn.Sequential(*layers))


def test_per_layer_names_inside_nested_stacks(key):
    outer = nn.Stacked(lambda k: Outer(key=k), 3, key=key).freeze("1.inner.0")
    flags = outer.layers.inner.layers.weight.metadata["layer_trainable"]
    assert flags == ((True, True), (False, True), (True, True))
    assert [n for n, t in _flags(outer).items() if not t] == ["1.inner.0.weight", "1.inner.0.bias"]
    x = jnp.asarray(random((2, 4), 6))
    grads = jax.grad(lambda m: jnp.sum(jnp.sin(m(x))))(outer)
    w = np.asarray(grads.layers.inner.layers.weight.value)
    assert np.all(w[1, 0] == 0) and np.all(np.abs(w[1, 1]) + np.abs(w[0, 0]) > 0)
    assert list(jp.stats(outer)) == list(outer.state_dict())  # reports in per-layer order
    # loading goes through both views, the outer stack's and then each inner one's
    fresh = nn.Stacked(lambda k: Outer(key=k), 3, key=jax.random.key(9))
    loaded = fresh.load_state_dict(outer.state_dict())
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
    for (name, a), b in zip(loaded.state_dict().items(), outer.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


# -- parameter groups by per-layer names ----------------------------------------------------------
def test_masks_and_labels_take_per_layer_names_of_whole_stacks(key):
    unrolled, stacked = _tiny(key)
    decay_u, decay_s = jp.optim.weight_decay_mask(unrolled), jp.optim.weight_decay_mask(stacked)
    for n, layers in (("fc.weight", True), ("fc.bias", False), ("norm.weight", False)):
        assert decay_s[f"h.layers.{n}"] is layers  # one layer's ndim: a stacked bias is a bias
        assert all(decay_u[f"h.{i}.{n}"] is layers for i in range(4))
    mask = jp.optim.mask(stacked, include=["h.[0-3].fc.*", "head"])
    assert mask["h.layers.fc.weight"] and not mask["h.layers.norm.weight"] and mask["head.bias"]
    labels = jp.optim.labels(stacked, {"h.*": "body", "*": "head"})
    assert labels["h.layers.fc.weight"] == "body" and labels["head.weight"] == "head"
    # Frozen layers never move, so a mask may differ on them.
    frozen = stacked.freeze("h.[0-1]")
    assert jp.optim.mask(frozen, exclude="h.[0-1].*")["h.layers.fc.weight"]
    assert jp.optim.labels(frozen, {"h.[2-3].*": "top", "*": "x"})["h.layers.fc.bias"] == "top"


@pytest.mark.parametrize(
    "make",
    [
        lambda m: jp.optim.mask(m, exclude="h.2.*"),
        lambda m: jp.optim.weight_decay_mask(m, exclude="h.0.fc.weight"),
        lambda m: jp.optim.labels(m, {"h.[0-1].*": "slow", "*": "fast"}),
    ],
    ids=["mask", "weight_decay_mask", "labels"],
)
def test_masks_and_labels_splitting_a_stack_raise_naming_it_and_the_layers(key, make):
    _, stacked = _tiny(key)
    with pytest.raises(ValueError, match=r"stacked parameter 'h\.layers\.fc\.weight'") as err:
        make(stacked)
    text = str(err.value)
    assert "h.0.fc.weight" in text and "h.3.fc.weight" in text and "scale_by_name" in text


def test_scale_by_name_scales_layers_of_a_stack_like_the_unrolled_arrays(key):
    unrolled, stacked = _tiny(key)
    rules = {"h.0.*": 0.1, "h.[2-3].fc.*": 3.0, "head.*": 0.0}

    def run(model):
        tx = optax.chain(optax.adam(1e-2), jp.optim.scale_by_name(model, rules))
        opt = jp.Optimizer(tx, model)
        for _ in range(2):
            _, grads = _TINY_STEP(model, _TX)
            model, opt = opt.update(model, grads)
        return model

    new_u, new_s = run(unrolled), run(stacked)
    _assert_same_state(new_s, new_u)
    chex.assert_trees_all_equal(new_s.head, stacked.head)  # scaled by 0: unchanged
    assert not np.allclose(
        _rows(new_s.h.layers.fc.weight, [0]), _rows(stacked.h.layers.fc.weight, [0])
    )
