"""Transformer layers against PyTorch: a port of ``nn.Transformer``, dropout keys, init, errors.

Per-layer forward/gradient parity (eager, jit) for every layer and option is in
tests/nn/test_torch_matrix.py (``ATTENTION_CASES``); here the layers are used as a user would.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, load_torch, random

import jparam as jp
from jparam import nn

D, HEADS, FF = 8, 2, 16


class Seq2Seq(jp.Module):
    """A transformer written from the layers, under ``nn.Transformer``'s names."""

    encoder: nn.TransformerEncoder
    decoder: nn.TransformerDecoder

    def __init__(self, *, key):
        ke, kd = jax.random.split(key)
        enc = nn.TransformerEncoderLayer(D, HEADS, FF, norm_first=True, activation="gelu", key=ke)
        dec = nn.TransformerDecoderLayer(D, HEADS, FF, norm_first=True, activation="gelu", key=kd)
        self.encoder = nn.TransformerEncoder(enc, 2, nn.LayerNorm(D))
        self.decoder = nn.TransformerDecoder(dec, 2, nn.LayerNorm(D))

    def __call__(self, src, tgt, tgt_mask=None, *, key=None):
        ke, kd = (None, None) if key is None else jax.random.split(key)
        memory = self.encoder(src, key=ke)
        return self.decoder(tgt, memory, tgt_mask, key=kd)


def _torch_transformer(torch):
    torch.manual_seed(0)
    tm = torch.nn.Transformer(D, HEADS, 2, 2, FF, activation="gelu", norm_first=True).eval()
    with torch.no_grad():  # norms start at ones/zeros and biases at zero: make them count
        for p in tm.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return tm


def test_layers_port_a_torch_transformer_strictly(torch, key):
    tm = _torch_transformer(torch)
    ours = load_torch(Seq2Seq(key=key), tm).eval()  # strict: every name, order and shape
    assert "encoder.layers.1.self_attn.in_proj_weight" in ours.state_dict()
    src, tgt = random((6, 2, D), 1), random((5, 2, D), 2)
    mask = np.asarray(torch.nn.Transformer.generate_square_subsequent_mask(5))
    t_args = [torch.from_numpy(x) for x in (src, tgt)]
    t_out = tm(*t_args, tgt_mask=torch.from_numpy(mask))
    assert_close(jax.jit(lambda m: m(src, tgt, mask))(ours), t_out, atol=2e-5)
    # The packaged nn.Transformer loads the same checkpoint and agrees.
    packaged = nn.Transformer(
        D, HEADS, 2, 2, FF, activation="gelu", norm_first=True, key=key
    ).load_state_dict(tm.state_dict())
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    out = jax.jit(lambda m: m(src, tgt, tgt_mask=causal))(packaged.eval())
    assert_close(out, t_out, atol=2e-5)
    # Parameter gradients of sum(out * ct) under jit, by PyTorch name.
    ct = random(t_out.shape, 3)
    (t_out * torch.from_numpy(ct)).sum().backward()
    params, rest = jp.split(ours, jp.trainable)
    loss = lambda p: jnp.sum(jp.merge(p, rest)(src, tgt, mask) * ct)
    grads = jax.jit(jax.grad(loss))(params)  # a dict by PyTorch name
    assert sorted(grads) == sorted(n for n, _ in tm.named_parameters())
    for name, p in tm.named_parameters():
        assert_close(grads[name], p.grad, atol=1e-4, rtol=1e-4)


def test_stacked_copies_are_separate_parameters(key):
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, key=key)
    enc = nn.TransformerEncoder(layer, 3)
    sd = enc.state_dict()
    assert len(sd) == 3 * len(layer.state_dict()) and not jp.ties(enc)
    np.testing.assert_array_equal(sd["layers.0.linear1.weight"], sd["layers.2.linear1.weight"])
    x = random((4, 2, D), 1)
    grads = jax.grad(lambda m: jnp.sum(jnp.sin(m.eval()(x))))(enc)
    g0, g2 = grads.layers[0].linear1.weight.value, grads.layers[2].linear1.weight.value
    assert not np.allclose(g0, g2)  # each copy gets its own gradient


def test_training_mode_dropout_takes_a_key(key):
    model = nn.Transformer(D, HEADS, 1, 1, FF, dropout=0.3, key=key)
    src, tgt = random((6, 2, D), 1), random((5, 2, D), 2)
    with pytest.raises(ValueError, match=r"needs a PRNG key.*\.eval\(\)"):
        model(src, tgt)
    step = jax.jit(lambda m, k: m(src, tgt, key=k))
    a, b = step(model, jax.random.key(1)), step(model, jax.random.key(1))
    c = step(model, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    run = jax.jit(lambda m: m(src, tgt))
    evaluated = run(model.eval())
    assert not np.allclose(a, evaluated)
    no_dropout = nn.Transformer(D, HEADS, 1, 1, FF, dropout=0.0, key=key)
    assert_close(run(no_dropout), evaluated, atol=0)  # same init from the same key


def test_transformer_init_is_xavier_like_torch(key):
    model = nn.Transformer(32, 4, 1, 1, 64, key=key)
    sd = model.state_dict()
    w = np.asarray(sd["encoder.layers.0.linear1.weight"])  # (64, 32)
    bound = np.sqrt(6 / (64 + 32))
    assert 0.9 * bound < np.abs(w).max() <= bound
    np.testing.assert_array_equal(sd["decoder.norm.weight"], 1)
    np.testing.assert_array_equal(sd["encoder.layers.0.self_attn.in_proj_bias"], 0)


def test_transformer_argument_errors(key):
    with pytest.raises(ValueError, match=r'activation must be "relu", "gelu" or a callable'):
        nn.TransformerEncoderLayer(D, HEADS, activation="tanh", key=key)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.TransformerDecoderLayer(10, 3, key=key)
    with pytest.raises(ValueError, match=r"TransformerEncoder num_layers must be positive"):
        nn.TransformerEncoder(nn.TransformerEncoderLayer(D, HEADS, key=key), 0)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, activation=jnp.tanh, key=key).eval()
    assert layer(random((3, 2, D), 1)).shape == (3, 2, D)
