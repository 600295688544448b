"""A one-weight model and an adam loop that fits it, for the parametrization and projection tests.

A constraint is tested by training under it: the loss goes down and the constraint still holds.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp


class Fit(jp.Module):
    """``y = x @ w.T``: one weight, used through the array operators."""

    w: Any
    b: jp.Parameter

    def __init__(self, w, b=None):
        self.w = w
        self.b = jp.Parameter(jnp.zeros(w.shape[0])) if b is None else b

    def __call__(self, x):
        return x @ self.w.T + self.b


def normal(seed, shape, scale=1.0):
    return jax.random.normal(jax.random.key(seed), shape) * scale


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def fit(model, x, y, steps=100, lr=0.05, projected=False):
    """`steps` jitted adam steps on `mse`; returns the model and the losses before each step."""
    opt = jp.Optimizer(optax.adam(lr), model)

    @jax.jit
    def step(model, opt):
        loss, grads = jp.value_and_grad(mse)(model, x, y)
        model, opt = opt.update(model, grads)
        return (jp.project(model) if projected else model), opt, loss

    losses = []
    for _ in range(steps):
        model, opt, loss = step(model, opt)
        losses.append(float(loss))
    return model, losses


def orthonormal_rows(w):
    """The largest deviation of ``w w.T`` (``w.T w`` if tall) from the identity."""
    w = np.asarray(w, np.float64)
    if w.shape[-2] > w.shape[-1]:
        w = np.swapaxes(w, -1, -2)
    return np.abs(w @ np.swapaxes(w, -1, -2) - np.eye(w.shape[-2])).max()
