"""state_dict and load_state_dict: PyTorch keys and order, strictness, conversion, purity."""

from collections import OrderedDict

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from twin_models import Linear, Net, torch_net

import jparam as jp

NORM_STATE = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
NET_STATE = [
    "embed",
    "mask",
    *(
        k
        for i in range(2)
        for k in (
            f"blocks.{i}.scale",
            f"blocks.{i}.step",
            f"blocks.{i}.fc.weight",
            f"blocks.{i}.fc.bias",
            *(f"blocks.{i}.norm.{n}" for n in NORM_STATE),
        )
    ),
    "head.weight",
    "head.bias",
]


def _np_state(model):
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


# -- state_dict ---------------------------------------------------------------------------------


def test_state_dict_is_ordered_params_then_buffers_then_children():
    net = Net()
    sd = net.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == NET_STATE
    assert all(isinstance(v, jax.Array) for v in sd.values())
    assert sd["head.weight"] is net.head.weight.value
    assert "blocks.0.norm.scratch" not in sd  # persistent=False


def test_state_dict_keys_and_order_match_torch_exactly():
    pytest.importorskip("torch")
    assert list(Net().state_dict()) == list(torch_net().state_dict())
    assert list(Net(n=3, depth=3).state_dict()) == list(torch_net(n=3, depth=3).state_dict())


def test_state_dict_keep_vars_and_prefix():
    net = Net()
    sd = net.state_dict(keep_vars=True)
    assert sd["head.weight"] is net.head.weight
    assert isinstance(sd["mask"], jp.Buffer)
    # Both spellings give one dot: jparam's ("model") and PyTorch's ("model.").
    assert list(net.state_dict(prefix="model")) == [f"model.{k}" for k in NET_STATE]
    assert list(net.state_dict(prefix="model.")) == [f"model.{k}" for k in NET_STATE]


def test_state_dict_prefix_matches_torch():
    pytest.importorskip("torch")
    assert list(Net().state_dict(prefix="m.")) == list(torch_net().state_dict(prefix="m."))


def test_state_dict_lists_tied_parameters_under_each_name():
    class Tied(jp.Module):
        enc: jp.Parameter
        dec: jp.Parameter

    w = jp.Parameter(jnp.ones(2))
    sd = Tied(w, w).state_dict()
    assert list(sd) == ["enc", "dec"]
    assert sd["enc"] is sd["dec"]


# -- load_state_dict ----------------------------------------------------------------------------


def test_load_returns_new_module_and_leaves_original_untouched():
    net = Net()
    before = _np_state(net)
    state = {k: v if v.dtype == bool else v + 1 for k, v in before.items()}
    new = net.load_state_dict(state)
    assert isinstance(new, Net) and new is not net
    for k, v in new.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), state[k], err_msg=k)
        np.testing.assert_array_equal(np.asarray(net.state_dict()[k]), before[k], err_msg=k)
    # flags, metadata and non-persistent buffers survive
    assert jax.tree.structure(new) == jax.tree.structure(net)
    assert new.blocks[0].norm.scratch is net.blocks[0].norm.scratch


def test_load_keeps_trainable_flags_and_metadata():
    lin = Linear(2, 2)
    lin = lin.replace(weight=lin.weight.replace(trainable=False, axes=("out", "in")))
    new = lin.load_state_dict({"weight": np.zeros((2, 2)), "bias": np.ones(2)})
    assert new.weight.trainable is False
    assert new.weight.metadata == {"axes": ("out", "in")}
    chex.assert_trees_all_equal(new.bias.value, jnp.ones(2))


@pytest.mark.parametrize("kind", ["numpy", "jax", "parameter"])
def test_load_accepts_numpy_jax_and_variables(kind):
    lin = Linear(3, 2)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([-1.0, 1.0], np.float32)
    convert = {
        "numpy": lambda x: x,
        "jax": jnp.asarray,
        "parameter": jp.Parameter,
    }[kind]
    new = lin.load_state_dict({"weight": convert(w), "bias": convert(b)})
    chex.assert_trees_all_equal(new.weight.value, jnp.asarray(w))
    chex.assert_trees_all_equal(new.bias.value, jnp.asarray(b))
    assert isinstance(new.weight.value, jax.Array)


