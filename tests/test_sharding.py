"""jp.sharding: logical axes on Parameters, rules, named_shardings for jit, constrain, optimizer
state.

What needs several devices runs in subprocesses, so the device-count flag never leaks into the
rest of the suite: tests/sharding_worker.py (8 simulated CPU devices: every strategy against a
single-device run) and tests/distributed_worker.py (two processes joined by
``jax.distributed.initialize``). The rest runs here on one device, where a mesh of axes of
size 1 still gives every PartitionSpec the rules ask for.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jparam as jp
from jparam import nn

HERE = Path(__file__).parent
KEY = jax.random.key(0)


def mesh1(*names):
    """A mesh of axes of size 1 on the one device: specs are kept, nothing is split."""
    return jax.make_mesh((1,) * len(names), names, axis_types=(AxisType.Auto,) * len(names))


class Net(jp.Module):
    embed: nn.Embedding
    fc: nn.Linear
    norm: nn.LayerNorm
    scale: jp.Parameter
    plain: jax.Array = jp.field(plain_arrays=True)

    def __init__(self, *, key):
        k1, k2 = jax.random.split(key)
        self.embed = nn.Embedding(10, 4, key=k1)
        self.fc = nn.Linear(4, 6, key=k2)
        self.norm = nn.LayerNorm(6)
        self.scale = jp.Parameter(jnp.ones(()))  # no axes: replicated
        self.plain = jnp.arange(3.0)


FSDP_TP = {"batch": "fsdp", "in": "fsdp", "embed": "fsdp", "out": "tensor", "vocab": "tensor"}


# -- rules and specs ------------------------------------------------------------------------


def test_rules_normalise_and_compare():
    r = jp.sharding.rules({"embed": "fsdp", "batch": ("data", "fsdp")}, mlp=None)
    assert dict(r) == {"embed": ("fsdp",), "batch": ("data", "fsdp"), "mlp": ()}
    assert r == jp.sharding.rules(embed="fsdp", batch=["data", "fsdp"], mlp=None)
    assert hash(r) == hash(jp.sharding.rules(embed="fsdp", batch=("data", "fsdp"), mlp=None))
    assert repr(r) == "Rules({'embed': 'fsdp', 'batch': ('data', 'fsdp'), 'mlp': None})"
    assert jp.sharding.rules({"a": "x"}, a="y")["a"] == ("y",)  # keywords win


def test_bad_rules_are_refused():
    with pytest.raises(TypeError, match="'embed' must map to a mesh axis name"):
        jp.sharding.rules(embed=3)
    with pytest.raises(ValueError, match=r"'batch' names a mesh axis twice: \('data', 'data'\)"):
        jp.sharding.rules(batch=("data", "data"))
    with pytest.raises(TypeError, match="logical axis names must be strings"):
        jp.sharding.rules({1: "data"})
    with pytest.raises(TypeError, match="rules must be a jp.sharding.Rules or a dict"):
        jp.sharding.spec(("batch",), [("batch", "data")])


def test_spec_maps_names_and_drops_trailing_replicated_dims():
    r = {"batch": ("data", "fsdp"), "mlp": "tensor", "x": None}
    assert jp.sharding.spec(("batch", None, "mlp"), r) == P(("data", "fsdp"), None, "tensor")
    assert jp.sharding.spec(("mlp", "x", "embed", None), r) == P("tensor")
    assert jp.sharding.spec((), r) == P()
    assert jp.sharding.spec(("layers", "mlp"), r) == P(None, "tensor")  # layers: replicated
    assert jp.sharding.spec(("layers", "mlp"), {"layers": "stage", "mlp": None}) == P("stage")


def test_spec_errors():
    with pytest.raises(ValueError, match=r"unknown logical axis 'mpl' in axes \('mpl',\)"):
        jp.sharding.spec(("mpl",), {"mlp": "tensor"})
    with pytest.raises(TypeError, match=r"got 'embed'; write \('embed',\)"):
        jp.sharding.spec("embed", {})
    with pytest.raises(TypeError, match="axes must be a tuple"):
        jp.sharding.spec(["embed"], {})
    mesh = mesh1("data")
    with pytest.raises(ValueError, match=r"map 'mlp' to mesh axis 'tensor', but the mesh has"):
        jp.sharding.spec(("mlp",), {"mlp": "tensor"}, mesh=mesh)
    with pytest.raises(ValueError, match=r"axes \('a', 'b'\) name 2 dimension\(s\), but the"):
        jp.sharding.spec(("a", "b"), {"a": None, "b": None}, mesh=mesh, shape=(3,))
    with pytest.raises(TypeError, match="expected a jax.sharding.Mesh"):
        jp.sharding.spec(("batch",), {}, mesh="data")


@settings(max_examples=60, deadline=None)
@given(
    axes=st.lists(st.sampled_from(["out", "in", "embed", "mlp", None]), max_size=4),
    targets=st.fixed_dictionaries(
        {
            n: st.sampled_from([None, "a", "b", ("a", "b"), ("b", "c")])
            for n in ("out", "in", "embed", "mlp")
        }
    ),
)
def test_spec_property_each_mesh_axis_once_and_in_order(axes, targets):
    axes = tuple(axes)
    r = jp.sharding.rules(targets)
    wanted = [r[a] if a is not None else () for a in axes]
    flat = [m for w in wanted for m in w]
    if len(flat) != len(set(flat)):
        with pytest.raises(ValueError, match="on two dimensions"):
            jp.sharding.spec(axes, r)
        return
    s = jp.sharding.spec(axes, r)
    entries = list(s) + [None] * (len(axes) - len(s))
    assert len(s) <= len(axes) and (len(s) == 0 or s[-1] is not None)
    for entry, w in zip(entries, wanted):
        assert entry == (None if not w else w[0] if len(w) == 1 else w)


# -- default axes of the layers ----------------------------------------------------------------


def axes_of(module):
    return {n: v.metadata.get("axes") for n, v in module.state_dict(keep_vars=True).items()}


def test_layers_name_their_dimensions_in_pytorch_layout_order():
    assert axes_of(nn.Linear(3, 4, key=KEY)) == {"weight": ("out", "in"), "bias": ("out",)}
    assert axes_of(nn.Bilinear(3, 5, 4, key=KEY)) == {
        "weight": ("out", "in", None),
        "bias": ("out",),
    }
    assert axes_of(nn.Conv1d(2, 4, 3, key=KEY))["weight"] == ("out", "in", None)
    assert axes_of(nn.Conv2d(2, 4, 3, key=KEY)) == {
        "weight": ("out", "in", None, None),
        "bias": ("out",),
    }
    assert axes_of(nn.ConvTranspose2d(2, 4, 3, key=KEY)) == {
        "weight": ("in", "out", None, None),  # PyTorch stores (in, out // groups, kh, kw)
        "bias": ("out",),
    }
    assert axes_of(nn.Embedding(10, 4, key=KEY)) == {"weight": ("vocab", "embed")}
    pretrained = nn.Embedding.from_pretrained(jnp.ones((10, 4)))
    assert axes_of(pretrained) == {"weight": ("vocab", "embed")}
    assert not pretrained.weight.trainable
    assert axes_of(nn.MultiheadAttention(8, 2, key=KEY)) == {
        "in_proj_weight": ("out", "in"),
        "in_proj_bias": ("out",),
        "out_proj.weight": ("out", "in"),
        "out_proj.bias": ("out",),
    }
    assert axes_of(nn.LayerNorm((3, 4))) == {"weight": (None, "norm"), "bias": (None, "norm")}
    assert axes_of(nn.LayerNorm(4)) == {"weight": ("norm",), "bias": ("norm",)}
    assert axes_of(nn.RMSNorm(4)) == {"weight": ("norm",)}
    assert axes_of(nn.GroupNorm(2, 4)) == {"weight": ("norm",), "bias": ("norm",)}
    assert axes_of(nn.BatchNorm2d(4)) == {
        "weight": ("norm",),
        "bias": ("norm",),
        "running_mean": ("norm",),
        "running_var": ("norm",),
        "num_batches_tracked": (),
    }


def test_every_default_name_is_standard():
    model = nn.Sequential(
        nn.Embedding(10, 8, key=KEY),
        nn.MultiheadAttention(8, 2, key=KEY),
        nn.Conv2d(2, 4, 3, key=KEY),
        nn.ConvTranspose2d(2, 4, 3, key=KEY),
        nn.BatchNorm1d(4),
        nn.MLP(8, [16, 8], norm_layer=nn.LayerNorm, key=KEY),
    )
    used = {a for axes in axes_of(model).values() for a in axes if a is not None}
    assert used <= jp.sharding.STANDARD_NAMES
    jp.sharding.named_shardings(model, mesh1("x"), {})  # no rules needed: every name is known


def test_stacked_layer_axis_is_replicated_unless_the_rules_map_it():
    if not hasattr(nn, "Stacked"):
        pytest.skip("nn.Stacked is not in this checkout")
    stacked = nn.Stacked(lambda k: nn.Linear(4, 6, key=k), 3, key=KEY)
    assert axes_of(stacked.layers) == {"weight": ("layers", "out", "in"), "bias": ("layers", "out")}
    mesh = mesh1("stage", "tensor")
    sh = jp.sharding.named_shardings(stacked, mesh, {"out": "tensor"})
    assert sh.layers.weight.spec == P(None, "tensor") and sh.layers.bias.spec == P(None, "tensor")
    sh = jp.sharding.named_shardings(stacked, mesh, {"out": "tensor", "layers": "stage"})
    assert sh.layers.weight.spec == P("stage", "tensor")


# -- annotate ---------------------------------------------------------------------------------


def test_annotate_sets_axes_by_glob_first_match_wins():
    mlp = nn.Sequential(nn.Linear(4, 8, key=KEY), nn.Linear(8, 4, key=KEY))
    mlp = mlp.replace(layers=[mlp[0], mlp[1].freeze()])
    mlp = jp.at(mlp, "0.weight").apply(lambda w: w.replace(lr_scale=0.5))
    out = jp.sharding.annotate(
        mlp, {"0.weight": ("mlp", "embed"), "*.weight": ("embed", "mlp"), "0.bias": None}
    )
    assert axes_of(out) == {
        "0.weight": ("mlp", "embed"),
        "0.bias": None,
        "1.weight": ("embed", "mlp"),
        "1.bias": ("out",),
    }
    assert out[0].weight.metadata == {"axes": ("mlp", "embed"), "lr_scale": 0.5}
    assert not out[1].weight.trainable  # the flag is kept
    assert out[0].bias.metadata == {}
    chex.assert_trees_all_equal(out.state_dict(), mlp.state_dict())
    assert axes_of(mlp)["0.weight"] == ("out", "in")  # the input is unchanged


def test_annotate_errors_name_the_parameter():
    lin = nn.Linear(4, 8, key=KEY)
    with pytest.raises(ValueError, match="pattern 'wieght' matches no parameter or buffer"):
        jp.sharding.annotate(lin, {"wieght": ("out", "in")})
    with pytest.raises(ValueError, match=r"bias: axes \('out', 'in'\) name 2 dimension\(s\), but"):
        jp.sharding.annotate(lin, {"*": ("out", "in")})
    with pytest.raises(TypeError, match=r"annotate\['weight'\]: axes must be a tuple"):
        jp.sharding.annotate(lin, {"weight": "out"})


# -- named_shardings and shard on one device -----------------------------------------------------


def test_one_spelling_each_under_jp_sharding():
    assert callable(jp.sharding.named_shardings) and callable(jp.sharding.shard)
    for old in ("shard", "shardings"):  # top-level near-homonyms of jp.sharding are gone
        assert not hasattr(jp, old) and old not in jp.__all__
    assert not hasattr(jp.sharding, "shardings")
    assert not hasattr(jp, "sharded") and jp.save_sharded.__module__ == "jparam.sharded_checkpoint"


def test_named_shardings_mirror_the_tree_and_follow_the_rules():
    model = Net(key=KEY)
    mesh = mesh1("fsdp", "tensor")
    sh = jp.sharding.named_shardings(model, mesh, FSDP_TP)
    assert jax.tree.structure(sh) == jax.tree.structure(model)
    specs = {n: s.spec for n, s in sh.state_dict().items()}
    assert specs == {
        "scale": P(),
        "embed.weight": P("tensor", "fsdp"),
        "fc.weight": P("tensor", "fsdp"),
        "fc.bias": P("tensor"),
        "norm.weight": P(),
        "norm.bias": P(),
    }
    assert sh.plain == NamedSharding(mesh, P())
    assert all(s.mesh == mesh for s in jax.tree.leaves(sh))
    # The trainable half of the shardings fits the trainable half of the model.
    params_sh, rest_sh = jp.split(sh, jp.trainable)
    params, rest = jp.split(model, jp.trainable)
    assert params_sh.keys() == params.keys()
    assert jax.tree.structure(rest_sh) == jax.tree.structure(rest)


def test_shardings_errors_name_the_parameter():
    model = Net(key=KEY)
    mesh = mesh1("fsdp", "tensor")
    with pytest.raises(ValueError, match=r"fc\.weight: unknown logical axis 'ouy'"):
        jp.sharding.named_shardings(
            jp.sharding.annotate(model, {"fc.weight": ("ouy", "in")}), mesh, {}
        )
    bad = jp.at(model, "fc.weight").apply(lambda w: w.replace(axes=("out",)))
    with pytest.raises(ValueError, match=r"fc\.weight: axes \('out',\) name 1 dimension"):
        jp.sharding.named_shardings(bad, mesh, {})
    with pytest.raises(ValueError, match=r"embed\.weight: the rules map 'vocab' to mesh axis 'x'"):
        jp.sharding.named_shardings(model, mesh, {"vocab": "x"})
    with pytest.raises(ValueError, match=r"fc\.weight: axes \('out', 'in'\) put mesh axis 'fsdp'"):
        jp.sharding.named_shardings(model, mesh, {"out": "fsdp", "in": "fsdp"})
    with pytest.raises(ValueError, match="pass model="):
        jp.sharding.named_shardings(jp.Optimizer(optax.adam(1e-3), model), mesh, {})


def test_optimizer_state_follows_its_parameter():
    model = Net(key=KEY).freeze("norm")
    mesh = mesh1("fsdp", "tensor")
    opt = jp.Optimizer(optax.adamw(1e-3), model)
    sh = jp.sharding.named_shardings(opt, mesh, FSDP_TP, model=model)
    specs = {jp.path_name(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(sh)[0]}
    expected = {"scale": P(), "embed.weight": P("tensor", "fsdp")}
    expected |= {"fc.weight": P("tensor", "fsdp"), "fc.bias": P("tensor")}
    for moment in ("mu", "nu"):
        for name, want in expected.items():
            assert specs.pop(f"state.0.{moment}.{name}") == want
    assert specs == {"state.0.count": P()}  # frozen norm: no state at all


def specs_by_path(tree):
    return {jp.path_name(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_plain_optax_state_and_split_dicts_follow_the_model():
    model = Net(key=KEY)
    mesh = mesh1("fsdp", "tensor")
    params, _ = jp.split(model, jp.trainable)
    want = {
        n: s.spec for n, s in jp.sharding.named_shardings(model, mesh, FSDP_TP).state_dict().items()
    }
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    specs = specs_by_path(jp.sharding.named_shardings(tx.init(params), mesh, FSDP_TP, model=model))
    assert specs.pop("1.0.count") == P()
    assert specs == {f"1.0.{m}.{n}": want[n] for m in ("mu", "nu") for n in params}
    assert specs_by_path(jp.sharding.named_shardings(params, mesh, FSDP_TP, model=model)) == want
    # Without model= a name-keyed dict has no axes to follow: replicated.
    assert jp.sharding.named_shardings(params, mesh, FSDP_TP)["fc.weight"].spec == P()


def test_state_of_another_shape_than_its_parameter_is_replicated():
    model = Net(key=KEY)
    params, _ = jp.split(model, jp.trainable)
    tx = optax.adafactor(1e-3, min_dim_size_to_factor=4)  # factors fc.weight (6, 4)
    specs = specs_by_path(
        jp.sharding.named_shardings(tx.init(params), mesh1("fsdp", "tensor"), FSDP_TP, model=model)
    )
    assert specs["0.v_row.fc.weight"] == specs["0.v_col.fc.weight"] == specs["0.v.fc.weight"] == P()
    assert specs["0.v.fc.bias"] == P("tensor")  # not factored: the bias's own shape


def test_abstract_model_gives_shardings_and_jit_inits_into_them():
    mesh = mesh1("fsdp", "tensor")
    init = lambda k: Net(key=k)
    abstract = jax.eval_shape(init, KEY)
    assert isinstance(abstract.fc.weight.value, jax.ShapeDtypeStruct)
    sh = jp.sharding.named_shardings(abstract, mesh, FSDP_TP)
    model = jax.jit(init, out_shardings=sh)(KEY)
    for got, want in zip(jax.tree.leaves(model), jax.tree.leaves(sh)):
        assert got.sharding == want
    chex.assert_trees_all_equal(model, Net(key=KEY))
    with pytest.raises(ValueError, match="'embed.weight' is abstract"):
        jp.sharding.shard(abstract, mesh, FSDP_TP)


def test_shard_places_model_and_optimizer():
    mesh = mesh1("fsdp", "tensor")
    model = jp.sharding.shard(Net(key=KEY), mesh, FSDP_TP)
    assert model.fc.weight.value.sharding == NamedSharding(mesh, P("tensor", "fsdp"))
    assert model.plain.sharding == NamedSharding(mesh, P())
    opt = jp.sharding.shard(jp.Optimizer(optax.adam(1e-3), model), mesh, FSDP_TP, model=model)
    assert opt.state[0].mu["fc.weight"].sharding == model.fc.weight.value.sharding
    assert opt.state[0].count.sharding == NamedSharding(mesh, P())
    chex.assert_trees_all_equal(model, Net(key=KEY))


def constraints(fn, x):
    """The sharding constraints in ``fn``'s lowered program (one device keeps them there)."""
    text = jax.jit(fn).lower(x).as_text()
    return [
        line.split("<@mesh, ")[1].split(">")[0]
        for line in text.splitlines()
        if "sharding_constraint" in line
    ]


