"""Multi-device half of tests/test_sharding.py; runs in its own process with 8 CPU devices.

The parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and
``JAX_PLATFORMS=cpu`` for this process only. It trains one small transformer for 5 adam steps on
one device and under each strategy (data parallel, FSDP, tensor parallel, FSDP + tensor parallel
on a 2x4 mesh), and prints one JSON object of facts: losses, parameter differences, the
partition spec of every parameter and optimizer state array, error messages. The parent asserts
on them. Checks that only make sense here (every output carries the sharding asked for) are
asserted here too; the process exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jparam as jp
from jparam import nn

VOCAB, DIM, HEADS, HIDDEN, SEQ, BATCH, STEPS = 16, 16, 4, 32, 8, 8, 5

# Meshes and rules per strategy. "mlp" is this model's own name (see Block), so every rule set
# must say where it goes; the standard names ("out", "in", "embed", ...) default to replicated.
STRATEGIES = {
    "dp": ((8,), ("data",), {"batch": "data", "mlp": None}),
    "fsdp": ((8,), ("fsdp",), {"batch": "fsdp", "in": "fsdp", "embed": "fsdp", "mlp": None}),
    "tp": ((8,), ("tensor",), {"out": "tensor", "vocab": "tensor", "mlp": "tensor"}),
    "fsdp_tp": (
        (2, 4),
        ("fsdp", "tensor"),
        {
            "batch": "fsdp",
            "in": "fsdp",
            "embed": "fsdp",
            "out": "tensor",
            "vocab": "tensor",
            "mlp": "tensor",
        },
    ),
}


class Block(jp.Module):
    norm1: nn.LayerNorm
    attn: nn.MultiheadAttention
    norm2: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear

    def __init__(self, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = nn.LayerNorm(DIM)
        # No projection biases: the key bias has an exactly zero gradient (softmax ignores a
        # shift shared by all keys), and Adam would blow its rounding noise up to full steps,
        # so two runs would differ for a reason that has nothing to do with sharding.
        self.attn = nn.MultiheadAttention(DIM, HEADS, bias=False, batch_first=True, key=k1)
        self.norm2 = nn.LayerNorm(DIM)
        # Megatron-style names: both MLP matrices split their hidden ("mlp") dimension.
        self.fc1 = jp.sharding.annotate(
            nn.Linear(DIM, HIDDEN, key=k2), {"weight": ("mlp", "embed"), "bias": ("mlp",)}
        )
        self.fc2 = jp.sharding.annotate(
            nn.Linear(HIDDEN, DIM, key=k3), {"weight": ("embed", "mlp")}
        )

    def __call__(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False, is_causal=True)[0]
        h = jax.nn.gelu(self.fc1(self.norm2(x)))
        h = jp.sharding.constrain(h, ("batch", "seq", "mlp"))
        return x + self.fc2(h)


class TinyLM(jp.Module):
    embed: nn.Embedding
    pos: jp.Parameter
    blocks: list
    norm: nn.LayerNorm
    head: nn.Linear

    def __init__(self, *, key):
        ke, kp, kb, kh = jax.random.split(key, 4)
        self.embed = nn.Embedding(VOCAB, DIM, key=ke)
        self.pos = jp.Parameter(0.02 * jax.random.normal(kp, (SEQ, DIM)), axes=(None, "embed"))
        self.blocks = [Block(key=kb)]
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, key=kh)

    def __call__(self, ids):
        x = jp.sharding.constrain(self.embed(ids) + self.pos.value, ("batch", "seq", "embed"))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def loss_fn(model, ids):
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def make_step(tx):
    def step(model, opt, ids):
        loss, grads = jp.value_and_grad(loss_fn)(model, ids)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    return step


def init_model(key):
    return TinyLM(key=key)


def init_both(key):
    """Model and optimizer in one jitted init: one compilation instead of two."""
    model = init_model(key)
    return model, jp.Optimizer(TX, model)


TX = optax.adam(3e-3)
KEY = jax.random.key(0)
IDS = jax.random.randint(jax.random.key(1), (BATCH, SEQ + 1), 0, VOCAB)


def reference():
    """Five steps on one device, no sharding anywhere."""
    model, opt = jax.jit(init_both)(KEY)
    initial = model
    step = jax.jit(make_step(TX))
    losses = []
    for _ in range(STEPS):
        model, opt, loss = step(model, opt, IDS)
        losses.append(float(loss))
    return initial, model, losses


def specs_of(tree):
    """``{name: str(PartitionSpec)}`` of every array (or sharding) in ``tree``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jp.path_name(p): str(getattr(x, "sharding", x).spec) for p, x in flat}


def check_carries(arrays, shardings, what):
    a = jax.tree_util.tree_flatten_with_path(arrays)[0]
    s = jax.tree.leaves(shardings)
    assert len(a) == len(s), what
    for (path, x), want in zip(a, s):
        assert x.sharding == want, f"{what} {jp.path_name(path)}: {x.sharding} != {want}"
        # Each device holds exactly its own shard, never the whole array (unless replicated).
        shard_shape = want.shard_shape(x.shape)
        assert all(sh.data.shape == shard_shape for sh in x.addressable_shards), what


