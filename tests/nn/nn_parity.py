"""Helpers comparing jparam layers with their PyTorch counterparts (torch imported lazily)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jparam as jp


def numpy(t: Any) -> np.ndarray:
    """A torch tensor (or anything array-like) as a NumPy array."""
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def load_torch(jm: jp.Module, tm: Any) -> jp.Module:
    """Loads ``tm``'s state_dict into ``jm``, checking that names, order and shapes agree."""
    theirs = tm.state_dict()
    jm = jm.load_state_dict(theirs)
    ours = jm.state_dict()
    assert list(ours) == list(theirs)
    for name, value in ours.items():
        assert tuple(value.shape) == tuple(theirs[name].shape), name
    return jm


def assert_close(ours: Any, theirs: Any, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(ours), numpy(theirs), atol=atol, rtol=rtol)


def assert_grads_match(
    jm: jp.Module,
    tm: Any,
    run_jax: Callable[[jp.Module], jax.Array],
    run_torch: Callable[[Any], Any],
    atol: float = 1e-5,
) -> None:
    """Gradients of ``sum(sin(output))`` w.r.t. every parameter agree, by PyTorch name."""
    import torch

    grads = jax.grad(lambda m: jnp.sum(jnp.sin(run_jax(m))))(jm)
    tm.zero_grad()
    torch.sin(run_torch(tm)).sum().backward()
    ours = {name: p.value for name, p in jp.named_parameters(grads)}
    theirs = {name: p.grad for name, p in tm.named_parameters()}
    assert list(ours) == list(theirs)
    for name, g in ours.items():
        np.testing.assert_allclose(np.asarray(g), numpy(theirs[name]), atol=atol, rtol=1e-4)