def test_load_torch_state_dict_as_is():
    pytest.importorskip("torch")
    tnet = torch_net()
    net = Net().load_state_dict(tnet.state_dict())
    for k, v in tnet.state_dict().items():
        got = net.state_dict()[k]
        np.testing.assert_array_equal(np.asarray(got), v.numpy(), err_msg=k)
    # same-kind cast to the model's dtype: torch's int64 counters land in int32 buffers
    assert net.blocks[0].norm.num_batches_tracked.dtype == jnp.int32
    assert int(net.blocks[0].norm.num_batches_tracked) == 7
    assert net.mask.dtype == jnp.bool_


def test_load_torch_bfloat16_tensors_cast_to_model_dtype():
    torch = pytest.importorskip("torch")
    tsd = torch_net().state_dict()
    bf = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tsd.items()}
    net = Net().load_state_dict(bf)
    w = net.head.weight
    assert w.dtype == jnp.float32
    expected = bf["head.weight"].float().numpy()
    np.testing.assert_array_equal(np.asarray(w), expected)
    assert not np.array_equal(expected, tsd["head.weight"].numpy())  # really rounded


def test_jparam_state_dict_loads_into_torch_strictly():
    torch = pytest.importorskip("torch")
    tnet = torch_net()
    net = Net()
    converted = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    converted = {
        k: v.long() if v.dtype == torch.int32 else v for k, v in converted.items()
    }  # torch keeps int64 counters
    result = tnet.load_state_dict(converted, strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    np.testing.assert_array_equal(tnet.head.weight.detach().numpy(), np.asarray(net.head.weight))


def test_same_kind_dtype_is_cast_to_the_model_dtype():
    lin = Linear(2, 2)
    new = lin.load_state_dict(
        {"weight": np.full((2, 2), 0.1, np.float64), "bias": np.ones(2, np.float16)}
    )
    assert new.weight.dtype == jnp.float32 and new.bias.dtype == jnp.float32
    chex.assert_trees_all_close(new.weight.value, jnp.full((2, 2), 0.1))
    half = lin.half()
    assert half.load_state_dict(_np_state(lin)).weight.dtype == jnp.float16


def test_strict_raises_one_error_listing_every_problem():
    net = Net()
    state = _np_state(net)
    del state["head.bias"]
    del state["blocks.1.norm.running_var"]
    state["extra.weight"] = np.ones(1)
    state["blocks.0.fc.weight"] = np.ones((5, 5), np.float32)
    state["embed"] = np.ones((3, 4), np.int32)
    state["blocks.0.step"] = np.ones((), np.float32)
    with pytest.raises(jp.StateDictError) as e:
        net.load_state_dict(state)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert msg.startswith("6 error(s) loading state_dict into Net:")
    for piece in (
        "missing key: head.bias",
        "missing key: blocks.1.norm.running_var",
        "unexpected key: extra.weight",
        "blocks.0.fc.weight: shape mismatch, expected (4, 4), got (5, 5)",
        "embed: dtype mismatch, expected floating float32, got integer int32",
        "blocks.0.step: dtype mismatch, expected integer int32, got floating float32",
    ):
        assert piece in msg


def test_load_state_dict_returns_the_tree_whatever_strict_is():
    net = Net()
    state = _np_state(net)
    state = {k: v + 1 if v.dtype == np.float32 else v for k, v in state.items()}
    del state["head.bias"]
    state["extra"] = np.ones(1)
    for new in (net.load_state_dict(state, strict=False), jp.load_state_dict(net, state, False)):
        assert type(new) is Net
        chex.assert_trees_all_equal(new.head.bias.value, net.head.bias.value)  # missing: kept
        chex.assert_trees_all_close(new.head.weight.value, net.head.weight.value + 1)
    as_dict = {f"n.{k}": v for k, v in _np_state(net).items()}
    for strict in (True, False):
        assert type(net.load_state_dict(_np_state(net), strict=strict)) is Net
        assert type(jp.load_state_dict({"n": net}, as_dict, strict)) is dict


def test_incompatible_keys_reports_missing_and_unexpected_as_pytorch_does():
    net = Net()
    state = _np_state(net)
    del state["head.bias"]
    state["extra"] = np.ones(1)
    incompatible = jp.incompatible_keys(net, state)
    assert isinstance(incompatible, jp.IncompatibleKeys)
    missing, unexpected = incompatible  # PyTorch's habit, unpacked
    assert (missing, unexpected) == (["head.bias"], ["extra"])
    assert jp.incompatible_keys(net, _np_state(net)) == jp.IncompatibleKeys([], [])
    with pytest.raises(TypeError, match="must map names to arrays"):
        jp.incompatible_keys(net, [("embed", state["embed"])])


def _reported(error: jp.StateDictError, what: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in str(error).splitlines()[1:] if what in line]


def _assert_agrees_with_load(model, state, mapping=None):
    """`incompatible_keys` names exactly what a strict load reports and a non-strict load skips
    (every value in ``state`` differs from the model's, so a loaded name changes)."""
    keys = jp.incompatible_keys(model, state, mapping=mapping)
    assert keys.missing_keys or keys.unexpected_keys  # each case has something to skip
    with pytest.raises(jp.StateDictError) as e:
        jp.load_state_dict(model, state, mapping=mapping)
    assert _reported(e.value, "missing key: ") == keys.missing_keys
    assert _reported(e.value, "unexpected key: ") == keys.unexpected_keys
    new = jp.load_state_dict(model, state, strict=False, mapping=mapping)
    before, after = jp.state_dict(model), jp.state_dict(new)
    kept = [n for n in before if np.array_equal(before[n], after[n])]
    assert sorted(kept) == sorted(keys.missing_keys)
    return keys


def _plus_one(model):
    """Every value of the model's state changed, in its own dtype."""
    changed = {k: np.asarray(v) for k, v in jp.state_dict(model).items()}
    return {k: ~v if v.dtype == bool else v + 1 for k, v in changed.items()}


def test_incompatible_keys_agrees_with_load_on_a_plain_model():
    net = Net()
    state = _plus_one(net)
    del state["head.bias"], state["blocks.1.norm.running_var"]
    state["extra"] = np.ones(1)
    keys = _assert_agrees_with_load(net, state)
    assert keys == (["blocks.1.norm.running_var", "head.bias"], ["extra"])


def test_incompatible_keys_agrees_with_load_through_ties():
    tied = jp.tie({"a": Linear(2, 2), "b": Linear(2, 2)}, "b.weight", "a.weight")
    state = _plus_one(tied)
    alone = {"b.weight": state["b.weight"], "a.bias": state["a.bias"]}  # the tied name alone
    assert _assert_agrees_with_load(tied, alone) == (["b.bias"], [])
    neither = {"a.bias": state["a.bias"], "c": np.ones(1)}
    assert _assert_agrees_with_load(tied, neither) == (["a.weight", "b.bias", "b.weight"], ["c"])


def test_incompatible_keys_agrees_with_load_through_a_mapping():
    net = Net()
    state = {f"module.{k}": v for k, v in _plus_one(net).items() if k != "embed"}
    mapping = [jp.mapping.rename("module.*", "*")]
    assert jp.incompatible_keys(net, state).unexpected_keys == list(state)  # unmapped
    assert _assert_agrees_with_load(net, state, mapping) == (["embed"], [])


def test_incompatible_keys_agrees_with_load_through_a_state_view():
    from jparam import nn

    model = nn.Sequential(nn.Stacked(lambda k: nn.Linear(2, 2, key=k), 3, key=jax.random.key(0)))
    state = _plus_one(model)
    assert "0.1.weight" in state  # saved under per-layer names
    del state["0.1.weight"]
    state["0.3.weight"] = np.ones((2, 2), np.float32)
    assert _assert_agrees_with_load(model, state) == (["0.1.weight"], ["0.3.weight"])


def test_incompatible_keys_agrees_with_load_under_pytorch_parametrization_names():
    from jparam import nn

    model = jp.parametrize(
        nn.Linear(3, 2, key=jax.random.key(0)), "weight", jp.parametrizations.weight_norm()
    )
    ours = _plus_one(model)
    g, v = (name for name in ours if name.startswith("weight."))
    state = {"parametrizations.weight.original1": ours[v], "bias": ours["bias"], "x": np.ones(1)}
    assert _assert_agrees_with_load(model, state) == ([g], ["x"])


def test_incompatible_keys_match_torch_non_strict_load():
    torch = pytest.importorskip("torch")
    theirs = torch_net()
    base = theirs.state_dict()
    cases = [
        ["head.bias", "blocks.0.fc.weight", "blocks.1.norm.num_batches_tracked", "embed"],
        [],
    ]
    extras = [["extra"], ["blocks.0.bogus", "head.extra", "zzz"]]
    for gone, extra in zip(cases, extras):
        state = {k: v.clone() for k, v in base.items() if k not in gone}
        state.update({k: torch.ones(1) for k in extra})
        result = theirs.load_state_dict(state, strict=False)
        keys = jp.incompatible_keys(Net(), state)
        assert keys.missing_keys == result.missing_keys  # in the same order
        assert sorted(keys.missing_keys) == sorted(gone)
        assert sorted(keys.unexpected_keys) == sorted(result.unexpected_keys) == sorted(extra)


def test_non_strict_still_raises_on_shape_and_kind_mismatch():
    lin = Linear(2, 3)
    with pytest.raises(jp.StateDictError, match=r"weight: shape mismatch"):
        lin.load_state_dict({"weight": np.ones((2, 2))}, strict=False)
    with pytest.raises(jp.StateDictError, match=r"bias: dtype mismatch"):
        lin.load_state_dict({"bias": np.ones(3, np.int32)}, strict=False)


def test_no_silent_broadcast_of_scalars():
    lin = Linear(2, 3)
    with pytest.raises(jp.StateDictError, match=r"bias: shape mismatch, expected \(3,\), got \(\)"):
        lin.load_state_dict({"weight": np.ones((3, 2)), "bias": 0.0})


def test_load_refuses_non_mappings_and_non_arrays():
    lin = Linear(2, 2)
    with pytest.raises(TypeError, match="must map names to arrays"):
        lin.load_state_dict([("weight", np.ones((2, 2)))])
    with pytest.raises(jp.StateDictError, match=r"state_dict\['bias'\] must be an array"):
        lin.load_state_dict({"weight": np.ones((2, 2)), "bias": "zeros"})


def test_free_functions_on_a_dict_of_modules():
    tree = {"a": Linear(1, 2), "b": Linear(2, 1)}
    sd = jp.state_dict(tree)
    assert list(sd) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    new = jp.load_state_dict(tree, {k: np.asarray(v) * 0 + 3 for k, v in sd.items()})
    assert isinstance(new, dict) and isinstance(new["a"], Linear)
    chex.assert_trees_all_equal(new["b"].weight.value, jnp.full((1, 2), 3.0))


def test_load_state_dict_inside_jit():
    lin = Linear(2, 2)
    state = {"weight": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)}
    new = jax.jit(lambda m, s: m.load_state_dict(s))(lin, state)
    chex.assert_trees_all_equal(new.weight.value, state["weight"])
    assert jax.tree.structure(new) == jax.tree.structure(lin)


