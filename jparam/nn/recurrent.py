"""Recurrent layers: `RNN`, `LSTM`, `GRU` and their cells, with PyTorch's names, layouts and init.

Parameters are named as in PyTorch (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``bias_ih_l0``,
``weight_hr_l0`` for LSTM projections), gates stacked in PyTorch's order (LSTM ``i, f, g, o``;
GRU ``r, z, n``), so ``model.load_state_dict(torch_rnn.state_dict())`` works as it is. Every
weight and bias starts U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as in PyTorch.

Time steps run in one `jax.lax.scan` per layer and direction, so compile time does not grow
with the sequence length. The input-to-hidden products of all steps are computed before the
scan in one matrix product; only the hidden-to-hidden part runs step by step.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .. import init
from ..module import Module, field
from ..parameter import Parameter
from ._utils import (
    OUT_AXES,
    WEIGHT_AXES,
    check_int,
    check_probability,
    describe,
    fields_subclass,
    require_key,
    shape_error,
)
from .dropout_layer import dropout as _dropout

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_NONLINEARITIES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}


# -- arguments and parameters -----------------------------------------------------------------


def _check_bool(layer: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{layer} {name} must be a bool, got {value!r}")
    return value


def _mode(layer: str, nonlinearity: Any) -> str:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"{layer} nonlinearity must be 'tanh' or 'relu', got nonlinearity={nonlinearity!r}"
        )
    return _NONLINEARITIES[nonlinearity]


def _no_projection(layer: str, proj_size: Any) -> None:
    if proj_size != 0:
        raise ValueError(
            f"{layer} proj_size is only supported by LSTM, got proj_size={proj_size!r}; "
            "use nn.LSTM(..., proj_size=...) or leave proj_size at 0"
        )


def _uniform(key: jax.Array, shape: tuple[int, ...], hidden: int, dtype: DTypeLike) -> Parameter:
    """PyTorch's recurrent init, U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    bound = 1 / math.sqrt(hidden)
    axes = WEIGHT_AXES if len(shape) == 2 else OUT_AXES
    return Parameter(init.uniform(key, shape, dtype, -bound, bound), axes=axes)


