"""`Embedding`: a lookup table from integer ids to vectors, PyTorch's ``nn.Embedding``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter, to_array
from ._utils import check_int, describe, require_key

_AXES = ("vocab", "embed")  # logical sharding names (see jparam.sharding)

__all__ = ["Embedding"]


def _padding_index(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if not isinstance(padding_idx, int) or isinstance(padding_idx, bool):
        raise TypeError(f"Embedding padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx must be in [-{num_embeddings}, {num_embeddings}), got {padding_idx}"
        )
    return padding_idx % num_embeddings


class Embedding(Module):
    """Maps integer ids ``(...)`` to rows of ``weight`` ``(num_embeddings, embedding_dim)``.

    Rows start N(0, 1) as in PyTorch. With ``padding_idx`` that row starts at zero and gets no
    gradient, so padding tokens stay neutral during training. Ids outside
    ``[0, num_embeddings)`` raise when the ids are concrete; under ``jax.jit`` they give NaN
    rows (floating weights) instead of a silently clamped lookup.

    Existing weights come in through `from_pretrained` (or PyTorch's ``_weight=`` argument),
    which needs no key.
    """

    weight: Parameter
    num_embeddings: int = field(static=True)
    embedding_dim: int = field(static=True)
    padding_idx: int | None = field(static=True)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        key: jax.Array | None = None,
        dtype: DTypeLike = jnp.float32,
        _weight: Any = None,
        _freeze: bool = False,
    ) -> None:
        self.num_embeddings = check_int("Embedding", "num_embeddings", num_embeddings, 1)
        self.embedding_dim = check_int("Embedding", "embedding_dim", embedding_dim, 0)
        self.padding_idx = _padding_index(padding_idx, num_embeddings)
        if _weight is not None:  # PyTorch's way in for existing weights (see from_pretrained)
            weight = to_array(_weight, what="Embedding _weight")
            if weight.shape != (num_embeddings, embedding_dim):
                raise ValueError(
                    f"Embedding _weight must have shape ({num_embeddings}, {embedding_dim}), "
                    f"got {tuple(weight.shape)}"
                )
            self.weight = Parameter(weight, trainable=not _freeze, axes=_AXES)
            return
        weight = init.normal(require_key(key, "Embedding"), (num_embeddings, embedding_dim), dtype)
        if self.padding_idx is not None:
            weight = weight.at[self.padding_idx].set(0)
        self.weight = Parameter(weight, axes=_AXES)

    @classmethod
    def from_pretrained(
        cls, embeddings: Any, freeze: bool = True, padding_idx: int | None = None
    ) -> Embedding:
        """An Embedding holding ``embeddings`` (2-D) as they are, frozen unless ``freeze=False``."""
        weight = to_array(embeddings, what="embeddings")
        if weight.ndim != 2:
            raise ValueError(
                f"Embedding.from_pretrained expects a 2-D (num_embeddings, embedding_dim) "
                f"array, got shape {tuple(weight.shape)}"
            )
        return cls(*weight.shape, padding_idx, _weight=weight, _freeze=freeze)

    def __call__(self, ids: jax.Array) -> jax.Array:
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{describe(self)} expects integer ids, got dtype {ids.dtype}")
        if not isinstance(ids, jax.core.Tracer) and ids.size:
            # Concrete ids (eager, or a constant closed over by a jitted function): checked now,
            # evaluated eagerly even while a jit trace is running.
            with jax.ensure_compile_time_eval():
                lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
            if lo < 0 or hi >= self.num_embeddings:
                raise IndexError(
                    f"{describe(self)} got ids in [{lo}, {hi}], expected ids in "
                    f"[0, {self.num_embeddings})"
                )
        weight = self.weight.value
        fill = jnp.nan if jnp.issubdtype(weight.dtype, jnp.inexact) else None
        # Negative ids would wrap around (NumPy's rule); send them out of range instead.
        safe = jnp.where(ids < 0, self.num_embeddings, ids)
        out = jnp.take(weight, safe, axis=0, mode="fill", fill_value=fill)
        if self.padding_idx is not None:
            # Positions holding the padding id contribute no gradient to its row.
            pad = (ids == self.padding_idx)[..., None]
            out = jnp.where(pad, jax.lax.stop_gradient(out), out)
        return out
