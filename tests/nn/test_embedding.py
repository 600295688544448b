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


# max_norm, scale_grad_by_freq, sparse


def _torch_and_ours(torch, key, cls="Embedding", **kw):
    torch.manual_seed(0)
    tm = getattr(torch.nn, cls)(10, 4, **kw)
    with torch.no_grad():
        tm.weight.mul_(2.0)  # most rows above max_norm=1.5, a few below
    return tm, load_torch(getattr(nn, cls)(10, 4, **kw, key=key), tm)


def test_max_norm_renormalises_rows_and_writes_them_back_like_torch(torch, key):
    """Two SGD steps: outputs, weight gradients (under jit) and the weight after each step
    (PyTorch's in-place renormalisation, here through stateful_call) match torch's."""
    tm, jm = _torch_and_ours(torch, key, max_norm=1.5)
    ids = np.array([[1, 3, 3], [7, 0, 1]])
    ct = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)

    @jax.jit
    def step(m):
        def loss(m):
            out, new = nn.stateful_call(m, ids)
            return jnp.sum(out * ct), (out, new)

        (_, (out, new)), g = jax.value_and_grad(loss, has_aux=True)(m)
        return out, g.weight.value, new

    for _ in range(2):
        out, grad, new = step(jm)
        t_out = tm(torch.from_numpy(ids))
        tm.zero_grad()
        (t_out * torch.from_numpy(ct)).sum().backward()
        assert_close(out, t_out)
        assert_close(grad, tm.weight.grad)  # the rescaling is no part of the gradient
        assert_close(new.weight.value, tm.weight)  # rows 0, 1, 3, 7 renormalised, others not
        with torch.no_grad():
            tm.weight -= 0.1 * tm.weight.grad
        jm = new.replace(weight=new.weight.replace(new.weight.value - 0.1 * grad))
    norms = np.linalg.norm(np.asarray(new.weight.value), axis=1)
    assert (norms[[0, 1, 3, 7]] <= 1.5).all() and (norms[[2, 4]] > 1.5).all()


def test_max_norm_in_eval_mode_rescales_output_only(torch, key):
    tm, jm = _torch_and_ours(torch, key, max_norm=1.0, norm_type=1.0)
    ids = np.array([4, 2, 4])
    out, new = nn.stateful_call(jm.eval(), ids)
    assert_close(out, tm(torch.from_numpy(ids)))
    assert new.weight is jm.eval().weight  # nothing written back in evaluation mode
    assert_close(jm.eval()(ids), out)
    with pytest.raises(RuntimeError, match="outside nn.stateful_call"):
        jm(ids)  # training mode: the weight update must have somewhere to go


def test_stateful_call_is_the_one_spelling_of_a_training_step(key):
    for layer in (nn.Embedding(4, 2, key=key), nn.EmbeddingBag(4, 2, key=key)):
        assert not hasattr(layer, "forward_train")


def test_scale_grad_by_freq_matches_torch_under_jit(torch, key):
    tm, jm = _torch_and_ours(torch, key, scale_grad_by_freq=True, padding_idx=0)
    ids = np.array([[5, 5, 5, 2], [0, 0, 2, 9]])
    assert_grads_match(jm, tm, jax.jit(lambda m: m(ids)), lambda m: m(torch.from_numpy(ids)))


def test_sparse_is_accepted_and_gradients_stay_dense(key):
    emb = nn.Embedding(5, 3, sparse=True, key=key)
    assert emb.sparse
    g = jax.grad(lambda m: m(jnp.array([1])).sum())(emb)
    assert g.weight.value.shape == (5, 3)


def test_embedding_from_pretrained_keeps_options(torch):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    ours = nn.Embedding.from_pretrained(table, max_norm=2.0, scale_grad_by_freq=True)
    theirs = torch.nn.Embedding.from_pretrained(torch.from_numpy(table), max_norm=2.0)
    assert (ours.max_norm, ours.scale_grad_by_freq, ours.sparse) == (2.0, True, False)
    assert_close(ours.eval()(np.array([3, 1])), theirs(torch.tensor([3, 1])))


# EmbeddingBag


def _bag(torch, key, **kw):
    return _torch_and_ours(torch, key, "EmbeddingBag", **kw)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_empty_bags_and_padding_match_torch(torch, key, mode):
    """Bag 1 is empty, bag 3 holds only padding: both give zeros, as in PyTorch."""
    tm, jm = _bag(torch, key, mode=mode, padding_idx=2)
    ids, offsets = np.array([2, 1, 4, 6, 2, 2, 8]), np.array([0, 3, 3, 4, 6])
    out = jax.jit(lambda m, i, o: m(i, o))(jm, ids, offsets)
    t_out = tm(torch.from_numpy(ids), torch.from_numpy(offsets))
    assert_close(out, t_out)
    np.testing.assert_array_equal(np.asarray(out)[[1, 3]], 0)
    run = jax.jit(lambda m: m(ids, offsets))
    assert_grads_match(jm, tm, run, lambda m: m(torch.from_numpy(ids), torch.from_numpy(offsets)))


