"""Memory of fine-tuning with frozen weights: gradient and optimizer-state bytes, 0-99% frozen.

An MLP of ``--layers`` tanh ``Linear(width, width)`` layers (float32) is trained with
``optax.adamw`` with the first 0%, 90% or 99% of its layers frozen. Contenders:

- ``stop_gradient on frozen`` (the floor): the usual plain-JAX route. The whole model is one
  dict, the loss wraps frozen weights in ``jax.lax.stop_gradient``, and ``jax.grad`` and optax
  see every array: frozen weights get zero gradients and Adam moments all the same.
- ``jparam: split + optax``: ``params, rest = jp.split(model, jp.trainable)``; gradients and
  optimizer state exist for ``params`` only.
- ``jparam: jp.Optimizer``: ``jp.value_and_grad`` + ``jp.Optimizer``, the same thing packaged.

Gradient and optimizer-state bytes are counted from the pytrees (``jax.eval_shape``, nothing is
allocated). The compiled step's own view comes from XLA: ``memory_analysis()`` of the jitted,
donated step, whose temporaries hold the gradients, and its arguments + outputs - aliased
(donated) + temporaries, an upper bound of its peak.

    python -m benchmarks.memory                             # 100 layers of width 256
    python -m benchmarks.memory --layers 10 --frozen 0 90   # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import jparam as jp
from benchmarks._timing import machine

FLOOR = "stop_gradient on frozen (floor)"


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.value.T + self.bias.value


class MLP(jp.Module):
    layers: list

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _mse(y_hat: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((y_hat - y) ** 2)


def _nbytes(tree: Any) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _xla_bytes(step: Callable[..., Any], *args: Any) -> tuple[int | None, int | None]:
    """``(temporaries, arguments + outputs - aliased + temporaries)`` of the compiled step."""
    stats = step.lower(*args).compile().memory_analysis()
    if stats is None:  # a backend without memory analysis
        return None, None
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
    return stats.temp_size_in_bytes, total


def floor_stop_gradient(weights, frozen, tx, x, y) -> dict[str, Any]:
    params = {}
    for i, (w, b) in enumerate(weights):
        params[f"layers.{i}.weight"], params[f"layers.{i}.bias"] = w, b

    def loss_fn(p, x, y):
        h = x
        for i in range(len(weights)):
            w, b = p[f"layers.{i}.weight"], p[f"layers.{i}.bias"]
            if i < frozen:
                w, b = jax.lax.stop_gradient(w), jax.lax.stop_gradient(b)
            h = jnp.tanh(h @ w.T + b)
        return _mse(h, y)

    grad_fn = jax.grad(loss_fn)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, x, y):
        u, s = tx.update(grad_fn(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    state = jax.eval_shape(tx.init, params)
    return {
        "trainable": sum(w.size + b.size for w, b in weights[frozen:]),
        "grads": jax.eval_shape(grad_fn, params, x, y),
        "state": state,
        "step": (step, params, state, x, y),
    }


def _model(weights, frozen: int) -> MLP:
    layers = [Linear(jp.Parameter(w), jp.Parameter(b)) for w, b in weights]
    model = MLP(layers)
    if frozen:
        model = model.freeze(*(f"layers.{i}" for i in range(frozen)))
    return model


def jparam_split(weights, frozen, tx, x, y) -> dict[str, Any]:
    params, rest = jp.split(_model(weights, frozen), jp.trainable)

    def loss_fn(params, rest, x, y):
        return _mse(jp.merge(params, rest)(x), y)

    grad_fn = jax.grad(loss_fn)

    @functools.partial(jax.jit, donate_argnums=(0, 2))
    def step(params, rest, s, x, y):
        u, s = tx.update(grad_fn(params, rest, x, y), s, params)
        return optax.apply_updates(params, u), s

    state = jax.eval_shape(tx.init, params)
    return {
        "trainable": sum(v.size for v in params.values()),
        "grads": jax.eval_shape(grad_fn, params, rest, x, y),
        "state": state,
        "step": (step, params, rest, state, x, y),
    }


def jparam_optimizer(weights, frozen, tx, x, y) -> dict[str, Any]:
    model = _model(weights, frozen)

    def loss_fn(model, x, y):
        return _mse(model(x), y)

    grad_fn = jp.grad(loss_fn)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(model, opt, x, y):
        return opt.update(model, grad_fn(model, x, y))

    opt = jax.eval_shape(lambda m: jp.Optimizer(tx, m), model)
    return {
        "trainable": model.num_parameters(trainable_only=True),
        "grads": jax.eval_shape(grad_fn, model, x, y),
        "state": opt.state,
        "step": (step, model, opt, x, y),
    }


CONTENDERS = {
    FLOOR: floor_stop_gradient,
    "jparam: split + optax": jparam_split,
    "jparam: jp.Optimizer": jparam_optimizer,
}


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MB"


def run(
    layers: int, width: int, batch: int, fractions: list[float], json_path: str | None = None
) -> str:
    keys = jax.random.split(jax.random.key(0), layers)
    bound = 1 / width**0.5
    weights = [
        (jax.random.uniform(k, (width, width), minval=-bound, maxval=bound), jnp.zeros(width))
        for k in keys
    ]
    x = jax.random.normal(jax.random.key(1), (batch, width))
    y = jax.random.normal(jax.random.key(2), (batch, width))
    tx = optax.adamw(1e-3)
    total = layers * (width * width + width)
    title = (
        f"Memory: MLP of {layers} layers of width {width} ({total:,} float32 parameters), "
        f"batch {batch}, adamw"
    )
    lines = [
        f"### {title}",
        "",
        "| frozen | contender | trainable | gradients | optimizer state "
        "| XLA temporaries | XLA step total | grads + state vs floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    records = []
    for fraction in fractions:
        frozen = round(fraction * layers / 100)
        floor_bytes = None
        for name, make in CONTENDERS.items():
            out = make(weights, frozen, tx, x, y)
            expected = (layers - frozen) * (width * width + width)
            if out["trainable"] != expected:
                raise AssertionError(f"{name}: {out['trainable']} trainable, not {expected}")
            grads, state = _nbytes(out["grads"]), _nbytes(out["state"])
            temp, step_total = _xla_bytes(*out["step"])
            floor_bytes = floor_bytes or grads + state
            lines.append(
                f"| {100 * frozen / layers:.0f}% | {name} | {out['trainable']:,} | {_mb(grads)} "
                f"| {_mb(state)} | {_mb(temp)} | {_mb(step_total)} "
                f"| {(grads + state) / floor_bytes:.2f}x |"
            )
            records.append(
                {
                    "frozen_layers": frozen,
                    "contender": name,
                    "trainable_parameters": out["trainable"],
                    "gradient_bytes": grads,
                    "optimizer_state_bytes": state,
                    "xla_temp_bytes": temp,
                    "xla_step_total_bytes": step_total,
                }
            )
    lines += [
        "",
        f"{machine()}; bytes counted from the pytrees (gradients, optimizer state) and from "
        "XLA's memory_analysis() of the compiled, donated step; MB = 2^20 bytes.",
    ]
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"title": title, "machine": machine(), "results": records}, f, indent=2)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--frozen", type=float, nargs="+", default=[0, 90, 99], help="percent of layers frozen"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(run(args.layers, args.width, args.batch, args.frozen, args.json))


if __name__ == "__main__":
    main()
