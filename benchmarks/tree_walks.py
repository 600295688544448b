"""Tree walks: naming every parameter of a 100- or 1,000-parameter model, and split/merge.

jparam's walks run in Python (they order names as PyTorch does); the floor is
``jax.tree_util.tree_flatten_with_path`` on a dict of the same arrays, which runs in C++.
The peers do the same jobs on the same arrays: Equinox ``eqx.partition(model, eqx.is_array)``
/ ``eqx.combine``, Flax NNX ``nnx.split(model)`` / ``nnx.merge`` and ``nnx.state(model,
nnx.Param)`` flattened to names (NNX's equivalent of ``named_parameters``).

    python -m benchmarks.tree_walks --params 1000

Contenders that need a missing package (equinox, flax) are skipped with a note.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jparam as jp
from benchmarks._timing import interleaved, machine, report


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter


class Stack(jp.Module):
    layers: list


def build(num_params: int) -> tuple[Stack, dict]:
    layers = [
        Linear(jp.Parameter(jnp.ones((4, 4))), jp.Parameter(jnp.zeros(4)))
        for _ in range(num_params // 2)
    ]
    model = Stack(layers)
    as_dict = {
        f"layers.{i}": {"weight": layer.weight.value, "bias": layer.bias.value}
        for i, layer in enumerate(layers)
    }
    return model, as_dict


def equinox_contenders(as_dict: dict) -> dict:
    import equinox as eqx

    class ELinear(eqx.Module):
        weight: jax.Array
        bias: jax.Array

    class EStack(eqx.Module):
        layers: list

    model = EStack([ELinear(d["weight"], d["bias"]) for d in as_dict.values()])
    arrays, static = eqx.partition(model, eqx.is_array)
    return {
        "equinox: partition(model, is_array)": lambda: eqx.partition(model, eqx.is_array),
        "equinox: combine(arrays, static)": lambda: eqx.combine(arrays, static),
    }


def nnx_contenders(as_dict: dict) -> dict:
    from flax import nnx

    class NLinear(nnx.Module):
        def __init__(self, weight, bias):
            self.weight = nnx.Param(weight)
            self.bias = nnx.Param(bias)

    class NStack(nnx.Module):
        def __init__(self, layers):
            self.layers = nnx.List(layers)

    model = NStack([NLinear(d["weight"], d["bias"]) for d in as_dict.values()])
    graphdef, state = nnx.split(model)
    return {
        "flax nnx: state(model, Param) names": lambda: list(
            nnx.to_flat_state(nnx.state(model, nnx.Param))
        ),
        "flax nnx: split(model)": lambda: nnx.split(model),
        "flax nnx: merge(graphdef, state)": lambda: nnx.merge(graphdef, state),
    }


def run(num_params: int, rounds: int, inner: int, json_path=None) -> str:
    model, as_dict = build(num_params)
    params, rest = jp.split(model, jp.trainable)
    contenders = {
        "dict: tree_flatten_with_path (floor)": lambda: jax.tree_util.tree_flatten_with_path(
            as_dict
        ),
        "jparam: named_parameters()": lambda: list(model.named_parameters()),
        "jparam: state_dict()": lambda: model.state_dict(),
        "jparam: split(model, trainable)": lambda: jp.split(model, jp.trainable),
        "jparam: merge(params, rest)": lambda: jp.merge(params, rest),
        "jax: tree_flatten_with_path(model)": lambda: jax.tree_util.tree_flatten_with_path(model),
    }
    skipped = []
    for peer, package in ((equinox_contenders, "equinox"), (nnx_contenders, "flax")):
        try:
            contenders |= peer(as_dict)
        except ImportError:
            skipped.append(f"{package} not installed")
    times = interleaved(contenders, rounds=rounds, inner=inner)
    title = f"Tree walks: {num_params} parameters ({num_params // 2} Linear modules)"
    text = report(title, list(times.items()), "dict: tree_flatten_with_path (floor)", json_path)
    text += f"\n\n{machine()}; {rounds} interleaved rounds of {inner} calls, medians."
    return text + (f"\nskipped: {', '.join(skipped)}" if skipped else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(run(args.params, args.rounds, args.inner, args.json))


if __name__ == "__main__":
    main()
