"""Compile time of a transformer training step as depth grows: unrolled layers against scan.

The network is ``benchmarks/_vit.py``'s ViT at a small width (compile time depends on the
number of operations, not their size) trained with AdamW under bfloat16 compute. Each
contender writes it twice, as its users would: with an unrolled list of blocks, and with the
library's scan-over-layers route:

- raw JAX: a flat dict of arrays, unrolled (the floor), and ``jax.lax.scan`` over stacked arrays;
- jparam: a tuple of blocks, and ``nn.Stacked.from_layers`` (one block, a leading layer axis);
- Flax NNX: ``nnx.List`` of blocks, and ``nnx.vmap`` init + ``nnx.scan`` (Flax's recipe);
- Equinox: a tuple of blocks, and ``eqx.filter_vmap`` init + ``jax.lax.scan`` over the
  ``eqx.partition``-ed arrays (Equinox's recipe).

"Time to first step" is what a user waits for: tracing, lowering, XLA compilation and one
execution of a freshly jitted step, with ``jax.clear_caches()`` before each so no contender
reuses another's traces. The steady step time after it shows what scan costs at run time.
Rounds are interleaved (every contender once per round), figures are medians.

    python -m benchmarks.compile_time                           # depths 6 24 48, 5 rounds
    python -m benchmarks.compile_time --depths 1 --rounds 1     # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import _vit
from benchmarks._timing import machine

FLOOR = "raw JAX: unrolled (floor)"
CONTENDERS: dict[str, tuple[str, bool]] = {
    FLOOR: ("raw", False),
    "raw JAX: lax.scan": ("raw", True),
    "jparam: unrolled": ("jparam", False),
    "jparam: nn.Stacked": ("jparam", True),
    "flax nnx: unrolled": ("nnx", False),
    "flax nnx: nnx.scan": ("nnx", True),
    "equinox: unrolled": ("equinox", False),
    "equinox: lax.scan": ("equinox", True),
}
CONFIG = _vit.Config(image_size=32, patch_size=8, dim=128, heads=4, num_classes=10)


def measure(
    kind: str, scan: bool, cfg: _vit.Config, weights: dict, data: tuple, inner: int
) -> tuple[float, float, float]:
    """``(seconds to first step, seconds per later step, loss after the first step)``."""
    jax.clear_caches()
    step, state = _vit.JAX_BUILDERS[kind](cfg, weights, scan, jnp.bfloat16, "xla")
    images, labels = (jnp.asarray(a) for a in data)
    jax.block_until_ready((state, images, labels))
    start = time.perf_counter()
    state, loss = step(state, images, labels)
    loss = float(jax.block_until_ready(loss))
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = None
    for _ in range(inner):
        state, out = step(state, images, labels)
    jax.block_until_ready(out)
    return first, (time.perf_counter() - start) / inner, loss


def run(
    depths: list[int],
    rounds: int,
    inner: int,
    batch: int,
    skip: tuple[str, ...] = (),
    json_path: str | None = None,
) -> str:
    contenders, notes = {}, []
    for name, (kind, scan) in CONTENDERS.items():
        if any(s.lower() in name.lower() for s in skip):
            notes.append(f"{name} (--skip)")
            continue
        lacking = _vit.missing_package(kind)
        if lacking:
            notes.append(f"{name} ({lacking} not installed)")
            continue
        contenders[name] = (kind, scan)
    first: dict[str, dict[int, float]] = {n: {} for n in contenders}
    steady: dict[str, dict[int, float]] = {n: {} for n in contenders}
    losses: dict[str, dict[int, float]] = {n: {} for n in contenders}
    for depth in depths:
        cfg = dataclasses.replace(CONFIG, depth=depth)
        weights = _vit.init_weights(cfg)
        data = _vit.batch(cfg, batch)
        samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in contenders}
        for _ in range(rounds):
            for name, (kind, scan) in contenders.items():
                samples[name].append(measure(kind, scan, cfg, weights, data, inner))
        for name, s in samples.items():
            first[name][depth] = statistics.median(x[0] for x in s)
            steady[name][depth] = statistics.median(x[1] for x in s)
            losses[name][depth] = s[0][2]

    title = (
        f"Compile time: ViT train step (width {CONFIG.dim}, {CONFIG.tokens} tokens, batch "
        f"{batch}, bfloat16, adamw), time to first step by depth"
    )
    last = depths[-1]
    header = " | ".join(f"{d} layers" for d in depths)
    lines = [
        f"### {title}",
        "",
        f"| contender | {header} | step time at {last} layers |",
        "|---|" + "---:|" * (len(depths) + 1),
    ]
    for name in contenders:
        cells = []
        for d in depths:
            ratio = f" ({first[name][d] / first[FLOOR][d]:.2f}x)" if FLOOR in first else ""
            cells.append(f"{first[name][d]:.2f} s{ratio}")
        ratio = f" ({steady[name][last] / steady[FLOOR][last]:.2f}x)" if FLOOR in steady else ""
        cells.append(f"{steady[name][last] * 1e3:.2f} ms{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{machine()}; {rounds} interleaved rounds, medians; ratios to the floor in brackets; "
        f"step time over {inner} steps after the first.",
    ]
    if notes:
        lines.append("skipped: " + ", ".join(notes))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "title": title,
                    "machine": machine(),
                    "config": dataclasses.asdict(CONFIG),
                    "batch": batch,
                    "first_step_seconds": first,
                    "step_seconds": steady,
                    "loss_after_first_step": losses,
                    "skipped": notes,
                },
                f,
                indent=2,
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 24, 48])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5, help="steady steps timed per round")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="drop contenders by name")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(run(args.depths, args.rounds, args.inner, args.batch, tuple(args.skip), args.json))


if __name__ == "__main__":
    main()
