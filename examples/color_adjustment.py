"""Recover a known colour transform with a learnable 3x3 colour matrix and colour bias.

``ColorAdjust`` is the module from jparam's design notes: two `jp.Parameter` fields, images
``[B, C, H, W]``. Random images are pushed through a hidden "true" colour transform and the
module learns it back from input/output pairs. The optimizer is one line; ``--optimizer sgd``
swaps ``optax.adam`` for ``optax.sgd`` and nothing else changes.

    python examples/color_adjustment.py
    python examples/color_adjustment.py --optimizer sgd
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp


class ColorAdjust(jp.Module):
    color_matrix: jp.Parameter
    color_bias: jp.Parameter

    def __init__(self):
        self.color_matrix = jp.Parameter(jnp.eye(3))  # assignment allowed inside __init__
        self.color_bias = jp.Parameter(jnp.zeros(3))

    def __call__(self, x):  # x: [B, C, H, W]
        x = jnp.moveaxis(x, 1, -1) @ self.color_matrix + self.color_bias
        return jnp.moveaxis(x, -1, 1)


# A warm, slightly desaturated grade: what the model has to find.
TRUE_MATRIX = np.array(
    [[0.90, 0.05, 0.00], [0.10, 0.80, 0.10], [0.00, 0.10, 0.70]], dtype=np.float32
)
TRUE_BIAS = np.array([0.05, 0.00, -0.03], dtype=np.float32)
DEFAULT_LR = {"adam": 0.02, "sgd": 0.5}


def loss_fn(model: ColorAdjust, images: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean((model(images) - targets) ** 2)


@jax.jit
def train_step(model, opt, images, targets):
    loss, grads = jp.value_and_grad(loss_fn)(model, images, targets)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None, help="default: 0.02 adam, 0.5 sgd")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]

    target = ColorAdjust().replace(
        color_matrix=jp.Parameter(TRUE_MATRIX), color_bias=jp.Parameter(TRUE_BIAS)
    )
    model = ColorAdjust()
    tx = getattr(optax, args.optimizer)(lr)  # the one line: optax.adam(lr) or optax.sgd(lr)
    opt = jp.Optimizer(tx, model)

    key = jax.random.key(args.seed)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    losses = []
    for step in range(args.steps):
        key, k = jax.random.split(key)
        images = jax.random.uniform(k, shape)
        model, opt, loss = train_step(model, opt, images, target(images))
        losses.append(float(loss))
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {losses[-1]:.2e}")

    matrix = np.asarray(model.color_matrix.value)
    bias = np.asarray(model.color_bias.value)
    np.set_printoptions(precision=3, suppress=True)
    print(f"{args.optimizer}: final loss {losses[-1]:.2e}")
    print("recovered matrix:\n", matrix, "\ntrue matrix:\n", TRUE_MATRIX)
    print("recovered bias:", bias, " true bias:", TRUE_BIAS)
    return {
        "optimizer": args.optimizer,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "matrix_error": float(np.abs(matrix - TRUE_MATRIX).max()),
        "bias_error": float(np.abs(bias - TRUE_BIAS).max()),
    }


if __name__ == "__main__":
    main()
