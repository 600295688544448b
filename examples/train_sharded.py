"""Train a small transformer language model sharded over every device there is.

The model code never changes: its Parameters name their dimensions (``axes`` metadata), one
set of rules maps those names to the axes of a ``("data", "fsdp", "tensor")`` device mesh, and
``--strategy`` only decides the mesh's shape. A mesh axis of size 1 splits nothing, so

- ``dp``: ``(n, 1, 1)``: the batch is split, every device holds the whole model;
- ``fsdp``: ``(1, n, 1)``: the batch *and* the weights and their Adam state are split
  (ZeRO-3 / fully sharded data parallel): each device holds about ``1/n`` of them;
- ``tp``: ``(1, 1, n)``: weights are split along their output / hidden dimension (tensor
  parallel, Megatron-style for the MLP), the batch is not;
- ``fsdp_tp``: ``(1, n / t, t)`` with ``t = --tensor``: both at once.

JAX's SPMD partitioner inserts the communication: there is no jparam communication layer.
The model is initialised straight into its shards (``jax.jit(init, out_shardings=...)``), so a
model larger than one device is never whole anywhere.

One process, all local devices (8 simulated CPU devices here)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/train_sharded.py \\
        --strategy fsdp_tp

Several processes on one machine (two CPU processes with 4 devices each, gloo collectives)::

    export XLA_FLAGS=--xla_force_host_platform_device_count=4
    python examples/train_sharded.py --strategy fsdp --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 0 &
    python examples/train_sharded.py --strategy fsdp --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 1

A cluster: run the same command on every host; ``jax.distributed.initialize()`` reads the
coordinator, process count and rank from the environment (SLURM, Open MPI, Cloud TPU, GKE)::

    srun --nodes 4 --ntasks-per-node 1 \\
        python examples/train_sharded.py --strategy fsdp --distributed
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jparam as jp
from jparam import nn

# One rule set for every strategy: the mesh's shape decides which of these split anything.
# "in"/"out"/"vocab"/"embed" are the names jparam.nn layers give their weights; "mlp" is
# this model's own (see Block).
RULES = jp.sharding.rules(
    {
        "batch": ("data", "fsdp"),  # the batch is split over both data-parallel axes
        "embed": "fsdp",  # model width: FSDP splits weights along it
        "in": "fsdp",
        "out": "tensor",  # tensor parallelism splits outputs and the MLP's hidden width
        "mlp": "tensor",
        "vocab": "tensor",
    }
)
STRATEGIES = ("dp", "fsdp", "tp", "fsdp_tp")


class Block(jp.Module):
    """Pre-norm causal self-attention and MLP."""

    norm1: nn.LayerNorm
    attn: nn.MultiheadAttention
    norm2: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear

    def __init__(self, dim: int, heads: int, *, key: jax.Array):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, key=k1)
        self.norm2 = nn.LayerNorm(dim)
        # Megatron's MLP: the hidden ("mlp") dimension of both matrices is split, so under
        # tensor parallelism the hidden activations never leave their device.
        self.fc1 = jp.sharding.annotate(
            nn.Linear(dim, 4 * dim, key=k2), {"weight": ("mlp", "embed"), "bias": ("mlp",)}
        )
        self.fc2 = jp.sharding.annotate(
            nn.Linear(4 * dim, dim, key=k3), {"weight": ("embed", "mlp"), "bias": ("embed",)}
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False, is_causal=True)[0]
        h = jax.nn.gelu(self.fc1(self.norm2(x)))
        h = jp.sharding.constrain(h, ("batch", "seq", "mlp"))
        return x + self.fc2(h)


class LM(jp.Module):
    embed: nn.Embedding
    pos: jp.Parameter
    blocks: list
    norm: nn.LayerNorm
    head: nn.Linear

    def __init__(self, vocab: int, dim: int, depth: int, heads: int, seq: int, *, key):
        ke, kp, kb, kh = jax.random.split(key, 4)
        self.embed = nn.Embedding(vocab, dim, key=ke)
        self.pos = jp.Parameter(0.02 * jax.random.normal(kp, (seq, dim)), axes=(None, "embed"))
        self.blocks = [Block(dim, heads, key=k) for k in jax.random.split(kb, depth)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, key=kh)  # ("out", "in") = (vocab rows, width)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids) + self.pos.value[: ids.shape[1]]
        x = jp.sharding.constrain(x, ("batch", "seq", "embed"))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def loss_fn(model: LM, ids: jax.Array) -> jax.Array:
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def train_step(model, opt, ids):
    loss, grads = jp.value_and_grad(loss_fn)(model, ids)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def make_mesh(strategy: str, tensor: int) -> jax.sharding.Mesh:
    """The ``("data", "fsdp", "tensor")`` mesh of every device, shaped by the strategy."""
    n = jax.device_count()
    if strategy == "fsdp_tp" and n % tensor:
        raise SystemExit(f"--tensor {tensor} does not divide the {n} devices")
    shape = {
        "dp": (n, 1, 1),
        "fsdp": (1, n, 1),
        "tp": (1, 1, n),
        "fsdp_tp": (1, n // tensor, tensor),
    }[strategy]
    return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def batches(vocab: int, batch: int, seq: int, seed: int = 0):
    """Sequences that follow a fixed random successor table: learnable, never exhausted.

    Every process computes the same global batch; each device then takes its own rows (see
    `to_global`). A real input pipeline would read only this process's rows and use
    ``jax.make_array_from_process_local_data`` instead.
    """
    rng = np.random.default_rng(seed)
    successor = rng.permutation(vocab)
    while True:
        ids = np.empty((batch, seq + 1), np.int32)
        ids[:, 0] = rng.integers(0, vocab, batch)
        for t in range(seq):
            ids[:, t + 1] = successor[ids[:, t]]
        yield ids


def to_global(data: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One global array from the same host data on every process; each device gets its part."""
    return jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])


