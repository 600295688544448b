"""Multi-device half of tests/test_sharded.py; runs in its own process with 8 CPU devices.

The parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and
``JAX_PLATFORMS=cpu`` for this process only. Usage: ``python sharded_worker.py DIRECTORY``.
Asserts everything itself, prints a JSON summary and exits non-zero on the first failure.
"""

from __future__ import annotations

import contextlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jparam as jp


class Block(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __init__(self, key, n_in, n_out, dtype=jnp.float32):
        self.weight = jp.Parameter(jax.random.normal(key, (n_out, n_in), dtype))
        self.bias = jp.Parameter(jnp.arange(n_out, dtype=dtype))


class Model(jp.Module):
    embed: jp.Parameter
    blocks: list
    running_mean: jp.Buffer

    def __init__(self, key):
        k0, k1, k2 = jax.random.split(key, 3)
        self.embed = jp.Parameter(jax.random.normal(k0, (64, 16)))
        self.blocks = [Block(k1, 16, 32), Block(k2, 32, 8, jnp.bfloat16)]
        self.running_mean = jp.Buffer(jnp.linspace(0.0, 1.0, 32))


def place(model, sharding_for):
    """Puts each array on ``sharding_for(name, value)``."""
    return jp.map_variables(
        model, lambda n, v: v.replace(jax.device_put(v.value, sharding_for(n, v)))
    )


@contextlib.contextmanager
def host_gathers():
    """Records every array spanning several devices that is copied whole to the host.

    ``np.asarray``, ``jax.device_get`` and printing all go through ``ArrayImpl._value``.
    """
    cls = type(jnp.zeros(1))
    original = cls._value
    seen: list[tuple] = []

    def recording(self):
        if len(self.sharding.device_set) > 1:
            seen.append(tuple(self.shape))
        return original.fget(self)

    cls._value = property(recording)
    try:
        yield seen
    finally:
        cls._value = original


def check_restored(name, got, want, sharding):
    assert got.sharding == sharding, f"{name}: sharding {got.sharding}, wanted {sharding}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    per_device = sharding.shard_shape(got.shape)
    shards = got.addressable_shards
    assert len(shards) == 8, f"{name}: {len(shards)} shards"
    assert all(s.data.shape == per_device for s in shards), (
        f"{name}: shard shapes {[s.data.shape for s in shards]}, wanted {per_device}"
    )
    assert {s.device for s in shards} == set(sharding.device_set)


def main(directory: str) -> None:
    devices = jax.devices()
    assert len(devices) == 8 and devices[0].platform == "cpu", devices
    mesh = Mesh(np.array(devices), ("x",))
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("a", "b"))
    by_rows = NamedSharding(mesh, P("x"))
    model = place(Model(jax.random.key(0)), lambda n, v: by_rows)
    original = {k: np.asarray(v) for k, v in model.state_dict().items()}

    # -- save: nothing gathered --------------------------------------------------------------
    ckpt = f"{directory}/ckpt"
    with host_gathers() as gathered:
        info = jp.save_sharded(ckpt, model)
    assert not gathered, f"save_sharded copied whole arrays to the host: {gathered}"
    with host_gathers() as gathered:  # the detector itself works
        np.asarray(model.embed.value + 0)
    assert gathered == [(64, 16)], gathered
    for name, value in model.state_dict().items():
        assert value.sharding == by_rows and not value.is_fully_replicated, name
        assert len(value.addressable_shards) == 8, name
    # Each device's shard became its own chunk: orbax wrote shard by shard, never a gathered
    # whole array (whose write shape would be the full shape).
    meta = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).metadata(ckpt).item_metadata.tree
    write_shapes = {}
    for name, value in model.state_dict().items():
        md = meta[name]
        assert tuple(md.shape) == value.shape, name
        write_shapes[name] = tuple(md.storage.write_shape)
        assert write_shapes[name] == by_rows.shard_shape(value.shape), (name, md.storage)
        assert tuple(md.sharding.partition_spec) == ("x",), (name, md.sharding)
    assert info.bytes == sum(a.nbytes for a in original.values())

    results = {"write_shapes": {k: list(v) for k, v in write_shapes.items()}}

    # -- restore into another mesh and axis, from an abstract model ---------------------------
    def columns(name, value):
        return NamedSharding(mesh2, P(None, "b") if value.ndim == 2 else P("b"))

    wanted = {n: columns(n, v) for n, v in model.state_dict().items()}
    abstract = jax.eval_shape(lambda: Model(jax.random.key(1)))
    assert isinstance(abstract.embed.value, jax.ShapeDtypeStruct)
    with host_gathers() as gathered:
        restored = jp.load_sharded(ckpt, abstract, shardings=wanted)
    assert not gathered, f"load_sharded copied whole arrays to the host: {gathered}"
    for name, got in restored.state_dict().items():
        check_restored(name, got, original[name], wanted[name])
    results["other_mesh"] = {
        n: list(v.addressable_shards[0].data.shape) for n, v in restored.state_dict().items()
    }

    # -- restore fully replicated (a single Sharding for every name) --------------------------
    replicated = NamedSharding(mesh2, P())
    restored = jp.load_sharded(ckpt, abstract, replicated)
    for name, got in restored.state_dict().items():
        check_restored(name, got, original[name], replicated)
        assert got.is_fully_replicated, name

    # -- restore into a concrete model's own shardings (the default) --------------------------
    like = place(Model(jax.random.key(2)), lambda n, v: NamedSharding(mesh2, P("a")))
    restored = jp.load_sharded(ckpt, like)
    for name, got in restored.state_dict().items():
        check_restored(name, got, original[name], NamedSharding(mesh2, P("a")))
    assert type(restored.blocks[1].bias) is jp.Parameter
    assert type(restored.running_mean) is jp.Buffer

    # -- abstract leaves carrying a sharding are targets too ----------------------------------
    abstract_sharded = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh2, P("b"))),
        abstract,
    )
    restored = jp.load_sharded(ckpt, abstract_sharded)
    for name, got in restored.state_dict().items():
        check_restored(name, got, original[name], NamedSharding(mesh2, P("b")))

    # -- overwrite: the new values replace the old ones --------------------------------------
    doubled = jax.tree_util.tree_map(lambda a: a * 2, model)
    jp.save_sharded(ckpt, doubled, overwrite=True)
    restored = jp.load_sharded(ckpt, abstract, replicated)
    np.testing.assert_array_equal(
        np.asarray(restored.embed.value), original["embed"] * 2, err_msg="overwrite"
    )

    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