def test_embedding_bag_include_last_offset_and_2d_input(torch, key):
    tm, jm = _bag(torch, key, mode="sum", include_last_offset=True)
    ids, offsets = np.array([1, 2, 3, 4]), np.array([0, 1, 1, 4])
    out = jm(ids, offsets)
    assert out.shape == (3, 4)
    assert_close(out, tm(torch.from_numpy(ids), torch.from_numpy(offsets)))
    grid = np.array([[1, 2, 3], [9, 9, 0]])
    assert_close(jm(grid), tm(torch.from_numpy(grid)))
    with pytest.raises(ValueError, match=r"last offset to be the input's length 4, got \[0, 1\]"):
        jm(ids, np.array([0, 1]))


def test_embedding_bag_per_sample_weights_gradients_match_torch(torch, key):
    tm, jm = _bag(torch, key, mode="sum", max_norm=1.5)
    jm = jm.eval()
    ids, offsets = np.array([1, 5, 5, 0, 3]), np.array([0, 2])
    psw = np.random.default_rng(2).standard_normal(5).astype(np.float32)
    g_w, g_psw = jax.jit(jax.grad(lambda m, p: jnp.sum(jnp.sin(m(ids, offsets, p))), (0, 1)))(
        jm, psw
    )
    t_psw = torch.from_numpy(psw).requires_grad_()
    out = tm(torch.from_numpy(ids), torch.from_numpy(offsets), t_psw)
    torch.sin(out).sum().backward()
    assert_close(g_w.weight.value, tm.weight.grad)
    assert_close(g_psw, t_psw.grad)


def test_embedding_bag_scale_grad_by_freq_divides_by_each_ids_count(torch, key):
    """Expected gradients come from torch's ``nn.Embedding`` summed per bag: PyTorch 2.13's CPU
    EmbeddingBag divides some rows by another id's count (pytorch/pytorch#190063)."""
    tm, jm = _bag(torch, key, mode="mean", scale_grad_by_freq=True)
    ids, offsets = np.array([2, 1, 2, 5, 2, 3, 3]), np.array([0, 3, 5])
    emb = torch.nn.Embedding(10, 4, scale_grad_by_freq=True)
    emb.load_state_dict(tm.state_dict())
    rows = emb(torch.from_numpy(ids))
    bags = torch.stack([rows[0:3].mean(0), rows[3:5].mean(0), rows[5:].mean(0)])
    assert_close(jm(ids, offsets), bags)
    run = jax.jit(lambda m: m(ids, offsets))
    assert_grads_match(jm, emb, run, lambda m: bags)


def test_embedding_bag_from_pretrained_and_names(torch):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    bag = nn.EmbeddingBag.from_pretrained(table, mode="max", padding_idx=1)
    theirs = torch.nn.EmbeddingBag.from_pretrained(
        torch.from_numpy(table), mode="max", padding_idx=1
    )
    assert not bag.weight.trainable and list(bag.state_dict()) == list(theirs.state_dict())
    assert (bag.mode, bag.padding_idx, bag.include_last_offset) == ("max", 1, False)
    grid = np.array([[0, 1], [1, 1]])
    assert_close(bag(grid), theirs(torch.from_numpy(grid)))
    assert nn.EmbeddingBag.from_pretrained(table, freeze=False).weight.trainable


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b(np.array([1, 2])), "1-D input without offsets"),
        (lambda b: b(np.array([[1, 2]]), np.array([0])), "2-D input .* and offsets"),
        (lambda b: b(np.array([1, 2]), np.array([1])), r"offsets starting at 0.*got \[1\]"),
        (lambda b: b(np.array([1, 2]), np.array([0, 3])), r"at most the input's length 2"),
        (lambda b: b(np.array([1, 2]), np.array([[0]])), "1-D integer array"),
        (lambda b: b(np.ones((1, 1, 2), int)), r"2-D input \(B, N\) or 1-D .* \(1, 1, 2\)"),
        (lambda b: b(np.array([1, 2]), np.array([0]), np.ones(3)), "input's shape \\(2,\\)"),
    ],
)
def test_embedding_bag_refuses_bad_calls_like_torch(key, call, match):
    with pytest.raises(ValueError, match=match):
        call(nn.EmbeddingBag(4, 3, mode="sum", key=key))


def test_embedding_bag_per_sample_weights_need_sum_mode(key):
    bag = nn.EmbeddingBag(4, 3, key=key)  # mode="mean", PyTorch's default
    with pytest.raises(ValueError, match="only mode='sum'"):
        bag(np.array([1, 2]), np.array([0]), np.ones(2, np.float32))
    with pytest.raises(IndexError, match=r"got ids in \[1, 4\]"):
        bag(np.array([1, 4]), np.array([0]))
