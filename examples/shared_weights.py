"""Shared weights: one Parameter used twice in a forward pass.

Two classic cases, both written the obvious way — by using the same field twice:

1. A tied autoencoder: encode with ``W``, decode with ``W.T``.
2. A tiny causal language model whose token embedding is also its output projection
   (``logits = h @ embed.weight.T``), as in GPT-2.

Nothing special is needed: the gradient of a field used twice is the sum of both uses, it is
listed once by ``named_parameters()`` and counted once by ``num_parameters()``, and
`jp.Optimizer` keeps one optimizer state for it.

    python examples/shared_weights.py
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import optax

import jparam as jp
from jparam import nn

# -- 1. tied autoencoder -----------------------------------------------------------------------


class TiedAutoencoder(jp.Module):
    """``x -> tanh(x W^T + b_enc) -> h W + b_dec``: the decoder is the encoder's transpose."""

    weight: jp.Parameter  # (hidden, features), used by encode and decode
    enc_bias: jp.Parameter
    dec_bias: jp.Parameter

    def __init__(self, features: int, hidden: int, *, key: jax.Array):
        self.weight = jp.Parameter(jp.init.xavier_uniform(key, (hidden, features)))
        self.enc_bias = jp.Parameter(jnp.zeros(hidden))
        self.dec_bias = jp.Parameter(jnp.zeros(features))

    def encode(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x @ self.weight.T + self.enc_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.encode(x) @ self.weight + self.dec_bias


def autoencoder_data(key: jax.Array, n: int, features: int, latent: int) -> jax.Array:
    """Points near a ``latent``-dimensional subspace of R^features."""
    k_basis, k_z, k_noise = jax.random.split(key, 3)
    basis = jax.random.normal(k_basis, (latent, features)) / jnp.sqrt(latent)
    z = 0.5 * jax.random.normal(k_z, (n, latent))
    return z @ basis + 0.05 * jax.random.normal(k_noise, (n, features))


# -- 2. language model with tied embedding and unembedding --------------------------------------


class TinyLM(jp.Module):
    """One pre-norm causal attention block; the embedding matrix doubles as the output layer."""

    embed: nn.Embedding
    pos_embed: jp.Parameter
    norm1: nn.LayerNorm
    attn: nn.MultiheadAttention
    norm2: nn.LayerNorm
    mlp: nn.MLP
    norm: nn.LayerNorm

    def __init__(self, vocab: int, dim: int, max_len: int, heads: int = 2, *, key: jax.Array):
        k_embed, k_pos, k_attn, k_mlp = jax.random.split(key, 4)
        # PyTorch's N(0, 1) embedding init would make the tied output logits ~sqrt(dim) large;
        # start rows at norm ~1 instead (the layer is built from an existing weight).
        std = dim**-0.5
        self.embed = nn.Embedding.from_pretrained(
            jp.init.normal(k_embed, (vocab, dim), std=std), freeze=False
        )
        self.pos_embed = jp.Parameter(jp.init.normal(k_pos, (max_len, dim), std=std))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, key=k_attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.MLP(dim, [2 * dim, dim], activation_layer=nn.GELU, key=k_mlp)
        self.norm = nn.LayerNorm(dim)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """``ids`` [B, T] -> next-token logits [B, T, vocab]."""
        x = self.embed(ids) + self.pos_embed[: ids.shape[1]]
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False, is_causal=True)[0]
        x = x + self.mlp(self.norm2(x))
        return self.norm(x) @ self.embed.weight.T  # tied: the same Parameter, read again


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def lm_data(key: jax.Array, n: int, length: int, vocab: int) -> jax.Array:
    """Sequences counting mod ``vocab`` from a random start with a random stride in {1, 2, 3}."""
    k_start, k_stride = jax.random.split(key)
    start = jax.random.randint(k_start, (n, 1), 0, vocab)
    stride = jax.random.randint(k_stride, (n, 1), 1, 4)
    return (start + stride * jnp.arange(length)) % vocab


