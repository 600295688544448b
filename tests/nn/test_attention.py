"""MultiheadAttention against PyTorch: masks, weights, gradients, dropout, kdim/vdim, bias_kv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, assert_grads_match, load_torch, random

from jparam import nn

N, L, S, E, H = 2, 5, 4, 8, 2


def _pair(torch, key, **kwargs):
    tm = torch.nn.MultiheadAttention(E, H, batch_first=True, **kwargs)
    with torch.no_grad():  # PyTorch starts the biases at zero: make them count
        for name, p in tm.named_parameters():
            if "bias" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return load_torch(nn.MultiheadAttention(E, H, batch_first=True, key=key, **kwargs), tm), tm


def _inputs(self_attention: bool):
    q = random((N, L, E), 1)
    kv = q if self_attention else random((N, S, E), 2)
    return q, kv, (kv if self_attention else random((N, S, E), 3))


def _masks(kind: str, s: int):
    rng = np.random.default_rng(4)
    if kind == "none":
        return {}
    if kind == "padding":
        pad = np.zeros((N, s), bool)
        pad[0, -2:] = True
        return {"key_padding_mask": pad}
    if kind == "bool":
        return {"attn_mask": np.triu(np.ones((L, s), bool), 1)}
    if kind == "float":
        return {"attn_mask": rng.standard_normal((L, s)).astype(np.float32)}
    if kind == "per-head":
        mask = rng.random((N * H, L, s)) < 0.3
        mask[..., 0] = False  # every query keeps one key
        return {"attn_mask": mask}
    if kind == "mixed":
        pad = np.zeros((N, s), bool)
        pad[1, 0] = True
        return {"key_padding_mask": pad, "attn_mask": rng.standard_normal((L, s)).astype("f")}
    raise AssertionError(kind)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
@pytest.mark.parametrize("masks", ["none", "padding", "bool", "float", "per-head", "mixed"])
def test_attention_matches_torch(torch, key, self_attention, masks):
    jm, tm = _pair(torch, key)
    q, k, v = _inputs(self_attention)
    kw = _masks(masks, k.shape[1])
    tkw = {name: torch.from_numpy(m) for name, m in kw.items()}
    t_out, t_w = tm(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **tkw)
    out, w = jm(q, k, v, **kw)
    assert_close(out, t_out)
    assert_close(w, t_w)
    fast, none = jm(q, k, v, need_weights=False, **kw)  # jax.nn.dot_product_attention
    assert none is None
    assert_close(fast, t_out)
    _, per_head = jm(q, k, v, average_attn_weights=False, **kw)
    _, t_per_head = tm(
        torch.from_numpy(q),
        torch.from_numpy(k),
        torch.from_numpy(v),
        average_attn_weights=False,
        **tkw,
    )
    assert per_head.shape == (N, H, L, k.shape[1])
    assert_close(per_head, t_per_head)


def test_attention_is_causal_matches_torch_with_its_mask(torch, key):
    jm, tm = _pair(torch, key)
    q, _, _ = _inputs(True)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L)
    t_out, t_w = tm(*(torch.from_numpy(q),) * 3, attn_mask=causal, is_causal=True)
    for need_weights in (True, False):
        out, w = jm(q, q, q, is_causal=True, need_weights=need_weights)
        assert_close(out, t_out)
    out, w = jax.jit(lambda m, x: m(x, x, x, is_causal=True))(jm, q)
    assert_close(w, t_w)
    assert float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0


def test_attention_gradients_match_torch(torch, key):
    jm, tm = _pair(torch, key)
    q, k, v = _inputs(False)
    pad = _masks("padding", S)["key_padding_mask"]
    assert_grads_match(
        jm,
        tm,
        lambda m: m(q, k, v, key_padding_mask=pad, need_weights=False)[0],
        lambda m: m(
            torch.from_numpy(q),
            torch.from_numpy(k),
            torch.from_numpy(v),
            key_padding_mask=torch.from_numpy(pad),
            need_weights=False,
        )[0],
        atol=1e-4,
    )


def test_attention_without_bias_matches_torch(torch, key):
    jm, tm = _pair(torch, key, bias=False)
    assert list(jm.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    q, _, _ = _inputs(True)
    assert_close(jm(q, q, q)[0], tm(*(torch.from_numpy(q),) * 3)[0])


def test_attention_names_and_init(key):
    mha = nn.MultiheadAttention(64, 4, key=key)
    assert list(mha.state_dict()) == [
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
    ]
    assert mha.in_proj_weight.shape == (192, 64) and mha.head_dim == 16
    w = np.asarray(mha.in_proj_weight.value)
    bound = np.sqrt(6 / (64 + 192))  # xavier uniform on (3E, E)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    np.testing.assert_array_equal(mha.in_proj_bias.value, 0)
    np.testing.assert_array_equal(mha.out_proj.bias.value, 0)
    assert np.abs(np.asarray(mha.out_proj.weight.value)).max() <= 1 / 8  # Linear's init


def test_attention_dropout_needs_key_and_is_off_in_eval(key):
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True, key=key)
    q, _, _ = _inputs(True)
    with pytest.raises(ValueError, match="needs dropout_key"):
        mha(q, q, q)
    out, _ = mha(q, q, q, dropout_key=jax.random.key(1))
    eval_out, eval_w = mha.eval()(q, q, q)
    assert not np.allclose(out, eval_out)
    np.testing.assert_allclose(eval_w.sum(-1), 1, rtol=1e-5)
    # need_weights=False still applies dropout (through the explicit path).
    fast, _ = mha(q, q, q, need_weights=False, dropout_key=jax.random.key(1))
    assert_close(fast, out)


def test_attention_errors(key):
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiheadAttention(10, 3, key=key)
    with pytest.raises(TypeError, match="key"):
        nn.MultiheadAttention(E, H)
    mha = nn.MultiheadAttention(E, H, batch_first=True, key=key)
    q = jnp.ones((N, L, E))
    with pytest.raises(
        ValueError,
        match=r"MultiheadAttention\(embed_dim=8.*\(N, L, 8\) for query, "
        r"got shape \(2, 5, 6\)",
    ):
        mha(jnp.ones((N, L, 6)), q, q)
    with pytest.raises(ValueError, match=r"\(2, S, 8\) for key, got shape \(3, 5, 8\)"):
        mha(q, jnp.ones((3, L, E)), q)
    with pytest.raises(ValueError, match=r"for value"):
        mha(q, q, jnp.ones((N, L + 1, E)))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(2, 5\), got shape \(5,\)"):
        mha(q, q, q, key_padding_mask=jnp.zeros(L, bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 5\) or \(4, 5, 5\)"):
        mha(q, q, q, attn_mask=jnp.zeros((2, 5, 5), bool))
    with pytest.raises(TypeError, match="bool or floating"):
        mha(q, q, q, attn_mask=jnp.zeros((L, L), int))


def test_sequence_first_is_the_default_as_in_torch(torch, key):
    """``batch_first=False`` (PyTorch's default): inputs ``(L, N, E)``, weights ``(N, L, S)``."""
    tm = torch.nn.MultiheadAttention(E, H)
    jm = load_torch(nn.MultiheadAttention(E, H, key=key), tm)
    assert not jm.batch_first
    q, k, v = (np.swapaxes(x, 0, 1) for x in _inputs(False))  # (T, N, E)
    t_out, t_w = tm(*map(torch.from_numpy, (q, k, v)))
    out, w = jax.jit(lambda m, *a: m(*a))(jm, q, k, v)
    assert out.shape == (L, N, E) and w.shape == (N, L, S)
    assert_close(out, t_out)
    assert_close(w, t_w)
    with pytest.raises(ValueError, match=r"\(S, 2, 8\) for key, got shape \(2, 4, 8\)"):
        jm(q, np.swapaxes(k, 0, 1), v)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [False, True])
