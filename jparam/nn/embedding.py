"""`Embedding` and `EmbeddingBag`: lookup tables from integer ids to vectors, as in PyTorch.

PyTorch's ``max_norm`` rescales the looked-up rows of ``weight`` *in place* (under ``no_grad``),
so later lookups see the rescaled rows. jparam cannot mutate: each call returns the rescaled
rows, and in training mode the layer with the rescaled rows written into its ``weight`` comes
back through `nn.stateful_call`, like BatchNorm's running statistics::

    emb, ids = nn.Embedding(10, 4, max_norm=1.0, key=jax.random.key(0)), jnp.array([1, 2])
    out, emb = nn.stateful_call(emb, ids)   # emb.weight now holds the rescaled rows
    assert jnp.allclose(jnp.linalg.norm(emb.weight.value[ids], axis=-1), 1.0, atol=1e-4)

so a training loop sees the same weights as PyTorch's. In evaluation mode nothing is written
back (outputs are the same either way: rescaling twice changes nothing). Gradients follow
PyTorch's: the rescaling is no part of the graph, so a row's gradient is the plain sum of its
output gradients (divided by the id's count in the batch with ``scale_grad_by_freq=True``).

``sparse=True`` asks PyTorch for sparse gradients; JAX has none, so it is accepted (ported code
runs unchanged), stored, and gradients stay dense.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter, to_array
from ..stateful import update_state
from ._utils import check_int, describe, require_key

_AXES = ("vocab", "embed")  # logical sharding names (see jparam.sharding)
_MODES = ("sum", "mean", "max")

__all__ = ["Embedding", "EmbeddingBag"]


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


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _max_norm(layer: str, max_norm: Any) -> float | None:
    """``None`` or a non-negative number (a negative one would flip the rows' signs)."""
    if max_norm is None:
        return None
    if not _is_real(max_norm):
        raise TypeError(f"{layer} max_norm must be a number or None, got {max_norm!r}")
    if not max_norm >= 0:
        raise ValueError(f"{layer} max_norm must be non-negative, got max_norm={max_norm!r}")
    return float(max_norm)


def _norm_type(layer: str, norm_type: Any) -> float:
    """The p of the p-norm ``max_norm`` bounds: a positive number, ``inf`` allowed."""
    if not _is_real(norm_type):
        raise TypeError(f"{layer} norm_type must be a number, got {norm_type!r}")
    if not norm_type > 0:
        raise ValueError(
            f"{layer} norm_type must be positive (the p of a p-norm), got norm_type={norm_type!r}"
        )
    return float(norm_type)


def _flag(layer: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer} {name} must be True or False, got {value!r}")
    return bool(value)


def _initial_weight(
    layer: str,
    shape: tuple[int, int],
    padding_idx: int | None,
    key: Any,
    dtype: DTypeLike,
    given: Any,
) -> tuple[jax.Array, bool]:
    """``(weight, given)``: PyTorch's ``_weight`` as it is, else N(0, 1) with a zero padding row."""
    if given is not None:
        weight = to_array(given, what=f"{layer} _weight")
        if weight.shape != shape:
            raise ValueError(f"{layer} _weight must have shape {shape}, got {tuple(weight.shape)}")
        return weight, True
    weight = init.normal(require_key(key, layer), shape, dtype)
    if padding_idx is not None:
        weight = weight.at[padding_idx].set(0)
    return weight, False


def _pretrained(embeddings: Any, what: str) -> jax.Array:
    weight = to_array(embeddings, what="embeddings")
    if weight.ndim != 2:
        raise ValueError(
            f"{what}.from_pretrained expects a 2-D (num_embeddings, embedding_dim) array, "
            f"got shape {tuple(weight.shape)}"
        )
    return weight


def _check_ids(layer: Module, ids: Any, n: int) -> jax.Array:
    """Integer ids; concrete ones (eager, or closed over by a jitted function) range-checked."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{describe(layer)} expects integer ids, got dtype {ids.dtype}")
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        with jax.ensure_compile_time_eval():  # evaluated eagerly even while a jit trace runs
            lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
        if lo < 0 or hi >= n:
            raise IndexError(f"{describe(layer)} got ids in [{lo}, {hi}], expected ids in [0, {n})")
    return ids


def _lookup(layer: Any, weight: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(rows, new_weight)``: the rows of ``ids`` with PyTorch's ``max_norm`` and gradients.

    Out-of-range ids (possible only under jit) give NaN rows for floating weights, never a
    clamped lookup. ``new_weight`` has the rescaled rows written in (``weight`` itself without
    ``max_norm``). The padding row is not masked here.
    """
    n = layer.num_embeddings
    fill = jnp.nan if jnp.issubdtype(weight.dtype, jnp.inexact) else None
    safe = jnp.where(ids < 0, n, ids)  # negative ids would wrap around; send them out of range
    rows = jnp.take(weight, safe, axis=0, mode="fill", fill_value=fill)
    if layer.max_norm is None and not layer.scale_grad_by_freq:
        return rows, weight
    value, new_weight = rows, weight
    if layer.max_norm is not None:
        norm = jnp.linalg.norm(rows, ord=layer.norm_type, axis=-1, keepdims=True)
        scale = jnp.where(norm > layer.max_norm, layer.max_norm / (norm + 1e-7), 1.0)
        value = jax.lax.stop_gradient(rows * scale.astype(rows.dtype))
        new_weight = jax.lax.stop_gradient(weight).at[safe].set(value, mode="drop")
    # The value is `value`; the gradient reaches `weight` as if there were no rescaling, divided
    # by each id's count in the batch with scale_grad_by_freq (PyTorch's backward).
    delta = rows - jax.lax.stop_gradient(rows)
    if layer.scale_grad_by_freq:
        counts = jnp.zeros((n,), rows.dtype).at[safe.ravel()].add(1, mode="drop")
        delta = delta / jnp.take(counts, safe, mode="fill", fill_value=1)[..., None]
    return jax.lax.stop_gradient(value) + delta, new_weight


def _no_padding_gradient(out: jax.Array, ids: jax.Array, padding_idx: int | None) -> jax.Array:
    """Positions holding the padding id contribute no gradient to its row."""
    if padding_idx is None:
        return out
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(out), out)


