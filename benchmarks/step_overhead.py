"""Step overhead: one small jitted adam step written several ways, against a dict of arrays.

The model is deliberately tiny (an MLP of ``--depth`` layers of width ``--width``, batch
``--batch``) so that the step is dominated by what each library adds around ``jax.jit``:
flattening and unflattening its model and optimizer state, and any Python dispatch.

    python -m benchmarks.step_overhead                 # depth 8, width 32, batch 8
    python -m benchmarks.step_overhead --depth 32 --json out.json
    python -m benchmarks.step_overhead --configs          # depth 8, depth 32, width 1024
    python -m benchmarks.step_overhead --configs 8x32 32x32 --json out.json  # out_d8_w32.json ...

The width-1024 row is compute-bound (all contenders should tie); lower ``--inner`` for it.

Contenders that need a missing package (equinox, flax) are skipped with a note.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import optax

import jparam as jp
from benchmarks._timing import interleaved, machine, mlp_step_parser, report


def _weights(depth: int, width: int) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(jax.random.key(0), depth)
    bound = 1.0 / width**0.5
    return [
        (jax.random.uniform(k, (width, width), minval=-bound, maxval=bound), jnp.zeros(width))
        for k in keys
    ]


def _mse(y_hat: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((y_hat - y) ** 2)


def dict_floor(weights, tx, x, y):
    """The floor: a flat dict of arrays and plain optax."""
    params = {}
    for i, (w, b) in enumerate(weights):
        params[f"layers.{i}.weight"], params[f"layers.{i}.bias"] = w, b
    depth = len(weights)

    def loss_fn(p, x, y):
        h = x
        for i in range(depth):
            h = jnp.tanh(h @ p[f"layers.{i}.weight"].T + p[f"layers.{i}.bias"])
        return _mse(h, y)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state = [params, tx.init(params)]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class MLP(jp.Module):
    layers: list

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _jparam_model(weights) -> MLP:
    return MLP([Linear(jp.Parameter(w), jp.Parameter(b)) for w, b in weights])


def jparam_split(weights, tx, x, y):
    """DESIGN.md's pattern: jp.split once, plain optax on the trainable half."""
    params, rest = jp.split(_jparam_model(weights), jp.trainable)

    def loss_fn(params, rest, x, y):
        return _mse(jp.merge(params, rest)(x), y)

    @functools.partial(jax.jit, donate_argnums=(0, 2))
    def step(params, rest, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, rest, x, y)
        u, s = tx.update(g, s, params)
        return optax.apply_updates(params, u), s, loss

    state = [params, tx.init(params)]

    def run():
        state[0], state[1], loss = step(state[0], rest, state[1], x, y)
        return loss

    return run


def jparam_optimizer(weights, tx, x, y):
    """jp.Optimizer: the whole model and a name-keyed optimizer in and out of the step."""
    model = _jparam_model(weights)

    def loss_fn(model, x, y):
        return _mse(model(x), y)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(model, opt, x, y):
        loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    state = [model, jp.Optimizer(tx, model)]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


def equinox_filter_jit(weights, tx, x, y):
    import equinox as eqx

    class ELinear(eqx.Module):
        weight: jax.Array
        bias: jax.Array

        def __call__(self, x):
            return x @ self.weight.T + self.bias

    class EMLP(eqx.Module):
        layers: list

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return x

    model = EMLP([ELinear(w, b) for w, b in weights])

    @eqx.filter_jit(donate="all")
    def step(model, s, x, y):
        loss, g = eqx.filter_value_and_grad(lambda m: _mse(m(x), y))(model)
        u, s = tx.update(g, s, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, u), s, loss

    state = [model, tx.init(eqx.filter(model, eqx.is_array))]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


def nnx_jit(weights, tx, x, y):
    from flax import nnx

    class NLinear(nnx.Module):
        def __init__(self, w, b):
            self.weight = nnx.Param(w)
            self.bias = nnx.Param(b)

        def __call__(self, x):
            return x @ self.weight[...].T + self.bias[...]

    class NMLP(nnx.Module):
        def __init__(self, layers):
            self.layers = nnx.List(layers)

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return x

    model = NMLP([NLinear(w, b) for w, b in weights])
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss, g = nnx.value_and_grad(lambda m: _mse(m(x), y))(model)
        opt.update(model, g)
        return loss

    return lambda: step(model, opt, x, y)


CONTENDERS = {
    "dict of arrays (floor)": dict_floor,
    "jparam: split + plain optax": jparam_split,
    "jparam: jp.Optimizer": jparam_optimizer,
    "equinox: filter_jit": equinox_filter_jit,
    "flax nnx: nnx.jit": nnx_jit,
}


def run(depth: int, width: int, batch: int, rounds: int, inner: int, json_path=None) -> str:
    weights = _weights(depth, width)
    x = jax.random.normal(jax.random.key(1), (batch, width))
    y = jax.random.normal(jax.random.key(2), (batch, width))
    tx = optax.adam(1e-3)
    steps, skipped = {}, []
    for name, make in CONTENDERS.items():
        try:
            # Each contender gets its own copy: donation deletes the arrays a step consumes.
            own = [(jnp.array(w, copy=True), jnp.array(b, copy=True)) for w, b in weights]
            steps[name] = make(own, tx, x, y)
        except ImportError as e:
            skipped.append(f"{name} ({e.name} not installed)")
    times = interleaved(steps, rounds=rounds, inner=inner)
    title = f"Step overhead: MLP depth {depth}, width {width}, batch {batch}, adam"
    text = report(title, list(times.items()), "dict of arrays (floor)", json_path)
    notes = [f"\n{machine()}; {rounds} interleaved rounds of {inner} steps, medians."]
    if skipped:
        notes.append("skipped: " + ", ".join(skipped))
    return text + "\n".join(notes)


# BENCHMARKS.md's rows: the README's depth, a deep stack (more nodes per step), and a wide one
# where compute dominates and every contender should tie.
STANDARD_CONFIGS = ("8x32", "32x32", "8x1024")


def _config(text: str) -> tuple[int, int]:
    """``"DEPTHxWIDTH"`` (e.g. ``"32x32"``) as two positive ints, for ``--configs``."""
    try:
        depth, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        depth = width = 0
    if depth < 1 or width < 1:
        raise argparse.ArgumentTypeError(
            f"expected DEPTHxWIDTH with positive integers, e.g. 32x32; got {text!r}"
        )
    return depth, width


def _json_for(json_path: str | None, depth: int, width: int, several: bool) -> str | None:
    """One JSON file per configuration when several run: ``out.json`` -> ``out_d32_w32.json``."""
    if json_path is None or not several:
        return json_path
    stem, dot, ext = json_path.rpartition(".")
    return f"{stem}_d{depth}_w{width}.{ext}" if dot else f"{json_path}_d{depth}_w{width}"


def main(argv=None) -> None:
    parser = mlp_step_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        nargs="*",
        type=_config,
        default=None,
        metavar="DEPTHxWIDTH",
        help="run these configurations in turn instead of --depth/--width; given with no "
        f"value: BENCHMARKS.md's rows ({' '.join(STANDARD_CONFIGS)})",
    )
    args = parser.parse_args(argv)
    if args.configs is None:
        configs = [(args.depth, args.width)]
    else:
        configs = args.configs or [_config(c) for c in STANDARD_CONFIGS]
    for depth, width in configs:
        json_path = _json_for(args.json, depth, width, len(configs) > 1)
        print(run(depth, width, args.batch, args.rounds, args.inner, json_path), flush=True)


if __name__ == "__main__":
    main()
