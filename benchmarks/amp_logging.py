"""What mixed precision and TensorBoard logging add to a jitted training step.

One small MLP adam step with `jp.Optimizer` is the floor. Against it, interleaved:

- the same step through `jp.amp.value_and_grad` with a float32 policy (every cast a no-op)
  and a plain ``opt.update``: the wrapper alone;
- then with `jp.amp.update_if_finite` (the bitwise skip: the update is computed and one of the
  old and new model and optimizer state is selected, leaf by leaf), then with a
  `DynamicLossScale` (scale, unscale, adjust);
- the bfloat16-compute step (on a CPU this measures the CPU's bfloat16 arithmetic, not jparam);
- the floor step followed by ``logger.log(step, params=model, scalars={"loss": loss})`` with
  ``every=100``: on 99 steps of 100 it returns at once, on the 100th it computes `jp.stats`,
  fetches and writes; the figure is the average over all steps.

    python -m benchmarks.amp_logging                 # depth 8, width 32, batch 8
"""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import optax

import jparam as jp
from benchmarks._timing import interleaved, machine, mlp_step_parser, report
from benchmarks.step_overhead import _jparam_model, _mse, _weights


def _loss(model, x, y):
    return _mse(model(x), y)


def _plain_step():
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(model, opt, x, y):
        loss, grads = jp.value_and_grad(_loss)(model, x, y)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    return step


def plain(model, tx, x, y, logger=None):
    """The floor step; with a logger, followed by ``logger.log`` after every step."""
    step = _plain_step()
    state = [model, jp.Optimizer(tx, model)]
    count = [0]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        if logger is not None:
            logger.log(count[0], params=state[0], scalars={"loss": loss})
            count[0] += 1
        return loss

    return run


def amp(model, tx, x, y, compute="float32", scaled=False, skip=True):
    policy = jp.amp.Policy(compute=compute)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(model, opt, scaler, x, y):
        loss, grads, scaler, finite = jp.amp.value_and_grad(_loss, policy, scaler)(model, x, y)
        if skip:
            model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        else:
            model, opt = opt.update(model, grads)
        return model, opt, scaler, loss

    state = [model, jp.Optimizer(tx, model), jp.amp.DynamicLossScale() if scaled else None]

    def run():
        state[0], state[1], state[2], loss = step(*state, x, y)
        return loss

    return run


def run(depth: int, width: int, batch: int, rounds: int, inner: int, json_path=None) -> str:
    weights = _weights(depth, width)
    x = jax.random.normal(jax.random.key(1), (batch, width))
    y = jax.random.normal(jax.random.key(2), (batch, width))
    tx = optax.adam(1e-3)

    def fresh():  # each contender its own arrays: donation deletes what a step consumes
        return _jparam_model(
            [(jnp.array(w, copy=True), jnp.array(b, copy=True)) for w, b in weights]
        )

    with tempfile.TemporaryDirectory() as logdir:
        floor = "jp.Optimizer step (floor)"
        logger = jp.TensorBoardLogger(logdir, every=100)
        steps = {
            floor: plain(fresh(), tx, x, y),
            "jp.amp.value_and_grad, float32 policy, no skip": amp(fresh(), tx, x, y, skip=False),
            "jp.amp, float32 policy": amp(fresh(), tx, x, y),
            "jp.amp, float32 policy + DynamicLossScale": amp(fresh(), tx, x, y, scaled=True),
            "jp.amp, bfloat16 compute": amp(fresh(), tx, x, y, compute="bfloat16"),
            "step + TensorBoardLogger.log, every=100": plain(fresh(), tx, x, y, logger),
        }
        times = interleaved(steps, rounds=rounds, inner=inner)
        logger.close()
    title = f"AMP and logging: MLP depth {depth}, width {width}, batch {batch}, adam"
    text = report(title, list(times.items()), floor, json_path)
    return text + f"\n{machine()}; {rounds} interleaved rounds of {inner} steps, medians."


def main(argv=None) -> None:
    args = mlp_step_parser(__doc__.split("\n")[0]).parse_args(argv)
    print(run(args.depth, args.width, args.batch, args.rounds, args.inner, args.json))


if __name__ == "__main__":
    main()