def test_constrain_applies_inside_use_only():
    x = jnp.ones((4, 3))
    f = lambda a: jp.sharding.constrain(a, ("batch", None))
    assert f(x) is x and constraints(f, x) == []
    assert jp.sharding.constrain(x, ("no such name",)) is x  # nothing to check it against
    with jp.sharding.use(mesh1("data"), {"batch": "data"}):
        assert constraints(f, x) == ['[{"data"}, {}]']
        with pytest.raises(ValueError, match=r"constrain\(shape \(4, 3\)\): unknown logical"):
            jp.sharding.constrain(x, ("btach", None))
    assert constraints(f, x) == []  # the context is gone again


def test_constrain_gives_a_mesh_axis_to_the_first_dimension_only():
    f = lambda a: jp.sharding.constrain(a, ("batch", "seq", "embed"))
    with jp.sharding.use(mesh1("fsdp"), {"batch": "fsdp", "embed": "fsdp"}):
        assert constraints(f, jnp.ones((2, 3, 4))) == ['[{"fsdp"}, {}, {}]']


# -- several devices (subprocesses) --------------------------------------------------------------


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ)
    # Eight devices; XLA's cheaper backend optimisation halves compile time on two cores (the
    # single-device reference runs in the same process under the same flags).
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharding_worker.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


