"""A small deterministic training run, for tests/test_checkpoint.py (not a test module).

The test trains in its own process and, to prove that a resumed run continues bit for bit, runs

    python tests/resume_script.py CHECKPOINT_DIR STEPS OUT_DIR

in a fresh process: it loads the latest checkpoint of CHECKPOINT_DIR (model, jp.Optimizer state,
PRNG key, extras), trains STEPS more steps and saves the result as a checkpoint in OUT_DIR.
Each step splits the key for data sampling and dropout, and updates BatchNorm statistics.
"""

import sys

import jax
import jax.numpy as jnp
import optax

import jparam as jp
from jparam import nn


def make_model():
    k1, k2 = jax.random.split(jax.random.key(0))
    return nn.Sequential(
        nn.Linear(8, 16, key=k1),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(16, 1, key=k2),
    )


def make_opt(model):
    return jp.Optimizer(optax.adam(1e-2), model)


def loss_fn(model, x, y, key):
    pred, model = nn.stateful_call(model, x, key=key)
    return jnp.mean((pred - y) ** 2), model


@jax.jit
def train_step(model, opt, key):
    key, k_data, k_drop = jax.random.split(key, 3)
    x = jax.random.normal(k_data, (32, 8))
    y = jnp.sin(x.sum(-1, keepdims=True))
    (loss, model), grads = jp.value_and_grad(loss_fn, has_aux=True)(model, x, y, k_drop)
    model, opt = opt.update(model, grads)
    return model, opt, key, loss


def train(model, opt, key, steps):
    for _ in range(steps):
        model, opt, key, _ = train_step(model, opt, key)
    return model, opt, key


def main(checkpoint_dir, steps, out_dir):
    model = make_model()
    ckpt = jp.load_checkpoint(checkpoint_dir, model=model, opt=make_opt(model))
    model, opt, key = train(ckpt["model"], ckpt["opt"], ckpt["key"], int(steps))
    step = ckpt["step"] + int(steps)
    jp.save_checkpoint(
        out_dir, step, model=model, opt=opt, key=key, seen=ckpt["seen"] + 32 * int(steps)
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