def bytes_on_first_device(tree: Any) -> int:
    """Bytes of ``tree``'s arrays held by this process's first device."""
    device = jax.local_devices()[0]
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", choices=STRATEGIES, default="fsdp")
    p.add_argument("--tensor", type=int, default=4, help="tensor-parallel size for fsdp_tp")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32, help="global batch (sequences)")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    p.add_argument("--coordinator", help="host:port of process 0 (multi-process by hand)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return p.parse_args(argv)


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the other processes (before anything touches a device), or does nothing."""
    if not (args.distributed or args.coordinator):
        return
    # CPU processes all-reduce through gloo; GPU and TPU backends ignore this option.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator:
        jax.distributed.initialize(
            args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    else:
        jax.distributed.initialize()  # the cluster's environment says who is who


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    initialize_distributed(args)
    mesh = make_mesh(args.strategy, args.tensor)
    tx = optax.adamw(args.lr, weight_decay=0.01)

    def init(key):
        model = LM(args.vocab, args.dim, args.depth, args.heads, args.seq, key=key)
        return model, jp.Optimizer(tx, model)

    key = jax.random.key(args.seed)
    abstract_model, abstract_opt = jax.eval_shape(init, key)  # shapes only, no memory
    model_sh = jp.sharding.named_shardings(abstract_model, mesh, RULES)
    opt_sh = jp.sharding.named_shardings(abstract_opt, mesh, RULES, model=abstract_model)
    model, opt = jax.jit(init, out_shardings=(model_sh, opt_sh))(key)

    batch_sh = NamedSharding(mesh, jp.sharding.spec(("batch", None), RULES, mesh=mesh))
    step = jax.jit(
        train_step,
        in_shardings=(model_sh, opt_sh, batch_sh),
        out_shardings=(model_sh, opt_sh, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
    data = batches(args.vocab, args.batch, args.seq, args.seed)
    losses = []
    with jp.sharding.use(mesh, RULES):  # the constrain() calls in the model see the rules
        for _ in range(args.steps):
            model, opt, loss = step(model, opt, to_global(next(data), batch_sh))
            # At most two steps in flight: one runs while the next is queued, so dispatch still
            # overlaps compute but queued steps cannot pile up. (XLA's simulated CPU devices
            # share one thread pool and can deadlock with many collective steps queued.)
            if losses:
                losses[-1].block_until_ready()
            losses.append(loss)
    losses = [float(x) for x in losses]

    result = {
        "strategy": args.strategy,
        "mesh": dict(mesh.shape),
        "processes": jax.process_count(),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "param_bytes": sum(math.prod(p.shape) * p.dtype.itemsize for p in model.parameters()),
        "param_bytes_per_device": bytes_on_first_device(model),
        "opt_bytes_per_device": bytes_on_first_device(opt),
        "specs": {n: str(s.spec) for n, s in model_sh.state_dict().items()},
    }
    if args.json:
        print(json.dumps(result), flush=True)
    elif jax.process_index() == 0:
        print(
            f"{args.strategy} on mesh {result['mesh']} ({jax.device_count()} devices, "
            f"{jax.process_count()} process(es)): loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
            f"per device: {result['param_bytes_per_device'] / 1024:.0f} KiB of "
            f"{result['param_bytes'] / 1024:.0f} KiB parameters, "
            f"{result['opt_bytes_per_device'] / 1024:.0f} KiB Adam state"
        )
    if args.distributed or args.coordinator:
        jax.distributed.shutdown()
    return result


if __name__ == "__main__":
    main()
