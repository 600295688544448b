"""Mixed precision: train in bfloat16 with float32 master weights, next to a float32 run.

A small MLP classifies three interleaved spirals. The model keeps float32 parameters; inside
the loss `jp.amp.value_and_grad` casts a copy to the policy's compute dtype, so the forward and
backward passes run in bfloat16 while gradients and optimizer state stay float32. The same
model, batches and optimizer trained in float32 give the reference. ``--compute float16``
shows PyTorch's ``GradScaler`` recipe instead: dynamic loss scaling, and steps whose gradients
overflow are skipped inside the jitted step.

    python examples/amp_bfloat16.py                      # bfloat16 compute
    python examples/amp_bfloat16.py --compute float16    # float16 compute + loss scaling
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp
from jparam import nn


@functools.partial(jax.jit, static_argnums=(1, 2))
def spirals(key: jax.Array, n: int, classes: int = 3) -> tuple[jax.Array, jax.Array]:
    """``n`` noisy 2-D points on ``classes`` interleaved spiral arms, and their labels."""
    k_radius, k_noise, k_label = jax.random.split(key, 3)
    labels = jax.random.randint(k_label, (n,), 0, classes)
    radius = jax.random.uniform(k_radius, (n,), minval=0.1, maxval=1.0)
    angle = 3.0 * radius + 2.0 * math.pi * labels / classes
    points = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return points + 0.02 * jax.random.normal(k_noise, points.shape), labels


def loss_fn(model: nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model(x)
    # cross-entropy in float32 even when the logits are bfloat16, as PyTorch's autocast does
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


def make_steps(policy: jp.amp.Policy):
    """A float32 reference step and a mixed-precision step (with loss scaling for float16)."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def f32_step(model, opt, x, y):
        loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def amp_step(model, opt, scaler, x, y):
        loss, grads, scaler, finite = jp.amp.value_and_grad(loss_fn, policy, scaler)(model, x, y)
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)  # skip Inf/NaN steps
        return model, opt, scaler, loss, finite

    return f32_step, amp_step


@jax.jit
def accuracy(model: nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compute", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    k_data, k_test, k_model = jax.random.split(jax.random.key(args.seed), 3)
    x, y = spirals(k_data, 4096)
    x_test, y_test = spirals(k_test, 1024)
    model = nn.MLP(2, [args.hidden, args.hidden, 3], activation_layer=nn.GELU, key=k_model)
    policy = jp.amp.Policy(param="float32", compute=args.compute, output="float32")
    # float16 needs loss scaling (gradients below 6e-8 vanish); bfloat16 has float32's range.
    scaler = jp.amp.DynamicLossScale(growth_interval=200) if args.compute == "float16" else None
    compute_dtypes = sorted({str(p.dtype) for p in policy.cast_to_compute(model).parameters()})
    print(f"policy {policy}; the loss sees parameters in {compute_dtypes}")

    tx = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps))
    f32_step, amp_step = make_steps(policy)
    ref = jax.tree.map(jnp.copy, model)  # the same start, in buffers of its own (both donated)
    ref_opt = jp.Optimizer(tx, ref)
    opt = jp.Optimizer(tx, model)
    x_host, y_host = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(args.seed)
    amp_losses, ref_losses, skipped = [], [], 0
    for _ in range(args.steps):
        idx = rng.integers(0, len(x_host), args.batch_size)
        xb, yb = x_host[idx], y_host[idx]
        model, opt, scaler, loss, finite = amp_step(model, opt, scaler, xb, yb)
        ref, ref_opt, ref_loss = f32_step(ref, ref_opt, xb, yb)
        amp_losses.append(loss)
        ref_losses.append(ref_loss)
        skipped += 1 - finite.astype(jnp.int32)  # stays on device: no sync per step
    window = max(1, args.steps // 10)
    first = float(jnp.mean(jnp.stack(amp_losses[:window])))
    final = float(jnp.mean(jnp.stack(amp_losses[-window:])))
    ref_final = float(jnp.mean(jnp.stack(ref_losses[-window:])))
    acc, ref_acc = float(accuracy(model, x_test, y_test)), float(accuracy(ref, x_test, y_test))
    # the gradients' dtypes, without computing them
    _, grads, _, _ = jax.eval_shape(jp.amp.value_and_grad(loss_fn, policy), model, x, y)
    grad_dtypes = sorted({str(g.dtype) for g in jp.parameters(grads)})
    result = {
        "compute": args.compute,
        "compute_dtypes": compute_dtypes,
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "grad_dtypes": grad_dtypes,
        "first_loss": first,
        "final_loss": final,
        "f32_final_loss": ref_final,
        "accuracy": acc,
        "f32_accuracy": ref_acc,
        "skipped_steps": int(skipped),
        "loss_scale": None if scaler is None else float(scaler.loss_scale),
        "wall_time_s": time.perf_counter() - start,
    }
    print(
        f"{args.compute}: loss {first:.3f} -> {final:.3f}, test accuracy {acc:.3f}   "
        f"float32: loss {ref_final:.3f}, test accuracy {ref_acc:.3f}"
    )
    print(
        f"parameters {result['param_dtypes']}, gradients {result['grad_dtypes']}, "
        f"skipped steps {result['skipped_steps']}, loss scale {result['loss_scale']}, "
        f"{result['wall_time_s']:.1f} s"
    )
    return result


if __name__ == "__main__":
    main()