def test_kdim_vdim_bias_kv_zero_attn_match_torch(torch, key, batch_first):
    kw = dict(add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=3, batch_first=batch_first)
    tm = torch.nn.MultiheadAttention(E, H, **kw)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    jm = load_torch(nn.MultiheadAttention(E, H, key=key, **kw), tm)
    assert list(jm.state_dict()) == [
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "in_proj_bias",
        "bias_k",
        "bias_v",
        "out_proj.weight",
        "out_proj.bias",
    ]
    q, k, v = random((N, L, E), 1), random((N, S, 6), 2), random((N, S, 3), 3)
    if not batch_first:
        q, k, v = (np.swapaxes(x, 0, 1) for x in (q, k, v))
    masks = {**_masks("padding", S), "attn_mask": random((L, S), 4)}
    t_args = [torch.from_numpy(x) for x in (q, k, v)]
    t_masks = {name: torch.from_numpy(m) for name, m in masks.items()}
    t_out, t_w = tm(*t_args, **t_masks)
    for need_weights in (True, False):
        out, _ = jm(q, k, v, need_weights=need_weights, **masks)
        assert_close(out, t_out, atol=2e-5)
    assert_close(jm(q, k, v, **masks)[1], t_w)  # S + 2 columns: bias_k and the zero position
    assert t_w.shape[-1] == S + 2
    assert_grads_match(
        jm,
        tm,
        lambda m: m(q, k, v, **masks)[0],
        lambda m: m(*t_args, **t_masks)[0],
        atol=1e-4,
    )


def test_separate_projections_and_bias_kv_init(key):
    mha = nn.MultiheadAttention(64, 4, add_bias_kv=True, kdim=32, vdim=16, key=key)
    assert mha.in_proj_weight is None
    shapes = {n: tuple(v.shape) for n, v in mha.state_dict().items()}
    assert shapes["q_proj_weight"] == (64, 64) and shapes["k_proj_weight"] == (64, 32)
    assert shapes["v_proj_weight"] == (64, 16) and shapes["bias_k"] == (1, 1, 64)
    for name, fan_in in (("q_proj_weight", 64), ("k_proj_weight", 32), ("v_proj_weight", 16)):
        w = np.asarray(mha.state_dict()[name])
        bound = np.sqrt(6 / (64 + fan_in))  # xavier uniform, as PyTorch
        assert bound * 0.9 < np.abs(w).max() <= bound
    assert 0.5 < np.asarray(mha.bias_k.value).std() * 8 < 1.5  # xavier normal: std 1/sqrt(64)
    same = nn.MultiheadAttention(64, 4, kdim=64, vdim=64, key=key)
    assert same.in_proj_weight is not None and same.q_proj_weight is None


def test_attention_new_argument_errors(key):
    with pytest.raises(ValueError, match=r"MultiheadAttention kdim must be positive.*kdim=0"):
        nn.MultiheadAttention(E, H, kdim=0, key=key)
    mha = nn.MultiheadAttention(E, H, vdim=3, batch_first=True, key=key)
    q = jnp.ones((N, L, E))
    with pytest.raises(ValueError, match=r"\(2, 5, 3\) for value, got shape \(2, 5, 8\)"):
        mha(q, q, q)