def test_round_trip_into_a_zeroed_model():
    net = Net()
    zero = jax.tree.map(jnp.zeros_like, net)
    loaded = zero.load_state_dict(net.state_dict())
    chex.assert_trees_all_equal(dict(loaded.state_dict()), dict(net.state_dict()))


def test_load_state_dict_into_an_abstract_model_never_initialises_weights():
    from jparam import nn

    abstract = jax.eval_shape(
        lambda k: nn.Sequential(nn.Linear(4, 3, key=k), nn.ReLU()), jax.random.key(0)
    )
    assert isinstance(abstract[0].weight.value, jax.ShapeDtypeStruct)
    state = {"0.weight": np.ones((3, 4), np.float32), "0.bias": np.arange(3, dtype=np.float32)}
    model = abstract.load_state_dict(state)
    chex.assert_trees_all_close(model(jnp.ones((1, 4))), jnp.array([[4.0, 5.0, 6.0]]))
    with pytest.raises(jp.StateDictError, match=r"0.weight: shape mismatch"):
        abstract.load_state_dict({**state, "0.weight": np.ones((4, 3), np.float32)})


# -- every per-key problem joins the one report ---------------------------------------------------


def _bad_state(net):
    state = _np_state(net)
    del state["head.bias"]
    state["extra"] = np.ones(1)
    state["head.weight"] = np.ones((1, 4), np.float32)  # shape
    state["blocks.0.step"] = np.array(2**40, np.int64)  # outside int32 without x64: the repro
    state["blocks.1.step"] = 2**70  # a Python int no integer dtype holds
    state["blocks.0.norm.num_batches_tracked"] = None
    state["blocks.0.fc.bias"] = "zeros"
    state["blocks.1.fc.bias"] = [0.0] * 4  # a list is not an array: refused like a string
    state["embed"] = jax.ShapeDtypeStruct(net.embed.shape, net.embed.dtype)  # abstract
    return state


