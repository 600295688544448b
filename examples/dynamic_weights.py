"""Dynamic weights: a base weight Parameter plus a delta generated from a condition vector.

``DynamicLinear`` holds a base weight ``W0`` (a `jp.Parameter`) and a small hypernetwork
(`nn.MLP`) that maps a condition ``c`` to a weight delta, so each sample is transformed by
``W(c) = W0 + delta(c)``. The synthetic task needs it: targets are ``y = W_true(c) x`` with a
weight that moves with ``c``. Both the base weight and the hypernetwork train through one
`jp.value_and_grad`; the hypernetwork's last layer starts at zero (set with `jp.at`), so
training starts from the plain linear layer. The script prints the loss against the best any
single fixed weight can do (least squares).

    python examples/dynamic_weights.py
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp
from jparam import nn


class DynamicLinear(jp.Module):
    """``y = (W0 + delta(c)) @ x + b``, with ``delta`` an MLP of the condition ``c``."""

    base_weight: jp.Parameter
    bias: jp.Parameter
    hyper: nn.MLP
    in_features: int = jp.field(static=True)
    out_features: int = jp.field(static=True)

    def __init__(self, in_features: int, out_features: int, cond_dim: int, hidden: int, *, key):
        k_base, k_hyper = jax.random.split(key)
        self.in_features = in_features
        self.out_features = out_features
        self.base_weight = jp.Parameter(jp.init.xavier_uniform(k_base, (out_features, in_features)))
        self.bias = jp.Parameter(jnp.zeros(out_features))
        self.hyper = nn.MLP(
            cond_dim, [hidden, out_features * in_features], activation_layer=nn.GELU, key=k_hyper
        )

    def weight(self, cond: jax.Array) -> jax.Array:
        """The effective weights, one per condition: [B, out, in]."""
        delta = self.hyper(cond).reshape(-1, self.out_features, self.in_features)
        return self.base_weight + delta

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        return jnp.einsum("boi,bi->bo", self.weight(cond), x) + self.bias


def zero_last_layer(model: DynamicLinear) -> DynamicLinear:
    """Starts the delta at exactly zero: the model begins as an ordinary linear layer."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]  # "hyper.3"
    for p in ("weight", "bias"):  # a raw array set where a Parameter was keeps its flags
        model = jp.at(model, f"{name}.{p}").apply(lambda w: jnp.zeros(w.shape, w.dtype))
    return model


def make_task(key, in_features: int, out_features: int, cond_dim: int) -> jax.Array:
    """The hidden matrices ``A0..AK`` of ``W_true(c) = A0 + sum_k sin(c_k) A_k``."""
    return jax.random.normal(key, (cond_dim + 1, out_features, in_features)) / np.sqrt(in_features)


@functools.partial(jax.jit, static_argnums=2)
def sample(mats: jax.Array, key, n: int):
    """``n`` fresh ``(x, c, y = W_true(c) x)`` triples: the right weight depends on ``c``."""
    k_x, k_c = jax.random.split(key)
    x = jax.random.normal(k_x, (n, mats.shape[2]))
    cond = jax.random.normal(k_c, (n, mats.shape[0] - 1))
    w_true = mats[0] + jnp.einsum("bk,koi->boi", jnp.sin(cond), mats[1:])
    return x, cond, jnp.einsum("boi,bi->bo", w_true, x)


def loss_fn(model, x, cond, y):
    return jnp.mean((model(x, cond) - y) ** 2)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def train_step(model, opt, x, cond, y):
    loss, grads = jp.value_and_grad(loss_fn)(model, x, cond, y)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--in-features", type=int, default=8)
    p.add_argument("--out-features", type=int, default=4)
    p.add_argument("--cond-dim", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    k_model, k_task, k_data = jax.random.split(jax.random.key(args.seed), 3)
    model = DynamicLinear(
        args.in_features, args.out_features, args.cond_dim, args.hidden, key=k_model
    )
    model = zero_last_layer(model)
    for name, param in model.named_parameters():
        print(f"  {name:24s} {tuple(param.shape)}")

    # Evaluation set, and the best a single fixed weight can do on it (least squares).
    mats = make_task(k_task, args.in_features, args.out_features, args.cond_dim)
    k_eval, k_data = jax.random.split(k_data)
    x_eval, c_eval, y_eval = sample(mats, k_eval, 2048)
    x1 = np.concatenate([np.asarray(x_eval), np.ones((len(x_eval), 1))], axis=1)
    fit, *_ = np.linalg.lstsq(x1, np.asarray(y_eval), rcond=None)
    static_loss = float(np.mean((x1 @ fit - np.asarray(y_eval)) ** 2))

    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.05)
    opt = jp.Optimizer(optax.adam(schedule), model)
    eval_loss = jax.jit(loss_fn)
    first = float(eval_loss(model, x_eval, c_eval, y_eval))
    print(f"eval loss at start {first:.4f}; best single fixed weight {static_loss:.4f}")
    for step in range(args.steps):
        k_data, k = jax.random.split(k_data)
        x, c, y = sample(mats, k, args.batch_size)  # fresh samples of the same task
        model, opt, loss = train_step(model, opt, x, c, y)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:5d}  train loss {float(loss):.4f}")
    final = float(eval_loss(model, x_eval, c_eval, y_eval))
    print(f"eval loss at end {final:.4f} (fixed-weight optimum {static_loss:.4f})")
    return {"first_loss": first, "final_loss": final, "static_loss": static_loss}


if __name__ == "__main__":
    main()
