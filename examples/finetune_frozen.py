"""Fine-tune a new head on a frozen backbone, and hold optimizer state for the head only.

A ``Classifier`` (an `nn.MLP` "backbone" and an `nn.Linear` "head") is first trained on digits
0-4 of scikit-learn's digits. Then the head is replaced for digits 5-9 with `jp.at`, the
backbone is frozen by name (``model.freeze("backbone")``) and only the head is trained with
`jp.Optimizer`. The script prints ``model.summary()``, compares the optimizer state it holds
with what a full fine-tune would hold, and checks the backbone's weights are bit-for-bit
unchanged.

    python examples/finetune_frozen.py
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jparam as jp
from jparam import nn


class Classifier(jp.Module):
    backbone: nn.MLP
    head: nn.Linear

    def __init__(self, features: int, hidden: int, classes: int, *, key: jax.Array):
        k_backbone, k_head = jax.random.split(key)
        self.backbone = nn.MLP(features, [hidden, hidden], activation_layer=nn.GELU, key=k_backbone)
        self.head = nn.Linear(hidden, classes, key=k_head)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jax.nn.gelu(self.backbone(x)))


def loss_fn(model: Classifier, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@functools.partial(jax.jit, donate_argnums=(0, 1))
def train_step(model, opt, x, y):
    loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
    model, opt = opt.update(model, grads)
    return model, opt, loss


@jax.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def fit(model, tx, x, y, epochs: int, batch_size: int, seed: int):
    """Trains the trainable parameters of ``model``; returns the model, optimizer, losses."""
    opt = jp.Optimizer(tx, model)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(len(x) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            model, opt, loss = train_step(model, opt, x[idx], y[idx])
            losses.append(loss)
    return model, opt, [float(v) for v in losses]


def state_floats(opt: jp.Optimizer) -> int:
    """Floating-point numbers held in the optimizer state (Adam: mu and nu)."""
    leaves = jax.tree.leaves(opt.state)
    return sum(x.size for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining learning rate")
    p.add_argument("--head-lr", type=float, default=1e-2, help="fine-tuning learning rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    old, new = y < 5, y >= 5
    k_model, k_head = jax.random.split(jax.random.key(args.seed))

    # 1. Pretrain backbone and head on digits 0-4.
    model = Classifier(64, args.hidden, 5, key=k_model)
    model, _, _ = fit(
        model, optax.adam(args.lr), x[old], y[old], args.pretrain_epochs, args.batch_size, 0
    )

    # 2. New task, digits 5-9 (labels 0-4): a new head, the backbone frozen by name.
    xa, xb, ya, yb = train_test_split(
        x[new], y[new] - 5, test_size=0.3, random_state=0, stratify=y[new]
    )
    model = jp.at(model, "head").set(nn.Linear(args.hidden, 5, key=k_head))
    model = model.freeze("backbone")
    print(model.summary())
    before = {k: np.array(v) for k, v in model.state_dict().items() if k.startswith("backbone")}
    acc_before = float(accuracy(model, xb, yb))

    tx = optax.adam(args.head_lr)
    model, opt, losses = fit(model, tx, xa, ya, args.finetune_epochs, args.batch_size, 1)
    acc = float(accuracy(model, xb, yb))

    # Optimizer state for the head only, versus what a full fine-tune would hold.
    head_floats = state_floats(opt)
    full_floats = state_floats(jp.Optimizer(tx, model.unfreeze()))
    print(
        f"optimizer state: {head_floats:,} floats (head only) vs {full_floats:,} for a full "
        f"fine-tune ({head_floats / full_floats:.1%})"
    )
    print(
        f"trainable {model.num_parameters(trainable_only=True):,} of "
        f"{model.num_parameters():,} parameters"
    )

    after = model.state_dict()
    for name, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[name]), value, err_msg=name)
    print(f"backbone unchanged ({len(before)} tensors checked bit for bit)")
    print(
        f"new-task loss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out accuracy "
        f"{acc_before:.3f} -> {acc:.3f}"
    )
    return {
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "accuracy_before": acc_before,
        "accuracy": acc,
        "optimizer_floats": head_floats,
        "full_optimizer_floats": full_floats,
        "backbone_unchanged": True,
    }


if __name__ == "__main__":
    main()
