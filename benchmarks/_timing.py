"""Interleaved timing: every contender runs once per round, medians over rounds, ratios to a floor.

Shared machines are noisy; interleaving spreads the noise over all contenders alike, and the
median discards the rounds a neighbour spoiled.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import jax


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, inner: int
) -> dict[str, float]:
    """Median seconds per call of each contender over ``rounds`` interleaved rounds.

    Each contender is a zero-argument callable doing one step and returning something to block
    on; a round times ``inner`` back-to-back calls and blocks once at the end, so asynchronous
    dispatch is measured as a user's training loop sees it.
    """
    for fn in contenders.values():  # compile and warm up
        jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            out = None
            for _ in range(inner):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def mlp_step_parser(description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that time a jitted step of the small tanh MLP."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--inner", type=int, default=100)
    parser.add_argument("--json", default=None)
    return parser


def machine() -> str:
    """The processor (or accelerator) and versions, for BENCHMARKS.md."""
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{dev.platform}: {getattr(dev, 'device_kind', '')} | CPU: {cpu} | jax {jax.__version__}"


def report(title: str, rows: list[tuple[str, float]], floor: str, json_path: str | None) -> str:
    """A Markdown table of per-call times and ratios to ``floor``; optionally writes JSON."""
    base = dict(rows)[floor]
    header = "| contender | time per call | ratio to floor |"
    lines = [f"### {title}", "", header, "|---|---:|---:|"]
    for name, t in rows:
        lines.append(f"| {name} | {t * 1e6:.1f} µs | {t / base:.2f}x |")
    text = "\n".join(lines)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"title": title, "machine": machine(), "seconds": dict(rows)}, f, indent=2)
    return text
