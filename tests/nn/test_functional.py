"""`nn.functional.scaled_dot_product_attention` against PyTorch's, eager, jitted and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_parity import assert_close, random

from jparam.nn.functional import scaled_dot_product_attention as sdpa

B, H, L, S, E = 2, 4, 5, 6, 8


def _case(kind: str):
    """``(query, key, value, keywords)`` for one configuration (torch's ``(N, H, T, E)``)."""
    q, k, v = random((B, H, L, E), 1), random((B, H, S, E), 2), random((B, H, S, E), 3)
    if kind == "plain":
        return q, k, v, {}
    if kind == "causal-scale":
        return q, k, v, {"is_causal": True, "scale": 0.3}
    if kind == "bool-mask":
        mask = np.random.default_rng(4).random((L, S)) < 0.7
        mask[:, 0] = True  # every query keeps one key
        return q, k, v, {"attn_mask": mask}
    if kind == "float-mask-per-head":
        return q, k, v, {"attn_mask": random((B, 1, L, S), 5)}
    if kind == "gqa":
        return q, k[:, :2], v[:, :2], {"enable_gqa": True, "is_causal": True}
    if kind == "value-dim":  # Ev != E: the explicit path
        return q, k, random((B, H, S, 3), 6), {}
    if kind == "no-batch":
        return q[0, 0], k[0, 0], v[0, 0], {}
    raise AssertionError(kind)


KINDS = [
    "plain",
    "causal-scale",
    "bool-mask",
    "float-mask-per-head",
    "gqa",
    "value-dim",
    "no-batch",
]


@pytest.mark.parametrize("kind", KINDS)
def test_sdpa_matches_torch_forward_and_gradients(torch, kind):
    q, k, v, kw = _case(kind)
    t_kw = {n: torch.from_numpy(x) if isinstance(x, np.ndarray) else x for n, x in kw.items()}
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **t_kw)
    ct = random(tuple(t_out.shape), 9)
    (t_out * torch.from_numpy(ct)).sum().backward()

    assert_close(sdpa(q, k, v, **kw), t_out, atol=2e-6)
    loss = lambda q, k, v: jnp.sum(sdpa(q, k, v, **kw) * ct)
    out = jax.jit(lambda q, k, v: sdpa(q, k, v, **kw))(q, k, v)
    assert_close(out, t_out, atol=2e-6)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for ours, theirs in zip(grads, (tq.grad, tk.grad, tv.grad)):
        assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_sdpa_dropout_needs_a_key_and_is_inverted_dropout():
    q, k, v, _ = _case("plain")
    with pytest.raises(ValueError, match="needs key_rng="):
        sdpa(q, k, v, dropout_p=0.5)
    # With value = identity rows, the output is the (dropped) attention weights themselves.
    eye = np.broadcast_to(np.eye(S, dtype=np.float32), (B, H, S, S))
    kk = random((B, H, S, S), 2)
    full = np.asarray(sdpa(random((B, H, L, S), 1), kk, eye))
    dropped = np.asarray(
        sdpa(random((B, H, L, S), 1), kk, eye, dropout_p=0.5, key_rng=jax.random.key(0))
    )
    kept = dropped != 0
    assert 0.35 < kept.mean() < 0.65
    np.testing.assert_allclose(dropped[kept], full[kept] / 0.5, rtol=1e-5)


def test_sdpa_causal_and_mask_together_apply_both_as_torch(torch):
    q, k, v, kw = _case("float-mask-per-head")
    t_out = torch.nn.functional.scaled_dot_product_attention(
        *map(torch.from_numpy, (q, k, v)), torch.from_numpy(kw["attn_mask"]), is_causal=True
    )
    for fn in (sdpa, jax.jit(sdpa, static_argnames="is_causal")):
        assert_close(fn(q, k, v, kw["attn_mask"], is_causal=True), t_out, atol=2e-6)


def test_sdpa_refuses_bad_shapes_and_masks():
    q, k, v, _ = _case("plain")
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match=r"broadcastable to \(2, 4, 5, 6\).*got shape \(5, 5\)"):
        sdpa(q, k, v, attn_mask=np.ones((L, L), bool))
    with pytest.raises(ValueError, match=r"same S"):
        sdpa(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="bool or floating"):
        sdpa(q, k, v, attn_mask=np.ones((L, S), np.int32))
