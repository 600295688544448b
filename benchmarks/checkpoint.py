"""Checkpoint throughput: jp.save / jp.load against raw safetensors and plain NumPy files.

A model of ``--mb`` megabytes (a few large float32 Parameters) is saved and loaded by each
contender in interleaved rounds; the table gives median MB/s and the ratio to raw safetensors.
Every contender starts from the same JAX arrays and ends with JAX arrays:

- ``jp.save`` / ``jp.load(like=model)``: state_dict names, an xxHash3 checksum per tensor,
  atomic write (temporary file, fsync, rename), all-at-once validation on load;
- ``safetensors`` (the floor): ``safetensors.numpy.save_file({name: np.asarray(a)})`` /
  ``safetensors.flax.load_file``; it leaves the bytes in the page cache, so a second row wraps
  it in the write protocol jp.save follows (temporary file, fsync, atomic rename, fsync of the
  directory): what durability alone costs, and the fair floor for jparam's own overhead;
- ``numpy``: one ``np.save`` per array into a directory / ``np.load`` + ``jnp.asarray``.

Files go to a fresh temporary directory (``--dir`` picks where; keep it on the disk you care
about). ``os.sync()`` runs (untimed) after every save, so no contender pays for the writeback
another one left behind. Loads read files that were just written: from the page cache.

    python -m benchmarks.checkpoint                     # 500 MB, 5 rounds
    python -m benchmarks.checkpoint --mb 4 --rounds 1   # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jparam as jp
from benchmarks._timing import machine

FLOOR = "safetensors (floor)"
DURABLE = "safetensors + fsync + atomic rename"
ROW_WIDTH = 1024  # float32 columns per Parameter row


class Layer(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter


class Model(jp.Module):
    layers: list


def build(mb: float, n_layers: int) -> Model:
    """``n_layers`` float32 weights of ``mb / n_layers`` MB each, plus small biases."""
    rows = max(1, round(mb * 2**20 / n_layers / 4 / ROW_WIDTH))
    keys = jax.random.split(jax.random.key(0), n_layers)
    layers = [
        Layer(
            jp.Parameter(jax.random.normal(k, (rows, ROW_WIDTH), jnp.float32)),
            jp.Parameter(jnp.zeros(rows, jnp.float32)),
        )
        for k in keys
    ]
    return jax.block_until_ready(Model(layers))


def _contenders(
    model: Model, root: str
) -> tuple[dict[str, tuple[Callable, Callable | None]], list[str]]:
    """``{name: (save, load)}`` (each load returns JAX arrays) and the paths they write."""
    from safetensors.flax import load_file as st_load
    from safetensors.numpy import save_file as st_save

    state = model.state_dict()
    jp_path = os.path.join(root, "jparam.safetensors")
    st_path = os.path.join(root, "raw.safetensors")
    st_sync_path = os.path.join(root, "raw-fsync.safetensors")
    np_dir = os.path.join(root, "npy")

    def np_save():
        os.makedirs(np_dir, exist_ok=True)
        for name, value in state.items():
            np.save(os.path.join(np_dir, name + ".npy"), np.asarray(value))

    def np_load():
        return {name: jnp.asarray(np.load(os.path.join(np_dir, name + ".npy"))) for name in state}

    def st_save_durable():
        # The write protocol the checkpoint issue asks for, around plain safetensors: a
        # temporary file, fsync, atomic rename, fsync of the directory.
        tmp = st_sync_path + ".tmp"
        st_save({k: np.asarray(v) for k, v in state.items()}, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, st_sync_path)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return {
        FLOOR: (
            lambda: st_save({k: np.asarray(v) for k, v in state.items()}, st_path),
            lambda: st_load(st_path),
        ),
        DURABLE: (st_save_durable, None),
        "jparam: jp.save / jp.load": (
            lambda: jp.save(jp_path, model, progress=False),
            lambda: jp.load(jp_path, model, progress=False),
        ),
        "numpy: np.save / np.load per array": (np_save, np_load),
    }, [jp_path, st_path, st_sync_path, np_dir]


def _remove(paths: list[str]) -> None:
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)


def run(mb: float, rounds: int, n_layers: int, directory: str | None, json_path=None) -> str:
    model = build(mb, n_layers)
    nbytes = sum(v.nbytes for v in model.state_dict().values())
    root = tempfile.mkdtemp(prefix="jparam-bench-", dir=directory)
    try:
        contenders, paths = _contenders(model, root)
        save_s: dict[str, list[float]] = {n: [] for n in contenders}
        load_s: dict[str, list[float]] = {n: [] for n, (_, ld) in contenders.items() if ld}
        for save, load in contenders.values():  # warm up imports and code paths
            save()
            if load is not None:
                jax.block_until_ready(load())
        names = list(contenders)
        for r in range(rounds):
            _remove(paths)  # every save writes new files, as a first save would
            os.sync()
            # The order rotates every round: whoever goes first or right after another's
            # allocations is not always the same contender.
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                save = contenders[name][0]
                start = time.perf_counter()
                save()
                save_s[name].append(time.perf_counter() - start)
                os.sync()  # untimed: leave no writeback for the next contender
            for name in order:
                load = contenders[name][1]
                if load is None:
                    continue
                start = time.perf_counter()
                out = load()
                jax.block_until_ready(out)
                load_s[name].append(time.perf_counter() - start)
                del out
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save_t = {n: statistics.median(s) for n, s in save_s.items()}
    load_t = {n: statistics.median(s) for n, s in load_s.items()}
    mbytes = nbytes / 2**20

    lines = [
        f"### Checkpoint throughput: {mbytes:.0f} MB in {2 * n_layers} float32 arrays",
        "",
        "| contender | save MB/s | save vs safetensors | load MB/s | load vs safetensors |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in contenders:
        load = (
            f"{mbytes / load_t[name]:.0f} | {load_t[FLOOR] / load_t[name]:.2f}x"
            if name in load_t
            else "— | —"
        )
        lines.append(
            f"| {name} | {mbytes / save_t[name]:.0f} | {save_t[FLOOR] / save_t[name]:.2f}x "
            f"| {load} |"
        )
    jp_name = "jparam: jp.save / jp.load"
    save_over = 100 * (save_t[jp_name] / save_t[FLOOR] - 1)
    load_over = 100 * (load_t[jp_name] / load_t[FLOOR] - 1)
    durable_over = 100 * (save_t[jp_name] / save_t[DURABLE] - 1)
    lines += [
        "",
        f"jparam overhead over raw safetensors (time): save {save_over:+.0f}%, "
        f"load {load_over:+.0f}% (target: within 10%); save over the same durable write "
        f"({DURABLE}): "
        f"{durable_over:+.0f}%.",
        f"{machine()}; {rounds} interleaved rounds, medians; files in "
        f"{directory or tempfile.gettempdir()}; loads read from the page cache.",
    ]
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "title": lines[0][4:],
                    "machine": machine(),
                    "bytes": nbytes,
                    "save_seconds": save_t,
                    "load_seconds": load_t,
                },
                f,
                indent=2,
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=500, help="model size in MB (default 500)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8, help="number of large weights")
    parser.add_argument("--dir", default=None, help="where to write (default: system temp)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(run(args.mb, args.rounds, args.layers, args.dir, args.json))


if __name__ == "__main__":
    main()
