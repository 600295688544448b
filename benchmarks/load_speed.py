"""Load speed: a GPT-2-small state_dict into a jparam model against PyTorch's ``load_state_dict``.

The model is GPT-2 small's shapes built by hand (124M parameters with the default sizes):
``wte`` (50257, 768), ``wpe`` (1024, 768), 12 blocks of ``ln_1``, ``attn.c_attn``
(768 -> 2304), ``attn.c_proj``, ``ln_2``, ``mlp.c_fc`` (768 -> 3072), ``mlp.c_proj``, then
``ln_f`` and ``lm_head`` tied to ``wte`` — once from ``jparam.nn`` layers with `jp.tie`, once
as a PyTorch ``nn.Module`` twin with ``lm_head.weight = wte.weight``. Every contender loads a
fresh state_dict already in memory (another twin's ``state_dict()``, both tied names present,
as PyTorch saves them) into an existing model:

- ``torch: load_state_dict`` (the floor): ``twin.load_state_dict(tensors)``, a ``copy_`` per
  tensor;
- ``jparam: load_state_dict(torch tensors)``: ``model.load_state_dict(tensors)``, values
  checked, converted and on the device (``jax.block_until_ready``);
- ``jparam: load_state_dict(numpy)``: the same from NumPy arrays.

Interleaved rounds, medians, ratios to the floor. The loaded values are checked against the
source (untimed) so the contenders are known to do the same job.

    python -m benchmarks.load_speed                  # GPT-2 small, 15 rounds
    python -m benchmarks.load_speed --vocab 64 --dim 16 --layers 1 --ctx 8 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jparam as jp
from benchmarks._timing import machine
from jparam import nn

FLOOR = "torch: load_state_dict"
FROM_TORCH = "jparam: load_state_dict(torch tensors)"
FROM_NUMPY = "jparam: load_state_dict(numpy)"


class Attention(jp.Module):
    c_attn: nn.Linear
    c_proj: nn.Linear

    def __init__(self, dim: int, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.c_attn = nn.Linear(dim, 3 * dim, key=k1)
        self.c_proj = nn.Linear(dim, dim, key=k2)


class MLP(jp.Module):
    c_fc: nn.Linear
    c_proj: nn.Linear

    def __init__(self, dim: int, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.c_fc = nn.Linear(dim, 4 * dim, key=k1)
        self.c_proj = nn.Linear(4 * dim, dim, key=k2)


class Block(jp.Module):
    ln_1: nn.LayerNorm
    attn: Attention
    ln_2: nn.LayerNorm
    mlp: MLP

    def __init__(self, dim: int, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, key=k1)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, key=k2)


class GPT2(jp.Module):
    """GPT-2's parameters under GPT-2's names (no forward pass: only loading is timed)."""

    wte: nn.Embedding
    wpe: nn.Embedding
    h: list
    ln_f: nn.LayerNorm
    lm_head: nn.Linear

    def __init__(self, vocab: int, dim: int, layers: int, ctx: int, *, key: jax.Array) -> None:
        keys = jax.random.split(key, layers + 3)
        self.wte = nn.Embedding(vocab, dim, key=keys[0])
        self.wpe = nn.Embedding(ctx, dim, key=keys[1])
        self.h = [Block(dim, key=k) for k in keys[3:]]
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False, key=keys[2])


def build_jparam(vocab: int, dim: int, layers: int, ctx: int) -> GPT2:
    model = GPT2(vocab, dim, layers, ctx, key=jax.random.key(0))
    return jax.block_until_ready(jp.tie(model, "lm_head.weight", "wte.weight"))


def build_torch(vocab: int, dim: int, layers: int, ctx: int, seed: int) -> Any:
    """The PyTorch twin: the same names and shapes, ``lm_head`` tied to ``wte``."""
    import torch
    from torch import nn as tnn

    def module(**children: Any) -> Any:
        m = tnn.Module()
        for name, child in children.items():
            m.add_module(name, child)
        return m

    torch.manual_seed(seed)
    blocks = [
        module(
            ln_1=tnn.LayerNorm(dim),
            attn=module(c_attn=tnn.Linear(dim, 3 * dim), c_proj=tnn.Linear(dim, dim)),
            ln_2=tnn.LayerNorm(dim),
            mlp=module(c_fc=tnn.Linear(dim, 4 * dim), c_proj=tnn.Linear(4 * dim, dim)),
        )
        for _ in range(layers)
    ]
    twin = module(
        wte=tnn.Embedding(vocab, dim),
        wpe=tnn.Embedding(ctx, dim),
        h=tnn.ModuleList(blocks),
        ln_f=tnn.LayerNorm(dim),
        lm_head=tnn.Linear(dim, vocab, bias=False),
    )
    twin.lm_head.weight = twin.wte.weight
    return twin


def _contenders(sizes: tuple[int, int, int, int]) -> tuple[dict[str, Callable[[], Any]], dict]:
    """``{name: load}`` and the source values every load must produce."""
    import torch

    model = build_jparam(*sizes)
    twin = build_torch(*sizes, seed=0)
    with torch.no_grad():
        tensors = build_torch(*sizes, seed=1).state_dict()  # fresh tensors, both tied names
    arrays = {k: v.numpy() for k, v in tensors.items()}
    if list(tensors) != list(model.state_dict()):
        raise RuntimeError("the PyTorch twin's names differ from the jparam model's")
    contenders = {
        FLOOR: lambda: twin.load_state_dict(tensors),
        FROM_TORCH: lambda: model.load_state_dict(tensors),
        FROM_NUMPY: lambda: model.load_state_dict(arrays),
    }
    return contenders, arrays


def _check(loaded: dict[str, Any], want: dict[str, np.ndarray], who: str) -> None:
    for name, value in want.items():
        if not np.array_equal(np.asarray(loaded[name]), value):
            raise RuntimeError(f"{who} loaded {name} wrong")


def run(sizes: tuple[int, int, int, int], rounds: int, json_path: str | None = None) -> str:
    contenders, want = _contenders(sizes)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:  # warm up, and check that every contender does the same job
        out = jax.block_until_ready(contenders[name]())
        if name != FLOOR:
            _check(out.state_dict(), want, name)
        del out
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # nobody always goes first
        for name in order:
            start = time.perf_counter()
            out = jax.block_until_ready(contenders[name]())
            times[name].append(time.perf_counter() - start)
            del out
    median = {name: statistics.median(t) for name, t in times.items()}
    n_params = sum(v.size for k, v in want.items() if k != "lm_head.weight")
    vocab, dim, layers, ctx = sizes
    lines = [
        f"### Load speed: GPT-2 (vocab {vocab}, dim {dim}, {layers} layers, ctx {ctx}), "
        f"{n_params / 1e6:.1f}M float32 parameters, lm_head tied to wte",
        "",
        "| contender | time per load | ratio to torch |",
        "|---|---:|---:|",
    ]
    for name in names:
        ratio = median[name] / median[FLOOR]
        lines.append(f"| {name} | {median[name] * 1e3:.1f} ms | {ratio:.2f}x |")
    lines += ["", f"{machine()}; {rounds} interleaved rounds, medians."]
    if json_path:
        result = {
            "title": lines[0][4:],
            "machine": machine(),
            "parameters": n_params,
            "seconds": median,
            "ratio": {name: median[name] / median[FLOOR] for name in names},
        }
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(run((args.vocab, args.dim, args.layers, args.ctx), args.rounds, args.json))


if __name__ == "__main__":
    main()