def _cell_shapes(
    gates: int, hidden: int, in_size: int, out_size: int, bias: bool, proj: int
) -> list[tuple[str, tuple[int, ...]]]:
    """Names (without suffix) and shapes of one layer and direction, in PyTorch's order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("weight_ih", (gates * hidden, in_size)),
        ("weight_hh", (gates * hidden, out_size)),
    ]
    if bias:
        shapes += [("bias_ih", (gates * hidden,)), ("bias_hh", (gates * hidden,))]
    if proj:
        shapes.append(("weight_hr", (proj, hidden)))
    return shapes


# -- one step of each cell ----------------------------------------------------------------------


def _step(mode: str, gi: jax.Array, h: jax.Array, c: Any, w: dict[str, jax.Array]) -> tuple:
    """One time step from the precomputed input part ``gi`` (``x @ W_ih.T + b_ih``)."""
    gh = h @ w["weight_hh"].T
    if "bias_hh" in w:
        gh = gh + w["bias_hh"]
    if mode == "GRU":
        i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(i_r + h_r)
        z = jax.nn.sigmoid(i_z + h_z)
        n = jnp.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, c
    if mode == "LSTM":
        i, f, g, o = jnp.split(gi + gh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if "weight_hr" in w:
            h = h @ w["weight_hr"].T
        return h, c
    act = jnp.tanh if mode == "RNN_TANH" else jax.nn.relu
    return act(gi + gh), c


def _input_part(x: jax.Array, w: dict[str, jax.Array]) -> jax.Array:
    gi = x @ w["weight_ih"].T
    return gi + w["bias_ih"] if "bias_ih" in w else gi


def _scan(
    mode: str, x: jax.Array, h: jax.Array, c: Any, w: dict[str, jax.Array], reverse: bool
) -> tuple[jax.Array, jax.Array, Any]:
    """Runs one layer and direction over time-major ``x``: ``(outputs, h_n, c_n)``.

    The states take the dtype the step computes in (JAX's promotion of input, states and
    weights), so the scan's carry keeps one dtype.
    """
    dtype = jnp.result_type(x, h, *w.values(), *([] if c is None else [c]))
    h, c = h.astype(dtype), None if c is None else c.astype(dtype)

    def body(carry, gi):
        h, c = _step(mode, gi, *carry, w)
        return (h, c), h

    (h, c), out = jax.lax.scan(body, (h, c), _input_part(x, w), reverse=reverse)
    return out, h, c


# -- the multi-layer modules -----------------------------------------------------------------


class _RNNBase(Module):
    """Shared by `RNN`, `LSTM` and `GRU`: building, state checks, the layer loop."""

    mode: str = field(static=True)
    input_size: int = field(static=True)
    hidden_size: int = field(static=True)
    num_layers: int = field(static=True)
    bias: bool = field(static=True)
    batch_first: bool = field(static=True)
    dropout: float = field(static=True)
    bidirectional: bool = field(static=True)
    proj_size: int = field(static=True)
    _jp_keys: ClassVar[tuple[str, ...]] = ()

    def _build(self, mode: str, args: dict[str, Any], key: jax.Array, dtype: DTypeLike) -> None:
        """Inside ``__init__``: checks the arguments, switches to the class with the parameter
        names of this layout and initialises them."""
        layer = type(self).__name__
        require_key(key, layer)
        self.mode = mode
        self.input_size = check_int(layer, "input_size", args["input_size"], 1)
        self.hidden_size = check_int(layer, "hidden_size", args["hidden_size"], 1)
        self.num_layers = check_int(layer, "num_layers", args["num_layers"], 1)
        self.bias = _check_bool(layer, "bias", args["bias"])
        self.batch_first = _check_bool(layer, "batch_first", args["batch_first"])
        self.dropout = float(check_probability(layer, "dropout", args["dropout"]))
        self.bidirectional = _check_bool(layer, "bidirectional", args["bidirectional"])
        self.proj_size = check_int(layer, "proj_size", args["proj_size"], 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"{layer} proj_size must be smaller than hidden_size, got "
                f"proj_size={self.proj_size} and hidden_size={self.hidden_size}"
            )
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"{layer} applies dropout between recurrent layers only, so dropout="
                f"{self.dropout} has no effect with num_layers=1",
                stacklevel=4,
            )
        shapes = self._shapes()
        object.__setattr__(
            self, "__class__", fields_subclass(type(self), tuple(n for n, _ in shapes))
        )
        keys = jax.random.split(key, len(shapes))
        for k, (name, shape) in zip(keys, shapes):
            setattr(self, name, _uniform(k, shape, self.hidden_size, dtype))

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        gates, out = _GATES[self.mode], self._out_size
        shapes = []
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else out * self._directions
            for suffix in ("", "_reverse")[: self._directions]:
                cell = _cell_shapes(
                    gates, self.hidden_size, in_size, out, self.bias, self.proj_size
                )
                shapes += [(f"{n}_l{layer}{suffix}", s) for n, s in cell]
        return shapes

    def _weights(self, layer: int, suffix: str) -> dict[str, jax.Array]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        d = self.__dict__
        return {n: d[f"{n}_l{layer}{suffix}"].value for n in names if f"{n}_l{layer}{suffix}" in d}

    def _input(self, x: Any) -> tuple[jax.Array, bool]:
        """``x`` time-major ``(L, N, input_size)`` and whether it came batched."""
        x = jnp.asarray(x)
        n = "N, L" if self.batch_first else "L, N"
        expected = f"({n}, {self.input_size}) or unbatched (L, {self.input_size})"
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise shape_error(self, expected, x)
        if x.ndim == 2:
            return x[:, None], False
        return (jnp.swapaxes(x, 0, 1) if self.batch_first else x), True

    def _state(self, s: Any, name: str, size: int, batch: int, batched: bool, dtype) -> jax.Array:
        """An initial state as ``(num_layers * D, N, size)``; zeros when ``s`` is ``None``."""
        stacked = self.num_layers * self._directions
        if s is None:
            return jnp.zeros((stacked, batch, size), dtype)
        s = jnp.asarray(s)
        want = (stacked, batch, size) if batched else (stacked, size)
        if s.shape != want:
            kind = "batched" if batched else "unbatched"
            raise ValueError(
                f"{describe(self)} expected {name} of shape {want} for this {kind} input, got "
                f"shape {s.shape}: states stack num_layers * num_directions first"
            )
        return s if batched else s[:, None]

    def _run(self, x: Any, h0: Any, c0: Any, key: jax.Array | None) -> tuple:
        """The layer loop: ``(output, h_n, c_n)`` in the caller's layout (``c_n`` for LSTM)."""
        x, batched = self._input(x)
        batch, dtype = x.shape[1], x.dtype
        h0 = self._state(h0, "h_0", self._out_size, batch, batched, dtype)
        if self.mode == "LSTM":
            c0 = self._state(c0, "c_0", self.hidden_size, batch, batched, dtype)
        drop = self.training and self.dropout > 0 and self.num_layers > 1
        if drop and key is None:
            raise ValueError(
                f"{describe(self)} is in training mode with dropout between layers and needs "
                "a PRNG key: call it as layer(x, key=key), or call `.eval()` for inference."
            )
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer > 0 and drop:
                assert key is not None  # checked above
                key, sub = jax.random.split(key)
                x = _dropout(x, self.dropout, sub)
            outs = []
            for d, suffix in enumerate(("", "_reverse")[: self._directions]):
                i = layer * self._directions + d
                c = c0[i] if self.mode == "LSTM" else None
                out, h, c = _scan(self.mode, x, h0[i], c, self._weights(layer, suffix), d == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        h_n = jnp.stack(hs)
        c_n = jnp.stack(cs) if self.mode == "LSTM" else None
        if not batched:
            return x[:, 0], h_n[:, 0], None if c_n is None else c_n[:, 0]
        return (jnp.swapaxes(x, 0, 1) if self.batch_first else x), h_n, c_n


class RNN(_RNNBase):
    """An Elman RNN, ``h_t = tanh(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh)``, PyTorch's
    ``nn.RNN`` (``nonlinearity="relu"`` for ReLU).

    Input ``(L, N, input_size)`` (``(N, L, input_size)`` with ``batch_first``) or unbatched
    ``(L, input_size)``; ``h_0`` ``(num_layers * D, N, hidden_size)``, zeros if omitted.
    Returns ``(output, h_n)`` as PyTorch does. With ``dropout > 0`` in training mode, the call
    needs ``key=``::

        rnn = nn.RNN(4, 8, num_layers=2, key=jax.random.key(0))
        output, h_n = rnn(jnp.ones((5, 3, 4)))      # (seq, batch, features)
        assert output.shape == (5, 3, 8) and h_n.shape == (2, 3, 8)
    """

    nonlinearity: str = field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        _no_projection("RNN", proj_size)
        self.nonlinearity = nonlinearity
        self._build(_mode("RNN", nonlinearity), locals(), key, dtype)

    def __call__(
        self, input: jax.Array, hx: jax.Array | None = None, *, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        output, h_n, _ = self._run(input, hx, None, key)
        return output, h_n


class GRU(_RNNBase):
    """A gated recurrent unit, PyTorch's ``nn.GRU``: gates ``r, z, n`` stacked in that order,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    Shapes and return value as `RNN`: ``output, h_n = gru(x, h_0)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        _no_projection("GRU", proj_size)
        self._build("GRU", locals(), key, dtype)

    def __call__(
        self, input: jax.Array, hx: jax.Array | None = None, *, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        output, h_n, _ = self._run(input, hx, None, key)
        return output, h_n


class LSTM(_RNNBase):
    """A long short-term memory network, PyTorch's ``nn.LSTM``: gates ``i, f, g, o``.

    ``output, (h_n, c_n) = lstm(x, (h_0, c_0))``; both states default to zeros. With
    ``proj_size > 0`` each layer projects ``h`` by ``weight_hr_l{k}`` to ``proj_size``, so
    ``output`` and ``h_n`` have ``proj_size`` features and ``c_n`` keeps ``hidden_size``::

        lstm = nn.LSTM(4, 2, batch_first=True, key=jax.random.key(0))
        output, (h_n, c_n) = lstm(jnp.ones((3, 5, 4)))    # (batch, seq, features)
        assert output.shape == (3, 5, 2) and h_n.shape == c_n.shape == (1, 3, 2)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        self._build("LSTM", locals(), key, dtype)

    def __call__(
        self,
        input: jax.Array,
        hx: tuple[jax.Array, jax.Array] | None = None,
        *,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"{describe(self)} expected hx=(h_0, c_0), a pair, got {hx!r:.80}")
        h0, c0 = (None, None) if hx is None else hx
        output, h_n, c_n = self._run(input, h0, c0, key)
        return output, (h_n, c_n)


# -- cells: one time step ----------------------------------------------------------------------


class _CellBase(Module):
    """Shared by the cells: parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``."""

    weight_ih: Parameter
    weight_hh: Parameter
    bias_ih: Parameter | None
    bias_hh: Parameter | None
    input_size: int = field(static=True)
    hidden_size: int = field(static=True)
    bias: bool = field(static=True)
    _gates: ClassVar[int] = 1

    def _build(self, input_size: Any, hidden_size: Any, bias: Any, key: Any, dtype: Any) -> None:
        layer = type(self).__name__
        require_key(key, layer)
        self.input_size = check_int(layer, "input_size", input_size, 1)
        self.hidden_size = check_int(layer, "hidden_size", hidden_size, 1)
        self.bias = _check_bool(layer, "bias", bias)
        shapes = _cell_shapes(
            self._gates, self.hidden_size, self.input_size, self.hidden_size, bias, 0
        )
        keys = jax.random.split(key, 4)
        for name in ("bias_ih", "bias_hh"):
            setattr(self, name, None)
        for k, (name, shape) in zip(keys, shapes):
            setattr(self, name, _uniform(k, shape, self.hidden_size, dtype))

    def _weights(self) -> dict[str, jax.Array]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return {n: getattr(self, n).value for n in names if getattr(self, n) is not None}

    def _input(self, x: Any) -> tuple[jax.Array, bool]:
        x = jnp.asarray(x)
        expected = f"(N, {self.input_size}) or unbatched ({self.input_size},)"
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise shape_error(self, expected, x)
        return (x, True) if x.ndim == 2 else (x[None], False)

    def _state(self, s: Any, name: str, batch: int, batched: bool, dtype: Any) -> jax.Array:
        if s is None:
            return jnp.zeros((batch, self.hidden_size), dtype)
        s = jnp.asarray(s)
        want = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if s.shape != want:
            raise ValueError(
                f"{describe(self)} expected {name} of shape {want} for input with "
                f"{'batch ' + str(batch) if batched else 'no batch axis'}, got shape {s.shape}"
            )
        return s if batched else s[None]

    def _one_step(self, mode: str, x: Any, h: Any, c: Any) -> tuple:
        x, batched = self._input(x)
        h = self._state(h, "hx", x.shape[0], batched, x.dtype)
        if mode == "LSTM":
            c = self._state(c, "cx", x.shape[0], batched, x.dtype)
        w = self._weights()
        h, c = _step(mode, _input_part(x, w), h, c, w)
        if not batched:
            return h[0], None if c is None else c[0]
        return h, c


class RNNCell(_CellBase):
    """One step of `RNN`, PyTorch's ``nn.RNNCell``: ``h' = rnn_cell(x, h)``, ``x`` of shape
    ``(N, input_size)`` or ``(input_size,)``, ``h`` zeros if omitted."""

    nonlinearity: str = field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        _mode("RNNCell", nonlinearity)
        self.nonlinearity = nonlinearity
        self._build(input_size, hidden_size, bias, key, dtype)

    def __call__(self, input: jax.Array, hx: jax.Array | None = None) -> jax.Array:
        return self._one_step(_NONLINEARITIES[self.nonlinearity], input, hx, None)[0]


class GRUCell(_CellBase):
    """One step of `GRU`, PyTorch's ``nn.GRUCell``: ``h' = gru_cell(x, h)``."""

    _gates: ClassVar[int] = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        self._build(input_size, hidden_size, bias, key, dtype)

    def __call__(self, input: jax.Array, hx: jax.Array | None = None) -> jax.Array:
        return self._one_step("GRU", input, hx, None)[0]


class LSTMCell(_CellBase):
    """One step of `LSTM`, PyTorch's ``nn.LSTMCell``: ``h', c' = lstm_cell(x, (h, c))``."""

    _gates: ClassVar[int] = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
    ) -> None:
        self._build(input_size, hidden_size, bias, key, dtype)

    def __call__(
        self, input: jax.Array, hx: tuple[jax.Array, jax.Array] | None = None
    ) -> tuple[jax.Array, jax.Array]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"{describe(self)} expected hx=(h, c), a pair, got {hx!r:.80}")
        h, c = (None, None) if hx is None else hx
        return self._one_step("LSTM", input, h, c)