STRATEGIES = ["dp", "fsdp", "tp", "fsdp_tp"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_like_one_device(eight_devices, strategy):
    run = eight_devices[strategy]
    reference = eight_devices["reference_losses"]
    assert len(run["losses"]) == len(reference) == 5
    np.testing.assert_allclose(run["losses"], reference, rtol=1e-5, atol=1e-5)
    assert run["init_diff"] <= 1e-6  # the very same draws (different compilation: tolerance)
    worst = max(run["param_diff"], key=run["param_diff"].get)
    assert run["param_diff"][worst] <= 1e-5, (worst, run["param_diff"][worst])
    assert reference[-1] < reference[0]  # it did train


# What the rules in sharding_worker.STRATEGIES say, written out by hand.
EXPECTED = {
    "dp": {
        "embed.weight": "P()",
        "blocks.0.attn.in_proj_weight": "P()",
        "blocks.0.fc1.weight": "P()",
        "blocks.0.fc2.weight": "P()",
        "head.weight": "P()",
        "head.bias": "P()",
        "pos": "P()",
    },
    "fsdp": {
        "embed.weight": "P(None, 'fsdp')",
        "blocks.0.attn.in_proj_weight": "P(None, 'fsdp')",
        "blocks.0.fc1.weight": "P(None, 'fsdp')",
        "blocks.0.fc2.weight": "P('fsdp',)",
        "head.weight": "P(None, 'fsdp')",
        "head.bias": "P()",
        "pos": "P(None, 'fsdp')",
    },
    "tp": {
        "embed.weight": "P('tensor',)",
        "blocks.0.attn.in_proj_weight": "P('tensor',)",
        "blocks.0.fc1.weight": "P('tensor',)",
        "blocks.0.fc2.weight": "P(None, 'tensor')",
        "head.weight": "P('tensor',)",
        "head.bias": "P('tensor',)",
        "pos": "P()",
    },
    "fsdp_tp": {
        "embed.weight": "P('tensor', 'fsdp')",
        "blocks.0.attn.in_proj_weight": "P('tensor', 'fsdp')",
        "blocks.0.fc1.weight": "P('tensor', 'fsdp')",
        "blocks.0.fc2.weight": "P('fsdp', 'tensor')",
        "head.weight": "P('tensor', 'fsdp')",
        "head.bias": "P('tensor',)",
        "pos": "P(None, 'fsdp')",
    },
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_parameters_and_adam_state_are_sharded_as_the_rules_say(eight_devices, strategy):
    run = eight_devices[strategy]
    params, opt = run["params"], dict(run["opt"])
    for name, spec in EXPECTED[strategy].items():
        assert params[name] == spec, name
    assert params["norm.weight"] == params["blocks.0.norm2.bias"] == "P()"
    for name, spec in params.items():  # adam's moments follow their weight, all of them
        assert opt.pop(f"state.0.mu.{name}") == spec, name
        assert opt.pop(f"state.0.nu.{name}") == spec, name
    assert opt == {"state.0.count": "P()"}


def test_plain_optax_state_follows_on_eight_devices(eight_devices):
    out = eight_devices["plain_optax"]
    state = dict(out["state"])
    for name, spec in out["params"].items():
        assert state.pop(f"1.0.mu.{name}") == spec
        assert state.pop(f"1.0.nu.{name}") == spec
    assert state == {"1.0.count": "P()"}
    assert out["params"]["blocks.0.fc2.weight"] == "P('fsdp', 'tensor')"


def test_errors_on_a_real_mesh_name_the_parameter(eight_devices):
    e = eight_devices["errors"]
    assert e["indivisible"] == (
        "ValueError: head.weight: dimension 0 ('out') has size 6, which mesh axis 'tensor' (4) "
        "cannot split into 4 equal parts; change the shape, the mesh or the rules"
    )
    assert e["indivisible_abstract"] == e["indivisible"]
    assert e["unknown"].startswith(
        "ValueError: blocks.0.fc1.weight: unknown logical axis 'mlp' in axes ('mlp', 'embed'); "
        "add it to the rules (map it to None to replicate it)"
    )
    assert e["missing_mesh_axis"] == (
        "ValueError: blocks.0.fc1.weight: the rules map 'mlp' to mesh axis 'data', but the mesh "
        "has axes ('fsdp', 'tensor')"
    )
    assert (
        "blocks.0.fc1.weight: axes ('mlp', 'embed') put mesh axis 'tensor'"
        in (e["same_mesh_axis_twice"])
    )
    assert "pass model=" in e["optimizer_without_model"]
    assert e["constrain_indivisible"] == (
        "ValueError: constrain(shape (6, 2)): dimension 0 ('batch') has size 6, which mesh axis "
        "'tensor' (4) cannot split into 4 equal parts; change the shape, the mesh or the rules"
    )
    assert (
        "axes ('batch',) name 1 dimension(s), but the array has shape (4, 2)"
        in (e["constrain_rank"])
    )


def test_constrain_lays_out_activations_on_eight_devices(eight_devices):
    c = eight_devices["constrain"]
    assert c["inside"] == "P('fsdp', None, 'tensor')"
    assert c["outside_devices"] == 1  # the same function outside `use` is not constrained
    assert c["values_equal"]


# -- two processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_run_a_data_parallel_step():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one device per process
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])])
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "distributed_worker.py"), str(i), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    skips = [line for out, _ in outs for line in out.splitlines() if line.startswith("SKIP:")]
    if skips:
        pytest.skip(skips[0][len("SKIP: ") :])
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"process failed:\n{out}\n{err[-3000:]}"
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["process"] for r in results] == [0, 1]
    assert results[0]["loss"] == results[1]["loss"]
    assert results[0]["params"] == results[1]["params"]

    # The same step on the whole batch in this one process.
    import distributed_worker as w

    model = w.build(jax.random.key(0))
    x, y = w.batch()
    model, _, loss = jax.jit(w.step_fn)(model, jp.Optimizer(w.TX, model), x, y)
    np.testing.assert_allclose(results[0]["loss"], float(loss), rtol=1e-5, atol=1e-5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(
            results[0]["params"][name], np.asarray(value), rtol=1e-5, atol=1e-5
        )
