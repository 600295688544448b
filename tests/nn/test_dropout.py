"""Dropout: keep probability, scaling, explicit keys, identity in eval mode or with p=0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jparam import nn


def test_dropout_keeps_1_minus_p_and_scales_survivors(key):
    x = jnp.ones((200, 500))
    y = np.asarray(nn.Dropout(0.3)(x, key=key))
    kept = y != 0
    assert kept.mean() == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=0.02)  # expectation preserved


def test_dropout_identity_in_eval_or_with_p_zero(key):
    x = jnp.arange(6.0)
    assert nn.Dropout(0.5).eval()(x) is x
    assert nn.Dropout(0.0)(x) is x  # training mode, but nothing to drop: no key needed
    np.testing.assert_array_equal(nn.Dropout(1.0)(x, key=key), np.zeros(6))


def test_dropout_needs_a_key_in_training():
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\) is in training mode and needs a PRNG"):
        nn.Dropout()(jnp.ones(3))


def test_dropout_keys_give_different_masks_and_jit(key):
    drop = nn.Dropout(0.5)
    x = jnp.ones(64)
    a, b = drop(x, key=key), drop(x, key=jax.random.key(1))
    assert not np.array_equal(a, b)
    jitted = jax.jit(lambda m, x, k: m(x, key=k))(drop, x, key)
    np.testing.assert_array_equal(jitted != 0, a != 0)  # the same key draws the same mask
    np.testing.assert_allclose(jitted, a, rtol=1e-6)  # compiled arithmetic: a tolerance
    assert drop(x.astype(jnp.bfloat16), key=key).dtype == jnp.bfloat16


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"in \[0, 1\], got p=1.5"):
        nn.Dropout(1.5)
