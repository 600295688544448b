"""Runs every benchmark suite (or the ones named) and prints their tables.

    python -m benchmarks                                  # every suite, full size
    python -m benchmarks compile_time memory --json all.json
    python -m benchmarks --tiny                           # every suite in seconds: a smoke run

Each suite is also a module of its own (``python -m benchmarks.memory --help``); this runner
calls them with the configurations that BENCHMARKS.md records and, with ``--json``, gathers
their JSON into one file keyed by suite. ``vit_throughput`` runs ViT-B/16 where JAX sees a GPU
and its tiny configuration otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from types import ModuleType

import jax

from benchmarks import (
    amp_logging,
    checkpoint,
    compile_time,
    load_speed,
    memory,
    step_overhead,
    tree_walks,
    vit_throughput,
)
from benchmarks._timing import machine

# suite -> (module, argument lists for a full run, argument lists for --tiny). A module given by
# name runs in a process of its own: `sharding` needs 8 (simulated) devices from JAX's start.
SUITES: dict[str, tuple[ModuleType | str, list[list[str]], list[list[str]]]] = {
    "step_overhead": (
        step_overhead,
        [["--depth", "4"], ["--depth", "32", "--rounds", "21"]],
        [["--depth", "2", "--rounds", "1", "--inner", "2"]],
    ),
    "tree_walks": (
        tree_walks,
        [["--params", "100", "--inner", "100"], ["--params", "1000"]],
        [["--params", "20", "--rounds", "1", "--inner", "1"]],
    ),
    "compile_time": (compile_time, [[]], [["--depths", "1", "--rounds", "1", "--inner", "1"]]),
    "memory": (memory, [[]], [["--layers", "10", "--width", "8", "--frozen", "0", "90"]]),
    "vit_throughput": (
        vit_throughput,
        [[]],
        [["--tiny", "--depth", "1", "--rounds", "1", "--inner", "1", "--skip", "torch.compile"]],
    ),
    "checkpoint": (checkpoint, [["--rounds", "16"]], [["--mb", "4", "--rounds", "1"]]),
    "amp_logging": (amp_logging, [[]], [["--depth", "2", "--rounds", "1", "--inner", "2"]]),
    "load_speed": (
        load_speed,
        [[]],
        [["--vocab", "64", "--dim", "16", "--layers", "1", "--ctx", "8", "--rounds", "1"]],
    ),
    "sharding": (
        "benchmarks.sharding",
        [[]],
        [
            [
                "--dim",
                "32",
                "--depth",
                "1",
                "--heads",
                "2",
                "--vocab",
                "64",
                "--seq",
                "8",
                "--no-step",
            ]
        ],
    ),
}


def run(names: list[str], tiny: bool, json_path: str | None = None) -> dict[str, list[dict]]:
    """Runs the suites ``names`` in order, printing each table; returns their JSON by suite."""
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="jparam-bench-") as tmp:
        for name in names:
            module, full, small = SUITES[name]
            configs = small if tiny else full
            if name == "vit_throughput" and not tiny and jax.default_backend() == "cpu":
                print("vit_throughput: no accelerator, running the --tiny configuration\n")
                configs = [["--tiny"]]
            results[name] = []
            for i, argv in enumerate(configs):
                out = os.path.join(tmp, f"{name}-{i}.json")
                if name == "checkpoint":
                    argv = [*argv, "--dir", tmp]
                print(f"$ python -m benchmarks.{name} {' '.join(argv)}".rstrip())
                if isinstance(module, str):
                    cmd = [sys.executable, "-m", module, *argv, "--json", out]
                    subprocess.run(cmd, check=True)
                else:
                    module.main([*argv, "--json", out])
                print()
                with open(out) as f:
                    results[name].append({"argv": argv, **json.load(f)})
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": machine(), "suites": results}, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("suites", nargs="*", metavar="suite", help=", ".join(SUITES))
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (seconds)")
    parser.add_argument("--json", default=None, help="write every suite's results here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    # vit_throughput shares one accelerator between JAX and PyTorch: no preallocation.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    run(args.suites or list(SUITES), args.tiny, args.json)


if __name__ == "__main__":
    main()