PER_KEY = [
    "head.weight: shape mismatch, expected (2, 4), got (1, 4)",
    "blocks.0.step",
    "outside the int32 range",
    "blocks.1.step",
    "state_dict['blocks.0.norm.num_batches_tracked'] must be an array",
    "state_dict['blocks.0.fc.bias'] must be an array",
    "state_dict['blocks.1.fc.bias'] must be an array",
    "embed: got an abstract value (f32[",
]


def test_overflow_abstract_and_junk_values_join_the_report_with_missing_and_unexpected_keys():
    net = Net()
    with pytest.raises(jp.StateDictError) as e:
        net.load_state_dict(_bad_state(net))
    msg = str(e.value)
    assert msg.startswith("9 error(s) loading state_dict into Net:"), msg
    for piece in ("missing key: head.bias", "unexpected key: extra", *PER_KEY):
        assert piece in msg, piece
    with pytest.raises(jp.StateDictError) as e:
        net.load_state_dict(_bad_state(net), strict=False)
    msg = str(e.value)
    assert msg.startswith("7 error(s) loading state_dict into Net:") and "missing" not in msg
    assert all(piece in msg for piece in PER_KEY)


def test_abstract_values_load_only_into_an_abstract_model():
    lin = Linear(2, 3)
    abstract_state = jax.eval_shape(lambda: dict(lin.state_dict()))
    with pytest.raises(jp.StateDictError, match=r"weight: got an abstract value \(f32\[3,2\]"):
        lin.load_state_dict(abstract_state)
    tied = jp.tie({"a": Linear(2, 2), "b": Linear(2, 2)}, "b.weight", "a.weight")
    with pytest.raises(jp.StateDictError, match=r"b.weight: got an abstract value"):
        jp.load_state_dict(
            tied, {"b.weight": jax.ShapeDtypeStruct((2, 2), jnp.float32)}, strict=False
        )
    abstract = jax.eval_shape(lambda: Linear(2, 3))
    again = abstract.load_state_dict(abstract_state)
    assert isinstance(again.weight.value, jax.ShapeDtypeStruct)


