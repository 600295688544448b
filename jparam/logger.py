"""`TensorBoardLogger`: parameter and gradient statistics, histograms and scalars for TensorBoard.

Every ``every`` steps it writes the `jp.stats` scalars of each parameter and gradient by name,
the global norms, a histogram of each, and the scalars passed; on other steps `log` returns at
once, so the loop never waits for the device. A logging step computes everything on the device
in one jitted computation and fetches only those few small arrays, never the parameters. Files
are TensorBoard event files written by ``tensorboardX`` (``pip install 'jparam[monitoring]'``).
The guide is the TensorBoard section of ``docs/guides/monitoring.md``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .monitoring import STATS, global_norm, named_arrays, stats

__all__ = ["TensorBoardLogger"]


def _tensorboardx() -> Any:
    try:
        import tensorboardX
        from tensorboardX.proto import summary_pb2
    except ImportError:
        raise ImportError(
            "jp.TensorBoardLogger writes event files with tensorboardX, which is not installed; "
            "pip install 'jparam[monitoring]' (or tensorboardX)"
        ) from None
    return tensorboardX, summary_pb2


class TensorBoardLogger:
    """Writes `jp.stats`, histograms and scalars as TensorBoard event files every ``every`` steps.

    ``TensorBoardLogger(logdir, every=100, *, stats=STATS, histograms=True, bins=30,
    include_buffers=False, flush_secs=30)``. ``stats`` picks which of `jp.monitoring.STATS` to
    write; histograms have ``bins`` equal-width buckets from min to max (``numpy.histogram``'s);
    ``include_buffers=True`` adds Buffers (BatchNorm statistics) to the ``params`` trees. A
    step is logged when ``step % every == 0`` (step 0 included) or with ``force=True``.
    Non-finite entries are left out of histograms (the ``nonfinite`` scalar counts them).
    Close it (or use ``with``) to flush the last events.
    """

    def __init__(
        self,
        logdir: str,
        every: int = 100,
        *,
        stats: Sequence[str] = STATS,
        histograms: bool = True,
        bins: int = 30,
        include_buffers: bool = False,
        flush_secs: int = 30,
    ) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"TensorBoardLogger: every must be a positive int, got {every!r}")
        if isinstance(stats, str):
            raise TypeError(f"TensorBoardLogger: stats must be a sequence of names, got {stats!r}")
        unknown = [s for s in stats if s not in STATS]
        if unknown:
            raise ValueError(
                f"TensorBoardLogger: unknown statistics {unknown}; choose from {list(STATS)}"
            )
        self.every = every
        self.stats = tuple(stats)
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"TensorBoardLogger: bins must be a positive int, got {bins!r}")
        self.histograms = bool(histograms)
        self.bins = bins
        self.include_buffers = bool(include_buffers)
        tensorboardx, self._proto = _tensorboardx()
        self.writer = tensorboardx.FileWriter(str(logdir), flush_secs=flush_secs)
        self.logdir = self.writer.get_logdir()

    def should_log(self, step: int) -> bool:
        """Whether `log` writes at ``step`` (``step % every == 0``)."""
        return int(step) % self.every == 0

    def log(
        self,
        step: int,
        *,
        params: Any = None,
        grads: Any = None,
        scalars: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Writes statistics of ``params`` and ``grads`` and the ``scalars`` at ``step``.

        ``params`` and ``grads`` are anything `jp.stats` takes (a model, `jp.grad`'s result, a
        `jp.split` dict); ``scalars`` maps tags to scalar arrays or numbers. Returns whether it
        wrote: on a step that is not logged (and without ``force``) nothing is read, not even
        the arguments' shapes.
        """
        if not (force or self.should_log(step)):
            return False
        step = int(step)
        trees = {k: t for k, t in (("params", params), ("grads", grads)) if t is not None}
        include = {k: self.include_buffers and k == "params" for k in trees}
        names = {k: [n for n, _ in named_arrays(t, include[k])] for k, t in trees.items()}
        device = _summarize(trees, tuple(include.items()), self.bins if self.histograms else 0)
        # the one wait for the device, on logging steps only: a few small arrays
        host, user = jax.device_get((device, dict(scalars or {})))
        # one event per logging step, holding every value (one write, one queue operation)
        Value, Histogram = self._proto.Summary.Value, self._proto.HistogramProto
        values = [Value(tag=tag, simple_value=_scalar(tag, v)) for tag, v in user.items()]
        picked = [STATS.index(key) for key in self.stats]
        for prefix, (table, norm, hist, counts) in host.items():
            values.append(Value(tag=f"global_norm/{prefix}", simple_value=float(norm)))
            for name, row in zip(names[prefix], table):
                for key, i in zip(self.stats, picked):
                    values.append(Value(tag=f"{prefix}/{name}/{key}", simple_value=float(row[i])))
            for name, h, c in zip(names[prefix], hist, counts):
                if not h.size:  # histograms=False
                    break
                lo, hi, total, total_sq, num, left = (float(v) for v in h[:6])
                if num == 0:  # nothing finite to draw
                    continue
                histogram = Histogram(
                    min=lo,
                    max=hi,
                    num=num,
                    sum=total,
                    sum_squares=total_sq,
                    # TensorBoard keeps right edges only: an empty first bucket holds the left
                    bucket_limit=[left, *h[6:].tolist()],
                    bucket=[0, *c.tolist()],
                )
                values.append(Value(tag=f"{prefix}/{name}", histo=histogram))
        self.writer.add_summary(self._proto.Summary(value=values), step)
        return True

    def flush(self) -> None:
        """Writes buffered events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorBoardLogger({self.logdir!r}, every={self.every})"


def _histogram(x: jax.Array, bins: int) -> tuple[jax.Array, jax.Array]:
    """On the device: ``[min, max, sum, sum of squares, count, left edge, right edges...]``
    and the bucket counts, over the finite entries.

    ``bins`` equal-width buckets from min to max, the last one closed, exactly as
    ``numpy.histogram`` draws them (a constant array gets the range ``value -+ 0.5``).
    """
    x = jnp.ravel(x).astype(jnp.float32)
    finite = jnp.isfinite(x)
    lo = jnp.min(jnp.where(finite, x, jnp.inf), initial=jnp.inf)
    hi = jnp.max(jnp.where(finite, x, -jnp.inf), initial=-jnp.inf)
    num = jnp.sum(finite, dtype=jnp.int32)
    safe = jnp.where(finite, x, 0.0)
    left = jnp.where(hi > lo, lo, lo - 0.5)
    width = jnp.where(hi > lo, hi - lo, 1.0)
    index = jnp.clip(jnp.floor((safe - left) / width * bins), 0, bins - 1).astype(jnp.int32)
    counts = jnp.zeros(bins, jnp.int32).at[index].add(finite.astype(jnp.int32))
    edges = left + width * jnp.arange(1, bins + 1, dtype=jnp.float32) / bins
    head = [lo, hi, jnp.sum(safe), jnp.sum(safe * safe), num.astype(jnp.float32), left]
    return jnp.concatenate([jnp.stack(head), edges]), counts


@functools.partial(jax.jit, static_argnums=(1, 2))
def _summarize(trees: dict[str, Any], include: tuple, bins: int) -> dict[str, tuple]:
    """Everything a logging step writes, per tree, as four arrays: one fused computation.

    ``(stats [n, len(STATS)] float32, global norm, histograms [n, 6 + bins] float32, counts
    [n, bins] int32)`` with ``n`` the arrays `jp.stats` names, in its order.
    """
    out = {}
    for prefix, inc in include:
        tree = trees[prefix]
        table = stats(tree, include_buffers=inc)
        arrays = [x for _, x in named_arrays(tree, inc)]
        rows = [jnp.stack([v[k].astype(jnp.float32) for k in STATS]) for v in table.values()]
        hists = [_histogram(x, bins) for x in arrays] if bins else []
        n = len(arrays)
        out[prefix] = (
            jnp.stack(rows) if rows else jnp.zeros((0, len(STATS)), jnp.float32),
            global_norm(tree, include_buffers=inc),
            jnp.stack([h for h, _ in hists]) if hists else jnp.zeros((n, 0), jnp.float32),
            jnp.stack([c for _, c in hists]) if hists else jnp.zeros((n, 0), jnp.int32),
        )
    return out


def _scalar(tag: str, value: Any) -> float:
    if isinstance(value, numbers.Real):
        return float(value)
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(
            f"TensorBoardLogger: scalar {tag!r} must be a single number, got "
            f"{arr.dtype} of shape {arr.shape}"
        )
    return float(arr.reshape(()))
