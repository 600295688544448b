"""Fixtures for the nn tests: an optional PyTorch, and a fixed key."""

import jax
import pytest


@pytest.fixture
def torch():
    """PyTorch, or a skip when it is not installed (the rest of the suite runs without it)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


@pytest.fixture
def key():
    return jax.random.key(0)
