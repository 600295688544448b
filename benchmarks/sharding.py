"""Per-device memory of a sharded model: parameters and Adam state under DP, FSDP and TP.

The transformer of ``examples/train_sharded.py`` is initialised straight into its shards
(``jax.jit(init, out_shardings=jp.sharding.named_shardings(...))``) on a mesh of 8 devices
shaped by each strategy, with one set of logical-axis rules for all of them. Bytes are read from
the arrays themselves (``addressable_shards``: what each device really holds, not what the rules
promise) and the largest device is reported. The last column is XLA's own estimate of the temporary
memory one compiled training step needs per device besides its inputs and outputs
(gradients, activations, gathered weights), and the step's total: inputs, outputs not written
in place of a donated input, and temporaries, from ``compiled.memory_analysis()``.

Data parallelism holds everything on every device; FSDP should hold about 1/8 of parameters
and Adam state (the small norm scales and biases that are not split stay whole); tensor
parallelism splits the weights along their output dimension.

    python -m benchmarks.sharding                       # dim 256, depth 4: ~5.3M parameters
    python -m benchmarks.sharding --dim 16 --depth 1 --no-step    # seconds: a smoke test

It needs 8 devices: without ``XLA_FLAGS`` set, it simulates them on the CPU.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules:  # before JAX picks its devices
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import json

import jax
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jparam as jp
from benchmarks._timing import machine
from examples.train_sharded import LM, RULES, STRATEGIES, make_mesh, train_step

DEVICES = 8


def per_device_bytes(tree) -> int:
    """The most bytes of ``tree``'s arrays that any one device holds."""
    held: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values())


def measure(strategy: str, args: argparse.Namespace) -> dict:
    mesh = make_mesh(strategy, args.tensor)
    tx = optax.adam(1e-3)

    def init(key):
        model = LM(args.vocab, args.dim, args.depth, args.heads, args.seq, key=key)
        return model, jp.Optimizer(tx, model)

    key = jax.random.key(0)
    abstract_model, abstract_opt = jax.eval_shape(init, key)
    model_sh = jp.sharding.named_shardings(abstract_model, mesh, RULES)
    opt_sh = jp.sharding.named_shardings(abstract_opt, mesh, RULES, model=abstract_model)
    model, opt = jax.jit(init, out_shardings=(model_sh, opt_sh))(key)
    stats = None
    if not args.no_step:
        batch_sh = NamedSharding(mesh, jp.sharding.spec(("batch", None), RULES, mesh=mesh))
        step = jax.jit(
            train_step,
            in_shardings=(model_sh, opt_sh, batch_sh),
            out_shardings=(model_sh, opt_sh, NamedSharding(mesh, P())),
            donate_argnums=(0, 1),  # as a training loop does: updated in place
        )
        ids = jax.ShapeDtypeStruct((args.batch, args.seq + 1), "int32")
        with jp.sharding.use(mesh, RULES):
            stats = step.lower(abstract_model, abstract_opt, ids).compile().memory_analysis()
    return {
        "mesh": tuple(mesh.shape.values()),
        "params": per_device_bytes(model),
        "adam": per_device_bytes(opt),
        "total_params": sum(leaf.nbytes for leaf in jax.tree.leaves(model)),
        "step_temp": None if stats is None else stats.temp_size_in_bytes,
        # Inputs, outputs not written in place of an input, and temporaries: live at the peak.
        "step_total": None
        if stats is None
        else stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes,
    }


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def report(results: dict[str, dict], args: argparse.Namespace) -> str:
    n_params = results["dp"]["total_params"] // 4
    title = (
        f"Per-device memory: transformer dim {args.dim}, depth {args.depth}, vocab {args.vocab} "
        f"({n_params / 1e6:.2f}M float32 parameters), {DEVICES} devices, adam"
    )
    lines = [
        f"### {title}",
        "",
        "| strategy | mesh (data, fsdp, tensor) | parameters / device | Adam state / device "
        "| both, vs DP | step temporaries / device | step total / device |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = results["dp"]["params"] + results["dp"]["adam"]
    for name, r in results.items():
        both = r["params"] + r["adam"]
        temp, total = (
            ("n/a", "n/a")
            if r["step_temp"] is None
            else map(_mb, (r["step_temp"], r["step_total"]))
        )
        lines.append(
            f"| {name} | {r['mesh']} | {_mb(r['params'])} | {_mb(r['adam'])} "
            f"| {both / base:.3f}x | {temp} | {total} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tensor", type=int, default=4, help="tensor-parallel size of fsdp_tp")
    p.add_argument("--no-step", action="store_true", help="skip compiling the training step")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if jax.device_count() != DEVICES:
        raise SystemExit(
            f"needs {DEVICES} devices, found {jax.device_count()}; run it as "
            "`python -m benchmarks.sharding` or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}"
        )
    results = {strategy: measure(strategy, args) for strategy in STRATEGIES}
    print(report(results, args))
    print(f"\n{machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