class Embedding(Module):
    """Maps integer ids ``(...)`` to rows of ``weight`` ``(num_embeddings, embedding_dim)``.

    Rows start N(0, 1) as in PyTorch. With ``padding_idx`` that row starts at zero and gets no
    gradient, so padding tokens stay neutral during training. Ids outside
    ``[0, num_embeddings)`` raise when the ids are concrete; under ``jax.jit`` they give NaN
    rows (floating weights) instead of a silently clamped lookup.

    ``max_norm`` rescales looked-up rows whose ``norm_type``-norm exceeds it; in training mode
    the rescaled weight comes back through `nn.stateful_call` (see `jparam.nn.embedding`).
    ``scale_grad_by_freq`` divides each row's gradient by its id's count in the batch;
    ``sparse`` is accepted and means nothing in JAX (gradients are dense).

    Existing weights come in through `from_pretrained` (or PyTorch's ``_weight=`` argument),
    which needs no key.
    """

    weight: Parameter
    num_embeddings: int = field(static=True)
    embedding_dim: int = field(static=True)
    padding_idx: int | None = field(static=True)
    max_norm: float | None = field(static=True)
    norm_type: float = field(static=True)
    scale_grad_by_freq: bool = field(static=True)
    sparse: bool = field(static=True)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        key: jax.Array | None = None,
        dtype: DTypeLike = jnp.float32,
        _weight: Any = None,
        _freeze: bool = False,
    ) -> None:
        self.num_embeddings = check_int("Embedding", "num_embeddings", num_embeddings, 1)
        self.embedding_dim = check_int("Embedding", "embedding_dim", embedding_dim, 0)
        self.padding_idx = _padding_index(padding_idx, num_embeddings)
        self.max_norm = _max_norm("Embedding", max_norm)
        self.norm_type = _norm_type("Embedding", norm_type)
        self.scale_grad_by_freq = _flag("Embedding", "scale_grad_by_freq", scale_grad_by_freq)
        self.sparse = _flag("Embedding", "sparse", sparse)
        shape = (num_embeddings, embedding_dim)
        weight, given = _initial_weight("Embedding", shape, self.padding_idx, key, dtype, _weight)
        self.weight = Parameter(weight, trainable=not (given and _freeze), axes=_AXES)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Any,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> Embedding:
        """An Embedding holding ``embeddings`` (2-D) as they are, frozen unless ``freeze=False``."""
        weight = _pretrained(embeddings, "Embedding")
        num, dim = weight.shape
        options = (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
        return cls(num, dim, *options, _weight=weight, _freeze=freeze)

    def _forward_train(self, ids: jax.Array) -> tuple[jax.Array, Embedding]:
        """``(rows, layer)``: with ``max_norm``, the layer holds the rescaled rows (PyTorch's
        in-place update); otherwise it is returned as is."""
        ids = _check_ids(self, ids, self.num_embeddings)
        out, weight = _lookup(self, self.weight.value, ids)
        out = _no_padding_gradient(out, ids, self.padding_idx)
        if self.max_norm is None:
            return out, self
        return out, self.replace(weight=self.weight.replace(weight))

    def __call__(self, ids: jax.Array) -> jax.Array:
        """The rows of ``ids``: shape ``ids.shape + (embedding_dim,)``."""
        if self.training and self.max_norm is not None:
            return update_state(self, lambda m: m._forward_train(ids))
        return self._forward_train(ids)[0]


def _check_offsets(layer: EmbeddingBag, offsets: Any, length: int) -> jax.Array:
    """1-D integer offsets; concrete ones must start at 0, not decrease and stay in the input."""
    offsets = jnp.asarray(offsets)
    if offsets.ndim != 1 or not jnp.issubdtype(offsets.dtype, jnp.integer):
        raise ValueError(
            f"{describe(layer)} expects offsets as a 1-D integer array (where each bag starts "
            f"in the 1-D input), got shape {tuple(offsets.shape)} and dtype {offsets.dtype}"
        )
    if layer.include_last_offset and offsets.size == 0:
        raise ValueError(
            f"{describe(layer)} with include_last_offset=True needs at least one offset (the "
            "end of the last bag), got none"
        )
    if isinstance(offsets, jax.core.Tracer) or not offsets.size:
        return offsets
    with jax.ensure_compile_time_eval():
        values = np.asarray(offsets)
    if values[0] != 0 or (np.diff(values) < 0).any() or values[-1] > length:
        raise ValueError(
            f"{describe(layer)} expects offsets starting at 0, non-decreasing and at most the "
            f"input's length {length}, got {values.tolist()}"
        )
    if layer.include_last_offset and values[-1] != length:
        # PyTorch's contract (CSR); its CPU kernels disagree with each other past it.
        raise ValueError(
            f"{describe(layer)} with include_last_offset=True expects the last offset to be the "
            f"input's length {length}, got {values.tolist()}"
        )
    return offsets


def _bags(layer: EmbeddingBag, ids: jax.Array, offsets: Any) -> tuple[jax.Array, jax.Array, int]:
    """``(flat_ids, bag_of_each_id, number_of_bags)`` for 2-D ids or 1-D ids with offsets."""
    if ids.ndim == 2:
        if offsets is not None:
            raise ValueError(
                f"{describe(layer)} got 2-D input (one bag per row) and offsets; pass offsets "
                "only with 1-D input"
            )
        bags, length = ids.shape
        return ids.ravel(), jnp.repeat(jnp.arange(bags), length), bags
    if ids.ndim != 1:
        raise ValueError(
            f"{describe(layer)} expects 2-D input (B, N) or 1-D input with offsets, got shape "
            f"{tuple(ids.shape)}"
        )
    if offsets is None:
        raise ValueError(
            f"{describe(layer)} got 1-D input without offsets; pass offsets (where each bag "
            "starts) or 2-D input (B, N)"
        )
    offsets = _check_offsets(layer, offsets, ids.shape[0])
    bags = offsets.shape[0] - (1 if layer.include_last_offset else 0)
    # Under jit, ids past the last offset with include_last_offset land in bag `bags`: dropped.
    where = jnp.searchsorted(offsets, jnp.arange(ids.shape[0]), side="right") - 1
    return ids, where, bags


def _reduce(mode: str, rows: jax.Array, keep: jax.Array, where: jax.Array, bags: int) -> jax.Array:
    """Each bag's sum, mean or max of its kept rows; zeros for an empty bag, as in PyTorch."""
    keep = keep[:, None]
    if mode == "max":
        low = jnp.asarray(-jnp.inf, rows.dtype)
        top = jax.ops.segment_max(jnp.where(keep, rows, low), where, bags)
        count = jax.ops.segment_sum(keep.astype(jnp.int32), where, bags)
        return jnp.where(count > 0, top, 0)
    total = jax.ops.segment_sum(jnp.where(keep, rows, 0), where, bags)
    if mode == "sum":
        return total
    count = jax.ops.segment_sum(keep.astype(rows.dtype), where, bags)
    return total / jnp.maximum(count, 1)


class EmbeddingBag(Module):
    """Sums, averages or takes the max of bags of embeddings, PyTorch's ``nn.EmbeddingBag``.

    Bags are the rows of a 2-D input ``(B, N)``, or slices of a 1-D input starting at
    ``offsets`` (with ``include_last_offset=True`` the last offset ends the last bag); the
    output is ``(B, embedding_dim)``. ``per_sample_weights`` (input's shape, ``mode="sum"``
    only) scales each row before the sum. Ids equal to ``padding_idx`` are left out of their bag
    (not counted by ``mean``); an empty bag gives zeros. Bags are reduced with segment sums, so
    the layer runs under ``jax.jit``; offsets are checked when concrete (under jit, they must
    start at 0 and not decrease, as PyTorch requires). ``max_norm``, ``scale_grad_by_freq`` and
    ``sparse`` behave as in `Embedding`. ``scale_grad_by_freq`` divides by each id's count
    in the whole input, as PyTorch documents; PyTorch 2.13's CPU kernel divides some rows by
    another id's count (pytorch/pytorch#190063, fixed after 2.13).
    """

    weight: Parameter
    num_embeddings: int = field(static=True)
    embedding_dim: int = field(static=True)
    max_norm: float | None = field(static=True)
    norm_type: float = field(static=True)
    scale_grad_by_freq: bool = field(static=True)
    mode: str = field(static=True)
    sparse: bool = field(static=True)
    include_last_offset: bool = field(static=True)
    padding_idx: int | None = field(static=True)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Any = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        *,
        key: jax.Array | None = None,
        dtype: DTypeLike = jnp.float32,
        _freeze: bool = False,
    ) -> None:
        name = "EmbeddingBag"
        self.num_embeddings = check_int(name, "num_embeddings", num_embeddings, 1)
        self.embedding_dim = check_int(name, "embedding_dim", embedding_dim, 0)
        self.max_norm = _max_norm(name, max_norm)
        self.norm_type = _norm_type(name, norm_type)
        self.scale_grad_by_freq = _flag(name, "scale_grad_by_freq", scale_grad_by_freq)
        if mode not in _MODES:
            raise ValueError(f"{name} mode must be one of {_MODES}, got mode={mode!r}")
        if mode == "max" and self.scale_grad_by_freq:
            raise ValueError(
                f"{name} mode='max' does not support scale_grad_by_freq=True (neither does "
                "PyTorch); use mode='sum' or 'mean', or drop scale_grad_by_freq"
            )
        self.mode = mode
        self.sparse = _flag(name, "sparse", sparse)
        self.include_last_offset = _flag(name, "include_last_offset", include_last_offset)
        self.padding_idx = _padding_index(padding_idx, num_embeddings)
        shape = (num_embeddings, embedding_dim)
        weight, given = _initial_weight(name, shape, self.padding_idx, key, dtype, _weight)
        self.weight = Parameter(weight, trainable=not (given and _freeze), axes=_AXES)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Any,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> EmbeddingBag:
        """An EmbeddingBag holding ``embeddings`` (2-D) as they are, frozen unless
        ``freeze=False``."""
        weight = _pretrained(embeddings, "EmbeddingBag")
        num, dim = weight.shape
        options = (max_norm, norm_type, scale_grad_by_freq, mode, sparse, weight)
        return cls(num, dim, *options, include_last_offset, padding_idx, _freeze=freeze)

    def _weights(self, per_sample_weights: Any, ids: jax.Array) -> jax.Array | None:
        if per_sample_weights is None:
            return None
        if self.mode != "sum":
            raise ValueError(
                f"{describe(self)} got per_sample_weights, which only mode='sum' supports "
                "(as in PyTorch)"
            )
        weights = jnp.asarray(per_sample_weights)
        if weights.shape != ids.shape or not jnp.issubdtype(weights.dtype, jnp.floating):
            raise ValueError(
                f"{describe(self)} expects per_sample_weights as floats of the input's shape "
                f"{tuple(ids.shape)}, got shape {tuple(weights.shape)} and dtype {weights.dtype}"
            )
        return weights.ravel()

    def _forward_train(
        self, input: jax.Array, offsets: Any = None, per_sample_weights: Any = None
    ) -> tuple[jax.Array, EmbeddingBag]:
        """``(bags, layer)``: with ``max_norm``, the layer holds the rescaled rows (PyTorch's
        in-place update); otherwise it is returned as is."""
        ids = _check_ids(self, input, self.num_embeddings)
        weights = self._weights(per_sample_weights, ids)
        flat, where, bags = _bags(self, ids, offsets)
        rows, weight = _lookup(self, self.weight.value, flat)
        if weights is not None:
            rows = rows * weights[:, None]
        keep = jnp.ones(flat.shape, bool) if self.padding_idx is None else flat != self.padding_idx
        out = _reduce(self.mode, rows, keep, where, bags)
        if self.max_norm is None:
            return out, self
        return out, self.replace(weight=self.weight.replace(weight))

    def __call__(
        self, input: jax.Array, offsets: Any = None, per_sample_weights: Any = None
    ) -> jax.Array:
        """One row per bag: ``(B, embedding_dim)``."""
        if self.training and self.max_norm is not None:
            return update_state(
                self, lambda m: m._forward_train(input, offsets, per_sample_weights)
            )
        return self._forward_train(input, offsets, per_sample_weights)[0]
