"""Embedding: PyTorch parity, padding_idx (zero row, no gradient), init, id checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, assert_grads_match, load_torch

from jparam import nn

IDS = np.array([[0, 3, 9], [2, 2, 5]])


def test_embedding_matches_torch(torch, key):
    tm = torch.nn.Embedding(10, 4, padding_idx=2)
    jm = load_torch(nn.Embedding(10, 4, padding_idx=2, key=key), tm)
    assert_close(jm(IDS), tm(torch.from_numpy(IDS)))
    # PyTorch gives the padding row no gradient; so does jparam.
    assert_grads_match(jm, tm, lambda m: m(IDS), lambda m: m(torch.from_numpy(IDS)))


def test_embedding_init_is_standard_normal_with_zero_padding_row(key):
    emb = nn.Embedding(1000, 64, padding_idx=-1, key=key)
    assert emb.padding_idx == 999
    w = np.asarray(emb.weight.value)
    assert w.shape == (1000, 64)
    np.testing.assert_array_equal(w[999], 0)
    assert w[:999].mean() == pytest.approx(0, abs=0.02)
    assert w[:999].std() == pytest.approx(1, rel=0.02)


def test_embedding_padding_row_gets_no_gradient(key):
    emb = nn.Embedding(5, 3, padding_idx=0, key=key)
    grads = jax.grad(lambda m: m(jnp.array([0, 0, 1])).sum())(emb)
    np.testing.assert_array_equal(grads.weight.value[0], 0)
    np.testing.assert_array_equal(grads.weight.value[1], 1)


def test_embedding_rejects_bad_ids(key):
    emb = nn.Embedding(5, 3, key=key)
    with pytest.raises(IndexError, match=r"got ids in \[0, 5\], expected ids in \[0, 5\)"):
        emb(jnp.array([0, 5]))
    with pytest.raises(IndexError, match=r"got ids in \[-1, 2\]"):
        emb(jnp.array([-1, 2]))
    with pytest.raises(TypeError, match="expects integer ids, got dtype float32"):
        emb(jnp.array([0.0, 1.0]))
    # Under jit ids cannot be checked: out-of-range rows come back NaN, never clamped.
    out = jax.jit(lambda m, i: m(i))(emb, jnp.array([1, 5, -1]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()


def test_embedding_from_pretrained_and_errors(key):
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    emb = nn.Embedding.from_pretrained(table)
    assert not emb.weight.trainable
    np.testing.assert_array_equal(emb(jnp.array([2, 0])), table[[2, 0]])
    assert nn.Embedding.from_pretrained(table, freeze=False).weight.trainable
    with pytest.raises(ValueError, match="2-D"):
        nn.Embedding.from_pretrained(np.zeros(3))
    with pytest.raises(ValueError, match="padding_idx must be in"):
        nn.Embedding(3, 2, padding_idx=3, key=key)
    with pytest.raises(TypeError, match="key"):
        nn.Embedding(3, 2)


def test_embedding_checks_concrete_ids_closed_over_by_jit(key):
    emb = nn.Embedding(5, 3, key=key)
    ids = jnp.array([1, 2])  # a constant of the traced function, not a tracer
    out = jax.jit(lambda m: m(ids))(emb)
    np.testing.assert_array_equal(out, emb.weight.value[ids])
    bad = jnp.array([1, 7])
    with pytest.raises(IndexError, match=r"got ids in \[1, 7\]"):
        jax.jit(lambda m: m(bad))(emb)