def run(strategy, ref_init, ref_model, ref_losses):
    shape, names, rules = STRATEGIES[strategy]
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
    abstract, abstract_opt = jax.eval_shape(init_both, KEY)  # no memory anywhere
    model_sh = jp.sharding.named_shardings(abstract, mesh, rules)
    opt_sh = jp.sharding.named_shardings(abstract_opt, mesh, rules, model=abstract)
    # Initialised straight into the shards: no device ever holds a whole sharded array.
    model, opt = jax.jit(init_both, out_shardings=(model_sh, opt_sh))(KEY)
    check_carries(model, model_sh, f"{strategy} init")
    check_carries(opt, opt_sh, f"{strategy} optimizer init")
    init_diff = max(
        float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(ref_init))
    )

    batch_sh = NamedSharding(mesh, jp.sharding.spec(("batch", None), rules, mesh=mesh))
    ids = jax.device_put(IDS, batch_sh)
    replicated = NamedSharding(mesh, P())
    step = jax.jit(
        make_step(TX),
        in_shardings=(model_sh, opt_sh, batch_sh),
        out_shardings=(model_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )
    losses = []
    with jp.sharding.use(mesh, rules):  # constrain() inside the model sees the rules
        for _ in range(STEPS):
            model, opt, loss = step(model, opt, ids)
            losses.append(float(loss))
    check_carries(model, model_sh, f"{strategy} after training")
    check_carries(opt, opt_sh, f"{strategy} optimizer after training")
    ref = ref_model.state_dict()
    param_diff = {
        name: float(np.max(np.abs(np.asarray(value) - np.asarray(ref[name]))))
        for name, value in model.state_dict().items()
    }
    return {
        "losses": losses,
        "loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)),
        "param_diff": param_diff,
        "init_diff": init_diff,
        "params": specs_of(jp.split(model, jp.trainable)[0]),
        "opt": specs_of(opt),
    }


def plain_optax_state():
    """Plain optax over jp.split dicts: state follows the parameter too."""
    shape, names, rules = STRATEGIES["fsdp_tp"]
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
    model = jp.sharding.shard(init_model(KEY), mesh, rules)
    params, rest = jp.split(model, jp.trainable)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state_sh = jp.sharding.named_shardings(
        jax.eval_shape(tx.init, params), mesh, rules, model=model
    )
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    check_carries(state, state_sh, "plain optax state")
    params_sh, rest_sh = jp.split(jp.sharding.named_shardings(model, mesh, rules), jp.trainable)
    check_carries(params, params_sh, "split params")
    check_carries(rest, rest_sh, "split rest")
    return {"state": specs_of(state), "params": specs_of(params_sh)}


def errors():
    """Messages of the errors the parent checks (they need a mesh axis of size > 1)."""
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    model = init_model(KEY)
    out = {}

    def message(fn):
        try:
            fn()
        except (ValueError, TypeError) as e:
            return f"{type(e).__name__}: {e}"
        return "no error"

    odd = jp.at(model, "head").set(nn.Linear(DIM, 6, key=KEY))  # 6 rows over 4 devices
    tp = {"out": "tensor", "mlp": None}
    out["indivisible"] = message(lambda: jp.sharding.named_shardings(odd, mesh, tp))
    out["indivisible_abstract"] = message(
        lambda: jp.sharding.named_shardings(jax.eval_shape(lambda: odd), mesh, tp)
    )
    out["unknown"] = message(
        lambda: jp.sharding.named_shardings(model, mesh, {"batch": "fsdp"})
    )  # no "mlp"
    out["missing_mesh_axis"] = message(
        lambda: jp.sharding.named_shardings(model, mesh, {"mlp": "data", "embed": "fsdp"})
    )
    out["same_mesh_axis_twice"] = message(
        lambda: jp.sharding.named_shardings(model, mesh, {"mlp": "tensor", "embed": "tensor"})
    )
    out["optimizer_without_model"] = message(
        lambda: jp.sharding.named_shardings(jp.Optimizer(TX, model), mesh, {"mlp": None})
    )
    with jp.sharding.use(mesh, {"batch": "tensor"}):
        out["constrain_indivisible"] = message(
            lambda: jax.jit(lambda x: jp.sharding.constrain(x, ("batch", None)))(jnp.ones((6, 2)))
        )
        out["constrain_rank"] = message(lambda: jp.sharding.constrain(jnp.ones((4, 2)), ("batch",)))
    return out


def constrain_output():
    """constrain() inside jit lays the output out as the rules say, and nothing outside `use`."""
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    rules = {"batch": "fsdp", "mlp": "tensor"}

    def f(x):
        return jp.sharding.constrain(x * 2, ("batch", None, "mlp"))

    x = jnp.ones((4, 3, 8))
    with jp.sharding.use(mesh, rules):
        inside = jax.jit(f)(x)
    outside = jax.jit(f)(x)  # traced again (the mesh is in jit's cache key): no constraint
    return {
        "inside": str(inside.sharding.spec),
        "outside_devices": len(outside.sharding.device_set),
        "values_equal": bool(jnp.all(inside == outside)),
    }


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    ref_init, ref_model, ref_losses = reference()
    result = {"reference_losses": ref_losses}
    for strategy in STRATEGIES:
        result[strategy] = run(strategy, ref_init, ref_model, ref_losses)
    result["plain_optax"] = plain_optax_state()
    result["errors"] = errors()
    result["constrain"] = constrain_output()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