def lm_loss(model: TinyLM, ids: jax.Array) -> jax.Array:
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


@jax.jit
def lm_accuracy(model: TinyLM, ids: jax.Array) -> jax.Array:
    """Next-token accuracy from the third token on (the first two fix start and stride)."""
    pred = jnp.argmax(model(ids[:, :-1]), axis=-1)
    return jnp.mean(pred[:, 1:] == ids[:, 2:])


# -- training ------------------------------------------------------------------------------------


def ae_loss(model: TiedAutoencoder, x: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - x) ** 2)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def train_step(loss_fn, model, opt, batch):
    loss, grads = jp.value_and_grad(loss_fn)(model, batch)
    model, opt = opt.update(model, grads)
    return model, opt, loss


def train(loss_fn, model, batches, lr: float):
    opt = jp.Optimizer(optax.adam(lr), model)
    losses = []
    for batch in batches:
        model, opt, loss = train_step(loss_fn, model, opt, batch)
        losses.append(loss)
    return model, opt, [float(x) for x in losses]


def show_parameters(title: str, model: jp.Module) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    print(f"{title}: {len(names)} parameters, {model.num_parameters():,} elements")
    for name, p in model.named_parameters():
        print(f"  {name:20s} {tuple(p.shape)}")
    return names


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ae-steps", type=int, default=1000)
    p.add_argument("--lm-steps", type=int, default=600)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    k_ae, k_ae_data, k_lm, k_lm_data = jax.random.split(jax.random.key(args.seed), 4)

    # 1. Tied autoencoder: 16 features squeezed through 4 hidden units and back.
    ae = TiedAutoencoder(16, 4, key=k_ae)
    ae_names = show_parameters("tied autoencoder", ae)
    assert ae_names == ["weight", "enc_bias", "dec_bias"]  # W listed once, no decoder weight
    data = autoencoder_data(k_ae_data, 4096, features=16, latent=4)
    batches = (
        data[i % 64 * args.batch_size : (i % 64 + 1) * args.batch_size]
        for i in range(args.ae_steps)
    )
    ae, ae_opt, ae_losses = train(ae_loss, ae, batches, lr=1e-2)
    print(f"autoencoder loss {ae_losses[0]:.4f} -> {ae_losses[-1]:.4f}")
    # One Adam state (mu, nu) per element of each parameter, W included exactly once.
    ae_state = sum(x.size for x in jax.tree.leaves(ae_opt.state) if x.ndim > 0)
    print(f"optimizer state: {ae_state} floats = 2 x {ae.num_parameters()} parameters")

    # 2. Language model with tied embedding / unembedding.
    lm = TinyLM(args.vocab, args.dim, args.seq_len, key=k_lm)
    lm_names = show_parameters("tiny LM", lm)
    assert lm_names.count("embed.weight") == 1
    keys = jax.random.split(k_lm_data, args.lm_steps + 1)
    test_ids = lm_data(keys[0], 512, args.seq_len, args.vocab)
    acc_before = float(lm_accuracy(lm.eval(), test_ids))
    batches = (lm_data(k, args.batch_size, args.seq_len, args.vocab) for k in keys[1:])
    lm, _, lm_losses = train(lm_loss, lm, batches, lr=3e-3)
    acc = float(lm_accuracy(lm.eval(), test_ids))
    print(
        f"LM loss {lm_losses[0]:.4f} -> {lm_losses[-1]:.4f}; next-token accuracy "
        f"{acc_before:.3f} -> {acc:.3f}"
    )
    return {
        "ae_first_loss": ae_losses[0],
        "ae_final_loss": ae_losses[-1],
        "ae_parameter_names": ae_names,
        "ae_optimizer_floats": ae_state,
        "ae_num_parameters": ae.num_parameters(),
        "lm_first_loss": lm_losses[0],
        "lm_final_loss": lm_losses[-1],
        "lm_parameter_names": lm_names,
        "lm_accuracy": acc,
    }


if __name__ == "__main__":
    main()