def test_a_pytorch_meta_tensor_joins_the_report_naming_its_key():
    torch = pytest.importorskip("torch")
    lin = Linear(2, 3)
    state = {"weight": torch.empty(3, 2, device="meta"), "bias": np.ones(4, np.float32)}
    with pytest.raises(jp.StateDictError) as e:
        lin.load_state_dict(state)
    msg = str(e.value)
    assert msg.startswith("2 error(s)") and "weight" in msg and "bias: shape mismatch" in msg


class WithTable(jp.Module):
    """A Linear and a non-persistent table (say, rotary frequencies), which no state_dict has."""

    lin: jp.nn.Linear
    table: jp.Buffer

    def __init__(self, *, key):
        self.lin = jp.nn.Linear(2, 3, key=key)
        self.table = jp.Buffer(jnp.arange(3.0), persistent=False)

    def __call__(self, x):
        return self.lin(x) + self.table


def test_a_real_load_into_an_abstract_model_refuses_to_leave_a_non_persistent_buffer_empty():
    real = WithTable(key=jax.random.key(0))
    state = {k: np.asarray(v) for k, v in real.state_dict().items()}
    assert "table" not in state
    abstract = jax.eval_shape(lambda k: WithTable(key=k), jax.random.key(1))
    with pytest.raises(jp.StateDictError, match=r"table: non-persistent jp.Buffer.*jax.eval_shape"):
        abstract.load_state_dict(state)
    # filled first, it loads and runs
    filled = jp.at(abstract, "table").set(jp.Buffer(jnp.arange(3.0), persistent=False))
    loaded = filled.load_state_dict(state)
    chex.assert_trees_all_close(loaded(jnp.ones((1, 2))), real(jnp.ones((1, 2))))
    # an abstract load (a checkpoint reader checking shapes) is still fine
    abstract.load_state_dict(jax.eval_shape(lambda: dict(real.state_dict())))
