"""One process of the two-process data-parallel test in tests/test_sharding.py.

Usage: ``python distributed_worker.py PROCESS_ID PORT``. Each process has one CPU device; they
meet through ``jax.distributed.initialize`` on localhost and all-reduce with gloo. The model is
replicated, each process feeds its half of the batch, one jitted adam step runs over the
two-device mesh, and the process prints a JSON line with the loss and its copy of the
parameters. If this jaxlib cannot run CPU collectives across processes it prints a line
starting with ``SKIP:`` and the reason instead.

The parent imports `build`, `BATCH` and `step_fn` to compute the single-process reference.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp
from jparam import nn

TX = optax.adam(1e-2)


def build(key: jax.Array) -> nn.Sequential:
    k1, k2 = jax.random.split(key)
    return nn.Sequential(nn.Linear(4, 8, key=k1), nn.Tanh(), nn.Linear(8, 2, key=k2))


def batch() -> tuple[np.ndarray, np.ndarray]:
    """The global batch of 8 examples (each process feeds half)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)


def step_fn(model, opt, x, y):
    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    loss, grads = jp.value_and_grad(loss_fn)(model)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def main(process_id: int, port: int) -> None:
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception as e:  # an older jaxlib without the option
        print(f"SKIP: this jaxlib has no gloo CPU collectives ({e})", flush=True)
        return
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
    try:
        run(process_id)
    finally:
        jax.distributed.shutdown()


def run(process_id: int) -> None:
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
    rules = {"batch": "data"}
    init = lambda k: build(k)
    abstract = jax.eval_shape(init, jax.random.key(0))
    model_sh = jp.sharding.named_shardings(abstract, mesh, rules)
    model = jax.jit(init, out_shardings=model_sh)(jax.random.key(0))
    opt_init = lambda m: jp.Optimizer(TX, m)
    opt_sh = jp.sharding.named_shardings(
        jax.eval_shape(opt_init, abstract), mesh, rules, model=abstract
    )
    opt = jax.jit(opt_init, out_shardings=opt_sh)(model)

    x, y = batch()
    half = slice(4 * process_id, 4 * process_id + 4)
    data_sh = NamedSharding(mesh, jp.sharding.spec(("batch", None), rules, mesh=mesh))
    gx = jax.make_array_from_process_local_data(data_sh, x[half])
    gy = jax.make_array_from_process_local_data(data_sh, y[half])
    step = jax.jit(
        step_fn,
        in_shardings=(model_sh, opt_sh, data_sh, data_sh),
        out_shardings=(model_sh, opt_sh, NamedSharding(mesh, P())),
    )
    model, opt, loss = step(model, opt, gx, gy)
    # Replicated: this process's own copy is the whole array.
    params = {n: np.asarray(v.addressable_data(0)).tolist() for n, v in model.state_dict().items()}
    local = float(np.asarray(loss.addressable_data(0)))
    print(json.dumps({"process": process_id, "loss": local, "params": params}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
